"""The activation and loss formulas of the numba kernels: the one file to edit when adding either.

Codes come from the catalogs (:mod:`lgd.activations`, :mod:`lgd.losses`), the single table every kernel
takes them from; the numpy formulas there are the oracle these rows are tested against. A code this
file has no formula for is refused before a run starts (:func:`unknown_code`), never computed as
something else.

Activations, row by row (phi and phi' of every entry z of a row; c is the entry's parameter):

- identity:        phi = z,                                phi' = 1
- relu:            phi = max(z, 0),                        phi' = 1 if z > 0 else 0
- leaky_relu(c):   phi = z if z > 0 else c z,              phi' = 1 if z > 0 else c
- softplus:        phi = log(1 + e^z) = max(z, 0) + log1p(e^-|z|),   phi' = sigmoid(z)
- leaky_softplus(c): phi = c z + (1 - c) softplus(z),      phi' = c + (1 - c) sigmoid(z)
- silu:            phi = z sigmoid(z),                     phi' = s + z s (1 - s), s = sigmoid(z)
- tanh:            phi = tanh z,                           phi' = sech^2 z = 4 e / (1 + e)^2, e = e^-2|z|
- gelu:            phi = z Phi(z),                         phi' = Phi(z) + z N(z)  (Phi = erfc(-z/sqrt 2)/2,
                   N the normal density, taken as 0 beyond |z| = 40)

Losses, sample by sample (loss and loss' of u = y f for the margin losses, of r = f - y for squared; a is
the entry's parameter):

- logistic:                   log(1 + e^-u),                          -sigmoid(-u)
- exponential:                e^-u,                                   -e^-u
- flattened_exponential(a):   e^{-a u} (u >= 0), 1 - a u (u < 0),     -a e^{-a u}, -a
- flattened_polynomial(a):    (1 + u)^-a (u >= 0), 1 - a u (u < 0),   -a (1 + u)^{-a-1}, -a
- squared:                    r^2 / 2,                                r

the second derivatives phi'' (:func:`activate_span` with its array r) and loss'' (:func:`loss_curvature`), for
exact Hessian-vector products (the catalogs' ``ddphi`` and ``d2``): 0 for identity and the ReLUs; s (1 - s)
for softplus, times (1 - c) for leaky_softplus; s t (2 + z (t - s)) for silu (t = 1 - s);
-2 tanh z sech^2 z for tanh; N(z) (2 - z^2) for gelu; and sigmoid(u) sigmoid(-u), e^-u, a^2 e^{-a u} (u >= 0,
else 0), a (a + 1) (1 + u)^{-a-2} (u >= 0, else 0), 1 for the losses;
and the log of each loss where the loss itself underflows (:func:`log_loss_row`, for the log-risk):
-u (logistic beyond u = 36, exponential), -a u and -a log1p(u) (the flattened tails), 2 log|r| - log 2.

For the softplus family with the outer layer fixed at +-alpha, the outputs sum_j a_j phi_j in product form (a
log a row: :data:`PRODUCT_MAX_M`, :func:`product_span`, :func:`product_row`), and phi from it for the margins.

Every sigmoid and softplus is built from e^-|z|, so nothing overflows for |z| up to 1e6; only e^-u of
the exponential loss overflows (to inf: the run diverges, as the oracle's does). What the formulas feed
(the forward and backward pass, G_ij = loss'_i y_i s a_j phi'(Z_ij) / n) lives in step.
"""

import math

import numpy as np
from numba import types

from lgd.activations import GELU, IDENTITY, LEAKY_RELU, LEAKY_SOFTPLUS, RELU, SILU, SOFTPLUS, TANH
from lgd.losses import EXPONENTIAL, FLATTENED_EXPONENTIAL, FLATTENED_POLYNOMIAL, LOGISTIC, SQUARED

from .compiler import subroutine
from .exp_log1p import (exp, exp32_nonpositive, exp_nonpositive, exp_nonpositive_of, log1p_parts_of, log1p_unit,
                        log_normal, softplus_sigmoid_from_exp, softplus_sigmoid_from_exp_of)
from .intrinsics import fma, like, product_lanes, rows_flat
from .passes import exp_pass, product_pass

