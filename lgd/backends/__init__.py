"""The backend seam: which implementation runs the GD loop, and the contract they all keep.

A backend name is resolved once, by :func:`resolve`, into a :class:`Backend` object; the driver talks to
that object only and never to a name. A backend's module (``_numpy``, ``_numba``, ``_cupy``) has
``available() -> (bool, reason)`` and a ``Runner(problem, steps, record_every, shape)`` class; its
library (numba, cupy) is imported only inside them, so ``import lgd`` stays light.

Every runner keeps one protocol:

- ``start(state, trace, t_start=0)`` binds a batch of C configurations (stepsize, initial weights) of one
  :class:`Problem` and the :class:`Trace` their records go into; a resumed run starts at ``t_start`` > 0,
  its records of the steps before it already in ``trace`` (a device runner copies those to the device);
- ``advance(t_start, t_stop)`` runs the evaluations t in [t_start, t_stop): at each it computes risk,
  gradient and, at record steps, the recorded metrics of W_t; it then updates
  W_{t+1} = W_t - eta * grad when t < steps. A configuration whose risk or gradient norm is not finite
  stops there: ``state.diverged[c] = t`` and its weights stay W_t. When it returns, ``state`` holds
  the weights and divergence flags after t_stop - 1 (the driver may pause there, e.g. for the
  sharpness: a runner without ``measures_sharpness`` takes each configuration's latest from
  ``state.sharpness_last``, which the driver sets at those pauses);
- ``sync()`` makes the records written so far complete on the host, between chunks (a device runner
  copies them back; a host runner has nothing to do): the driver calls it before a checkpoint;
- ``finish()`` makes ``trace`` complete on the host (a device runner copies it back; also after an
  interruption).

``start`` keeps what ``trace`` already holds: a resumed run's records of its earlier steps.

Record steps are t = 0, k, 2k, ... and T (:func:`record_steps`), written to slot :func:`record_slot`
of every field of :class:`Trace`. That rule, the trace's fields and the stepsize cast
(:func:`cast_stepsizes`) live here and nowhere else: the numba kernels compile :func:`record_slot`
itself and write the trace by field name.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["NAMES", "Backend", "resolve", "kernels_have", "availability", "BackendUnavailable", "Problem", "State",
           "Trace", "record_slot", "record_steps", "cast_stepsizes", "stepsize_of", "on_device", "TRACE_FIELDS"]

NAMES = ("numpy", "numba", "cupy")
# Bytes of a CPU cache line: the numba glue pads the members' rows of scratch to it and the kernels claim
# partials line by line (kernels/numba_cpu/team.py). Here, among the sources the kernel cache hashes, so that
# a change to it compiles the kernels afresh.
CACHE_LINE = 64


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
    # A run is stopped as diverged once its risk exceeds risk_bound, or the norm of its weights (W and a)
    # exceeds weight_bound (inf: no bound), besides a risk or gradient that is not finite.
    risk_bound: float = math.inf
    weight_bound: float = math.inf
    # Some configuration's stepsize needs the log-risk at every step (eta / L(W_t)), not only at records.
    log_risk_every_step: bool = False
    # Trajectories: the weights (or their projections onto `directions`, (P, m, d)) are recorded at the
    # steps record_steps(steps, weights_every) when weights_every > 0.
    weights_every: int = 0
    directions: np.ndarray | None = None
    # The sharpness: the top sharpness_k Hessian eigenvalues at the steps record_steps(steps, sharpness_every)
    # (0: none) on the first sharpness_points training points (None: all).
    sharpness_every: int = 0
    sharpness_k: int = 1
    sharpness_points: int | None = None
    # The Lyapunov exponents: how many tangent vectors the batch's states carry (0: none).
    lyapunov: int = 0

    @property
    def dtype(self):
        return self.X.dtype


@dataclass
class State:
    """The batch of iterates: W (C, m, d), a (C, m), stepsizes (C,) float64, diverged (C,) int64 (-1 while
    running, else the step where the run stopped); for Lyapunov exponents, k orthonormal tangent vectors per
    configuration, tangents (C, k, m, d) and tangents_a (C, k, m), and their log growth so far (C, k), all
    float64 (None without)."""

    W: np.ndarray
    a: np.ndarray
    stepsizes: np.ndarray
    diverged: np.ndarray = field(default=None)
    tangents: np.ndarray | None = None
    tangents_a: np.ndarray | None = None
    log_growth: np.ndarray | None = None
    # The stepsize rule of each configuration (lgd.stepsize): codes (C,) int64 and parameters (C, 3)
    # float64; None: constant rules at `stepsizes`.
    rules: np.ndarray | None = None
    rule_params: np.ndarray | None = None
    # The sharpness: each configuration's latest top Hessian eigenvalue (C,) float64 (NaN before the first),
    # measured inside the runner or by the driver between chunks, and, inside the runner, its top Hessian
    # eigenvector then, (C, m, d) and (C, m) float64, the next measurement's warm start (None when nothing
    # measures the sharpness).
    sharpness_last: np.ndarray | None = None
    sharpness_start: np.ndarray | None = None
    sharpness_start_a: np.ndarray | None = None

    def __post_init__(self):
        if self.diverged is None:
            self.diverged = np.full(self.W.shape[0], -1, dtype=np.int64)
        if self.rules is None:
            self.rules = np.zeros(self.W.shape[0], dtype=np.int64)
            self.rule_params = np.zeros((self.W.shape[0], 3))
            self.rule_params[:, 0] = self.stepsizes

    def curvature_arrays(self) -> tuple:
        """(sharpness_last, sharpness_start, sharpness_start_a): made on first use (no measurement has been made)."""
        if self.sharpness_last is None:
            C, m, d = self.W.shape
            self.sharpness_last = np.full(C, np.nan)
            self.sharpness_start, self.sharpness_start_a = np.zeros((C, m, d)), np.zeros((C, m))
        return self.sharpness_last, self.sharpness_start, self.sharpness_start_a

    def tangent_arrays(self) -> tuple:
        """(tangents, tangents_a, log_growth), with k = 0 tangent vectors when there are none."""
        if self.tangents is not None:
            return self.tangents, self.tangents_a, self.log_growth
        C, m, d = self.W.shape
        return np.zeros((C, 0, m, d)), np.zeros((C, 0, m)), np.zeros((C, 0))


class Trace(NamedTuple):
    """The records of a batch, host arrays: float64 scalars (C, R) and neuron margins (C, R, m) or (C, 0, m);
    trajectories in the run's dtype, weights (C, Rw, m, d) and outer weights (C, Rw, m), or float64
    projections (C, Rw, P), with Rw = 0 when they are not recorded.

    A named tuple so that the numba kernels take it as it is and write each field by name.
    """

    risk: np.ndarray
    log_risk: np.ndarray
    accuracy: np.ndarray
    grad_norm: np.ndarray
    weight_norm: np.ndarray
    margin: np.ndarray
    test_risk: np.ndarray
    test_accuracy: np.ndarray
    eta: np.ndarray
    neuron_margins: np.ndarray
    weights: np.ndarray
    outer: np.ndarray
    projections: np.ndarray
    lyapunov_sum: np.ndarray
    sharpness: np.ndarray

    @classmethod
    def empty(cls, configs: int, records: int, width: int, neurons: bool, *, weight_records: int = 0,
              dim: int = 0, dtype=np.float64, outer: bool = False, directions: int = 0, tangents: int = 0,
              sharpness_records: int = 0, sharpness_k: int = 0) -> "Trace":
        """Records of `configs` configurations: NaN-filled `records` slots of the scalars, per-neuron margins
        if `neurons`; `weight_records` slots of the weights W (width, dim) in `dtype` (and of the outer
        weights if `outer`), or NaN-filled slots of their projections onto `directions` directions when
        that is > 0; at the scalars' slots the log growth of `tangents` tangent vectors (C, R, k); and
        `sharpness_records` slots of the top `sharpness_k` Hessian eigenvalues (C, R_s, k)."""
        # The weights are the one field that can take gigabytes: left empty (a NaN fill would write them
        # twice); a runner writes every slot a run reaches, NaN at a step where it diverged, and the driver
        # blanks the slots after a divergence.
        layout = cls.layout(configs, records, width, neurons, weight_records=weight_records, dim=dim, dtype=dtype,
                            outer=outer, directions=directions, tangents=tangents,
                            sharpness_records=sharpness_records, sharpness_k=sharpness_k)
        return cls(**{name: np.empty(shape, dtype=kind) if name in ("weights", "outer")
                      else np.full(shape, np.nan, dtype=kind) for name, (shape, kind) in layout.items()})

    @staticmethod
    def layout(configs: int, records: int, width: int, neurons: bool, *, weight_records: int = 0, dim: int = 0,
               dtype=np.float64, outer: bool = False, directions: int = 0, tangents: int = 0,
               sharpness_records: int = 0, sharpness_k: int = 0) -> dict:
        """field -> (shape, dtype) of :meth:`empty`'s arrays, for the same arguments (their bytes can be added
        up before any is made)."""
        stored = 0 if directions else weight_records
        fields = {name: ((configs, records), np.float64) for name in TRACE_FIELDS}
        fields.update(neuron_margins=((configs, records if neurons else 0, width), np.float64),
                      weights=((configs, stored, width, dim), dtype),
                      outer=((configs, stored if outer else 0, width), dtype),
                      projections=((configs, weight_records if directions else 0, directions), np.float64),
                      lyapunov_sum=((configs, records if tangents else 0, tangents), np.float64),
                      sharpness=((configs, sharpness_records, sharpness_k), np.float64))
        return fields


# The scalar fields of a Trace, one float64 value per (configuration, record).
TRACE_FIELDS = ("risk", "log_risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy",
                "eta")


def record_steps(steps: int, record_every: int) -> np.ndarray:
    """The steps whose metrics are recorded: 0, k, 2k, ... and always the last step T."""
    recorded = np.arange(0, steps + 1, record_every, dtype=np.int64)
    if recorded[-1] != steps:
        recorded = np.append(recorded, steps)
    return recorded


def record_count(steps: int, record_every: int) -> int:
    """The size of :func:`record_steps` (without building it: a run too long for its traces is told so)."""
    return steps // record_every + 1 + (steps % record_every != 0)


def record_slot(t, steps, record_every):
    """Trace slot of evaluation t, or -1 when t is not recorded (the slots of :func:`record_steps`).

    Plain arithmetic: the numba kernels compile this very function."""
    if t % record_every == 0:
        return t // record_every
    if t == steps:
        return steps // record_every + 1
    return -1


def cast_stepsizes(stepsizes, dtype) -> np.ndarray:
    """The stepsizes as a run of `dtype` applies them: rounded once to that dtype, held at its largest number
    (the driver has checked that the base stepsizes fit in it; a rule's eta_t, eta / L or a Polyak step, can
    pass float32's range long before float64's)."""
    stepsizes = np.asarray(stepsizes, dtype=np.float64)
    return np.minimum(stepsizes, np.finfo(dtype).max).astype(dtype)


# A float64 sum of squares from which the norm is its square root: at least this (below it squares that
# underflowed, to 0 or to subnormals of few bits, may weigh in it: 2^-968 leaves them below 2^-107 of it) and
# finite. Outside, 0 with entries that are not all 0, subnormal or inf, a norm goes over the entries again
# scaled by the largest |entry| (the numpy oracle's _numpy._norm, the numba kernels' norms.exact_norm, the CUDA
# kernels' exact_norms): exact over float64's range, while the common case costs no more than the sum.
SQUARES_EXACT_FROM = 2.0 ** -968


def stepsize_of(state: State, c: int, t: int, steps: int, risk: float, log_risk: float, grad_norm: float, dtype,
                sharpness: float = math.nan):
    """eta_t of configuration c (lgd.stepsize.stepsize_at of its rule) as a run of `dtype` applies it."""
    from ..stepsize import stepsize_at

    code, (p0, p1, p2) = int(state.rules[c]), state.rule_params[c]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return cast_stepsizes(stepsize_at(code, float(p0), float(p1), float(p2), t, steps, float(risk),
                                          float(log_risk), float(grad_norm), float(sharpness)), dtype)[()]


@dataclass(frozen=True)
class Backend:
    """One backend: its name, the module that implements it, and how to get it when it is missing."""

    name: str
    module_name: str
    install: str = ""
    device: bool = False  # runs on a GPU: takes device arrays as they are and returns device arrays
    # The library the install hint installs: the hint is given only while it is missing (a GPU backend may be
    # installed and still not run, for want of a driver or a device). Empty: the hint is always given.
    library: str = ""

    def availability(self) -> tuple[bool, str]:
        """(usable, reason); the reason says what is missing when it is not."""
        if importlib.util.find_spec(self.module_name) is None:
            return False, f"the {self.name} backend is not part of this version of lgd"
        return self._module().available()

    def _module(self):
        return importlib.import_module(self.module_name)

    def runner(self, problem: Problem, steps: int, record_every: int, shape):
        """A runner of `problem` for a run of `steps` steps recording every `record_every`, for iterates of
        `shape` (C, m, d); it compiles what that batch needs here, before any timed chunk."""
        return self._module().Runner(problem, steps, record_every, shape)

    def inputs(self, *arrays):
        """The user's arrays as this backend takes them: a CPU backend copies device arrays to the host
        (the user asked for it by name), a device backend takes them as they are. None stays None."""
        if self.device:
            return arrays
        return tuple(None if a is None else (a.get() if on_device(a) else a) for a in arrays)

    def outputs(self, array: np.ndarray, device_input: bool):
        """A host result in the array type of the user's input: device in, device out, on a device backend."""
        if device_input and self.device:
            import cupy

            return cupy.asarray(array)
        return array


