"""exp and log1p as plain arithmetic, float64 and float32, for the loops that compute activations and losses.

What lives here: ``exp`` / ``exp32`` (range reduction by ln 2, a polynomial, the exponent assembled from
bits) and the parts of log(1 + e) for e in [0, 1] (``log1p_parts``, ``log1p_unit``), with the softplus
and sigmoid built from them; ``*_of`` names pick the float64 or float32 version by argument type. The
PyPI llvmlite has no vector math library: a call of libm's exp or log1p is a scalar call that stops a
loop from vectorising, these are branch-free arithmetic that LLVM vectorises. What they compute into
(activations, losses) lives in formulas.

No fastmath: the divergence test needs inf and nan, and both functions need their exact rounding
corrections.
"""

import numpy as np
from numba import types

from .. import polynomials as _poly
from .compiler import VECTOR_BYTES, amd_zen_target, subroutine
from .intrinsics import bits_from_double, bits_from_float, double_from_bits, float_from_bits, fma

# exp: x = k ln2 + r with |r| <= ln2/2, exp(r) - 1 = r + r^2 P(r) with P a polynomial of degree 9, its
# first coefficient 1/2 and the others fitted on [-ln2/2, ln2/2] (Chebyshev, mpmath: their error reaches
# exp(r) below 3e-17), 2^k applied as two factors 2^(k//2) 2^(k - k//2), both normal numbers, so that
# subnormal and overflowing results are rounded once, correctly, with no branch or blend. Relative error
# about 2e-16 over the whole range (at most 1.1 ulp over 10^5 points, mpmath). Degree 11 in all where
# Taylor's polynomial needs 13: the activation's loops are bound by the FMA pipes, and each operation
# fewer is time (docs/performance.md). The shifter's low bits carry both exponent biases: its integer
# part ends in 2 * 1023, so its bits give v = k + 2046 > 0, then h = v >> 1 = k//2 + 1023 and v - h
# are the two factors' biased exponents (a logical shift: AVX2 has no arithmetic shift of 64-bit lanes).
# The constants live in lgd.kernels.polynomials, which the CUDA kernels' float64 exp takes them from too.
_INV_LN2, _LN2_HI, _LN2_LO, _SHIFTER = _poly.INV_LN2, _poly.LN2_HI, _poly.LN2_LO, _poly.SHIFTER
_SHIFTER_BITS = np.uint64(_poly.SHIFTER_BITS)
_ONE, _EXPONENT = np.uint64(1), np.uint64(52)
_E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9 = _poly.EXP_P  # P's coefficients of r^1 .. r^9 (that of r^0 is 1/2)
_SHIFTER_NONPOSITIVE, _NONPOSITIVE_SCALE = _poly.SHIFTER_NONPOSITIVE, 2.0 ** -_poly.NONPOSITIVE_OFFSET


@subroutine(types.float64)
def exp(x):
    """e^x for float64 x: overflow to inf above 709.78, gradual underflow to 0, nan kept."""
    return exp_clamped(710.0 if x > 710.0 else (-746.0 if x < -746.0 else x))


@subroutine(types.float64)
def exp_nonpositive(x):
    """e^x for float64 x <= 0 (or nan), exp's bits: without the clamp from above, which such an x never
    reaches, and with 2^k as one factor, 2^(k + 55), normal for every k down to the clamp's (-1076), then
    times 2^-55 (exact, or the one rounding of a subnormal result). exp's two factors take four integer
    operations more; here the shifter's low bits are the factor's exponent field. Used for e^-|z| of the
    activations and losses and the normal density."""
    xc = -746.0 if x < -746.0 else x
    shifted, expm1 = exp_reduced(xc, _SHIFTER_NONPOSITIVE)
    factor = double_from_bits(bits_from_double(shifted) << _EXPONENT)  # 2^(k + 55): the low 12 bits are 1078 + k
    return fma(expm1, factor, factor) * _NONPOSITIVE_SCALE


@subroutine(types.float64)
def exp_clamped(xc):
    """e^xc for xc in [-746, 710], or nan for nan. The clamps of the callers are written so that a nan
    passes them (a comparison with nan is false): it goes through the arithmetic to the result, with no
    select at the end."""
    shifted, expm1 = exp_reduced(xc, _SHIFTER)
    v = bits_from_double(shifted) - _SHIFTER_BITS
    h = v >> _ONE
    first = double_from_bits(h << _EXPONENT)  # normal, so fma(expm1, first, first) = (1 + expm1) first, bit for bit
    return fma(expm1, first, first) * double_from_bits((v - h) << _EXPONENT)


