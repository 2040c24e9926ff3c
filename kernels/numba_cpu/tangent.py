"""The tangent map of a GD step, for Lyapunov exponents: exact Hessian-vector products and re-orthonormalisation.

What lives here: :func:`propagate` (the k tangent vectors of one configuration through the tangent map
I - eta H(W_t) of the GD map W -> W - eta grad L(W), then modified Gram-Schmidt, adding the log of each
vector's growth to its running sum) and :func:`hessian_products` (H v for those k vectors at W_t, exact:
the formulas of :mod:`lgd.hessian`, which is the oracle). With Z = X W^T, f_i = s sum_j a_j phi(Z_ij),
u_i = c_i f_i (c_i = y_i for a margin loss) or f_i - y_i (c_i = 1), a direction (V, b) moves Z by
dZ = X V^T and f by df_i = s sum_j (b_j phi(Z_ij) + a_j phi'(Z_ij) dZ_ij), and

    (H v)_W = (1/n) sum_i [ loss''(u_i) df_i s a_j phi'(Z_ij) + loss'(u_i) c_i s (b_j phi'(Z_ij) + a_j phi''(Z_ij) dZ_ij) ] x_i
    (H v)_a = (1/n) sum_i [ loss''(u_i) df_i s phi(Z_ij) + loss'(u_i) c_i s phi'(Z_ij) dZ_ij ]

(b = 0 and no a-block with fixed outer weights). The rows of phi, phi' and phi'' come from formulas in
the run's dtype; the products and the tangent vectors are float64. This runs by one thread per
configuration, after the step's pass over the samples (it forms Z again): off the fused hot path, so a
run without Lyapunov exponents never enters it.
"""

import math

import numpy as np
from numba import types

from .compiler import subroutine
from .formulas import activate_row, curvature_row, loss_curvature, loss_row


@subroutine(types.void)
def hessian_products(X, y, Wt, a, spec, V, B, HV, HB, Vt, HVt, z, p, q, r, dz, g):
    """HV[l] (m, d) and HB[l] (m,) = H (V[l], B[l]) at (W, a) for every tangent l (float64), exact.
    Scratch: Vt, HVt (k, d, m) float64 (the tangents and products transposed, so that every inner loop
    runs over the m contiguous neurons and vectorises), z (1, m) and p, q, r (m,) in the run's dtype,
    dz and g (m,) float64."""
    n, d = X.shape
    m = Wt.shape[1]
    k = V.shape[0]
    scale, train_outer = spec.scale, spec.train_outer
    for l in range(k):
        for j in range(m):
            HB[l, j] = 0.0
            for kk in range(d):
                Vt[l, kk, j] = V[l, j, kk]
                HVt[l, kk, j] = 0.0
    for i in range(n):
        for j in range(m):
            z[0, j] = 0.0
        for kk in range(d):
            x = X[i, kk]
            for j in range(m):
                z[0, j] += x * Wt[kk, j]
        activate_row(spec.activation, spec.activation_param, z, 0, p, q, m)
        curvature_row(spec.activation, spec.activation_param, z, 0, r, m)
        f = 0.0
        for j in range(m):
            f += np.float64(a[j]) * np.float64(p[j])
        f *= scale
        yi = np.float64(y[i])
        u = yi * f if spec.margin_loss else f - yi
        ci = yi if spec.margin_loss else 1.0
        _, slope = loss_row(spec.loss, spec.loss_param, u)
        curve = loss_curvature(spec.loss, spec.loss_param, u)
        for l in range(k):
            for j in range(m):
                dz[j] = 0.0
            for kk in range(d):
                x = np.float64(X[i, kk])
                for j in range(m):
                    dz[j] += x * Vt[l, kk, j]
            df = 0.0
            for j in range(m):
                df += np.float64(a[j]) * np.float64(q[j]) * dz[j]
            if train_outer:
                for j in range(m):
                    df += B[l, j] * np.float64(p[j])
            df *= scale
            first = curve * df * scale / n
            second = slope * ci * scale / n
            for j in range(m):
                g[j] = first * np.float64(a[j]) * np.float64(q[j]) + second * np.float64(a[j]) * np.float64(r[j]) * dz[j]
            if train_outer:
                for j in range(m):
                    g[j] += second * B[l, j] * np.float64(q[j])
                    HB[l, j] += first * np.float64(p[j]) + second * np.float64(q[j]) * dz[j]
            for kk in range(d):
                x = np.float64(X[i, kk])
                for j in range(m):
                    HVt[l, kk, j] += g[j] * x
    for l in range(k):
        for j in range(m):
            for kk in range(d):
                HV[l, j, kk] = HVt[l, kk, j]


@subroutine(types.void)
def propagate(c, X, y, Wt, a, spec, eta, tangents, tangents_a, log_growth, HV, HB, Vt, HVt, z, p, q, r, dz, g):
    """Tangent vectors l of configuration c: v <- v - eta H v (one exact HVP each), then modified Gram-Schmidt
    in order l = 0, 1, ...: log_growth[c, l] += log of the norm of v_l's part orthogonal to v_0 .. v_{l-1},
    which then becomes v_l. The sums over the steps, divided by the steps, are the top Lyapunov exponents
    (QR method); the vectors of the a-block (tangents_a) count when the outer layer is trained."""
    k = tangents.shape[1]
    m, d = tangents.shape[2], tangents.shape[3]
    train_outer = spec.train_outer
    hessian_products(X, y, Wt, a, spec, tangents[c], tangents_a[c], HV, HB, Vt, HVt, z, p, q, r, dz, g)
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
        log_growth[c, l] += math.log(norm)
        for j in range(m):
            for kk in range(d):
                HV[l, j, kk] /= norm
                tangents[c, l, j, kk] = HV[l, j, kk]
            HB[l, j] /= norm
            tangents_a[c, l, j] = HB[l, j]
