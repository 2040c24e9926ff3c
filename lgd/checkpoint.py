"""Checkpoints of :func:`lgd.gd` and :func:`lgd.sweep`, and :func:`resume`: a long run killed is not lost.

What lives here:

- :class:`Call` -- what a checkpoint records of the call that wrote it: its *fingerprint* (hashes of the
  data and starting points, model, loss, stepsize rules, seeds, steps, record options, dtype, backend,
  divergence rule), which a later call must match to continue it, and what :func:`resume` needs to make
  the call again by itself (the data included);
- :class:`Writer` -- writes a call's checkpoints atomically: a temporary file in the same folder, fsync,
  then ``os.replace``, so the file at the path is always a whole checkpoint, the old one or the new one;
- :func:`read` and :class:`Saved` -- read one back (a damaged file is a clear ValueError), compare its
  fingerprint with a call's, and put its state and records back into a run's state and trace;
- :func:`resume` -- continue the call a checkpoint was written by, from the file alone.

When and where checkpoints are written (between chunks, and at the end of a run) is the driver's
(:mod:`lgd.driver`); what a runner must do for it (``sync()``) is in :mod:`lgd.backends`.

A checkpoint is one ``.npz`` file (uncompressed: it is rewritten every ``checkpoint_every`` seconds)
holding a JSON header and the arrays: the data, the state (weights, divergence flags, tangent vectors
and their log growth, the sharpness's warm start), the records so far. It holds the training and test
data, so its size is at least theirs: a few megabytes for the problems of the research (n d up to about
10^6 numbers), hundreds for MNIST-sized ones.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import math
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np

from .results import read_archive

__all__ = ["CHECKPOINT_EVERY", "Call", "Writer", "Saved", "read", "check_target", "resume"]

# Seconds between two checkpoints of a running call, by default: a lost minute at most, and writing a
# checkpoint (milliseconds for the research's problems) costs well under a percent of the run.
CHECKPOINT_EVERY = 60.0
FORMAT = 1
# The states of a checkpoint: written between chunks, after a Ctrl-C, at the end of the call.
RUNNING, INTERRUPTED, COMPLETED, DIVERGED = "running", "interrupted", "completed", "diverged"
FINISHED = (COMPLETED, DIVERGED)


def check_target(checkpoint, every) -> tuple:
    """(path or None, seconds) of the ``checkpoint`` and ``checkpoint_every`` arguments, or ValueError
    naming the problem: a path whose folder exists and can be written, a positive number of seconds."""
    if isinstance(every, bool) or not isinstance(every, (Real, np.floating, np.integer)) \
            or not (float(every) > 0 and not math.isnan(float(every))):
        raise ValueError(f"checkpoint_every must be a positive number of seconds, got {every!r}")
    if checkpoint is None:
        return None, float(every)
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint must be a file path, but {str(path)!r} is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"the folder of checkpoint {str(path)!r} does not exist")
    # A finished call's checkpoint is only read (its result, without running): a read-only folder does for it.
    if not os.access(folder, os.W_OK | os.X_OK) and not (path.is_file() and read(path).finished):
        raise ValueError(f"the folder of checkpoint {str(path)!r} cannot be written")
    return path, float(every)


def _digest(*arrays) -> str | None:
    """A sha256 of arrays' dtypes, shapes and bytes (None when every one is None)."""
    if all(array is None for array in arrays):
        return None
    h = hashlib.sha256()
    for array in arrays:
        if array is None:
            h.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape};".encode())
        h.update(array.data)
    return "sha256:" + h.hexdigest()