@subroutine(types.UniTuple(types.float64, 2))
def exp_reduced(xc, shifter):
    """(xc / ln2 + shifter rounded to an integer, e^r - 1) with r = xc - k ln2, k that integer less the
    shifter: the shifter's low bits then carry k plus the offset its caller reads the exponent from."""
    shifted = fma(xc, _INV_LN2, shifter)
    kf = shifted - shifter
    r = fma(kf, -_LN2_LO, fma(kf, -_LN2_HI, xc))
    # P in pairs (c_2i + c_2i+1 r), Horner's scheme in r^2, then one rounding adding the 1, in the fma
    # that applies the first factor (within an ulp).
    r2 = r * r
    poly = fma(fma(fma(fma(fma(_E9, r, _E8), r2, fma(_E7, r, _E6)), r2, fma(_E5, r, _E4)), r2, fma(_E3, r, _E2)),
               r2, fma(_E1, r, 0.5))
    return shifted, fma(poly, r2, r)


# log(1 + e) for 0 <= e <= 1, from fdlibm's log1p once it has reduced its argument to f: log(1 + f) =
# f - f^2/2 + s (f^2/2 + R(s^2)) with s = f / (2 + f) and R(z) = 2z/3 + 2z^2/5 + ... = (2 atanh(s) - 2s)
# / s written in z = s^2. Since f^2/2 (1 - s) = f s, that is f - s (f - R): two fmas after R, where
# fdlibm's form takes four operations more, and more accurate here (at most 0.97 ulp against 1.18 over
# 50,000 points of [0, 1], mpmath; docs/performance.md). fdlibm first reduces 1 + f to [sqrt 2 / 2,
# sqrt 2] (s <= 0.17), which here costs a comparison, blends and a correction for the rounding of
# 1 + e; this takes f = e as it is (s <= 1/3, z <= 1/9) and a longer polynomial instead: R(z) = z g(z),
# g of degree 9 fitted on [0, 1/9] (Chebyshev, mpmath: |error| <= 1e-16, which reaches the result
# scaled by s z <= 1/27), summed as pairs g_2k + g_2k+1 z in Horner's scheme in z^2: one product fewer
# than Estrin's, its longer chain overlapped by the loop's other entries.
# s and 1 / (1 + e) (the sigmoid) are two divisions in float64 (or one division and a Newton step each:
# ONE_DIVISION) and one shared in float32 (below).
_G0, _G1, _G2, _G3, _G4, _G5, _G6, _G7, _G8, _G9 = _poly.LOG1P_G
# With 64-byte vectors on Intel's cores, log1p_parts takes r = 1 / u1 and s = e / t (u1 = 1 + e, t = 2 + e)
# from one division (quotients_one_division): a float64 division takes 16 cycles a 64-byte vector there, so
# that two bound the loop (SWEEP 1.16x faster with one: docs/performance.md). Elsewhere the two divisions stay:
# with 32-byte vectors two were as fast as one shared, and the Newton steps' six operations would only add
# to the FMA pipes' work, as on AMD's Zen 4 (znver4), whose FMA pipes bound the loop: there S and SWEEP ran
# 5-10% slower with one (float64). The other Zen cores (znver*) were not measured with one. Either way the
# same bits.
ONE_DIVISION = VECTOR_BYTES == 64 and not amd_zen_target()


@subroutine(types.UniTuple(types.float64, 2))
def quotients_one_division(e):
    """(1 / (1 + e), e / (2 + e)) for float64 e in [0, 1] from one division, D = 1 / ((1 + e)(2 + e)):
    (2 + e) D and e (1 + e) D are within 3 ulp of the quotients, and one Newton step each, its residual
    in an fma, rounds them correctly: the two divisions' bits at every one of 12 million points
    (docs/performance.md)."""
    u1 = 1.0 + e
    t = 2.0 + e
    D = 1.0 / (u1 * t)
    inv_t = u1 * D
    r0 = t * D
    s0 = e * inv_t
    return fma(r0, fma(-u1, r0, 1.0), r0), fma(fma(-s0, t, e), inv_t, s0)


