"""The two products of a step, X W^T and X^T G: register tiles in vector code, or BLAS calls.

What lives here: the fused mode's register tiles (LLVM vector code: LLVM does not tile numba's scalar
loops itself) and the row loops around them (:func:`forward_rows`, :func:`backward_rows`), and the BLAS
mode's direct gemm calls on one thread's block of samples (:func:`blas_forward`, :func:`blas_backward`).
What is done with the products (activations, losses, the gradient's coefficients) lives in step.

Forward (X W^T): TILE_ROWS samples by two vectors of columns, eight accumulators held in registers
over the whole sum on k: per k, two vector loads and four broadcasts feed eight independent fmas. From
d >= WIDE_MIN_D, WIDE_ROWS samples: twelve accumulators, each load of W feeding six fmas (for short
sums on k the narrower tile is faster). Backward (the waiting samples' X^T G into the gradient):
GRAD_ROWS rows of the gradient (8 with 64-byte vectors, else 4) by two vectors, loaded once and held
while the samples add in, BACKWARD_GROUP unrolled at a time; up to m = WAITING_MAX_M, WAITING_SAMPLES
(the fused step: WAITING_FUSED) wait for one pass over the gradient (wider nets keep BACKWARD_GROUP: a
larger waiting block leaves L1).
A tile's two vectors are VECTOR_BYTES wide (intrinsics: 64 bytes on AVX-512 targets, else 32); with
64-byte vectors, the columns the full tiles leave get one tile of two 32-byte vectors ("half" tiles)
when they are that many, so a net narrower than a 64-byte tile, or a remainder of 8-15 float64
columns, still runs in tiles. Every sum runs in the scalar loops' order, fma after fma (in k, or in
sample order): the same results, bit for bit, at either width. docs/performance.md has the
measurements behind each size.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .compiler import subroutine
from .intrinsics import (HALF_BYTES, HALF_TILES, VECTOR_BYTES, fma, half_tile_columns_of, tile_columns_of, tile_parts,
                         tiled_arrays, vector_ops)

TILE_ROWS = 4
# Rows of the gradient in a backward tile, two vectors each, all held in registers: AVX2's 16 vector
# registers hold 4 rows' 8 accumulators; AVX-512's 32 hold 8 rows' 16, which load each waiting sample's
# q vectors once for twice the fmas (faster on M in float64, level to faster elsewhere: docs/performance.md).
GRAD_ROWS = 8 if VECTOR_BYTES == 64 else TILE_ROWS
# Samples of the wider forward tile, and the input dimension from which it is used: six by two vectors
# from d >= 32 with AVX2 (12 of its 16 registers accumulate); eight from any d with AVX-512 (16 of 32),
# where it was faster from S's d = 16 on (docs/performance.md).
WIDE_ROWS = 8 if VECTOR_BYTES == 64 else 6
WIDE_MIN_D = 1 if VECTOR_BYTES == 64 else 32
WAITING_SAMPLES = 32
# The fused step's groups (step.fused_block) wait in groups of WAITING_FUSED: S, M and SWEEP ran 1-2%
# faster than in groups of 32 (docs/performance.md); sample_block's own loop and the tangent map keep 32.
WAITING_FUSED = 64
WAITING_MAX_M = 256
BACKWARD_GROUP = 8
# From d >= BLOCKED_MIN_D (where W^T no longer fits in L2) the forward product of a waiting group runs
# k-blocked: BLOCK_K entries of k at a time for all of the group's tiles (forward_rows_blocked), so that
# W^T's panel stays in L2 while every tile adds its part, and a group is WAITING_BLOCKED samples (up to
# m = WAITING_MAX_M): fewer passes over the gradient, which no longer fits in L2 either. On L's sizes
# (docs/performance.md) the forward tiles ran 1.8x faster, the backward 1.2x, both past OpenBLAS's AVX2
# kernels.
BLOCKED_MIN_D = 512
BLOCK_K = 256
WAITING_BLOCKED = 128


@subroutine(types.int64)
def waiting_samples(d, m):
    """The samples that wait for one pass of the backward tiles over the gradient, for inputs of
    dimension d and width m (the rows of the fused step's group buffers: lgd.backends._numba sizes them
    by ``waiting_samples.implementation``)."""
    if m > WAITING_MAX_M:
        return BACKWARD_GROUP
    return WAITING_BLOCKED if d >= BLOCKED_MIN_D else WAITING_FUSED


def z_rows(d, m):
    """The rows of the fused step's buffer of z rows: a tile's, or from BLOCKED_MIN_D a whole waiting group's
    (step.fused_block takes a group's rows k-blocked at once where the buffer holds them)."""
    return max(WIDE_ROWS, waiting_samples.implementation(d, m)) if d >= BLOCKED_MIN_D else WIDE_ROWS


def _forward_tile(samples, vector_bytes=VECTOR_BYTES, part=False):
    """The forward register tile over `samples` rows of X, its vectors `vector_bytes` wide; with `part`, the
    part of its sums over k in [k0, k1), into rows zr, zr + 1, ... of Z, added to what they hold (or from
    0, for the first part)."""
    def forward_tile(typingctx, X, i, Wt, j, Z, zr=None, k0=None, k1=None, add=None):
        """Z[r, j:j+c] = sum_k X[i+r, k] Wt[k, j:j+c] for r < samples, c = tile_columns at this width (fma
        in k order); the rows of Z are the tile's (r), not X's.
        With part (arguments zr, k0, k1, add): into Z[zr + r, j:j+c], the sum over k0 <= k < k1 only, fma
        after fma from what that row holds when add (else from 0): the parts over consecutive ranges of k,
        in order, give the whole sum's bits.
        The caller keeps i + samples <= len(X), (zr +) samples <= len(Z) and j + c <= Wt.shape[1]."""
        if not tiled_arrays((X, Wt, Z)) or (zr is None) == part:
            return None

        def codegen(context, builder, signature, args):
            x_type, _, w_type, _, z_type = signature.args[:5]
            vector, lanes, load, store, broadcast, fma_ = vector_ops(context, builder, x_type.dtype, vector_bytes)
            x_data, d = tile_parts(context, builder, x_type, args[0])
            w_data, m = tile_parts(context, builder, w_type, args[2])
            z_data, z_width = tile_parts(context, builder, z_type, args[4])
            i_, j_ = args[1], args[3]
            rows = [builder.gep(x_data, [builder.mul(builder.add(i_, ir.Constant(i_.type, r)), d)])
                    for r in range(samples)]
            first = args[5] if part else ir.Constant(j_.type, 0)
            outs = [builder.gep(z_data, [builder.add(builder.mul(builder.add(first, ir.Constant(j_.type, r)), z_width),
                                                     j_)]) for r in range(samples)]
            zero = ir.Constant(vector, None)
            if part:
                k0, k1, add = args[6], args[7], args[8]
                start = [builder.select(add, load(builder.gep(out, [ir.Constant(j_.type, h * lanes)])), zero)
                         for out in outs for h in range(2)]
            else:
                k0, k1, start = ir.Constant(d.type, 0), d, [zero] * (2 * samples)
            acc = [cgutils.alloca_once_value(builder, value) for value in start]
            with cgutils.for_range_slice(builder, k0, k1, ir.Constant(d.type, 1), inc=True) as (k, _):
                w = builder.gep(w_data, [builder.add(builder.mul(k, m), j_)])
                w0, w1 = load(w), load(builder.gep(w, [ir.Constant(k.type, lanes)]))
                for r in range(samples):
                    x = broadcast(builder.load(builder.gep(rows[r], [k])))
                    builder.store(fma_(x, w0, builder.load(acc[2 * r])), acc[2 * r])
                    builder.store(fma_(x, w1, builder.load(acc[2 * r + 1])), acc[2 * r + 1])
            for r in range(samples):
                store(builder.load(acc[2 * r]), outs[r])
                store(builder.load(acc[2 * r + 1]), builder.gep(outs[r], [ir.Constant(j_.type, lanes)]))
            return context.get_dummy_value()
        extra = (types.intp, types.intp, types.intp, types.boolean) if part else ()
        return types.void(X, types.intp, Wt, types.intp, Z, *extra), codegen
    if part:  # numba's intrinsics take no defaults: the typer's parameters are the call's
        def forward_tile_part(typingctx, X, i, Wt, j, Z, zr, k0, k1, add):
            return forward_tile(typingctx, X, i, Wt, j, Z, zr, k0, k1, add)
        typer = forward_tile_part
    else:
        def forward_tile_whole(typingctx, X, i, Wt, j, Z):
            return forward_tile(typingctx, X, i, Wt, j, Z)
        typer = forward_tile_whole
    typer.__doc__ = forward_tile.__doc__
    typer.__name__ = typer.__qualname__ = f"forward_tile_{samples}_{vector_bytes}{'_part' if part else ''}"
    return intrinsic(typer)


forward_tile = _forward_tile(TILE_ROWS)
forward_tile_wide = _forward_tile(WIDE_ROWS)  # from d >= WIDE_MIN_D: twelve accumulators, W loaded half as often
forward_tile_half = _forward_tile(TILE_ROWS, HALF_BYTES)
forward_tile_wide_half = _forward_tile(WIDE_ROWS, HALF_BYTES)
forward_tile_part = _forward_tile(TILE_ROWS, part=True)  # the k-blocked forward (forward_rows_blocked)
forward_tile_wide_part = _forward_tile(WIDE_ROWS, part=True)


def _backward_tile(samples, grouped=False, vector_bytes=VECTOR_BYTES):
    """The backward register tile adding `samples` waiting samples (unrolled: a loop over a runtime count
    of single samples is much slower); grouped, a runtime number of such groups, the gradient's tile
    held in registers throughout; its vectors `vector_bytes` wide."""
    def backward_tile(typingctx, X, rows, first, Q, k, j, G):
        """G[k+kk, j:j+c] += X[rows[s], k+kk] Q[s, j:j+c] for s = first .. first + samples - 1 (grouped: for
        s = 0 .. first * samples - 1), fma after fma in sample order, and kk < GRAD_ROWS, c = tile_columns
        at this width.
        The caller keeps k + GRAD_ROWS <= G.shape[0] and j + c <= G.shape[1]."""
        if not (tiled_arrays((X, Q, G)) and isinstance(rows, types.Array) and rows.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            x_type, rows_type, _, q_type, _, _, g_type = signature.args
            vector, lanes, load, store, broadcast, fma_ = vector_ops(context, builder, x_type.dtype, vector_bytes)
            x_data, d = tile_parts(context, builder, x_type, args[0])
            q_data, q_width = tile_parts(context, builder, q_type, args[3])
            g_data, m = tile_parts(context, builder, g_type, args[6])
            rows_data = context.make_array(rows_type)(context, builder, args[1]).data
            first, k_, j_ = args[2], args[4], args[5]
            step = ir.Constant(j_.type, lanes)
            out = [builder.gep(g_data, [builder.add(builder.mul(builder.add(k_, ir.Constant(k_.type, kk)), m), j_)])
                   for kk in range(GRAD_ROWS)]
            acc = []
            for kk in range(GRAD_ROWS):
                acc += [load(out[kk]), load(builder.gep(out[kk], [step]))]

            def add_samples(start, acc):
                for r in range(samples):
                    sample_index = builder.add(start, ir.Constant(start.type, r))
                    q_row = builder.gep(q_data, [builder.add(builder.mul(sample_index, q_width), j_)])
                    q0, q1 = load(q_row), load(builder.gep(q_row, [step]))
                    sample = builder.load(builder.gep(rows_data, [sample_index]))
                    x_row = builder.gep(x_data, [builder.add(builder.mul(sample, d), k_)])
                    for kk in range(GRAD_ROWS):
                        x = broadcast(builder.load(builder.gep(x_row, [ir.Constant(k_.type, kk)])))
                        acc[2 * kk], acc[2 * kk + 1] = fma_(x, q0, acc[2 * kk]), fma_(x, q1, acc[2 * kk + 1])
                return acc

            if grouped:  # accumulators through allocas (promoted to registers) across the loop
                slots = [cgutils.alloca_once_value(builder, value) for value in acc]
                with cgutils.for_range(builder, first) as loop:
                    start = builder.mul(loop.index, ir.Constant(loop.index.type, samples))
                    for slot, value in zip(slots, add_samples(start, [builder.load(slot) for slot in slots])):
                        builder.store(value, slot)
                acc = [builder.load(slot) for slot in slots]
            else:
                acc = add_samples(first, acc)
            for kk in range(GRAD_ROWS):
                store(acc[2 * kk], out[kk])
                store(acc[2 * kk + 1], builder.gep(out[kk], [step]))
            return context.get_dummy_value()
        return types.void(X, rows, types.intp, Q, types.intp, types.intp, G), codegen
    backward_tile.__name__ = backward_tile.__qualname__ = (
        f"backward_tile_{samples}{'_groups' if grouped else ''}_{vector_bytes}")
    return intrinsic(backward_tile)


backward_tile_groups = _backward_tile(BACKWARD_GROUP, grouped=True)  # whole groups of BACKWARD_GROUP samples
backward_tile_short = _backward_tile(TILE_ROWS)  # the last samples of a block, TILE_ROWS at a time
backward_tile_groups_half = _backward_tile(BACKWARD_GROUP, grouped=True, vector_bytes=HALF_BYTES)
backward_tile_short_half = _backward_tile(TILE_ROWS, vector_bytes=HALF_BYTES)


# The BLAS mode's products, as direct gemm calls: through the address of an ILP64 Fortran ?gemm_ the caller
# passes (numpy's own OpenBLAS: lgd.backends._numba.numpy_gemm), else through numba's own gemm wrapper
# (numba_xxgemm: scipy's BLAS, resolved by name at load time like np.dot's). The address is an argument,
# not a constant of the code, so the cache keeps working. np.dot on slices of the same arrays makes the same
# calls but compiles its slicing, shape checks and error paths at every call site, seconds of every cold
# BLAS build. A row-major block is its column-major transpose, so each product is computed as its
# transpose: Z_b^T = Wt^T X_b^T and (X_b^T G_b)^T = G_b^T X_b.
def _gemm_call(context, builder, dtype, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, c, ldc, address):
    """c = op(a) op(b) (column-major, m x n = (m x k)(k x n), op the transpose where asked): through the ?gemm_
    at `address` (an int64 value) when it is not 0, else through numba_xxgemm."""
    char, intp, void_p = ir.IntType(8), context.get_value_type(types.intp), ir.IntType(8).as_pointer()
    alpha, beta = (cgutils.alloca_once_value(builder, context.get_constant(dtype, v)) for v in (1.0, 0.0))
    kind = "s" if dtype == types.float32 else "d"
    transposes = [ir.Constant(char, ord("t" if transpose else "n")) for transpose in (transpose_a, transpose_b)]
    pointer = [builder.bitcast(p, void_p) for p in (alpha, a, b, beta, c)]
    with builder.if_else(builder.icmp_unsigned("!=", address, ir.Constant(address.type, 0))) as (direct, wrapped):
        with direct:
            # Fortran's convention: every argument by reference, 64-bit integers (ILP64), and the lengths of
            # the two character arguments after the others.
            def ref(value):
                return builder.bitcast(cgutils.alloca_once_value(builder, value), void_p)

            fn_type = ir.FunctionType(ir.VoidType(), [void_p] * 13 + [intp, intp])
            fn = builder.inttoptr(address, fn_type.as_pointer())
            one = ir.Constant(intp, 1)
            builder.call(fn, [ref(transposes[0]), ref(transposes[1]), ref(m), ref(n), ref(k), pointer[0],
                              pointer[1], ref(lda), pointer[2], ref(ldb), pointer[3], pointer[4], ref(ldc), one, one])
        with wrapped:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.IntType(32), [char, char, char, intp, intp, intp, void_p, void_p, intp, void_p, intp, void_p,
                                 void_p, intp]), "numba_xxgemm")
            # Its status is nonzero only when scipy's BLAS cannot be found, which typing has already ruled
            # out (ensure_blas); a team member could not raise anyway while the others wait at a barrier.
            builder.call(fn, [ir.Constant(char, ord(kind))] + transposes + [m, n, k, pointer[0], pointer[1], lda,
                                                                             pointer[2], ldb, pointer[3], pointer[4],
                                                                             ldc])


