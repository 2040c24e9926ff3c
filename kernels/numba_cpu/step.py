"""One GD step of one configuration: the forward and backward pass over a block of samples, then the update.

What lives here: :func:`sample_block` (the pass over a block of samples, the one that evaluates the net
for a team split by samples and a thread alone), the same pass split by neurons (:func:`split_forward`,
:func:`split_backward`: a member's columns of the net over all the samples, for a team split so), the
step's closing arithmetic (risk and norms as the oracle rounds them, records, divergence test, update) and
the sum of a team's partial results. The pass computes, with Z = X W^T, f = s phi(Z) a and u_i = y_i f_i
(margin losses) or r_i = f_i - y_i (squared):

    G_ij = loss'_i y_i s a_j phi'(Z_ij) / n     (y_i dropped for the squared loss)
    grad_W = G^T X,    grad_a = s phi(Z)^T (loss' y) / n,    L = (1/n) sum_i loss_i

(the numpy oracle, :func:`lgd.models.evaluate`, computes the same). The formulas of phi and the losses
live in formulas, the products in tiles, the team that runs steps in team.

Rows, products and gradients are in the run's dtype (a float32 run computes in float32); per-sample
losses, the risk, the margins and the O(d m) bookkeeping run in float64 and round to float32
wherever the oracle rounds (:func:`narrow`), so that a float32 run also diverges where the oracle's
does.
"""

import math

import numpy as np
from numba import types

from lgd.backends import record_slot as _record_slot
from lgd.losses import LOGISTIC
from lgd.models import LOG_RISK_EXACT_BELOW, LOG_RISK_EXACT_BELOW_F32
from lgd.stepsize import stepsize_at as _stepsize_at

from .compiler import subroutine
from .formulas import (activate_span, log_loss_row, loss_curvature, loss_row, product_alpha, product_output,
                       product_phi, product_phi_span, product_row, product_span)
from .intrinsics import (PRODUCT_LANES, dot_lanes, flat, fma, like, narrowed_square_lanes, product_lanes, row_block,
                         rows_flat)
from .norms import exact_norm, rooted
from .sharpness import top_eigenvalues
from .tangent import member_block
from .tiles import (BACKWARD_GROUP, BLOCKED_MIN_D, TILE_ROWS, WAITING_MAX_M, WAITING_SAMPLES, WIDE_MIN_D, WIDE_ROWS,
                    backward_rows, blas_writes_grad, forward_rows, forward_rows_blocked, waiting_samples)

# The record rule of lgd.backends (which evaluations are recorded, into which trace slot) and the stepsize
# rules of lgd.stepsize (eta_t), compiled: one formula each, here and in the numpy oracle.
record_slot = subroutine(types.int64)(_record_slot)
stepsize_at = subroutine(types.float64)(_stepsize_at)
# The largest numbers of the two dtypes, where narrow_stepsize holds eta_t.
FLOAT32_LARGEST = float(np.finfo(np.float32).max)
FLOAT64_LARGEST = float(np.finfo(np.float64).max)


@subroutine(types.float64)
def narrow(x, f32):
    """x rounded to float32 (inf beyond its range) when the run is float32, else x."""
    if f32:
        return np.float64(np.float32(x))
    return x


@subroutine(types.float64)
def narrow_stepsize(eta, f32):
    """eta_t as the run applies it (lgd.backends.cast_stepsizes): held at the largest number of its dtype,
    then narrowed (NaN stays NaN)."""
    largest = FLOAT32_LARGEST if f32 else FLOAT64_LARGEST
    return narrow(largest if eta > largest else eta, f32)


@subroutine(lambda a, p, m: p.dtype)
def dot_row(a, p, m):
    """sum_j a[j] p[j] for j < m in the dtype of p, in eight partial sums (dot_lanes: independent fma
    chains, half the latency of one), the last m % 8 terms added to the first."""
    j = m - m % 8
    s0, s1, s2, s3, s4, s5, s6, s7 = dot_lanes(a, p, j)
    while j < m:
        s0 = fma(a[j], p[j], s0)
        j += 1
    return ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))


def _sum_squares64(flat):
    """sum_squares of a float64 array: dot_row's vector code (the scalar loop below does not vectorise,
    and a team's serial section does two such sums a step)."""
    return dot_row(flat, flat, flat.size)


def _sum_squares_widening(flat):
    """sum_squares of a narrower array, each entry widened to float64 first."""
    s0 = s1 = s2 = s3 = 0.0
    m = flat.size
    j = 0
    while j + 4 <= m:
        v0, v1, v2, v3 = np.float64(flat[j]), np.float64(flat[j + 1]), np.float64(flat[j + 2]), np.float64(flat[j + 3])
        s0 = fma(v0, v0, s0)
        s1 = fma(v1, v1, s1)
        s2 = fma(v2, v2, s2)
        s3 = fma(v3, v3, s3)
        j += 4
    while j < m:
        v = np.float64(flat[j])
        s0 = fma(v, v, s0)
        j += 1
    return (s0 + s1) + (s2 + s3)


@subroutine(types.float64, pick=lambda flat: _sum_squares64 if flat.dtype == types.float64 else _sum_squares_widening)
def sum_squares(flat):
    """sum x^2 of a 1-d array in float64, whatever its dtype (callers pass 2-d arrays as flat views)."""


@subroutine(types.float64)
def sum_squares_narrowing(flat):
    """A float32 run's sum x^2 of a float64 array, each entry first rounded to float32 in place, in the same
    pass; the squares and the sum in float64, as every norm (a gradient of float32 entries may have a norm
    beyond float32's square root of its range). In eight partial sums, r = k mod 8 (a single chain of
    additions took 0.6 ms of a large net's step, L's 786,432 entries, against 0.36 ms in eight), as one vector
    (narrowed_square_lanes), the last size % 8 terms added to the first."""
    size = flat.size
    k = size - size % 8
    s0, s1, s2, s3, s4, s5, s6, s7 = narrowed_square_lanes(flat, k)
    while k < size:
        flat[k] = narrow(flat[k], True)
        s0 += flat[k] * flat[k]
        k += 1
    return ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))


@subroutine(types.UniTuple(types.float64, 4))
def sample_out(code_loss, loss_param, margin_loss, yi, f, f32):
    """(loss value, coefficient loss' * y (or loss' for the squared loss), y f, the loss's argument u) of
    one sample."""
    u = yi * f if margin_loss else f - yi
    value, slope = loss_row(code_loss, loss_param, u)
    value = narrow(value, f32)
    slope = narrow(slope, f32)
    return value, (slope * yi if margin_loss else slope), yi * f, u


