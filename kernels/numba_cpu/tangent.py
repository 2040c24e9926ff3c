"""The tangent map of a GD step, for Lyapunov exponents: exact Hessian-vector products and re-orthonormalisation.

What lives here: :func:`propagate` (the k tangent vectors of one configuration through the tangent map
I - eta H(W_t) of the GD map W -> W - eta grad L(W), then modified Gram-Schmidt, adding the log of each
vector's growth to its running sum, from the parts of H v that the members of a team computed) and
:func:`hessian_part` (a range of samples' part of H v for those k vectors at W_t, exact: the formulas
of :mod:`lgd.hessian`, which is the oracle), built of the curvature of each sample (as
:func:`block_curvature` forms it for a block of samples, or as the step's pass over the samples kept it:
step.sample_block) and a block's part of the products (:func:`block_products`, both products by the
step's register tiles); for many products at one W (the sharpness's Lanczos), :func:`curvature_cache`
keeps every sample's curvature and :func:`cached_hessian_products` uses it.

With Z = X W^T, f_i = s sum_j a_j phi(Z_ij), u_i = c_i f_i (c_i = y_i for a margin loss) or f_i - y_i
(c_i = 1), a direction (V, b) moves Z by dZ = X V^T and f by df_i = s sum_j (b_j phi(Z_ij) + a_j phi'(Z_ij)
dZ_ij), and

    (H v)_W = (1/n) sum_i [ loss''(u_i) df_i s a_j phi'(Z_ij)
                            + loss'(u_i) c_i s (b_j phi'(Z_ij) + a_j phi''(Z_ij) dZ_ij) ] x_i
    (H v)_a = (1/n) sum_i [ loss''(u_i) df_i s phi(Z_ij) + loss'(u_i) c_i s phi'(Z_ij) dZ_ij ]

(b = 0 and no a-block with fixed outer weights). The rows of phi, phi' and phi'' come from formulas in
the run's dtype; the products and the tangent vectors are float64. The tangent map runs after the step's
pass over the samples, each member of a team on its own samples, from the curvature that pass kept
(phi'' in the same loop as phi and phi'), so it forms neither Z nor the activations again (only in a
run with more samples than the kept rows' budget, lgd.backends._numba.KEPT_BYTES); the sharpness's
Lanczos by one thread. Off the fused hot path: a run without Lyapunov exponents or the sharpness never
enters it.
"""

import math

import numpy as np
from numba import types

from .compiler import subroutine
from .formulas import activate_row, loss_curvature, loss_row
from .intrinsics import fma
from .tiles import TILE_ROWS, WAITING_SAMPLES, WIDE_MIN_D, WIDE_ROWS, backward_rows, forward_rows

# Samples per block of the Hessian-vector products (backward_rows adds at most WAITING_SAMPLES at once).
BLOCK = WAITING_SAMPLES


@subroutine(types.void)
def _rows_times(X, i0, count, Wt, Z):
    """Z[r] = X[i0 + r] Wt for r < count, by the step's register tiles (tiles.forward_rows), as many rows at
    a time as the step takes for this d."""
    d = X.shape[1]
    rows = WIDE_ROWS if d >= WIDE_MIN_D else TILE_ROWS
    r = 0
    while r < count:
        take = min(rows, count - r)
        forward_rows(X, i0 + r, take, Wt, Z[r:r + take])
        r += take


@subroutine(types.void)
def block_curvature(X, y, Wt, a, spec, i0, count, Z, P, Q, R, AQ, AR, coef):
    """What H v needs of samples i0 .. i0 + count - 1 at (W, a), whatever v, in rows r < count: phi, phi'
    (P, Q, the run's dtype) of their rows of Z = X W^T, a_j phi' and a_j phi'' (AQ, AR, float64) and coef =
    (loss''(u_i) s / n, loss'(u_i) c_i s / n). Z and R (phi'') are scratch of at least count rows."""
    n = X.shape[0]
    m = Wt.shape[1]
    scale = spec.scale
    _rows_times(X, i0, count, Wt, Z)
    for r in range(count):
        activate_row(spec.activation, spec.activation_param, Z, r, P[r], Q[r], R[r], m)
        f = 0.0
        for j in range(m):
            f += np.float64(a[j]) * np.float64(P[r, j])
        f *= scale
        yi = np.float64(y[i0 + r])
        u = yi * f if spec.margin_loss else f - yi
        ci = yi if spec.margin_loss else 1.0
        _, slope = loss_row(spec.loss, spec.loss_param, u)
        coef[r, 0] = loss_curvature(spec.loss, spec.loss_param, u) * scale / n
        coef[r, 1] = slope * ci * scale / n
        for j in range(m):
            AQ[r, j] = np.float64(a[j]) * np.float64(Q[r, j])
            AR[r, j] = np.float64(a[j]) * np.float64(R[r, j])


