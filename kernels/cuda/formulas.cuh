// The activation and loss formulas of the CUDA kernels: `__host__ __device__` templates, one definition for
// float and double, shared by every entry of lgd.cu and by its host build (host_compat.h).
//
// Codes come from codes.cuh, generated from the catalogs lgd/activations.py and lgd/losses.py (the one
// table of codes); the numpy formulas there are the oracle these are tested against. Adding an
// activation or a loss: a case here, and the tests (which enumerate the catalogs) pick it up.
// Overflow-safe exactly as the oracle: softplus = max(z, 0) + log1p(exp(-|z|)) and a sigmoid that never
// exponentiates a positive number. A code with no case sets its bit in `fault` (checked by the glue) and
// writes NaN: never a plausible number from another formula. NVRTC defines neither INFINITY nor NAN:
// infinity() and quiet_nan() build them from their bits.
#pragma once

#include "codes.cuh"

namespace lgd {

__host__ __device__ __forceinline__ double infinity(double) { return __longlong_as_double(0x7ff0000000000000LL); }
__host__ __device__ __forceinline__ float infinity(float) { return __int_as_float(0x7f800000); }
__host__ __device__ __forceinline__ double quiet_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
__host__ __device__ __forceinline__ float quiet_nan(float) { return __int_as_float(0x7fc00000); }

template <typename T> __host__ __device__ __forceinline__ T sigmoid(T z) {
    T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T> __host__ __device__ __forceinline__ T softplus(T z) {
    return fmax(z, T(0)) + log1p(exp(-fabs(z)));
}

template <typename T> __host__ __device__ __forceinline__ T normal_cdf(T z) {
    return T(0.5) * erfc(-z * T(0.70710678118654752440));
}

template <typename T> __host__ __device__ __forceinline__ T normal_pdf(T z) {
    return fabs(z) < T(40) ? T(0.39894228040143267794) * exp(T(-0.5) * z * z) : T(0);
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
        phi = softplus(z);
        dphi = sigmoid(z);
        break;
    case ACT_LEAKY_SOFTPLUS:
        phi = c * z + (T(1) - c) * softplus(z);
        dphi = c + (T(1) - c) * sigmoid(z);
        break;
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
    case ACT_TANH: {
        T t = tanh(z);
        phi = t;
        dphi = T(1) - t * t;
        break;
    }
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
        value = softplus(-u);
        slope = -sigmoid(-u);
        break;
    case LOSS_EXPONENTIAL:
        value = exp(-u);  // inf for very negative u: the run is reported as diverged
        slope = -value;
        break;
    case LOSS_FLATTENED_EXPONENTIAL: {
        T tail = exp(-p * fmax(u, T(0)));
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
    case ACT_TANH: {
        const T t = tanh(z);
        return T(-2) * t * (T(1) - t * t);
    }
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
        return exp(-u);
    case LOSS_FLATTENED_EXPONENTIAL:
        return u >= T(0) ? p * p * exp(-p * fmax(u, T(0))) : T(0);
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
    case LOSS_LOGISTIC:
        return u > 36.0 ? -u : log(softplus(-u));  // beyond 36, log log1p(e^-u) = -u to rounding
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
