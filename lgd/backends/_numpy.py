"""The numpy backend: the oracle of :mod:`lgd.models` run one step at a time from Python.

It is the reference the compiled backends are tested against, so it favours plainness over speed:
one :func:`lgd.models.evaluate` call per step and per configuration.
"""

from __future__ import annotations

import math

import numpy as np

from ..hessian import hvp, sharpness
from ..models import evaluate, predict
from . import SQUARES_EXACT_FROM, Problem, State, Trace, record_slot, stepsize_of


def _sum_squares(x: np.ndarray) -> float:
    """sum x^2 in float64, whatever the dtype of x (inf where it overflows: _norm then takes its second pass)."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.sum(np.square(x, dtype=np.float64)))


def _norm(*arrays: np.ndarray) -> float:
    """The norm of the arrays' entries together, in float64: the root of their sum of squares, or where that
    sum under- or overflowed (outside [SQUARES_EXACT_FROM, inf): a gradient of 1e-170, weights of 1e200), the
    largest |entry| times the root of the sum of the entries' squares over it. NaN stays NaN."""
    total = sum(_sum_squares(x) for x in arrays)
    if SQUARES_EXACT_FROM <= total < math.inf or math.isnan(total):
        return math.sqrt(total)
    top = max(float(np.max(np.abs(x), initial=0.0)) for x in arrays)
    if top == 0.0 or top == math.inf:
        return top
    return top * math.sqrt(sum(_sum_squares(x.astype(np.float64) / top) for x in arrays))


def available() -> tuple[bool, str]:
    return True, "numpy is always available"