def _blas_block(name):
    """The intrinsic `name`, forming one block's product by BLAS, through the ?gemm_ whose address is gemm[0] (0:
    scipy's, numba_xxgemm), with Z (G) held as rows, (n, m):
    blas_rows_times: Z[i0:i1] = X[i0:i1] Wt; blas_rows_transposed_times: out (d, m) = X[i0:i1]^T G[i0:i1];
    blas_rows_gradient_swapped: its transpose, out (m, d) = (X[i0:i1]^T G[i0:i1])^T;
    or held transposed, ZT (m, n), the block's samples its columns i0 .. i1 - 1:
    blas_columns_times: ZT[:, i0:i1] = (X[i0:i1] Wt)^T; blas_columns_gradient: out (m, d) = G[i0:i1]^T X[i0:i1],
    G^T read from those columns of ZT; and with the weights held as rows, B = W (m, d) rather than Wt:
    blas_rows_times_w: Z[i0:i1] = X[i0:i1] W^T, blas_columns_times_w: ZT[:, i0:i1] = (X[i0:i1] W^T)^T."""
    def blas_block(typingctx, X, i0, i1, B, C, gemm):
        """The caller keeps 0 <= i0 <= i1 <= len(X), and len(X) = the samples of Z (G); all C-contiguous."""
        if not (tiled_arrays((X, B, C)) and isinstance(gemm, types.Array) and gemm.dtype == types.int64):
            return None
        from numba.np.linalg import ensure_blas

        ensure_blas()

        def codegen(context, builder, signature, args):
            x_type, _, _, b_type, c_type, gemm_type = signature.args
            dtype = x_type.dtype
            x_data, d = tile_parts(context, builder, x_type, args[0])
            b_data, b_row = tile_parts(context, builder, b_type, args[3])
            c_data, c_row = tile_parts(context, builder, c_type, args[4])
            address = builder.load(context.make_array(gemm_type)(context, builder, args[5]).data)
            i0, rows = args[1], builder.sub(args[2], args[1])
            x_block = builder.gep(x_data, [builder.mul(i0, d)])
            if name == "blas_rows_times":  # Z_b^T = Wt^T X_b^T: (m x d)(d x rows)
                m = b_row
                _gemm_call(context, builder, dtype, False, False, m, rows, d, b_data, m, x_block, d,
                           builder.gep(c_data, [builder.mul(i0, m)]), m, address)
            elif name == "blas_rows_transposed_times":  # out^T = G_b^T X_b: (m x rows)(rows x d)
                m = b_row
                _gemm_call(context, builder, dtype, False, True, m, d, rows, builder.gep(b_data, [builder.mul(i0, m)]),
                           m, x_block, d, c_data, m, address)
            elif name == "blas_rows_gradient_swapped":  # out (m, d), column-major (d x m) = X_b^T G_b
                m = b_row
                _gemm_call(context, builder, dtype, False, True, d, m, rows, x_block, d,
                           builder.gep(b_data, [builder.mul(i0, m)]), m, c_data, d, address)
            elif name == "blas_columns_times":  # ZT's columns, column-major (rows x m) = X_b Wt, both transposed
                _gemm_call(context, builder, dtype, True, True, rows, b_row, d, x_block, d, b_data, b_row,
                           builder.gep(c_data, [i0]), c_row, address)
            elif name == "blas_rows_times_w":  # Z_b^T = W X_b^T: W (m, d) is column-major (d x m), transposed
                m = cgutils.unpack_tuple(builder, context.make_array(b_type)(context, builder, args[3]).shape, 2)[0]
                _gemm_call(context, builder, dtype, True, False, m, rows, d, b_data, d, x_block, d,
                           builder.gep(c_data, [builder.mul(i0, m)]), m, address)
            elif name == "blas_columns_times_w":  # ZT's columns, column-major (rows x m) = X_b W^T, X_b transposed
                m = cgutils.unpack_tuple(builder, context.make_array(b_type)(context, builder, args[3]).shape, 2)[0]
                _gemm_call(context, builder, dtype, True, False, rows, m, d, x_block, d, b_data, d,
                           builder.gep(c_data, [i0]), c_row, address)
            else:  # out (m, d), column-major (d x m) = X_b^T G_b, G_b = ZT's columns: column-major (rows x m), ZT's
                # row length n apart
                m = cgutils.unpack_tuple(builder, context.make_array(c_type)(context, builder, args[4]).shape, 2)[0]
                _gemm_call(context, builder, dtype, False, False, d, m, rows, x_block, d, builder.gep(b_data, [i0]),
                           b_row, c_data, d, address)
            return context.get_dummy_value()
        return types.void(X, types.intp, types.intp, B, C, gemm), codegen
    blas_block.__name__ = blas_block.__qualname__ = name
    return intrinsic(blas_block)