@subroutine(lambda e: types.UniTuple(e, 2))
def log1p_unit(e):
    """(log(1 + e), 1 / (1 + e)) for e in [0, 1], in the dtype of e."""
    s, u, r = log1p_parts_of(e)
    return fma(-s, u, e), r


@subroutine(types.UniTuple(types.float64, 3))
def log1p_parts(e):
    """(s, u, 1 / (1 + e)) with log(1 + e) = e - s u (u = e - R), e in [0, 1]: the activation adds the
    terms in its own order, s u (the end of the longest chain) last."""
    if ONE_DIVISION:  # a compile-time constant: each kernel holds one of the two
        r, s = quotients_one_division(e)
    else:
        r = 1.0 / (1.0 + e)
        s = e / (2.0 + e)
    z = s * s
    z2 = z * z
    g = fma(fma(fma(fma(fma(_G9, z, _G8), z2, fma(_G7, z, _G6)), z2, fma(_G5, z, _G4)), z2, fma(_G3, z, _G2)), z2,
            fma(_G1, z, _G0))
    return s, fma(-z, g, e), r


# log x for a float64 x that is a positive normal number (the outputs in product form: formulas.product_output):
# x = 2^k y with y in [sqrt(1/2), sqrt 2), log x = k ln2 + log(1 + f), f = y - 1 (exact), log(1 + f) as
# log1p_parts forms it (s = f / (2 + f), |s| <= 0.172, z = s^2 within g's interval [0, 1/9]), k ln2 in two parts
# (k LN2_HI exact). Branch-free, so a loop of it vectorises. Adding 2^52 (2 - sqrt 2) to the bits carries into the
# exponent field exactly where y would reach sqrt 2, so the field then holds k + 1023; k as a float64 from the
# field's bits in the low mantissa of 2^52 (AVX2 has no conversion of 64-bit integers).
_REDUCE_OFFSET = np.uint64(0x3FF0000000000000 - 0x3FE6A09E667F3BCD)  # bits of 1 less bits of sqrt(1/2)
_ONE_BITS = np.uint64(0x3FF0000000000000)
_TWO52_BITS = np.uint64(0x4330000000000000)
_TWO52_PLUS_BIAS = 4503599627370496.0 + 1023.0


@subroutine(types.float64)
def log_normal(x):
    """log x for float64 x a positive normal number (anything else gives a wrong number, not nan): at most about
    one ulp."""
    bits = bits_from_double(x)
    field = (bits + _REDUCE_OFFSET) >> _EXPONENT
    f = double_from_bits(bits - (field << _EXPONENT) + _ONE_BITS) - 1.0
    k = double_from_bits(field | _TWO52_BITS) - _TWO52_PLUS_BIAS
    s = f / (2.0 + f)
    z = s * s
    z2 = z * z
    g = fma(fma(fma(fma(fma(_G9, z, _G8), z2, fma(_G7, z, _G6)), z2, fma(_G5, z, _G4)), z2, fma(_G3, z, _G2)), z2,
            fma(_G1, z, _G0))
    return fma(k, _LN2_HI, fma(k, _LN2_LO, fma(-s, fma(-z, g, f), f)))


@subroutine(types.UniTuple(types.float64, 2))
def softplus_sigmoid_from_exp(x, e):
    """(softplus(x), sigmoid(x)) given e = exp(-|x|): one log1p and one division."""
    lp, r = log1p_unit(e)
    return max(x, 0.0) + lp, (r if x >= 0 else e * r)


# float32 versions for runs in float32 (eight lanes per AVX2 vector): the same algorithms with float32
# constants. exp: |r| <= ln2/2 and Taylor degree 7 (truncation 5e-9); log1p: g of degree 4.
_INV_LN2_F, _LN2_HI_F, _LN2_LO_F, _SHIFTER_F = _poly.INV_LN2_F, _poly.LN2_HI_F, _poly.LN2_LO_F, _poly.SHIFTER_F
_SHIFTER_F_BITS = np.int32(_poly.SHIFTER_F_BITS)
_SHIFTER_NONPOSITIVE_F = _poly.SHIFTER_NONPOSITIVE_F
_NONPOSITIVE_SCALE_F = np.float32(2.0 ** -_poly.NONPOSITIVE_OFFSET_F)
_F = np.float32


