"""Reading the phases of large-stepsize GD off recorded runs: EoS, transition, stable-phase rate, margins.

What lives here: functions that take an :class:`lgd.Run` (or an :class:`lgd.Sweep`, then one reading per
configuration) and return small frozen dataclasses of plain numbers, for the claims of science.md (Wu et
al., COLT 2024; Cai et al., NeurIPS 2024; Cohen et al., ICLR 2021):

- :func:`edge_of_stability` -- the EoS phase before the transition: risk increases, peak risk;
- :func:`stable_rate` -- the stable phase: monotone risk, eta * t * L(W_t) levelling off, and the
  slope of log L against log t (about -1 when L = Theta(1/(eta t)));
- :func:`margin_monotonicity` -- the normalized margin in the stable phase (Cai et al.);
- :func:`sharpness_summary` -- progressive sharpening and sharpness against 2/eta (Cohen et al.);
- :func:`acceleration_curve` -- final risk after T steps against the stepsize (a sweep);
- :func:`analyze` -- all of the per-run ones at once.

The phase transition itself is :attr:`lgd.Run.phase` (first recorded step with
L <= min(1/eta, loss(0)/n)); everything here reuses it. Only recorded steps are seen: with
``lgd.Record(every=k)``, k > 1, an increase between two records can be missed. Logs of the risk come
from the result's ``log_risk`` (finite where the risk underflowed to 0.0, as large stepsizes on separable
data reach 1e-300 and below), else from ``log(risk)``: a run whose risk underflowed is never dropped.
What does not live here: plotting (:mod:`lgd.plot`, :mod:`lgd.reproduce`) and the Hessian (:mod:`lgd.hessian`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .results import Phase, log_risk_trace

__all__ = ["EdgeOfStability", "StableRate", "MarginMonotonicity", "SharpnessSummary", "AccelerationCurve",
           "RunAnalysis", "edge_of_stability", "stable_rate", "margin_monotonicity", "sharpness_summary",
           "acceleration_curve", "analyze"]


def _each_run(reading):
    """A reading of one run that takes a Sweep too: then the list of its configurations' readings, in order."""
    @functools.wraps(reading)
    def read(result, *args, **kwargs):
        if not hasattr(result, "phase"):  # a Sweep
            return [reading(run, *args, **kwargs) for run in result]
        return reading(result, *args, **kwargs)

    return read


def _finite_trace(step, values):
    step = np.asarray(step, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    return step[keep], values[keep]


def _loglog_slope(step, log_values) -> float:
    """Least-squares slope of ``log_values`` against log(step) over the points with step > 0 and a finite log."""
    keep = (step > 0) & np.isfinite(log_values)
    if np.count_nonzero(keep) < 2 or np.ptp(np.log(step[keep])) == 0:
        return math.nan
    return float(np.polyfit(np.log(step[keep]), log_values[keep], 1)[0])


@dataclass(frozen=True)
class EdgeOfStability:
    """The oscillating phase before the transition step s (all of the run when there is none).

    ``increases``: recorded risk increases L(W_{t'}) > L(W_t) between consecutive records before s;
    ``peak_risk`` at ``peak_step``: the largest risk up to s, s included, and ``peak_over_initial`` its ratio
    to L(W_0) (above 1: the risk spiked over its starting value, the O(eta) spikes of Wu et al.);
    ``length``: s, or None when the run never reached the stable phase.
    """

    increases: int
    peak_risk: float
    peak_step: int | None
    initial_risk: float
    peak_over_initial: float
    length: int | None

    @property
    def present(self) -> bool:
        """True when the risk rose at least once before the transition (the run was not monotone)."""
        return self.increases > 0


@_each_run
def edge_of_stability(run) -> EdgeOfStability:
    """The EoS phase of ``run``: risk increases and peak risk before the phase transition."""
    phase = run.phase
    step, risk = _finite_trace(run.step, run.risk)
    if risk.size == 0:
        return EdgeOfStability(0, math.nan, None, math.nan, math.nan, phase.transition_step)
    end = risk.size if phase.transition_step is None else int(np.searchsorted(step, phase.transition_step)) + 1
    before = risk[:end]
    peak = int(np.argmax(before))
    return EdgeOfStability(increases=int(np.sum(before[1:] > before[:-1])), peak_risk=float(before[peak]),
                           peak_step=int(step[peak]), initial_risk=float(risk[0]),
                           peak_over_initial=float(before[peak] / risk[0]) if risk[0] > 0 else math.nan,
                           length=phase.transition_step)


@dataclass(frozen=True)
class StableRate:
    """The stable phase, from the transition step s to the last recorded step T.

    ``monotone``: no recorded risk increase from s on (``increases`` counts them).
    ``slope``: least-squares slope of log L(W_t) against log t over the recorded t in [start, T]
    (``start`` = max(s, 1) unless given); about -1 when L(W_t) = Theta(1/(eta t)), steeper while the
    risk still falls exponentially just after the transition.
    ``final_rate``: eta * T * L(W_T). ``rate_change_last_decade``: (r(T) - r(T/10)) / r(T/10) with
    r(t) = eta t L(W_t) at the recorded steps nearest T/10 and T; near 0 when the rate has levelled
    off (risk = O(1/(eta t)), Wu et al.), -0.9 if L fell like 1/t^2 over that decade, +9 if L stalled;
    NaN where the stable phase starts after T/10 (it does not span the last decade). Every number is NaN
    when the run has no stable phase; the final rate and its change are NaN for a diverged run.
    """

    start: int | None
    end: int
    monotone: bool
    increases: int
    slope: float
    final_rate: float
    rate_change_last_decade: float


def _check_start(start) -> None:
    """A step to start from: None or an integer >= 0."""
    if start is not None and (isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer))
                              or start < 0):
        raise ValueError(f"start must be a step (an integer >= 0) or None, got {start!r}")