blas_rows_times = _blas_block("blas_rows_times")
blas_rows_transposed_times = _blas_block("blas_rows_transposed_times")
blas_rows_gradient_swapped = _blas_block("blas_rows_gradient_swapped")
blas_columns_times = _blas_block("blas_columns_times")
blas_rows_times_w = _blas_block("blas_rows_times_w")
blas_columns_times_w = _blas_block("blas_columns_times_w")
blas_columns_gradient = _blas_block("blas_columns_gradient")


@subroutine(types.void)
def forward_rows(X, i, count, Wt, zt):
    """zt[r] = X[i + r] Wt for r < count <= WIDE_ROWS: register tiles when count is WIDE_ROWS or
    TILE_ROWS (with 64-byte vectors, then a half tile if the columns left fill one), then the columns
    after them (all of them for other counts) a row at a time, fma after fma in k order as the tiles
    sum."""
    d, m = Wt.shape
    width = tile_columns_of(Wt)
    half = half_tile_columns_of(Wt)
    j0 = 0
    if count == WIDE_ROWS:
        while j0 + width <= m:
            forward_tile_wide(X, i, Wt, j0, zt)
            j0 += width
        if HALF_TILES and j0 + half <= m:  # fewer than `width` columns are left: at most one half tile
            forward_tile_wide_half(X, i, Wt, j0, zt)
            j0 += half
    elif count == TILE_ROWS:
        while j0 + width <= m:
            forward_tile(X, i, Wt, j0, zt)
            j0 += width
        if HALF_TILES and j0 + half <= m:
            forward_tile_half(X, i, Wt, j0, zt)
            j0 += half
    if j0 == m:
        return
    for r in range(count):
        forward_row_rest(X, i + r, Wt, zt, r, j0)


