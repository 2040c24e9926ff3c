"""Periods and attractors read off a final window of recorded iterates: :func:`attractors`.

What lives here: the classification of every configuration of a run or sweep as converged (a fixed
point), periodic with period p, bounded without a period, or diverged, from the last ``window`` records
of its trajectory (``run.trajectory`` with ``run.outer_trajectory`` when the outer layer is trained, or
``run.projections``) or of a recorded scalar (``'risk'``, ``'log_risk'``, ``'margin'``, ...); the
compiled kernel (numba, compiled on first use and cached on disk) and its numpy twin, which the tests
hold equal. What does not: running GD (:func:`lgd.sweep`), Lyapunov exponents (:mod:`.lyapunov`),
diagrams and figures (:mod:`.diagrams`).

The rule, for the window v_0, ..., v_{N-1} of one configuration (vectors of P numbers, Euclidean norm):

- diverged: the run's status is 'diverged', or some v_t is not finite;
- period p: the smallest p in 1..max_period with |v_{t+p} - v_t| <= tol * (1 + |v_t|) for every t with
  0 <= t < N - p; p = 1 is a fixed point ("converged"), p >= 2 "periodic";
- bounded: finite, and no such p up to max_period (a chaotic attractor, a quasi-periodic orbit, a
  period above the bound, or a transient still running: read it as "no period within the window").

Only periods p <= N // 2 are tested, so that every tested p is checked on at least N / 2 pairs; the
default window is the last 4 * max_period records. The period is counted in records: with
``Record(weights=1)`` (every step) it is the period of the GD map; with ``weights=k`` a last record off the
grid of multiples of k (the final step T, or where an interrupted run stopped) is left out of the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..options import real_array

__all__ = ["attractors", "Attractors", "CONVERGED", "PERIODIC", "BOUNDED", "DIVERGED", "KINDS", "MAX_PERIOD",
           "TOLERANCE"]

CONVERGED, PERIODIC, BOUNDED, DIVERGED = 0, 1, 2, 3
KINDS = ("converged", "periodic", "bounded", "diverged")
MAX_PERIOD = 64
TOLERANCE = 1e-6

# What attractors(of='log_risk') reads for log 0 (a risk of exactly 0).
LOG_ZERO = -1e150
# The scalar traces a window can be read from (attributes of Run and Sweep).
SCALARS = ("risk", "log_risk", "margin", "normalized_margin", "grad_norm", "weight_norm", "accuracy")


@dataclass(frozen=True)
class Attractors:
    """Where each configuration ends, from the last ``window`` records (see the module docstring).

    ``kind`` (C,) int8 codes (:data:`CONVERGED` 0, :data:`PERIODIC` 1, :data:`BOUNDED` 2, :data:`DIVERGED` 3;
    names in :data:`KINDS`), ``period`` (C,) the smallest period in records (1 for a fixed point, 0 when
    bounded or diverged), ``spread`` (C,) the largest range max_t v_t - min_t v_t over the window of any
    coordinate (0 for an exact fixed point, NaN when diverged), ``window`` the records used, ``tol`` and
    ``max_period`` the rule's parameters (``max_period`` as tested: at most window // 2), ``of`` what was
    read. For a single run the arrays have one entry.
    """

    kind: np.ndarray
    period: np.ndarray
    spread: np.ndarray
    window: int
    tol: float
    max_period: int
    of: str

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def names(self) -> list:
        """The kind of each configuration as a word."""
        return [KINDS[k] for k in self.kind]

    def counts(self) -> dict:
        """How many configurations end each way: {'converged': n, 'period 2': n, ..., 'bounded': n, 'diverged': n}
        (only the outcomes that occur, periods in increasing order)."""
        counts = {}
        for code in (CONVERGED, PERIODIC, BOUNDED, DIVERGED):
            chosen = self.kind == code
            if code == PERIODIC:
                for p in np.unique(self.period[chosen]):
                    counts[f"period {int(p)}"] = int(np.sum(self.period[chosen] == p))
            elif chosen.any():
                counts[KINDS[code]] = int(np.sum(chosen))
        return counts

    def summary(self) -> str:
        """One line: the counts of :meth:`counts` and the rule they come from."""
        counts = ", ".join(f"{name}: {n}" for name, n in self.counts().items())
        return (f"{len(self)} configurations ({counts}); last {self.window} records of {self.of}, "
                f"|v(t+p) - v(t)| <= {self.tol:g} (1 + |v(t)|), p <= {self.max_period}")

    def __repr__(self) -> str:
        return f"Attractors({self.summary()})"


def _classify(values, finite_status, tol, max_period, kind, period, spread):
    """The rule of the module docstring on values (C, N, P); writes kind, period, spread (C,). Plain Python
    loops: numba compiles this function as it is, and numpy's version (:func:`_classify_numpy`) must agree."""
    configs, count, size = values.shape
    for c in range(configs):
        kind[c] = BOUNDED
        period[c] = 0
        spread[c] = np.nan
        finite = finite_status[c]
        for t in range(count):
            for j in range(size):
                if not np.isfinite(values[c, t, j]):
                    finite = False
        if not finite:
            kind[c] = DIVERGED
            continue
        widest = 0.0
        for j in range(size):
            low = values[c, 0, j]
            high = low
            for t in range(1, count):
                low = min(low, values[c, t, j])
                high = max(high, values[c, t, j])
            widest = max(widest, high - low)
        spread[c] = widest
        for p in range(1, max_period + 1):
            holds = True
            for t in range(count - p):
                gap = 0.0
                norm = 0.0
                for j in range(size):
                    gap += (values[c, t + p, j] - values[c, t, j]) ** 2
                    norm += values[c, t, j] ** 2
                if gap > (tol * (1.0 + np.sqrt(norm))) ** 2:
                    holds = False
                    break
            if holds:
                period[c] = p
                kind[c] = CONVERGED if p == 1 else PERIODIC
                break


