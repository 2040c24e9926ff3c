"""The sharpness (top Hessian eigenvalues) of a configuration inside the kernels: Lanczos on exact HVPs.

What lives here: :func:`top_eigenvalues`, k largest eigenvalues of the Hessian of the risk at the current
weights by Lanczos with full re-orthogonalisation on the exact Hessian-vector products of tangent
(``cached_hessian_products``: every sample's curvature formed once per measurement), warm-started
from the previous measurement's top Ritz vector mixed with a fixed spread-out direction (which reaches every
eigenspace: the Ritz vector alone stays in the invariant subspaces a symmetric network's Hessian has, and
misses eigenvalues outside them), restarted from a new spread-out direction orthogonal to the basis where
the Krylov space closes and, for k >= 2, where it has converged (keeping, locked, only the block's Ritz vectors
that are eigenvectors: lock_block), until a restart adds no further copy of a top eigenvalue (one Krylov space
finds a repeated eigenvalue once; a block that closes counts as converged), and the small tridiagonal algebra
it needs (Sturm bisection for the Ritz values, inverse iteration for the top Ritz vector, a twisted
factorisation for the others, all on the tridiagonal scaled to norm about 1: a sharpness of 1e-300 comes out
as exact as one of 1, and 0 as 0).
lgd.hessian.sharpness (scipy's eigsh on the same products) is the oracle.
"""

import math

import numpy as np
from numba import types

from .compiler import subroutine
from .intrinsics import flat
from .norms import exact_norm
from .tangent import cached_hessian_products, curvature_cache

# Lanczos stops when the top-k Ritz values move by less than this (relative) from one iteration to the next.
RITZ_TOL = 1e-13
# Passes of full re-orthogonalisation of each new Lanczos vector against the basis (modified Gram-Schmidt).
# Two: one pass leaves H q_j's remainder with parts along the basis of the order of eps ||H q_j|| / ||remainder||,
# which where the eigenvalues lie close (a saturated tanh net's top two within 6%) made spurious Ritz values,
# 2-12% off and above the largest eigenvalue; a second pass leaves them at rounding ("twice is enough").
REORTHOGONALISE = 2
# A block of the basis started to look for a further copy of a top eigenvalue has found one when it raises the
# k-th Ritz value by more than this (relative): then the basis is restarted once more.
FOUND_TOL = 1e-10
# A restart tries this many new spread directions (phases) before it takes the basis to span every direction
# (a random direction of unit norm keeps less than 1e-8 of it outside a basis short of the whole space only
# with a tiny probability).
RESTART_ATTEMPTS = 4
# A restart after convergence keeps (locks) the Ritz vectors of the block that are as good as eigenvectors: those
# of the top k, and any other whose residual is at most this times the block's spectral radius; the rest of the
# block is dropped. Keeping all of it, with beta 0, dropped its residual (5.8e-3 on a ReLU net's 0.16): the next
# block then saw the Hessian compressed to the complement of a space that is not invariant, whose eigenvalues
# are not the Hessian's (a triple 0.161363 came back as 0.161363 twice and 0.161357). A locked vector with
# residual r moves the values by r^2 / gap, at most r; dropping the others (not invariant) costs nothing.
LOCK_TOL = 1e-10
# Where a pivot of ritz_vector's factorisations is 0 (T - theta singular there), this in its place: far from
# 0 at the scale 1 of the scaled tridiagonal, small enough that the vector's entries stay finite.
PIVOT_FLOOR = 2.0 ** -100
# top_ritz_vector's shift lies at least this above theta / r: T / r, of norm about 1, and theta, its top eigenvalue
# by bisection, are known to about 1e-16 (absolute), so a shift closer than that need not make T / r - shift
# negative definite. A distance of 1e-10 |theta| / r alone (at least 1e-100) was no distance where the top
# eigenvalue lies far below the others' magnitude: a softplus net's 7e-17 beside -4.9 (a 2 x 2 block of T) gave
# a pivot of 0, a start vector of NaN, and every later measurement 0 and NaN (a basis of NaN, restarts refused).
# Where |theta| / r >= 1e-2, 1e-10 |theta| / r is the larger: the shift (and k = 1's start) there is as before.
SHIFT_FLOOR = 1e-12