@subroutine(types.void, counted=False)
def forward_row_rest(X, row, Wt, zt, r, j_from):
    """zt[r, j] = sum_k X[row, k] Wt[k, j] for j_from <= j < m, fma after fma in k order as the tiles sum:
    the columns (or the rows) the tiles leave."""
    d, m = Wt.shape
    for j in range(j_from, m):
        zt[r, j] = 0.0
    for k in range(d):
        x = X[row, k]
        for j in range(j_from, m):
            zt[r, j] = fma(x, Wt[k, j], zt[r, j])


@subroutine(types.void)
def forward_rows_blocked(X, i, count, Wt, zt):
    """zt[r] = X[i + r] Wt for r < count <= len(zt), k-blocked (BLOCK_K entries of k at a time for every
    tile of the rows: W^T's panel stays in L2 while all of them add their part): tiles of WIDE_ROWS rows,
    then one of TILE_ROWS if as many are left, on the full tiles' columns; the rest (fewer rows, the
    columns after the tiles) a row at a time. The same bits as forward_rows: each entry is one fma after
    another in k order, from 0, whatever the blocks."""
    d, m = Wt.shape
    width = tile_columns_of(Wt)
    j_full = m - m % width
    wide = count - count % WIDE_ROWS
    short = wide + TILE_ROWS if wide + TILE_ROWS <= count else wide  # rows [wide, short): one TILE_ROWS tile
    for k0 in range(0, d, BLOCK_K):
        k1 = min(k0 + BLOCK_K, d)
        for r in range(0, wide, WIDE_ROWS):
            for j in range(0, j_full, width):
                forward_tile_wide_part(X, i + r, Wt, j, zt, r, k0, k1, k0 > 0)
        if short > wide:
            for j in range(0, j_full, width):
                forward_tile_part(X, i + wide, Wt, j, zt, wide, k0, k1, k0 > 0)
    for r in range(count):
        j_from = j_full if r < short else 0
        if j_from < m:
            forward_row_rest(X, i + r, Wt, zt, r, j_from)