@subroutine(types.void)
def sample_outs(code_loss, loss_param, margin_loss, y, i, count, out, f32):
    """sample_out of samples i .. i + count - 1, their outputs f in out[0, :count]: out[0 .. 3, g] receives
    (loss value, coefficient, y f, u) of sample i + g. For the logistic loss the code is a constant in the
    loop, so that sample_out, inlined, keeps only that branch and LLVM vectorises the loop (a scalar exp and
    log1p per sample is a chain of some hundred cycles of latency that nothing else overlaps)."""
    if code_loss == LOGISTIC:
        for g in range(count):
            value, coef, yf, u = sample_out(LOGISTIC, loss_param, margin_loss, np.float64(y[i + g]), out[0, g], f32)
            out[0, g], out[1, g], out[2, g], out[3, g] = value, coef, yf, u
    else:
        for g in range(count):
            value, coef, yf, u = sample_out(code_loss, loss_param, margin_loss, np.float64(y[i + g]), out[0, g], f32)
            out[0, g], out[1, g], out[2, g], out[3, g] = value, coef, yf, u


@subroutine(types.void)
def waiting_factor(X, y, i, g, cs, xs, Q, q, P, p, m, rows, a, grad_a, neuron, train_outer, margins):
    """Sample i, the g-th of a group waiting for the backward tiles, given its gradient factor cs = c_i: c_i on
    its row of X, into xs[g] (rows[g] = g: the tiles read xs), or where xs is None (pruned at compile time) on
    its row q of phi', Q[q, :m] (rows[g] = i: they read X); its part of the outer layer's gradient, from its
    row p of phi (grad_a += c_i P[p, :m]); and with `margins` the neurons' margins (neuron = min(neuron, y_i
    a_j phi_ij)). What fused_block and split_backward do with each sample of a waiting group."""
    if xs is not None:
        for k in range(X.shape[1]):
            xs[g, k] = X[i, k] * cs
        rows[g] = g
    else:
        for j in range(m):
            Q[q, j] = Q[q, j] * cs
        rows[g] = i
    if train_outer:
        for j in range(m):
            grad_a[j] = fma(cs, P[p, j], grad_a[j])
    if margins:
        yi = np.float64(y[i])
        for j in range(m):
            neuron[j] = min(neuron[j], yi * a[j] * P[p, j])


@subroutine(types.void)
def fused_block(X, y, Wt, a, spec, inv_n, record, neurons, i0, i1, zt, ps, qs, rows, outs, xs, grad, grad_a,
                neuron, stats, train, us):
    """sample_block's pass in the fused mode without kept rows, for a net that is not linear, with the samples
    taken a waiting group at a time (tiles.waiting_samples: 64, WAITING_BLOCKED from d >= BLOCKED_MIN_D, where
    the group's rows of z come k-blocked at once, or BACKWARD_GROUP for wide nets): the rows of phi and phi'
    of the whole group first (phi' straight into qs, phi into ps (waiting, m)) with their outputs f, then
    the group's losses in one vectorised loop (sample_outs, into outs (4, waiting)), then, sample by sample
    in order, the sums, the sample's gradient factor c_i = loss' y s / n and grad_a, and the group's
    backward pass. grad, grad_a and neuron come zeroed (sample_block). grad comes out without the factor
    a_j of its column j, which reduce_blocks applies once to the blocks' sum (`unscaled`).

    The same losses, outputs, risk and margins as sample_block's loop, bit for bit. The gradient is the same
    sum, G^T X with G_ij = c_i a_j phi'_ij, in another order of its products (the oracle's tolerance, not its
    bits): a_j multiplies the blocks' sum once, at the close, and c_i multiplies whichever
    row of sample i is shorter, its row of X (where d <= m, given xs (waiting, d): d products, into xs,
    which the backward pass then reads in place of X) or its row of phi' (xs None: m products, in place).
    sample_block's loop forms each G_ij as (c_i a_j) phi'_ij, two products an entry, a row of m per sample.
    Whether xs is None is a compile-time choice, so each kernel holds only one of the two codes."""
    d, m = Wt.shape
    act, act_param, scale = spec.activation, spec.activation_param, spec.scale
    risk, correct, margin = 0.0, 0.0, np.inf
    waiting = waiting_samples(d, m)
    # From BLOCKED_MIN_D a waiting group's rows of z come at once, k-blocked (zt holds the whole group:
    # lgd.backends._numba's buffers give it those rows).
    blocked = d >= BLOCKED_MIN_D and zt.shape[0] >= waiting
    # Where the rows of zt, ps and qs are m entries long, with no gap between them (lgd.backends._numba's
    # _own_block, up to SPAN_ROW_BYTES a row), the rows of a tile that fall in this group are one span of
    # z, phi and phi', and the activation takes them in one call; else it takes them row by row.
    spans = zt.shape[1] == m and ps.shape[1] == m and qs.shape[1] == m
    tile_start = tile_end = i0  # samples [tile_start, tile_end) have their z rows in zt
    alpha = product_alpha(spec, a)  # > 0: the outputs in product form
    margins = record and neurons
    i = i0
    while i < i1:
        count = min(waiting, i1 - i)
        g = 0
        while g < count:
            s = i + g
            if s >= tile_end:  # the rows of the next tile's samples (fewer at the block's end)
                if blocked:  # the whole group's
                    tile = count
                    forward_rows_blocked(X, s, tile, Wt, zt)
                else:
                    tile = WIDE_ROWS if d >= WIDE_MIN_D and i1 - s >= WIDE_ROWS else min(TILE_ROWS, i1 - s)
                    forward_rows(X, s, tile, Wt, zt)
                tile_start, tile_end = s, s + tile
            span = min(tile_end, i + count) - s if spans else 1
            z_span, p_span, q_span = rows_flat(zt, s - tile_start, span), rows_flat(ps, g, span), rows_flat(qs, g, span)
            if alpha > 0.0:  # (a row's sum and products into outs[0:3]: the logs for the group below)
                product_span(act_param, z_span, p_span, q_span, None, span * m)
                for h in range(g, g + span):
                    e_row = rows_flat(zt, s - tile_start + h - g, 1)
                    outs[0, h], outs[1, h], outs[2, h] = product_lanes(a, rows_flat(ps, h, 1), e_row, m)
                if margins:
                    product_phi_span(act_param, z_span, p_span, span * m)
            else:
                activate_span(act, act_param, z_span, p_span, q_span, None, span * m)
                for h in range(g, g + span):
                    outs[0, h] = scale * np.float64(dot_row(a, rows_flat(ps, h, 1), m))
            g += span
        if alpha > 0.0:
            for g in range(count):
                outs[0, g] = scale * product_output(act_param, alpha, outs[0, g], outs[1, g], outs[2, g])
        sample_outs(spec.loss, spec.loss_param, spec.margin_loss, y, i, count, outs, spec.f32)
        for g in range(count):
            value, coef, yf, u = outs[0, g], outs[1, g], outs[2, g], outs[3, g]
            risk += value
            if train and (record or spec.log_risk_every_step):
                us[i + g] = u
            if yf > 0.0:
                correct += 1.0
            if train:
                margin = min(margin, yf)
                coef *= inv_n
                waiting_factor(X, y, i + g, g, like(qs, coef * scale), xs, qs, g, ps, g, m, rows, a, grad_a, neuron,
                               spec.train_outer, margins)
        if train:
            if xs is not None:
                backward_rows(xs, rows, count, qs, grad)
            else:
                backward_rows(X, rows, count, qs, grad)
        i += count
    stats[0] = risk
    stats[1] = correct
    stats[2] = margin


