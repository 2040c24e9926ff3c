"""Stepsize rules: the stepsize eta_t of every step as runtime data, mixed freely in one sweep.

What lives here: the rules (:class:`Rule` and its kinds: constant, warm-up, step and cosine decay,
risk-adaptive eta / L(W_t), Polyak, normalised, and c / lambda_max tied to the measured sharpness), each a
code and three parameters, and
:func:`stepsize_at`, the one formula of eta_t that every backend evaluates (the numba kernels compile
this very function; the numpy oracle calls it). A sweep's ``stepsizes`` may hold numbers (constant
rules) and rules side by side: they are data in the kernels, so no value or kind recompiles anything.

>>> import lgd
>>> X, y = lgd.data.wu_toy()
>>> sweep = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, lgd.stepsize.adaptive(1.0)], steps=50,
...                   init="zeros", compute="numpy")
>>> sweep.stepsize_rule
['constant(1)', 'adaptive(1)']
>>> bool(sweep.eta[1, -1] > sweep.eta[1, 0])      # eta / L(W_t) grows as the risk falls
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from ._catalog import number_text

__all__ = ["Rule", "constant", "is_constant", "warmup", "step_decay", "cosine", "adaptive", "polyak", "normalized",
           "inverse_sharpness", "as_rule", "stepsize_at"]

_LARGEST = 1.7976931348623157e308
# The rules' codes, data in the kernels.
CONSTANT, WARMUP, STEP_DECAY, COSINE, ADAPTIVE, POLYAK, NORMALIZED, INVERSE_SHARPNESS = range(8)
# The rules whose eta_t depends on the run's length T (stepsize_at's `steps`).
LENGTH_RULES = (COSINE,)


def stepsize_at(code, p0, p1, p2, t, steps, risk, log_risk, grad_norm, sharpness):
    """eta_t of rule `code` with parameters (p0, p1, p2) at step t of `steps`, given the step's risk L(W_t),
    its log (computed stably: a risk of 1e-300 or 0.0 still gives a finite eta / L), |grad L(W_t)| and
    the latest measured sharpness (top Hessian eigenvalue). Plain arithmetic: the numba kernels compile
    this very function. The norm, not its square: |grad|^2 underflows to 0 below 1.5e-154 (and overflows
    above 1.3e154), where a rule tested on it stopped GD at a gradient that is a normal number."""
    if code == WARMUP:  # p0 over p1 steps, linearly from p0 / p1
        return p0 * min(1.0, (t + 1.0) / p1)
    if code == STEP_DECAY:  # p0 p2^floor(t / p1)
        return p0 * p2 ** math.floor(t / p1)
    if code == COSINE:  # p0 (1 + cos(pi min(t, T) / T)) / 2, T = steps
        return p0 * 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
    if code == ADAPTIVE:  # p0 / L(W_t) from the log-risk, held at the largest float64 where it would overflow
        if -log_risk <= 709.0:
            return min(p0 * math.exp(-log_risk), _LARGEST)
        x = math.log(p0) - log_risk  # e^-log L overflows past 709.78; p0 e^-log L may not, for p0 < 1
        return math.exp(x) if x < 709.78 else _LARGEST
    # Polyak and normalised steps at a zero gradient (a stationary point) and Polyak's at a risk down to L_min:
    # no step (0), where inf times the zero gradient made the weights NaN and a negative step climbed the risk.
    if code == POLYAK:  # p1 (L(W_t) - L_min) / |grad|^2, L_min = p0, divided by |grad| twice (its square underflows)
        return p1 * (risk - p0) / grad_norm / grad_norm if grad_norm > 0.0 and risk > p0 else 0.0
    if code == NORMALIZED:  # p0 / |grad|
        return p0 / grad_norm if grad_norm > 0.0 else 0.0
    if code == INVERSE_SHARPNESS:  # p0 / lambda_max, the latest measured (inf where it is not positive)
        return p0 / sharpness if sharpness > 0.0 else math.inf
    return p0  # CONSTANT


@dataclass(frozen=True)
class Rule:
    """A stepsize rule: its kind, its parameters and how it prints."""

    code: int
    params: tuple
    spec: str
    eta: float  # the base stepsize (p0), or the scale of a Polyak step

    def __repr__(self) -> str:
        return f"lgd.stepsize.{self.spec}"


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)) \
            or not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"stepsize rule: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _rule(code: int, name: str, values: tuple, eta: float) -> Rule:
    """The rule of kind ``code`` with its parameters ``values`` (up to three, the others 0) and the spec
    ``name(values)``, each value short where that is exact and in full otherwise, so that a spec tells apart
    any two rules that differ."""
    return Rule(code, (*values, *(0.0,) * (3 - len(values))), f"{name}({', '.join(map(number_text, values))})", eta)


def constant(eta) -> Rule:
    """eta_t = eta."""
    eta = _positive(eta, "eta")
    return _rule(CONSTANT, "constant", (eta,), eta)


def is_constant(spec) -> bool:
    """Whether a result's ``stepsize_rule`` (a rule's spec, or None in files saved before rules) is a constant
    stepsize, the one whose eta_t is its base stepsize at every step."""
    return spec is None or str(spec).startswith("constant(")


def warmup(eta, steps) -> Rule:
    """eta_t = eta min(1, (t + 1) / steps): a linear warm-up over `steps` steps, then constant."""
    eta, steps = _positive(eta, "eta"), _positive(steps, "steps")
    return _rule(WARMUP, "warmup", (eta, steps), eta)


def step_decay(eta, every, factor) -> Rule:
    """eta_t = eta factor^floor(t / every), 0 < factor <= 1."""
    eta, every, factor = _positive(eta, "eta"), _positive(every, "every"), _positive(factor, "factor")
    if factor > 1.0:
        raise ValueError(f"stepsize rule: step_decay's factor must be at most 1, got {factor}")
    return _rule(STEP_DECAY, "step_decay", (eta, every, factor), eta)


def cosine(eta) -> Rule:
    """eta_t = eta (1 + cos(pi t / T)) / 2 over the run's T steps."""
    eta = _positive(eta, "eta")
    return _rule(COSINE, "cosine", (eta,), eta)


