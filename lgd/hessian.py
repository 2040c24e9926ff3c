"""Exact Hessian-vector products of the empirical risk and the sharpness (top Hessian eigenvalues).

What lives here: :func:`hvp` (numpy, exact, using phi'' and loss''), :func:`dense_hessian` (the
whole Hessian column by column from :func:`hvp`, for tests and tiny models) and :func:`sharpness`
(top-k eigenvalues by Lanczos, scipy's ``eigsh``): the oracle of the compiled kernels' own
Hessian-vector products (kernels/numba_cpu/tangent.py and sharpness.py, kernels/cuda/lgd.cu), which
the numpy backend calls itself and the driver calls between chunks for a backend that cannot.

The formulas. With Z = X W^T (n x m), f_i = s sum_j a_j phi(Z_ij), u_i = y_i f_i for a margin loss
(c_i = y_i) or u_i = f_i - y_i for the squared loss (c_i = 1), and L = (1/n) sum_i loss(u_i):

    grad_W = (1/n) sum_i loss'(u_i) c_i s a_j phi'(Z_ij) x_i         (row j)
    grad_a = (1/n) sum_i loss'(u_i) c_i s phi(Z_ij)

A direction (V, b) moves Z by dZ = X V^T and f by df_i = s sum_j (b_j phi(Z_ij) + a_j phi'(Z_ij) dZ_ij),
hence u by c_i df_i. Differentiating the gradient along it, with c_i^2 = 1 (y_i = +-1; c_i = 1 for the
squared loss):

    (H v)_W = (1/n) sum_i [ loss''(u_i) df_i s a_j phi'(Z_ij)
                            + loss'(u_i) c_i s (b_j phi'(Z_ij) + a_j phi''(Z_ij) dZ_ij) ] x_i
    (H v)_a = (1/n) sum_i [ loss''(u_i) df_i s phi(Z_ij) + loss'(u_i) c_i s phi'(Z_ij) dZ_ij ]

with b = 0 and no a-block when the outer layer is fixed. The parameters are ordered as
``concatenate([W.ravel(), a])`` (W alone when the outer layer is fixed).

Sharpness is the largest eigenvalue of this Hessian; classical GD analysis needs it below 2/eta,
and Cohen et al. (ICLR 2021, "Gradient descent on neural networks typically occurs at the edge of
stability") observe it rising to about 2/eta and hovering there. They compute it on the first
5,000 training points (``points=5000``).

>>> import numpy as np, lgd
>>> X, y = lgd.data.xor(n=20)
>>> act, loss = lgd.activations.get("tanh"), lgd.losses.get("squared")
>>> W, a = np.random.default_rng(0).standard_normal((4, 2)), np.array([1.0, -1.0, 1.0, -1.0])
>>> H = dense_hessian(W, a, X, y, act, loss, scale=0.25)
>>> top = sharpness(W, a, X, y, act, loss, scale=0.25)
>>> bool(np.isclose(top[0], np.linalg.eigvalsh(H)[-1]))
True
"""

from __future__ import annotations

import numpy as np

from . import activations as _activations
from . import losses as _losses

__all__ = ["hvp", "dense_hessian", "sharpness"]

# Below this many parameters the top eigenvalues come from the dense Hessian (one HVP per
# parameter): exact, and ARPACK needs k < number of parameters anyway.
DENSE_PARAMETERS = 50


def _prepare(W, a, X, y, activation, loss, points):
    """Weights as (m, d), data cut to the first ``points`` rows, activation and loss objects; the data checked
    as lgd.gd checks them, in W's dtype (float64 for weights of another kind than float32 and float64)."""
    from .driver import check_data

    W = np.asarray(W)
    if W.dtype.kind not in "biuf":
        raise ValueError(f"W must hold real numbers, got dtype {W.dtype}")
    if W.dtype not in (np.float32, np.float64):  # integers would truncate X and the scale
        W = W.astype(np.float64)
    if W.ndim == 1:  # lgd.Linear weights (d,)
        W = W[None, :]
    loss = _losses.get(loss)
    X, y = check_data(X, y, loss, W.dtype, "X", "y")
    if points is not None:
        if isinstance(points, bool) or int(points) != points or points < 1:
            raise ValueError(f"points must be a positive integer or None, got {points!r}")
        X, y = X[:int(points)], y[:int(points)]
    a = np.asarray(a, dtype=W.dtype)
    if W.ndim != 2 or a.shape != (W.shape[0],) or X.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"inconsistent shapes: W {W.shape}, a {a.shape}, X {X.shape}")
    return W, a, X, y, _activations.get(activation), loss