@subroutine(types.void)
def split_forward(X, Wt, a, spec, zt, P, Q, fpart, every_row, margins):
    """The first half of a step by a team split by neurons (lgd.backends._numba.split_team): this member's
    columns of the net, Wt (d, w) and a (w,), over every sample of X: the rows of z in register tiles (into zt,
    a tile's rows of w), phi and phi' into P and Q, and each sample's part of the output, sum_j a_j phi_ij over
    these neurons (dot_row's sum, or product_row's where these columns take the product form, without the scale
    s), into fpart (n,) float64. With `every_row` (the training samples), P and Q (n, w) keep every sample's rows;
    else (held-out samples) they hold a tile's. `margins`: P must hold phi (the product form leaves l there)."""
    d, w = Wt.shape
    n = X.shape[0]
    act, act_param = spec.activation, spec.activation_param
    alpha = product_alpha(spec, a)
    s = 0
    while s < n:
        tile = WIDE_ROWS if d >= WIDE_MIN_D and n - s >= WIDE_ROWS else min(TILE_ROWS, n - s)
        forward_rows(X, s, tile, Wt, zt)
        at = s if every_row else 0
        z_span, p_span, q_span = rows_flat(zt, 0, tile), rows_flat(P, at, tile), rows_flat(Q, at, tile)
        if alpha > 0.0:
            product_span(act_param, z_span, p_span, q_span, None, tile * w)
            for h in range(tile):
                fpart[s + h] = product_row(act_param, alpha, a, rows_flat(zt, h, 1), rows_flat(P, at + h, 1), w)
            if margins:
                product_phi_span(act_param, z_span, p_span, tile * w)
        else:
            activate_span(act, act_param, z_span, p_span, q_span, None, tile * w)
            for h in range(tile):
                fpart[s + h] = np.float64(dot_row(a, rows_flat(P, at + h, 1), w))
        s += tile


@subroutine(types.void)
def split_outputs(spec, fparts, i, count, outs):
    """outs[0, g] = f of sample i + g, s (fparts[0, i + g] + fparts[1, i + g] + ...): the members' parts added in
    member order, so that every member forms the same bits. A member's part at a time over all count samples:
    loops LLVM vectorises, where a loop over the members inside the loop over samples was scalar code that
    kept its pointers in memory (about 7% of S's step with leaky_relu)."""
    row = outs[0]
    for g in range(count):
        row[g] = fparts[0, i + g]
    for r in range(1, fparts.shape[0]):
        for g in range(count):
            row[g] += fparts[r, i + g]
    for g in range(count):
        row[g] = spec.scale * row[g]


@subroutine(types.void)
def split_held_out(y, spec, fparts, outs, stats):
    """The held-out samples' sums (their losses' and the number classified right, into stats[0] and stats[1])
    from the members' parts of their outputs fparts (members, at least n_test: rows a cache line apart), as
    split_backward forms the outputs."""
    n = y.shape[0]
    risk, correct = 0.0, 0.0
    i = 0
    while i < n:
        count = min(outs.shape[1], n - i)
        split_outputs(spec, fparts, i, count, outs)
        sample_outs(spec.loss, spec.loss_param, spec.margin_loss, y, i, count, outs, spec.f32)
        for g in range(count):
            risk += outs[0, g]
            if outs[2, g] > 0.0:
                correct += 1.0
        i += count
    stats[0] = risk
    stats[1] = correct


@subroutine(types.void)
def split_backward(X, y, a, spec, inv_n, record, neurons, fparts, P, Q, outs, xs_all, member, rows, part, part_a,
                   neuron, stats, us):
    """The second half, once every member's fparts (members, n) are in: each sample's output f_i = s (fparts[0, i]
    + fparts[1, i] + ...), its loss (sample_outs, a waiting group at a time into outs (4, waiting)), and this
    member's columns of the gradient as fused_block forms them: G_ij = c_i phi'_ij without a_j (part (d, w)
    and part_a (w,), zeroed here, in the run's dtype: step_end's caller applies a_j), c_i on the row of X
    where d <= w (xs_all[member] (waiting, d)) or on the row of Q (xs_all None: pruned at compile time), and
    at record steps the neurons' margins (neuron (w,)). stats receives the risk's sum, the samples classified
    right and the least y f, over all the samples: every member computes the same, in the same order; us (n,)
    the losses' arguments (member 0 alone writes them, which the others read after the step's second
    barrier)."""
    n, d = X.shape
    writes = member == 0
    if xs_all is not None:
        xs = xs_all[member]
    w = P.shape[1]
    scale = spec.scale
    for k in range(d):
        for j in range(w):
            part[k, j] = 0.0
    for j in range(w):
        part_a[j] = 0.0
        neuron[j] = np.inf
    waiting = waiting_samples(d, w)
    risk, correct, margin = 0.0, 0.0, np.inf
    i = 0
    while i < n:
        count = min(waiting, n - i)
        split_outputs(spec, fparts, i, count, outs)
        sample_outs(spec.loss, spec.loss_param, spec.margin_loss, y, i, count, outs, spec.f32)
        for g in range(count):
            value, coef, yf, u = outs[0, g], outs[1, g], outs[2, g], outs[3, g]
            risk += value
            if writes and (record or spec.log_risk_every_step):
                us[i + g] = u
            if yf > 0.0:
                correct += 1.0
            margin = min(margin, yf)
            cs = like(Q, (coef * inv_n) * scale)
            if xs_all is not None:
                waiting_factor(X, y, i + g, g, cs, xs, Q, i + g, P, i + g, w, rows, a, part_a, neuron,
                               spec.train_outer, record and neurons)
            else:
                waiting_factor(X, y, i + g, g, cs, None, Q, i + g, P, i + g, w, rows, a, part_a, neuron,
                               spec.train_outer, record and neurons)
        if xs_all is not None:
            backward_rows(xs, rows, count, row_block(Q, i, count), part)
        else:
            backward_rows(X, rows, count, row_block(Q, i, count), part)
        i += count
    stats[0] = risk
    stats[1] = correct
    stats[2] = margin


@subroutine(types.boolean)
def z_columns(gemm):
    """Whether the BLAS mode holds Z transposed (gemm[2] not 0: tiles.blas_forward); False in the fused mode,
    whose gemm is None (pruned at compile time)."""
    if gemm is not None:
        return gemm[2] != 0
    return False


