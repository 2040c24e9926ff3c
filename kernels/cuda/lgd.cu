// Fused CUDA kernels of one GD step for two-layer networks f(x) = s * sum_j a_j phi(w_j . x).
//
// A step over C configurations (stepsizes, seeds) of one problem is
//   Z = X W^T                      (cuBLAS, batched over configs, in cupy)
//   lgd_forward:  phi, outputs, loss, loss', G_ij = loss'_i y_i s a_j phi'(Z_ij) / n (written over Z)
//   grad_W = G^T X                 (cuBLAS)
//   lgd_finish:   risk, accuracy, margins, norms, divergence check, trace record, W -= eta * grad_W
// The activation and loss are runtime codes (codes.cuh, generated from lgd.activations / lgd.losses):
// the branch is uniform across a launch, and one entry per dtype keeps the module small and built once.
// A code with no case below sets its bit in `fault` (checked by the glue) and writes NaN: never a
// plausible number from another formula.
//
// Formulas mirror the numpy oracle in lgd/activations.py and lgd/losses.py: overflow-safe
// softplus max(z, 0) + log1p(exp(-|z|)) and a sigmoid that never exponentiates a positive number.
// No CUDA headers, only our own: NVRTC compiles this file with the include path of this folder
// (INFINITY and NAN are not defined there).

#include "codes.cuh"

#define LGD_THREADS 256

