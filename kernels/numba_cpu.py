"""Numba CPU kernels: whole GD runs of a two-layer net (or a linear model) in compiled code.

What lives here: branch-free exp / log1p written as plain arithmetic (so that LLVM vectorises the
loops that call them), the activations and losses of lgd as scalar/row functions selected by an
integer code, the fused forward/backward pass over a block of samples, and the whole-run driver:

- :func:`run_team`, the one whole-run driver: configurations one after the other, every step
  split over a team of threads (Python threads in a nogil kernel, meeting at a spinning barrier);
  a team of one per thread runs sweeps. The products X W^T and X^T G run in the fused loops, or
  for large problems through single-threaded BLAS calls on each member's block of samples.

Specialisation: one compiled kernel per dtype and product mode (fused loops or BLAS). The activation
and loss are runtime integer codes (the values of ``lgd.activations`` / ``lgd.losses``), dispatched
once per row of m neurons or once per sample, never inside a vectorised loop, so a sweep over activations,
losses, their parameters or stepsizes never recompiles. A float32 run computes in float32 (the
products, the activation rows with their own exp and log1p, the gradients: eight lanes per AVX2
vector); its per-sample losses and the O(d m) bookkeeping of a step (sums of the blocks, norms,
update) run in float64 and round to float32 wherever the numpy oracle rounds (loss values, risk,
gradient, weights), so that it also diverges where the oracle does.

Nothing here checks arguments or knows about lgd's classes: :mod:`lgd.backends._numba` does.
"""

import inspect
import math
import platform
import weakref

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.compiler import Flags, compile_internal
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.numpy_support import as_dtype

# Codes of lgd.activations and lgd.losses (tests assert they agree).
IDENTITY, RELU, LEAKY_RELU, SOFTPLUS, LEAKY_SOFTPLUS, GELU, SILU, TANH = range(8)
LOGISTIC, EXPONENTIAL, FLATTENED_EXPONENTIAL, FLATTENED_POLYNOMIAL, SQUARED = range(5)

# Compile cost. One kernel, run_team, is compiled (and cached) per dtype and product mode: with the
# fused products its BLAS buffers are None, which prunes the BLAS calls at compile time (they cost
# a fused build about 4 s); with BLAS its tile rows (zs) are None, which prunes the fused loops
# (about 1.2 s of a BLAS build: 8.1-8.4 s cold instead of 9.2-9.9). Every helper is a `subroutine`,
# typed and lowered once per signature into run_team's own code library and optimised and compiled
# to machine code once, with it. As njit functions they were libraries of their own, each compiled
# to machine code by itself and again in every caller up the chain: 17-20 s per dtype cold then,
# 8-10 s now. LLVM inlines the subroutines, so the loops that call exp, the softplus or dot_row
# still vectorise. Nothing is inlined at numba-IR level (inline="always" copies and re-types a
# helper at every call site), and array slice assignment is avoided (each one compiles numba's
# shape-mismatch error path).
# No fastmath anywhere: the divergence test needs inf and nan, and exp/log1p need their exact
# rounding corrections; reductions use partial sums and the products explicit fma instead.
CACHE = True
worker = njit(cache=CACHE, error_model="numpy", nogil=True)

# Code libraries (one per compiled kernel) -> {(function, signature): compile result} of the subroutines
# lowered into them.
_SUBROUTINES = weakref.WeakKeyDictionary()


def subroutine(returns, pick=None):
    """Decorator: a helper compiled into the code library of the kernel that calls it.

    An njit helper is a library of its own: numba optimises it and generates its machine code, then
    links it into each caller and does both again there, so a chain of helpers is compiled once per
    level. A subroutine is typed and lowered once per signature straight into the calling kernel's
    library (where LLVM inlines it as usual) and compiled to machine code once, with the kernel.
    `returns` is the return type, or a function of the argument types that gives it; `pick`, if given,
    a function of the argument types that gives the Python function to compile instead of the
    decorated one (one name for per-dtype implementations). Callable from compiled code only; the
    Python function stays reachable as `.implementation`. Error model numpy, as the kernels:
    divisions carry no zero checks.
    """
    def decorate(func):
        def signature(args):
            result = returns if isinstance(returns, types.Type) else returns(*args)
            if result is None:
                return None

            def codegen(context, builder, signature, values):
                library = context.active_code_library
                compiled = _SUBROUTINES.setdefault(library, {})
                implementation = func if pick is None else pick(*signature.args)
                key = (implementation, signature)
                if key not in compiled:
                    flags = Flags()
                    flags.error_model = "numpy"
                    flags.nrt = True
                    flags.no_compile = True
                    flags.no_cpython_wrapper = True
                    flags.no_cfunc_wrapper = True
                    compiled[key] = compile_internal(context.typing_context, context, library, implementation,
                                                     signature.args, signature.return_type, flags, locals={})
                    # linkonce_odr, as numba makes a linked njit function: LLVM inlines
                    # it where it pays (the loops that call exp must, to vectorise) and drops the rest.
                    library.get_function(compiled[key].fndesc.llvm_func_name).linkage = "linkonce_odr"
                return context.call_internal(builder, compiled[key].fndesc, signature, values)
            return result(*args), codegen
        # The typer takes func's parameters by name (numba reads them to fold a call's arguments).
        params = ", ".join(inspect.signature(func).parameters)
        namespace = {"signature": signature}
        exec(f"def {func.__name__}(typingctx, {params}):\n    return signature(({params},))\n", namespace)
        typer = namespace[func.__name__]
        typer.__doc__ = func.__doc__
        compiled_helper = intrinsic(typer)
        compiled_helper.implementation = func
        return compiled_helper
    return decorate


def _bitcast(name, source, target):
    """An intrinsic reinterpreting the bits of a `source` value as a `target` value (no conversion)."""
    def typer(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))
        return target(source), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


_double_from_bits = _bitcast("_double_from_bits", types.uint64, types.float64)
_bits_from_double = _bitcast("_bits_from_double", types.float64, types.uint64)
_float_from_bits = _bitcast("_float_from_bits", types.int32, types.float32)
_bits_from_float = _bitcast("_bits_from_float", types.float32, types.int32)


