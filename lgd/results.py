"""Result objects: :class:`Run` (one GD run), :class:`Sweep` (a batch of them) and :class:`Phase`.

Everything here is host numpy data; saving writes one ``.npz`` file with the traces and a JSON
header, and :func:`load` reads it back into the same object.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

import numpy as np

from . import losses as _losses

__all__ = ["Run", "Sweep", "Phase", "phase_of", "load"]

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


def phase_of(step, risk, stepsize: float, threshold: float) -> Phase:
    """The :class:`Phase` of one recorded risk trace (finite entries only)."""
    step = np.asarray(step)
    risk = np.asarray(risk, dtype=np.float64)
    keep = np.isfinite(risk)
    step, risk = step[keep], risk[keep]
    if risk.size == 0:
        return Phase(None, threshold, 0, 0, math.nan, math.nan)
    below = np.flatnonzero(risk <= threshold)
    rises = risk[1:] > risk[:-1]
    if below.size:
        s = int(below[0])
        before, after = int(rises[:max(s, 0)].sum()), int(rises[s:].sum())
        transition = int(step[s])
        peak = float(risk[:s + 1].max())
    else:
        before, after, transition, peak = int(rises.sum()), 0, None, float(risk.max())
    return Phase(transition, threshold, before, after, peak, float(stepsize * step[-1] * risk[-1]))


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

    @property
    def phase(self) -> Phase:
        """Phase transition, risk increases before/after it and eta * t * risk at the end."""
        loss = _losses.get(self.meta["loss"])
        return phase_of(self.step, self.risk, self.stepsize, _threshold(self.stepsize, loss, self.meta["n"]))

    @property
    def final_risk(self) -> float:
        return float(self.risk[-1]) if self.risk.size else math.nan

    def __repr__(self) -> str:
        return (f"Run(stepsize={self.stepsize:g}, steps={self.steps}, status={self.status!r}, "
                f"final_risk={self.final_risk:.3e}, backend={self.meta.get('backend')!r})")

    def to_pandas(self):
        """The scalar traces as a DataFrame indexed by step (pandas is imported here, on demand)."""
        import pandas as pd

        columns = {name: getattr(self, name) for name in _SCALARS if getattr(self, name) is not None}
        return pd.DataFrame(columns, index=pd.Index(self.step, name="step"))

    def save(self, path) -> None:
        """Write the run to ``path`` (.npz); read it back with :func:`lgd.load`."""
        _save(path, "run", self)


@dataclass
class Sweep(_Traces):
    """A batch of runs on the same data: every trace has a leading config axis of length C.

    ``stepsize`` and ``seed`` (C,) name the configs (stepsize-major order); ``status`` and
    ``diverged_step`` say how each ended; traces after a config's divergence are NaN.
    ``sharpness`` (C, R_s, k) at ``sharpness_step`` when recorded. ``sweep[i]`` is config i as a
    :class:`Run`.
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

    def __len__(self) -> int:
        return len(self.stepsize)

    def __getitem__(self, i: int) -> Run:
        i = range(len(self))[i]
        diverged = int(self.diverged_step[i])
        keep = self.step < diverged if diverged >= 0 else slice(None)

        def take(array):
            return None if array is None else array[i][keep]

        sharpness, sharpness_step = self.sharpness, self.sharpness_step
        if sharpness is not None:
            measured = sharpness_step < diverged if diverged >= 0 else slice(None)
            sharpness, sharpness_step = sharpness[i][measured], sharpness_step[measured]
        return Run(step=self.step[keep], **{name: take(getattr(self, name)) for name in _SCALARS},
                   neuron_margins=take(self.neuron_margins), weights=self.weights[i],
                   outer_weights=self.outer_weights[i], stepsize=float(self.stepsize[i]),
                   seed=int(self.seed[i]), steps=self.steps, status=self.status[i],
                   diverged_step=diverged if diverged >= 0 else None, seconds=self.seconds,
                   steps_per_second=self.steps / self.seconds if self.seconds > 0 else math.inf,
                   meta=self.meta, sharpness=sharpness, sharpness_step=sharpness_step)

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

    def save(self, path) -> None:
        """Write the sweep to ``path`` (.npz); read it back with :func:`lgd.load`."""
        _save(path, "sweep", self)


_NON_ARRAYS = ("steps", "status", "seconds", "steps_per_second", "meta", "stepsize", "seed", "diverged_step")


def _save(path, kind: str, result) -> None:
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
    np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)


def load(path):
    """Read a :class:`Run` or :class:`Sweep` written by its ``save`` method."""
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

