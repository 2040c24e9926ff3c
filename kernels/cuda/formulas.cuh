// The activation and loss formulas of the CUDA kernels: `__host__ __device__` templates, one definition for
// float and double, shared by every entry of lgd.cu and by its host build (host_compat.h).
//
// Codes come from codes.cuh, generated from the catalogs lgd/activations.py and lgd/losses.py (the one
// table of codes); the numpy formulas there are the oracle these are tested against. Adding an
// activation or a loss: a case here, and the tests (which enumerate the catalogs) pick it up.
// Overflow-safe exactly as the oracle: softplus = max(z, 0) + log1p(exp(-|z|)) and a sigmoid that never
// exponentiates a positive number. In float64, exp and log1p are the numba kernels' (exp_of, log1p_unit):
// plain fma arithmetic on constants generated into codes.cuh from lgd/kernels/polynomials.py. A code with no
// case sets its bit in `fault` (checked by the glue) and writes NaN: never a plausible number from another
// formula. NVRTC defines neither INFINITY nor NAN:
// infinity() and quiet_nan() build them from their bits.
#pragma once

#include "codes.cuh"

namespace lgd {

__host__ __device__ __forceinline__ double infinity(double) { return __longlong_as_double(0x7ff0000000000000LL); }
__host__ __device__ __forceinline__ float infinity(float) { return __int_as_float(0x7f800000); }
__host__ __device__ __forceinline__ double quiet_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
__host__ __device__ __forceinline__ float quiet_nan(float) { return __int_as_float(0x7fc00000); }

// e^x in float64 as numba_cpu/exp_log1p.py's exp computes it (which says why each step is as it is): x = k ln2
// + r, a polynomial of degree 11 for e^r - 1, 2^k as two factors so that subnormal results round once;
// within about an ulp, inf above 709.78, 0 below -745.2, NaN kept. An activation's entry is mostly FP64
// operations, and libdevice's general exp, log1p and divisions take more of them: 71 arithmetic instructions
// an entry of leaky softplus against 41 with these (docs/performance.md). float keeps CUDA's expf and
// log1pf, which run on the special-function unit and the FP32 pipe.
__host__ __device__ __forceinline__ double exp_of(double x) {
    const double xc = fmin(fmax(x, -746.0), 710.0);
    const double shifted = fma(xc, EXP_INV_LN2, EXP_SHIFTER);
    const double kf = shifted - EXP_SHIFTER;
    const long long v = __double_as_longlong(shifted) - EXP_SHIFTER_BITS;  // k + 2046 > 0
    const double r = fma(kf, -EXP_LN2_LO, fma(kf, -EXP_LN2_HI, xc));
    const double r2 = r * r;
    const double poly = fma(fma(fma(fma(fma(EXP_P9, r, EXP_P8), r2, fma(EXP_P7, r, EXP_P6)), r2,
                                    fma(EXP_P5, r, EXP_P4)), r2, fma(EXP_P3, r, EXP_P2)), r2, fma(EXP_P1, r, 0.5));
    const double expm1 = fma(poly, r2, r);
    const long long h = v >> 1;
    const double first = __longlong_as_double(h << 52);
    const double y = fma(expm1, first, first) * __longlong_as_double((v - h) << 52);
    return x == x ? y : x;
}
__host__ __device__ __forceinline__ float exp_of(float x) { return exp(x); }

// (log(1 + e), 1 / (1 + e)) for e in [0, 1]: in float64 exp_log1p.py's log1p_unit, log(1 + e) = e - s (e - z g(z))
// with s = e / (2 + e), z = s^2.
__host__ __device__ __forceinline__ void log1p_unit(double e, double& log1p_e, double& inverse) {
    inverse = 1.0 / (1.0 + e);
    const double s = e / (2.0 + e);
    const double z = s * s, z2 = z * z;
    const double g = fma(fma(fma(fma(fma(LOG1P_G9, z, LOG1P_G8), z2, fma(LOG1P_G7, z, LOG1P_G6)), z2,
                                 fma(LOG1P_G5, z, LOG1P_G4)), z2, fma(LOG1P_G3, z, LOG1P_G2)), z2,
                         fma(LOG1P_G1, z, LOG1P_G0));
    log1p_e = fma(-s, fma(-z, g, e), e);
}
__host__ __device__ __forceinline__ void log1p_unit(float e, float& log1p_e, float& inverse) {
    log1p_e = log1p(e);
    inverse = 1.0f / (1.0f + e);
}

// softplus(z) and sigmoid(z) from one e = e^-|z|.
template <typename T> __host__ __device__ __forceinline__ void softplus_sigmoid(T z, T& softplus, T& sigmoid) {
    const T e = exp_of(-fabs(z));
    T log1p_e, inverse;  // inverse = sigmoid(|z|), e inverse = sigmoid(-|z|)
    log1p_unit(e, log1p_e, inverse);
    softplus = fmax(z, T(0)) + log1p_e;
    sigmoid = z >= T(0) ? inverse : e * inverse;
}

template <typename T> __host__ __device__ __forceinline__ T sigmoid(T z) {
    const T e = exp_of(-fabs(z));
    const T inverse = T(1) / (T(1) + e);
    return z >= T(0) ? inverse : e * inverse;
}

// tanh' = sech^2 z = 4 e / (1 + e)^2 with e = e^-2|z| (lgd.activations.tanh): 1 - tanh^2 z cancels once tanh z
// rounds to 1 (|z| of about 18 in double, 5 in float).
template <typename T> __host__ __device__ __forceinline__ T sech_squared(T z) {
    const T e = exp_of(T(-2) * fabs(z));
    return T(4) * e / ((T(1) + e) * (T(1) + e));
}

template <typename T> __host__ __device__ __forceinline__ T normal_cdf(T z) {
    return T(0.5) * erfc(-z * T(0.70710678118654752440));
}

template <typename T> __host__ __device__ __forceinline__ T normal_pdf(T z) {
    return fabs(z) < T(40) ? T(0.39894228040143267794) * exp_of(T(-0.5) * z * z) : T(0);
}

// phi(z) and phi'(z) of the activation `code` with parameter c.
template <typename T>
__host__ __device__ __forceinline__ void activation(int code, T c, T z, T& phi, T& dphi, int* fault) {
    switch (code) {
    case ACT_IDENTITY:
        phi = z;
        dphi = T(1);
        break;
    case ACT_RELU:
    case ACT_LEAKY_RELU:
        phi = z > T(0) ? z : c * z;
        dphi = z > T(0) ? T(1) : c;
        break;
    case ACT_SOFTPLUS:
        softplus_sigmoid(z, phi, dphi);
        break;
    case ACT_LEAKY_SOFTPLUS: {
        T softplus, sigmoid;
        softplus_sigmoid(z, softplus, sigmoid);
        phi = c * z + (T(1) - c) * softplus;
        dphi = c + (T(1) - c) * sigmoid;
        break;
    }
    case ACT_GELU: {
        T cdf = normal_cdf(z);
        phi = z * cdf;
        dphi = cdf + (fabs(z) < T(40) ? z : T(0)) * normal_pdf(z);
        break;
    }
    case ACT_SILU: {
        T s = sigmoid(z);
        phi = z * s;
        dphi = s + z * s * sigmoid(-z);
        break;
    }
    case ACT_TANH:
        phi = tanh(z);
        dphi = sech_squared(z);
        break;
    default:
        atomicOr(fault, FAULT_UNKNOWN_ACTIVATION);
        phi = dphi = quiet_nan(T(0));
    }
}

// loss(u) and loss'(u) of the loss `code` with parameter p (u = y f for a margin loss, else r = f - y).
template <typename T>
__host__ __device__ __forceinline__ void loss_and_slope(int code, T p, T u, T& value, T& slope, int* fault) {
    switch (code) {
    case LOSS_LOGISTIC:
        softplus_sigmoid(-u, value, slope);
        slope = -slope;
        break;
    case LOSS_EXPONENTIAL:
        value = exp_of(-u);  // inf for very negative u: the run is reported as diverged
        slope = -value;
        break;
    case LOSS_FLATTENED_EXPONENTIAL: {
        T tail = exp_of(-p * fmax(u, T(0)));
        value = u >= T(0) ? tail : T(1) - p * u;
        slope = u >= T(0) ? -p * tail : -p;
        break;
    }
    case LOSS_FLATTENED_POLYNOMIAL: {
        T base = T(1) + fmax(u, T(0));
        T tail = pow(base, -p);
        value = u >= T(0) ? tail : T(1) - p * u;
        slope = u >= T(0) ? -p * tail / base : -p;
        break;
    }
    case LOSS_SQUARED:
        value = T(0.5) * u * u;
        slope = u;
        break;
    default:
        atomicOr(fault, FAULT_UNKNOWN_LOSS);
        value = slope = quiet_nan(T(0));
    }
}

// phi''(z) of the activation `code` with parameter c (the tangent map of Lyapunov exponents needs it).
template <typename T> __host__ __device__ __forceinline__ T activation_second(int code, T c, T z, int* fault) {
    switch (code) {
    case ACT_IDENTITY:
    case ACT_RELU:
    case ACT_LEAKY_RELU:
        return T(0);
    case ACT_SOFTPLUS:
        return sigmoid(z) * sigmoid(-z);
    case ACT_LEAKY_SOFTPLUS:
        return (T(1) - c) * sigmoid(z) * sigmoid(-z);
    case ACT_GELU: {
        const T zc = fabs(z) < T(40) ? z : T(0);
        return normal_pdf(z) * (T(2) - zc * zc);
    }
    case ACT_SILU: {
        const T s = sigmoid(z), t = sigmoid(-z);
        return s * t * (T(2) + z * (t - s));
    }
    case ACT_TANH:
        return T(-2) * tanh(z) * sech_squared(z);
    default:
        atomicOr(fault, FAULT_UNKNOWN_ACTIVATION);
        return quiet_nan(T(0));
    }
}

// loss''(u) of the loss `code` with parameter p.
template <typename T> __host__ __device__ __forceinline__ T loss_second(int code, T p, T u, int* fault) {
    switch (code) {
    case LOSS_LOGISTIC:
        return sigmoid(u) * sigmoid(-u);
    case LOSS_EXPONENTIAL:
        return exp_of(-u);
    case LOSS_FLATTENED_EXPONENTIAL:
        return u >= T(0) ? p * p * exp_of(-p * fmax(u, T(0))) : T(0);
    case LOSS_FLATTENED_POLYNOMIAL:
        return u >= T(0) ? p * (p + T(1)) * pow(T(1) + fmax(u, T(0)), -p - T(2)) : T(0);
    case LOSS_SQUARED:
        return T(1);
    default:
        atomicOr(fault, FAULT_UNKNOWN_LOSS);
        return quiet_nan(T(0));
    }
}

// log loss(u) in float64, finite where loss(u) underflows to 0 (the catalogs' ``log_value``): the log-risk of
// a run whose risk is below what its dtype holds.
__host__ __device__ __forceinline__ double log_loss(int code, double p, double u, int* fault) {
    switch (code) {
    case LOSS_LOGISTIC: {
        if (u > 36.0) return -u;  // beyond 36, log log1p(e^-u) = -u to rounding
        double softplus, sigmoid;
        softplus_sigmoid(-u, softplus, sigmoid);
        return log(softplus);
    }
    case LOSS_EXPONENTIAL:
        return -u;
    case LOSS_FLATTENED_EXPONENTIAL:
        return u >= 0.0 ? -p * u : log(1.0 - p * u);
    case LOSS_FLATTENED_POLYNOMIAL:
        return u >= 0.0 ? -p * log1p(u) : log(1.0 - p * u);
    case LOSS_SQUARED:
        return 2.0 * log(fabs(u)) - 0.69314718055994530942;
    default:
        atomicOr(fault, FAULT_UNKNOWN_LOSS);
        return quiet_nan(0.0);
    }
}

}  // namespace lgd