# Samples the BLAS mode's pass over Z held transposed takes at once (column_block): their columns of phi and
# phi' (m x COLUMN_GROUP: 128 KB each for L's m = 256 in float64) stay in L2 between its two sweeps over them.
COLUMN_GROUP = 64


@subroutine(lambda x, y, add: x)
def lane_join(x, y, add):
    """Two of product_lanes' lanes joined: x + y, or (1 + x)(1 + y) - 1 for its products less 1."""
    return x + y if add else fma(x, y, x + y)


@subroutine(lambda F, first, g, add: F.dtype)
def lane_tree(F, first, g, add):
    """product_lanes' join of column g of F's rows first .. first + 15 (lane_join)."""
    k = first
    v0, v1 = lane_join(F[k, g], F[k + 8, g], add), lane_join(F[k + 1, g], F[k + 9, g], add)
    v2, v3 = lane_join(F[k + 2, g], F[k + 10, g], add), lane_join(F[k + 3, g], F[k + 11, g], add)
    v4, v5 = lane_join(F[k + 4, g], F[k + 12, g], add), lane_join(F[k + 5, g], F[k + 13, g], add)
    v6, v7 = lane_join(F[k + 6, g], F[k + 14, g], add), lane_join(F[k + 7, g], F[k + 15, g], add)
    return lane_join(lane_join(lane_join(v0, v4, add), lane_join(v1, v5, add), add),
                     lane_join(lane_join(v2, v6, add), lane_join(v3, v7, add), add), add)


@subroutine(types.void)
def column_block(ZT, y, a, spec, inv_n, record, neurons, i0, i1, columns, member, grad_a, neuron, stats, us):
    """sample_block's pass over the training block [i0, i1) in the BLAS mode where Z is held transposed, ZT
    (m, n) (tiles.blas_forward), for a net that is not linear and without kept rows: COLUMN_GROUP samples at a
    time, the group's phi and phi' a neuron's row at a time into P and Q (columns[0], columns[1]: per member,
    (m, COLUMN_GROUP)), its outputs f = s sum_j a_j phi_ij summed along the neurons for all its samples at once
    (in dot_row's eight chains, into F, columns[2], per member (8, COLUMN_GROUP)), its losses (sample_outs,
    into columns[3], per member (4, COLUMN_GROUP) float64), then, a neuron at a time, G_ij = phi'_ij (c_i a_j)
    over the group's columns of ZT (the gradient's product reads them there), grad_a and the neurons'
    margins. Nothing when columns is None (the fused mode: pruned at compile time).

    Given the same Z, the same numbers as sample_block's loop over rows of Z, bit for bit: every sum runs in
    its order (grad_a's in sample order)."""
    if columns is not None:
        P, Q, F, outs = columns[0][member], columns[1][member], columns[2][member], columns[3][member]
        m = ZT.shape[0]
        act, act_param, scale = spec.activation, spec.activation_param, spec.scale
        for j in range(m):
            grad_a[j] = 0.0
            neuron[j] = np.inf
        alpha = product_alpha(spec, a)
        risk, correct, margin = 0.0, 0.0, np.inf
        i = i0
        while i < i1:
            count = min(COLUMN_GROUP, i1 - i)
            # dot_row's sum for every sample of the group: eight chains (j mod 8), the last m % 8 terms
            # added to the first, the same tree of sums at the end; each neuron's row of phi is added
            # while it is still in L1. In product form, product_lanes' sums and products less 1 (F's rows
            # 0-15, 16-31 for a_j > 0 and 32-47 for a_j < 0), in its order.
            lanes = PRODUCT_LANES if alpha > 0.0 else 8
            for r in range(3 * lanes if alpha > 0.0 else lanes):
                for g in range(count):
                    F[r, g] = 0.0
            whole = m - m % lanes
            for j in range(m):
                r = j % lanes if j < whole else 0
                aj = a[j]
                if alpha > 0.0:
                    product_span(act_param, ZT[j, i:i + count], P[j], Q[j], None, count)
                    d = r + (lanes if aj > 0.0 else 2 * lanes)
                    for g in range(count):
                        F[r, g] = fma(aj, P[j, g], F[r, g])
                        e = ZT[j, i + g]
                        F[d, g] = fma(F[d, g], like(F, 1.0) + e, e)
                else:
                    activate_span(act, act_param, ZT[j, i:i + count], P[j], Q[j], None, count)
                    for g in range(count):
                        F[r, g] = fma(aj, P[j, g], F[r, g])
            if alpha > 0.0:
                for g in range(count):
                    total, positive = lane_tree(F, 0, g, True), lane_tree(F, lanes, g, False)
                    outs[0, g] = scale * product_output(act_param, alpha, total, positive,
                                                        lane_tree(F, 2 * lanes, g, False))
            else:
                for g in range(count):
                    f = ((F[0, g] + F[4, g]) + (F[1, g] + F[5, g])) + ((F[2, g] + F[6, g]) + (F[3, g] + F[7, g]))
                    outs[0, g] = scale * np.float64(f)
            sample_outs(spec.loss, spec.loss_param, spec.margin_loss, y, i, count, outs, spec.f32)
            for g in range(count):
                value, coef, yf, u = outs[0, g], outs[1, g], outs[2, g], outs[3, g]
                risk += value
                if record or spec.log_risk_every_step:
                    us[i + g] = u
                if yf > 0.0:
                    correct += 1.0
                margin = min(margin, yf)
                F[0, g] = like(F, (coef * inv_n) * scale)  # c_i, as sample_block's cs
            for j in range(m):
                aj = a[j]
                if alpha > 0.0 and record and neurons:  # phi from v and l, before G takes ZT's place
                    for g in range(count):
                        P[j, g] = product_phi(act_param, ZT[j, i + g], P[j, g])
                for g in range(count):
                    ZT[j, i + g] = Q[j, g] * (F[0, g] * aj)
                if spec.train_outer:
                    for g in range(count):
                        grad_a[j] = fma(F[0, g], P[j, g], grad_a[j])
                if record and neurons:
                    for g in range(count):
                        neuron[j] = min(neuron[j], np.float64(y[i + g]) * aj * P[j, g])
            i += count
        stats[0] = risk
        stats[1] = correct
        stats[2] = margin


@subroutine(types.float64)
def row_output(act, c, alpha, a, z, p, q, r, m, margins):
    """sum_j a_j phi_j of one row z (its entries left as the pass leaves them), phi' into q, phi into p (l where the
    outputs take the product form, alpha > 0, unless `margins`) and, unless r is None, phi'' into r."""
    if alpha > 0.0:
        product_span(c, z, p, q, r, m)
        total = product_row(c, alpha, a, z, p, m)
        if margins:
            product_phi_span(c, z, p, m)
        return total
    activate_span(act, c, z, p, q, r, m)
    return np.float64(dot_row(a, p, m))