@subroutine(types.void)
def backward_rows(X, rows, count, qs, grad):
    """grad[k] += X[rows[0], k] qs[0] + ... + X[rows[count-1], k] qs[count-1] for every k (fma after fma
    in sample order), count <= waiting_samples(d, m): register tiles of GRAD_ROWS rows of grad (adding the
    whole groups of BACKWARD_GROUP samples, then TILE_ROWS more if as many are left; with 64-byte
    vectors, a half tile on the columns after the full ones if they fill one), then the rest a sample
    at a time."""
    d, m = grad.shape
    width = tile_columns_of(grad)
    half = half_tile_columns_of(grad)
    k_tiled, j_full = d - d % GRAD_ROWS, m - m % width
    j_tiled = j_full + half if HALF_TILES and m - j_full >= half else j_full  # [j_full, j_tiled): a half tile
    groups = count // BACKWARD_GROUP
    tiled = groups * BACKWARD_GROUP  # samples [0, tiled) are added on the tiled part of grad
    if groups > 0:
        for k in range(0, k_tiled, GRAD_ROWS):
            for j in range(0, j_full, width):
                backward_tile_groups(X, rows, groups, qs, k, j, grad)
            if j_tiled > j_full:
                backward_tile_groups_half(X, rows, groups, qs, k, j_full, grad)
    while tiled + TILE_ROWS <= count:
        for k in range(0, k_tiled, GRAD_ROWS):
            for j in range(0, j_full, width):
                backward_tile_short(X, rows, tiled, qs, k, j, grad)
            if j_tiled > j_full:
                backward_tile_short_half(X, rows, tiled, qs, k, j_full, grad)
        tiled += TILE_ROWS
    # What the tiles left: for the tiled samples, the columns after the tiles and the rows of grad
    # after them (nothing when d and m are whole tiles: no pass over k for nothing); for the rest, all
    # of grad.
    for s in range(count):
        row = rows[s]
        k_from = 0
        if s < tiled:
            if j_tiled < m:
                for k in range(k_tiled):
                    x = X[row, k]
                    for j in range(j_tiled, m):
                        grad[k, j] = fma(x, qs[s, j], grad[k, j])
            k_from = k_tiled
        for k in range(k_from, d):
            x = X[row, k]
            for j in range(m):
                grad[k, j] = fma(x, qs[s, j], grad[k, j])