@_each_run
def stable_rate(run, start: int | None = None) -> StableRate:
    """Monotonicity, rate eta * t * L and log-log slope of ``run`` in its stable phase."""
    _check_start(start)
    phase: Phase = run.phase
    finite = np.isfinite(np.asarray(run.risk, dtype=np.float64))
    step, risk = np.asarray(run.step, dtype=np.float64)[finite], np.asarray(run.risk, dtype=np.float64)[finite]
    log_risk = log_risk_trace(run)[finite]
    end = int(step[-1]) if step.size else 0
    if phase.transition_step is None or step.size == 0:
        return StableRate(None, end, False, 0, math.nan, math.nan, math.nan)
    s = phase.transition_step
    tail = step >= s
    increases = int(np.sum(risk[tail][1:] > risk[tail][:-1]))
    start = max(s, 1) if start is None else int(start)
    window = step >= start
    with np.errstate(divide="ignore"):
        log_rate = math.log(run.stepsize) + np.log(step) + log_risk  # log(eta t L): L may be below 1e-308
    if end >= 10 and step[tail][0] <= end / 10:
        decade = int(np.argmin(np.abs(step - end / 10)))
        change = float(np.expm1(log_rate[-1] - log_rate[decade])) if np.isfinite(log_rate[decade]) else math.nan
    else:
        change = math.nan  # the stable phase does not span the last decade of steps
    diverged = getattr(run, "status", None) == "diverged"  # it reached no final step
    return StableRate(start=start, end=end, monotone=increases == 0, increases=increases,
                      slope=_loglog_slope(step[window], log_risk[window]),
                      final_rate=math.nan if diverged else float(np.exp(log_rate[-1])),
                      rate_change_last_decade=math.nan if diverged else change)


@dataclass(frozen=True)
class MarginMonotonicity:
    """The normalized margin min_i y_i f(x_i) / ||W|| in the stable phase (recorded steps from ``start``).

    ``decreases`` / ``fraction_decreasing``: consecutive records where it went down (and their share
    of the record pairs). ``largest_relative_decrease``: the largest drop below the running maximum,
    max_t (M_t - q_t) / |M_t| with M_t = max_{t' <= t} q_{t'} (0 for a monotone trace): Cai et al.
    prove near-monotone growth, so this stays small. ``initial`` and ``final`` are the margins at the
    first and last of these records.
    """

    start: int | None
    decreases: int
    fraction_decreasing: float
    largest_relative_decrease: float
    initial: float
    final: float