@subroutine(types.void)
def sample_block(X, Z, y, Wt, a, spec, inv_n, record, neurons, i0, i1, zs, member, p, q, qs, rows, grad, grad_a,
                 neuron, stats, train, us, kept, ps, outs, xs):
    """One pass over samples [i0, i1) of one configuration (a team split by neurons makes split_forward's and
    split_backward's instead), for the activation, loss and model of `spec` (a Spec).

    The rows z of X W^T come from X and Wt (d, m), TILE_ROWS samples at a time in register tiles
    (WIDE_ROWS from d >= WIDE_MIN_D) into zt = zs[member] (WIDE_ROWS, m) (a block's last few rows
    without tiles), or are read from Z (BLAS mode). Exactly one of Z and zs is None: that prunes the
    other mode's code at compile time.
    stats receives (sum of loss values, number with y f > 0, min y f); at record steps of the training
    block, us[i] receives each sample's loss argument u (for the log-risk). With train, also the
    gradient: added to grad (d, m) (without the factors a_j in the plain fused step below: see
    partials_unscaled) and grad_a (m,), or, with Z, G written over the rows of Z (the caller then forms
    G^T X); at record steps also the per-neuron margins min y a_j phi(z_ij). qs
    (waiting, m) and rows (waiting,) hold the samples waiting for the gradient (tiles.waiting_samples
    rows; here added WAITING_SAMPLES at a time up to m = WAITING_MAX_M, BACKWARD_GROUP at a time for
    wider nets). The per-sample buffers (zt, p, q, qs, rows, grad_a, neuron) may have longer rows than m:
    a team pads them, so that no two threads write the same cache line. Nothing here allocates, so
    nothing can fail while the other threads of a team wait at a barrier.

    With `kept` (a run with Lyapunov exponents; None otherwise, pruned at compile time: lgd.backends._numba's
    _kept_rows), the training block also keeps what the tangent map (tangent.hessian_part) needs of each
    sample at these weights, as tangent.block_curvature would form it: coef = (loss''(u) s / n, loss'(u)
    c s / n), a_j phi' and a_j phi'' (phi'' from the same pass as phi and phi'), phi and phi' when a is
    trained; so the tangent map forms neither X W^T nor the activations again. Unless its rows are
    empty (a run with more samples than their budget).

    The plain fused step (zs given, kept None, a net that is not linear) runs fused_block instead, a
    waiting group of samples at a time, its losses in one vectorised loop (the same losses, risk and
    margins bit for bit, the gradient's products in another order); ps (waiting, m), outs (4, waiting) and,
    where d <= m, xs[member] (waiting, d) are its scratch (xs None: where d > m, and in BLAS mode).

    Rows, products and gradients are in the dtype of X (z, p, q, a, grad and grad_a share it): a
    float32 run computes in float32. Per-sample losses, the risk and the margins are float64 sums
    of values rounded as the oracle rounds them.
    """
    d, m = X.shape[1], a.shape[0]  # not Wt's shape: in BLAS mode Wt may hold the weights as rows, W (m, d)
    act, act_param, scale, linear = spec.activation, spec.activation_param, spec.scale, spec.linear
    if train:
        if Z is None:
            for k in range(d):
                for j in range(m):
                    grad[k, j] = 0.0
        for j in range(m):
            grad_a[j] = 0.0
            neuron[j] = np.inf
    # The plain fused step of a net (no kept rows, not linear): a waiting group at a time (fused_block).
    # Nested ifs on arguments that are None: numba prunes them at compile time. partials_unscaled tells
    # reduce_blocks the same choice (its partial comes without a_j): change both together.
    if zs is not None:
        if kept is None:
            if not linear:
                if xs is None:
                    fused_block(X, y, Wt, a, spec, inv_n, record, neurons, i0, i1, zs[member], ps, qs, rows, outs,
                                None, grad, grad_a, neuron, stats, train, us)
                else:
                    fused_block(X, y, Wt, a, spec, inv_n, record, neurons, i0, i1, zs[member], ps, qs, rows, outs,
                                xs[member], grad, grad_a, neuron, stats, train, us)
                return
    risk, correct, margin = 0.0, 0.0, np.inf
    n_train = X.shape[0]
    alpha = product_alpha(spec, a)
    margins = record and neurons
    pending = 0
    waiting = WAITING_SAMPLES if m <= WAITING_MAX_M else BACKWARD_GROUP
    tile_start = tile_end = i0  # samples [tile_start, tile_end) have their z rows in zt
    if zs is not None:
        zt = zs[member]  # the member's rows (a view taken once: each costs two atomic reference counts)
    if kept is not None:  # unpacked once: each array taken from the tuple costs atomic reference counts
        kept_p, kept_q, kept_aq, kept_ar, kept_coef = kept[0], kept[1], kept[2], kept[3], kept[4]
        keeping = train and kept_aq.shape[0] > 0  # rows for every sample (else the tangent map forms them)
        r = kept[5][member]  # the member's row of phi''
    for i in range(i0, i1):
        yi = np.float64(y[i])
        if linear:
            f0 = f1 = f2 = f3 = like(X, 0.0)
            k = 0
            while k + 4 <= d:
                f0 = fma(X[i, k], Wt[k, 0], f0)
                f1 = fma(X[i, k + 1], Wt[k + 1, 0], f1)
                f2 = fma(X[i, k + 2], Wt[k + 2, 0], f2)
                f3 = fma(X[i, k + 3], Wt[k + 3, 0], f3)
                k += 4
            while k < d:
                f0 = fma(X[i, k], Wt[k, 0], f0)
                k += 1
            f = np.float64((f0 + f1) + (f2 + f3))
        else:
            # Two ifs, not if / else: numba prunes a branch on an argument that is None, not on one
            # that is an array, so an else would compile the other mode's code into each kernel.
            total = 0.0
            if Z is not None:
                if kept is None:
                    total = row_output(act, act_param, alpha, a, rows_flat(Z, i, 1), p, q, None, m, margins)
                if kept is not None:
                    total = row_output(act, act_param, alpha, a, rows_flat(Z, i, 1), p, q, r, m, margins)
            if zs is not None:  # with kept rows only: the plain fused step went to fused_block above
                if i >= tile_end:  # the rows of the next tile's samples (fewer at the block's end)
                    count = WIDE_ROWS if d >= WIDE_MIN_D and i1 - i >= WIDE_ROWS else min(TILE_ROWS, i1 - i)
                    forward_rows(X, i, count, Wt, zt)
                    tile_start, tile_end = i, i + count
                if kept is not None:
                    total = row_output(act, act_param, alpha, a, rows_flat(zt, i - tile_start, 1), p, q, r, m, margins)
            f = scale * total
        value, coef, yf, u = sample_out(spec.loss, spec.loss_param, spec.margin_loss, yi, f, spec.f32)
        if kept is not None:
            if keeping:
                if linear:  # the linear model's identity: phi = z = f, phi' = 1, phi'' = 0
                    p[0], q[0], r[0] = like(p, f), like(p, 1.0), like(p, 0.0)
                # In this loop, not a subroutine's: a call taking these arrays would count references to
                # them (atomics on cache lines the team's threads share) at every sample.
                kept_coef[i, 0] = loss_curvature(spec.loss, spec.loss_param, u) * scale / n_train
                kept_coef[i, 1] = coef * scale / n_train
                for j in range(m):
                    kept_aq[i, j] = np.float64(a[j]) * np.float64(q[j])
                    kept_ar[i, j] = np.float64(a[j]) * np.float64(r[j])
                if spec.train_outer:
                    for j in range(m):
                        kept_p[i, j] = p[j]
                        kept_q[i, j] = q[j]
        risk += value
        if train and (record or spec.log_risk_every_step):
            us[i] = u
        if yf > 0.0:
            correct += 1.0
        if train:
            margin = min(margin, yf)
            coef *= inv_n
            if linear:
                coef_x = like(X, coef)
                for k in range(d):
                    grad[k, 0] = fma(coef_x, X[i, k], grad[k, 0])
                if record and neurons:
                    neuron[0] = min(neuron[0], yf)
            else:
                cs = like(q, coef * scale)
                if Z is not None:
                    for j in range(m):
                        Z[i, j] = q[j] * (cs * a[j])
                if zs is not None:
                    # Samples wait in groups of `waiting` so that each pass over grad adds that
                    # many (in sample order: the same rounding as one at a time).
                    for j in range(m):
                        qs[pending, j] = q[j] * (cs * a[j])
                    rows[pending] = i
                    pending += 1
                    if pending == waiting:
                        backward_rows(X, rows, pending, qs, grad)
                        pending = 0
                if spec.train_outer:
                    for j in range(m):
                        grad_a[j] = fma(cs, p[j], grad_a[j])
                if margins:
                    for j in range(m):
                        neuron[j] = min(neuron[j], yi * a[j] * p[j])
    if zs is not None and pending > 0:  # the last samples still waiting, fewer than `waiting`
        backward_rows(X, rows, pending, qs, grad)
    stats[0] = risk
    stats[1] = correct
    stats[2] = margin


