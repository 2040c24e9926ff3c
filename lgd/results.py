"""Result objects: :class:`Run` (one GD run), :class:`Sweep` (a batch of them) and :class:`Phase`; their
comparison (``==``, field by field) and :func:`risk_text`, how lgd prints a risk that underflowed.

Everything here is host numpy data; saving writes one ``.npz`` file with the traces and a JSON
header, and :func:`load` reads it back into the same object. For results that outgrow one file:
:meth:`Sweep.to_xarray` (an ``xarray.Dataset`` whose axes are the sweep's stepsize, seed and starting
point; :meth:`Sweep.from_xarray` reads it, or one cell of a grid of them, ``lgd.distributed.Grid.to_xarray``),
:meth:`Sweep.to_zarr` and :func:`open_zarr`, and :class:`SweepStore`, the zarr store that
:func:`lgd.distributed.sweep` writes one batch at a time and resumes from. xarray, zarr and dask are
imported only inside these (``pip install "lgd[distributed]"``).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import KW_ONLY, dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import losses as _losses

__all__ = ["Run", "Sweep", "Phase", "phase_of", "load", "log_risk_trace", "risk_text", "open_zarr", "SweepStore"]

_SCALARS = ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "normalized_margin",
            "test_risk", "test_accuracy")


@dataclass(frozen=True)
class Phase:
    """The two phases of a large-stepsize run, read off its recorded risk.

    ``transition_step`` is the first recorded step s with risk <= ``threshold`` = min(1/eta, loss(0)/n)
    (1/eta for the squared loss), or None when the run never gets there. ``increases_before`` and
    ``increases_after`` count the recorded risk increases before and after s; ``peak_risk`` is the
    largest recorded risk up to s, s included (so that a run in the stable phase from its first record has
    one: its initial risk), over the whole run when it never gets there; ``final_rate`` is eta * t * risk at
    the last recorded step, the quantity that levels off in the stable phase (risk = O(1/(eta t))); NaN for a
    diverged run (``Run.phase``). Both are the constant stepsize's notions: for a run under a stepsize rule,
    eta is the rule's base stepsize (``run.stepsize``), not its eta_t.
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


def risk_text(risk: float, log_risk: float, missing: str = "-") -> str:
    """The risk as 1.234e-05; one that underflowed to 0.0 read off its log (1.234e-400); none (NaN: a
    diverged run's) as ``missing``."""
    if math.isnan(risk):
        return missing
    if risk != 0.0 or not math.isfinite(log_risk):
        return f"{risk:.3e}"
    exponent = math.floor(log_risk / math.log(10))
    mantissa = round(math.exp(log_risk - exponent * math.log(10)), 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.3f}e{exponent:+03d}"


def _same(value, other) -> bool:
    """Whether two fields of results are equal (see ``_Traces.__eq__``)."""
    if isinstance(value, np.ndarray) or isinstance(other, np.ndarray):
        if not (isinstance(value, np.ndarray) and isinstance(other, np.ndarray)):
            return False
        return (value.dtype == other.dtype and value.shape == other.shape
                and np.array_equal(value, other, equal_nan=value.dtype.kind in "fc"))
    if isinstance(value, float) and isinstance(other, float) and math.isnan(value) and math.isnan(other):
        return True
    return value == other


def _threshold(stepsize: float, loss, n: int) -> float:
    if loss.margin:
        return min(1.0 / stepsize, loss.at_zero / n)
    return 1.0 / stepsize


@dataclass(eq=False)
class _Traces:
    """What a run and a sweep both hold: traces at ``step``, and the final weights; and their comparison."""

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

    def __eq__(self, other):
        """Every field equal: arrays of the same dtype, shape and values (NaN equal to NaN, as in the traces after a
        divergence), ``seconds`` and ``meta`` included. A result equals itself and what :func:`load` and
        :meth:`Sweep.from_xarray` read back of it; two computations of one run differ in their seconds."""
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    @property
    def model(self):
        """The model the result was computed with, rebuilt from its metadata (also after :func:`load`)."""
        from .models import model_from_config

        return model_from_config(self.meta["model"])

    @property
    def sharpness_limit(self):
        """2/eta (per config for a sweep): the sharpness above which GD on a quadratic of that
        curvature diverges, the line the sharpness hovers at in the edge of stability (Cohen et al.). NaN
        under a stepsize rule other than a constant one, whose eta_t moves from step to step (``eta`` has it
        at the recorded steps)."""
        from .stepsize import is_constant

        rules = self.stepsize_rule
        if isinstance(self.stepsize, np.ndarray):
            constant = np.array([is_constant(rule) for rule in (rules or [None] * len(self.stepsize))])
            return np.where(constant, 2.0 / self.stepsize, np.nan)
        return 2.0 / self.stepsize if is_constant(rules) else math.nan