@subroutine(types.int64)
def sturm_count(alpha, beta, j, x):
    """The number of eigenvalues of the j x j tridiagonal (alpha, beta[1:]) below x."""
    count = 0
    d = 1.0
    for i in range(j):
        off = beta[i] * beta[i] if i > 0 else 0.0
        d = alpha[i] - x - (off / d if i > 0 else 0.0)
        if d == 0.0:
            d = -1e-300
        if d < 0.0:
            count += 1
    return count


@subroutine(types.float64)
def radius(alpha, beta, j):
    """The Gershgorin radius of the j x j tridiagonal (alpha, beta[1:]): every eigenvalue lies in [-radius,
    radius]."""
    largest = 0.0
    for i in range(j):
        row = abs(alpha[i]) + (abs(beta[i]) if i > 0 else 0.0) + (abs(beta[i + 1]) if i + 1 < j else 0.0)
        largest = max(largest, row)
    return largest


@subroutine(types.int64)
def float_key(x):
    """An integer that orders float64s as their values (-0 and 0 alike): the bits of |x|, negated for x < 0."""
    bits = np.float64(abs(x)).view(np.int64)
    return -bits if x < 0.0 else bits


@subroutine(types.float64)
def key_float(key):
    """The float64 of float_key `key`."""
    return -np.int64(-key).view(np.float64) if key < 0 else np.int64(key).view(np.float64)


@subroutine(types.float64)
def ritz_value(alpha, beta, j, rank, scaled_alpha, scaled_beta):
    """The rank-th largest eigenvalue (rank 0 = largest) of the j x j tridiagonal, by Sturm bisection of the
    tridiagonal divided by its Gershgorin radius (scaled_alpha, scaled_beta: scratch of j entries): its squares
    neither under- nor overflow at any scale. The bisection halves the float64s between the bounds in their
    order (float_key), not the interval: at most 64 halvings reach adjacent floats at any magnitude, where
    halving [-r - 1, r + 1] for 200 steps stopped at 2^-200 and gave a curvature of 0 as -6e-61. 0 for 0."""
    r = radius(alpha, beta, j)
    if r == 0.0 or not math.isfinite(r):
        return 0.0 if r == 0.0 else math.nan
    for i in range(j):
        scaled_alpha[i] = alpha[i] / r
        scaled_beta[i] = beta[i] / r
    # count(x): the eigenvalues at or below x (sturm_count's zero pivot counts as negative). The answer x*
    # has count(x) <= target below it and > target from it on; the bounds a little outside [-1, 1] (rounding).
    target = j - 1 - rank
    low, high = float_key(-1.0 - 2.0 ** -20), float_key(1.0 + 2.0 ** -20)
    while high - low > 1:
        mid = low + (high - low) // 2
        if sturm_count(scaled_alpha, scaled_beta, j, key_float(mid)) <= target:
            low = mid
        else:
            high = mid
    return key_float(high) * r


@subroutine(types.void)
def top_ritz_vector(alpha, beta, j, theta, y, work):
    """y (j,): the eigenvector of the tridiagonal for its top eigenvalue theta, by two steps of inverse
    iteration with the shift just above theta (T - shift is then negative definite: no pivoting needed), on
    the tridiagonal divided by its Gershgorin radius r (as ritz_value): the shift's distance 1e-10 |theta| / r,
    at least SHIFT_FLOOR, above the rounding of the scaled T (see there)."""
    r = radius(alpha, beta, j)
    if r == 0.0 or not math.isfinite(r):
        r = 1.0
    theta = theta / r
    shift = theta + max(1e-10 * abs(theta), SHIFT_FLOOR)
    for i in range(j):
        y[i] = 1.0
    for _ in range(2):
        # Thomas algorithm on (T / r - shift) x = y, the diagonal in work[:j], the right side in y.
        work[0] = alpha[0] / r - shift
        for i in range(1, j):
            factor = beta[i] / r / work[i - 1]
            work[i] = alpha[i] / r - shift - factor * (beta[i] / r)
            y[i] -= factor * y[i - 1]
        y[j - 1] /= work[j - 1]
        for i in range(j - 2, -1, -1):
            y[i] = (y[i] - beta[i + 1] / r * y[i + 1]) / work[i]
        unit(y, j)