@subroutine(types.float64)
def mean_risk(risk_sum, n, f32):
    """The risk from the sum of the samples' losses, as the oracle rounds it."""
    return narrow(narrow(risk_sum, f32) / n, f32)


@subroutine(types.UniTuple(types.float64, 3))
def close_step(grad, grad_a, risk_sum, n, train_outer, f32):
    """(risk, gradient norm, squared gradient norm) of a step as the oracle rounds them; in a float32 run grad
    and grad_a are narrowed in place. The norm is exact_norm of the squared norm, which split_norms also keeps."""
    risk = mean_risk(risk_sum, n, f32)
    grad_sq = sum_squares_narrowing(flat(grad)) if f32 else sum_squares(flat(grad))
    if f32:
        for j in range(grad_a.size):
            grad_a[j] = narrow(grad_a[j], True)
    if train_outer:
        grad_sq += sum_squares(grad_a)
    return risk, exact_norm(grad_sq, flat(grad), grad_a, train_outer), grad_sq


@subroutine(types.float64)
def log_risk_of(risk, code_loss, loss_param, us, f32):
    """log L by the oracle's rule (lgd.models.log_risk_of): log(risk) while the risk is well within range,
    else from the per-sample log-losses of the arguments us (max + log sum e^(l - max) - log n)."""
    if risk >= (LOG_RISK_EXACT_BELOW_F32 if f32 else LOG_RISK_EXACT_BELOW):
        return math.log(risk)
    n = us.size
    top = -np.inf
    for i in range(n):
        top = max(top, log_loss_row(code_loss, loss_param, us[i]))
    if not math.isfinite(top):
        return top
    total = 0.0
    for i in range(n):
        total += math.exp(log_loss_row(code_loss, loss_param, us[i]) - top)
    return top + math.log(total) - math.log(n)


@subroutine(types.void)
def record_step(trace, c, slot, n, risk, log_risk, grad_norm, weight_norm, stats, neuron, n_test, test_stats, f32):
    """Write slot `slot` of configuration c of every scalar field of `trace` (an lgd.backends.Trace)."""
    trace.risk[c, slot] = risk
    trace.log_risk[c, slot] = log_risk
    trace.accuracy[c, slot] = stats[1] / n
    trace.grad_norm[c, slot] = grad_norm
    trace.weight_norm[c, slot] = weight_norm
    trace.margin[c, slot] = stats[2]
    if trace.neuron_margins.shape[1] > 0:
        for j in range(neuron.size):
            trace.neuron_margins[c, slot, j] = neuron[j]
    if n_test > 0:
        trace.test_risk[c, slot] = mean_risk(test_stats[0], n_test, f32)
        trace.test_accuracy[c, slot] = test_stats[1] / n_test


@subroutine(types.void)
def store_weights(W, A, c, Wt, a, rows):
    """W[c] = Wt^T, or Wt itself where it holds the weights as rows (`rows`: tiles.weights_as_rows), and
    A[c] = a (loops: a slice assignment compiles numba's shape-mismatch error path, which slows every cold
    compile)."""
    if rows:
        copy_into(Wt, W[c])
    else:
        transpose_into(Wt, W[c])
    for j in range(a.size):
        A[c, j] = a[j]


@subroutine(types.void)
def copy_into(source, target):
    """target[j, k] = source[j, k] for 2-d arrays of one shape."""
    p, q = source.shape
    for j in range(p):
        for k in range(q):
            target[j, k] = source[j, k]


# Square blocks of a transposition: a block of the source and one of the target (2 KB each in float64)
# stay in L1 while it is copied. Copied row by row, each entry of a large W (m x d = 256 x 3072) went to
# another cache line of Wt: 3.5 ms to load it and 2 ms to store it, at every chunk of a large run, against
# 0.3 ms each in blocks (docs/performance.md).
TRANSPOSE_BLOCK = 16


@subroutine(types.void)
def transpose_into(source, target):
    """target[k, j] = source[j, k] for 2-d arrays of shapes (p, q) and (q, p), in square blocks."""
    p, q = source.shape
    for j0 in range(0, p, TRANSPOSE_BLOCK):
        j1 = min(j0 + TRANSPOSE_BLOCK, p)
        for k0 in range(0, q, TRANSPOSE_BLOCK):
            k1 = min(k0 + TRANSPOSE_BLOCK, q)
            for j in range(j0, j1):
                for k in range(k0, k1):
                    target[k, j] = source[j, k]


