"""e^-|z| in vector code, and the product form's pass over entries built on it.

What lives here: exp of x <= 0 over vectors of eight float64 lanes, written as LLVM instructions, in two forms;
:data:`exp_pass`, e^-|z| over a span (formulas.activate_span's softplus family, float64); and
:data:`product_pass`, which turns a span of pre-activations z into e = e^-|z|, l and phi' (and phi'') for the
outputs in product form (formulas.product_span). Where numba's target has AVX-512 (:data:`TABLE_EXP`), exp reads
a table of 2^(j/16) with a two-register permute and applies 2^k with ``vscalefpd``, LLVM emitting neither from
the loops numba gives it: a polynomial of degree 6 where the table-free form needs 11 (docs/performance.md).
Elsewhere exp is exp_log1p.exp_nonpositive's operations one for one, so that a host without AVX-512 computes
the bits it computed before. The rest of an entry's formulas are in the loop that computes its exp, where the
sigmoid's division overlaps exp's fmas: l as the scalar code forms it (the same bits), phi' with its sigmoid
in one division (within an ulp of activate_span's, which takes e times 1 / (1 + e) for z < 0).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import polynomials as _poly
from .compiler import target_avx512
from .intrinsics import llvm_fma

# The table form needs AVX-512's permutes and scaling (x86 intrinsics that do not select on an AVX2 target).
TABLE_EXP = target_avx512()
LANES = 8
# The table's two registers of eight lanes, which one vpermi2pd reads (index bits 0-3; the higher bits ignored).
assert _poly.EXP_TABLE_SIZE == 2 * LANES
# Below this e^x is 0 (and the reduction stays exact): exp_nonpositive's clamp.
_CLAMP = -746.0

_DOUBLE = ir.DoubleType()
_VECTOR = ir.VectorType(_DOUBLE, LANES)
_BITS = ir.VectorType(ir.IntType(64), LANES)


def _splat(value):
    return ir.Constant(_VECTOR, [float(value)] * LANES)


def _fma(builder):
    """fma(x, y, z) with one rounding (intrinsics.llvm_fma) at this builder."""
    return lambda x, y, z: llvm_fma(builder, x, y, z)


def _reduce(builder, xc, shifter):
    """(xc / ln2 + shifter, rounded to the shifter's ulp, and r = xc less that multiple of ln2), as exp_reduced."""
    fma = _fma(builder)
    shifted = fma(xc, _splat(_poly.INV_LN2), _splat(shifter))
    kf = builder.fsub(shifted, _splat(shifter))
    return shifted, kf, fma(kf, _splat(-_poly.LN2_LO), fma(kf, _splat(-_poly.LN2_HI), xc))


def exp_table(builder, xc):
    """e^xc for xc in [-746, 0] (or nan): n = xc / (ln2 / 16) rounded, j = n mod 16 (the shifted value's low
    bits, which the permute reads), e^xc = 2^floor(n / 16) (2^(j/16)_hi + 2^(j/16)_hi (e^r - 1) + 2^(j/16)_lo),
    with the scaling's one rounding where the result is subnormal (polynomials.EXP_TABLE_*)."""
    fma = _fma(builder)
    shifted, kf, r = _reduce(builder, xc, _poly.SHIFTER_TABLE)
    q = _splat(_poly.EXP_TABLE_Q[-1])
    for coefficient in reversed(_poly.EXP_TABLE_Q[:-1]):
        q = fma(q, r, _splat(coefficient))
    expm1 = fma(q, builder.fmul(r, r), r)
    permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR, _BITS, _VECTOR]),
                                             "llvm.x86.avx512.vpermi2var.pd.512")
    index = builder.bitcast(shifted, _BITS)

    def entry(table):
        return builder.call(permute, [ir.Constant(_VECTOR, list(table[:LANES])), index,
                                      ir.Constant(_VECTOR, list(table[LANES:]))])
    high = entry(_poly.EXP_TABLE_HI)
    value = builder.fadd(high, fma(high, expm1, entry(_poly.EXP_TABLE_LO)))
    scale = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR, ir.IntType(8), ir.IntType(32)]),
        "llvm.x86.avx512.mask.scalef.pd.512")
    # value 2^floor(kf), every lane (mask all ones), in the current rounding mode (4)
    return builder.call(scale, [value, kf, ir.Constant(_VECTOR, ir.Undefined), ir.Constant(ir.IntType(8), -1),
                                ir.Constant(ir.IntType(32), 4)])