@subroutine(types.float64)
def ritz_vector(alpha, beta, j, theta, z, work):
    """z (j,) = the unit eigenvector of the j x j tridiagonal (alpha, beta[1:]) for its eigenvalue theta (any
    one, ritz_value's); returns z's last entry (times the Lanczos residual: the Ritz vector's residual). By a
    twisted factorisation (Dhillon and Parlett's MRRR): T - theta = L D L^T from the top (in z) and U D U^T from
    the bottom (in work), joined at the row t where the two pivots leave the least (|gamma_t| smallest: the
    vector's largest entry, about); z_t = 1 and the rest from the factors, each entry a product of ratios (no
    pivoting, stable as the Sturm count). top_ritz_vector's inverse iteration is for the top only: below it
    T - shift is indefinite, where its unpivoted Thomas algorithm is not stable. On T divided by its Gershgorin
    radius r (as ritz_value)."""
    r = radius(alpha, beta, j)
    if r == 0.0 or not math.isfinite(r):
        r = 1.0
    shift = theta / r
    for i in range(j):
        z[i] = alpha[i] / r - shift - ((beta[i] / r) ** 2 / z[i - 1] if i > 0 else 0.0)
        if z[i] == 0.0:
            z[i] = PIVOT_FLOOR
    for i in range(j - 1, -1, -1):
        work[i] = alpha[i] / r - shift - ((beta[i + 1] / r) ** 2 / work[i + 1] if i + 1 < j else 0.0)
        if work[i] == 0.0:
            work[i] = PIVOT_FLOOR
    twist, least = 0, math.inf
    for i in range(j):
        gamma = abs(z[i] + work[i] - (alpha[i] / r - shift))
        if gamma < least:
            twist, least = i, gamma
    # z_i = -(beta_{i+1} / d+_i) z_{i+1} above the twist and -(beta_i / d-_i) z_{i-1} below it (rows i of
    # (T - theta) z = 0 through the factors), each over its pivot, which it then replaces.
    for i in range(twist - 1, -1, -1):
        z[i] = -(beta[i + 1] / r) * (z[i + 1] if i + 1 < twist else 1.0) / z[i]
    for i in range(twist + 1, j):
        work[i] = -(beta[i] / r) * (work[i - 1] if i - 1 > twist else 1.0) / work[i]
        z[i] = work[i]
    z[twist] = 1.0
    unit(z, j)
    return z[j - 1]


@subroutine(types.void)
def unit(y, j):
    """y[:j] divided by its norm."""
    norm = 0.0
    for i in range(j):
        norm += y[i] * y[i]
    norm = math.sqrt(norm)
    for i in range(j):
        y[i] /= norm


@subroutine(types.void)
def remove_basis(V, VA, Q, QA, count):
    """(V, VA) less its parts along the basis vectors (Q[i], QA[i]), i < count: one pass of modified
    Gram-Schmidt."""
    for i in range(count):
        dot = 0.0
        for jj in range(V.shape[0]):
            for kk in range(V.shape[1]):
                dot += V[jj, kk] * Q[i, jj, kk]
            dot += VA[jj] * QA[i, jj]
        for jj in range(V.shape[0]):
            for kk in range(V.shape[1]):
                V[jj, kk] -= dot * Q[i, jj, kk]
            VA[jj] -= dot * QA[i, jj]


@subroutine(types.float64)
def norm_of(V, VA):
    """The Euclidean norm of (V, VA), exact at any scale (norms.exact_norm: H q of a Hessian of 1e-300 has
    squares that underflow, which made the Krylov space look invariant)."""
    norm = 0.0
    for jj in range(V.shape[0]):
        for kk in range(V.shape[1]):
            norm += V[jj, kk] * V[jj, kk]
        norm += VA[jj] * VA[jj]
    return exact_norm(norm, flat(V), VA, True)