@subroutine(types.void)
def blas_forward(X, i0, i1, Wt, Z, gemm, train):
    """Z[i0:i1] = X[i0:i1] Wt by BLAS (the ?gemm_ at gemm[0], or scipy's), or, for the training block where
    gemm[2] is not 0, its transpose into columns i0 .. i1 - 1 of Z held as (m, n) (lgd.backends._numba.buffers
    chooses: OpenBLAS's AVX-512 kernels form that layout faster in float64, L's 21.1-23.1 ms against 23.5-25.4);
    where gemm[3] is not 0, Wt holds the weights as rows, W (m, d) (weights_as_rows); nothing when Z is None
    (the fused mode: pruned at compile time)."""
    if Z is not None:
        if gemm[3] != 0:
            if train and gemm[2] != 0:
                blas_columns_times_w(X, i0, i1, Wt, Z, gemm)
            else:
                blas_rows_times_w(X, i0, i1, Wt, Z, gemm)
        elif train and gemm[2] != 0:
            blas_columns_times(X, i0, i1, Wt, Z, gemm)
        else:
            blas_rows_times(X, i0, i1, Wt, Z, gemm)


@subroutine(types.boolean)
def weights_as_rows(gemm):
    """Whether the BLAS mode holds the weights being stepped as rows, W (m, d), the layout of the gradient's
    transposed product (gemm[3] not 0: lgd.backends._numba.weights_as_rows), rather than as Wt (d, m); False
    in the fused mode, whose gemm is None (pruned at compile time)."""
    if gemm is not None:
        return gemm[3] != 0
    return False