# The codes this file has a formula for: a catalog entry missing here is refused (and the tests, which
# enumerate the catalogs, fail until its formula is written).
ACTIVATIONS = (IDENTITY, RELU, LEAKY_RELU, SOFTPLUS, LEAKY_SOFTPLUS, GELU, SILU, TANH)
LOSSES = (LOGISTIC, EXPONENTIAL, FLATTENED_EXPONENTIAL, FLATTENED_POLYNOMIAL, SQUARED)

# Values of unknown_code.
KNOWN, UNKNOWN_ACTIVATION, UNKNOWN_LOSS = 0, 1, 2

_INV_SQRT2 = 0.7071067811865476
_INV_SQRT2PI = 0.3989422804014327


@subroutine(types.int64)
def unknown_code(activation, loss):
    """KNOWN when both codes have formulas here, else UNKNOWN_ACTIVATION or UNKNOWN_LOSS."""
    known = False
    for code in ACTIVATIONS:
        known = known or code == activation
    if not known:
        return UNKNOWN_ACTIVATION
    known = False
    for code in LOSSES:
        known = known or code == loss
    if not known:
        return UNKNOWN_LOSS
    return KNOWN


def _exp_span64(z, e, count):
    exp_pass(z, e, count)


def _exp_span32(z, e, count):
    for k in range(count):
        e[k] = exp32_nonpositive(-abs(z[k]))


@subroutine(types.void, pick=lambda z, e, count: _exp_span32 if z.dtype == types.float32 else _exp_span64)
def exp_span(z, e, count):
    """e[k] = e^-|z[k]| for k < count (1-d C-contiguous spans): float64 in vector code, as the product form's
    pass takes it (passes.exp_pass: the same bits), float32 by exp32_nonpositive."""


@subroutine(types.void)
def activate_span(code, c, z, p, q, r, m):
    """p[j] = phi(z[j]) and q[j] = phi'(z[j]) for j < m (1-d arrays), in the dtype of z, and, unless r is
    None, r[j] = phi''(z[j]) (for exact Hessian-vector products) from the same intermediate values: the
    sigmoid's e^-|z| and 1 / (1 + e^-|z|), tanh z, the normal density. The branch is taken once per call,
    never inside the vectorised loops; r None prunes phi'' from the compiled code (the plain step's
    variant). A span of several rows in one call (step.fused_block) starts and drains the vectorised
    loops once for all of them (docs/performance.md: S and SWEEP faster, most in float32)."""
    zero, one, half, two = like(z, 0.0), like(z, 1.0), like(z, 0.5), like(z, 2.0)
    cz, cbar = like(z, c), like(z, 1.0 - c)
    if code == LEAKY_SOFTPLUS or code == SOFTPLUS:  # softplus is c = 0
        # Two passes, exp(-|z|) into p first: each loop keeps fewer constants live than one loop doing
        # both, so fewer are reloaded every iteration.
        exp_span(z, p, m)
        # softplus(x) = max(x, 0) + e - s u (log1p_parts): the terms known early first, s u (the end of
        # the longest chain: the division, then the polynomial) last, in one fma; then phi = c x +
        # (1 - c) softplus(x) in one more.
        for j in range(m):
            x = z[j]
            e = p[j]
            s, u, r1 = log1p_parts_of(e)  # r1 = 1 / (1 + e): sigmoid(|x|); e r1 = sigmoid(-|x|)
            early = max(x, zero) + e
            if c != 0.0:
                p[j] = fma(cbar, fma(-s, u, early), cz * x)
            else:
                p[j] = fma(-s, u, early)
            q[j] = fma(cbar, r1 if x >= zero else e * r1, cz)
            if r is not None:  # phi'' = (1 - c) sigmoid(x) sigmoid(-x), either sign of x
                r[j] = cbar * (e * r1) * r1
    elif code == RELU or code == LEAKY_RELU or code == IDENTITY:
        slope = one if code == IDENTITY else cz  # the identity is the leaky ReLU of slope 1
        for j in range(m):
            x = z[j]
            pos = x > zero
            p[j] = x if pos else slope * x
            q[j] = one if pos else slope
            if r is not None:  # piecewise linear
                r[j] = zero
    elif code == SILU:
        for j in range(m):
            x = z[j]
            e = exp_nonpositive_of(-abs(x))
            r1 = one / (one + e)
            s = r1 if x >= zero else e * r1
            t = e * r1 if x >= zero else r1
            p[j] = x * s
            q[j] = s + x * s * t
            if r is not None:
                r[j] = s * t * (two + x * (t - s))
    elif code == TANH:
        # sech^2 from e^-2|z| (the catalog's lgd.activations.tanh): 1 - tanh^2 cancels once tanh rounds to 1.
        four = like(z, 4.0)
        for j in range(m):
            x = z[j]
            th = math.tanh(x)
            e = exp_nonpositive_of(-two * abs(x))
            sech2 = four * e / ((one + e) * (one + e))
            p[j] = th
            q[j] = sech2
            if r is not None:
                r[j] = like(z, -2.0) * th * sech2
    elif code == GELU:
        inv_sqrt2, inv_sqrt2pi, cap = like(z, _INV_SQRT2), like(z, _INV_SQRT2PI), like(z, 3200.0)
        for j in range(m):
            x = z[j]
            cdf = half * math.erfc(-x * inv_sqrt2)
            near = abs(x) < like(z, 40.0)
            pdf = exp_nonpositive_of(-half * min(x * x, cap)) * inv_sqrt2pi if near else zero
            xc = x if near else zero
            p[j] = x * cdf
            q[j] = cdf + xc * pdf
            if r is not None:
                r[j] = pdf * (two - xc * xc)