def exp_polynomial(builder, xc):
    """exp_log1p.exp_nonpositive of a clamped xc, its operations one for one (its bits)."""
    fma = _fma(builder)
    shifted, _, r = _reduce(builder, xc, _poly.SHIFTER_NONPOSITIVE)
    r2 = builder.fmul(r, r)
    c = [None] + [_splat(value) for value in _poly.EXP_P]

    def pair(high, low):
        return fma(c[high], r, c[low])
    poly = fma(fma(fma(fma(pair(9, 8), r2, pair(7, 6)), r2, pair(5, 4)), r2, pair(3, 2)), r2,
               fma(c[1], r, _splat(0.5)))
    expm1 = fma(poly, r2, r)
    factor = builder.bitcast(builder.shl(builder.bitcast(shifted, _BITS), ir.Constant(_BITS, [52] * LANES)), _VECTOR)
    return builder.fmul(fma(expm1, factor, factor), _splat(2.0 ** -_poly.NONPOSITIVE_OFFSET))


def exp_of_z(builder, z, table):
    """e^-|z| of a vector z: -|z| clamped from below as exp_nonpositive clamps it (a nan passes)."""
    fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR]), "llvm.fabs.v8f64")
    x = builder.fneg(builder.call(fabs, [z]))
    xc = builder.select(builder.fcmp_ordered("<", x, _splat(_CLAMP)), _splat(_CLAMP), x)
    return (exp_table if table else exp_polynomial)(builder, xc)


def entries(builder, z, c, table, curvature):
    """(e, l, phi', phi'' or None) of a vector z, c the (double) parameter of the softplus family: e = e^-|z|,
    l = max(z, c z) (max(z, 0) where c = 0; as numba's max, the second where it is greater, else the first),
    phi' = (1 - c) s + c with s = sigmoid(z) = (1 if z >= 0 else e) / (1 + e), and phi'' = (1 - c) (e s) s where
    z >= 0, (1 - c) s (1 - s) below.
    The sigmoid is one division, correctly rounded: taking it as e r1 for z < 0 (activate_span's form, which
    shares r1 with its log1p) cost a multiply more on the FMA pipes that bound this loop (docs/performance.md).
    c lies in [0, 1] (the catalog's bound), so l is z where z >= 0 and c z (or 0) below: a blend on the sign
    test phi' takes anyway, in place of a max."""
    fma = _fma(builder)
    e = exp_of_z(builder, z, table)

    def broadcast(scalar):
        one = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_VECTOR, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
    cz, cbar = broadcast(c), broadcast(builder.fsub(ir.Constant(_DOUBLE, 1.0), c))
    u = builder.fadd(_splat(1.0), e)
    upper = builder.fcmp_unordered(">=", z, _splat(0.0))  # z >= 0 or nan
    other = builder.select(builder.fcmp_unordered("!=", c, ir.Constant(_DOUBLE, 0.0)), builder.fmul(cz, z),
                           _splat(0.0))
    lin = builder.select(upper, z, other)
    sigmoid = builder.fdiv(builder.select(upper, _splat(1.0), e), u)
    dphi = fma(cbar, sigmoid, cz)
    if not curvature:
        return e, lin, dphi, None
    # sigmoid(z) sigmoid(-z) from the one division: (e s) s where z >= 0 (s = 1 / (1 + e)), s (1 - s) below (1 - s
    # in [1/2, 1] there, without cancellation); a second division, 1 / (1 + e) for z < 0, took the curvature
    # pass 10% longer
    first = builder.select(upper, builder.fmul(e, sigmoid), sigmoid)
    second = builder.select(upper, sigmoid, builder.fsub(_splat(1.0), sigmoid))
    return e, lin, dphi, builder.fmul(builder.fmul(cbar, first), second)


def _memory(builder, element):
    """(the arrays' vector of eight `element`s, load(pointer), store(vector, pointer)): vectors of float64 in
    registers, float32 arrays widened on loading and rounded on storing."""
    narrow = ir.VectorType(element, LANES)
    align = 8 if element == _DOUBLE else 4

    def load(pointer):
        value = builder.load(builder.bitcast(pointer, narrow.as_pointer()), align=align)
        return value if element == _DOUBLE else builder.fpext(value, _VECTOR)

    def store(value, pointer):
        value = value if element == _DOUBLE else builder.fptrunc(value, narrow)
        builder.store(value, builder.bitcast(pointer, narrow.as_pointer()), align=align)
    return narrow, load, store