@subroutine(types.void)
def update(Wt, a, grad, grad_a, eta, train_outer, f32):
    """W <- W - eta grad (and a), with the oracle's rounding of eta * grad in float32. Wt and grad in one
    layout, either (d, m) or the weights as rows (m, d): entry by entry."""
    rows, columns = Wt.shape
    for k in range(rows):
        for j in range(columns):
            Wt[k, j] = Wt[k, j] - narrow(eta * grad[k, j], f32)
    if train_outer:
        for j in range(a.shape[0]):
            a[j] = a[j] - narrow(eta * grad_a[j], f32)


@subroutine(types.void)
def record_weights(trace, c, slot, Wt, a, directions):
    """W (and a) of configuration c at trajectory slot `slot`, or (with projections) sum_jk V_pjk W_jk for
    every direction V_p, in float64."""
    d, m = Wt.shape
    if trace.projections.shape[2] > 0:
        for p in range(directions.shape[0]):
            s = 0.0
            for j in range(m):
                for k in range(d):
                    s += np.float64(directions[p, j, k]) * np.float64(Wt[k, j])
            trace.projections[c, slot, p] = s
        return
    transpose_into(Wt, trace.weights[c, slot])
    if trace.outer.shape[1] > 0:
        for j in range(m):
            trace.outer[c, slot, j] = a[j]


@subroutine(types.void)
def blank_weights(trace, c, slot):
    """NaN in trajectory slot `slot` (if >= 0) of configuration c: a step whose numbers are not finite."""
    if slot < 0:
        return
    for j in range(trace.weights.shape[2]):
        for k in range(trace.weights.shape[3]):
            trace.weights[c, slot, j, k] = np.nan
    for j in range(trace.outer.shape[2] if trace.outer.shape[1] > 0 else 0):
        trace.outer[c, slot, j] = np.nan


@subroutine(types.boolean)
def step_end(c, t, schedule, spec, n, stats, grad, grad_a, Wt, a, a_step, trace, neuron, n_test, test_stats,
             batch, us, directions, tangent_scratch, X_curvature, y_curvature, curvature_scratch, rows, writes, norms):
    """After the pass over the samples at step t: divergence test, records, the sharpness, the stepsize, update
    (with tangent vectors, the Lyapunov exponents', the stepsize goes to tangent_scratch's eta instead and
    the team updates after the tangent map). False if the run stops here: a risk or gradient that is not
    finite (nothing recorded), or a risk or weight norm above the spec's bounds (recorded, then
    stopped). With `writes` False it records nothing (neither the trace nor batch.diverged) and computes
    only what the verdict and the update need: a member updating a copy of the weights of its own, which a
    team does only without the sharpness's scratch (lgd.backends._numba.replicated_close; the measurement
    writes the trace and the stepsize's sharpness, which the team's other members would then need).

    norms is None, or for a team split by neurons (whose members each hold some columns of the net: grad,
    grad_a, Wt, a and a_step are theirs) the risk and the whole net's gradient and weight norms
    (the latter wherever a record or the weight bound needs it), as the team summed them: split_total."""
    train_outer, f32 = spec.train_outer, spec.f32
    diverged = batch.diverged
    if norms is None:
        risk, grad_norm, _ = close_step(grad, grad_a, stats[0], n, train_outer, f32)
    else:
        risk, grad_norm = norms[0], norms[1]
    trajectory = writes and (trace.weights.shape[1] > 0 or trace.projections.shape[1] > 0)
    if not (math.isfinite(risk) and math.isfinite(grad_norm)):
        if writes:
            diverged[c] = t
        if trajectory:
            blank_weights(trace, c, record_slot(t, schedule.steps, schedule.weights_every))
        return False
    slot = record_slot(t, schedule.steps, schedule.record_every) if writes else -1
    # Every step: weights that overflowed (an update past the dtype's range) make it inf, and the run diverged.
    if norms is not None:
        weight_norm = norms[2]
    else:
        weight_norm = weight_norm_of(Wt, a_step, train_outer)
    log_risk = 0.0
    if slot >= 0 or spec.log_risk_every_step:
        log_risk = log_risk_of(risk, spec.loss, spec.loss_param, us, f32)
    # Two ifs on arguments that are None without the sharpness or the Lyapunov exponents: numba prunes them,
    # so a kernel without either compiles none of their code.
    if curvature_scratch is not None:
        sharpness_slot = record_slot(t, schedule.steps, schedule.sharpness_every)
        if sharpness_slot >= 0:
            Q, QA, HV, HB, Vt, HVt, alpha, beta, ritz, work, cache = curvature_scratch
            top_eigenvalues(X_curvature, y_curvature, Wt, a_step, spec, batch.sharpness_start[c],
                            batch.sharpness_start_a[c], trace.sharpness[c, sharpness_slot], Q, QA, HV, HB, Vt, HVt,
                            member_block(rows, 0), alpha, beta, ritz, work, cache)
            batch.sharpness_last[c] = trace.sharpness[c, sharpness_slot, 0]
    params = batch.rule_params
    eta = narrow_stepsize(stepsize_at(batch.rules[c], params[c, 0], params[c, 1], params[c, 2], t, schedule.steps,
                                      risk, log_risk, grad_norm, batch.sharpness_last[c]), f32)
    if slot >= 0:
        record_step(trace, c, slot, n, risk, log_risk, grad_norm, weight_norm, stats, neuron, n_test, test_stats, f32)
        trace.eta[c, slot] = eta
        for l in range(trace.lyapunov_sum.shape[2]):
            trace.lyapunov_sum[c, slot, l] = batch.log_growth[c, l]
    if trajectory:
        weight_slot = record_slot(t, schedule.steps, schedule.weights_every)
        if weight_slot >= 0:
            record_weights(trace, c, weight_slot, Wt, a_step, directions)
    if risk > spec.risk_bound or not (math.isfinite(weight_norm) and weight_norm <= spec.weight_bound):
        if writes:
            diverged[c] = t
        return False
    if t < schedule.steps:
        if tangent_scratch is not None:
            tangent_scratch[5][0] = eta
        else:
            update(Wt, a, grad, grad_a, eta, train_outer, f32)
    return True


@subroutine(types.float64)
def weight_squares(Wt, a, train_outer):
    """The squared norm of the weights: of W, and of a where the outer layer is trained."""
    weight_sq = sum_squares(flat(Wt))
    if train_outer:
        weight_sq += sum_squares(a)
    return weight_sq


@subroutine(types.float64)
def weight_norm_of(Wt, a, train_outer):
    """The norm of the weights (exact_norm of their squared norm)."""
    return exact_norm(weight_squares(Wt, a, train_outer), flat(Wt), a, train_outer)