def _number(value: float):
    """A float as strict JSON holds it: itself when finite (it reads back exactly), else its name."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def _exact_spec(entry) -> str:
    """The spec of a catalog entry (activation, loss) with its parameter to the last bit (its ``spec``
    rounds it to 6 digits)."""
    return entry.spec if entry.spec == entry.name else f"{entry.name}({float(entry.param)!r})"


def _host(array):
    """A host numpy array of a numpy or cupy array (None stays None)."""
    if array is None:
        return None
    return array.get() if hasattr(array, "get") and type(array).__module__.split(".")[0] == "cupy" else array


@dataclass
class Call:
    """A call of :func:`lgd.sweep` (or :func:`lgd.gd`) as a checkpoint records it: ``fingerprint``, what a
    resumed call must match; ``call``, the arguments :func:`resume` rebuilds it from (JSON); ``arrays``, its
    array arguments (data, starting points, projection directions)."""

    fingerprint: dict
    call: dict
    arrays: dict = field(repr=False)

    @classmethod
    def of(cls, *, X, y, X_test, y_test, model, loss, rules, steps, seeds, init, init_scale, inits, outer_inits,
           record, neuron_margins: bool, dtype, backend: str, divergence, progress, caller: str) -> "Call":
        """The record of a call whose arguments the driver has checked: X, y, X_test, y_test in the run's
        dtype, the loss object, the stepsize rules, the backend's name (resolved from 'auto') and the
        resolved per-neuron margins."""
        X, y, X_test, y_test = (_host(a) for a in (X, y, X_test, y_test))
        init_array = None if isinstance(init, str) else np.asarray(init, dtype=np.float64)
        inits = None if inits is None else np.asarray(inits, dtype=np.float64)
        outer_inits = None if outer_inits is None else np.asarray(outer_inits, dtype=np.float64)
        config = model.config()
        if config["kind"] == "TwoLayerNet":
            config["activation"] = _exact_spec(model.activation)
        options = {"every": record.every, "sharpness_every": record.sharpness_every,
                   "sharpness_k": record.sharpness_k, "sharpness_points": record.sharpness_points,
                   "weights": record.weights, "lyapunov": record.lyapunov}
        stepsizes = [{"code": int(rule.code), "params": [float(p) for p in rule.params], "spec": rule.spec,
                      "eta": float(rule.eta)} for rule in rules]
        fingerprint = {
            "data": _digest(X, y), "test data": _digest(X_test, y_test), "model": config,
            "loss": _exact_spec(loss), "stepsizes": [[s["spec"], *s["params"]] for s in stepsizes],
            "steps": int(steps), "seeds": list(seeds), "init": init if isinstance(init, str) else _digest(init_array),
            "init_scale": float(init_scale), "inits": _digest(inits), "outer_inits": _digest(outer_inits),
            "record": {**options, "neuron_margins": bool(neuron_margins),
                       "project_onto": _digest(record.project_onto)},
            "dtype": np.dtype(dtype).name, "backend": backend,
            "divergence": [_number(divergence.risk), _number(divergence.weight_norm)],
        }
        call = {"caller": caller, "model": config, "loss": _exact_spec(loss), "stepsizes": stepsizes,
                "steps": int(steps), "seeds": list(seeds), "init": init if isinstance(init, str) else None,
                "init_scale": float(init_scale),
                "record": {**options, "neuron_margins": record.neuron_margins},
                "compute": {"backend": backend, "dtype": np.dtype(dtype).name, "progress": progress},
                "divergence": {"risk": _number(divergence.risk), "weight_norm": _number(divergence.weight_norm)}}
        arrays = {"X": X, "y": y, "X_test": X_test, "y_test": y_test, "init": init_array, "inits": inits,
                  "outer_inits": outer_inits, "project_onto": record.project_onto}
        return cls(fingerprint, call, {name: value for name, value in arrays.items() if value is not None})


# The arrays of a run's state that a checkpoint holds (those that are not None).
STATE_FIELDS = ("W", "a", "diverged", "tangents", "tangents_a", "log_growth", "sharpness_last", "sharpness_start",
                "sharpness_start_a")
# Those every checkpoint holds (the others only where the call records what they serve), and the header's keys.
REQUIRED_STATE = ("W", "a", "diverged")
HEADER_KEYS = ("status", "reached", "seconds", "paused_seconds", "sittings", "in_runner", "checkpoint_every",
               "fingerprint", "call")


class Writer:
    """Writes the checkpoints of one call to ``path``: the call's :class:`Call`, and at each write the
    run's ``state`` and ``trace`` (and ``sharpness``, the sharpness the driver measures between chunks, or
    None), objects the run updates in place. ``seconds`` and ``paused_seconds`` are those of earlier
    sittings (a resumed call), ``sittings`` how many there were."""

    def __init__(self, path: Path, every: float, call: Call, state, trace, sharpness=None, *, in_runner: bool,
                 seconds: float = 0.0, paused_seconds: float = 0.0, sittings: int = 0):
        self.path, self.every, self.call = Path(path), every, call
        self.state, self.trace, self.sharpness, self.in_runner = state, trace, sharpness, in_runner
        self.seconds, self.paused_seconds, self.sittings = seconds, paused_seconds, sittings + 1
        self.last = time.monotonic()

    def due(self) -> bool:
        """True when the last write is ``every`` seconds old."""
        return time.monotonic() - self.last >= self.every

    def write(self, status: str, reached: int, seconds: float, paused_seconds: float) -> None:
        """Write the checkpoint of a run whose state holds W_reached (its evaluations 0 .. reached-1 done),
        ``seconds`` and ``paused_seconds`` of this sitting's GD steps and measurements between chunks."""
        header = {"lgd_checkpoint": FORMAT, "status": status, "reached": int(reached),
                  "seconds": self.seconds + seconds, "paused_seconds": self.paused_seconds + paused_seconds,
                  "sittings": self.sittings, "in_runner": bool(self.in_runner), "checkpoint_every": _number(self.every),
                  "written": time.time(), "fingerprint": self.call.fingerprint, "call": self.call.call}
        arrays = {f"call.{name}": value for name, value in self.call.arrays.items()}
        for name in STATE_FIELDS:
            value = getattr(self.state, name)
            if value is not None:
                arrays[f"state.{name}"] = value
        for name, value in zip(self.trace._fields, self.trace):
            arrays[f"trace.{name}"] = value
        if self.sharpness is not None:
            arrays["sharpness"] = self.sharpness
        arrays["header"] = np.array(json.dumps(header, allow_nan=False))
        _write_atomically(self.path, arrays)
        self.last = time.monotonic()