def _span(context, builder, source, targets, compute, count, element):
    """Load eight entries of `source` at a time (pointers to `element`s), compute(vector) -> vectors, store them into
    `targets`; the last count % 8 through a vector of eight in memory, zeros beyond the span, whose lanes give the
    same bits as in a full vector. float32 spans are widened to float64 and rounded back (a float32 kernel
    compiles the product form's code but never runs it)."""
    narrow, load, store = _memory(builder, element)
    lanes = ir.Constant(count.type, LANES)
    whole = builder.sdiv(count, lanes)  # a negative count: no iteration, and no rest
    with cgutils.for_range(builder, whole) as loop:
        at = builder.mul(loop.index, lanes)
        for pointer, value in zip(targets, compute(load(builder.gep(source, [at])))):
            store(value, builder.gep(pointer, [at]))
    start = builder.mul(whole, lanes)
    rest = builder.sub(count, start)
    with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(count.type, 0)), likely=False):
        buffer = cgutils.alloca_once(builder, narrow)
        builder.store(ir.Constant(narrow, [0.0] * LANES), buffer)
        slots = builder.bitcast(buffer, element.as_pointer())

        def each_lane(move):
            for lane in range(LANES):
                index = ir.Constant(count.type, lane)
                with builder.if_then(builder.icmp_signed("<", index, rest)):
                    move(builder.gep(slots, [index]), index)
        first = builder.gep(source, [start])
        each_lane(lambda slot, index: builder.store(builder.load(builder.gep(first, [index])), slot))
        for pointer, value in zip(targets, compute(load(slots))):
            store(value, slots)
            target = builder.gep(pointer, [start])
            each_lane(lambda slot, index: builder.store(builder.load(slot), builder.gep(target, [index])))


def _spans(arrays):
    """Whether the array types are 1-d, C-contiguous, of one float dtype."""
    return (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays)
            and len({a.dtype for a in arrays}) == 1 and arrays[0].dtype in (types.float32, types.float64))


def _exp_pass(table):
    def exp_pass(typingctx, z, e, count):
        """e[k] = e^-|z[k]| for k < count (1-d C-contiguous float64 spans), eight at a time (:func:`_span`)."""
        if not (_spans((z, e)) and z.dtype == types.float64 and isinstance(count, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            data = [context.make_array(signature.args[k])(context, builder, args[k]).data for k in range(2)]
            count = context.cast(builder, args[2], signature.args[2], types.intp)
            _span(context, builder, data[0], data[1:], lambda z: [exp_of_z(builder, z, table)], count, _DOUBLE)
            return context.get_dummy_value()
        return types.void(z, e, count), codegen
    exp_pass.__name__ = exp_pass.__qualname__ = f"exp_pass_{'table' if table else 'polynomial'}"
    return intrinsic(exp_pass)


def _product_pass(table):
    def product_pass(typingctx, c, z, p, q, r, count):
        """The product form's pass over `count` entries of the 1-d C-contiguous spans z, p, q and r (or None):
        z[k] becomes e, p[k] l, q[k] phi' and r[k] phi'' (:func:`entries`), eight at a time (:func:`_span`)."""
        arrays = (z, p, q) + (() if isinstance(r, types.NoneType) else (r,))
        if not (_spans(arrays) and isinstance(c, types.Float) and isinstance(count, types.Integer)):
            return None
        curvature = len(arrays) == 4

        def codegen(context, builder, signature, args):
            param = context.cast(builder, args[0], signature.args[0], types.float64)
            count = context.cast(builder, args[5], signature.args[5], types.intp)
            data = [context.make_array(signature.args[k])(context, builder, args[k]).data
                    for k in range(1, 1 + len(arrays))]

            def compute(z):
                values = entries(builder, z, param, table, curvature)
                return values if curvature else values[:3]
            _span(context, builder, data[0], data, compute, count, data[0].type.pointee)
            return context.get_dummy_value()
        return types.void(c, z, p, q, r, count), codegen
    product_pass.__name__ = product_pass.__qualname__ = f"product_pass_{'table' if table else 'polynomial'}"
    return intrinsic(product_pass)


# Both forms, for the tests (the table form runs only where the target has AVX-512); the kernels take the
# target's, exp_pass and product_pass.
exp_pass_table, exp_pass_polynomial = _exp_pass(True), _exp_pass(False)
product_pass_table, product_pass_polynomial = _product_pass(True), _product_pass(False)
exp_pass = exp_pass_table if TABLE_EXP else exp_pass_polynomial
product_pass = product_pass_table if TABLE_EXP else product_pass_polynomial