# The softplus family's outputs in product form. Where the outer weights are fixed at a_j = +-alpha (the default:
# alternating signs), sum_j a_j phi(z_j) = sum_j a_j l_j + (1 - c) alpha (log prod_{a_j > 0} (1 + e_j) -
# log prod_{a_j < 0} (1 + e_j)) with l = c z + (1 - c) max(z, 0), e = e^-|z|: two logs a row where the sum of phi
# takes a log1p an entry (docs/performance.md). Each product is held as D = prod - 1, D <- D (1 + e) + e (one fma):
# e below an ulp of 1 (all of a row's z far below 0, where f is that small) stays in D, where 1 + e would round to
# 1; log1p(D) from log_normal (log1p_normal). The products lie in [1, 2^m], so
# up to PRODUCT_MAX_M neurons 1 + D is a normal number. Every pass (fused, row, column, split) forms the outputs
# so, and the neurons' margins take phi = l + (1 - c) log1p(e) (product_phi), so that a step's numbers do not
# depend on the pass or on what the step records. Whether a run takes it is the host's (product_form).
PRODUCT_MAX_M = 1000


def product_form(code: int, f32: bool, train_outer: bool, A) -> bool:
    """Whether a run's outputs take the product form: the softplus family, float64, the outer layer fixed, and
    every configuration's outer weights A[c] (C, m) of one magnitude alpha_c > 0, at most PRODUCT_MAX_M of them
    (for a team split by neurons too: a member's columns then hold alpha_c as well)."""
    A = np.abs(np.asarray(A, dtype=np.float64))
    if code not in (LEAKY_SOFTPLUS, SOFTPLUS) or f32 or train_outer:
        return False
    if A.ndim != 2 or not 0 < A.shape[1] <= PRODUCT_MAX_M:
        return False
    return bool(np.all(A[:, :1] > 0) and np.all(A == A[:, :1]))


@subroutine(types.float64)
def product_alpha(spec, a):
    """alpha = |a_0| where the run's outputs take the product form (spec.product: product_form), else 0."""
    return abs(np.float64(a[0])) if spec.product else 0.0


@subroutine(types.void)
def product_span(c, z, p, q, r, count):
    """The product form's pass over `count` entries (1-d spans z, p, q and, unless r is None, r; rows of m one
    after another, or one neuron's entries of several samples): z[k] becomes e = e^-|z|, p[k] l = max(z, c z),
    q[k] phi' = c + (1 - c) sigmoid(z) (from the same e as activate_span; its sigmoid in one division, within an
    ulp of activate_span's) and r[k] phi''. In vector code (passes.product_pass: exp by a table where the target
    has AVX-512)."""
    product_pass(c, z, p, q, r, count)


@subroutine(types.float64)
def log1p_normal(D):
    """log(1 + D) for float64 D >= 0 with 1 + D normal: log_normal of u = 1 + D, plus the rounding of that sum
    over u (D below an ulp of 1 gives D)."""
    u = 1.0 + D
    return log_normal(u) + (D - (u - 1.0)) / u