@intrinsic
def fma(typingctx, x, y, z):
    """x * y + z with one rounding (llvm.fma: vectorises, unlike a libm call), all three float64 or all
    float32 (mixing them would be a silent conversion: it does not type)."""
    if not (x == y == z and x in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return x(x, y, z), codegen


@intrinsic
def like(typingctx, array, value):
    """value converted to the dtype of array, in compiled code: float32 runs compute in float32."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], signature.return_type)
    return array.dtype(array, value), codegen


@intrinsic
def flat(typingctx, array):
    """The 1-d view of a C-contiguous array (as ravel() gives, with far less to compile)."""
    if not (isinstance(array, types.Array) and array.layout == "C"):
        return None
    result = array.copy(ndim=1)

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        view = context.make_array(result)(context, builder)
        context.populate_array(view, data=source.data, shape=[source.nitems], strides=[source.itemsize],
                               itemsize=source.itemsize, meminfo=source.meminfo, parent=source.parent)
        return impl_ret_borrowed(context, builder, result, view._getvalue())
    return result(array), codegen


# Register tiles of the two products (fused mode), as LLVM vector code: LLVM does not tile numba's
# scalar loops itself. Forward (X W^T): TILE_ROWS samples by two AVX2 vectors of columns (8 float64 or
# 16 float32), eight accumulators held in registers over the whole sum on k: per k, two vector loads
# and four broadcasts feed eight independent fmas, where the row-at-a-time loop loads and stores z for
# every four (2x faster alone). From d >= WIDE_MIN_D, WIDE_ROWS samples: twelve accumulators, each
# load of W feeding six fmas (alone: 1.28x faster at n, d, m = 360, 64, 256, 1.15x at 1000, 32, 128,
# 0.94x at 256, 16, 64, where the sum on k is short; M 6% faster in float64, 1.6% in float32).
# Backward (the waiting samples' X^T G into the gradient): TILE_ROWS rows of the gradient by two
# vectors, loaded once and held while the samples add in, BACKWARD_GROUP (8) unrolled at a time.
# Eight samples a pass over the gradient rather than four: half its loads and stores per fma, 15-30%
# faster at n, d, m = 360, 64, 256 / 256, 16, 64 / 1000, 32, 128 (four samples were 10-20% faster
# than the plain loop, and chaining the samples on one row at a time is latency-bound). Up to m =
# WAITING_MAX_M, WAITING_SAMPLES (32) a pass, in a loop over groups: S 2-4% faster, n, d, m = 4096, 16, 8
# 4%, M level in float64 and 3.5% faster in float32; at m = 1024 it was 2.6% slower (a waiting block
# of 256 KB), so wider nets keep eight.
# Every sum runs in the scalar loops' order, fma after fma (in k, or in sample order): the same
# results, bit for bit.
TILE_ROWS = 4
WIDE_ROWS = 6
WIDE_MIN_D = 32
WAITING_SAMPLES = 32
WAITING_MAX_M = 256
BACKWARD_GROUP = 8
_VECTOR_BYTES = 32


def tile_columns(dtype):
    """Columns of one tile: two vectors of `dtype` (a numpy dtype)."""
    return 2 * _VECTOR_BYTES // np.dtype(dtype).itemsize


def _tile_parts(context, builder, array_type, value):
    """(data pointer, row length) of a C-contiguous 2-d array."""
    array = context.make_array(array_type)(context, builder, value)
    return array.data, cgutils.unpack_tuple(builder, array.shape, 2)[1]


def _vector_ops(context, builder, dtype):
    """(vector type, load(pointer), store(value, pointer), broadcast(scalar), fma(a, b, c)) for `dtype`."""
    element = context.get_value_type(dtype)
    lanes = _VECTOR_BYTES // (dtype.bitwidth // 8)
    vector = ir.VectorType(element, lanes)
    align = dtype.bitwidth // 8
    fma_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                            f"llvm.fma.v{lanes}f{dtype.bitwidth}")
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    def load(pointer):
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=align)

    def store(value, pointer):
        builder.store(value, builder.bitcast(pointer, vector.as_pointer()), align=align)

    def broadcast(scalar):
        one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), zeros)

    return vector, lanes, load, store, broadcast, lambda a, b, c: builder.call(fma_fn, [a, b, c])


@intrinsic
def tile_columns_of(typingctx, array):
    """tile_columns of the array's dtype, as a compile-time constant."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.IntType(64), tile_columns(as_dtype(array.dtype)))
    return types.int64(array), codegen


def _tiled(arrays):
    dtypes = {a.dtype for a in arrays}
    return (all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in arrays) and len(dtypes) == 1
            and dtypes.pop() in (types.float32, types.float64))


def _forward_tile(samples):
    """The forward register tile over `samples` rows of X."""
    def forward_tile(typingctx, X, i, Wt, j, Z):
        """Z[r, j:j+c] = sum_k X[i+r, k] Wt[k, j:j+c] for r < samples, c = tile_columns (fma in k order).
        The caller keeps i + samples <= len(X) and j + c <= Wt.shape[1]."""
        if not _tiled((X, Wt, Z)):
            return None

        def codegen(context, builder, signature, args):
            x_type, _, w_type, _, z_type = signature.args
            vector, lanes, load, store, broadcast, fma_ = _vector_ops(context, builder, x_type.dtype)
            x_data, d = _tile_parts(context, builder, x_type, args[0])
            w_data, m = _tile_parts(context, builder, w_type, args[2])
            z_data, z_width = _tile_parts(context, builder, z_type, args[4])
            i_, j_ = args[1], args[3]
            rows = [builder.gep(x_data, [builder.mul(builder.add(i_, ir.Constant(i_.type, r)), d)])
                    for r in range(samples)]
            acc = [cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(2 * samples)]
            with cgutils.for_range(builder, d) as loop:
                k = loop.index
                w = builder.gep(w_data, [builder.add(builder.mul(k, m), j_)])
                w0, w1 = load(w), load(builder.gep(w, [ir.Constant(k.type, lanes)]))
                for r in range(samples):
                    x = broadcast(builder.load(builder.gep(rows[r], [k])))
                    builder.store(fma_(x, w0, builder.load(acc[2 * r])), acc[2 * r])
                    builder.store(fma_(x, w1, builder.load(acc[2 * r + 1])), acc[2 * r + 1])
            for r in range(samples):
                out = builder.gep(z_data, [builder.add(builder.mul(ir.Constant(j_.type, r), z_width), j_)])
                store(builder.load(acc[2 * r]), out)
                store(builder.load(acc[2 * r + 1]), builder.gep(out, [ir.Constant(j_.type, lanes)]))
            return context.get_dummy_value()
        return types.void(X, types.intp, Wt, types.intp, Z), codegen
    forward_tile.__name__ = forward_tile.__qualname__ = f"forward_tile_{samples}"
    return intrinsic(forward_tile)


forward_tile = _forward_tile(TILE_ROWS)
forward_tile_wide = _forward_tile(WIDE_ROWS)  # from d >= WIDE_MIN_D: twelve accumulators, W loaded half as often