@subroutine(types.void)
def block_products(X, i0, count, spec, P, Q, AQ, AR, coef, B, HB, Vt, HVt, Xb, DZ, G, order):
    """Add the part of H v of samples i0 .. i0 + count - 1 (count <= BLOCK) to (HVt, HB) for every tangent
    l (Vt (k, d, m), B (k, m)), from their block_curvature rows: dZ = X_block V^T, df_i = s sum_j (a_j
    phi'_ij dZ_ij + b_j phi_ij), G_ij = coef_i0 df_i a_j phi'_ij + coef_i1 (a_j phi''_ij dZ_ij + b_j phi'_ij),
    HVt += X_block^T G (the formulas of the module docstring), both products by the step's register tiles.
    Scratch: Xb (BLOCK, d), DZ and G (BLOCK, m) float64, order (BLOCK,) = 0, 1, ... (int64)."""
    d = X.shape[1]
    k, m = Vt.shape[0], Vt.shape[2]
    scale, train_outer = spec.scale, spec.train_outer
    for r in range(count):
        for kk in range(d):
            Xb[r, kk] = np.float64(X[i0 + r, kk])
    for l in range(k):
        _rows_times(Xb, 0, count, Vt[l], DZ)
        for r in range(count):
            # df in eight independent fma chains (one chain of m additions is bound by its latency)
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
            j = 0
            while j + 8 <= m:
                s0 = fma(AQ[r, j], DZ[r, j], s0)
                s1 = fma(AQ[r, j + 1], DZ[r, j + 1], s1)
                s2 = fma(AQ[r, j + 2], DZ[r, j + 2], s2)
                s3 = fma(AQ[r, j + 3], DZ[r, j + 3], s3)
                s4 = fma(AQ[r, j + 4], DZ[r, j + 4], s4)
                s5 = fma(AQ[r, j + 5], DZ[r, j + 5], s5)
                s6 = fma(AQ[r, j + 6], DZ[r, j + 6], s6)
                s7 = fma(AQ[r, j + 7], DZ[r, j + 7], s7)
                j += 8
            while j < m:
                s0 = fma(AQ[r, j], DZ[r, j], s0)
                j += 1
            df = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
            if train_outer:
                for j in range(m):
                    df += B[l, j] * np.float64(P[r, j])
            df *= scale
            first = coef[r, 0] * df
            second = coef[r, 1]
            for j in range(m):
                G[r, j] = first * AQ[r, j] + second * AR[r, j] * DZ[r, j]
            if train_outer:
                for j in range(m):
                    G[r, j] += second * B[l, j] * np.float64(Q[r, j])
                    HB[l, j] += first * np.float64(P[r, j]) + second * np.float64(Q[r, j]) * DZ[r, j]
        backward_rows(Xb, order, count, G, HVt[l])


@subroutine(types.void)
def _begin_products(V, HB, Vt, HVt):
    """Vt = V transposed, HVt and HB zero."""
    k, m, d = V.shape
    for l in range(k):
        for j in range(m):
            HB[l, j] = 0.0
            for kk in range(d):
                Vt[l, kk, j] = V[l, j, kk]
                HVt[l, kk, j] = 0.0


@subroutine(types.void)
def _end_products(HVt, HV):
    """HV = HVt transposed."""
    k, d, m = HVt.shape
    for l in range(k):
        for j in range(m):
            for kk in range(d):
                HV[l, j, kk] = HVt[l, kk, j]


def _member_block_type(rows, member):
    return types.Tuple([types.Array(array.dtype, array.ndim - 1, "C") for array in rows])


@subroutine(_member_block_type)
def member_block(rows, member):
    """A team member's block scratch (hessian_part's `block`) out of `rows`, the same arrays with a leading
    axis of members."""
    return (rows[0][member], rows[1][member], rows[2][member], rows[3][member], rows[4][member], rows[5][member],
            rows[6][member], rows[7][member], rows[8][member], rows[9][member], rows[10][member])


@subroutine(types.void)
def _sum_products(X, spec, P, Q, AQ, AR, coef, V, B, i0, i1, Vt, HVt, HB, block):
    """The part of H (V[l], B[l]) of samples i0 .. i1 - 1 from their curvature rows (P, Q, AQ, AR, coef, indexed
    by sample), for every tangent l: into HVt (k, d, m) (transposed, so that every inner loop runs over
    the m contiguous neurons) and HB (k, m), float64, BLOCK samples at a time; Vt (k, d, m) receives V
    transposed. Xb, DZ, G and order of `block` are the scratch."""
    Xb, DZ, G, order = block[7], block[8], block[9], block[10]
    _begin_products(V, HB, Vt, HVt)
    for b0 in range(i0, i1, BLOCK):
        b1 = min(b0 + BLOCK, i1)
        block_products(X, b0, b1 - b0, spec, P[b0:b1], Q[b0:b1], AQ[b0:b1], AR[b0:b1], coef[b0:b1], B, HB, Vt, HVt,
                       Xb, DZ, G, order)