class _Curvature:
    """The per-sample and per-unit quantities every HVP at one point (W, a) reuses."""

    def __init__(self, W, a, X, y, activation, loss, scale, train_outer):
        n = X.shape[0]
        self.W, self.a, self.X = W, a, X
        self.scale = W.dtype.type(scale)
        self.train_outer = train_outer
        Z = X @ W.T
        self.phi, self.dphi, self.ddphi = activation.phi(Z), activation.dphi(Z), activation.ddphi(Z)
        f = self.scale * (self.phi @ a)
        u = y * f if loss.margin else f - y
        # loss'(u) c_i / n and loss''(u) / n: the two coefficients of the formulas above.
        self.first = loss.d1(u) * (y if loss.margin else 1) / n
        self.second = loss.d2(u) / n

    @property
    def finite(self) -> bool:
        """Whether the risk's derivatives are finite here (they are not at a diverging iterate)."""
        return bool(np.all(np.isfinite(self.first)) and np.all(np.isfinite(self.second))
                    and np.all(np.isfinite(self.phi)) and np.all(np.isfinite(self.dphi)))

    @property
    def size(self) -> int:
        return self.W.size + (self.a.size if self.train_outer else 0)

    def product(self, vector):
        """H v for v of length :attr:`size` (W block first, then a when the outer layer is trained)."""
        m, d = self.W.shape
        vector = np.asarray(vector, dtype=self.W.dtype).ravel()
        V = vector[:m * d].reshape(m, d)
        b = vector[m * d:] if self.train_outer else None
        s, a = self.scale, self.a
        dZ = self.X @ V.T
        df = s * ((self.dphi * dZ) @ a)
        if b is not None:
            df = df + s * (self.phi @ b)
        inner = (self.second * df)[:, None] * self.dphi * (s * a)[None, :] \
            + self.first[:, None] * self.ddphi * dZ * (s * a)[None, :]
        if b is not None:
            inner = inner + self.first[:, None] * self.dphi * (s * b)[None, :]
        HV = inner.T @ self.X
        if b is None:
            return HV.ravel()
        Hb = s * (self.phi.T @ (self.second * df) + (self.first[:, None] * self.dphi * dZ).sum(axis=0))
        return np.concatenate([HV.ravel(), Hb])


def hvp(W, a, X, y, activation, loss, scale: float, vector, train_outer: bool = False, points=None):
    """The exact Hessian-vector product H v of L(W) (of L(W, a) with ``train_outer``), numpy.

    ``vector`` has W.size entries (W.size + m with ``train_outer``), ordered as
    ``concatenate([W.ravel(), a])``; the result has the same layout and W's dtype. ``points`` keeps
    the first that many training points. The formula is in the module docstring.
    """
    W, a, X, y, activation, loss = _prepare(W, a, X, y, activation, loss, points)
    curvature = _Curvature(W, a, X, y, activation, loss, scale, train_outer)
    if np.asarray(vector).dtype.kind not in "biuf":
        raise ValueError(f"vector must hold real numbers, got dtype {np.asarray(vector).dtype}")
    if np.size(vector) != curvature.size:
        raise ValueError(f"vector must have {curvature.size} entries (W's {W.size}"
                         f"{f' and then m = {a.size} for a' if train_outer else ''}), got {np.size(vector)}")
    return curvature.product(vector)


def dense_hessian(W, a, X, y, activation, loss, scale: float, train_outer: bool = False, points=None):
    """The full Hessian (N x N, N = W.size [+ m]) built column by column from :func:`hvp` on unit vectors.

    Costs N Hessian-vector products: meant for tests and for models with a few hundred parameters.
    """
    W, a, X, y, activation, loss = _prepare(W, a, X, y, activation, loss, points)
    curvature = _Curvature(W, a, X, y, activation, loss, scale, train_outer)
    return np.stack([curvature.product(column) for column in np.eye(curvature.size, dtype=W.dtype)], axis=1)


def sharpness(W, a, X, y, activation, loss, scale: float, train_outer: bool = False, k: int = 1, points=None):
    """The top ``k`` eigenvalues (largest first) of the Hessian of the risk at (W, a).

    Lanczos (``scipy.sparse.linalg.eigsh``, which='LA') on a LinearOperator whose matvec is the exact
    :func:`hvp`, in W's dtype; models with fewer than ``DENSE_PARAMETERS`` parameters (or k close to
    their number) use the dense Hessian instead. ``points`` keeps the first that many training points
    (Cohen et al. use 5,000). The result is NaN where the risk's derivatives are not finite (a
    diverging iterate). Compare the top eigenvalue with 2/eta: GD on a quadratic with curvature
    above 2/eta diverges along that direction, and at the edge of stability the sharpness hovers at
    2/eta (Cohen et al., ICLR 2021).

    Needs scipy: ``pip install "lgd[analysis]"``.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    W, a, X, y, activation, loss = _prepare(W, a, X, y, activation, loss, points)
    curvature = _Curvature(W, a, X, y, activation, loss, scale, train_outer)
    size = curvature.size
    if k > size:
        raise ValueError(f"k = {k} exceeds the {size} parameters of the model")
    if not curvature.finite:
        return np.full(k, np.nan, dtype=W.dtype)
    if size < DENSE_PARAMETERS or k >= size - 1:
        columns = np.eye(size, dtype=W.dtype)
        H = np.stack([curvature.product(column) for column in columns], axis=1)
        return np.linalg.eigvalsh(0.5 * (H + H.T))[::-1][:k]
    try:
        from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh
    except ImportError:
        raise ImportError('sharpness needs scipy: pip install "lgd[analysis]"') from None
    operator = LinearOperator((size, size), matvec=curvature.product, dtype=W.dtype)
    # A fixed start vector makes the result reproducible (ARPACK otherwise starts at random).
    start = np.random.default_rng(0).standard_normal(size).astype(W.dtype)
    try:
        values = eigsh(operator, k=k, which="LA", return_eigenvectors=False, v0=start)
    except ArpackError as error:
        # ARPACK's -9 ("starting vector is zero"): its first product H v0 was 0, as for a Hessian of exactly 0
        # (a saturated tanh or dead ReLU net: phi' = phi'' = 0). A nonzero H sends a Gaussian v0 to 0 only
        # with probability 0; a second random direction confirms it before every eigenvalue is called 0.
        second = np.random.default_rng(1).standard_normal(size).astype(W.dtype)
        # (ArpackError keeps the code only in its message.)
        zero = str(error).startswith("ARPACK error -9:")
        if not zero or np.any(curvature.product(start)) or np.any(curvature.product(second)):
            raise
        return np.zeros(k, dtype=W.dtype)
    return np.sort(values)[::-1]
