"""LLVM intrinsics the kernels call as functions: bit casts, fma, vector code, atomics, spin-waiting.

What lives here: what numba cannot say in Python, written as LLVM instructions through
``numba.extending.intrinsic``: reinterpreting bits (exp's exponent arithmetic), ``fma`` with one
rounding, the dtype of an array as a cast target (``like``), a flat view without ravel's code, a run
of rows as one 1-d array (``rows_flat``), the vector operations of the register tiles (at the
process's VECTOR_BYTES, and at AVX2's HALF_BYTES) and of :func:`dot_lanes`, a prefetch for writing,
and the atomics, pause and sched_yield of a team's barrier. Everything resolved by name at load time,
so the on-disk cache keeps working. No formulas and no loops over the data: those live in exp_log1p,
formulas, passes (the passes over entries in vector code), tiles and step.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.numpy_support import as_dtype

from .compiler import VECTOR_BYTES as _VECTOR_BYTES
from .compiler import impl_ret_borrowed


def _bitcast(name, source, target):
    """An intrinsic reinterpreting the bits of a `source` value as a `target` value (no conversion)."""
    def typer(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))
        return target(source), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


double_from_bits = _bitcast("double_from_bits", types.uint64, types.float64)
bits_from_double = _bitcast("bits_from_double", types.float64, types.uint64)
float_from_bits = _bitcast("float_from_bits", types.int32, types.float32)
bits_from_float = _bitcast("bits_from_float", types.float32, types.int32)


@intrinsic
def fma(typingctx, x, y, z):
    """x * y + z with one rounding (llvm.fma: vectorises, unlike a libm call), all three float64 or all
    float32 (mixing them would be a silent conversion: it does not type)."""
    if not (x == y == z and x in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return x(x, y, z), codegen


def llvm_fma(builder, x, y, z):
    """The instruction llvm.fma(x, y, z) (one rounding) for float32 or float64 scalars or vectors of any length,
    all three of one type: what the intrinsics' code generators call."""
    kind = x.type
    element = kind.element if isinstance(kind, ir.VectorType) else kind
    bits = 64 if isinstance(element, ir.DoubleType) else 32
    name = f"llvm.fma.v{kind.count}f{bits}" if isinstance(kind, ir.VectorType) else f"llvm.fma.f{bits}"
    return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(kind, [kind] * 3), name),
                        [x, y, z])


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


@intrinsic
def rows_flat(typingctx, array, row, count):
    """Rows [row, row + count) of a C-contiguous 2-d array as one 1-d array (count times the row length
    entries), with no bounds check and no reference of its own (its meminfo is null, so counting code
    counts nothing): the array it views must outlive it, as every array of a kernel call does. What
    lets the activation take a run of rows in one loop (step.fused_block)."""
    if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"):
        return None
    result = array.copy(ndim=1)

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        length = cgutils.unpack_tuple(builder, source.shape, 2)[1]
        view = context.make_array(result)(context, builder)
        context.populate_array(view, data=builder.gep(source.data, [builder.mul(args[1], length)]),
                               shape=[builder.mul(args[2], length)], strides=[source.itemsize],
                               itemsize=source.itemsize, meminfo=None)
        return view._getvalue()
    return result(array, types.intp, types.intp), codegen


@intrinsic
def row_block(typingctx, array, row, count):
    """Rows [row, row + count) of a C-contiguous 2-d array as a C-contiguous 2-d array, as rows_flat takes
    them (no bounds check, no reference of its own): what the backward tiles, which read a C array's rows
    from its start, take of a larger block of rows (step.split_backward)."""
    if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        length = cgutils.unpack_tuple(builder, source.shape, 2)[1]
        view = context.make_array(array)(context, builder)
        row_bytes = builder.mul(length, source.itemsize)
        context.populate_array(view, data=builder.gep(source.data, [builder.mul(args[1], length)]),
                               shape=[args[2], length], strides=[row_bytes, source.itemsize],
                               itemsize=source.itemsize, meminfo=None)
        return view._getvalue()
    return array(array, types.intp, types.intp), codegen


# The register tiles' vectors: 64 bytes (8 float64 / 16 float32 lanes) where the target has AVX-512,
# else AVX2's 32 (compiler.VECTOR_BYTES). HALF_BYTES is AVX2's width at both: the tiles of the columns a
# 64-byte tile leaves.
VECTOR_BYTES = _VECTOR_BYTES
HALF_BYTES = 32
HALF_TILES = VECTOR_BYTES > HALF_BYTES  # a narrower tile after the full ones: only with 64-byte vectors


def tile_columns(dtype, vector_bytes=VECTOR_BYTES):
    """Columns of one tile: two vectors of `dtype` (a numpy dtype)."""
    return 2 * vector_bytes // np.dtype(dtype).itemsize


def tile_parts(context, builder, array_type, value):
    """(data pointer, row length) of a C-contiguous 2-d array."""
    array = context.make_array(array_type)(context, builder, value)
    return array.data, cgutils.unpack_tuple(builder, array.shape, 2)[1]