@subroutine(types.void)
def split_norms(spec, n, stats, grad, grad_a, Wt, a_step, sums, member):
    """This member's part of the norms of a team split by neurons, into sums[member] (its columns' squared
    gradient norm, as close_step rounds it, and their squared weight norm, which step_end checks every step),
    before the barrier after which every member adds the parts (split_total). Where a sum is not rooted, its
    columns' norm too (sums[member, 2] and [member, 3]), from which split_total's rare path takes the net's."""
    _, grad_norm, grad_sq = close_step(grad, grad_a, stats[0], n, spec.train_outer, spec.f32)
    weight_sq = weight_squares(Wt, a_step, spec.train_outer)
    sums[member, 0] = grad_sq
    sums[member, 1] = weight_sq
    if not rooted(grad_sq):
        sums[member, 2] = grad_norm
    if not rooted(weight_sq):
        sums[member, 3] = exact_norm(weight_sq, flat(Wt), a_step, spec.train_outer)


@subroutine(types.float64)
def member_norm(sums, r, q):
    """Member r's norm of quantity q (0: gradient, 1: weights) from split_norms' sums."""
    return math.sqrt(sums[r, q]) if rooted(sums[r, q]) else sums[r, q + 2]


@subroutine(types.float64)
def split_norm(squares, sums, q):
    """The whole net's norm of quantity q from the members' sum of squares `squares`: its root where that is
    rooted, else (the rare path) from the members' norms, scaled by the largest as exact_norm scales entries."""
    if rooted(squares):
        return math.sqrt(squares)
    top = 0.0
    for r in range(sums.shape[0]):
        top = max(top, member_norm(sums, r, q))
    if top == 0.0 or top == math.inf:
        return top
    total = 0.0
    for r in range(sums.shape[0]):
        v = member_norm(sums, r, q) / top
        total += v * v
    return top * math.sqrt(total)


@subroutine(types.UniTuple(types.float64, 3))
def split_total(spec, n, stats, sums):
    """(risk, gradient norm, weight norm) of the whole net from the members' sums, added in member order
    (every member computes the same bits), rounded as close_step rounds a sum."""
    f32 = spec.f32
    grad_sq, weight_sq = sums[0, 0], sums[0, 1]
    for r in range(1, sums.shape[0]):
        grad_sq += sums[r, 0]
        weight_sq += sums[r, 1]
    return mean_risk(stats[0], n, f32), split_norm(grad_sq, sums, 0), split_norm(weight_sq, sums, 1)


@subroutine(types.boolean)
def partials_unscaled(zs, kept, spec):
    """Whether sample_block's training pass leaves its partial gradient without the factors a_j: in the plain
    fused step (fused_block: the fused products, no kept rows, a net that is not linear). zs and kept are
    None or not at compile time."""
    return zs is not None and kept is None and not spec.linear


@subroutine(types.void)
def sum_blocks(parts, blocks, out, a, unscaled):
    """out = the sum of parts[0 .. blocks-1], in block order, times a_j in column j where `unscaled`, a row at
    a time: the row stays in L1 while each part is added, and the first two parts are added in one pass (out's
    array is written once, not read back from L2 and written again, as summing whole arrays part after part
    would). The factor a_j once on the sum, rather than on each part at the end of its pass, spares each
    pass a read and write of its whole partial (M's 128 KB: 0-2% of its step on the Intel AVX-512 host of
    docs/performance.md); a team's sum then rounds once more than a thread's own product (the oracle's
    tolerance), a single part's result is the same bits as before."""
    d, m = out.shape
    for k in range(d):
        if blocks == 1:
            if unscaled:
                for j in range(m):
                    out[k, j] = parts[0, k, j] * a[j]
            else:
                for j in range(m):
                    out[k, j] = parts[0, k, j]
            continue
        for j in range(m):
            out[k, j] = parts[0, k, j] + parts[1, k, j]
        for b in range(2, blocks):
            for j in range(m):
                out[k, j] += parts[b, k, j]
        if unscaled:
            for j in range(m):
                out[k, j] *= a[j]


# Squares of the transposing sum: 32 x 32 entries of each part (8 KB in float64) stay in L1 while their
# columns are read.
TRANSPOSE_BLOCK = 32


@subroutine(types.void)
def sum_blocks_transposed(parts, blocks, out):
    """out = the sum of parts[0 .. blocks-1] transposed (parts (blocks, m, d), out (d, m)), in block order as
    sum_blocks adds, a TRANSPOSE_BLOCK square at a time."""
    d, m = out.shape
    for k0 in range(0, d, TRANSPOSE_BLOCK):
        for j0 in range(0, m, TRANSPOSE_BLOCK):
            for k in range(k0, min(k0 + TRANSPOSE_BLOCK, d)):
                for j in range(j0, min(j0 + TRANSPOSE_BLOCK, m)):
                    out[k, j] = parts[0, j, k]
                for b in range(1, blocks):
                    for j in range(j0, min(j0 + TRANSPOSE_BLOCK, m)):
                        out[k, j] += parts[b, j, k]


@subroutine(types.void)
def reduce_blocks(blocks, test, grads, grads_a, neurons_part, stats, grad, grad_a, neuron, total, grads_blas, gemm,
                  a, unscaled):
    """Sum the blocks' partial gradients (grads, or grads_blas from BLAS: transposed, (blocks, m, d), where
    gemm[1] is not 0) and statistics into grad, grad_a, neuron and total; where `unscaled`
    (partials_unscaled), the sum of grads times a_j in column j (a: the outer weights the pass read). grad is
    (d, m), or (m, d) where the BLAS mode holds the weights as rows (gemm[3]: the parts' layout, summed as
    they are)."""
    m = grad_a.shape[0]
    if grads_blas is not None:  # None: pruned at compile time
        if gemm[1] != 0 and gemm[3] == 0:
            sum_blocks_transposed(grads_blas, blocks, grad)
        elif not blas_writes_grad(grads_blas, blocks, grad):
            sum_blocks(grads_blas, blocks, grad, a, False)
    else:
        sum_blocks(grads, blocks, grad, a, unscaled)
    for j in range(m):
        grad_a[j] = grads_a[0, j]
        neuron[j] = neurons_part[0, j]
    total[0, 0], total[0, 1], total[0, 2] = stats[0, 0], stats[0, 1], stats[0, 2]
    for b in range(1, blocks):
        total[0, 0] += stats[b, 0]
        total[0, 1] += stats[b, 1]
        total[0, 2] = min(total[0, 2], stats[b, 2])
        for j in range(m):
            grad_a[j] += grads_a[b, j]
            neuron[j] = min(neuron[j], neurons_part[b, j])
    if test:
        total[1, 0], total[1, 1] = 0.0, 0.0
        for b in range(blocks, 2 * blocks):
            total[1, 0] += stats[b, 0]
            total[1, 1] += stats[b, 1]