class Runner:
    """Runs configurations of one problem; see :mod:`lgd.backends` for the contract."""

    name = "numpy"
    measures_sharpness = True  # at the problem's sharpness steps, inside advance

    def __init__(self, problem: Problem, steps: int, record_every: int, shape=None):
        self.problem, self.steps, self.record_every = problem, steps, record_every
        self.state, self.trace = None, None

    def start(self, state: State, trace: Trace, t_start: int = 0):
        self.state, self.trace = state, trace

    def advance(self, t_start: int, t_stop: int):
        p, state, trace, steps = self.problem, self.state, self.trace, self.steps
        for c in range(state.W.shape[0]):
            if state.diverged[c] >= 0:
                continue
            W, a = state.W[c], state.a[c]
            for t in range(t_start, t_stop):
                with np.errstate(over="ignore", invalid="ignore"):
                    ev = evaluate(W, a, p.X, p.y, p.activation, p.loss, p.scale, p.train_outer)
                    grad_norm = _norm(ev.grad_W, *((ev.grad_a,) if p.train_outer else ()))
                if not (math.isfinite(float(ev.risk)) and math.isfinite(grad_norm)):
                    state.diverged[c] = t
                    if p.weights_every > 0:
                        self._record_weights(trace, c, record_slot(t, steps, p.weights_every), W * np.nan, a * np.nan)
                    break
                # In float64 whatever the dtype, as the kernels sum it: a float32 net's norm is a float32 number
                # long after its squares are not (||W|| beyond 1.8e19).
                weight_norm = _norm(W, *((a,) if p.train_outer else ()))
                if p.sharpness_every > 0 and trace.sharpness.shape[1]:
                    self._measure_sharpness(state, trace, c, record_slot(t, steps, p.sharpness_every), W, a)
                eta = stepsize_of(state, c, t, steps, ev.risk, ev.log_risk, grad_norm, p.dtype,
                                  state.sharpness_last[c] if state.sharpness_last is not None else math.nan)
                slot = record_slot(t, steps, self.record_every)
                if slot >= 0:
                    self._record(trace, c, slot, ev, grad_norm, weight_norm, W, a)
                    trace.eta[c, slot] = eta
                    if state.tangents is not None:
                        trace.lyapunov_sum[c, slot] = state.log_growth[c]
                if p.weights_every > 0:
                    self._record_weights(trace, c, record_slot(t, steps, p.weights_every), W, a)
                # A norm beyond the bound, or not finite: weights that an update took past the dtype's range.
                if ev.risk > p.risk_bound or not (math.isfinite(weight_norm) and weight_norm <= p.weight_bound):
                    state.diverged[c] = t
                    break
                if t < steps:
                    if state.tangents is not None:
                        self._propagate(state, c, W, a, float(eta))
                    with np.errstate(over="ignore", invalid="ignore"):  # inf weights: the next step's verdict
                        W -= eta * ev.grad_W
                        if p.train_outer:
                            a -= eta * ev.grad_a

    def _record(self, trace: Trace, c: int, slot: int, ev, grad_norm: float, weight_norm: float, W, a):
        p = self.problem
        trace.risk[c, slot] = ev.risk
        trace.log_risk[c, slot] = ev.log_risk
        trace.accuracy[c, slot] = ev.accuracy
        trace.grad_norm[c, slot] = grad_norm
        trace.weight_norm[c, slot] = weight_norm
        trace.margin[c, slot] = ev.margin
        if trace.neuron_margins.shape[1]:
            trace.neuron_margins[c, slot] = ev.neuron_margins
        if p.X_test is not None:
            f = predict(W, a, p.X_test, p.activation, p.scale)
            u = p.y_test * f if p.loss.margin else f - p.y_test
            with np.errstate(over="ignore"):
                trace.test_risk[c, slot] = p.loss.value(u).mean()
            trace.test_accuracy[c, slot] = np.mean(p.y_test * f > 0)

    def _measure_sharpness(self, state: State, trace: Trace, c: int, slot: int, W, a):
        """The top Hessian eigenvalues at a sharpness slot (>= 0), by lgd.hessian.sharpness (scipy's eigsh)."""
        if slot < 0:
            return
        p = self.problem
        last, _, _ = state.curvature_arrays()
        with np.errstate(over="ignore", invalid="ignore"):
            trace.sharpness[c, slot] = sharpness(W, a, p.X, p.y, p.activation, p.loss, p.scale,
                                                 train_outer=p.train_outer, k=p.sharpness_k, points=p.sharpness_points)
        last[c] = trace.sharpness[c, slot, 0]

    def _propagate(self, state: State, c: int, W, a, eta: float):
        """The tangent vectors of configuration c through I - eta H(W, a) (lgd.hessian.hvp), then modified
        Gram-Schmidt, adding the log of each one's growth to state.log_growth[c]."""
        p = self.problem
        vectors = []
        for l in range(state.tangents.shape[1]):
            v = state.tangents[c, l].ravel()
            if p.train_outer:
                v = np.concatenate([v, state.tangents_a[c, l]])
            with np.errstate(over="ignore", invalid="ignore"):
                w = v - eta * hvp(W, a, p.X, p.y, p.activation, p.loss, p.scale, v, train_outer=p.train_outer)
            for o in vectors:
                w = w - np.dot(w, o) * o
            norm = float(np.linalg.norm(w))
            # A map that sends the vector to 0 (eta = 1 / lambda on a quadratic): growth log 0 = -inf, and the
            # vector stays 0 (its sum stays -inf), where dividing would make it NaN.
            state.log_growth[c, l] += math.log(norm) if norm != 0.0 else -math.inf
            if norm != 0.0:
                w = w / norm
            vectors.append(w)
            state.tangents[c, l] = w[:W.size].reshape(W.shape)
            if p.train_outer:
                state.tangents_a[c, l] = w[W.size:]

    def _record_weights(self, trace: Trace, c: int, slot: int, W, a):
        """W (and a) at a trajectory slot, or their projections onto the problem's directions."""
        if slot < 0:
            return
        if trace.projections.shape[2]:
            trace.projections[c, slot] = np.tensordot(self.problem.directions.astype(np.float64),
                                                      W.astype(np.float64), axes=2)
            return
        trace.weights[c, slot] = W
        if trace.outer.shape[1]:
            trace.outer[c, slot] = a

    def sync(self):
        """Nothing to copy: the trace is written in place."""

    def finish(self):
        """Nothing to copy: the trace was written in place."""