# splitmix64's constants (Steele, Lea and Flood 2014): spread_entry's hash of a direction's phase and an entry.
GOLDEN, MIX_1, MIX_2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
SHIFT_PHASE, SHIFT_1, SHIFT_2, SHIFT_3, SHIFT_53 = (np.uint64(32), np.uint64(30), np.uint64(27), np.uint64(31),
                                                    np.uint64(11))


@subroutine(types.float64)
def spread_entry(phase, index):
    """Entry `index` (of the parameters in their order, W's rows then a) of spread direction `phase`: a number
    in [0.5, 1.5), splitmix64's hash of (phase, index), as if drawn at random, independently across phases and
    entries. A smooth formula of (phase, neuron, feature) would not do: 1 + 0.5 sin(c p + 7 j + 3 k) gave every
    direction one of the neuron profiles 1, cos 7j and sin 7j, a space that a symmetric network's Hessian keeps
    (identical neurons: H = I (x) B + 1 1^T (x) C), so the restarts reached 2 of the m - 1 copies of each
    eigenvalue of B whatever their number."""
    z = (np.uint64(phase) << SHIFT_PHASE) + np.uint64(index) + GOLDEN
    z = (z ^ (z >> SHIFT_1)) * MIX_1
    z = (z ^ (z >> SHIFT_2)) * MIX_2
    z = z ^ (z >> SHIFT_3)
    return 0.5 + np.float64(z >> SHIFT_53) * 2.0 ** -53


@subroutine(types.float64)
def spread_direction(V, VA, train_outer, phase):
    """V (m, d) and VA (m,) = spread direction `phase` (spread_entry's; VA 0 unless the outer layer is trained);
    returns its norm. Its entries differ from neuron to neuron and feature to feature, at random, so that it meets
    every eigenspace of the Hessian, a symmetric network's included, and the directions of different phases
    span as many dimensions as there are of them (each restart can find one more copy of a repeated
    eigenvalue)."""
    m, d = V.shape[0], V.shape[1]
    norm = 0.0
    for jj in range(m):
        for kk in range(d):
            V[jj, kk] = spread_entry(phase, jj * d + kk)
            norm += V[jj, kk] * V[jj, kk]
        VA[jj] = spread_entry(phase, m * d + jj) if train_outer else 0.0
        norm += VA[jj] * VA[jj]
    return math.sqrt(norm)


@subroutine(types.int64)
def lock_block(alpha, beta, Q, QA, first, j, residual, floor, work):
    """Rows first..j of the basis (Q, QA; T's block alpha, beta[first + 1:j + 1], whose Lanczos residual has
    norm `residual`) replaced by the block's Ritz vectors whose values are at least `floor` (the k-th largest
    Ritz value: those of the top k, converged) or whose residuals are at most LOCK_TOL times the block's spectral
    radius, largest value first, as many as rows J + 1 - (j + 1) are free (they are built there, then moved
    down): each a block of its own in T (alpha its Ritz value, beta 0 on both sides). Returns the rows left."""
    size = j + 1 - first
    block_alpha, block_beta = alpha[first:], beta[first:]
    extent = max(abs(ritz_value(block_alpha, block_beta, size, 0, work[0], work[1])),
                 abs(ritz_value(block_alpha, block_beta, size, size - 1, work[0], work[1])))
    m, d = Q.shape[1], Q.shape[2]
    locked = 0
    for i in range(size):
        if j + 1 + locked >= Q.shape[0]:
            break
        theta = ritz_value(block_alpha, block_beta, size, i, work[0], work[1])
        last = ritz_vector(block_alpha, block_beta, size, theta, work[0], work[1])
        if not (theta >= floor or abs(last) * residual <= LOCK_TOL * extent):
            continue
        row = j + 1 + locked
        for jj in range(m):
            for kk in range(d):
                s = 0.0
                for l in range(size):
                    s += work[0, l] * Q[first + l, jj, kk]
                Q[row, jj, kk] = s
            s = 0.0
            for l in range(size):
                s += work[0, l] * QA[first + l, jj]
            QA[row, jj] = s
        # Orthogonal to the vectors locked before it to rounding (inverse iteration leaves eps / gap); one
        # that loses most of its norm there (two Ritz values equal to rounding) is the same vector: not locked.
        for sweep in range(2):
            remove_basis(Q[row], QA[row], Q[j + 1:], QA[j + 1:], locked)
        norm = norm_of(Q[row], QA[row])
        if not norm > 0.5:
            continue
        for jj in range(m):
            for kk in range(d):
                Q[row, jj, kk] /= norm
            QA[row, jj] /= norm
        alpha[row] = theta
        locked += 1
    for i in range(locked):
        Q[first + i] = Q[j + 1 + i]
        QA[first + i] = QA[j + 1 + i]
        alpha[first + i] = alpha[j + 1 + i]
        beta[first + i] = 0.0
    return first + locked