def _classify_numpy(values, finite_status, tol, max_period, kind, period, spread):
    """:func:`_classify` in vectorised numpy (the fallback without numba; the tests hold the two equal)."""
    finite = finite_status & np.isfinite(values).all(axis=(1, 2))
    kind[:] = np.where(finite, BOUNDED, DIVERGED)
    period[:] = 0
    with np.errstate(invalid="ignore"):
        spread[:] = np.where(finite, (values.max(axis=1) - values.min(axis=1)).max(axis=1), np.nan)
    open_ = finite.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged configuration's inf and NaN: never open
        bound = (tol * (1.0 + np.sqrt((values ** 2).sum(axis=2)))) ** 2   # (C, N)
    for p in range(1, max_period + 1):
        if not open_.any():
            break
        rows = np.flatnonzero(open_)
        gap = ((values[rows, p:] - values[rows, :-p]) ** 2).sum(axis=2)
        holds = (gap <= bound[rows, :-p]).all(axis=1)
        found = rows[holds]
        period[found] = p
        kind[found] = CONVERGED if p == 1 else PERIODIC
        open_[found] = False


_COMPILED = []


def _compiled():
    """:func:`_classify` compiled by numba (on first use, cached on disk where numba finds a folder it can
    write), or None without numba."""
    if not _COMPILED:
        try:
            import numba
        except ImportError:
            _COMPILED.append(None)
        else:
            try:
                _COMPILED.append(numba.njit(cache=True, nogil=True)(_classify))
            except RuntimeError as exc:
                if "no locator available" not in str(exc):  # no cache folder numba can write: this process only
                    raise
                _COMPILED.append(numba.njit(nogil=True)(_classify))
    return _COMPILED[0]


def on_the_grid(steps) -> int:
    """How many of the records at ``steps`` are evenly spaced: all, or all but a last one off the grid (the
    final step T that k does not divide, or where an interrupted run stopped). Periods are counted in records,
    so a window keeps to the evenly spaced ones."""
    steps = np.asarray(steps)
    return steps.size - 1 if steps.size >= 3 and steps[-1] - steps[-2] != steps[-2] - steps[-3] else steps.size


