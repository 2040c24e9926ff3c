"""Backend registry: which implementation runs the GD loop, and the contract they all keep.

A backend is a module with ``available() -> (bool, reason)`` and ``runner(problem, shape) -> Runner``,
where ``shape`` = (C, m, d) is the shape of the iterates W it will run (so that it compiles only
what that batch needs).
Its library (numba, cupy) is imported only inside those functions, so ``import lgd`` stays light.

The contract (what :mod:`lgd.driver` relies on). A runner advances a batch of C configurations
(stepsize, initial weights) of one :class:`Problem` over the evaluations t in [t_start, t_stop):
at each t it computes risk, gradient and, at record steps, the recorded metrics of W_t; it then
updates W_{t+1} = W_t - eta * grad when t < T. A configuration whose risk or gradient norm is not
finite stops there: ``state.diverged[c] = t`` and its weights stay W_t. Record steps are
t = 0, k, 2k, ... and T, written to slot :func:`record_slot` of every trace array.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NAMES", "Problem", "State", "Trace", "get", "choose", "availability", "BackendUnavailable",
           "record_slot", "record_steps", "TRACE_FIELDS"]

NAMES = ("numpy", "numba", "cupy")
_MODULES = {"numpy": "lgd.backends._numpy", "numba": "lgd.backends._numba", "cupy": "lgd.backends._cupy"}
_INSTALL = {"numba": 'pip install "lgd[numba]"', "cupy": 'pip install "lgd[cuda13]" (or "lgd[cuda12]")'}

# Scalar traces, one float64 value per (config, record).
TRACE_FIELDS = ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy")


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run here; the message says why and how to install it."""


@dataclass
class Problem:
    """Everything about a run that is the same for every configuration of a sweep."""

    X: np.ndarray
    y: np.ndarray
    activation: object
    loss: object
    scale: float
    train_outer: bool
    linear: bool
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def dtype(self):
        return self.X.dtype


@dataclass
class State:
    """The batch of iterates: W (C, m, d), a (C, m), stepsizes (C,), diverged (C,) (-1 while running)."""

    W: np.ndarray
    a: np.ndarray
    stepsizes: np.ndarray
    diverged: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.diverged is None:
            self.diverged = np.full(self.W.shape[0], -1, dtype=np.int64)


@dataclass
class Trace:
    """Preallocated host buffers, float64: scalars (C, R) and neuron margins (C, R, m) or (C, 0, m)."""

    risk: np.ndarray
    accuracy: np.ndarray
    grad_norm: np.ndarray
    weight_norm: np.ndarray
    margin: np.ndarray
    test_risk: np.ndarray
    test_accuracy: np.ndarray
    neuron_margins: np.ndarray

    @classmethod
    def empty(cls, configs: int, records: int, width: int, neurons: bool) -> "Trace":
        scalars = {name: np.full((configs, records), np.nan) for name in TRACE_FIELDS}
        neuron = np.full((configs, records if neurons else 0, width), np.nan)
        return cls(neuron_margins=neuron, **scalars)


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps whose metrics are recorded: 0, k, 2k, ... and always the last step T."""
    recorded = np.arange(0, steps + 1, record_every, dtype=np.int64)
    if recorded[-1] != steps:
        recorded = np.append(recorded, steps)
    return recorded


def record_slot(t: int, steps: int, record_every: int) -> int:
    """Trace slot of evaluation t, or -1 when t is not recorded (mirrors :func:`record_steps`)."""
    if t % record_every == 0:
        return t // record_every
    if t == steps:
        return steps // record_every + 1
    return -1


def _module(name: str):
    return importlib.import_module(_MODULES[name])


def availability(name: str) -> tuple[bool, str]:
    """(usable, reason) for a backend name; the reason says what is missing when it is not."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; valid: 'auto', {', '.join(repr(n) for n in NAMES)}")
    if importlib.util.find_spec(_MODULES[name]) is None:
        return False, f"the {name} backend is not part of this version of lgd"
    return _module(name).available()


def get(name: str):
    """The backend module for an explicit name; raises :class:`BackendUnavailable` if it cannot run."""
    usable, reason = availability(name)
    if not usable:
        shipped = importlib.util.find_spec(_MODULES[name]) is not None
        hint = f"; install it with {_INSTALL[name]}" if shipped and name in _INSTALL else ""
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}{hint}")
    return _module(name)


def choose(name: str, X=None) -> str:
    """Resolve ``'auto'``: cupy for cupy inputs or a usable GPU, else numba when installed, else numpy."""
    if name != "auto":
        get(name)
        return name
    if X is not None and type(X).__module__.split(".")[0] == "cupy":
        get("cupy")
        return "cupy"
    for candidate in ("cupy", "numba"):
        if availability(candidate)[0]:
            return candidate
    return "numpy"
