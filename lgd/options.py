"""The option objects of :func:`lgd.gd` and :func:`lgd.sweep`: what a run records and where it computes.

What lives here:

- :class:`Record` -- what a run records (every how many steps, per-neuron margins, the sharpness);
  ``record=k`` is the shorthand for ``Record(every=k)``;
- :class:`Compute` -- where and how the run computes (backend, dtype, progress bar);
  ``compute="numba"`` is the shorthand for ``Compute(backend="numba")``;
- :class:`Divergence` -- when a run counts as diverged and stops; ``divergence=x`` is the shorthand
  for ``Divergence(risk=x)``;
- :func:`resolve` -- turns the ``record`` and ``compute`` arguments (shorthands included) and the
  keywords that predate these objects into one ``Record`` and one ``Compute``, warning about the old
  keywords. Each object checks its fields when it is built, so a bad option fails before any work.

What does not live here: whether a backend can run on this machine (:mod:`lgd.backends`, asked by the
driver when the run starts) and the checks of the data, stepsizes and seeds (:mod:`lgd.driver`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from .backends import NAMES as BACKEND_NAMES

__all__ = ["Record", "Compute", "Divergence", "as_divergence", "resolve", "DEPRECATED"]


def check_count(value, name: str) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def real_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array, or ValueError naming ``name`` unless it holds real numbers (a complex one
    would lose its imaginary part in the cast, with numpy's warning only)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _check_flag(value, name: str):
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise ValueError(f"{name} must be None, True or False, got {value!r}")


@dataclass(frozen=True)
class Record:
    """What a run records, besides the per-step metrics every run has.

    Parameters
    ----------
    every : int >= 1
        Record the metrics (risk, accuracy, norms, margins, test metrics) at steps 0, k, 2k, ... and
        the last step T, for k = ``every``. ``record=k`` in :func:`lgd.gd` is short for ``Record(every=k)``.
    neuron_margins : None | bool
        Record per-neuron margins min_i y_i a_j phi(w_j . x_i) (records x width numbers per run);
        None records them when they take at most 2^24 numbers over all the call's configurations.
    sharpness_every : None | int >= 1
        Every that many steps (t = 0, s, 2s, ... and T) record the ``sharpness_k`` largest Hessian
        eigenvalues of the risk at W_t (of (W_t, a_t) with a trained outer layer) into ``run.sharpness``
        at ``run.sharpness_step``; compare with ``run.sharpness_limit`` = 2/eta. Measured by the backend
        inside its steps for every configuration (numba: Lanczos on exact Hessian-vector products in the
        kernel; numpy: :func:`lgd.hessian.sharpness`, scipy's eigsh), so counted in ``run.seconds``; a
        backend that cannot (cupy) has it measured between chunks by :func:`lgd.hessian.sharpness`,
        timed apart in ``run.meta['sharpness_seconds']``. None records no sharpness.
    sharpness_k : int >= 1
        How many of the largest eigenvalues.
    sharpness_points : None | int >= 1
        The sharpness is that of the risk on the first that many training points (all when None;
        Cohen et al. use 5,000).
    weights : None | int >= 1
        Record the trajectory: the weights W_t (and the outer weights a_t when they are trained) at steps
        0, k, 2k, ... and T for k = ``weights``, into ``run.trajectory`` at ``run.trajectory_step``
        (records x width x d numbers per configuration, in the run's dtype). None records none.
    lyapunov : None | int >= 1
        Lyapunov exponents of the GD map W -> W - eta grad L(W): propagate that many tangent vectors through
        its tangent map I - eta H(W_t) at every step (one exact Hessian-vector product each, then QR by
        modified Gram-Schmidt), inside the kernels; ``run.lyapunov`` (k,) holds the top k exponents (the
        log growth per step over the steps taken, largest first) and ``run.lyapunov_sum`` (R, k) the
        cumulative log growth at each recorded step, whose difference quotients give the exponents over
        any window (:func:`lgd.dynamics.lyapunov_window`). The tangent vectors start orthonormal, drawn
        from ``numpy.random.default_rng([2, seed])``. None computes none.
    project_onto : None | array (P, width, d), or (P, d) for lgd.Linear
        With ``weights``, record instead the projections <W_t, V_p> = sum_jk V_pjk (W_t)_jk onto these P
        directions (e.g. random or top-Hessian directions), into ``run.projections`` (float64): for
        models too large to keep their weights at every step.

    Every field is checked here, so a bad value fails before a run starts. The object is frozen:
    ``dataclasses.replace(record, every=10)`` gives a changed copy.

    Examples
    --------
    >>> import lgd
    >>> X, y = lgd.data.xor(n=20)
    >>> record = lgd.Record(every=5, sharpness_every=10)
    >>> run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=20, record=record, compute="numpy")
    >>> run.step.tolist(), run.sharpness_step.tolist()
    ([0, 5, 10, 15, 20], [0, 10, 20])
    >>> lgd.Record(every=0)
    Traceback (most recent call last):
    ...
    ValueError: Record.every must be an integer >= 1, got 0
    """

    every: int = 1
    neuron_margins: bool | None = None
    sharpness_every: int | None = None
    sharpness_k: int = 1
    sharpness_points: int | None = None
    weights: int | None = None
    project_onto: np.ndarray | None = dataclasses.field(default=None, compare=False)
    lyapunov: int | None = None

    def __post_init__(self):
        if self.project_onto is not None:
            directions = real_array(self.project_onto, "Record.project_onto")  # a copy: made read-only below
            if directions.ndim not in (2, 3) or directions.shape[0] < 1 or not np.all(np.isfinite(directions)):
                raise ValueError("Record.project_onto must be a finite array of shape (P, width, d) (or (P, d) for "
                                 f"lgd.Linear) with P >= 1, got shape {directions.shape}")
            if self.weights is None:
                raise ValueError("Record.project_onto needs Record.weights (every how many steps to project)")
            directions.setflags(write=False)
            object.__setattr__(self, "project_onto", directions)
        checked = {"every": check_count(self.every, "Record.every"),
                   "neuron_margins": _check_flag(self.neuron_margins, "Record.neuron_margins"),
                   "sharpness_k": check_count(self.sharpness_k, "Record.sharpness_k")}
        for name in ("sharpness_every", "sharpness_points", "weights", "lyapunov"):
            value = getattr(self, name)
            checked[name] = None if value is None else check_count(value, f"Record.{name}")
        for name, value in checked.items():  # plain Python values, whatever numpy scalars came in
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Compute:
    """Where and how a run computes; the results are the same on every backend, only the speed differs.

    Parameters
    ----------
    backend : 'auto' | 'numpy' | 'numba' | 'cupy'
        ``'auto'`` follows the input's array type: cupy for cupy inputs; for numpy inputs numba when
        installed, else numpy, and numpy for an activation or loss of your own, which no kernel has (a
        GPU is used because it was asked for, not because one is present). A
        backend named explicitly that cannot run raises :class:`lgd.BackendUnavailable` when the run starts
        (the name itself is checked here). ``compute="numba"`` in :func:`lgd.gd` is short for
        ``Compute(backend="numba")``.
    dtype : None | 'float64' | 'float32'
        Precision of the whole run; None keeps float32 input as float32 and uses float64 otherwise.
        Any spelling numpy understands (``np.float32``, ``'f4'``) is stored as the name.
    progress : None | bool
        A tqdm progress bar; None shows one only when stderr is a terminal and tqdm is installed (True
        without tqdm is an ImportError naming the extra).

    Examples
    --------
    >>> import lgd
    >>> lgd.Compute("numpy", dtype="f4")
    Compute(backend='numpy', dtype='float32', progress=None)
    >>> X, y = lgd.data.xor(n=20)
    >>> run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=10, compute=lgd.Compute("numpy", dtype="float32"))
    >>> run.meta["backend"], run.weights.dtype.name
    ('numpy', 'float32')
    >>> lgd.Compute(backend="jax")
    Traceback (most recent call last):
    ...
    ValueError: unknown backend 'jax'; valid: 'auto', 'numpy', 'numba', 'cupy'
    """

    backend: str = "auto"
    dtype: str | None = None
    progress: bool | None = None

    def __post_init__(self):
        valid = ("auto", *BACKEND_NAMES)
        if not isinstance(self.backend, str) or self.backend not in valid:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(repr(n) for n in valid)}")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        object.__setattr__(self, "progress", _check_flag(self.progress, "Compute.progress"))


@dataclass(frozen=True)
class Divergence:
    """When a run counts as diverged, and stops there with its trace kept (status 'diverged').

    Besides a risk, a gradient or a weight norm that is not finite (always: weights that an update took past the
    dtype's range, where the loss and its gradient may still be finite; in float64 a norm whose square passes
    1.8e308, weights beyond about 1e154), a run stops at the first step t where

    - its risk exceeds ``risk`` times the reference risk max(1, L_0), L_0 the risk of the zero predictor
      f = 0 on the training data (loss(0) for the margin losses, mean(y^2)/2 for the squared loss): a
      relative bound, so it means the same whatever the loss and the scale of the targets; or
    - the norm of its weights sqrt(|W_t|^2 + |a_t|^2) (a when trained) exceeds ``weight_norm`` (absolute).

    ``run.diverged_step`` is t and the final weights are W_t; the traces end with step t when it is a
    recorded step (every step with ``record=1``; with ``every=k``, when k divides t: else they end with the
    last multiple of k before it). The default (1e10, no weight bound) catches a run that blows up long
    before anything overflows, and lets the edge of stability's spikes (risks of order the stepsize) pass.
    ``divergence=x`` in :func:`lgd.gd` is short for ``Divergence(risk=x)``.

    Examples
    --------
    >>> import numpy as np, lgd
    >>> X, y = np.array([[2.0]]), np.array([1.0])          # (1/2)(2w - 1)^2: smoothness 4, 2/L = 0.5
    >>> run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=0.51, steps=1000, init=np.zeros(1), compute="numpy")
    >>> run.status, int(run.diverged_step)
    ('diverged', 303)
    """

    risk: float = 1e10
    weight_norm: float = math.inf

    def __post_init__(self):
        for name in ("risk", "weight_norm"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.floating, np.integer)) \
                    or not float(value) > 0 or math.isnan(float(value)):
                raise ValueError(f"Divergence.{name} must be a positive number (inf for no bound), got {value!r}")
            object.__setattr__(self, name, float(value))


def as_divergence(divergence) -> Divergence:
    """The :class:`Divergence` of a ``divergence`` argument: the object, or a number (its risk factor)."""
    if isinstance(divergence, Divergence):
        return divergence
    if isinstance(divergence, (Real, np.floating, np.integer)) and not isinstance(divergence, (bool, np.bool_)):
        return Divergence(risk=divergence)
    raise TypeError(f"divergence must be an lgd.Divergence or a number (short for lgd.Divergence(risk=x)), "
                    f"got {divergence!r}")


def _dtype_name(dtype):
    if dtype is None:
        return None
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"Compute.dtype must be float64 or float32, got {dtype!r}") from None
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):  # either byte order: the run's is the machine's
        raise ValueError(f"Compute.dtype must be float64 or float32, got {dtype.name if dtype.isnative else dtype.str}")
    return f"float{8 * dtype.itemsize}"


# The keywords gd and sweep took before Record and Compute: keyword -> (argument, field it sets).
DEPRECATED = {"record_every": ("record", "every"), "neuron_margins": ("record", "neuron_margins"),
              "sharpness_every": ("record", "sharpness_every"), "sharpness_k": ("record", "sharpness_k"),
              "sharpness_points": ("record", "sharpness_points"), "backend": ("compute", "backend"),
              "dtype": ("compute", "dtype"), "progress": ("compute", "progress")}
_CLASSES = {"record": Record, "compute": Compute}
# The fields each argument's shorthand sets: record=k is Record(every=k), compute="name" is Compute(backend="name").
_SHORTHANDS = {"record": "every", "compute": "backend"}


def _as_record(record) -> Record:
    if isinstance(record, Record):
        return record
    if isinstance(record, Integral) and not isinstance(record, (bool, np.bool_)):
        return Record(every=record)
    raise TypeError(f"record must be an lgd.Record or an integer (short for lgd.Record(every=k)), got {record!r}")


def _as_compute(compute) -> Compute:
    if isinstance(compute, Compute):
        return compute
    if isinstance(compute, str):
        return Compute(backend=compute)
    raise TypeError(f"compute must be an lgd.Compute or a backend name (short for lgd.Compute(backend=name)), "
                    f"got {compute!r}")


def resolve(record, compute, deprecated: dict, caller: str) -> tuple[Record, Compute]:
    """The :class:`Record` and :class:`Compute` of a call to ``caller`` (``'gd'`` or ``'sweep'``).

    ``record`` and ``compute`` are the arguments as given (objects or shorthands); ``deprecated`` holds
    the call's other keywords, each one of :data:`DEPRECATED`: it sets its field with a
    DeprecationWarning pointing at the caller's caller (the user's line). A keyword not in
    :data:`DEPRECATED` is a TypeError, as Python raises it; an old keyword for a field that the new
    argument also sets (to other than its default) is a ValueError.
    """
    given = {"record": _as_record(record), "compute": _as_compute(compute)}
    for keyword in deprecated:
        if keyword not in DEPRECATED:
            raise TypeError(f"{caller}() got an unexpected keyword argument {keyword!r}")
    changes = {"record": {}, "compute": {}}
    for keyword, value in deprecated.items():
        argument, name = DEPRECATED[keyword]
        cls = _CLASSES[argument]
        replacement = f"{argument}=lgd.{cls.__name__}({name}={value!r})"
        if _SHORTHANDS[argument] == name:
            replacement += f" (or {argument}={value!r})"
        # stacklevel 3: this function, gd or sweep, then the user's call.
        warnings.warn(f"{keyword}={value!r} is deprecated: use {replacement}", DeprecationWarning, stacklevel=3)
        default = next(field.default for field in dataclasses.fields(cls) if field.name == name)
        if getattr(given[argument], name) != default:
            raise ValueError(f"{keyword}={value!r} and {argument}={given[argument]!r} both set "
                             f"{cls.__name__}.{name}: give it once, in {argument}= ({keyword}= is deprecated)")
        changes[argument][name] = value
    return (dataclasses.replace(given["record"], **changes["record"]),
            dataclasses.replace(given["compute"], **changes["compute"]))