@subroutine(types.float32)
def exp32(x):
    """e^x for float32 x: overflow to inf above 88.72, gradual underflow to 0, nan kept."""
    return exp32_clamped(_F(89.0) if x > _F(89.0) else (_F(-104.0) if x < _F(-104.0) else x))


@subroutine(types.float32)
def exp32_nonpositive(x):
    """exp_nonpositive for float32 x <= 0 (or nan): 2^k as 2^(k + 25) times 2^-25."""
    xc = _F(-104.0) if x < _F(-104.0) else x
    shifted, expm1 = exp32_reduced(xc, _SHIFTER_NONPOSITIVE_F)
    factor = float_from_bits(bits_from_float(shifted) << np.int32(23))  # the low 9 bits are 152 + k
    return fma(expm1, factor, factor) * _NONPOSITIVE_SCALE_F


@subroutine(types.float32)
def exp32_clamped(xc):
    """exp_clamped for float32 xc in [-104, 89] (or nan)."""
    shifted, expm1 = exp32_reduced(xc, _SHIFTER_F)
    v = bits_from_float(shifted) - _SHIFTER_F_BITS
    h = v >> np.int32(1)
    first = float_from_bits(h << np.int32(23))
    return fma(expm1, first, first) * float_from_bits((v - h) << np.int32(23))


@subroutine(types.UniTuple(types.float32, 2))
def exp32_reduced(xc, shifter):
    """exp_reduced for float32 xc."""
    shifted = fma(xc, _INV_LN2_F, shifter)
    kf = shifted - shifter
    r = fma(kf, -_LN2_LO_F, fma(kf, -_LN2_HI_F, xc))
    r2 = r * r
    p = fma(fma(_F(1.0 / 5040.0), r, _F(1.0 / 720.0)), r2, fma(_F(1.0 / 120.0), r, _F(1.0 / 24.0)))
    return shifted, fma(fma(p, r2, fma(_F(1.0 / 6.0), r, _F(0.5))), r2, r)


# log1p_unit's g for float32 runs: degree 4 (|error| <= 7e-9 before its coefficients' float32 rounding).
_G0_F, _G1_F, _G2_F, _G3_F, _G4_F = _poly.LOG1P_G_F


@subroutine(types.UniTuple(types.float32, 3))
def log1p_parts32(e):
    """log1p_parts for float32 e."""
    u = _F(1.0) + e
    t = _F(2.0) + e
    D = _F(1.0) / (u * t)  # one division for both: in float32 it is accurate enough, and two are slower
    r = t * D
    s = e * u * D
    z = s * s
    z2 = z * z
    g = fma(fma(_G4_F, z2, fma(_G3_F, z, _G2_F)), z2, fma(_G1_F, z, _G0_F))
    return s, fma(-z, g, e), r


@subroutine(types.UniTuple(types.float32, 2))
def softplus_sigmoid_from_exp32(x, e):
    """(softplus(x), sigmoid(x)) of float32 x given e = exp(-|x|)."""
    lp, r = log1p_unit(e)
    return max(x, _F(0.0)) + lp, (r if x >= _F(0.0) else e * r)


@subroutine(lambda x: x, pick=lambda x: (exp32 if x == types.float32 else exp).implementation)
def exp_of(x):
    """exp or exp32 by the type of x."""


@subroutine(lambda x: x, pick=lambda x: (exp32_nonpositive if x == types.float32 else exp_nonpositive).implementation)
def exp_nonpositive_of(x):
    """exp_nonpositive or exp32_nonpositive by the type of x."""


@subroutine(lambda x, e: types.UniTuple(x, 2), pick=lambda x, e: (
    softplus_sigmoid_from_exp32 if x == types.float32 else softplus_sigmoid_from_exp).implementation)
def softplus_sigmoid_from_exp_of(x, e):
    """softplus_sigmoid_from_exp or its float32 version by the type of x."""


@subroutine(lambda e: types.UniTuple(e, 3), pick=lambda e: (
    log1p_parts32 if e == types.float32 else log1p_parts).implementation)
def log1p_parts_of(e):
    """log1p_parts or its float32 version by the type of e."""