@_each_run
def margin_monotonicity(run, start: int | None = None) -> MarginMonotonicity:
    """How monotone the normalized margin of ``run`` is from ``start`` (default: the transition step) on."""
    _check_start(start)
    if start is None:
        start = run.phase.transition_step
    step, margin = _finite_trace(run.step, run.normalized_margin)
    if start is None or step.size == 0:
        return MarginMonotonicity(None, 0, math.nan, math.nan, math.nan, math.nan)
    margin = margin[step >= start]
    if margin.size == 0:
        return MarginMonotonicity(int(start), 0, math.nan, math.nan, math.nan, math.nan)
    falls = margin[1:] < margin[:-1]
    running_max = np.maximum.accumulate(margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(running_max != 0, (running_max - margin) / np.abs(running_max), 0.0)
    return MarginMonotonicity(start=int(start), decreases=int(falls.sum()),
                              fraction_decreasing=float(falls.mean()) if falls.size else 0.0,
                              largest_relative_decrease=float(drawdown.max()), initial=float(margin[0]),
                              final=float(margin[-1]))


@dataclass(frozen=True)
class SharpnessSummary:
    """The recorded sharpness (top Hessian eigenvalue) against 2/eta (Cohen et al., ICLR 2021).

    ``initial``, ``peak`` (at ``peak_step``) and ``final`` sharpness; ``limit`` = 2/eta (NaN under a
    stepsize rule other than a constant one, and with it every ratio to it);
    ``progressive_sharpening`` = peak / initial (above 1: the sharpness rose);
    ``peak_over_limit`` = peak / (2/eta); ``reached_step``: first recorded step with sharpness >=
    ``fraction`` * 2/eta (None if never); ``median_over_limit_after``: median of sharpness / (2/eta)
    from ``reached_step`` on -- about 1 at the edge of stability.
    """

    initial: float
    peak: float
    peak_step: int | None
    final: float
    limit: float
    progressive_sharpening: float
    peak_over_limit: float
    reached_step: int | None
    median_over_limit_after: float
    fraction: float


@_each_run
def sharpness_summary(run, fraction: float = 0.9) -> SharpnessSummary:
    """Progressive sharpening and the edge of stability of a run recorded with ``Record.sharpness_every``."""
    if run.sharpness is None:
        raise ValueError("this run has no sharpness: run lgd.gd(..., record=lgd.Record(sharpness_every=...))")
    step, top = _finite_trace(run.sharpness_step, np.asarray(run.sharpness)[:, 0])
    limit = run.sharpness_limit
    if top.size == 0:
        return SharpnessSummary(math.nan, math.nan, None, math.nan, limit, math.nan, math.nan, None, math.nan,
                                fraction)
    peak = int(np.argmax(top))
    reached = np.flatnonzero(top >= fraction * limit)
    return SharpnessSummary(
        initial=float(top[0]), peak=float(top[peak]), peak_step=int(step[peak]), final=float(top[-1]), limit=limit,
        progressive_sharpening=float(top[peak] / top[0]) if top[0] > 0 else math.nan,
        peak_over_limit=float(top[peak] / limit), reached_step=int(step[reached[0]]) if reached.size else None,
        median_over_limit_after=float(np.median(top[reached[0]:]) / limit) if reached.size else math.nan,
        fraction=fraction)


@dataclass(frozen=True)
class AccelerationCurve:
    """Risk after a budget of ``steps`` GD steps against the stepsize (one point per distinct stepsize).

    ``log_risk``: the mean over the seeds of log L(W_T), from the sweep's ``log_risk`` when recorded
    (finite where L(W_T) underflowed to 0.0), NaN when a seed diverged before T; ``risk`` = exp of it,
    the geometric mean (0.0 below about 1e-308; the ranking goes by ``log_risk``);
    ``monotone``: whether the recorded risk of every seed never rose over steps 0..T;
    ``best_stepsize`` / ``best_risk`` / ``best_log_risk``: the smallest risk; ``best_monotone_stepsize`` /
    ``best_monotone_risk`` / ``best_monotone_log_risk``: the smallest among the monotone stepsizes (NaN
    if none); ``smallest_stepsize_risk``: the risk of the smallest stepsize. Wu et al.: eta = Theta(T)
    reaches O~(1/T^2) while stepsizes that keep the risk monotone are stuck at Omega(1/T).
    """

    steps: int
    stepsizes: np.ndarray
    risk: np.ndarray
    log_risk: np.ndarray
    monotone: np.ndarray
    best_stepsize: float
    best_risk: float
    best_log_risk: float
    best_monotone_stepsize: float
    best_monotone_risk: float
    best_monotone_log_risk: float
    smallest_stepsize_risk: float


def acceleration_curve(sweep, steps: int | None = None) -> AccelerationCurve:
    """Final risk against stepsize at the budget ``steps`` (a recorded step; default: the sweep's last)."""
    from .results import Sweep

    if not isinstance(sweep, Sweep):
        raise TypeError(f"acceleration_curve reads a Sweep (lgd.sweep's result over stepsizes), got "
                        f"{type(sweep).__name__}")
    if steps is not None and (isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer))):
        raise ValueError(f"steps must be a recorded step (an integer) or None, got {steps!r}")
    steps = int(sweep.steps if steps is None else steps)
    where = np.flatnonzero(np.asarray(sweep.step) == steps)
    if where.size == 0:
        raise ValueError(f"step {steps} was not recorded in this sweep; record it (lgd.Record.every) or pick "
                         f"one of the recorded steps")
    # log L, not L: a risk below about 1e-308 is 0.0 in float64 but its log_risk is finite. Without
    # log_risk such a run is log(0) = -inf, below every other: still ranked, never dropped.
    traces = log_risk_trace(sweep)[:, :where[0] + 1]
    # One point per stepsize rule (its seeds and starts averaged), in the order of its eta: rules that share
    # an eta (constant(10), adaptive(10)) are not one stepsize.
    rules = np.asarray(sweep.stepsize_rule)
    first = {spec: int(np.flatnonzero(rules == spec)[0]) for spec in dict.fromkeys(rules.tolist())}
    specs = sorted(first, key=lambda spec: float(sweep.stepsize[first[spec]]))
    stepsizes = np.array([sweep.stepsize[first[spec]] for spec in specs], dtype=np.float64)
    values, counts = np.unique(stepsizes, return_counts=True)
    if values.size != stepsizes.size:
        shared = [spec for spec, eta in zip(specs, stepsizes) if eta in values[counts > 1]]
        raise ValueError(f"acceleration_curve reads one rule over its stepsizes; this sweep has rules that share a "
                         f"stepsize ({', '.join(shared)}): pass the configurations of one rule")
    log_risk = np.empty(stepsizes.size)
    monotone = np.empty(stepsizes.size, dtype=bool)
    for i, spec in enumerate(specs):
        runs = traces[rules == spec]
        reached = bool(np.all(runs < np.inf))  # False for a NaN (diverged) or an infinite risk
        log_risk[i] = np.mean(runs[:, -1]) if np.all(runs[:, -1] < np.inf) else math.nan
        monotone[i] = reached and bool(np.all(runs[:, 1:] <= runs[:, :-1]))
    risk = np.exp(log_risk)

    def smallest(mask):
        if not np.any(mask & ~np.isnan(log_risk)):
            return math.nan, math.nan, math.nan
        i = int(np.nanargmin(np.where(mask, log_risk, np.nan)))
        return float(stepsizes[i]), float(risk[i]), float(log_risk[i])

    best_stepsize, best_risk, best_log_risk = smallest(np.ones(stepsizes.size, dtype=bool))
    best_monotone_stepsize, best_monotone_risk, best_monotone_log_risk = smallest(monotone)
    return AccelerationCurve(steps=steps, stepsizes=stepsizes, risk=risk, log_risk=log_risk, monotone=monotone,
                             best_stepsize=best_stepsize, best_risk=best_risk, best_log_risk=best_log_risk,
                             best_monotone_stepsize=best_monotone_stepsize, best_monotone_risk=best_monotone_risk,
                             best_monotone_log_risk=best_monotone_log_risk, smallest_stepsize_risk=float(risk[0]))


@dataclass(frozen=True)
class RunAnalysis:
    """Everything :func:`analyze` reads off one run."""

    stepsize: float
    status: str
    final_risk: float
    phase: Phase
    edge_of_stability: EdgeOfStability
    stable: StableRate
    margin: MarginMonotonicity
    sharpness: SharpnessSummary | None


@_each_run
def analyze(result):
    """:class:`RunAnalysis` of a run, or the list of them for every config of a sweep.

    >>> import lgd
    >>> X, y = lgd.data.wu_toy()
    >>> run = lgd.gd(X, y, lgd.Linear(), stepsize=100.0, steps=300, init="zeros", compute="numpy")
    >>> result = analyze(run)
    >>> result.edge_of_stability.present, result.stable.monotone
    (True, True)
    """
    return RunAnalysis(stepsize=result.stepsize, status=result.status, final_risk=result.final_risk,
                       phase=result.phase, edge_of_stability=edge_of_stability(result), stable=stable_rate(result),
                       margin=margin_monotonicity(result),
                       sharpness=None if result.sharpness is None else sharpness_summary(result))