def vector_ops(context, builder, dtype, vector_bytes=VECTOR_BYTES):
    """(vector type, lanes, load(pointer), store(value, pointer), broadcast(scalar), fma(a, b, c)) for
    vectors of `vector_bytes` of `dtype`."""
    element = context.get_value_type(dtype)
    lanes = vector_bytes // (dtype.bitwidth // 8)
    vector = ir.VectorType(element, lanes)
    align = dtype.bitwidth // 8
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    def load(pointer):
        return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=align)

    def store(value, pointer):
        builder.store(value, builder.bitcast(pointer, vector.as_pointer()), align=align)

    def broadcast(scalar):
        one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), zeros)

    return vector, lanes, load, store, broadcast, lambda a, b, c: llvm_fma(builder, a, b, c)


def _columns_of(vector_bytes):
    def columns_of(typingctx, array):
        """tile_columns of the array's dtype at this width, as a compile-time constant."""
        if not isinstance(array, types.Array):
            return None

        def codegen(context, builder, signature, args):
            return ir.Constant(ir.IntType(64), tile_columns(as_dtype(array.dtype), vector_bytes))
        return types.int64(array), codegen
    columns_of.__name__ = columns_of.__qualname__ = f"tile_columns_of_{vector_bytes}"
    return intrinsic(columns_of)


tile_columns_of = _columns_of(VECTOR_BYTES)
half_tile_columns_of = _columns_of(HALF_BYTES)


def tiled_arrays(arrays):
    """True when every array type is 2-d, C-contiguous and of one float dtype: what the tiles need."""
    dtypes = {a.dtype for a in arrays}
    return (all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in arrays) and len(dtypes) == 1
            and dtypes.pop() in (types.float32, types.float64))


@intrinsic
def dot_lanes(typingctx, a, p, count):
    """The eight partial sums of dot_row: s_r = sum of a[j] p[j] over j < count with j = r (mod 8), fma
    after fma in j order, as (s_0, ..., s_7); count a multiple of 8. In vector code, one vector of eight
    lanes whatever the tiles' width (the eight chains are what the result is): 64 bytes of float64,
    which LLVM splits into two AVX2 vectors where the CPU has no AVX-512, and 32 of float32. LLVM does
    not vectorise the eight scalar chains."""
    if not (isinstance(a, types.Array) and isinstance(p, types.Array) and a.ndim == p.ndim == 1
            and a.dtype == p.dtype and a.dtype in (types.float32, types.float64)):
        return None
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        eight_lanes = dtype.bitwidth  # bytes: 8 lanes of bitwidth / 8 bytes
        vector, lanes, load, store, broadcast, fma_ = vector_ops(context, builder, dtype, eight_lanes)
        a_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        p_data = context.make_array(signature.args[1])(context, builder, args[1]).data
        count = args[2]
        vectors = 8 // lanes
        acc = [cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(vectors)]
        with cgutils.for_range(builder, builder.sdiv(count, ir.Constant(count.type, 8))) as loop:
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


# Lanes of product_lanes' sums: two vectors of eight for each, so that each row's chains are half as long (a row
# of m = 64 was bound by their latency with one vector).
PRODUCT_LANES = 16