namespace lgd {

__device__ __forceinline__ double infinity(double) { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ float infinity(float) { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double quiet_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
__device__ __forceinline__ float quiet_nan(float) { return __int_as_float(0x7fc00000); }

template <typename T> __device__ __forceinline__ T sigmoid(T z) {
    T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T> __device__ __forceinline__ T softplus(T z) {
    return fmax(z, T(0)) + log1p(exp(-fabs(z)));
}

template <typename T> __device__ __forceinline__ T normal_cdf(T z) {
    return T(0.5) * erfc(-z * T(0.70710678118654752440));
}

template <typename T> __device__ __forceinline__ T normal_pdf(T z) {
    return fabs(z) < T(40) ? T(0.39894228040143267794) * exp(T(-0.5) * z * z) : T(0);
}

// phi(z) and phi'(z) of the activation `code` with parameter c.
template <typename T> __device__ __forceinline__ void activation(int code, T c, T z, T& phi, T& dphi, int* fault) {
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
__device__ __forceinline__ void loss_and_slope(int code, T p, T u, T& value, T& slope, int* fault) {
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

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T> __device__ __forceinline__ T warp_min(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmin(v, __shfl_down_sync(0xffffffffu, v, offset));
    return v;
}

// Sum (is_min = false) or minimum over the block; every thread gets the result.
template <typename T> __device__ T block_reduce(T v, bool is_min, T* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = is_min ? warp_min(v) : warp_sum(v);
    __syncthreads();  // scratch may still be read by the previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T identity = is_min ? infinity(T(0)) : T(0);
        T w = lane < warps ? scratch[lane] : identity;
        w = is_min ? warp_min(w) : warp_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    return scratch[0];
}

// One block per (sample i, config c): outputs, loss, and the backward coefficients over Z.
template <typename T>
__device__ void forward(T* ZG, T* P, const T* a, const T* y, T* row_loss, T* row_yf, T* row_coef,
                        const long long* diverged, int* fault, int n, int m, int act, T act_param, int loss,
                        T loss_param, T scale, int store_p) {
    __shared__ T scratch[32];
    const int i = blockIdx.x, c = blockIdx.y;
    if (diverged[c] >= 0) return;
    T* z = ZG + ((long long)c * n + i) * m;
    const T* ac = a + (long long)c * m;
    T partial = T(0), phi, dphi;
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        activation(act, act_param, z[j], phi, dphi, fault);
        partial += ac[j] * phi;
        if (store_p) P[((long long)c * n + i) * m + j] = phi;
    }
    const T f = scale * block_reduce(partial, false, scratch);
    const T yi = y[i];
    const bool margin_loss = is_margin_loss(loss);
    T value, slope;
    loss_and_slope(loss, loss_param, margin_loss ? yi * f : f - yi, value, slope, fault);
    const T coef = (margin_loss ? slope * yi : slope) / T(n);
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        activation(act, act_param, z[j], phi, dphi, fault);
        z[j] = coef * scale * ac[j] * dphi;  // the same thread read z[j] above: safe in place
    }
    if (threadIdx.x == 0) {
        row_loss[(long long)c * n + i] = value;
        row_yf[(long long)c * n + i] = yi * f;
        row_coef[(long long)c * n + i] = coef;
    }
}

// One block per config: reductions, divergence check, trace record at `slot` (or -1), update.
template <typename T>
__device__ void finish(T* W, T* a, const T* grad_W, const T* grad_a, const T* row_loss, const T* row_yf,
                       const T* y, const T* P, const double* stepsizes, long long* diverged, double* trace_risk,
                       double* trace_accuracy, double* trace_grad_norm, double* trace_weight_norm,
                       double* trace_margin, double* trace_neuron, int n, int m, int d, int train_outer,
                       long long t, long long steps, int slot, int records, int neuron_records) {
    __shared__ T scratch[32];
    const int c = blockIdx.x;
    if (diverged[c] >= 0) return;
    const long long md = (long long)m * d;
    T* Wc = W + c * md;
    T* ac = a + (long long)c * m;
    const T* gW = grad_W + c * md;
    const T* ga = grad_a + (long long)c * m;

    T loss_sum = T(0), correct = T(0), margin = infinity(T(0));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        loss_sum += row_loss[(long long)c * n + i];
        T yf = row_yf[(long long)c * n + i];
        correct += yf > T(0) ? T(1) : T(0);
        margin = fmin(margin, yf);
    }
    T grad_sq = T(0), weight_sq = T(0);
    for (long long k = threadIdx.x; k < md; k += blockDim.x) {
        grad_sq += gW[k] * gW[k];
        weight_sq += Wc[k] * Wc[k];
    }
    if (train_outer) {
        for (int j = threadIdx.x; j < m; j += blockDim.x) {
            grad_sq += ga[j] * ga[j];
            weight_sq += ac[j] * ac[j];
        }
    }
    const T risk = block_reduce(loss_sum, false, scratch) / T(n);
    grad_sq = block_reduce(grad_sq, false, scratch);
    if (!isfinite(risk) || !isfinite(grad_sq)) {
        if (threadIdx.x == 0) diverged[c] = t;
        return;
    }
    correct = block_reduce(correct, false, scratch);
    margin = block_reduce(margin, true, scratch);
    weight_sq = block_reduce(weight_sq, false, scratch);
    if (slot >= 0) {
        const long long at = (long long)c * records + slot;
        if (threadIdx.x == 0) {
            trace_risk[at] = (double)risk;
            trace_accuracy[at] = (double)correct / (double)n;
            trace_grad_norm[at] = sqrt((double)grad_sq);
            trace_weight_norm[at] = sqrt((double)weight_sq);
            trace_margin[at] = (double)margin;
        }
        if (neuron_records > 0) {
            for (int j = threadIdx.x; j < m; j += blockDim.x) {
                T low = infinity(T(0));
                for (int i = 0; i < n; ++i) low = fmin(low, y[i] * ac[j] * P[((long long)c * n + i) * m + j]);
                trace_neuron[((long long)c * neuron_records + slot) * m + j] = (double)low;
            }
        }
    }
    if (t < steps) {
        const T eta = (T)stepsizes[c];
        __syncthreads();  // every thread has read W_t for the norms and neuron margins
        for (long long k = threadIdx.x; k < md; k += blockDim.x) Wc[k] -= eta * gW[k];
        if (train_outer)
            for (int j = threadIdx.x; j < m; j += blockDim.x) ac[j] -= eta * ga[j];
    }
}

// Held-out risk and accuracy of W_t at a record step; one block per config over Z_test = X_test W^T.
template <typename T>
__device__ void test_metrics(const T* Zt, const T* a, const T* yt, const long long* diverged, int* fault,
                             double* trace_risk, double* trace_accuracy, int nt, int m, int act, T act_param,
                             int loss, T loss_param, T scale, int slot, int records) {
    __shared__ T scratch[32];
    const int c = blockIdx.x;
    if (diverged[c] >= 0) return;
    const T* ac = a + (long long)c * m;
    T loss_sum = T(0), correct = T(0), phi, dphi, value, slope;
    for (int i = threadIdx.x; i < nt; i += blockDim.x) {
        const T* z = Zt + ((long long)c * nt + i) * m;
        T f = T(0);
        for (int j = 0; j < m; ++j) {
            activation(act, act_param, z[j], phi, dphi, fault);
            f += ac[j] * phi;
        }
        f *= scale;
        loss_and_slope(loss, loss_param, is_margin_loss(loss) ? yt[i] * f : f - yt[i], value, slope, fault);
        loss_sum += value;
        correct += yt[i] * f > T(0) ? T(1) : T(0);
    }
    loss_sum = block_reduce(loss_sum, false, scratch);
    correct = block_reduce(correct, false, scratch);
    if (threadIdx.x == 0) {
        trace_risk[(long long)c * records + slot] = (double)loss_sum / (double)nt;
        trace_accuracy[(long long)c * records + slot] = (double)correct / (double)nt;
    }
}

}  // namespace lgd

#define LGD_ENTRIES(T, SUFFIX)                                                                                  \
    extern "C" __global__ void __launch_bounds__(LGD_THREADS) lgd_forward_##SUFFIX(                             \
        T* ZG, T* P, const T* a, const T* y, T* row_loss, T* row_yf, T* row_coef, const long long* diverged,    \
        int* fault, int n, int m, int act, T act_param, int loss, T loss_param, T scale, int store_p) {         \
        lgd::forward<T>(ZG, P, a, y, row_loss, row_yf, row_coef, diverged, fault, n, m, act, act_param, loss,   \
                        loss_param, scale, store_p);                                                            \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LGD_THREADS) lgd_finish_##SUFFIX(                              \
        T* W, T* a, const T* grad_W, const T* grad_a, const T* row_loss, const T* row_yf, const T* y,           \
        const T* P, const double* stepsizes, long long* diverged, double* trace_risk, double* trace_accuracy,   \
        double* trace_grad_norm, double* trace_weight_norm, double* trace_margin, double* trace_neuron, int n,  \
        int m, int d, int train_outer, long long t, long long steps, int slot, int records,                     \
        int neuron_records) {                                                                                   \
        lgd::finish<T>(W, a, grad_W, grad_a, row_loss, row_yf, y, P, stepsizes, diverged, trace_risk,           \
                       trace_accuracy, trace_grad_norm, trace_weight_norm, trace_margin, trace_neuron, n, m, d, \
                       train_outer, t, steps, slot, records, neuron_records);                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(LGD_THREADS) lgd_test_metrics_##SUFFIX(                        \
        const T* Zt, const T* a, const T* yt, const long long* diverged, int* fault, double* trace_risk,        \
        double* trace_accuracy, int nt, int m, int act, T act_param, int loss, T loss_param, T scale, int slot, \
        int records) {                                                                                          \
        lgd::test_metrics<T>(Zt, a, yt, diverged, fault, trace_risk, trace_accuracy, nt, m, act, act_param,     \
                             loss, loss_param, scale, slot, records);                                           \
    }

LGD_ENTRIES(double, f64)
LGD_ENTRIES(float, f32)
