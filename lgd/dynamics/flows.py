"""Reference flows for GD: gradient flow and the first-order modified flow of backward error analysis.

What lives here: :func:`flow` (integrate either flow from a starting point with scipy's ``solve_ivp``) and
:func:`compare_flows` (both flows of a recorded GD run, at the GD times t = k eta of its recorded steps, with
their distances to the GD iterates). What does not: GD itself (:func:`lgd.gd`) and the formulas of the
gradient and the Hessian-vector product (:func:`lgd.models.evaluate`, :func:`lgd.hessian.hvp`: exact, numpy).

With theta the trained parameters (W.ravel(), then a when the outer layer is trained: the layout of
:mod:`lgd.hessian`):

- gradient flow:  d theta / dt = -grad L(theta);
- modified flow (first order in eta): d theta / dt = -grad L_1(theta), L_1 = L + (eta/4) |grad L|^2, whose
  gradient is grad L + (eta/2) H grad L (one Hessian-vector product per evaluation).

GD after k steps is close to either flow at time t = k eta: at distance O(eta) from gradient flow and
O(eta^2) from the modified flow over a fixed time, for small eta; for large eta (beyond 1/smoothness)
neither describes it (science notes, section 6). On L = lambda w^2 / 2 GD gives w_k = (1 - eta lambda)^k w_0,
gradient flow w_0 exp(-lambda t) and the modified flow w_0 exp(-lambda (1 + eta lambda / 2) t).

Needs scipy (``pip install "lgd[analysis]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from .. import losses as _losses
from .. import stepsize as _stepsize
from ..options import real_array

__all__ = ["flow", "compare_flows", "Flow", "FlowComparison", "METHOD", "RTOL", "ATOL"]

METHOD, RTOL, ATOL = "DOP853", 1e-10, 1e-12


@dataclass(frozen=True)
class Flow:
    """A flow evaluated at ``time`` (R,): ``parameters`` (R, P) in the layout of :mod:`lgd.hessian`
    (NaN after the solver stopped), ``modified`` (the eta of the modified flow, or None for gradient
    flow), ``method``, ``rtol``, ``atol``, ``success`` and the solver's ``message``."""

    time: np.ndarray
    parameters: np.ndarray
    modified: float | None
    method: str
    rtol: float
    atol: float
    success: bool
    message: str


@dataclass(frozen=True)
class FlowComparison:
    """Both flows of a GD run at its recorded steps: ``step`` (R,), ``time`` = step * eta, ``gd`` (R, P) the
    GD iterates, ``gradient_flow`` and ``modified_flow`` (:class:`Flow`), and the Euclidean distances
    ``distance_gradient_flow``, ``distance_modified_flow`` (R,) of each to the GD iterate."""

    step: np.ndarray
    time: np.ndarray
    gd: np.ndarray
    gradient_flow: Flow
    modified_flow: Flow
    distance_gradient_flow: np.ndarray
    distance_modified_flow: np.ndarray

    @property
    def largest_distance_gradient_flow(self) -> float:
        return float(np.max(self.distance_gradient_flow))

    @property
    def largest_distance_modified_flow(self) -> float:
        return float(np.max(self.distance_modified_flow))


def _velocity(X, y, model, loss, outer, modified):
    """theta -> d theta / dt of the chosen flow, for the model's trained parameters."""
    from ..hessian import hvp
    from ..models import evaluate

    loss = _losses.get(loss)
    activation, scale, train_outer = model.activation, model.scale, model.train_outer
    m, d = model.width, X.shape[1]

    def split(theta):
        W = theta[:m * d].reshape(m, d)
        a = theta[m * d:] if train_outer else outer
        return W, a

    def velocity(_, theta):
        W, a = split(theta)
        result = evaluate(W, a, X, y, activation, loss, scale, train_outer)
        gradient = result.grad_W.ravel()
        if train_outer:
            gradient = np.concatenate([gradient, result.grad_a])
        if modified is not None:
            gradient = gradient + 0.5 * modified * hvp(W, a, X, y, activation, loss, scale, gradient,
                                                       train_outer=train_outer)
        return -gradient

    return velocity


def _parameters(model, d, init, outer_init):
    """theta_0 = (W_0.ravel(), a_0 when trained) and the outer weights a_0."""
    shape = model.weight_shape(d)
    W = real_array(init, "init")
    if W.shape != shape or not np.all(np.isfinite(W)):
        raise ValueError(f"init must be finite weights of shape {shape} (the model's on {d} features), got shape "
                         f"{W.shape}" + ("" if W.shape != shape else " with NaN or Inf"))
    W = W.reshape(model.width, d)
    outer = model.outer_weights(np.random.default_rng(0)) if outer_init is None else outer_init
    outer = real_array(outer, "outer_init")
    if outer.shape != (model.width,) or not np.all(np.isfinite(outer)):
        raise ValueError(f"outer_init must be finite weights of shape ({model.width},), got shape {outer.shape}")
    theta = np.concatenate([W.ravel(), outer]) if model.train_outer else W.ravel().copy()
    return theta, outer


