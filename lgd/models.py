"""Models and the numpy oracle of their forward and backward passes.

Two-layer network (Cai et al., eq. (2)) with hidden weights W in R^{m x d} and outer weights a:

    f(W; x) = s * sum_j a_j phi(w_j . x)

with s = 1/m (mean field), 1/sqrt(m) (NTK) or a given number. Logistic regression f(w; x) = w . x
is the same formula with m = 1, phi = identity, s = 1 and a = (1,), which is how every backend sees
it (the compiled backends give it a fast path of its own).

The functions :func:`predict` and :func:`evaluate` are the oracle: plain numpy, tested against
finite differences, and the reference every compiled kernel is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from . import activations as _activations
from .activations import Activation
from .options import real_array

__all__ = ["TwoLayerNet", "Linear", "init_grid", "predict", "evaluate", "log_mean", "log_risk_of", "Evaluation"]


class TwoLayerNet:
    """f(W; x) = scaling * sum_j a_j phi(w_j . x) with m = ``width`` hidden neurons.

    Parameters
    ----------
    width : int
        Number of hidden neurons m.
    activation : str or Activation
        ``'leaky_softplus'`` (c = 0.5, Cai et al.), ``'leaky_softplus(0.3)'``, ``'softplus'``,
        ``'relu'``, ``'leaky_relu(c)'``, ``'gelu'``, ``'silu'``, ``'tanh'``, ``'identity'``.
    scaling : 'mean_field' | 'ntk' | float
        The output scale s: 1/m, 1/sqrt(m), or the number given.
    outer : 'alternating' | 'random' | array of shape (m,)
        Outer weights a: +1, -1, +1, ... ; drawn uniformly from {+1, -1} with the run's seed; or given.
    train_outer : bool
        Train a together with W (a two-layer net in both layers; with the identity activation and
        the squared loss this is matrix factorization).

    >>> import lgd
    >>> net = lgd.TwoLayerNet(64)
    >>> net.scale, net.activation
    (0.015625, Activation('leaky_softplus(0.5)'))
    """

    def __init__(self, width: int, activation="leaky_softplus", scaling="mean_field", outer="alternating",
                 train_outer: bool = False):
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.width = int(width)
        self.activation = _activations.get(activation)
        if isinstance(scaling, str):
            if scaling == "mean_field":
                self.scale = 1.0 / self.width
            elif scaling == "ntk":
                self.scale = 1.0 / math.sqrt(self.width)
            else:
                raise ValueError(f"unknown scaling {scaling!r}; valid: 'mean_field', 'ntk' or a positive number")
        else:
            if isinstance(scaling, (bool, np.bool_)) or not isinstance(scaling, (Real, np.floating, np.integer)) \
                    or not (math.isfinite(float(scaling)) and scaling > 0):
                raise ValueError(f"scaling must be 'mean_field', 'ntk' or a positive number, got {scaling!r}")
            self.scale = float(scaling)
        self.scaling = scaling
        if isinstance(outer, str):
            if outer not in ("alternating", "random"):
                raise ValueError(f"unknown outer {outer!r}; valid: 'alternating', 'random' or an array of shape "
                                 f"({self.width},)")
        else:
            outer = real_array(outer, "outer weights")
            if outer.shape != (self.width,):
                raise ValueError(f"outer weights must have shape ({self.width},), got {outer.shape}")
            if not np.all(np.isfinite(outer)):
                raise ValueError("outer weights contain NaN or Inf")
        self.outer = outer
        if not isinstance(train_outer, (bool, np.bool_)):
            raise ValueError(f"train_outer must be True or False, got {train_outer!r}")
        self.train_outer = bool(train_outer)

    def outer_weights(self, rng: np.random.Generator) -> np.ndarray:
        """The initial outer weights a (float64), drawing from ``rng`` when they are random."""
        if isinstance(self.outer, np.ndarray):
            return self.outer.copy()
        if self.outer == "alternating":
            return np.where(np.arange(self.width) % 2 == 0, 1.0, -1.0)
        return rng.choice(np.array([1.0, -1.0]), size=self.width)

    def weight_shape(self, d: int) -> tuple:
        """Shape of the trained hidden weights as a user passes and receives them."""
        return (self.width, d)

    def to_user(self, W: np.ndarray) -> np.ndarray:
        """Hidden weights as returned to the user (the backends work on shape (m, d))."""
        return W

    def describe(self) -> str:
        outer = self.outer if isinstance(self.outer, str) else "given"
        scaling = self.scaling if isinstance(self.scaling, str) else f"{self.scale:g}"
        trained = ", train_outer" if self.train_outer else ""
        return f"TwoLayerNet(width={self.width}, {self.activation.spec}, {scaling}, outer={outer}{trained})"

    def __repr__(self) -> str:
        return self.describe()

    def config(self) -> dict:
        """JSON-serialisable description, inverse of :func:`model_from_config`."""
        outer = self.outer if isinstance(self.outer, str) else self.outer.tolist()
        scaling = self.scaling if isinstance(self.scaling, str) else self.scale
        return {"kind": "TwoLayerNet", "width": self.width, "activation": self.activation.spec,
                "scaling": scaling, "outer": outer, "train_outer": self.train_outer}


class Linear(TwoLayerNet):
    """Logistic (or linear) regression f(w; x) = w . x; weights of shape (d,).

    >>> import lgd
    >>> lgd.Linear()
    Linear()
    """

    def __init__(self):
        super().__init__(1, activation="identity", scaling=1.0, outer=np.ones(1))

    def weight_shape(self, d: int) -> tuple:
        return (d,)

    def to_user(self, W: np.ndarray) -> np.ndarray:
        return W.reshape(W.shape[:-2] + (W.shape[-1],))

    def describe(self) -> str:
        return "Linear()"

    def config(self) -> dict:
        return {"kind": "Linear"}


def init_grid(model: TwoLayerNet, first, second) -> dict:
    """Starting points on a grid, for a model with two trained parameters: ``lgd.sweep(..., **grid)``.

    - ``lgd.Linear()`` on inputs of dimension 2: w_0 = (first[i], second[j]);
    - a ``TwoLayerNet`` of width 1 with ``train_outer=True`` on inputs of dimension 1: (w_0, a_0) =
      (first[i], second[j]). With the identity activation, ``scaling=1.0``, X = [[1]], y = [1] and the
      squared loss this is GD on (1 - x y)^2 / 2, the miniature matrix factorisation of the science notes.

    The points are ordered first-major: point i * len(second) + j, so a sweep's results reshape to
    (..., len(first), len(second)). Returns ``{'inits': ..., 'outer_inits': ...}`` (the latter only for
    the two-layer model).

    >>> import numpy as np, lgd
    >>> net = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[1.0], train_outer=True)
    >>> grid = lgd.init_grid(net, [1.0, 2.0], [0.5, 1.5, 2.5])
    >>> grid["inits"].shape, grid["outer_inits"].shape, grid["outer_inits"][:3, 0].tolist()
    ((6, 1, 1), (6, 1), [0.5, 1.5, 2.5])
    """
    first = np.asarray(first, dtype=np.float64).ravel()
    second = np.asarray(second, dtype=np.float64).ravel()
    if first.size < 1 or second.size < 1:
        raise ValueError("init_grid needs at least one value on each axis")
    a, b = (axis.ravel() for axis in np.meshgrid(first, second, indexing="ij"))
    if isinstance(model, Linear):
        return {"inits": np.stack([a, b], axis=1)}
    if model.width == 1 and model.train_outer:
        return {"inits": a.reshape(-1, 1, 1), "outer_inits": b.reshape(-1, 1)}
    raise ValueError("init_grid is for models with two trained parameters: lgd.Linear() on 2 inputs, or a "
                     "TwoLayerNet of width 1 with train_outer=True on 1 input")


def model_from_config(config: dict) -> TwoLayerNet:
    """Rebuild a model from :meth:`TwoLayerNet.config` (used by :func:`lgd.load`)."""
    config = dict(config)
    kind = config.pop("kind")
    if kind == "Linear":
        return Linear()
    return TwoLayerNet(**config)


def predict(W, a, X, activation: Activation, scale: float):
    """Network outputs f_i = s * sum_j a_j phi(w_j . x_i) for every row of X (numpy oracle)."""
    return scale * (activation.phi(X @ W.T) @ a)


@dataclass
class Evaluation:
    """What one oracle pass computes at an iterate (W, a)."""

    risk: float
    log_risk: float
    grad_W: np.ndarray
    grad_a: np.ndarray | None
    accuracy: float
    margin: float
    neuron_margins: np.ndarray
    outputs: np.ndarray


def log_mean(log_values) -> float:
    """log((1/n) sum_i e^{l_i}) of the per-sample log-losses l_i, in float64, without leaving the log
    domain: max_i l_i + log(sum_i e^{l_i - max}) - log n (-inf when every loss is 0)."""
    values = np.asarray(log_values, dtype=np.float64)
    top = float(np.max(values))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(values - top)))) - math.log(values.size)


# The log-risk is log(risk) while the risk is well within its dtype's range, and is computed from the
# samples' log-losses below these (float64, float32) risks, where the risk loses digits to underflow or is 0.
# Every backend follows this rule.
LOG_RISK_EXACT_BELOW = 1e-280
LOG_RISK_EXACT_BELOW_F32 = 1e-30


def log_risk_of(risk, u, loss) -> float:
    """log L of a risk computed from the loss arguments u (float64; see LOG_RISK_EXACT_BELOW)."""
    below = LOG_RISK_EXACT_BELOW_F32 if np.asarray(risk).dtype == np.float32 else LOG_RISK_EXACT_BELOW
    if risk >= below:
        return math.log(float(risk))
    return log_mean(loss.log_value(np.asarray(u, dtype=np.float64)))


def evaluate(W, a, X, y, activation: Activation, loss, scale: float, train_outer: bool = False) -> Evaluation:
    """Risk, gradient and margins of L(W) = (1/n) sum_i loss_i at (W, a): the numpy oracle.

    With Z = X W^T, f = s phi(Z) a and u_i = y_i f_i (margin losses) or r_i = f_i - y_i (squared):

        G_ij = loss'_i * y_i * s * a_j * phi'(Z_ij) / n      (y_i dropped for the squared loss)
        grad_W = G^T X,   grad_a = s * phi(Z)^T (loss' * y) / n

    ``log_risk`` is log L (:func:`log_risk_of`: from the per-sample log-losses where L underflows, so a
    number even where L is 0); ``margin`` is min_i y_i f_i, ``accuracy`` the fraction with y_i f_i > 0, and
    ``neuron_margins`` the per-neuron min_i y_i a_j phi(w_j . x_i).
    """
    n = X.shape[0]
    Z = X @ W.T
    P = activation.phi(Z)
    f = scale * (P @ a)
    yf = y * f
    u = yf if loss.margin else f - y
    risk = loss.value(u).mean()
    log_risk = log_risk_of(risk, u, loss)
    coef = loss.d1(u) / n
    if loss.margin:
        coef = coef * y
    G = coef[:, None] * activation.dphi(Z) * (scale * a)[None, :]
    grad_W = G.T @ X
    grad_a = scale * (P.T @ coef) if train_outer else None
    neuron = (y[:, None] * P * a[None, :]).min(axis=0)
    return Evaluation(risk=risk, log_risk=log_risk, grad_W=grad_W, grad_a=grad_a, accuracy=float(np.mean(yf > 0)),
                      margin=yf.min(), neuron_margins=neuron, outputs=f)