def _gradient_alone(grads, size, grad):
    return size == 1


def _gradient_never(grads, size, grad):
    return False


@subroutine(types.boolean, pick=lambda grads, size, grad: (
    _gradient_alone if grads.dtype == grad.dtype else _gradient_never))
def blas_writes_grad(grads, size, grad):
    """Whether BLAS writes the gradient straight into grad (float64, whose grad is of the run's dtype, and a
    team of one: nothing to add up) rather than into grads[member] for step.reduce_blocks to sum: the
    copy was a pass over a large net's gradient at every step (0.3 ms of L's). Where grad's layout is the
    product's: not where the product is transposed and the weights are kept as Wt (blas_backward)."""


@subroutine(types.void)
def backward_into(X, i0, i1, G, out, gemm):
    """out = X[i0:i1]^T G[i0:i1] by BLAS, in the layout gemm chooses (blas_backward)."""
    if gemm[2] != 0:
        blas_columns_gradient(X, i0, i1, G, out, gemm)
    elif gemm[1] != 0:
        blas_rows_gradient_swapped(X, i0, i1, G, out, gemm)
    else:
        blas_rows_transposed_times(X, i0, i1, G, out, gemm)


def _backward_same_dtype(X, i0, i1, G, grads, member, size, grad, gemm):
    # Into grad itself where its layout is the product's: (d, m), or (m, d) with the weights held as rows.
    if blas_writes_grad(grads, size, grad) and (gemm[1] == 0 or gemm[3] != 0):
        backward_into(X, i0, i1, G, grad, gemm)
    else:
        backward_into(X, i0, i1, G, grads[member], gemm)