@functools.cache
def _file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask): mkstemp's files are 0o600, which would keep a
    checkpoint from the colleagues who may read the folder."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomically(path: Path, arrays: dict) -> None:
    """np.savez into a temporary file beside ``path``, flushed to the disk, then renamed over ``path``: a
    reader (or a run killed meanwhile) sees the old file or the new one, never part of one. Temporary files
    that a process killed while writing left beside it are removed once the new file is in place."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
    except BaseException:  # a Ctrl-C too: leave no temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename is an entry of the folder: flush that too, where the system lets a folder be opened.
    with contextlib.suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@dataclass
class Saved:
    """A checkpoint read back: its ``header`` (status, reached, seconds, fingerprint, call) and ``arrays``."""

    path: Path
    header: dict
    arrays: dict = field(repr=False)

    @property
    def status(self) -> str:
        return self.header["status"]

    @property
    def finished(self) -> bool:
        """True when the call it was written by ran to its end: resuming it runs nothing."""
        return self.status in FINISHED

    def check(self, call: Call) -> None:
        """ValueError naming every argument where ``call`` differs from the call that wrote this checkpoint."""
        saved, given = self.header["fingerprint"], call.fingerprint
        differences = []
        for name in sorted(set(saved) | set(given)):
            was, now = saved.get(name), given.get(name)
            if was == now:
                continue
            if isinstance(was, dict) and isinstance(now, dict):
                differences += [_difference(f"{name}.{key}", was.get(key), now.get(key))
                                for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
            else:
                differences.append(_difference(name, was, now))
        if differences:
            raise ValueError(f"checkpoint {str(self.path)!r} was written by another call; these differ: "
                             f"{'; '.join(differences)}. Give another checkpoint path, or remove this file "
                             f"to start afresh")

    def restore(self, state, trace, sharpness=None) -> None:
        """Put the saved state and records into a run's ``state`` and ``trace`` (and the sharpness the
        driver measures between chunks), whose shapes the call has made."""
        for name in STATE_FIELDS:
            key = f"state.{name}"
            if key not in self.arrays and name not in REQUIRED_STATE:
                continue
            if key not in self.arrays:
                raise ValueError(f"checkpoint {str(self.path)!r} is damaged: it holds no {key}. Remove it to start "
                                 "afresh")
            current = getattr(state, name)
            if current is None:
                setattr(state, name, self.arrays[key].copy())
            else:
                self._copy(key, current)
        for name, values in zip(trace._fields, trace):
            self._copy(f"trace.{name}", values)
        if sharpness is not None:
            self._copy("sharpness", sharpness)

    def _copy(self, key: str, into: np.ndarray) -> None:
        if key not in self.arrays or self.arrays[key].shape != into.shape:
            found = self.arrays[key].shape if key in self.arrays else "nothing"
            raise ValueError(f"checkpoint {str(self.path)!r} does not fit its call: {key} has shape {found}, "
                             f"the call needs {into.shape}; it is damaged or from another version of lgd")
        into[...] = self.arrays[key]


def _difference(name: str, was, now) -> str:
    def shown(value):
        if isinstance(value, str) and value.startswith("sha256:"):
            return "an array"
        return "none" if value is None else repr(value)

    if isinstance(was, str) and isinstance(now, str) and was.startswith("sha256:") and now.startswith("sha256:"):
        return f"{name} (another array)"
    return f"{name} (checkpoint: {shown(was)}, this call: {shown(now)})"


def _check_header(header: dict) -> None:
    """ValueError where a header's values cannot be a checkpoint's (an edited or corrupted file the zip's checksums
    pass): a run would go on from a step it never reached, or stop at one it did not."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def seconds(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0

    call = header["call"]
    steps = call.get("steps") if isinstance(call, dict) else None
    problems = [name for name, good in (
        ("status", header["status"] in (RUNNING, INTERRUPTED, COMPLETED, DIVERGED)),
        ("steps", count(steps)),
        ("reached", count(header["reached"]) and count(steps) and header["reached"] <= steps + 1),
        ("seconds", seconds(header["seconds"])), ("paused_seconds", seconds(header["paused_seconds"])),
        ("sittings", count(header["sittings"]))) if not good]
    if problems:
        raise ValueError(f"its header's {', '.join(problems)} cannot be a checkpoint's")