@intrinsic
def product_lanes(typingctx, a, p, e, count):
    """(sum a[j] p[j], D+, D-) over j < count, for the outputs in product form (formulas.product_row): D+ = prod
    (1 + e[j]) - 1 over a[j] > 0 and D- over a[j] < 0, each held less 1 (D <- fma(D, 1 + e, e)); in
    PRODUCT_LANES lanes (j mod 16, in j order), the last count % 16 terms into lane 0, then lane r and lane r + 8
    joined, and those eight joined as dot_row combines its lanes, ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 +
    l7)), the D's by x + y + x y. column_block sums a group's rows in this order too. Vectors of eight lanes
    whatever the tiles' width, as dot_lanes; the tail and the joins here, not in Python, whose scalar chains and
    extracted lanes took a third of a row's time at m = 64. float32 kernels compile it too (never run)."""
    if not (all(isinstance(x, types.Array) and x.ndim == 1 for x in (a, p, e)) and a.dtype == p.dtype == e.dtype
            and a.dtype in (types.float32, types.float64)):
        return None
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        element = context.get_value_type(dtype)
        vector = ir.VectorType(element, 8)
        bits = dtype.bitwidth
        a_data, p_data, e_data = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                  for k in range(3))
        count = args[3]
        step = ir.Constant(count.type, PRODUCT_LANES)
        zeros = ir.Constant(vector, [0.0] * 8)
        # [sum, D+, D-] x two vectors
        acc = [[cgutils.alloca_once_value(builder, zeros) for _ in range(2)] for _ in range(3)]

        def fma(x, y, z):
            return llvm_fma(builder, x, y, z)

        def update(sum_, pos, neg, av, pv, ev, zero):
            """The three accumulators after the terms (av, pv, ev) (vectors, or scalars with a scalar zero)."""
            # D (1 + e) + e in one fma: the chain from one D to the next is that fma alone (D + e + D e took an
            # addition more on it), and 1 + e off the chain; its rounding, an ulp of 1 times D, keeps D's digits.
            # The other sign's D is kept by a select (a masked fma with AVX-512), as fma(D, 1, 0) would keep it.
            one = ir.Constant(zero.type, [1.0] * 8) if isinstance(zero.type, ir.VectorType) else ir.Constant(
                zero.type, 1.0)
            positive = builder.fcmp_ordered(">", av, zero)
            factor = builder.fadd(one, ev)
            return (fma(av, pv, sum_), builder.select(positive, fma(pos, factor, ev), pos),
                    builder.select(positive, neg, fma(neg, factor, ev)))

        def load(data, at):
            return builder.load(builder.bitcast(builder.gep(data, [at]), vector.as_pointer()), align=bits // 8)

        whole = builder.sdiv(count, step)  # a negative count: no iteration
        with cgutils.for_range(builder, whole) as loop:
            base = builder.mul(loop.index, step)
            for half in range(2):
                at = builder.add(base, ir.Constant(count.type, 8 * half))
                values = update(*(builder.load(acc[q][half]) for q in range(3)), load(a_data, at), load(p_data, at),
                                load(e_data, at), zeros)
                for q in range(3):
                    builder.store(values[q], acc[q][half])
        lane0 = ir.Constant(ir.IntType(32), 0)
        start = builder.mul(whole, step)
        with cgutils.for_range(builder, builder.sub(count, start)) as loop:
            at = builder.add(start, loop.index)
            vectors = [builder.load(acc[q][0]) for q in range(3)]
            values = update(*(builder.extract_element(v, lane0) for v in vectors),
                            *(builder.load(builder.gep(data, [at])) for data in (a_data, p_data, e_data)),
                            ir.Constant(element, 0.0))
            for q in range(3):
                builder.store(builder.insert_element(vectors[q], values[q], lane0), acc[q][0])

        def pick(value, lanes):
            return builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(ir.IntType(32), len(lanes)), lanes))

        def add(x, y):
            return builder.fadd(x, y)

        def join(x, y):  # (1 + x)(1 + y) - 1
            return fma(x, y, builder.fadd(x, y))

        def combine(slots, op):
            # In shuffles of halves (extracting eight lanes one by one took more than the loop at m = 64).
            value = op(builder.load(slots[0]), builder.load(slots[1]))
            four = op(pick(value, [0, 1, 2, 3]), pick(value, [4, 5, 6, 7]))  # l_r (joined) l_{r+4}
            two = op(pick(four, [0, 2]), pick(four, [1, 3]))  # (l0, l4) with (l1, l5); (l2, l6) with (l3, l7)
            return op(builder.extract_element(two, lane0), builder.extract_element(two, ir.Constant(ir.IntType(32), 1)))

        return context.make_tuple(builder, signature.return_type,
                                  [combine(acc[0], add), combine(acc[1], join), combine(acc[2], join)])
    return types.UniTuple(dtype, 3)(a, p, e, types.intp), codegen


@intrinsic
def narrowed_square_lanes(typingctx, flat, count):
    """The eight partial sums of step.sum_squares_narrowing over a float64 array: narrow(flat[k]) written back
    to flat[k] (narrow: rounded to float32 and widened back), then s_r = the sum, in float64 and in k order, of
    flat[k] * flat[k] over k < count with k = r (mod 8); count a multiple of 8. One vector of eight float64
    lanes (LLVM splits it in two on AVX2): the scalar loop's eight chains, the same operations on each,
    without its conversions a value one at a time (a float32 run's gradient norm took 18 us of M's step in
    them, in the team's serial section)."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype == types.float64):
        return None

    def codegen(context, builder, signature, args):
        double, single = ir.DoubleType(), ir.FloatType()
        vector, narrow_vector = ir.VectorType(double, 8), ir.VectorType(single, 8)
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        count = args[1]
        acc = cgutils.alloca_once_value(builder, ir.Constant(vector, None))
        with cgutils.for_range(builder, builder.sdiv(count, ir.Constant(count.type, 8))) as loop:
            at = builder.bitcast(builder.gep(data, [builder.mul(loop.index, ir.Constant(count.type, 8))]),
                                 vector.as_pointer())
            narrowed = builder.fpext(builder.fptrunc(builder.load(at, align=8), narrow_vector), vector)
            builder.store(narrowed, at, align=8)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(narrowed, narrowed)), acc)
        total = builder.load(acc)
        sums = [builder.extract_element(total, ir.Constant(ir.IntType(32), r)) for r in range(8)]
        return context.make_tuple(builder, signature.return_type, sums)
    return types.UniTuple(types.float64, 8)(flat, types.intp), codegen


@intrinsic
def prefetch_for_write(typingctx, array, offset):
    """A hint that the cache line holding byte `offset` of array's data is about to be written: fetch it in a
    writable state (x86's PREFETCHW where the CPU has prfchw; a plain prefetch, or nothing, elsewhere). It
    changes no value, and an offset past the array's end faults no more than a prefetch does: never."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]), "llvm.prefetch.p0")
        # write (1), keep in all cache levels (3), data cache (1)
        builder.call(function, [address, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


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

