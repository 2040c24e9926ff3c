"""The numpy backend: the oracle of :mod:`lgd.models` run one step at a time from Python.

It is the reference the compiled backends are tested against, so it favours plainness over speed:
one :func:`lgd.models.evaluate` call per step and per configuration.
"""

from __future__ import annotations

import math

import numpy as np

from ..models import evaluate, predict
from . import Problem, State, Trace, cast_stepsizes, record_slot


def available() -> tuple[bool, str]:
    return True, "numpy is always available"


class Runner:
    """Runs configurations of one problem; see :mod:`lgd.backends` for the contract."""

    name = "numpy"

    def __init__(self, problem: Problem, steps: int, record_every: int, shape=None):
        self.problem, self.steps, self.record_every = problem, steps, record_every
        self.state, self.trace = None, None

    def start(self, state: State, trace: Trace):
        self.state, self.trace = state, trace

    def advance(self, t_start: int, t_stop: int):
        p, state, trace, steps = self.problem, self.state, self.trace, self.steps
        etas = cast_stepsizes(state.stepsizes, p.dtype)
        for c in range(state.W.shape[0]):
            if state.diverged[c] >= 0:
                continue
            W, a = state.W[c], state.a[c]
            eta = etas[c]
            for t in range(t_start, t_stop):
                with np.errstate(over="ignore", invalid="ignore"):
                    ev = evaluate(W, a, p.X, p.y, p.activation, p.loss, p.scale, p.train_outer)
                    grad_sq = float(np.sum(ev.grad_W * ev.grad_W))
                    if p.train_outer:
                        grad_sq += float(np.sum(ev.grad_a * ev.grad_a))
                if not (math.isfinite(float(ev.risk)) and math.isfinite(grad_sq)):
                    state.diverged[c] = t
                    break
                slot = record_slot(t, steps, self.record_every)
                if slot >= 0:
                    self._record(trace, c, slot, ev, grad_sq, W, a)
                if t < steps:
                    W -= eta * ev.grad_W
                    if p.train_outer:
                        a -= eta * ev.grad_a

    def _record(self, trace: Trace, c: int, slot: int, ev, grad_sq: float, W, a):
        p = self.problem
        weight_sq = float(np.sum(W * W)) + (float(np.sum(a * a)) if p.train_outer else 0.0)
        trace.risk[c, slot] = ev.risk
        trace.accuracy[c, slot] = ev.accuracy
        trace.grad_norm[c, slot] = math.sqrt(grad_sq)
        trace.weight_norm[c, slot] = math.sqrt(weight_sq)
        trace.margin[c, slot] = ev.margin
        if trace.neuron_margins.shape[1]:
            trace.neuron_margins[c, slot] = ev.neuron_margins
        if p.X_test is not None:
            f = predict(W, a, p.X_test, p.activation, p.scale)
            u = p.y_test * f if p.loss.margin else f - p.y_test
            with np.errstate(over="ignore"):
                trace.test_risk[c, slot] = p.loss.value(u).mean()
            trace.test_accuracy[c, slot] = np.mean(p.y_test * f > 0)

    def finish(self):
        """Nothing to copy: the trace was written in place."""
