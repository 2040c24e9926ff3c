"""Result objects: :class:`Run` (one GD run), :class:`Sweep` (a batch of them) and :class:`Phase`.

Everything here is host numpy data; saving writes one ``.npz`` file with the traces and a JSON
header, and :func:`load` reads it back into the same object.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import KW_ONLY, dataclass, fields
from pathlib import Path

import numpy as np

from . import losses as _losses

__all__ = ["Run", "Sweep", "Phase", "phase_of", "load", "log_risk_trace"]

_SCALARS = ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "normalized_margin",
            "test_risk", "test_accuracy")


@dataclass(frozen=True)
class Phase:
    """The two phases of a large-stepsize run, read off its recorded risk.

    ``transition_step`` is the first recorded step s with risk <= ``threshold`` = min(1/eta, loss(0)/n)
    (1/eta for the squared loss), or None when the run never gets there. ``increases_before`` and
    ``increases_after`` count the recorded risk increases before and after s; ``peak_risk`` is the
    largest risk before s; ``final_rate`` is eta * t * risk at the last recorded step, the quantity
    that levels off in the stable phase (risk = O(1/(eta t))).
    """

    transition_step: int | None
    threshold: float
    increases_before: int
    increases_after: int
    peak_risk: float
    final_rate: float

    @property
    def monotone_after(self) -> bool:
        """True when the run reached the stable phase and its risk never rose after it."""
        return self.transition_step is not None and self.increases_after == 0


def phase_of(step, risk, stepsize: float, threshold: float, log_risk=None) -> Phase:
    """The :class:`Phase` of one recorded risk trace (finite entries only). With ``log_risk`` the phase is read
    off the log-risk, so that rises and the final rate are seen where the risk underflows to 0.0."""
    step = np.asarray(step)
    risk = np.asarray(risk, dtype=np.float64)
    with np.errstate(divide="ignore"):
        level = np.log(risk) if log_risk is None else np.asarray(log_risk, np.float64)
    keep = np.isfinite(level) if log_risk is not None else np.isfinite(risk)
    step, risk, level = step[keep], risk[keep], level[keep]
    if level.size == 0:
        return Phase(None, threshold, 0, 0, math.nan, math.nan)
    below = np.flatnonzero(level <= math.log(threshold))
    rises = level[1:] > level[:-1]
    if below.size:
        s = int(below[0])
        before, after = int(rises[:max(s, 0)].sum()), int(rises[s:].sum())
        transition = int(step[s])
        peak = float(risk[:s + 1].max())
    else:
        before, after, transition, peak = int(rises.sum()), 0, None, float(risk.max())
    with np.errstate(over="ignore", under="ignore"):
        rate = float(np.exp(math.log(stepsize * step[-1]) + level[-1])) if step[-1] > 0 else 0.0
    return Phase(transition, threshold, before, after, peak, rate)


def _threshold(stepsize: float, loss, n: int) -> float:
    if loss.margin:
        return min(1.0 / stepsize, loss.at_zero / n)
    return 1.0 / stepsize


@dataclass
class _Traces:
    """What a run and a sweep both hold: traces at ``step``, and the final weights."""

    step: np.ndarray
    risk: np.ndarray
    accuracy: np.ndarray
    grad_norm: np.ndarray
    weight_norm: np.ndarray
    margin: np.ndarray
    normalized_margin: np.ndarray
    test_risk: np.ndarray | None
    test_accuracy: np.ndarray | None
    neuron_margins: np.ndarray | None
    weights: np.ndarray
    outer_weights: np.ndarray
    # What later versions record (None in files saved before them, or when not asked for); keyword-only,
    # so that Run and Sweep can add their own fields after them.
    _: KW_ONLY
    log_risk: np.ndarray | None = None
    initial_weights: np.ndarray | None = None
    initial_outer_weights: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    outer_trajectory: np.ndarray | None = None
    projections: np.ndarray | None = None
    trajectory_step: np.ndarray | None = None
    lyapunov: np.ndarray | None = None
    lyapunov_sum: np.ndarray | None = None
    eta: np.ndarray | None = None

    @property
    def model(self):
        """The model the result was computed with, rebuilt from its metadata (also after :func:`load`)."""
        from .models import model_from_config

        return model_from_config(self.meta["model"])

    @property
    def sharpness_limit(self):
        """2/eta (per config for a sweep): the sharpness above which GD on a quadratic of that
        curvature diverges, the line the sharpness hovers at in the edge of stability (Cohen et al.)."""
        return 2.0 / self.stepsize


@dataclass
class Run(_Traces):
    """One GD run: traces at the recorded steps (host numpy arrays) and how it ended.

    Traces (shape (R,), at ``step``): ``risk``, ``accuracy``, ``grad_norm``, ``weight_norm``
    (||W||_F, with the outer weights when they are trained), ``margin`` (min_i y_i f(x_i)),
    ``normalized_margin`` (margin / weight_norm), ``test_risk`` and ``test_accuracy`` (None without
    test data); ``neuron_margins`` (R, m): min_i y_i a_j phi(w_j . x_i), or None when not recorded.
    ``status`` is ``'completed'``, ``'diverged'`` (at ``diverged_step``, trace kept up to it) or
    ``'interrupted'``. With ``lgd.Record(sharpness_every=s)``: ``sharpness`` (R_s, k), the top-k Hessian
    eigenvalues at ``sharpness_step`` (R_s,), to compare with :attr:`sharpness_limit` = 2/eta;
    both None otherwise.

    ``log_risk`` (R,): log L(W_t) computed stably, finite where ``risk`` underflows to 0.0 (below
    about 1e-308 in float64, which large stepsizes on separable data reach); None in results saved
    before lgd recorded it. ``steps_taken``: the GD updates the run actually took, i.e. t of the last
    iterate W_t it reached (``weights``): ``steps`` when completed, k when it diverged at step k, fewer
    than ``steps`` when interrupted. ``seconds`` is the wall time of the GD steps of the call that
    computed the run; when that call was a sweep of C configurations run side by side, it is the
    batch's time, which the run shared. ``steps_per_second`` = ``steps_taken`` / ``seconds``: the
    run's own steps per second of that time (so a run that stopped early shows the few steps it took,
    and the configurations of a batch add up to the batch's rate :attr:`Sweep.steps_per_second`).

    ``initial_weights`` and ``initial_outer_weights``: W_0 and a_0. With ``lgd.Record(weights=k)``:
    ``trajectory`` (R_w, m, d) (W_t in the run's dtype; (R_w, d) for lgd.Linear), ``outer_trajectory``
    (R_w, m) when the outer layer is trained, or ``projections`` (R_w, P) with ``project_onto``, at
    ``trajectory_step`` (R_w,). With ``lgd.Record(lyapunov=k)``: ``lyapunov`` (k,), the top k Lyapunov
    exponents of the GD map over the steps taken, and ``lyapunov_sum`` (R, k), the cumulative log growth
    of the tangent vectors at each recorded step. ``init_index``: the starting point of a sweep's ``inits``.
    ``stepsize_rule``: the rule's spec (``'constant(10)'``, ``'adaptive(1)'``, ...; lgd.stepsize) and ``eta``
    (R,) the stepsize eta_t it gave at each recorded step (for a diverged run, where it was computed).

    ``initial_weights`` and ``initial_outer_weights``: W_0 and a_0. With ``lgd.Record(weights=k)``:
    ``trajectory`` (R_w, m, d) and ``outer_trajectory`` (R_w, m, when the outer weights are trained), or
    ``projections`` (R_w, P) onto ``Record.project_onto``, at ``trajectory_step`` (R_w,). ``init_index``:
    which of the sweep's ``inits`` the run started from. Each is None when not recorded.
    """

    stepsize: float
    seed: int
    steps: int
    status: str
    diverged_step: int | None
    seconds: float
    steps_per_second: float
    meta: dict
    sharpness: np.ndarray | None = None
    sharpness_step: np.ndarray | None = None
    steps_taken: int | None = None
    init_index: int | None = None
    stepsize_rule: str | None = None

    def __post_init__(self):
        if self.steps_taken is None:  # results saved before lgd recorded it
            diverged = -1 if self.diverged_step is None else self.diverged_step
            self.steps_taken = _steps_taken(self.status, diverged, self.step, self.steps)
        self.steps_taken = int(self.steps_taken)

    @property
    def phase(self) -> Phase:
        """Phase transition, risk increases before/after it and eta * t * risk at the end."""
        loss = _losses.get(self.meta["loss"])
        return phase_of(self.step, self.risk, self.stepsize, _threshold(self.stepsize, loss, self.meta["n"]),
                        log_risk=self.log_risk)

    @property
    def final_risk(self) -> float:
        return float(self.risk[-1]) if self.risk.size else math.nan

    @property
    def final_log_risk(self) -> float:
        """log L at the last recorded step: finite also where :attr:`final_risk` underflowed to 0.0."""
        trace = log_risk_trace(self)
        return float(trace[-1]) if trace.size else math.nan

    def __repr__(self) -> str:
        return (f"Run(stepsize={self.stepsize:g}, steps={self.steps}, status={self.status!r}, "
                f"final_risk={self.final_risk:.3e}, backend={self.meta.get('backend')!r})")

    def to_pandas(self):
        """The scalar traces as a DataFrame indexed by step (pandas is imported here, on demand)."""
        import pandas as pd

        columns = {name: getattr(self, name) for name in _SCALARS if getattr(self, name) is not None}
        return pd.DataFrame(columns, index=pd.Index(self.step, name="step"))

    def save(self, path) -> Path:
        """Write the run to ``path`` (``.npz`` appended unless it ends so) and return the path written;
        :func:`lgd.load` reads it back under either name."""
        return _save(path, "run", self)


@dataclass
class Sweep(_Traces):
    """A batch of runs on the same data: every trace has a leading config axis of length C.

    ``stepsize`` and ``seed`` (C,) name the configs (stepsize-major order); ``status`` and
    ``diverged_step`` say how each ended; traces after a config's divergence are NaN.
    ``sharpness`` (C, R_s, k) at ``sharpness_step`` when recorded. ``log_risk`` (C, R) or None and
    ``steps_taken`` (C,) int64 per config, as in :class:`Run`. ``seconds``: the wall time of the
    batch's GD steps; ``steps_per_second`` = sum of ``steps_taken`` / ``seconds``, the batch's rate.
    ``sweep[i]`` is config i as a :class:`Run`, whose ``steps_per_second`` is its own ``steps_taken``
    over the batch's ``seconds``. ``initial_weights`` (C, ...), ``initial_outer_weights`` (C, m),
    ``trajectory`` (C, R_w, m, d), ``outer_trajectory`` (C, R_w, m), ``projections`` (C, R_w, P) at
    ``trajectory_step`` (R_w,), ``init_index`` (C,): as in :class:`Run`, None when not recorded.
    """

    stepsize: np.ndarray
    seed: np.ndarray
    steps: int
    status: list
    diverged_step: np.ndarray
    seconds: float
    steps_per_second: float
    meta: dict
    sharpness: np.ndarray | None = None
    sharpness_step: np.ndarray | None = None
    steps_taken: np.ndarray | None = None
    init_index: np.ndarray | None = None
    stepsize_rule: list | None = None

    def __post_init__(self):
        if self.steps_taken is None:  # results saved before lgd recorded it
            self.steps_taken = [_steps_taken(status, diverged, self.step, self.steps)
                                for status, diverged in zip(self.status, self.diverged_step)]
        self.steps_taken = np.asarray(self.steps_taken, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.stepsize)

    def __getitem__(self, i: int) -> Run:
        i = range(len(self))[i]
        diverged = int(self.diverged_step[i])

        def until_divergence(steps, values):
            """The records up to the divergence: before it, and at it when recorded (a run stopped by the
            divergence bound has a finite record there; one whose numbers overflowed has none)."""
            if diverged < 0:
                return slice(None)
            at = (steps == diverged) & np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
            return (steps < diverged) | at

        keep = until_divergence(self.step, self.risk[i])

        def take(array):
            return None if array is None else array[i][keep]

        def per_config(array):
            return None if array is None else array[i]

        def before_divergence(steps, *arrays):
            """The records of config i at ``steps`` before its divergence, and those steps."""
            if steps is None:
                return (None,) * (len(arrays) + 1)
            taken = until_divergence(steps, next(array[i] for array in arrays if array is not None))
            return (*(None if array is None else array[i][taken] for array in arrays), steps[taken])

        sharpness, sharpness_step = before_divergence(self.sharpness_step, self.sharpness)
        trajectory, outer_trajectory, projections, trajectory_step = before_divergence(
            self.trajectory_step, self.trajectory, self.outer_trajectory, self.projections)
        steps_taken = int(self.steps_taken[i])
        return Run(step=self.step[keep], **{name: take(getattr(self, name)) for name in _SCALARS},
                   neuron_margins=take(self.neuron_margins), weights=self.weights[i],
                   outer_weights=self.outer_weights[i], stepsize=float(self.stepsize[i]),
                   seed=int(self.seed[i]), steps=self.steps, status=self.status[i],
                   diverged_step=diverged if diverged >= 0 else None, seconds=self.seconds,
                   steps_per_second=_rate(steps_taken, self.seconds), meta=self.meta, sharpness=sharpness,
                   sharpness_step=sharpness_step, log_risk=take(self.log_risk), steps_taken=steps_taken,
                   lyapunov=per_config(self.lyapunov), lyapunov_sum=take(self.lyapunov_sum), eta=take(self.eta),
                   stepsize_rule=None if self.stepsize_rule is None else self.stepsize_rule[i],
                   initial_weights=per_config(self.initial_weights), trajectory=trajectory,
                   initial_outer_weights=per_config(self.initial_outer_weights), outer_trajectory=outer_trajectory,
                   projections=projections, trajectory_step=trajectory_step,
                   init_index=None if self.init_index is None else int(self.init_index[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def phases(self) -> list:
        """The :class:`Phase` of every config."""
        return [run.phase for run in self]

    @property
    def final_risk(self) -> np.ndarray:
        """Risk at the last recorded step of every config (NaN for a diverged one)."""
        return np.array([run.final_risk if run.status == "completed" else math.nan for run in self])

    def __repr__(self) -> str:
        return (f"Sweep({len(self)} configs, steps={self.steps}, "
                f"diverged={int(np.sum(self.diverged_step >= 0))}, backend={self.meta.get('backend')!r})")

    def to_pandas(self):
        """Long-format DataFrame: one row per (config, recorded step)."""
        import pandas as pd

        return pd.concat([run.to_pandas().reset_index().assign(config=i, stepsize=run.stepsize, seed=run.seed)
                          for i, run in enumerate(self)], ignore_index=True)

    def save(self, path) -> Path:
        """Write the sweep to ``path`` (``.npz`` appended unless it ends so) and return the path written;
        :func:`lgd.load` reads it back under either name."""
        return _save(path, "sweep", self)


def _steps_taken(status: str, diverged_step: int, step, steps: int) -> int:
    """The GD updates a run took, read off how it ended, for results saved without ``steps_taken``.

    Exact for a completed or diverged run; for an interrupted one it is the last recorded step, which
    lgd records at the step where it stopped (in files from versions before that, a lower bound).
    """
    if diverged_step >= 0:
        return int(diverged_step)
    if status == "completed":
        return int(steps)
    return int(step[-1]) if len(step) else 0


def _rate(steps_taken: int, seconds: float) -> float:
    if seconds > 0:
        return steps_taken / seconds
    return 0.0 if steps_taken == 0 else math.inf


def log_risk_trace(result) -> np.ndarray:
    """log L(W_t) of a :class:`Run` or :class:`Sweep`: its ``log_risk`` when recorded, else log of its
    ``risk`` (-inf where the risk underflowed to 0.0, as in results saved before lgd recorded it)."""
    if result.log_risk is not None:
        return np.asarray(result.log_risk, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(result.risk, dtype=np.float64))


_NON_ARRAYS = ("steps", "status", "seconds", "steps_per_second", "meta", "stepsize", "seed", "diverged_step",
               "steps_taken", "init_index", "stepsize_rule")


def _npz_name(path):
    """The file ``np.savez`` writes for ``path``: the name as given when it ends in .npz, else with .npz
    appended (an open file is written as it is)."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    name = os.fspath(path)
    return Path(name if name.endswith(".npz") else name + ".npz")


def _save(path, kind: str, result):
    arrays = {}
    header = {"kind": kind, "lgd_format": 1}
    for f in fields(result):
        value = getattr(result, f.name)
        if f.name in _NON_ARRAYS and not isinstance(value, np.ndarray):
            header[f.name] = value
        elif value is None:
            header.setdefault("none", []).append(f.name)
        else:
            arrays[f.name] = value.get() if type(value).__module__.startswith("cupy") else np.asarray(value)
    path = _npz_name(path)
    np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)
    return path


def load(path):
    """Read a :class:`Run` or :class:`Sweep` written by its ``save`` method.

    ``path`` is tried as given, then with ``.npz`` appended: the names ``save`` accepts load back.
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path) and os.path.exists(_npz_name(path)):
        path = _npz_name(path)
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(str(archive["header"]))
        values = {name: archive[name] for name in archive.files if name != "header"}
    kind = header.pop("kind")
    header.pop("lgd_format")
    for name in header.pop("none", []):
        values[name] = None
    values.update(header)
    cls = Run if kind == "run" else Sweep
    return cls(**values)

