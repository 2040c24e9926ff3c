"""Activation functions phi with phi' and phi'' in numpy: the oracle every backend matches.

Each activation is a small object with ``phi``, ``dphi`` and ``ddphi`` acting elementwise on
numpy arrays and keeping their dtype (float32 stays float32). ``code`` and ``param`` are what the
compiled kernels are specialised on; the formulas here are the single source of truth for them.

Every formula is overflow-safe: softplus is max(z, 0) + log1p(exp(-|z|)) and the sigmoid never
exponentiates a positive number, so |z| up to 1e6 (and beyond) gives finite values.

>>> import numpy as np, lgd
>>> act = lgd.activations.get("leaky_softplus(0.5)")
>>> float(act.phi(np.array(0.0)))  # 0.5 * 0 + 0.5 * log 2
0.34657359027997264
"""

from __future__ import annotations

import math

import numpy as np

from ._catalog import check_param, entry_of, param_spec

__all__ = ["Activation", "get", "NAMES", "CODES", "ENTRIES", "sigmoid", "softplus",
           "identity", "relu", "leaky_relu", "softplus_activation", "leaky_softplus",
           "gelu", "silu", "tanh"]

# The one table of activation codes: every compiled kernel takes its codes from here (the numba
# formulas import them, the CUDA header is generated from :data:`CODES`). A kernel that meets a
# code it has no formula for raises; tests enumerate :data:`ENTRIES` on every backend.
IDENTITY, RELU, LEAKY_RELU, SOFTPLUS, LEAKY_SOFTPLUS, GELU, SILU, TANH = range(8)

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def sigmoid(z):
    """Logistic sigmoid 1 / (1 + e^-z), computed from e^-|z| so that it never overflows."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def softplus(z):
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|): exact to rounding for every finite z."""
    z = np.asarray(z)
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _erfc(x):
    """Complementary error function elementwise, keeping the dtype (scipy when installed)."""
    x = np.asarray(x)
    try:
        from scipy.special import erfc
    except ImportError:
        return np.frompyfunc(math.erfc, 1, 1)(x).astype(x.dtype)
    return erfc(x).astype(x.dtype, copy=False)


class Activation:
    """An activation phi with its first two derivatives (numpy, elementwise)."""

    name: str = ""
    code: int = -1
    param: float = 0.0

    def phi(self, z):
        raise NotImplementedError

    def dphi(self, z):
        raise NotImplementedError

    def ddphi(self, z):
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The string that names this activation, parameter included."""
        return self.name

    def __repr__(self) -> str:
        return f"Activation({self.spec!r})"

    def __eq__(self, other) -> bool:
        # The class and the name too: entries of the user's own share a code (none) but not their formulas.
        return isinstance(other, Activation) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return type(self), self.name, self.code, self.param


class identity(Activation):
    """phi(z) = z."""

    name, code = "identity", IDENTITY

    def phi(self, z):
        return np.array(z, copy=True)

    def dphi(self, z):
        return np.ones_like(z)

    def ddphi(self, z):
        return np.zeros_like(z)


class _Sloped(Activation):
    """An activation with one parameter c in [0, 1] (its slope for z -> -inf)."""

    default_c = 0.0

    def __init__(self, c: float | None = None):
        c = self.default_c if c is None else c
        self.param = check_param(c, "activation", self.name, low=0.0, high=1.0, low_open=False)

    @property
    def spec(self) -> str:
        return param_spec(self.name, self.param)


class leaky_relu(_Sloped):
    """phi(z) = max(z, c z) for 0 <= c <= 1 (c = 0 is the ReLU, c = 1 the identity); phi'(0) is taken as c."""

    name, code, default_c = "leaky_relu", LEAKY_RELU, 0.01

    def phi(self, z):
        z = np.asarray(z)
        return np.where(z > 0, z, z * z.dtype.type(self.param))

    def dphi(self, z):
        z = np.asarray(z)
        return np.where(z > 0, z.dtype.type(1), z.dtype.type(self.param))

    def ddphi(self, z):
        return np.zeros_like(z)


class relu(leaky_relu):
    """phi(z) = max(z, 0), the homogeneous activation of the NTK setting; phi'(0) = 0."""

    name, code = "relu", RELU

    def __init__(self):
        self.param = 0.0

    @property
    def spec(self) -> str:
        return self.name


class softplus_activation(Activation):
    """phi(z) = log(1 + e^z); phi' = sigmoid(z); phi'' = sigmoid(z) sigmoid(-z)."""

    name, code = "softplus", SOFTPLUS

    def phi(self, z):
        return softplus(z)

    def dphi(self, z):
        return sigmoid(z)

    def ddphi(self, z):
        return sigmoid(z) * sigmoid(-np.asarray(z))


class leaky_softplus(_Sloped):
    """phi(z) = c z + (1 - c) softplus(z) (Cai et al., Example 3.1); phi' lies in [c, 1].

    The experiments of Cai et al. use c = 0.5, the default.
    """

    name, code, default_c = "leaky_softplus", LEAKY_SOFTPLUS, 0.5

    def phi(self, z):
        z = np.asarray(z)
        c = z.dtype.type(self.param)
        return c * z + (1 - c) * softplus(z)

    def dphi(self, z):
        z = np.asarray(z)
        c = z.dtype.type(self.param)
        return c + (1 - c) * sigmoid(z)

    def ddphi(self, z):
        z = np.asarray(z)
        c = z.dtype.type(self.param)
        return (1 - c) * sigmoid(z) * sigmoid(-z)