def _backward_tile(samples, grouped=False):
    """The backward register tile adding `samples` waiting samples (unrolled: a loop over a runtime count
    of single samples ran 17-52% slower); grouped, a runtime number of such groups, the gradient's tile
    held in registers throughout."""
    def backward_tile(typingctx, X, rows, first, Q, k, j, G):
        """G[k+kk, j:j+c] += X[rows[s], k+kk] Q[s, j:j+c] for s = first .. first + samples - 1 (grouped: for
        s = 0 .. first * samples - 1), fma after fma in sample order, and kk < TILE_ROWS, c = tile_columns.
        The caller keeps k + TILE_ROWS <= G.shape[0] and j + c <= G.shape[1]."""
        if not (_tiled((X, Q, G)) and isinstance(rows, types.Array) and rows.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            x_type, rows_type, _, q_type, _, _, g_type = signature.args
            vector, lanes, load, store, broadcast, fma_ = _vector_ops(context, builder, x_type.dtype)
            x_data, d = _tile_parts(context, builder, x_type, args[0])
            q_data, q_width = _tile_parts(context, builder, q_type, args[3])
            g_data, m = _tile_parts(context, builder, g_type, args[6])
            rows_data = context.make_array(rows_type)(context, builder, args[1]).data
            first, k_, j_ = args[2], args[4], args[5]
            step = ir.Constant(j_.type, lanes)
            out = [builder.gep(g_data, [builder.add(builder.mul(builder.add(k_, ir.Constant(k_.type, kk)), m), j_)])
                   for kk in range(TILE_ROWS)]
            acc = []
            for kk in range(TILE_ROWS):
                acc += [load(out[kk]), load(builder.gep(out[kk], [step]))]

            def add_samples(start, acc):
                for r in range(samples):
                    sample_index = builder.add(start, ir.Constant(start.type, r))
                    q_row = builder.gep(q_data, [builder.add(builder.mul(sample_index, q_width), j_)])
                    q0, q1 = load(q_row), load(builder.gep(q_row, [step]))
                    sample = builder.load(builder.gep(rows_data, [sample_index]))
                    x_row = builder.gep(x_data, [builder.add(builder.mul(sample, d), k_)])
                    for kk in range(TILE_ROWS):
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
            for kk in range(TILE_ROWS):
                store(acc[2 * kk], out[kk])
                store(acc[2 * kk + 1], builder.gep(out[kk], [step]))
            return context.get_dummy_value()
        return types.void(X, rows, types.intp, Q, types.intp, types.intp, G), codegen
    backward_tile.__name__ = backward_tile.__qualname__ = f"backward_tile_{samples}{'_groups' if grouped else ''}"
    return intrinsic(backward_tile)


backward_tile_groups = _backward_tile(BACKWARD_GROUP, grouped=True)  # whole groups of BACKWARD_GROUP samples
backward_tile_short = _backward_tile(TILE_ROWS)  # the last samples of a block, TILE_ROWS at a time


@intrinsic
def dot_lanes(typingctx, a, p, count):
    """The eight partial sums of dot_row: s_r = sum of a[j] p[j] over j < count with j = r (mod 8), fma
    after fma in j order, as (s_0, ..., s_7); count a multiple of 8. In vector code (two AVX2 vectors
    of float64 accumulators, one of float32): the eight scalar chains did not vectorise, and a row's
    dot product was 4% of S on one thread."""
    if not (isinstance(a, types.Array) and isinstance(p, types.Array) and a.ndim == p.ndim == 1
            and a.dtype == p.dtype and a.dtype in (types.float32, types.float64)):
        return None
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        vector, lanes, load, store, broadcast, fma_ = _vector_ops(context, builder, dtype)
        a_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        p_data = context.make_array(signature.args[1])(context, builder, args[1]).data
        count = args[2]
        vectors = 8 // lanes
        acc = [cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(vectors)]
        with cgutils.for_range(builder, builder.udiv(count, ir.Constant(count.type, 8))) as loop:
            base = builder.mul(loop.index, ir.Constant(count.type, 8))
            for v in range(vectors):
                at = builder.add(base, ir.Constant(count.type, v * lanes))
                product = fma_(load(builder.gep(a_data, [at])), load(builder.gep(p_data, [at])),
                               builder.load(acc[v]))
                builder.store(product, acc[v])
        sums = [builder.extract_element(builder.load(acc[r // lanes]), ir.Constant(ir.IntType(32), r % lanes))
                for r in range(8)]
        return context.make_tuple(builder, signature.return_type, sums)
    return types.UniTuple(dtype, 8)(a, p, types.intp), codegen


# The BLAS mode's products, as direct calls of numba's own gemm wrapper (numba_xxgemm: scipy's BLAS,
# column-major, resolved by name at load time like np.dot's, so the cache keeps working). np.dot on
# slices of the same arrays did the same calls but compiled its slicing, shape checks and error
# paths at every call site: about a second of every cold BLAS build. A row-major block is its
# column-major transpose, so each product is computed as its transpose: Z_b^T = Wt^T X_b^T and
# (X_b^T G_b)^T = G_b^T X_b.
def _gemm_call(context, builder, dtype, transpose_b, m, n, k, a, lda, b, ldb, c, ldc):
    """c = a b (column-major, m x n = (m x k)(k x n), b transposed if transpose_b) through numba_xxgemm."""
    char, intp, void_p = ir.IntType(8), context.get_value_type(types.intp), ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.IntType(32), [char, char, char, intp, intp, intp, void_p, void_p, intp, void_p, intp, void_p, void_p,
                         intp]), "numba_xxgemm")
    alpha, beta = (cgutils.alloca_once_value(builder, context.get_constant(dtype, v)) for v in (1.0, 0.0))
    kind = "s" if dtype == types.float32 else "d"
    flags = [ir.Constant(char, ord(v)) for v in (kind, "n", "t" if transpose_b else "n")]
    pointer = [builder.bitcast(p, void_p) for p in (alpha, a, b, beta, c)]
    # Its status is nonzero only when scipy's BLAS cannot be found, which typing has already ruled out
    # (ensure_blas); a team member could not raise anyway while the others wait at a barrier.
    builder.call(fn, flags + [m, n, k, pointer[0], pointer[1], lda, pointer[2], ldb, pointer[3], pointer[4], ldc])


def _blas_rows(transposed):
    """The intrinsic forming one block's product by BLAS: Z[i0:i1] = X[i0:i1] Wt (blas_rows_times), or
    with `transposed` out = X[i0:i1]^T G[i0:i1] (blas_rows_transposed_times)."""
    def blas_rows(typingctx, X, i0, i1, B, C):
        """The caller keeps 0 <= i0 <= i1 <= len(X), and len(X) = len(Z) (len(G)); all C-contiguous."""
        if not _tiled((X, B, C)):
            return None
        from numba.np.linalg import ensure_blas

        ensure_blas()

        def codegen(context, builder, signature, args):
            x_type, _, _, b_type, c_type = signature.args
            x_data, d = _tile_parts(context, builder, x_type, args[0])
            b_data, m = _tile_parts(context, builder, b_type, args[3])
            c_data, _ = _tile_parts(context, builder, c_type, args[4])
            i0, rows = args[1], builder.sub(args[2], args[1])
            x_block = builder.gep(x_data, [builder.mul(i0, d)])
            if transposed:  # out^T = G_b^T X_b: (m x rows)(rows x d)
                _gemm_call(context, builder, x_type.dtype, True, m, d, rows,
                           builder.gep(b_data, [builder.mul(i0, m)]), m, x_block, d, c_data, m)
            else:  # Z_b^T = Wt^T X_b^T: (m x d)(d x rows)
                _gemm_call(context, builder, x_type.dtype, False, m, rows, d, b_data, m, x_block, d,
                           builder.gep(c_data, [builder.mul(i0, m)]), m)
            return context.get_dummy_value()
        return types.void(X, types.intp, types.intp, B, C), codegen
    blas_rows.__name__ = blas_rows.__qualname__ = "blas_rows_transposed_times" if transposed else "blas_rows_times"
    return intrinsic(blas_rows)


blas_rows_times = _blas_rows(False)
blas_rows_transposed_times = _blas_rows(True)


# Synchronisation of a team of threads (run_team): atomics on an int64 array, a spin-wait hint and
# sched_yield, as LLVM instructions (numba has no atomics of its own). Resolved by name at load time,
# so the cache keeps working.
def _element_pointer(context, builder, signature, args):
    array_type = signature.args[0]
    array = context.make_array(array_type)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, array_type, array, [args[1]], wraparound=False)


@intrinsic
def atomic_add(typingctx, array, index, value):
    """array[index] += value atomically (sequentially consistent); returns the old value."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _element_pointer(context, builder, signature, args), args[2], "seq_cst")
    return types.int64(types.Array(types.int64, 1, "C"), types.intp, types.int64), codegen


@intrinsic
def atomic_load(typingctx, array, index):
    """array[index] read with acquire ordering (never hoisted out of a loop)."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_element_pointer(context, builder, signature, args), "acquire", 8)
    return types.int64(types.Array(types.int64, 1, "C"), types.intp), codegen


@intrinsic
def atomic_store(typingctx, array, index, value):
    """array[index] = value with release ordering."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _element_pointer(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return types.void(types.Array(types.int64, 1, "C"), types.intp, types.int64), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def spin_pause(typingctx):
    """The CPU's spin-wait hint (x86 pause; nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                      "llvm.x86.sse2.pause")
            builder.call(function, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def sched_yield(typingctx):
    """Give the core to another runnable thread (libc's sched_yield)."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                  "sched_yield")
        builder.call(function, [])
        return context.get_dummy_value()
    return types.void(), codegen


# Spins of a waiting thread before it starts yielding its core: 0.1-1 ms (the length of a pause
# differs between CPUs), longer than the imbalance of a small step, so that on an idle machine
# nobody sleeps; on a busy one a waiter gives way.
SPINS = 1 << 14


@subroutine(types.void)
def barrier(sync, team):
    """Wait until all `team` threads arrive. sync[0] counts arrivals, sync[1] is the generation."""
    generation = atomic_load(sync, 1)
    if atomic_add(sync, 0, 1) == team - 1:
        atomic_store(sync, 0, 0)
        atomic_store(sync, 1, generation + 1)
        return
    spins = 0
    while atomic_load(sync, 1) == generation:
        if spins < SPINS:
            spin_pause()
            spins += 1
        else:
            sched_yield()


# exp: x = k ln2 + r with |r| <= ln2/2, exp(r) by its Taylor polynomial of degree 13 (truncation
# 4e-18), 2^k applied as two factors 2^(k//2) 2^(k - k//2), both normal numbers, so that subnormal
# and overflowing results are rounded once, correctly, with no branch or blend. Relative error about
# 2e-16 over the whole range. The shifter's low bits carry both exponent biases: its integer part
# ends in 2 * 1023, so its bits give v = k + 2046 > 0, then h = v >> 1 = k//2 + 1023 and v - h are
# the two factors' biased exponents (a logical shift: AVX2 has no arithmetic shift of 64-bit lanes).
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # low 32 bits zero: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0 + 2046.0  # 1.5 * 2^52 (adding it rounds to an integer in the low bits) + 2046
_SHIFTER_BITS = np.uint64(0x4338000000000000)  # the bits of 1.5 * 2^52
_ONE, _EXPONENT = np.uint64(1), np.uint64(52)


@subroutine(types.float64)
def exp(x):
    """e^x for float64 x: overflow to inf above 709.78, gradual underflow to 0, nan kept."""
    xc = min(max(x, -746.0), 710.0)
    shifted = fma(xc, _INV_LN2, _SHIFTER)
    kf = shifted - _SHIFTER
    v = _bits_from_double(shifted) - _SHIFTER_BITS
    r = fma(kf, -_LN2_LO, fma(kf, -_LN2_HI, xc))
    # exp(r) - 1 = r + r^2 (1/2 + r/6) + r^4 (1/4! + ... + r^9/13!), all in Estrin's scheme (short
    # dependency chains: the row loops that call exp are bound by their latency), then one rounding
    # adding the 1, in the fma that applies the first factor. 13% faster than finishing in Horner's
    # scheme, still within an ulp.
    r2 = r * r
    r4 = r2 * r2
    a0 = fma(1.0 / 120.0, r, 1.0 / 24.0)
    a1 = fma(1.0 / 5040.0, r, 1.0 / 720.0)
    a2 = fma(1.0 / 362880.0, r, 1.0 / 40320.0)
    a3 = fma(1.0 / 39916800.0, r, 1.0 / 3628800.0)
    a4 = fma(1.0 / 6227020800.0, r, 1.0 / 479001600.0)
    high = fma(fma(a4, r4, fma(a3, r2, a2)), r4, fma(a1, r2, a0))
    expm1 = fma(high, r4, fma(fma(1.0 / 6.0, r, 0.5), r2, r))
    h = v >> _ONE
    first = _double_from_bits(h << _EXPONENT)  # normal, so fma(expm1, first, first) = (1 + expm1) first, bit for bit
    y = fma(expm1, first, first) * _double_from_bits((v - h) << _EXPONENT)
    return y if x == x else x


# log(1 + e) for 0 <= e <= 1, as fdlibm's log1p takes log(1 + f) once it has reduced its argument to
# f: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)) with s = f / (2 + f) and R(z) = 2z/3 + 2z^2/5 + ...
# = (2 atanh(s) - 2s) / s written in z = s^2. fdlibm first reduces 1 + f to [sqrt 2 / 2, sqrt 2] (s <= 0.17),
# which here costs a comparison, blends and a correction for the rounding of 1 + e; this takes f = e
# as it is (s <= 1/3, z <= 1/9) and a longer polynomial instead: R(z) = z g(z), g of degree 9 fitted
# on [0, 1/9] (Chebyshev, mpmath: |error| <= 1e-16, which reaches the result scaled by s z <= 1/27).
# About 8 operations fewer and no blend on the chain: S 8%, SWEEP 13%, M 4% faster (float32 6-8%).
# The price is accuracy: s's own rounding errors weigh more at larger s, and the maximum error over
# 1.2M points of [0, 1] went from 0.85 to 1.4 ulp (mean 0.25 to 0.27; float32 0.86 to 1.5 ulp).
# s and 1 / (1 + e) (the sigmoid) are two divisions in float64 and one shared in float32 (below).
_LOG1P_G = (0.6666666666666666, 0.40000000000014585, 0.2857142856710876, 0.22222222717427864,
            0.18181789436132859, 0.15385570064958623, 0.13314144209654935, 0.12001072809590713,
            0.08800738486144674, 0.1616404561194353)
_G0, _G1, _G2, _G3, _G4, _G5, _G6, _G7, _G8, _G9 = _LOG1P_G


@subroutine(lambda e: types.UniTuple(e, 2))
def log1p_unit(e):
    """(log(1 + e), 1 / (1 + e)) for e in [0, 1], in the dtype of e."""
    s, t, hfsq, r = log1p_parts_of(e)
    return e + fma(s, t, -hfsq), r


@subroutine(types.UniTuple(types.float64, 4))
def log1p_parts(e):
    """(s, f^2/2 + R, f^2/2, 1 / (1 + e)) of log(1 + e) = e + s (f^2/2 + R) - f^2/2 (f = e), e in [0, 1]: the
    activation adds the last terms in its own order, the slowest (s (f^2/2 + R)) last."""
    r = 1.0 / (1.0 + e)  # two divisions, in parallel: as fast as one shared (1 / ((1 + e)(2 + e))) and
    s = e / (2.0 + e)  # more accurate (sigmoid within 1 ulp, not 3)
    z = s * s
    z2 = z * z
    z4 = z2 * z2
    g = fma(fma(fma(_G9, z, _G8), z4, fma(fma(_G7, z, _G6), z2, fma(_G5, z, _G4))), z4,
            fma(fma(_G3, z, _G2), z2, fma(_G1, z, _G0)))
    hfsq = 0.5 * e * e
    return s, fma(z, g, hfsq), hfsq, r


@subroutine(types.UniTuple(types.float64, 2))
def softplus_sigmoid_from_exp(x, e):
    """(softplus(x), sigmoid(x)) given e = exp(-|x|): one log1p and one division."""
    lp, r = log1p_unit(e)
    return max(x, 0.0) + lp, (r if x >= 0 else e * r)


# float32 versions for runs in float32 (eight lanes per AVX2 vector): the same algorithms with float32
# constants. exp: |r| <= ln2/2 and Taylor degree 7 (truncation 5e-9); log1p: g of degree 4.
_INV_LN2_F = np.float32(1.4426950408889634)
_LN2_HI_F = np.float32(0.693145751953125)  # low 9 bits zero: k * _LN2_HI_F is exact for |k| < 2^9
_LN2_LO_F = np.float32(1.428606765330187e-06)
_SHIFTER_F = np.float32(12582912.0 + 254.0)  # 1.5 * 2^23 + 2 * 127, as _SHIFTER
_SHIFTER_F_BITS = np.int32(0x4B400000)
_F = np.float32


@subroutine(types.float32)
def exp32(x):
    """e^x for float32 x: overflow to inf above 88.72, gradual underflow to 0, nan kept."""
    xc = min(max(x, _F(-104.0)), _F(89.0))
    shifted = fma(xc, _INV_LN2_F, _SHIFTER_F)
    kf = shifted - _SHIFTER_F
    v = _bits_from_float(shifted) - _SHIFTER_F_BITS
    r = fma(kf, -_LN2_LO_F, fma(kf, -_LN2_HI_F, xc))
    r2 = r * r
    p = fma(fma(_F(1.0 / 5040.0), r, _F(1.0 / 720.0)), r2, fma(_F(1.0 / 120.0), r, _F(1.0 / 24.0)))
    expm1 = fma(fma(p, r2, fma(_F(1.0 / 6.0), r, _F(0.5))), r2, r)
    h = v >> np.int32(1)
    first = _float_from_bits(h << np.int32(23))
    y = fma(expm1, first, first) * _float_from_bits((v - h) << np.int32(23))
    return y if x == x else x


# log1p_unit's g for float32 runs: degree 4 (|error| <= 7e-9 before its coefficients' float32 rounding).
_G0_F, _G1_F, _G2_F, _G3_F, _G4_F = (np.float32(c) for c in (
    0.6666666865348816, 0.3999970555305481, 0.285923570394516, 0.2170657515525818, 0.23224329948425293))


@subroutine(types.UniTuple(types.float32, 4))
def log1p_parts32(e):
    """log1p_parts for float32 e."""
    u = _F(1.0) + e
    t = _F(2.0) + e
    D = _F(1.0) / (u * t)  # one division for both (two: 5% slower on SWEEP in float32)
    r = t * D
    s = e * u * D
    z = s * s
    z2 = z * z
    g = fma(fma(_G4_F, z2, fma(_G3_F, z, _G2_F)), z2, fma(_G1_F, z, _G0_F))
    hfsq = _F(0.5) * e * e
    return s, fma(z, g, hfsq), hfsq, r


@subroutine(types.UniTuple(types.float32, 2))
def softplus_sigmoid_from_exp32(x, e):
    """(softplus(x), sigmoid(x)) of float32 x given e = exp(-|x|)."""
    lp, r = log1p_unit(e)
    return max(x, _F(0.0)) + lp, (r if x >= _F(0.0) else e * r)


@subroutine(lambda x: x, pick=lambda x: (exp32 if x == types.float32 else exp).implementation)
def exp_of(x):
    """exp or exp32 by the type of x."""


@subroutine(lambda x, e: types.UniTuple(x, 2), pick=lambda x, e: (
    softplus_sigmoid_from_exp32 if x == types.float32 else softplus_sigmoid_from_exp).implementation)
def softplus_sigmoid_from_exp_of(x, e):
    """softplus_sigmoid_from_exp or its float32 version by the type of x."""


@subroutine(lambda e: types.UniTuple(e, 4), pick=lambda e: (
    log1p_parts32 if e == types.float32 else log1p_parts).implementation)
def log1p_parts_of(e):
    """log1p_parts or its float32 version by the type of e."""


_INV_SQRT2 = 0.7071067811865476
_INV_SQRT2PI = 0.3989422804014327


@subroutine(types.void)
def activate_row(code, c, Z, row, p, q, m):
    """p[j] = phi(Z[row, j]) and q[j] = phi'(Z[row, j]) for j < m, in the dtype of Z; the branch is taken once
    per row. The row is indexed here, not passed as a view: a view costs two atomic reference counts
    per sample."""
    zero, one, half = like(Z, 0.0), like(Z, 1.0), like(Z, 0.5)
    cz, cbar = like(Z, c), like(Z, 1.0 - c)
    if code == LEAKY_SOFTPLUS or code == SOFTPLUS:  # softplus is c = 0
        # Two passes, exp(-|z|) into p first: each loop keeps fewer constants live than one loop
        # doing both, so fewer are reloaded every iteration (17% faster, same results).
        for j in range(m):
            p[j] = exp_of(-abs(Z[row, j]))
        # softplus(x) = max(x, 0) + e + s t - hfsq (log1p_parts): the terms known early first, s t
        # (the end of the longest chain: the division, then the polynomial) last, in one fma: a
        # shorter chain than adding the finished softplus, for a loop bound by its latency (SWEEP 5%
        # faster).
        for j in range(m):
            x = Z[row, j]
            e = p[j]
            s, t, hfsq, r = log1p_parts_of(e)
            early = max(x, zero) + (e - hfsq)
            if c != 0.0:
                p[j] = fma(cbar * s, t, fma(cz, x, cbar * early))
            else:
                p[j] = fma(s, t, early)
            q[j] = fma(cbar, r if x >= zero else e * r, cz)
    elif code == RELU or code == LEAKY_RELU or code == IDENTITY:  # identity is c = 1
        for j in range(m):
            x = Z[row, j]
            pos = x > zero
            p[j] = x if pos else cz * x
            q[j] = one if pos else cz
    elif code == SILU:
        for j in range(m):
            x = Z[row, j]
            e = exp_of(-abs(x))
            r = one / (one + e)
            s = r if x >= zero else e * r
            t = e * r if x >= zero else r
            p[j] = x * s
            q[j] = s + x * s * t
    elif code == TANH:
        for j in range(m):
            th = math.tanh(Z[row, j])
            p[j] = th
            q[j] = one - th * th
    else:  # GELU
        inv_sqrt2, inv_sqrt2pi, cap = like(Z, _INV_SQRT2), like(Z, _INV_SQRT2PI), like(Z, 3200.0)
        for j in range(m):
            x = Z[row, j]
            cdf = half * math.erfc(-x * inv_sqrt2)
            near = abs(x) < like(Z, 40.0)
            pdf = exp_of(-half * min(x * x, cap)) * inv_sqrt2pi if near else zero
            p[j] = x * cdf
            q[j] = cdf + (x if near else zero) * pdf


@subroutine(types.UniTuple(types.float64, 2))
def loss_row(code, a, u):
    """(loss(u), loss'(u)) of one sample."""
    if code == LOGISTIC:
        sp, sg = softplus_sigmoid_from_exp_of(-u, exp(-abs(u)))
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
    return 0.5 * u * u, u  # SQUARED, u = f - y


@subroutine(types.float64)
def narrow(x, f32):
    """x rounded to float32 (inf beyond its range) when the run is float32, else x."""
    if f32:
        return np.float64(np.float32(x))
    return x


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
    """sum_squares of a float64 array: dot_row's vector code. The scalar loop below does not vectorise
    and took 5.6 us for 16,384 squares, this 2.8 us: M's serial section does two such sums a step."""
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
def sum_squares_rounded(flat, f32):
    """sum x^2 as the oracle computes it: in float32 the squares and the sum overflow to inf."""
    if f32:
        s = 0.0
        for v in flat:
            s += narrow(v * v, True)
        return narrow(s, True)
    return sum_squares(flat)


@subroutine(types.int64)
def record_slot(t, steps, every):
    """Trace slot of evaluation t, or -1 (same rule as lgd.backends.record_slot)."""
    if t % every == 0:
        return t // every
    if t == steps:
        return steps // every + 1
    return -1


@subroutine(types.UniTuple(types.float64, 3))
def sample_out(code_loss, loss_param, margin_loss, yi, f, f32):
    """(loss value, coefficient loss' * y (or loss' for the squared loss), y f) of one sample."""
    u = yi * f if margin_loss else f - yi
    value, slope = loss_row(code_loss, loss_param, u)
    value = narrow(value, f32)
    slope = narrow(slope, f32)
    return value, (slope * yi if margin_loss else slope), yi * f


@subroutine(types.void)
def forward_rows(X, i, count, Wt, zt):
    """zt[r] = X[i + r] Wt for r < count <= WIDE_ROWS: register tiles when count is WIDE_ROWS or
    TILE_ROWS, then the columns after them (all of them for other counts) a row at a time, fma after
    fma in k order as the tiles sum."""
    d, m = Wt.shape
    width = tile_columns_of(Wt)
    j0 = 0
    if count == WIDE_ROWS:
        while j0 + width <= m:
            forward_tile_wide(X, i, Wt, j0, zt)
            j0 += width
    elif count == TILE_ROWS:
        while j0 + width <= m:
            forward_tile(X, i, Wt, j0, zt)
            j0 += width
    if j0 == m:
        return
    for r in range(count):
        for j in range(j0, m):
            zt[r, j] = 0.0
        for k in range(d):
            x = X[i + r, k]
            for j in range(j0, m):
                zt[r, j] = fma(x, Wt[k, j], zt[r, j])


@subroutine(types.void)
def backward_rows(X, rows, count, qs, grad):
    """grad[k] += X[rows[0], k] qs[0] + ... + X[rows[count-1], k] qs[count-1] for every k (fma after fma
    in sample order), count <= WAITING_SAMPLES: register tiles of TILE_ROWS rows of grad (adding the
    whole groups of BACKWARD_GROUP samples, then TILE_ROWS more if as many are left), then the rest a
    sample at a time."""
    d, m = grad.shape
    width = tile_columns_of(grad)
    k_tiled, j_tiled = d - d % TILE_ROWS, m - m % width
    groups = count // BACKWARD_GROUP
    tiled = groups * BACKWARD_GROUP  # samples [0, tiled) are added on the tiled part of grad
    if groups > 0:
        for k in range(0, k_tiled, TILE_ROWS):
            for j in range(0, j_tiled, width):
                backward_tile_groups(X, rows, groups, qs, k, j, grad)
    while tiled + TILE_ROWS <= count:
        for k in range(0, k_tiled, TILE_ROWS):
            for j in range(0, j_tiled, width):
                backward_tile_short(X, rows, tiled, qs, k, j, grad)
        tiled += TILE_ROWS
    # What the tiles left: for the tiled samples, the columns after the tiles and the rows of grad
    # after them (nothing when d and m are whole tiles: no pass over k for nothing, 4% of S on one
    # thread); for the rest, all of grad.
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
def sample_block(X, Z, y, Wt, a, scale, act, act_param, code_loss, loss_param, margin_loss, linear, inv_n,
                 train_outer, record, neurons, f32, i0, i1, zs, member, p, q, qs, rows, grad, grad_a, neuron, stats,
                 train):
    """One pass over samples [i0, i1) of one configuration (the only place that evaluates the net).

    The rows z of X W^T come from X and Wt (d, m), TILE_ROWS samples at a time in register tiles
    (WIDE_ROWS from d >= WIDE_MIN_D) into zt = zs[member] (WIDE_ROWS, m) (a block's last few rows
    without tiles), or are read from Z (BLAS mode). Exactly one of Z and zs is None: that prunes the
    other mode's code at compile time.
    stats receives (sum of loss values, number with y f > 0, min y f). With train, also the
    gradient: added to grad (d, m) and grad_a (m,), or, with Z, G written over the rows of Z (the
    caller then forms G^T X); at record steps also the per-neuron margins min y a_j phi(z_ij). qs
    (WAITING_SAMPLES, m) and rows (WAITING_SAMPLES,) hold the samples waiting for the gradient
    (added WAITING_SAMPLES at a time up to m = WAITING_MAX_M, BACKWARD_GROUP at a time for wider
    nets). The per-sample buffers (zt, p, q, qs, rows, grad_a, neuron) may have longer rows than m:
    a team pads them, so that no two threads write the same cache line. Nothing here allocates, so
    nothing can fail while the other threads of a team wait at a barrier.

    Rows, products and gradients are in the dtype of X (z, p, q, a, grad and grad_a share it): a
    float32 run computes in float32. Per-sample losses, the risk and the margins are float64 sums
    of values rounded as the oracle rounds them.
    """
    d, m = Wt.shape
    if train:
        if Z is None:
            for k in range(d):
                for j in range(m):
                    grad[k, j] = 0.0
        for j in range(m):
            grad_a[j] = 0.0
            neuron[j] = np.inf
    risk, correct, margin = 0.0, 0.0, np.inf
    pending = 0
    waiting = WAITING_SAMPLES if m <= WAITING_MAX_M else BACKWARD_GROUP
    tile_start = tile_end = i0  # samples [tile_start, tile_end) have their z rows in zt
    if zs is not None:
        zt = zs[member]  # the member's rows (a view taken once: each costs two atomic reference counts)
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
            if Z is not None:
                activate_row(act, act_param, Z, i, p, q, m)
            if zs is not None:
                if i >= tile_end:  # the rows of the next tile's samples (fewer at the block's end)
                    count = WIDE_ROWS if d >= WIDE_MIN_D and i1 - i >= WIDE_ROWS else min(TILE_ROWS, i1 - i)
                    forward_rows(X, i, count, Wt, zt)
                    tile_start, tile_end = i, i + count
                activate_row(act, act_param, zt, i - tile_start, p, q, m)
            f = scale * np.float64(dot_row(a, p, m))
        value, coef, yf = sample_out(code_loss, loss_param, margin_loss, yi, f, f32)
        risk += value
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
                if train_outer:
                    for j in range(m):
                        grad_a[j] = fma(cs, p[j], grad_a[j])
                if record and neurons:
                    for j in range(m):
                        neuron[j] = min(neuron[j], yi * a[j] * p[j])
    if zs is not None and pending > 0:  # the last samples still waiting, fewer than `waiting`
        backward_rows(X, rows, pending, qs, grad)
    stats[0] = risk
    stats[1] = correct
    stats[2] = margin


@subroutine(types.UniTuple(types.float64, 2))
def close_step(grad, grad_a, risk_sum, n, train_outer, f32):
    """(risk, squared gradient norm) of a step as the oracle rounds them; grad is narrowed in place."""
    if f32:
        entries = flat(grad)
        for k in range(entries.size):
            entries[k] = narrow(entries[k], True)
        for j in range(grad_a.size):
            grad_a[j] = narrow(grad_a[j], True)
    risk = narrow(narrow(risk_sum, f32) / n, f32)
    grad_sq = sum_squares_rounded(flat(grad), f32)
    if train_outer:
        grad_sq += sum_squares_rounded(grad_a, f32)
    return risk, grad_sq


@subroutine(types.void)
def record_step(traces, neuron_trace, c, slot, n, risk, grad_sq, stats, Wt, a, train_outer, neurons, neuron,
                n_test, test_stats, f32):
    weight_sq = sum_squares(flat(Wt))
    if train_outer:
        weight_sq += sum_squares(a)
    traces[0][c, slot] = risk
    traces[1][c, slot] = stats[1] / n
    traces[2][c, slot] = math.sqrt(grad_sq)
    traces[3][c, slot] = math.sqrt(weight_sq)
    traces[4][c, slot] = stats[2]
    if neurons:
        for j in range(neuron.size):
            neuron_trace[c, slot, j] = neuron[j]
    if n_test > 0:
        traces[5][c, slot] = narrow(narrow(test_stats[0], f32) / n_test, f32)
        traces[6][c, slot] = test_stats[1] / n_test


@subroutine(types.void)
def store_weights(W, A, c, Wt, a):
    """W[c] = Wt^T and A[c] = a (loops: a slice assignment compiles numba's shape-mismatch error
    path, seconds of every cold compile)."""
    d, m = Wt.shape
    for j in range(m):
        for k in range(d):
            W[c, j, k] = Wt[k, j]
        A[c, j] = a[j]


@subroutine(types.void)
def update(Wt, a, grad, grad_a, eta, train_outer, f32):
    """W <- W - eta grad (and a), with the oracle's rounding of eta * grad in float32."""
    d, m = Wt.shape
    for k in range(d):
        for j in range(m):
            Wt[k, j] = Wt[k, j] - narrow(eta * grad[k, j], f32)
    if train_outer:
        for j in range(m):
            a[j] = a[j] - narrow(eta * grad_a[j], f32)


@subroutine(types.boolean)
def step_end(c, t, steps, every, n, stats, grad, grad_a, Wt, a, a_step, eta, train_outer, f32, traces, neuron_trace,
             neuron, n_test, test_stats, diverged):
    """After the pass over the samples at step t: divergence test, records, update. False if diverged."""
    risk, grad_sq = close_step(grad, grad_a, stats[0], n, train_outer, f32)
    if not (math.isfinite(risk) and math.isfinite(grad_sq)):
        diverged[c] = t
        return False
    slot = record_slot(t, steps, every)
    if slot >= 0:
        record_step(traces, neuron_trace, c, slot, n, risk, grad_sq, stats, Wt, a_step, train_outer,
                    neuron_trace.shape[1] > 0, neuron, n_test, test_stats, f32)
    if t < steps:
        update(Wt, a, grad, grad_a, eta, train_outer, f32)
    return True


@subroutine(types.void)
def sum_blocks(parts, blocks, out):
    """out = the sum of parts[0 .. blocks-1], in block order."""
    d, m = out.shape
    for k in range(d):
        for j in range(m):
            out[k, j] = parts[0, k, j]
    for b in range(1, blocks):
        for k in range(d):
            for j in range(m):
                out[k, j] += parts[b, k, j]


@subroutine(types.void)
def reduce_blocks(blocks, test, grads, grads_a, neurons_part, stats, grad, grad_a, neuron, total, grads_blas):
    """Sum the blocks' partial gradients (grads, or grads_blas from BLAS) and statistics into grad,
    grad_a, neuron and total."""
    d, m = grad.shape
    if grads_blas is not None:  # None: pruned at compile time
        sum_blocks(grads_blas, blocks, grad)
    else:
        sum_blocks(grads, blocks, grad)
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


@worker
def run_team(member, team, sync, go, queue, configs, X, y, X_test, y_test, W, A, etas, diverged, traces,
             neuron_trace, act, act_param, code_loss, loss_param, margin_loss, scale, train_outer, linear, t_start,
             t_stop, steps, every, f32, Wt, a, a_step, zs, ps, qs, pending_q, pending_rows, grads, grads_a,
             neurons_part, stats, grad, grad_a, neuron, total, Z, Z_test, grads_blas):
    """Evaluations [t_start, t_stop) of configurations of `configs`, one after the other, by a team.

    The `team` threads (Python threads calling this nogil kernel with member = 0 .. team-1 and the
    same shared buffers) each pass over their block of the samples into their own partial
    gradient; at a barrier member 0 sums the blocks, records, checks divergence and updates the
    shared weights (Wt, a); a second barrier releases the next step. The threads stay in compiled
    code for the whole chunk, waiting on a spinning barrier: waking pooled threads at every step
    costs more than a small step's work. A team of one is the serial driver; its barriers cost an
    atomic add each. The team's member 0 takes the configurations one at a time from `queue`
    (queue[0] counts those taken) and returns when none is left: in a sweep, the teams of one that
    the threads run share one queue, so a thread that runs faster takes more of them (a split fixed
    in advance left one thread idle for 3-4% of a sweep's time, up to 10% of a chunk). Which thread
    runs a configuration does not change its results.

    Buffers in the run's dtype: Wt, a, a_step (the outer weights the step reads), zs, ps, qs,
    pending_q, grads, grads_a, Z, Z_test, grads_blas; pending_rows int64; the rest float64. The
    fused loops' tile rows zs are None with BLAS, and Z, Z_test and grads_blas None without.

    With blas, each member forms its block's products through BLAS (gemm calls: the caller limits
    BLAS to one thread when the team is the parallelism): Z_b = X_b W^T into its rows of Z, which the
    pass over the samples overwrites with G_b, then X_b^T G_b into grads_blas[member]. Otherwise
    the fused loops of sample_block do both products without leaving L1.
    """
    if t_start >= t_stop:
        return
    m, d = W.shape[1], W.shape[2]
    n = X.shape[0]
    n_test = X_test.shape[0]
    inv_n = 1.0 / n
    neurons = neuron_trace.shape[1] > 0
    i0, i1 = (member * n) // team, ((member + 1) * n) // team
    k0, k1 = (member * n_test) // team, ((member + 1) * n_test) // team
    while True:
        if member == 0:  # the team's next configuration, from the queue the teams of a call share
            go[1] = atomic_add(queue, 0, 1)
            if go[1] < len(configs):
                c = configs[go[1]]
                for j in range(m):
                    for k in range(d):
                        Wt[k, j] = W[c, j, k]
                    a[j] = A[c, j]
                    a_step[j] = a[j]
        barrier(sync, team)
        if go[1] >= len(configs):
            return
        c = configs[go[1]]
        eta = np.float64(etas[c])
        for t in range(t_start, t_stop):
            record = record_slot(t, steps, every) >= 0
            test = record and n_test > 0
            if grads_blas is not None:
                blas_rows_times(X, i0, i1, Wt, Z)
                if test:
                    blas_rows_times(X_test, k0, k1, Wt, Z_test)
            # The training block, then at record steps the test block: one call site, so one compiled
            # sample_block (a literal True / False would type, and compile, twice).
            for part in range(2 if test else 1):
                train = part == 0
                sample_block(X if train else X_test, Z if train else Z_test, y if train else y_test, Wt, a_step,
                             scale, act, act_param, code_loss, loss_param, margin_loss, linear, inv_n, train_outer,
                             record, neurons, f32, i0 if train else k0, i1 if train else k1, zs, member, ps[member],
                             qs[member], pending_q[member], pending_rows[member], grads[member], grads_a[member],
                             neurons_part[member], stats[member if train else team + member], train)
            if grads_blas is not None:
                blas_rows_transposed_times(X, i0, i1, Z, grads_blas[member])
            barrier(sync, team)
            if member == 0:
                reduce_blocks(team, test, grads, grads_a, neurons_part, stats, grad, grad_a, neuron, total,
                              grads_blas)
                go[0] = step_end(c, t, steps, every, n, total[0], grad, grad_a, Wt, a, a_step, eta, train_outer, f32,
                                 traces, neuron_trace, neuron, n_test, total[1], diverged)
                for j in range(m):
                    a_step[j] = a[j]
            barrier(sync, team)
            if not go[0]:
                break
        if member == 0:
            store_weights(W, A, c, Wt, a)
