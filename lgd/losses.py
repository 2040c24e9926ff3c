"""Losses with their first two derivatives in numpy: the oracle every backend matches.

Margin losses act on u = y f (labels y in {+1, -1}); the regression loss ``squared`` acts on the
residual r = f - y. Each loss has ``value``, ``d1`` and ``d2`` (elementwise, dtype kept) and the
``code``/``param`` pair the compiled kernels are specialised on.

Overflow safety: every value and derivative is finite for |u| up to 1e6 in float32 and float64,
except the exponential loss for very negative u, where e^{-u} itself overflows; it then returns
inf and the GD driver reports the run as diverged.

>>> import numpy as np, lgd
>>> loss = lgd.losses.get("logistic")
>>> float(loss.value(np.array(40.0)))   # log(1 + e^-40), no cancellation
4.248354255291589e-18
"""

from __future__ import annotations

import numpy as np

from ._catalog import check_param, entry_of, param_spec
from .activations import sigmoid, softplus

__all__ = ["Loss", "get", "NAMES", "CODES", "ENTRIES", "MARGIN_CODES", "logistic", "exponential",
           "flattened_exponential", "flattened_polynomial", "squared"]

# The one table of loss codes (see lgd.activations): the numba formulas import them, the CUDA
# header is generated from :data:`CODES` and :data:`MARGIN_CODES`.
LOGISTIC, EXPONENTIAL, FLATTENED_EXPONENTIAL, FLATTENED_POLYNOMIAL, SQUARED = range(5)


class Loss:
    """A loss with its first two derivatives (numpy, elementwise)."""

    name: str = ""
    code: int = -1
    param: float = 0.0
    margin: bool = True  # a function of u = y f (classification) rather than of r = f - y

    def value(self, u):
        raise NotImplementedError

    def d1(self, u):
        raise NotImplementedError

    def d2(self, u):
        raise NotImplementedError

    def log_value(self, u):
        """log loss(u), finite wherever loss(u) > 0 even when loss(u) itself underflows to 0 (so that a
        risk of 1e-400 has a log-risk). The default takes the log of the value; entries whose tail
        underflows override it."""
        with np.errstate(divide="ignore"):
            return np.log(self.value(u))

    @property
    def at_zero(self) -> float:
        """loss(0): the per-sample loss of the zero predictor (the phase-transition scale loss(0)/n)."""
        return float(self.value(np.zeros(1))[0])

    @property
    def spec(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Loss({self.spec!r})"

    def __eq__(self, other) -> bool:
        # The class and the name too: entries of the user's own share a code (none) but not their formulas.
        return isinstance(other, Loss) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return type(self), self.name, self.code, self.param


class logistic(Loss):
    """loss(u) = log(1 + e^-u); loss' = -sigmoid(-u); loss'' = sigmoid(u) sigmoid(-u)."""

    name, code = "logistic", LOGISTIC

    def value(self, u):
        return softplus(-np.asarray(u))

    def d1(self, u):
        return -sigmoid(-np.asarray(u))

    def d2(self, u):
        u = np.asarray(u)
        return sigmoid(u) * sigmoid(-u)

    def log_value(self, u):
        """log log(1 + e^-u); beyond u = 36 it is -u + log1p(-e^-u / 2 + ...) = -u to rounding."""
        u = np.asarray(u)
        return np.where(u > 36, -u, np.log(softplus(-np.minimum(u, 36))))


class exponential(Loss):
    """loss(u) = e^-u = -loss'(u) = loss''(u); overflows to inf for u below about -709 (float64)."""

    name, code = "exponential", EXPONENTIAL

    def value(self, u):
        with np.errstate(over="ignore"):
            return np.exp(-np.asarray(u))

    def d1(self, u):
        return -self.value(u)

    def d2(self, u):
        return self.value(u)

    def log_value(self, u):
        return -np.asarray(u)


class _Flattened(Loss):
    """A margin loss continued linearly, as 1 - a u, for u < 0 (Wu et al.): C^1 and a-Lipschitz."""

    def __init__(self, a: float = 1.0):
        self.param = check_param(a, "loss", self.name, low=0.0)

    @property
    def spec(self) -> str:
        return param_spec(self.name, self.param)


class flattened_exponential(_Flattened):
    """loss(u) = e^{-a u} for u >= 0 and 1 - a u for u < 0 (a > 0): C^1 and a-Lipschitz."""

    name, code = "flattened_exponential", FLATTENED_EXPONENTIAL

    def _tail(self, u):
        return np.exp(-u.dtype.type(self.param) * np.maximum(u, 0))

    def value(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, self._tail(u), 1 - a * u)

    def d1(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, -a * self._tail(u), -a)

    def d2(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, a * a * self._tail(u), 0)

    def log_value(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, -a * np.maximum(u, 0), np.log(1 - a * np.minimum(u, 0)))


class flattened_polynomial(_Flattened):
    """loss(u) = (1 + u)^{-a} for u >= 0 and 1 - a u for u < 0 (a > 0): C^1 and a-Lipschitz."""

    name, code = "flattened_polynomial", FLATTENED_POLYNOMIAL

    def value(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, (1 + np.maximum(u, 0)) ** -a, 1 - a * u)

    def d1(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, -a * (1 + np.maximum(u, 0)) ** (-a - 1), -a)

    def d2(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, a * (a + 1) * (1 + np.maximum(u, 0)) ** (-a - 2), 0)

    def log_value(self, u):
        u = np.asarray(u)
        a = u.dtype.type(self.param)
        return np.where(u >= 0, -a * np.log1p(np.maximum(u, 0)), np.log(1 - a * np.minimum(u, 0)))


class squared(Loss):
    """Regression loss of the residual r = f - y: r^2 / 2, with loss' = r and loss'' = 1."""

    name, code, margin = "squared", SQUARED, False

    def value(self, r):
        r = np.asarray(r)
        return 0.5 * r * r

    def d1(self, r):
        return np.array(r, copy=True)

    def d2(self, r):
        return np.ones_like(r)

    def log_value(self, r):
        """log(r^2 / 2) = 2 log|r| - log 2 (-inf at r = 0)."""
        with np.errstate(divide="ignore"):
            return 2 * np.log(np.abs(np.asarray(r))) - np.log(np.asarray(r).dtype.type(2))


_FACTORIES = {
    "logistic": logistic,
    "exponential": exponential,
    "flattened_exponential": flattened_exponential,
    "flattened_polynomial": flattened_polynomial,
    "squared": squared,
}

NAMES = tuple(_FACTORIES)
# Every entry of the catalog, in code order; the code of each by name; the codes of the margin losses
# (functions of u = y f; the others take the residual r = f - y): the margin rule every kernel follows.
ENTRIES = tuple(sorted(_FACTORIES.values(), key=lambda entry: entry.code))
CODES = {entry.name: entry.code for entry in ENTRIES}
MARGIN_CODES = frozenset(entry.code for entry in ENTRIES if entry.margin)


# Losses of the user's own that this process has been given, by spec (see _catalog.entry_of).
_OWN: dict = {}


def get(spec) -> Loss:
    """The loss named by ``spec``: a :class:`Loss`, ``'name'`` or ``'name(param)'`` (the catalog's, or one of
    your own that this process has been given as an object)."""
    return entry_of(spec, "loss", Loss, _FACTORIES, _OWN)