@subroutine(types.float64)
def product_output(c, alpha, total, positive, negative):
    """sum_j a_j phi(z_j) from total = sum_j a_j l_j and the products less 1 of (1 + e_j) over a_j > 0 (positive)
    and a_j < 0 (negative)."""
    logs = log1p_normal(np.float64(positive)) - log1p_normal(np.float64(negative))
    return fma((1.0 - c) * alpha, logs, np.float64(total))


@subroutine(types.float64)
def product_row(c, alpha, a, e, p, m):
    """product_output of one row: e and p as product_span leaves them, summed in product_lanes' order."""
    total, positive, negative = product_lanes(a, p, e, m)
    return product_output(c, alpha, total, positive, negative)


@subroutine(types.float64)
def product_phi(c, e, lin):
    """phi of an entry from its e and l (product_span): l + (1 - c) log1p(e); for the neurons' margins, at the
    steps that record them."""
    lp, _ = log1p_unit(np.float64(e))
    return fma(1.0 - c, lp, np.float64(lin))


@subroutine(types.void)
def product_phi_span(c, e, p, count):
    """product_phi of `count` entries, into p (as product_span leaves e and p)."""
    for k in range(count):
        p[k] = product_phi(c, e[k], p[k])


@subroutine(types.void)
def activate_row(code, c, Z, row, p, q, r, m):
    """activate_span of row `row` of the 2-d array Z (C-contiguous; its rows may be longer than m)."""
    activate_span(code, c, rows_flat(Z, row, 1), p, q, r, m)


@subroutine(types.UniTuple(types.float64, 2))
def loss_row(code, a, u):
    """(loss(u), loss'(u)) of one sample, in float64 (nan for a code refused by unknown_code)."""
    if code == LOGISTIC:
        sp, sg = softplus_sigmoid_from_exp_of(-u, exp_nonpositive(-abs(u)))
        return sp, -sg
    if code == EXPONENTIAL:
        v = exp(-u)
        return v, -v
    if code == FLATTENED_EXPONENTIAL:
        if u >= 0.0:
            v = exp(-a * u)
            return v, -a * v
        return 1.0 - a * u, -a
    if code == FLATTENED_POLYNOMIAL:
        if u >= 0.0:
            b = 1.0 + u
            v = b ** (-a)
            return v, -a * v / b
        return 1.0 - a * u, -a
    if code == SQUARED:  # u = f - y
        return 0.5 * u * u, u
    return math.nan, math.nan


_LOG2 = 0.6931471805599453


@subroutine(types.float64)
def log_loss_row(code, a, u):
    """log loss(u) of one sample in float64, finite where loss(u) underflows to 0 (the formulas of the
    catalogs' ``log_value``)."""
    if code == LOGISTIC:
        if u > 36.0:  # log log1p(e^-u) = -u + log1p(-e^-u / 2 + ...) = -u to rounding
            return -u
        sp, sg = softplus_sigmoid_from_exp(-u, exp_nonpositive(-abs(u)))
        return math.log(sp)
    if code == EXPONENTIAL:
        return -u
    if code == FLATTENED_EXPONENTIAL:
        return -a * u if u >= 0.0 else math.log(1.0 - a * u)
    if code == FLATTENED_POLYNOMIAL:
        return -a * math.log1p(u) if u >= 0.0 else math.log(1.0 - a * u)
    if code == SQUARED:
        return 2.0 * math.log(abs(u)) - _LOG2
    return math.nan


@subroutine(types.float64)
def loss_curvature(code, a, u):
    """loss''(u) of one sample, in float64."""
    if code == LOGISTIC:
        e = exp_nonpositive(-abs(u))
        return e / ((1.0 + e) * (1.0 + e))
    if code == EXPONENTIAL:
        return exp(-u)
    if code == FLATTENED_EXPONENTIAL:
        return a * a * exp(-a * u) if u >= 0.0 else 0.0
    if code == FLATTENED_POLYNOMIAL:
        return a * (a + 1.0) * (1.0 + u) ** (-a - 2.0) if u >= 0.0 else 0.0
    if code == SQUARED:
        return 1.0
    return math.nan