@subroutine(types.void)
def top_eigenvalues(X, y, Wt, a, spec, start, start_a, out, Q, QA, HV, HB, Vt, HVt, block, alpha, beta, ritz,
                    work, cache):
    """out[:k] = the k largest Hessian eigenvalues at (W, a) by Lanczos from the direction (start, start_a)
    (replaced by the new top Ritz vector, the next call's start). Q (J + 1, m, d), QA (J + 1, m): the
    Lanczos basis; alpha, beta (J + 1,), ritz (k,), work (2, J + 1) float64; HV, HB, Vt, HVt with one row,
    block: the scratch of the Hessian-vector products (tangent.hessian_products); cache = (P, Q, AQ, AR,
    coef) with at least X's rows: tangent.curvature_cache's, filled here once for every product of the
    measurement."""
    J = Q.shape[0] - 1
    m, d = Q.shape[1], Q.shape[2]
    k = out.size
    train_outer = spec.train_outer
    size = m * d + (m if train_outer else 0)
    J = min(J, size)
    norm = 0.0
    for jj in range(m):
        for kk in range(d):
            norm += start[jj, kk] * start[jj, kk]
        if train_outer:
            norm += start_a[jj] * start_a[jj]
    # Q[0] = the previous top Ritz vector (unit, when there is one) + the spread-out direction (unit). A start
    # that is not finite (a measurement at weights whose Hessian was not) is none: its NaN would fill the basis,
    # whose every restart is then refused, and every later measurement would read 0 and NaN.
    spread = spread_direction(Q[0], QA[0], train_outer, 0)
    warm = 1.0 / math.sqrt(norm) if norm > 0.0 and math.isfinite(norm) else 0.0
    norm = 0.0
    for jj in range(m):
        for kk in range(d):
            Q[0, jj, kk] = (warm * start[jj, kk] if warm > 0.0 else 0.0) + Q[0, jj, kk] / spread
            norm += Q[0, jj, kk] * Q[0, jj, kk]
        QA[0, jj] = ((warm * start_a[jj] if warm > 0.0 else 0.0) + QA[0, jj] / spread) if train_outer else 0.0
        norm += QA[0, jj] * QA[0, jj]
    norm = math.sqrt(norm)
    for jj in range(m):
        for kk in range(d):
            Q[0, jj, kk] /= norm
        QA[0, jj] /= norm
    beta[0] = 0.0
    steps = 0
    for i in range(k):
        ritz[i] = math.nan
    n = X.shape[0]
    P, Qc, AQ, AR, coef = cache[0][:n], cache[1][:n], cache[2][:n], cache[3][:n], cache[4][:n]
    curvature_cache(X, y, Wt, a, spec, block, P, Qc, AQ, AR, coef)
    # T splits into blocks at each restart (beta 0 there), the current one from `first`; `checking` once a
    # converged basis has been restarted to look for a further copy of a top eigenvalue, with `kth` the k-th
    # Ritz value then.
    first, first_top, checking, kth = 0, math.nan, False, math.nan
    phase = 0  # the spread direction last taken (spread_direction's phase)
    # j: the basis's last row; at most J products, the basis at most as long (shorter once a restart locks).
    j = 0
    for product in range(J):
        cached_hessian_products(X, spec, P, Qc, AQ, AR, coef, Q[j:j + 1], QA[j:j + 1], HV, HB, Vt, HVt, block)
        dot = 0.0
        for jj in range(m):
            for kk in range(d):
                dot += HV[0, jj, kk] * Q[j, jj, kk]
            dot += HB[0, jj] * QA[j, jj]
        alpha[j] = dot
        for sweep in range(REORTHOGONALISE):  # full re-orthogonalisation
            remove_basis(HV[0], HB[0], Q, QA, j + 1)
        norm = norm_of(HV[0], HB[0])
        # The Krylov space is invariant (it holds one vector of each eigenspace it meets: repeated eigenvalues,
        # or a symmetric network's).
        closed = not norm > 1e-12 * max(abs(alpha[0]), 1e-300)
        steps = j + 1
        converged = steps >= k
        for i in range(min(k, steps)):
            value = ritz_value(alpha, beta, steps, i, work[0], work[1])
            converged = converged and abs(value - ritz[i]) <= RITZ_TOL * abs(value)
            ritz[i] = value
        if first > 0:  # a block after a restart: its own top Ritz value settled too, or the block closed
            # A closed block holds every eigenvalue the rest of the space has along its start (a random
            # direction: all of them), so its top is the rest's. Asking for two settled steps of it instead
            # never counted a one-vector block as converged: a ReLU net's null space, once reached, gave one
            # such block per product up to J (60 products for a top eigenvalue found in 11).
            top = ritz_value(alpha[first:], beta[first:], steps - first, 0, work[0], work[1])
            settled = steps - first >= 2 and abs(top - first_top) <= RITZ_TOL * abs(top)
            converged = converged and (closed or settled)
            first_top = top
        if product + 1 == J:
            break
        # A single Krylov space holds one vector of each eigenspace, so it finds a repeated eigenvalue once:
        # with k >= 2, a converged basis goes on from a new direction orthogonal to it (the Hessian on the
        # rest of the space, whose top is the next copy where there is one), until a block adds nothing to
        # the top k.
        if converged and (k == 1 or (checking and not ritz[k - 1] > kth + FOUND_TOL * abs(kth))):
            break
        if converged and not closed:
            # The block is not an invariant space: only its Ritz vectors that are eigenvectors (to LOCK_TOL, and
            # the converged top k) stay, each a block of T of its own (lock_block); the next block, orthogonal
            # to them, sees the Hessian on the rest of the space. The k-th value is then that of what stays
            # (-inf where fewer than k values do: any further block raises it).
            j = lock_block(alpha, beta, Q, QA, first, j, norm, ritz[k - 1], work) - 1
            steps = j + 1
            for i in range(k):
                ritz[i] = ritz_value(alpha, beta, steps, i, work[0], work[1]) if i < steps else -math.inf
        if converged:
            checking, kth = True, ritz[k - 1]
        if converged or closed:
            # A restart, or the Krylov space is invariant: go on from a new spread-out direction orthogonal to
            # the basis, with beta 0 (T splits into blocks, whose eigenvalues together are the Ritz values).
            # Each restart takes the next phases (directions): one already in the basis adds nothing. Starting
            # every restart from phase 1 of 4 allowed 4 restarts in all, too few for 5 copies of an eigenvalue.
            norm = 0.0
            for attempt in range(RESTART_ATTEMPTS):
                phase += 1
                spread = spread_direction(HV[0], HB[0], train_outer, phase)
                for sweep in range(2):
                    remove_basis(HV[0], HB[0], Q, QA, j + 1)
                norm = norm_of(HV[0], HB[0])
                if norm > 1e-8 * spread:
                    break
            if not norm > 1e-8 * spread:  # the basis spans every direction these reach
                break
            beta[j + 1] = 0.0
            first, first_top = j + 1, math.nan
        else:
            beta[j + 1] = norm
        for jj in range(m):
            for kk in range(d):
                Q[j + 1, jj, kk] = HV[0, jj, kk] / norm
            QA[j + 1, jj] = HB[0, jj] / norm
        j += 1
    for i in range(k):
        out[i] = ritz[i] if i < steps else math.nan
    coefficients = work[0]
    top_ritz_vector(alpha, beta, steps, ritz[0], coefficients, work[1])
    for jj in range(m):
        for kk in range(d):
            s = 0.0
            for i in range(steps):
                s += coefficients[i] * Q[i, jj, kk]
            start[jj, kk] = s
        s = 0.0
        for i in range(steps):
            s += coefficients[i] * QA[i, jj]
        start_a[jj] = s