def flow(X, y, model, loss, init, times, *, outer_init=None, stepsize: float | None = None,
         method: str = METHOD, rtol: float = RTOL, atol: float = ATOL) -> Flow:
    """Gradient flow of the risk from ``init`` (W_0 in the user's shape), or with ``stepsize=eta`` the
    modified flow of GD at that stepsize, at ``times`` (increasing, from 0).

    ``outer_init``: a_0 (the model's outer weights when None). ``method``, ``rtol``, ``atol``: those of
    ``scipy.integrate.solve_ivp`` (an adaptive Runge-Kutta of order 8 by default, 'Radau' for stiff
    problems). A flow that the solver cannot continue (one that blows up) is NaN from there on.

    >>> import numpy as np, lgd
    >>> path = flow(np.array([[1.0]]), np.array([0.0]), lgd.Linear(), "squared", np.ones(1), [0.0, 1.0])
    >>> bool(np.isclose(path.parameters[-1, 0], np.exp(-1.0), rtol=1e-9))
    True
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        raise ImportError('the reference flows need scipy: pip install "lgd[analysis]"') from None
    from ..driver import check_data

    X, y = check_data(X, y, _losses.get(loss), np.float64, "X", "y")
    times = real_array(times, "times").ravel()
    if times.size < 1 or times[0] < 0 or np.any(np.diff(times) <= 0) or not np.all(np.isfinite(times)):
        raise ValueError("times must be finite, increasing and start at 0 or later")
    if stepsize is not None and (isinstance(stepsize, (bool, np.bool_)) or not isinstance(stepsize, Real)
                                 or not (np.isfinite(stepsize) and stepsize > 0)):
        raise ValueError(f"stepsize must be a positive number or None, got {stepsize!r}")
    theta, outer = _parameters(model, X.shape[1], init, outer_init)
    velocity = _velocity(X, y, model, loss, outer, stepsize)
    parameters = np.full((times.size, theta.size), np.nan)
    success, message = True, "the only time is 0: nothing to integrate"
    if times[-1] > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            solution = solve_ivp(velocity, (0.0, float(times[-1])), theta, method=method, t_eval=times, rtol=rtol,
                                 atol=atol)
        reached = solution.y.shape[1]
        parameters[:reached] = solution.y.T
        success, message = bool(solution.success), str(solution.message)
    parameters[times == 0.0] = theta
    return Flow(time=times, parameters=parameters, modified=None if stepsize is None else float(stepsize),
                method=method, rtol=float(rtol), atol=float(atol), success=success, message=message)


def compare_flows(run, X, y, *, method: str = METHOD, rtol: float = RTOL, atol: float = ATOL) -> FlowComparison:
    """Gradient flow and the modified flow from the start of ``run`` (a Run recorded with
    ``lgd.Record(weights=k)``), at the GD times t = k eta of its trajectory's steps, and their distances
    to the GD iterates. ``X``, ``y``: the run's training data (a run does not keep it). A run at a constant
    stepsize only: under a rule GD's time and the modified flow's correction change from step to step."""
    if run.trajectory is None or run.trajectory_step is None:
        raise ValueError("compare_flows needs the run's trajectory: record=lgd.Record(weights=k)")
    rule = getattr(run, "stepsize_rule", None)
    if not _stepsize.is_constant(rule):
        raise ValueError(f"compare_flows needs a run at a constant stepsize (its flows run to the times t eta); "
                         f"this run's stepsize rule is {rule}")
    model = run.model
    gd = np.asarray(run.trajectory, dtype=np.float64).reshape(len(run.trajectory_step), -1)
    if model.train_outer:
        gd = np.concatenate([gd, np.asarray(run.outer_trajectory, dtype=np.float64)], axis=1)
    step = np.asarray(run.trajectory_step, dtype=np.int64)
    time = step * float(run.stepsize)
    common = {"outer_init": run.initial_outer_weights, "method": method, "rtol": rtol, "atol": atol}
    gradient = flow(X, y, model, run.meta["loss"], run.initial_weights, time, **common)
    modified = flow(X, y, model, run.meta["loss"], run.initial_weights, time, stepsize=float(run.stepsize), **common)
    return FlowComparison(step=step, time=time, gd=gd, gradient_flow=gradient, modified_flow=modified,
                          distance_gradient_flow=np.linalg.norm(gradient.parameters - gd, axis=1),
                          distance_modified_flow=np.linalg.norm(modified.parameters - gd, axis=1))