class _SavedResult(ValueError):
    """A file of Run.save or Sweep.save where a checkpoint was expected."""


def read(path) -> Saved:
    """The checkpoint at ``path``; ValueError when it is not a whole lgd checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file")
    try:
        header, arrays = read_archive(path)
        if header.get("kind") in ("run", "sweep") and "lgd_checkpoint" not in header:
            raise _SavedResult(f"{str(path)!r} is a saved lgd {header['kind']} (lgd.load reads it), not a checkpoint; "
                               f"a checkpoint needs a path of its own")
        if header.get("lgd_checkpoint") != FORMAT:
            raise ValueError(f"format {header.get('lgd_checkpoint')!r}, this lgd reads format {FORMAT}")
        missing = [key for key in HEADER_KEYS if key not in header]
        if missing:
            raise ValueError(f"its header lacks {', '.join(missing)}")
        _check_header(header)
    except (FileNotFoundError, _SavedResult):
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: it is not an lgd checkpoint, or it is damaged "
                         f"({type(exc).__name__}: {exc}). Remove it to start afresh") from None
    return Saved(path, header, arrays)


def resume(path, *, checkpoint_every=None):
    """Continue the call of :func:`lgd.gd` or :func:`lgd.sweep` that wrote the checkpoint at ``path``,
    from the file alone (it holds the data), and return what that call returns (a :class:`lgd.Run` or a
    :class:`lgd.Sweep`); a checkpoint of a finished call gives its result without running.

    The call is made again with ``checkpoint=path``, so it goes on writing checkpoints there, every
    ``checkpoint_every`` seconds (None: as the call that wrote it). The backend is the one that call
    ran on (the bits of a run are the same only on the same backend). Traces are bit-identical to
    those of a call never interrupted; ``seconds`` counts the GD time of every sitting.

    >>> import lgd, os, tempfile
    >>> X, y = lgd.data.xor(n=20)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> run = lgd.gd(X, y, lgd.TwoLayerNet(4), steps=50, compute="numpy", checkpoint=path)
    >>> bool((lgd.resume(path).risk == run.risk).all())
    True
    """
    from .driver import gd, sweep
    from .models import model_from_config
    from .options import Compute, Divergence, Record
    from .stepsize import Rule

    saved = read(path)
    call, arrays = saved.header["call"], {key[5:]: value for key, value in saved.arrays.items()
                                         if key.startswith("call.")}
    rules = [Rule(rule["code"], tuple(rule["params"]), rule["spec"], rule["eta"]) for rule in call["stepsizes"]]
    record = Record(**call["record"], project_onto=arrays.get("project_onto"))
    divergence = Divergence(**{name: float(value) for name, value in call["divergence"].items()})
    if checkpoint_every is None:
        checkpoint_every = float(saved.header["checkpoint_every"])
    common = dict(init=call["init"] if call["init"] is not None else arrays["init"], init_scale=call["init_scale"],
                  X_test=arrays.get("X_test"), y_test=arrays.get("y_test"), record=record,
                  compute=Compute(**call["compute"]), divergence=divergence, checkpoint=path,
                  checkpoint_every=checkpoint_every)
    model = model_from_config(call["model"])
    if call["caller"] == "gd":
        return gd(arrays["X"], arrays["y"], model, call["loss"], stepsize=rules[0], steps=call["steps"],
                  seed=call["seeds"][0], **common)
    return sweep(arrays["X"], arrays["y"], model, call["loss"], stepsizes=rules, steps=call["steps"],
                 seeds=call["seeds"], inits=arrays.get("inits"), outer_inits=arrays.get("outer_inits"), **common)