def _backward_parts(X, i0, i1, G, grads, member, size, grad, gemm):
    backward_into(X, i0, i1, G, grads[member], gemm)


# Two implementations by dtype, not one branch on blas_writes_grad: numba types both sides of a branch, and
# the product into grad does not type where grad's dtype is not the run's.
@subroutine(types.void, pick=lambda X, i0, i1, G, grads, member, size, grad, gemm: (
    _backward_same_dtype if grads.dtype == grad.dtype else _backward_parts))
def _blas_backward(X, i0, i1, G, grads, member, size, grad, gemm):
    """blas_backward with BLAS buffers."""


@subroutine(types.void)
def blas_backward(X, i0, i1, G, grads, member, size, grad, gemm):
    """X[i0:i1]^T G[i0:i1] by BLAS (as blas_forward) into grad when blas_writes_grad and grad's layout is the
    product's, else into grads[member]; where gemm[1] is not 0, its transpose, (m, d) (lgd.backends._numba.buffers
    chooses: OpenBLAS ran that shape faster on large inputs, L's 20 ms against 26), which step.reduce_blocks
    transposes back as it sums unless the weights, and so grad, are held as rows too (gemm[3]); where gemm[2]
    is not 0 too, G^T read from the columns of G held as (m, n) (blas_forward); nothing when grads is None (the
    fused mode)."""
    if grads is not None:
        _blas_backward(X, i0, i1, G, grads, member, size, grad, gemm)