class gelu(Activation):
    """Exact GELU: phi(z) = z Phi(z) with Phi the standard normal CDF (through erfc).

    phi' = Phi(z) + z N(z); phi'' = N(z) (2 - z^2), N the standard normal density.
    """

    name, code = "gelu", GELU

    # Below this z, Phi(z) is a subnormal float64 (below 2.2e-308) or less, and scipy's erfc (cephes) returns 0
    # from -z / sqrt 2 = sqrt(709.78) (z = -37.68) on, where Phi(z) and z Phi(z) are still subnormals (down to z =
    # -38.5): gelu(-38) was -0.0 for -1.096e-314, and phi'(-38) lost its Phi term (7e-4 of it). There Phi comes
    # from erfcx, rounded once (to 1e-13 relative, the rounding of an exponent of -710: subnormals are coarser).
    TAIL = -37.5

    @staticmethod
    def _times_cdf(z, scale):
        """scale * Phi(z), scale > 0 where z < TAIL (an array like z): scale * (erfc(-z / sqrt 2) / 2), and where
        z < TAIL exp(log(scale erfcx(-z / sqrt 2) / 2) - z^2 / 2) (erfc = erfcx e^(-x^2)), whose rounding to a
        subnormal is the only one (Phi rounded to a subnormal, then times scale, rounded it twice)."""
        half, x = z.dtype.type(0.5), -z * z.dtype.type(_INV_SQRT2)
        value = np.asarray(scale * (half * _erfc(x)))
        tail = z < gelu.TAIL
        if not np.any(tail):
            return value
        try:
            from scipy.special import erfcx
        except ImportError:  # _erfc is math.erfc, which keeps subnormals
            return value
        xt, st = x[tail], np.broadcast_to(scale, z.shape)[tail]
        with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf, as z = -inf's nan
            value[tail] = np.exp(np.log(st * (half * erfcx(xt).astype(z.dtype, copy=False))) - xt * xt)
        return value

    @staticmethod
    def _cdf(z):
        return gelu._times_cdf(z, z.dtype.type(1))

    @staticmethod
    def _pdf(z):
        # Beyond |z| = 40 the density is below 1e-300: write 0 so that z^2 cannot turn it into nan.
        return np.where(np.abs(z) < 40, np.exp(-0.5 * np.minimum(z * z, 3200)), 0) * z.dtype.type(_INV_SQRT2PI)

    def phi(self, z):
        z = np.asarray(z)
        # -((-z) Phi(z)): _times_cdf's tail needs a positive factor (and -((-z) x) is z x, bit for bit).
        return -self._times_cdf(z, -z)

    def dphi(self, z):
        z = np.asarray(z)
        return self._cdf(z) + np.where(np.abs(z) < 40, z, 0) * self._pdf(z)

    def ddphi(self, z):
        z = np.asarray(z)
        zc = np.where(np.abs(z) < 40, z, 0)
        return self._pdf(z) * (2 - zc * zc)


class silu(Activation):
    """SiLU (swish): phi(z) = z sigmoid(z); phi' = s + z s (1 - s); phi'' = s (1 - s) (2 + z (1 - 2 s))."""

    name, code = "silu", SILU

    def phi(self, z):
        z = np.asarray(z)
        return z * sigmoid(z)

    def dphi(self, z):
        z = np.asarray(z)
        s, t = sigmoid(z), sigmoid(-z)
        return s + z * s * t

    def ddphi(self, z):
        z = np.asarray(z)
        s, t = sigmoid(z), sigmoid(-z)
        return s * t * (2 + z * (t - s))


class tanh(Activation):
    """phi(z) = tanh z; phi' = sech^2 z = 4 e / (1 + e)^2 with e = e^-2|z|; phi'' = -2 tanh z sech^2 z.

    Not 1 - tanh^2 z: tanh z rounds to within an ulp of 1 from |z| of about 18 in float64 (5 in float32),
    where 1 - tanh^2 cancels (4% off at 18, 0 from 19.1) while sech^2 is a normal number down to e^-708."""

    name, code = "tanh", TANH

    def phi(self, z):
        return np.tanh(z)

    @staticmethod
    def _sech_squared(z):
        z = np.asarray(z)
        e = np.exp(-2 * np.abs(z))  # in z's dtype; 0 where it underflows, as sech^2 does
        return 4 * e / ((1 + e) * (1 + e))

    def dphi(self, z):
        return self._sech_squared(z)

    def ddphi(self, z):
        return -2 * np.tanh(z) * self._sech_squared(z)


_FACTORIES = {
    "identity": identity,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "softplus": softplus_activation,
    "leaky_softplus": leaky_softplus,
    "gelu": gelu,
    "silu": silu,
    "swish": silu,
    "tanh": tanh,
}

NAMES = tuple(name for name in _FACTORIES if name != "swish")
# Every entry of the catalog, in code order, and the code of each by name.
ENTRIES = tuple(sorted({factory for factory in _FACTORIES.values()}, key=lambda entry: entry.code))
CODES = {entry.name: entry.code for entry in ENTRIES}


# Activations of the user's own that this process has been given, by spec (see _catalog.entry_of).
_OWN: dict = {}


def get(spec) -> Activation:
    """The activation named by ``spec``: an :class:`Activation`, ``'name'`` or ``'name(param)'`` (the
    catalog's, or one of your own that this process has been given as an object)."""
    return entry_of(spec, "activation", Activation, _FACTORIES, _OWN)