_BACKENDS = {
    "numpy": Backend("numpy", "lgd.backends._numpy"),
    "numba": Backend("numba", "lgd.backends._numba", install='pip install "lgd[numba]"'),
    "cupy": Backend("cupy", "lgd.backends._cupy", install='pip install "lgd[cuda13]" (or "lgd[cuda12]")',
                    device=True, library="cupy"),
}


def on_device(array) -> bool:
    """True for a cupy array (its data on a GPU)."""
    return type(array).__module__.split(".")[0] == "cupy"


def availability(name: str) -> tuple[bool, str]:
    """(usable, reason) for a backend name; the reason says what is missing when it is not."""
    return _named(name).availability()


def _named(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: 'auto', {', '.join(repr(n) for n in NAMES)}")
    return _BACKENDS[name]


def _usable(backend: Backend) -> Backend:
    usable, reason = backend.availability()
    if not usable:
        shipped = importlib.util.find_spec(backend.module_name) is not None
        missing = not backend.library or importlib.util.find_spec(backend.library) is None
        hint = f"; install it with {backend.install}" if shipped and backend.install and missing else ""
        raise BackendUnavailable(f"backend {backend.name!r} is not available: {reason}{hint}")
    return backend


def kernels_have(*entries) -> bool:
    """Whether the compiled kernels have the formulas of these activations and losses: the catalogs' own
    entries (their classes, not a subclass of the user's with a formula of its own), which the tests hold
    every kernel to."""
    from .. import activations, losses

    catalog = (*activations.ENTRIES, *losses.ENTRIES)
    return all(type(entry) in catalog for entry in entries)


def resolve(name: str, X=None, entries=None) -> Backend:
    """The backend that runs a call given ``name``, its input X and its (activation, loss) ``entries``;
    raises :class:`BackendUnavailable` when a backend named explicitly (or needed by device input) cannot
    run.

    ``'auto'`` follows the input's array type: cupy arrays go to cupy; numpy input goes to numba when it
    is installed and has the entries' formulas (:func:`kernels_have`), else numpy. A GPU is used because
    it was asked for, never because one is present.
    """
    if name != "auto":
        return _usable(_named(name))
    if X is not None and on_device(X):
        return _usable(_BACKENDS["cupy"])
    if _BACKENDS["numba"].availability()[0] and (entries is None or kernels_have(*entries)):
        return _BACKENDS["numba"]
    return _BACKENDS["numpy"]