@dataclass(eq=False)  # _Traces.__eq__ compares the arrays, which the generated one cannot
class Run(_Traces):
    """One GD run: traces at the recorded steps (host numpy arrays) and how it ended.

    Traces (shape (R,), at ``step``): ``risk``, ``accuracy``, ``grad_norm``, ``weight_norm``
    (||W||_F, with the outer weights when they are trained), ``margin`` (min_i y_i f(x_i)),
    ``normalized_margin`` (margin / weight_norm, or / weight_norm^2 when both layers are trained: over the norm
    to the power of the trained layers), ``test_risk`` and ``test_accuracy`` (None without
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
    of the tangent vectors at each recorded step. ``init_index``: the starting point of a sweep's ``inits`` or
    ``outer_inits``.
    ``stepsize_rule``: the rule's spec (``'constant(10)'``, ``'adaptive(1)'``, ...; lgd.stepsize) and ``eta``
    (R,) the stepsize eta_t it gave at each recorded step (for a diverged run, where it was computed).

    ``initial_weights`` and ``initial_outer_weights``: W_0 and a_0. With ``lgd.Record(weights=k)``:
    ``trajectory`` (R_w, m, d) and ``outer_trajectory`` (R_w, m, when the outer weights are trained), or
    ``projections`` (R_w, P) onto ``Record.project_onto``, at ``trajectory_step`` (R_w,). ``init_index``:
    which of the sweep's ``inits`` (or ``outer_inits``) the run started from. Each is None when not recorded.
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
        phase = phase_of(self.step, self.risk, self.stepsize, _threshold(self.stepsize, loss, self.meta["n"]),
                         log_risk=self.log_risk)
        # A diverged run reached no final step: no final rate, as no final risk.
        return replace(phase, final_rate=math.nan) if self.status == "diverged" else phase

    @property
    def final_risk(self) -> float:
        """The risk at the last recorded step (where an interrupted run stopped); NaN for a diverged run, which
        reached no final risk (its records up to the divergence are in ``risk``)."""
        if self.status == "diverged" or not self.risk.size:
            return math.nan
        return float(self.risk[-1])

    @property
    def final_log_risk(self) -> float:
        """log L at the last recorded step: finite also where :attr:`final_risk` underflowed to 0.0; NaN for a
        diverged run."""
        trace = log_risk_trace(self)
        return float(trace[-1]) if trace.size and self.status != "diverged" else math.nan

    def __repr__(self) -> str:
        return (f"Run(stepsize={self.stepsize:g}, steps={self.steps}, status={self.status!r}, "
                f"final_risk={risk_text(self.final_risk, self.final_log_risk, 'nan')}, "
                f"backend={self.meta.get('backend')!r})")

    def to_pandas(self):
        """The scalar traces as a DataFrame indexed by step (pandas is imported here, on demand)."""
        import pandas as pd

        columns = {name: getattr(self, name) for name in (*_SCALARS, "log_risk", "eta")
                   if getattr(self, name) is not None}
        return pd.DataFrame(columns, index=pd.Index(self.step, name="step"))

    def save(self, path) -> Path:
        """Write the run to ``path`` (``.npz`` appended unless it ends so) and return the path written;
        :func:`lgd.load` reads it back under either name."""
        return _save(path, "run", self)


@dataclass(eq=False)
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
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"a Sweep is indexed by one configuration's number (an int), got {type(i).__name__}: "
                            "sweep[i] is that configuration's Run; iterate over the sweep for all of them")
        if not -len(self) <= i < len(self):
            raise IndexError(f"configuration {i} is not in this sweep of {len(self)} configurations (0 to "
                             f"{len(self) - 1}, or -{len(self)} to -1 from the end)")
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
        """:attr:`Run.final_risk` of every config (NaN for a diverged one)."""
        return np.array([run.final_risk for run in self])

    def __repr__(self) -> str:
        return (f"Sweep({len(self)} configs, steps={self.steps}, "
                f"diverged={int(np.sum(self.diverged_step >= 0))}, backend={self.meta.get('backend')!r})")

    def to_pandas(self):
        """Long-format DataFrame: one row per (config, recorded step)."""
        import pandas as pd

        def names(run):  # the rule tells apart constant(1) and warmup(1, 10); the start, points of one seed
            start = {} if run.init_index is None else {"start": run.init_index}
            return dict(stepsize_rule=run.stepsize_rule, **start)

        return pd.concat([run.to_pandas().reset_index().assign(config=i, stepsize=run.stepsize, seed=run.seed,
                                                               **names(run))
                          for i, run in enumerate(self)], ignore_index=True)

    def save(self, path) -> Path:
        """Write the sweep to ``path`` (``.npz`` appended unless it ends so) and return the path written;
        :func:`lgd.load` reads it back under either name."""
        return _save(path, "sweep", self)

    def to_xarray(self, grid: bool = True):
        """The sweep as an ``xarray.Dataset`` (xarray is imported here: ``pip install "lgd[distributed]"``).

        With ``grid`` (and the configurations a full product, as :func:`lgd.sweep` makes them) the
        configuration axis is reshaped to the dimensions ``stepsize``, ``seed`` and ``start`` (the starting
        point, ``init_index``; length 1 without ``inits``), with those coordinates and ``stepsize_rule``
        along ``stepsize``; otherwise (or for configurations that are not a product) one ``config``
        dimension carries them as coordinates. The traces have the ``step`` dimension (``trajectory_step``,
        ``sharpness_step`` for theirs), the weights ``neuron`` and ``feature``; ``status`` (strings),
        ``diverged_step`` and ``steps_taken`` are per-configuration data variables. ``Sweep.from_xarray``
        reads it back, bit for bit; the header (``steps``, ``seconds``, ``meta``) is the JSON attribute ``lgd``.

        >>> import lgd
        >>> X, y = lgd.data.xor(n=20)
        >>> result = lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=[1.0, 2.0, 4.0], steps=10, seeds=(0, 1),
        ...                    compute="numpy")
        >>> ds = result.to_xarray()                                    # doctest: +SKIP
        >>> ds.risk.dims, ds.risk.shape                                # doctest: +SKIP
        (('stepsize', 'seed', 'start', 'step'), (3, 2, 1, 11))
        """
        return _to_xarray(self, grid)

    @classmethod
    def from_xarray(cls, dataset) -> "Sweep":
        """The sweep of a dataset written by :meth:`to_xarray` (either layout; also a store's region, and one cell
        of a grid, ``grid.sel(dataset=NAME, width=WIDTH)`` of ``lgd.distributed.Grid.to_xarray`` or of the grid.zarr
        or grid.nc of ``lgd sweep``), its integers int64 whatever the file held (netCDF3: 32 bits)."""
        return _from_xarray(dataset)

    def to_zarr(self, path, group: str | None = None, mode: str = "w-"):
        """Write :meth:`to_xarray` to the zarr store ``path`` (in ``group``; ``mode='w'`` overwrites);
        ``xarray.open_zarr(path)`` and :func:`open_zarr` read it back."""
        self.to_xarray().to_zarr(os.fspath(path), group=group, mode=mode, zarr_format=ZARR_FORMAT,
                                 consolidated=True)
        return path


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


def _host(value) -> np.ndarray:
    """A numpy array of ``value`` (a cupy array is copied from the device)."""
    return value.get() if type(value).__module__.startswith("cupy") else np.asarray(value)


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
            arrays[f.name] = _host(value)
    path = _npz_name(path)
    np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)
    return path


def read_archive(path) -> tuple:
    """(header, arrays) of an ``.npz`` file lgd wrote (a result or a checkpoint), a path or a binary file open
    for reading (read from where it stands, as numpy.load reads it): the JSON object of its ``header`` entry and
    its other arrays. ValueError (or the reading's OSError, KeyError, ...) naming what is wrong with any other
    file."""
    if hasattr(path, "read"):
        if isinstance(path, io.TextIOBase):
            raise ValueError("a file open in text mode: open it with mode 'rb'")
        if not path.seekable():  # numpy reads an archive's table of contents at its end
            raise ValueError("an open file that cannot seek: read it into io.BytesIO first")
        start = path.tell()
        magic = path.read(6)
        path.seek(start)
    else:
        with open(path, "rb") as file:
            magic = file.read(6)
    if magic == b"\x93NUMPY":  # a .npy file
        raise ValueError("one array, not an archive")
    if not magic.startswith(b"PK"):  # numpy would say it holds pickled data
        raise ValueError("it is no npz archive")
    loaded = np.load(path, allow_pickle=False)
    with loaded as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(str(arrays.pop("header")))
    if not isinstance(header, dict):
        raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
    return header, arrays


def load(path):
    """Read a :class:`Run` or :class:`Sweep` written by its ``save`` method.

    ``path`` is tried as given, then with ``.npz`` appended: the names ``save`` accepts load back. A binary file
    open for reading (``io.BytesIO``, ``open(path, "rb")``) is read from where it stands, as ``save`` wrote it.
    A zarr store or a netCDF file (``to_zarr``, ``lgd sweep``'s grid) is refused with the function that reads it.
    """
    named = isinstance(path, (str, os.PathLike))
    if named and not os.path.exists(path) and os.path.exists(_npz_name(path)):
        path = _npz_name(path)
    where = repr(os.fspath(path)) if named else f"the file {path!r}"
    kind = _xarray_file(path) if named else None
    if kind is not None:
        raise ValueError(f"{where} is {kind}, not a result that Run.save or Sweep.save wrote (the .npz files "
                         f"lgd.load reads): {XARRAY_READERS}")
    try:
        header, values = read_archive(path)
        if header.get("kind") not in ("run", "sweep") or "lgd_format" not in header:
            raise ValueError("no lgd result header" + (" (an lgd checkpoint: lgd.resume reads it)"
                                                       if "lgd_checkpoint" in header else ""))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{where} is not a result lgd saved, or it is damaged ({type(exc).__name__}: {exc})") from None
    kind = header.pop("kind")
    header.pop("lgd_format")
    for name in header.pop("none", []):
        values[name] = None
    values.update(header)
    cls = Run if kind == "run" else Sweep
    return cls(**values)



# --- xarray and zarr -------------------------------------------------------------------------------------------

# The dimensions after the configuration axis of each per-configuration field of a Sweep in its xarray form
# (a Linear model's weights have no neuron axis). Also the order of the data variables.
_DIMS = {**{name: ("step",) for name in ("risk", "log_risk", "accuracy", "grad_norm", "weight_norm", "margin",
                                           "normalized_margin", "eta", "test_risk", "test_accuracy")},
         "neuron_margins": ("step", "neuron"), "lyapunov_sum": ("step", "exponent"),
         "weights": ("neuron", "feature"), "outer_weights": ("neuron",), "initial_weights": ("neuron", "feature"),
         "initial_outer_weights": ("neuron",), "trajectory": ("trajectory_step", "neuron", "feature"),
         "outer_trajectory": ("trajectory_step", "neuron"), "projections": ("trajectory_step", "direction"),
         "lyapunov": ("exponent",), "sharpness": ("sharpness_step", "eigenvalue"),
         "status": (), "diverged_step": (), "steps_taken": ()}
_LINEAR_WEIGHTS = ("weights", "initial_weights", "trajectory")
# The fields of a Sweep with one entry per configuration (arrays, or lists for status and stepsize_rule):
# what joining the batches of a sweep concatenates, in configuration order.
CONFIG_FIELDS = (*_DIMS, "stepsize", "seed", "init_index", "stepsize_rule")
# The axes a sweep's configurations span, in their order (stepsize-major): lgd.sweep's product.
GRID_DIMS = ("stepsize", "seed", "start")
# The axes of a grid of sweeps (lgd.distributed.Grid.to_xarray) before those of its cells.
GRID_CELL_DIMS = ("dataset", "width")
# The coordinates of the recorded steps of each kind of trace.
_STEP_DIMS = ("step", "trajectory_step", "sharpness_step")
# The integer fields of a Sweep, all int64.
_INTEGER_FIELDS = (*_STEP_DIMS, "diverged_step", "steps_taken", "seed", "init_index")
# What reads each of lgd's xarray forms, for a call given one it cannot read.
XARRAY_READERS = ("lgd.results.open_zarr(path) reads a sweep's zarr store (Sweep.to_zarr, the store of "
                  "lgd.distributed.sweep), lgd.distributed.open_grid(path) the grid that `lgd sweep` writes (grid.zarr "
                  "or grid.nc), and lgd.Sweep.from_xarray a sweep's xarray.Dataset")
# 'completed', 'diverged', 'interrupted' as fixed-width strings, so that every batch writes into one array.
STATUS_DTYPE = "<U11"
# zarr format 2: its fixed-width strings are in the specification (format 3 warns that they are not yet).
ZARR_FORMAT = 2
# The files that make a folder a zarr store (either format), as SweepStore.prepare tells one.
ZARR_METADATA = (".zgroup", ".zattrs", ".zmetadata", "zarr.json")
# Elements at most in one zarr chunk (64 MB of float64): the step axis is split where a batch's block is longer.
CHUNK_ELEMENTS = 1 << 23


def _xarray_file(path) -> str | None:
    """'a zarr store' or 'a netCDF file' when ``path`` is one (what to_zarr and ``lgd sweep`` write), else None."""
    if os.path.isdir(path):
        return "a zarr store" if any(os.path.exists(os.path.join(path, name)) for name in ZARR_METADATA) else None
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError:
        return None
    return "a netCDF file" if magic[:3] == b"CDF" or magic == b"\x89HDF" else None


def _xarray():
    try:
        import xarray
    except ImportError:
        raise ImportError('xarray results need xarray and zarr: pip install "lgd[distributed]"') from None
    return xarray


def _field_dims(name: str, meta: dict) -> tuple:
    dims = _DIMS[name]
    if name in _LINEAR_WEIGHTS and meta.get("model", {}).get("kind") == "Linear":
        return tuple(dim for dim in dims if dim != "neuron")
    return dims


def grid_shape(sweep) -> tuple | None:
    """(stepsizes, seeds, starts) when the configurations of ``sweep`` are that product in lgd.sweep's order
    (stepsize-major, then seed, then starting point), else None."""
    count = len(sweep)
    seeds = np.asarray(sweep.seed)
    order = np.array(list(dict.fromkeys(seeds.tolist())), dtype=seeds.dtype)
    starts = 1 if sweep.init_index is None else len(set(np.asarray(sweep.init_index).tolist()))
    if count == 0 or count % (order.size * starts):
        return None
    shape = (count // (order.size * starts), order.size, starts)
    if not np.array_equal(seeds.reshape(shape), np.broadcast_to(order[None, :, None], shape)):
        return None
    if sweep.init_index is not None:
        index = np.asarray(sweep.init_index).reshape(shape)
        if not np.array_equal(index, np.broadcast_to(index[:1, :1, :], shape)):
            return None
    for per_config in (np.asarray(sweep.stepsize),
                       None if sweep.stepsize_rule is None else np.asarray(sweep.stepsize_rule)):
        if per_config is not None:
            blocks = per_config.reshape(shape[0], -1)
            if not np.array_equal(blocks, np.broadcast_to(blocks[:, :1], blocks.shape)):
                return None
    return shape


def _to_xarray(sweep, grid: bool):
    xr = _xarray()
    shape = grid_shape(sweep) if grid else None
    count = len(sweep)
    start = np.zeros(count, np.int64) if sweep.init_index is None else np.asarray(sweep.init_index, np.int64)
    stepsize, seed = np.asarray(sweep.stepsize, np.float64), np.asarray(sweep.seed, np.int64)
    rules = None if sweep.stepsize_rule is None else np.array(sweep.stepsize_rule, dtype=str)
    if shape is not None:
        lead, per_block = GRID_DIMS, shape[1] * shape[2]
        coords = {"stepsize": stepsize[::per_block], "seed": seed[:per_block:shape[2]], "start": start[:shape[2]]}
        if rules is not None:
            coords["stepsize_rule"] = ("stepsize", rules[::per_block])
    else:
        lead, shape = ("config",), (count,)
        coords = {"config": np.arange(count), "stepsize": ("config", stepsize), "seed": ("config", seed),
                  "start": ("config", start)}
        if rules is not None:
            coords["stepsize_rule"] = ("config", rules)
    for name in _STEP_DIMS:
        if getattr(sweep, name) is not None:
            coords[name] = np.asarray(getattr(sweep, name), np.int64)
    data = {}
    for name in _DIMS:
        value = getattr(sweep, name)
        if value is None:
            continue
        value = np.array(value, dtype=STATUS_DTYPE) if name == "status" else _host(value)
        data[name] = (lead + _field_dims(name, sweep.meta), value.reshape(shape + value.shape[1:]))
    # Plain json (NaN and Infinity kept) as in the .npz header: only from_xarray reads it, and reads it exactly.
    header = {"lgd_xarray": 1, "steps": sweep.steps, "seconds": sweep.seconds,
              "steps_per_second": sweep.steps_per_second, "meta": sweep.meta,
              "init_index": sweep.init_index is not None, "stepsize_rule": rules is not None}
    return xr.Dataset(data, coords=coords, attrs={"lgd": json.dumps(header)})


def cell_key(name: str, width: int) -> str:
    """The key of cell (dataset ``name``, ``width``) among the headers of a grid's xarray form (Grid.to_xarray)."""
    return f"{name}/{int(width)}"


def _grid_refusal(cells: list) -> str:
    name, width = cells[0].rsplit("/", 1)
    return (f"the dataset is a grid over datasets and widths (lgd.distributed.Grid.to_xarray, the grid.zarr or grid.nc "
            f"of `lgd sweep`; cells {', '.join(cells)}), not one sweep: lgd.distributed.open_grid(path) reads such a "
            f"file as a Grid (grid[{name!r}, {width}] is a cell's Sweep), and "
            f"lgd.Sweep.from_xarray(dataset.sel(dataset={name!r}, width={width})) one cell")


def _sweep_header(dataset) -> tuple:
    """(header, dataset) of the sweep in ``dataset``: its attribute ``lgd``; for one cell selected from a grid
    (``grid.sel(dataset=NAME, width=WIDTH)``), that cell's header among the grid's and the cell without the grid's
    padding. ValueError for a whole grid, or a dataset lgd did not write, saying how to read it."""
    if "lgd" not in dataset.attrs:
        raise ValueError("the dataset has no attribute 'lgd': it is none that lgd.Sweep.to_xarray or "
                         "lgd.distributed.Grid.to_xarray wrote")
    header = json.loads(dataset.attrs["lgd"])
    if "lgd_xarray" in header:
        return header, dataset
    cells = list(header)
    if any(dim in dataset.dims or dim not in dataset.coords for dim in GRID_CELL_DIMS):
        raise ValueError(_grid_refusal(cells))
    key = cell_key(dataset["dataset"].item(), dataset["width"].item())
    if key not in header:
        raise ValueError(f"the grid's headers have no cell {key} (its cells: {', '.join(cells)})")
    header = header[key]
    # Grid.to_xarray pads the fields that follow the width or the data to the grid's largest: cut to this cell's.
    sizes = {"neuron": header["meta"]["model"].get("width"), "feature": header["meta"].get("d")}
    return header, dataset.isel({dim: slice(0, size) for dim, size in sizes.items()
                                 if size is not None and dim in dataset.dims})


def _from_xarray(dataset):
    header, dataset = _sweep_header(dataset)
    lead = ("config",) if "config" in dataset.dims else GRID_DIMS

    def per_config(name):
        variable = dataset[name]
        values = variable.transpose(*lead, *(d for d in variable.dims if d not in lead)).values
        return values.reshape((-1,) + values.shape[len(lead):])

    if lead == GRID_DIMS:
        stepsizes, seeds, starts = (dataset.sizes[dim] for dim in GRID_DIMS)
        per_block = seeds * starts
        stepsize = np.repeat(dataset["stepsize"].values, per_block)
        seed = np.tile(np.repeat(dataset["seed"].values, starts), stepsizes)
        start = np.tile(dataset["start"].values, stepsizes * seeds)
        rules = np.repeat(dataset["stepsize_rule"].values, per_block) if header["stepsize_rule"] else None
    else:
        stepsize, seed, start = (dataset[name].values for name in ("stepsize", "seed", "start"))
        rules = dataset["stepsize_rule"].values if header["stepsize_rule"] else None
    fields = {name: per_config(name) if name in dataset.data_vars else None for name in _DIMS}
    fields |= {name: dataset[name].values if name in dataset.coords else None for name in _STEP_DIMS}
    fields |= {"status": [str(s) for s in fields["status"]], "stepsize": stepsize.astype(np.float64), "seed": seed,
               "init_index": start if header["init_index"] else None,
               "stepsize_rule": None if rules is None else [str(rule) for rule in rules]}
    # netCDF3 holds 32-bit integers only (and a store's reader may choose its own): the Sweep's are int64.
    fields |= {name: fields[name].astype(np.int64) for name in _INTEGER_FIELDS if fields[name] is not None}
    seconds = header["seconds"]
    if seconds is None:  # a store: the batches' seconds, each recorded as it finished
        seconds = float(np.sum(dataset["batch_seconds"].values))
    return Sweep(**fields, steps=header["steps"], seconds=seconds,
                 steps_per_second=_rate(int(fields["steps_taken"].sum()), seconds), meta=header["meta"])


def open_zarr(path, group: str | None = None) -> Sweep:
    """The :class:`Sweep` in the zarr store ``path`` (``group``): one written by :meth:`Sweep.to_zarr`, or a
    :class:`SweepStore` whose batches have all finished (``xarray.open_zarr`` reads either as a Dataset). The grid
    of ``lgd sweep`` (grid.zarr) is refused, with the functions that read it (``lgd.distributed.open_grid``)."""
    if _xarray_file(path) == "a netCDF file":
        raise ValueError(f"{os.fspath(path)} is a netCDF file, not a zarr store: {XARRAY_READERS}")
    dataset = _xarray().open_zarr(os.fspath(path), group=group)
    if "batch_finished" in dataset:
        missing = int(np.count_nonzero(~dataset["batch_finished"].values))
        if missing:
            raise ValueError(f"the sweep in {path} is not complete: {missing} of {dataset.sizes['batch']} batches "
                             "have not finished (run the sweep again with this store to finish them)")
    try:
        return _from_xarray(dataset.load())
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from None


class SweepStore:
    """A sweep's zarr store, written one batch at a time as the batches finish (by :func:`lgd.distributed.sweep`).

    The layout is that of :meth:`Sweep.to_xarray` on the whole sweep (dimensions ``stepsize``, ``seed``,
    ``start``, ``step``, ...), chunked by batch: a batch is a block of the (stepsize, seed, start) grid, and
    its results go to that region. Besides, per batch: ``batch_finished`` (set after the batch's data are
    written, so that a store interrupted anywhere says only what is whole) and ``batch_seconds``. The
    attribute ``lgd_store`` holds the sweep's fingerprint and its batches: a restarted sweep with the same
    fingerprint reruns only the batches not finished; one with another is refused (it would mix two sweeps).
    ``xarray.open_zarr(path, group=group)`` reads the store as it is; :func:`open_zarr` reads a finished one.
    """

    def __init__(self, path, group: str | None = None):
        self.path, self.group = os.fspath(path), group

    @property
    def _folder(self) -> str:
        """The folder the sweep's data go to: the store's, or its group's within it."""
        return self.path if self.group is None else os.path.join(self.path, self.group)

    @property
    def _creating(self) -> str:
        """A file beside the store (outside it: zarr warns of a file it does not know among a group's members)
        while :meth:`create` writes the sweep's layout: a store killed then is half made, and a rerun makes it
        afresh (no batch of it can have finished)."""
        group = "" if self.group is None else "." + self.group.strip("/").replace("/", ".")
        return os.path.normpath(self.path) + group + ".lgd-creating"

    def prepare(self) -> None:
        """Make the store's folder (with its parents) if it is not there, so that a path no batch could be
        written to is refused before any runs: ValueError naming the path and why. A folder holding files
        that are not a zarr store is refused too (writing the store would delete them)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"the store {self.path} is a file, not a zarr store (a folder); choose another path")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"the store {self.path} cannot be made: {exc.strerror or exc}; choose another "
                             "path") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ValueError(f"the store {self.path} is not writable; choose another path")
        for folder in dict.fromkeys((self.path, self._folder)):  # the store, and its group's folder in it
            if (os.path.isdir(folder) and os.listdir(folder) and not os.path.exists(self._creating)
                    and not any(os.path.exists(os.path.join(folder, name)) for name in ZARR_METADATA)):
                raise ValueError(f"{folder} holds files and is not a zarr store: writing the store there would "
                                 "delete them or mix with them; choose a new or empty folder")

    def _open(self):
        return _xarray().open_zarr(self.path, group=self.group)

    def layout(self) -> dict | None:
        """The store's fingerprint and batches (``{'fingerprint': ..., 'batches': [...]}``), None when it holds
        no sweep yet (or one half made: see :meth:`create`)."""
        if os.path.exists(self._creating):
            return None
        try:
            dataset = self._open()
        except (FileNotFoundError, KeyError):
            return None
        if "lgd_store" not in dataset.attrs:
            where = self.path + ("" if self.group is None else f" (group {self.group})")
            raise ValueError(f"{where} is a zarr store but not an lgd sweep's; choose another path")
        return json.loads(dataset.attrs["lgd_store"])

    def finished(self) -> np.ndarray:
        """Which batches have finished (bool, one per batch)."""
        return self._open()["batch_finished"].values.astype(bool)

    def create(self, first, layout: dict, coords: dict) -> None:
        """Write the store's layout: the data variables of batch ``first`` (a Sweep) over the whole grid,
        unwritten (no chunk exists until a batch writes it), with the grid's ``coords`` (stepsize, seed,
        start, stepsize_rule) and ``layout`` (fingerprint, batches as [e0, e1, s0, s1, k0, k1])."""
        import dask.array

        xr = _xarray()
        part = first.to_xarray()
        e0, e1, s0, s1, k0, k1 = layout["batches"][0]
        block = (e1 - e0, s1 - s0, k1 - k0)
        full = tuple(len(coords[dim]) for dim in GRID_DIMS)
        variables = {}
        for name, variable in part.data_vars.items():
            trailing = variable.shape[3:]
            chunks = block + trailing
            if trailing and math.prod(chunks) > CHUNK_ELEMENTS:
                rows = max(1, CHUNK_ELEMENTS // (math.prod(block) * math.prod(trailing[1:])))
                chunks = block + (min(rows, trailing[0]),) + trailing[1:]
            fill = "" if variable.dtype.kind == "U" else np.nan if variable.dtype.kind == "f" else 0
            variables[name] = (variable.dims, dask.array.full(full + trailing, fill, dtype=variable.dtype,
                                                              chunks=chunks))
        count = len(layout["batches"])
        variables["batch_finished"] = ("batch", dask.array.zeros(count, dtype=bool, chunks=1))
        variables["batch_seconds"] = ("batch", dask.array.full(count, np.nan, chunks=1))
        header = json.loads(part.attrs["lgd"]) | {"seconds": None, "steps_per_second": None}
        grid = {"stepsize": coords["stepsize"], "seed": coords["seed"], "start": coords["start"]}
        if "stepsize_rule" in coords:
            grid["stepsize_rule"] = ("stepsize", np.asarray(coords["stepsize_rule"], dtype=str))
        template = xr.Dataset(variables, coords=grid | {name: part[name].values for name in part.coords
                                                        if name not in GRID_DIMS and name != "stepsize_rule"},
                              attrs={"lgd": json.dumps(header), "lgd_store": json.dumps(layout)})
        with open(self._creating, "w"):  # beside the store, whose folder prepare() made
            pass
        template.to_zarr(self.path, group=self.group, mode="w", compute=False, zarr_format=ZARR_FORMAT,
                         consolidated=True)
        os.remove(self._creating)

    def write(self, index: int, part) -> None:
        """Write batch ``index`` (a Sweep) into its region, then mark it finished."""
        xr = _xarray()
        e0, e1, s0, s1, k0, k1 = self.layout()["batches"][index]
        dataset = part.to_xarray()
        if grid_shape(part) != (e1 - e0, s1 - s0, k1 - k0):
            raise ValueError(f"batch {index} has {len(part)} configurations, not the block {e1 - e0} x {s1 - s0} x "
                             f"{k1 - k0} of the store")
        # The coordinates are the template's: a region write carries only the data.
        dataset = dataset.drop_vars(list(dataset.coords)).drop_attrs()
        dataset.to_zarr(self.path, group=self.group,
                        region={"stepsize": slice(e0, e1), "seed": slice(s0, s1), "start": slice(k0, k1)})
        done = xr.Dataset({"batch_finished": ("batch", np.array([True])),
                           "batch_seconds": ("batch", np.array([part.seconds], dtype=np.float64))})
        done.to_zarr(self.path, group=self.group, region={"batch": slice(index, index + 1)})

    def read(self, index: int) -> Sweep:
        """Batch ``index`` as a Sweep, read back from the store: bit for bit what was written, the lgd.sweep call of
        the batch's configurations, whose ``init_index`` numbers the starting points from the batch's first (the
        store's ``start`` is the sweep's: k0, k0 + 1, ...)."""
        e0, e1, s0, s1, k0, k1 = self.layout()["batches"][index]
        region = self._open().isel(stepsize=slice(e0, e1), seed=slice(s0, s1), start=slice(k0, k1),
                                   batch=slice(index, index + 1))
        return _from_xarray(region.assign_coords(start=region["start"].values - k0).load())