@subroutine(types.void)
def hessian_part(X, y, Wt, a, spec, kept, V, B, i0, i1, Vt, HVt, HB, block):
    """The part of H (V[l], B[l]) at (W_t, a) of samples i0 .. i1 - 1, for every tangent l, exact: HVt (k, d, m)
    (transposed) and HB (k, m), float64. From the curvature rows that the step's pass over these samples
    kept at the same weights (`kept`: step.sample_block), without X W^T and the activations again; when
    the run keeps none (kept's rows are empty: more samples than the budget of lgd.backends._numba's
    buffers), the curvature of each block is formed on the way (block_curvature, into `block`, a
    member's scratch of a block of samples: member_block). The members of a team each add their
    samples' part; propagate sums the parts."""
    if kept[2].shape[0] > 0:
        _sum_products(X, spec, kept[0], kept[1], kept[2], kept[3], kept[4], V, B, i0, i1, Vt, HVt, HB, block)
        return
    Z, P, Q, R, AQ, AR, coef, Xb, DZ, G, order = block
    _begin_products(V, HB, Vt, HVt)
    for b0 in range(i0, i1, BLOCK):
        count = min(BLOCK, i1 - b0)
        block_curvature(X, y, Wt, a, spec, b0, count, Z, P, Q, R, AQ, AR, coef)
        block_products(X, b0, count, spec, P, Q, AQ, AR, coef, B, HB, Vt, HVt, Xb, DZ, G, order)


@subroutine(types.void)
def curvature_cache(X, y, Wt, a, spec, block, P, Q, AQ, AR, coef):
    """block_curvature of every sample at (W, a), kept for several products at the same weights (a Lanczos
    run): P, Q (n, m) in the run's dtype, AQ, AR (n, m) and coef (n, 2) float64; Z and R of `block` are
    the scratch."""
    Z, R = block[0], block[3]
    n = X.shape[0]
    for i0 in range(0, n, BLOCK):
        count = min(BLOCK, n - i0)
        block_curvature(X, y, Wt, a, spec, i0, count, Z, P[i0:i0 + count], Q[i0:i0 + count], R,
                        AQ[i0:i0 + count], AR[i0:i0 + count], coef[i0:i0 + count])


@subroutine(types.void)
def cached_hessian_products(X, spec, P, Q, AQ, AR, coef, V, B, HV, HB, Vt, HVt, block):
    """H (V[l], B[l]) (HV (k, m, d), HB (k, m)) from a curvature_cache of the same weights: hessian_part's
    sums over every sample without forming Z and its activations again. Xb, DZ, G and order of `block`
    are the scratch."""
    _sum_products(X, spec, P, Q, AQ, AR, coef, V, B, 0, X.shape[0], Vt, HVt, HB, block)
    _end_products(HVt, HV)


@subroutine(types.void)
def propagate(c, spec, eta, tangents, tangents_a, log_growth, HV, HB, HVts, HBs, parts):
    """Tangent vectors l of configuration c: v <- v - eta H v, H v the sum of the `parts` members' hessian_part
    (HVts (team, k, d, m), HBs (team, k, m), added in member order into HV (k, m, d), HB (k, m)), then modified
    Gram-Schmidt in order l = 0, 1, ...: log_growth[c, l] += log of the norm of v_l's part orthogonal to
    v_0 .. v_{l-1}, which then becomes v_l. The sums over the steps, divided by the steps, are the top
    Lyapunov exponents (QR method); the vectors of the a-block (tangents_a) count when the outer layer is
    trained."""
    k = tangents.shape[1]
    m, d = tangents.shape[2], tangents.shape[3]
    train_outer = spec.train_outer
    for l in range(k):
        for j in range(m):
            HB[l, j] = HBs[0, l, j]
            for kk in range(d):
                HV[l, j, kk] = HVts[0, l, kk, j]
        for member in range(1, parts):
            for j in range(m):
                HB[l, j] += HBs[member, l, j]
                for kk in range(d):
                    HV[l, j, kk] += HVts[member, l, kk, j]
    for l in range(k):
        for j in range(m):
            for kk in range(d):
                HV[l, j, kk] = tangents[c, l, j, kk] - eta * HV[l, j, kk]
            HB[l, j] = tangents_a[c, l, j] - eta * HB[l, j] if train_outer else 0.0
        for o in range(l):
            dot = 0.0
            for j in range(m):
                for kk in range(d):
                    dot += HV[l, j, kk] * HV[o, j, kk]
                dot += HB[l, j] * HB[o, j]
            for j in range(m):
                for kk in range(d):
                    HV[l, j, kk] -= dot * HV[o, j, kk]
                HB[l, j] -= dot * HB[o, j]
        norm = 0.0
        for j in range(m):
            for kk in range(d):
                norm += HV[l, j, kk] * HV[l, j, kk]
            norm += HB[l, j] * HB[l, j]
        norm = math.sqrt(norm)
        log_growth[c, l] += math.log(norm)  # -inf where the map sends the vector to 0
        if norm == 0.0:  # a vector sent to 0 stays 0 (its sum -inf), not 0/0
            norm = 1.0
        for j in range(m):
            for kk in range(d):
                HV[l, j, kk] /= norm
                tangents[c, l, j, kk] = HV[l, j, kk]
            HB[l, j] /= norm
            tangents_a[c, l, j] = HB[l, j]