def adaptive(eta) -> Rule:
    """eta_t = eta / L(W_t), the risk-adaptive stepsize (Zhang, Wu, Lin and Bartlett, 2025), from the log-risk:
    finite where the risk underflows."""
    eta = _positive(eta, "eta")
    return _rule(ADAPTIVE, "adaptive", (eta,), eta)


def polyak(risk_min=0.0, scale=1.0) -> Rule:
    """eta_t = scale (L(W_t) - risk_min) / |grad L(W_t)|^2, Polyak's step for a known (or assumed) least risk;
    0 (no step) once the risk is down to risk_min, and at a zero gradient."""
    if isinstance(risk_min, bool) or not isinstance(risk_min, (Real, np.floating, np.integer)) \
            or not math.isfinite(float(risk_min)):
        raise ValueError(f"stepsize rule: risk_min must be a finite number, got {risk_min!r}")
    scale = _positive(scale, "scale")
    return _rule(POLYAK, "polyak", (float(risk_min), scale), scale)


def normalized(eta) -> Rule:
    """eta_t = eta / |grad L(W_t)|: normalised GD, every step of length eta (0 at a zero gradient: a stationary
    point stays)."""
    eta = _positive(eta, "eta")
    return _rule(NORMALIZED, "normalized", (eta,), eta)


def inverse_sharpness(c) -> Rule:
    """eta_t = c / lambda_max(W_s), the top Hessian eigenvalue at the latest sharpness step s <= t: needs
    ``lgd.Record(sharpness_every=s)`` (c = 2 sits at the classical stability limit 2 / lambda_max)."""
    c = _positive(c, "c")
    return _rule(INVERSE_SHARPNESS, "inverse_sharpness", (c,), c)


def as_rule(value, name: str = "stepsize") -> Rule:
    """A :class:`Rule` from a rule or a positive number (a constant rule)."""
    if isinstance(value, Rule):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive number or an lgd.stepsize rule, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return constant(value)