def _window_values(result, of, window):
    """(C, N, P) float64 values of the last ``window`` records of ``of``, the per-config finite-status flags,
    and a description; a Run is a sweep of one."""
    single = isinstance(result.status, str)
    status = [result.status] if single else list(result.status)

    def configs(array):
        return np.asarray(array)[None] if single else np.asarray(array)

    steps = result.trajectory_step if of == "weights" else result.step
    if of == "weights":
        if result.projections is not None:
            blocks = [configs(result.projections)]
            what = "the projections"
        elif result.trajectory is not None:
            trajectory = configs(result.trajectory)
            blocks = [trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1)]
            what = "the weights"
            if result.outer_trajectory is not None:
                blocks.append(configs(result.outer_trajectory))
                what = "the weights (both layers)"
        else:
            raise ValueError("attractors(of='weights') needs the trajectory: record=lgd.Record(weights=1) "
                             "(or project_onto=...); or pass of='risk', 'log_risk', 'margin', ...")
    elif of in SCALARS:
        if of == "log_risk":
            from ..results import log_risk_trace

            # log 0 = -inf is a risk of exactly 0, which GD reached (a fixed point), not a blow-up: in its
            # place a number below any log-risk a run reaches (about -1e6 at margins of 1e6) whose square
            # the rule's norms still hold.
            trace = np.asarray(log_risk_trace(result), dtype=np.float64)
            trace = np.where(trace == -np.inf, LOG_ZERO, trace)
        else:
            trace = getattr(result, of)
            if trace is None:
                raise ValueError(f"this result has no {of} recorded")
        blocks = [configs(trace)[:, :, None]]
        what = of
    else:
        raise ValueError(f"unknown of={of!r}; valid: 'weights', " + ", ".join(repr(s) for s in SCALARS))
    kept = on_the_grid(steps)
    blocks = [np.asarray(block, dtype=np.float64)[:, :kept] for block in blocks]
    records = blocks[0].shape[1]
    if records < 2:
        raise ValueError(f"attractors needs at least 2 records of {of}, got {records}")
    window = records if window is None else window
    values = np.concatenate([block[:, -window:] for block in blocks], axis=2)
    # Records after a run's last step (a shorter diverged or interrupted run of a sweep) are NaN, which
    # classifies it as diverged when it diverged: its status says the same.
    finite_status = np.array([s != "diverged" for s in status], dtype=np.bool_)
    return values, finite_status, what


def attractors(result=None, window: int | None = None, *, of: str = "weights", values=None, tol: float = TOLERANCE,
               max_period: int = MAX_PERIOD, backend: str = "auto") -> Attractors:
    """Classify each configuration of ``result`` (a Run or Sweep) by how its last ``window`` records end.

    ``of``: ``'weights'`` (the trajectory of ``Record(weights=1)``, with the outer weights when trained, or its
    projections) or a scalar trace (``'risk'``, ``'log_risk'``, ``'margin'``, ``'normalized_margin'``,
    ``'grad_norm'``, ``'weight_norm'``, ``'accuracy'``). Or pass ``values`` instead of a result: an array
    (C, N, P), (C, N) or (N,) of iterates, the whole of it the window. ``window``: how many of the last records
    (default 4 * ``max_period``, or all there are). ``tol``: relative tolerance on the vector,
    |v_{t+p} - v_t| <= tol (1 + |v_t|) for every t of the window. ``max_period``: the largest period tested
    (at most window // 2). ``backend``: ``'numba'`` (compiled: no Python per configuration),
    ``'numpy'``, or ``'auto'`` (numba when installed). The rule is in the module docstring.

    >>> import numpy as np
    >>> orbit = np.array([0.0, 1.0, 2.0] * 20)                       # period 3
    >>> found = attractors(values=np.stack([orbit, np.full(60, 0.5), orbit + np.inf]), window=48)
    >>> found.names, found.period.tolist()
    (['periodic', 'converged', 'diverged'], [3, 1, 0])
    """
    if not (isinstance(tol, (int, float, np.floating)) and tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_period, bool) or not isinstance(max_period, (int, np.integer)) or max_period < 1:
        raise ValueError(f"max_period must be an integer >= 1, got {max_period!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2):
        raise ValueError(f"window must be an integer >= 2, got {window!r}")
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"unknown backend {backend!r}; valid: 'auto', 'numba', 'numpy'")
    default_window = 4 * int(max_period) if window is None else int(window)
    if (result is None) == (values is None):
        raise ValueError("pass a result or values, not both")
    if values is not None:
        values = real_array(values, "values")
        if values.ndim == 1:
            values = values[None, :, None]
        elif values.ndim == 2:
            values = values[:, :, None]
        if values.ndim != 3 or values.shape[1] < 2:
            raise ValueError(f"values must have shape (C, N, P), (C, N) or (N,) with N >= 2, got {values.shape}")
        values = values[:, -default_window:] if window is not None else values
        finite_status = np.ones(values.shape[0], dtype=np.bool_)
        what = "the values"
    else:
        values, finite_status, what = _window_values(result, of, default_window)
    values = np.ascontiguousarray(values)
    count = values.shape[1]
    tested = max(1, min(int(max_period), count // 2))
    configs = values.shape[0]
    kind = np.empty(configs, dtype=np.int8)
    period = np.empty(configs, dtype=np.int64)
    spread = np.empty(configs, dtype=np.float64)
    kernel = None if backend == "numpy" else _compiled()
    if kernel is None and backend == "numba":
        raise ImportError('attractors(backend="numba") needs numba: pip install "lgd[numba]"')
    (kernel or _classify_numpy)(values, finite_status, float(tol), tested, kind, period, spread)
    return Attractors(kind=kind, period=period, spread=spread, window=count, tol=float(tol), max_period=tested, of=what)
