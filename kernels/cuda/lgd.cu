// Whole GD runs of two-layer networks f(x) = s * sum_j a_j phi(w_j . x) in one launch per chunk.
//
// lgd_run_<dtype>: one block per configuration c (blockIdx.x; a sweep's stepsizes and seeds) runs every
// evaluation t in [t_start, t_stop) of a chunk inside the kernel. At each t, with Z = X W^T:
//   phi, phi' of Z; f_i = s sum_j a_j phi(Z_ij); loss_i, loss'_i; G_ij = loss'_i y_i s a_j phi'(Z_ij) / n;
//   grad_W = G^T X, grad_a = s phi(Z)^T (loss' y) / n; risk, accuracy, margin, gradient and weight norms;
//   the divergence check (risk or squared gradient norm not finite: diverged[c] = t, W stays W_t, nothing
//   recorded); at record steps (record_slot of lgd.backends) the records: risk, log-risk, accuracy, norms,
//   margin, neuron margins, held-out risk and accuracy; at trajectory steps W and a (or their projections);
//   the bounds (risk above risk_bound or weight norm above weight_bound: recorded, then stopped); when
//   t < steps, the tangent vectors of Lyapunov exponents through I - eta_t H (propagate), then
//   W -= eta_t grad_W (and a), eta_t from the configuration's stepsize rule (stepsize_at).
// The samples go through in tiles of `tile_rows` rows (the tile's phi and phi' in shared memory), so
// nothing of size n x m is ever stored.
//
// Memory: the glue (cuda_run.layout) decides from the sizes what lives in dynamic shared memory:
// W^T (d x m) and grad_W^T of the block's configuration, then X and y (the same for every block: when
// they do not fit they are read from global memory, where L2 holds them for every configuration), then
// the largest tile that fits. What does not fit lives in `workspace` (2 d m entries per configuration).
// The weights are transposed to (d, m) for the chunk: consecutive threads own consecutive neurons j.
//
// Work of a thread (T = blockDim.x, any multiple of 32): entries e = tid, tid + T, ... of the tile's
// rows x neurons (forward), of W^T (backward and update: a thread owns the same entries of W^T and
// grad_W^T for the whole chunk), rows r = tid, tid + T, ... of a tile (loss), neurons j = tid, ... (grad_a,
// neuron margins). Reductions are in a fixed order that depends only on (n, d, m, T, tile_rows), never
// on the number of configurations: a sweep gives each configuration's single run exactly.
//
// float32 runs compute phi, the products and the gradient in float32; per-sample losses, the risk and the
// margins in float64, rounded to float32 where the numpy oracle rounds (narrow), as the numba kernels do.
//
// Large problems take the products path instead (products.cuh, included below: cuBLAS products and four
// kernels per step, lgd.kernels.cuda_products chooses).
//
// The same source builds for the host with g++ through host_compat.h (LGD_HOST_BUILD): CI runs it against
// the numpy oracle and under AddressSanitizer and ThreadSanitizer. No CUDA headers: NVRTC compiles this
// file with the include path of this folder.

#include "formulas.cuh"

#ifndef LGD_HOST_BUILD
extern __shared__ __align__(16) unsigned char lgd_dynamic_shared[];
#define LGD_DYNAMIC_SHARED() (lgd_dynamic_shared)
#endif

// The launch shape the entries are compiled for (cupy_gpu passes both): threads per block, and blocks
// each multiprocessor must hold at once (the register budget __launch_bounds__ gives the compiler).
#ifndef LGD_THREADS
#define LGD_THREADS 256
#endif
#ifndef LGD_MIN_BLOCKS
#define LGD_MIN_BLOCKS 1
#endif

namespace lgd {

// The scalar fields the kernel records, in the order of the `trace` array (fields, configs, records);
// the glue names them (cuda_run.KERNEL_FIELDS).
constexpr int TRACE_RISK = 0, TRACE_LOG_RISK = 1, TRACE_ACCURACY = 2, TRACE_GRAD_NORM = 3, TRACE_WEIGHT_NORM = 4,
              TRACE_MARGIN = 5, TRACE_TEST_RISK = 6, TRACE_TEST_ACCURACY = 7, TRACE_ETA = 8;
// Below these risks (float64, float32) the log-risk comes from the samples' log-losses (lgd.models'
// LOG_RISK_EXACT_BELOW and LOG_RISK_EXACT_BELOW_F32; a test checks they are the same).
constexpr double LOG_RISK_EXACT_BELOW = 1e-280, LOG_RISK_EXACT_BELOW_F32 = 1e-30;

// A sum of squares whose root is its norm: at least this and finite (lgd.backends.SQUARES_EXACT_FROM, 2^-968; a
// test checks they are the same); outside, 0 with entries not all 0, subnormal or inf, the norm takes a second
// pass scaled by the largest |entry| (exact_norms), as the oracle's lgd.backends._numpy._norm.
constexpr double SQUARES_EXACT_FROM = 4.008336720017946e-292;
__host__ __device__ __forceinline__ bool rooted(double squares) {
    return (squares >= SQUARES_EXACT_FROM && squares <= 1.7976931348623157e308) || squares != squares;
}

// Quantities of the block reductions at the end of a step (STATS values per reduction).
constexpr int STAT_RISK = 0, STAT_CORRECT = 1, STAT_MARGIN = 2, STAT_GRAD_SQ = 3, STAT_WEIGHT_SQ = 4, STATS = 5;

__host__ __device__ __forceinline__ double narrow(double x, bool f32) { return f32 ? (double)(float)x : x; }
// eta_t as the run applies it (lgd.backends.cast_stepsizes): held at the largest number of its dtype, then
// narrowed (NaN stays NaN).
__host__ __device__ __forceinline__ double narrow_stepsize(double eta, bool f32) {
    const double largest = f32 ? 3.4028234663852886e38 : 1.7976931348623157e308;
    return narrow(eta > largest ? largest : eta, f32);
}

__host__ __device__ __forceinline__ long long record_slot(long long t, long long steps, long long every) {
    if (t % every == 0) return t / every;
    if (t == steps) return steps / every + 1;
    return -1;
}

// eta_t of stepsize rule `code` with parameters (p0, p1, p2): lgd.stepsize.stepsize_at, the one formula
// every backend evaluates (the codes are generated from lgd.stepsize into codes.cuh). `sharpness` is the
// configuration's latest measured top Hessian eigenvalue (the driver measures it between chunks).
__host__ __device__ inline double stepsize_at(int code, double p0, double p1, double p2, long long t, long long steps,
                                              double risk, double log_risk, double grad_norm, double sharpness) {
    switch (code) {
    case RULE_WARMUP:
        return p0 * fmin(1.0, (t + 1.0) / p1);
    case RULE_STEP_DECAY:
        return p0 * pow(p2, floor(t / p1));
    case RULE_COSINE:
        return p0 * 0.5 * (1.0 + cos(3.14159265358979323846 * (double)(t < steps ? t : steps) / (double)steps));
    case RULE_ADAPTIVE:
        if (-log_risk <= 709.0) return fmin(p0 * exp(-log_risk), 1.7976931348623157e308);
        // e^-log L overflows past 709.78; p0 e^-log L may not, for p0 < 1
        return log(p0) - log_risk < 709.78 ? exp(log(p0) - log_risk) : 1.7976931348623157e308;
    case RULE_POLYAK:
        return grad_norm > 0.0 && risk > p0 ? p1 * (risk - p0) / grad_norm / grad_norm : 0.0;
    case RULE_NORMALIZED:
        return grad_norm > 0.0 ? p0 / grad_norm : 0.0;
    case RULE_INVERSE_SHARPNESS:
        return sharpness > 0.0 ? p0 / sharpness : infinity(0.0);
    default:  // RULE_CONSTANT
        return p0;
    }
}

// The scalar records of one evaluation: `at` is the configuration's slot in the first field of the trace
// (fields, configs, records), `field` the stride between fields.
__host__ __device__ inline void record_scalars(double* at, long long field, double eta, double risk, double log_risk,
                                               double accuracy, double grad_norm, double weight_norm, double margin) {
    at[TRACE_ETA * field] = eta;
    at[TRACE_RISK * field] = risk;
    at[TRACE_LOG_RISK * field] = log_risk;
    at[TRACE_ACCURACY * field] = accuracy;
    at[TRACE_GRAD_NORM * field] = grad_norm;
    at[TRACE_WEIGHT_NORM * field] = weight_norm;
    at[TRACE_MARGIN * field] = margin;
}

__host__ __device__ __forceinline__ size_t align16(size_t bytes) { return (bytes + 15) & ~size_t(15); }

// Doubles of shared scratch block_reduce takes for a block of `threads` threads.
__host__ __device__ inline int reduce_scratch(int threads) { return STATS * (threads + 32); }

// Sums (or, where is_min[q], minima) of STATS values over the block, in a fixed order: each warp's lane 0
// adds its 32 lanes in lane order, then every thread adds the warps in warp order (warp shuffles would
// shorten lane 0's chain, but in the host build, where a shuffle is two barriers of 32 threads, they made
// the CUDA tests 3x slower). `scratch` holds reduce_scratch(blockDim.x) doubles. Every thread gets the
// results; the scratch is free again on return.
__device__ void block_reduce(double (&value)[STATS], const bool (&is_min)[STATS], double* scratch) {
    const int tid = threadIdx.x, threads = blockDim.x, warps = threads / 32;
    double* per_thread = scratch;
    double* per_warp = scratch + STATS * threads;
    for (int q = 0; q < STATS; ++q) per_thread[q * threads + tid] = value[q];
    __syncthreads();
    if (tid % 32 == 0) {
        for (int q = 0; q < STATS; ++q) {
            double total = per_thread[q * threads + tid];
            for (int lane = 1; lane < 32; ++lane) {
                const double v = per_thread[q * threads + tid + lane];
                total = is_min[q] ? fmin(total, v) : total + v;
            }
            per_warp[q * 32 + tid / 32] = total;
        }
    }
    __syncthreads();
    for (int q = 0; q < STATS; ++q) {
        double total = per_warp[q * 32];
        for (int w = 1; w < warps; ++w) {
            const double v = per_warp[q * 32 + w];
            total = is_min[q] ? fmin(total, v) : total + v;
        }
        value[q] = total;
    }
    __syncthreads();
}

// The rare path of a step's norms, where the block's sum of squares of the gradient (grad_sq) or of the weights
// (weight_sq) is not rooted: that norm as the largest |entry| times the root of the sum of (entry / largest)^2, over
// grad (and grad_a) or Wt (and as) where the outer layer is trained. Every thread of the block calls it alike.
template <typename T>
__device__ void exact_norms(const T* grad, const T* grad_a, const T* Wt, const T* as, int dm, int m, bool train_outer,
                            double grad_sq, double weight_sq, double& grad_norm, double& weight_norm, double* scratch) {
    const int tid = threadIdx.x, threads = blockDim.x;
    const bool is_min[STATS] = {true, true, false, false, false}, sums[STATS] = {false, false, false, false, false};
    double top[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};  // minus the largest |entry|: block_reduce takes minima
    for (int e = tid; e < dm; e += threads) {
        top[0] = fmin(top[0], -fabs((double)grad[e]));
        top[1] = fmin(top[1], -fabs((double)Wt[e]));
    }
    for (int j = tid; train_outer && j < m; j += threads) {
        top[0] = fmin(top[0], -fabs((double)grad_a[j]));
        top[1] = fmin(top[1], -fabs((double)as[j]));
    }
    block_reduce(top, is_min, scratch);
    const double g_top = -top[0], w_top = -top[1];
    const double g_scale = g_top > 0.0 && isfinite(g_top) ? g_top : 1.0;
    const double w_scale = w_top > 0.0 && isfinite(w_top) ? w_top : 1.0;
    double total[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int e = tid; e < dm; e += threads) {
        const double g = (double)grad[e] / g_scale, w = (double)Wt[e] / w_scale;
        total[0] += g * g;
        total[1] += w * w;
    }
    for (int j = tid; train_outer && j < m; j += threads) {
        const double g = (double)grad_a[j] / g_scale, w = (double)as[j] / w_scale;
        total[0] += g * g;
        total[1] += w * w;
    }
    block_reduce(total, sums, scratch);
    if (!rooted(grad_sq)) grad_norm = g_top == 0.0 || !isfinite(g_top) ? g_top : g_top * sqrt(total[0]);
    if (!rooted(weight_sq)) weight_norm = w_top == 0.0 || !isfinite(w_top) ? w_top : w_top * sqrt(total[1]);
}

// Threads that share a neuron in the per-neuron sums over samples (grad_a, the neuron margins): thread
// tid < groups * m takes neuron tid % m and the rows r = tid / m (mod groups) of every tile; with m > T,
// one group, thread tid the neurons tid, tid + T, ....
__host__ __device__ inline int neuron_groups(int threads, int m) { return threads >= m ? threads / m : 1; }

// The tile of samples a block works on: phi and phi' of its rows, padded to m + 1 columns (no bank conflicts
// between rows), and the backward coefficient cs_r = s loss'_r y_r / n of each row, in the run's dtype.
template <typename T> struct Tile {
    T* phi;
    T* dphi;
    T* coef;
};

// Register tiles of the two products. A warp's 32 lanes own the columns (neurons) j = j0 + lane + 32 c,
// c < COLS, so that the loads of W^T and of G are conflict-free and those of X are broadcasts; its
// registers hold ROWS rows (forward) or K_ROWS entries k (backward) of them. Each entry is still one sum
// in a fixed order (k, or the tile's rows, in turn): the tiling changes which thread adds, not the sum.
constexpr int ROWS = 4, K_ROWS = 2;

// phi and phi' of rows [i0, i0 + rows) of Z = X W^T into the tile, 32 COLS columns at a time.
template <typename T, int COLS>
__device__ void forward_cols(const T* X, int i0, int rows, int d, int m, const T* Wt, int act, T act_param,
                             Tile<T> tile, bool need_dphi, int* fault) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32, stride = m + 1;
    for (int j0 = 0; j0 < m; j0 += 32 * COLS) {
        for (int r0 = warp * ROWS; r0 < rows; r0 += warps * ROWS) {
            const T* x[ROWS];
#pragma unroll
            for (int q = 0; q < ROWS; ++q) x[q] = X + (long long)(i0 + (r0 + q < rows ? r0 + q : r0)) * d;
            T z[ROWS][COLS];
#pragma unroll
            for (int q = 0; q < ROWS; ++q)
#pragma unroll
                for (int c = 0; c < COLS; ++c) z[q][c] = T(0);
            for (int k = 0; k < d; ++k) {
                T w[COLS];
#pragma unroll
                for (int c = 0; c < COLS; ++c) {
                    const int j = j0 + lane + 32 * c;
                    w[c] = j < m ? Wt[k * m + j] : T(0);
                }
#pragma unroll
                for (int q = 0; q < ROWS; ++q) {
                    const T xk = x[q][k];
#pragma unroll
                    for (int c = 0; c < COLS; ++c) z[q][c] += xk * w[c];
                }
            }
#pragma unroll
            for (int q = 0; q < ROWS; ++q) {
#pragma unroll
                for (int c = 0; c < COLS; ++c) {
                    const int j = j0 + lane + 32 * c;
                    if (r0 + q < rows && j < m) {
                        T phi, dphi;
                        activation(act, act_param, z[q][c], phi, dphi, fault);
                        tile.phi[(r0 + q) * stride + j] = phi;
                        if (need_dphi) tile.dphi[(r0 + q) * stride + j] = dphi;
                    }
                }
            }
        }
    }
}

// The number of column registers per lane for a width m: m in one pass up to 128, in passes of 128 beyond.
__host__ __device__ inline int column_registers(int m) { return m <= 32 ? 1 : m <= 64 ? 2 : 4; }

// Not inlined: the three passes over samples (training, held-out, log-risk) share one copy (a third of
// the compile time and of the registers of the inlined copies).
template <typename T>
__device__ __noinline__ void forward_tile(const T* X, int i0, int rows, int d, int m, const T* Wt, int act,
                                          T act_param, Tile<T> tile, bool need_dphi, int* fault) {
    switch (column_registers(m)) {
    case 1: forward_cols<T, 1>(X, i0, rows, d, m, Wt, act, act_param, tile, need_dphi, fault); break;
    case 2: forward_cols<T, 2>(X, i0, rows, d, m, Wt, act, act_param, tile, need_dphi, fault); break;
    default: forward_cols<T, 4>(X, i0, rows, d, m, Wt, act, act_param, tile, need_dphi, fault);
    }
}

// grad^T[k, j] += sum_r G[r, j] X[i0 + r, k] over the tile's rows in order (G in the tile's dphi rows):
// K_ROWS entries k (a warp's) by 32 COLS columns at a time, the sums in registers over the tile.
template <typename T, int COLS>
__device__ void backward_cols(const T* X, int i0, int rows, int d, int m, const T* G, T* grad) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32, stride = m + 1;
    for (int j0 = 0; j0 < m; j0 += 32 * COLS) {
        for (int k0 = warp * K_ROWS; k0 < d; k0 += warps * K_ROWS) {
            T sum[K_ROWS][COLS];
#pragma unroll
            for (int q = 0; q < K_ROWS; ++q)
#pragma unroll
                for (int c = 0; c < COLS; ++c) {
                    const int j = j0 + lane + 32 * c;
                    sum[q][c] = k0 + q < d && j < m ? grad[(k0 + q) * m + j] : T(0);
                }
            for (int r = 0; r < rows; ++r) {
                T g[COLS];
#pragma unroll
                for (int c = 0; c < COLS; ++c) {
                    const int j = j0 + lane + 32 * c;
                    g[c] = j < m ? G[r * stride + j] : T(0);
                }
                const T* x = X + (long long)(i0 + r) * d + k0;
#pragma unroll
                for (int q = 0; q < K_ROWS; ++q) {
                    const T xk = k0 + q < d ? x[q] : T(0);
#pragma unroll
                    for (int c = 0; c < COLS; ++c) sum[q][c] += g[c] * xk;
                }
            }
#pragma unroll
            for (int q = 0; q < K_ROWS; ++q)
#pragma unroll
                for (int c = 0; c < COLS; ++c) {
                    const int j = j0 + lane + 32 * c;
                    if (k0 + q < d && j < m) grad[(k0 + q) * m + j] = sum[q][c];
                }
        }
    }
}

// The backward product of a tile, K_ROWS = 2 entries k per warp.
template <typename T>
__device__ void backward_tile(const T* X, int i0, int rows, int d, int m, const T* G, T* grad) {
    switch (column_registers(m)) {
    case 1: backward_cols<T, 1>(X, i0, rows, d, m, G, grad); break;
    case 2: backward_cols<T, 2>(X, i0, rows, d, m, G, grad); break;
    default: backward_cols<T, 4>(X, i0, rows, d, m, G, grad);
    }
}

// What one sample's row of the tile gives: the loss argument u (y f, or f - y for the squared loss), y f, the
// loss value and the coefficient loss' y / n, float64, value and slope narrowed as the oracle rounds.
struct Sample {
    double u, yf, value, coef;
};

template <typename T>
__device__ Sample sample(const Tile<T>& tile, int r, int m, const T* a, T yi_t, int loss, double loss_param,
                         double scale, double inv_n, bool f32, int* fault) {
    const T* p = tile.phi + r * (m + 1);
    T sum = T(0);
    for (int j = 0; j < m; ++j) sum += a[j] * p[j];
    const double f = scale * (double)sum, yi = (double)yi_t;
    const bool margin_loss = is_margin_loss(loss);
    Sample out;
    out.u = margin_loss ? yi * f : f - yi;
    out.yf = yi * f;
    double slope;
    loss_and_slope(loss, loss_param, out.u, out.value, slope, fault);
    out.value = narrow(out.value, f32);
    slope = narrow(slope, f32);
    out.coef = (margin_loss ? slope * yi : slope) * inv_n;
    return out;
}

// What every sample pass of a block needs (the training pass, the held-out pass and the log-risk passes).
template <typename T> struct Block {
    const T* X;
    const T* y;
    const T* Wt;
    const T* a;
    Tile<T> tile;
    int d, m, tile_rows, act, loss;
    T act_param;
    double loss_param, scale;
    bool f32;
    int* fault;
    double* scratch;
};

// log L of W_t where the risk has underflowed: max_i l_i + log sum_i e^(l_i - max) - log n of the samples'
// log-losses l_i (two passes over the samples, the order of the reductions fixed), as lgd.models.log_mean.
template <typename T> __device__ double log_risk_from_samples(const Block<T>& b, int n) {
    const bool is_min[STATS] = {true, false, false, false, false}, is_sum[STATS] = {false, false, false, false, false};
    double top[STATS] = {infinity(0.0), 0.0, 0.0, 0.0, 0.0};  // min of -l
    double total[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int pass = 0; pass < 2; ++pass) {
        for (int i0 = 0; i0 < n; i0 += b.tile_rows) {
            const int rows = n - i0 < b.tile_rows ? n - i0 : b.tile_rows;
            forward_tile(b.X, i0, rows, b.d, b.m, b.Wt, b.act, b.act_param, b.tile, false, b.fault);
            __syncthreads();
            for (int r = threadIdx.x; r < rows; r += blockDim.x) {
                const Sample s = sample(b.tile, r, b.m, b.a, b.y[i0 + r], b.loss, b.loss_param, b.scale, 1.0, b.f32,
                                        b.fault);
                const double l = log_loss(b.loss, b.loss_param, s.u, b.fault);
                if (pass == 0)
                    top[0] = fmin(top[0], -l);
                else
                    total[0] += exp(l + top[0]);
            }
            __syncthreads();
        }
        if (pass == 0) {
            block_reduce(top, is_min, b.scratch);
            if (!isfinite(top[0])) return -top[0];
        } else {
            block_reduce(total, is_sum, b.scratch);
        }
    }
    return -top[0] + log(total[0]) - log((double)n);
}

// The k tangent vectors of a configuration (Lyapunov exponents) through the GD map's tangent I - eta H at
// (W_t, a_t), then modified Gram-Schmidt: log_growth[l] += log of the norm of v_l's part orthogonal to
// v_0 .. v_{l-1}, as the numpy oracle (lgd.backends._numpy, lgd.hessian's exact Hessian-vector products):
//   dZ = X V^T, df_i = s sum_j (a_j phi'(Z_ij) dZ_ij + b_j phi(Z_ij)),
//   (H v)_W = sum_i [second_i df_i s a_j phi' + first_i s (b_j phi' + a_j phi'' dZ_ij)] x_i,
//   (H v)_a = s sum_i [phi second_i df_i + first_i phi' dZ_ij],  first = loss' c / n, second = loss'' / n.
// V (k, m, d) and Va (k, m) are float64 and updated in place; Vt, HVt (d x m), vb, Hb (m) are the run's
// dtype (the product is in it, as the oracle's); `rows` holds 3 float64 per row of a tile.
template <typename T>
__device__ void propagate(const Block<T>& b, int n, bool train_outer, double eta, int tangents, double* V,
                          double* Va, double* growth, T* Vt, T* HVt, T* vb, T* Hb, double* rows) {
    const int tid = threadIdx.x, threads = blockDim.x, d = b.d, m = b.m, dm = d * m, stride = m + 1;
    const T s = (T)b.scale;
    const bool sums[STATS] = {false, false, false, false, false};
    const bool margin_loss = is_margin_loss(b.loss);
    for (int l = 0; l < tangents; ++l) {
        double* v = V + (long long)l * dm;
        double* va = Va + (long long)l * m;
        for (int e = tid; e < dm; e += threads) {
            const int k = e / m, j = e - k * m;
            Vt[e] = (T)v[(long long)j * d + k];
            HVt[e] = T(0);
        }
        for (int j = tid; j < m; j += threads) {
            vb[j] = train_outer ? (T)va[j] : T(0);
            Hb[j] = T(0);
        }
        __syncthreads();
        for (int i0 = 0; i0 < n; i0 += b.tile_rows) {
            const int count = n - i0 < b.tile_rows ? n - i0 : b.tile_rows;
            forward_tile(b.X, i0, count, d, m, b.Wt, b.act, b.act_param, b.tile, true, b.fault);
            __syncthreads();
            for (int r = tid; r < count; r += threads) {
                const T* x = b.X + (long long)(i0 + r) * d;
                T f = T(0), df_a = T(0), df_b = T(0);
                for (int j = 0; j < m; ++j) {
                    T dz = T(0);
                    for (int k = 0; k < d; ++k) dz += x[k] * Vt[k * m + j];
                    f += b.a[j] * b.tile.phi[r * stride + j];
                    df_a += b.tile.dphi[r * stride + j] * dz * b.a[j];
                    df_b += b.tile.phi[r * stride + j] * vb[j];
                }
                const double yi = (double)b.y[i0 + r], fi = b.scale * (double)f;
                const double u = margin_loss ? yi * fi : fi - yi;
                double value, slope;
                loss_and_slope(b.loss, b.loss_param, u, value, slope, b.fault);
                rows[3 * r] = slope * (margin_loss ? yi : 1.0) / n;
                rows[3 * r + 1] = loss_second(b.loss, b.loss_param, u, b.fault) / n;
                rows[3 * r + 2] = b.scale * ((double)df_a + (double)df_b);
            }
            __syncthreads();
            if (train_outer) {
                for (int j = tid; j < m; j += threads) {
                    T outer = T(0);
                    for (int r = 0; r < count; ++r) {
                        const T* x = b.X + (long long)(i0 + r) * d;
                        T dz = T(0);
                        for (int k = 0; k < d; ++k) dz += x[k] * Vt[k * m + j];
                        outer += b.tile.phi[r * stride + j] * (T)(rows[3 * r + 1] * rows[3 * r + 2]) +
                                 (T)rows[3 * r] * b.tile.dphi[r * stride + j] * dz;
                    }
                    Hb[j] += s * outer;
                }
            }
            __syncthreads();  // phi' is read above and overwritten below
            for (int e = tid; e < count * m; e += threads) {
                const int r = e / m, j = e - r * m;
                const T* x = b.X + (long long)(i0 + r) * d;
                T z = T(0), dz = T(0);
                for (int k = 0; k < d; ++k) {
                    z += x[k] * b.Wt[k * m + j];
                    dz += x[k] * Vt[k * m + j];
                }
                const T first = (T)rows[3 * r], second = (T)rows[3 * r + 1], df = (T)rows[3 * r + 2];
                const T dphi = b.tile.dphi[r * stride + j], sa = s * b.a[j];
                const T dd = activation_second(b.act, b.act_param, z, b.fault);
                T inner = second * df * dphi * sa + first * dd * dz * sa;
                if (train_outer) inner += first * dphi * (s * vb[j]);
                b.tile.dphi[r * stride + j] = inner;
            }
            __syncthreads();
            backward_tile(b.X, i0, count, d, m, b.tile.dphi, HVt);
            __syncthreads();
        }
        for (int e = tid; e < dm; e += threads) {
            const int k = e / m, j = e - k * m;
            v[(long long)j * d + k] -= eta * (double)HVt[e];
        }
        if (train_outer)
            for (int j = tid; j < m; j += threads) va[j] -= eta * (double)Hb[j];
        for (int o = 0; o <= l; ++o) {  // o < l: remove v_o's part; o = l: the norm
            const double* w = V + (long long)o * dm;
            const double* wa = Va + (long long)o * m;
            double part[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
            for (int e = tid; e < dm; e += threads) {
                const long long at = (long long)(e - e / m * m) * d + e / m;
                part[0] += v[at] * w[at];
            }
            if (train_outer)
                for (int j = tid; j < m; j += threads) part[0] += va[j] * wa[j];
            block_reduce(part, sums, b.scratch);
            // o = l: a vector the map sends to 0 stays 0 (its growth log 0 = -inf), not 0/0.
            const double scale = o < l ? -part[0] : (part[0] != 0.0 ? 1.0 / sqrt(part[0]) : 1.0);
            for (int e = tid; e < dm; e += threads) {
                const long long at = (long long)(e - e / m * m) * d + e / m;
                v[at] = o < l ? v[at] + scale * w[at] : v[at] * scale;
            }
            if (train_outer)
                for (int j = tid; j < m; j += threads) va[j] = o < l ? va[j] + scale * wa[j] : va[j] * scale;
            if (o == l && tid == 0) growth[l] += log(sqrt(part[0]));
        }
        __syncthreads();
    }
}

// Bytes of dynamic shared memory run_chunk takes (its `take` calls, in order) for a block of `threads`
// threads: the layout of cuda_run.layout, which a host test checks against this function.
__host__ __device__ inline size_t shared_bytes(int n, int d, int m, int itemsize, int threads, int tile_rows,
                                               int x_shared, int w_shared, int g_shared) {
    const size_t parts = (size_t)neuron_groups(threads, m) * m;
    size_t total = align16(sizeof(double) * reduce_scratch(threads)) + align16(sizeof(double) * m) +
                   align16(sizeof(double) * parts) + 2 * align16((size_t)itemsize * m) +
                   align16((size_t)itemsize * parts) + 2 * align16((size_t)itemsize * tile_rows * (m + 1)) +
                   align16((size_t)itemsize * tile_rows);
    if (w_shared) total += align16((size_t)itemsize * d * m);
    if (g_shared) total += align16((size_t)itemsize * d * m);
    if (x_shared) total += align16((size_t)itemsize * n * d) + align16((size_t)itemsize * n);
    return total;
}

// FULL: every feature compiled in. A plain build (FULL false) leaves out the held-out pass, the trajectory and
// projection records and the tangent vectors, which the glue passes only to the full entry
// (cuda_run.entry_for): the kernel's registers are its worst path's, and these paths take the most.
template <typename T, bool FULL>
__device__ void run_chunk(const T* X, const T* y, const T* X_test, const T* y_test, T* W, T* a,
                          const long long* rules, const double* rule_params, const double* sharpness_last,
                          long long* diverged, int* fault, T* workspace, double* trace, double* trace_neuron,
                          const T* directions, T* trace_weights, T* trace_outer, double* trace_projections, int n,
                          int d, int m, int n_test, int act, double act_param_d, int loss, double loss_param,
                          double scale, int train_outer, double risk_bound, double weight_bound,
                          int log_risk_every_step, long long t_start, long long t_stop, long long steps,
                          long long record_every, long long weights_every, int configs, int records,
                          int neuron_records, int weight_records, int outer_records, int n_directions,
                          double* tangents, double* tangents_a, double* log_growth, double* trace_lyapunov,
                          double* row_space, int n_tangents, int lyapunov_records, int tile_rows, int x_shared,
                          int w_shared, int g_shared) {
    const int c = blockIdx.x, tid = threadIdx.x, threads = blockDim.x;
    if (diverged[c] >= 0) return;
    const bool f32 = sizeof(T) == 4;
    const int dm = d * m, stride = m + 1;
    const double inv_n = 1.0 / n;
    const double log_risk_exact_below = f32 ? LOG_RISK_EXACT_BELOW_F32 : LOG_RISK_EXACT_BELOW;

    // Dynamic shared memory, in the order and sizes of shared_bytes.
    unsigned char* shared = LGD_DYNAMIC_SHARED();
    size_t offset = 0;
    auto take = [&](size_t bytes) {
        unsigned char* at = shared + offset;
        offset += align16(bytes);
        return at;
    };
    const int groups = neuron_groups(threads, m);
    double* scratch = (double*)take(sizeof(double) * reduce_scratch(threads));
    double* neuron = (double*)take(sizeof(double) * m);
    double* parts_neuron = (double*)take(sizeof(double) * groups * m);
    T* as = (T*)take(sizeof(T) * m);
    T* grad_a = (T*)take(sizeof(T) * m);
    T* parts_a = (T*)take(sizeof(T) * groups * m);
    Tile<T> tile;
    tile.phi = (T*)take(sizeof(T) * tile_rows * stride);
    tile.dphi = (T*)take(sizeof(T) * tile_rows * stride);
    tile.coef = (T*)take(sizeof(T) * tile_rows);
    // The configuration's part of the workspace: W^T and grad^T when not in shared memory, then (with
    // tangent vectors) V^T, (H V)^T, b and H b.
    T* config_space = workspace + (long long)c * (n_tangents > 0 ? 4 * dm + 2 * m : 2 * dm);
    T* Wt = w_shared ? (T*)take(sizeof(T) * dm) : config_space;
    T* grad = g_shared ? (T*)take(sizeof(T) * dm) : config_space + dm;
    const T* Xs = X;
    const T* ys = y;
    if (x_shared) {
        T* Xcopy = (T*)take(sizeof(T) * (long long)n * d);
        T* ycopy = (T*)take(sizeof(T) * n);
        for (long long k = tid; k < (long long)n * d; k += threads) Xcopy[k] = X[k];
        for (int i = tid; i < n; i += threads) ycopy[i] = y[i];
        Xs = Xcopy;
        ys = ycopy;
    }

    T* Wc = W + (long long)c * dm;
    T* ac = a + (long long)c * m;
    for (int e = tid; e < dm; e += threads) {
        const int k = e / m, j = e - k * m;
        Wt[e] = Wc[(long long)j * d + k];
    }
    for (int j = tid; j < m; j += threads) as[j] = ac[j];
    const int rule = (int)rules[c];
    const double p0 = rule_params[3 * c], p1 = rule_params[3 * c + 1], p2 = rule_params[3 * c + 2];
    const bool is_min[STATS] = {false, false, true, false, false};
    Block<T> train = {Xs, ys, Wt, as, tile, d, m, tile_rows, act, loss, (T)act_param_d, loss_param, scale, f32, fault,
                      scratch};
    __syncthreads();

    for (long long t = t_start; t < t_stop; ++t) {
        const long long slot = record_slot(t, steps, record_every);
        const bool neurons = slot >= 0 && neuron_records > 0;
        for (int e = tid; e < dm; e += threads) grad[e] = T(0);
        for (int e = tid; e < groups * m; e += threads) {
            parts_a[e] = T(0);
            parts_neuron[e] = infinity(0.0);
        }
        double stat[STATS] = {0.0, 0.0, infinity(0.0), 0.0, 0.0};

        for (int i0 = 0; i0 < n; i0 += tile_rows) {
            const int rows = n - i0 < tile_rows ? n - i0 : tile_rows;
            forward_tile(Xs, i0, rows, d, m, Wt, act, train.act_param, tile, true, fault);
            __syncthreads();
            for (int r = tid; r < rows; r += threads) {
                const Sample s = sample(tile, r, m, as, ys[i0 + r], loss, loss_param, scale, inv_n, f32, fault);
                tile.coef[r] = (T)(s.coef * scale);
                stat[STAT_RISK] += s.value;
                stat[STAT_CORRECT] += s.yf > 0.0 ? 1.0 : 0.0;
                stat[STAT_MARGIN] = fmin(stat[STAT_MARGIN], s.yf);
            }
            __syncthreads();
            // Each group of threads its rows of the tile (neuron_groups): G_rj = phi'_rj (cs_r a_j) over phi'
            // (the same thread reads and writes an entry), grad_a and the neuron margins; then
            // grad_W^T += G^T X_tile.
            for (int e = tid; e < groups * m; e += threads) {
                const int p = e / m, j = e - p * m;
                const T aj = as[j];
                T sum = parts_a[e];
                double low = parts_neuron[e];
                for (int r = p; r < rows; r += groups) {
                    const T cs = tile.coef[r], phi = tile.phi[r * stride + j];
                    tile.dphi[r * stride + j] *= cs * aj;
                    if (train_outer) sum += cs * phi;
                    if (neurons) low = fmin(low, (double)ys[i0 + r] * (double)aj * (double)phi);
                }
                parts_a[e] = sum;
                parts_neuron[e] = low;
            }
            __syncthreads();
            backward_tile(Xs, i0, rows, d, m, tile.dphi, grad);
            __syncthreads();  // the next tile overwrites phi, phi' and coef
        }
        // The groups' parts in group order (the thread of neuron j also reads grad_a[j] and neuron[j] below).
        for (int j = tid; j < m; j += threads) {
            if (train_outer) {
                T sum = parts_a[j];
                for (int p = 1; p < groups; ++p) sum += parts_a[p * m + j];
                grad_a[j] = sum;
            }
            if (neurons) {
                double low = parts_neuron[j];
                for (int p = 1; p < groups; ++p) low = fmin(low, parts_neuron[p * m + j]);
                neuron[j] = low;
            }
        }

        for (int e = tid; e < dm; e += threads) {
            const double g = (double)grad[e], w = (double)Wt[e];
            stat[STAT_GRAD_SQ] += g * g;
            stat[STAT_WEIGHT_SQ] += w * w;
        }
        if (train_outer) {
            for (int j = tid; j < m; j += threads) {
                const double g = (double)grad_a[j], w = (double)as[j];
                stat[STAT_GRAD_SQ] += g * g;
                stat[STAT_WEIGHT_SQ] += w * w;
            }
        }
        block_reduce(stat, is_min, scratch);
        const double risk = narrow(narrow(stat[STAT_RISK], f32) / n, f32);
        double grad_norm = sqrt(stat[STAT_GRAD_SQ]), weight_norm = sqrt(stat[STAT_WEIGHT_SQ]);
        if (!rooted(stat[STAT_GRAD_SQ]) || !rooted(stat[STAT_WEIGHT_SQ]))  // the same branch in every thread
            exact_norms(grad, grad_a, Wt, as, dm, m, train_outer, stat[STAT_GRAD_SQ], stat[STAT_WEIGHT_SQ],
                        grad_norm, weight_norm, scratch);
        if (!isfinite(risk) || !isfinite(grad_norm)) {
            if (tid == 0) diverged[c] = t;
            break;
        }
        double log_risk = 0.0;
        if (slot >= 0 || log_risk_every_step)
            log_risk = risk >= log_risk_exact_below ? log(risk) : log_risk_from_samples(train, n);
        const double eta_t =
            narrow_stepsize(stepsize_at(rule, p0, p1, p2, t, steps, risk, log_risk, grad_norm, sharpness_last[c]), f32);
        if (slot >= 0) {
            const long long at = (long long)c * records + slot, field = (long long)configs * records;
            if (tid == 0)
                record_scalars(trace + at, field, eta_t, risk, log_risk, stat[STAT_CORRECT] / n, grad_norm,
                               weight_norm, stat[STAT_MARGIN]);
            if (neurons) {
                double* row = trace_neuron + ((long long)c * neuron_records + slot) * m;
                for (int j = tid; j < m; j += threads) row[j] = neuron[j];
            }
            if constexpr (FULL) {
                if (tid == 0)
                    for (int l = 0; l < n_tangents && slot < lyapunov_records; ++l)
                        trace_lyapunov[((long long)c * lyapunov_records + slot) * n_tangents + l] =
                            log_growth[(long long)c * n_tangents + l];
                if (n_test > 0) {
                    double test[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
                    for (int i0 = 0; i0 < n_test; i0 += tile_rows) {
                        const int rows = n_test - i0 < tile_rows ? n_test - i0 : tile_rows;
                        forward_tile(X_test, i0, rows, d, m, Wt, act, train.act_param, tile, false, fault);
                        __syncthreads();
                        for (int r = tid; r < rows; r += threads) {
                            const Sample s = sample(tile, r, m, as, y_test[i0 + r], loss, loss_param, scale, 1.0, f32,
                                                    fault);
                            test[STAT_RISK] += s.value;
                            test[STAT_CORRECT] += s.yf > 0.0 ? 1.0 : 0.0;
                        }
                        __syncthreads();
                    }
                    block_reduce(test, is_min, scratch);
                    if (tid == 0) {
                        trace[TRACE_TEST_RISK * field + at] = narrow(narrow(test[STAT_RISK], f32) / n_test, f32);
                        trace[TRACE_TEST_ACCURACY * field + at] = test[STAT_CORRECT] / n_test;
                    }
                }
            }
        }
        if constexpr (FULL) {
            const long long weight_slot = weight_records > 0 ? record_slot(t, steps, weights_every) : -1;
            if (weight_slot >= 0) {
                if (n_directions > 0) {
                    // sum_jk V_pjk W_jk in float64, STATS directions per block reduction.
                    const bool sums[STATS] = {false, false, false, false, false};
                    for (int p0 = 0; p0 < n_directions; p0 += STATS) {
                        double part[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
                        for (int e = tid; e < dm; e += threads) {
                            const int k = e / m, j = e - k * m;
                            for (int q = 0; q < STATS && p0 + q < n_directions; ++q)
                                part[q] += (double)directions[((long long)(p0 + q) * m + j) * d + k] * (double)Wt[e];
                        }
                        block_reduce(part, sums, scratch);
                        const long long row = ((long long)c * weight_records + weight_slot) * n_directions;
                        if (tid == 0)
                            for (int q = 0; q < STATS && p0 + q < n_directions; ++q)
                                trace_projections[row + p0 + q] = part[q];
                    }
                } else {
                    T* stored = trace_weights + ((long long)c * weight_records + weight_slot) * dm;
                    for (int e = tid; e < dm; e += threads) {
                        const int k = e / m, j = e - k * m;
                        stored[(long long)j * d + k] = Wt[e];
                    }
                    if (outer_records > 0)
                        for (int j = tid; j < m; j += threads)
                            trace_outer[((long long)c * outer_records + weight_slot) * m + j] = as[j];
                }
            }
        }
        // The norm beyond the bound, or not finite: weights an update took past the dtype's range.
        if (risk > risk_bound || !(isfinite(weight_norm) && weight_norm <= weight_bound)) {
            if (tid == 0) diverged[c] = t;
            break;
        }
        if (t < steps) {
            if constexpr (FULL) {
                if (n_tangents > 0)
                    propagate(train, n, train_outer, (double)(T)eta_t, n_tangents,
                              tangents + (long long)c * n_tangents * dm, tangents_a + (long long)c * n_tangents * m,
                              log_growth + (long long)c * n_tangents, config_space + 2 * dm, config_space + 3 * dm,
                              config_space + 4 * dm, config_space + 4 * dm + m,
                              row_space + (long long)c * 3 * tile_rows);
            }
            // Every thread has read W_t (the tiles, the norms, the other passes: a barrier since).
            const T eta = (T)eta_t;
            for (int e = tid; e < dm; e += threads) Wt[e] -= eta * grad[e];
            if (train_outer)
                for (int j = tid; j < m; j += threads) as[j] -= eta * grad_a[j];
        }
        __syncthreads();  // W_{t+1} and a are complete before the next step reads them
    }

    for (int e = tid; e < dm; e += threads) {
        const int k = e / m, j = e - k * m;
        Wc[(long long)j * d + k] = Wt[e];
    }
    for (int j = tid; j < m; j += threads) ac[j] = as[j];
}

}  // namespace lgd

// The parameter list of an lgd_run entry, once: the kernel and its host launcher both expand it (and
// cuda_run.PARAMS lists it for the glue).
#define LGD_RUN_PARAMS(T)                                                                                            \
    const T *X, const T *y, const T *X_test, const T *y_test, T *W, T *a, const long long *rules,                    \
        const double *rule_params, const double *sharpness_last, long long *diverged, int *fault, T *workspace,      \
        double *trace, double *trace_neuron, const T *directions, T *trace_weights, T *trace_outer,                  \
        double *trace_projections, int n, int d, int m, int n_test, int act, double act_param, int loss,             \
        double loss_param, double scale, int train_outer, double risk_bound, double weight_bound,                    \
        int log_risk_every_step, long long t_start, long long t_stop, long long steps, long long record_every,       \
        long long weights_every, int configs, int records, int neuron_records, int weight_records,                   \
        int outer_records, int n_directions, double *tangents, double *tangents_a, double *log_growth,               \
        double *trace_lyapunov, double *row_space, int n_tangents, int lyapunov_records, int tile_rows,              \
        int x_shared, int w_shared, int g_shared
#define LGD_RUN_ARGS()                                                                                               \
    X, y, X_test, y_test, W, a, rules, rule_params, sharpness_last, diverged, fault, workspace, trace, trace_neuron, \
        directions, trace_weights, trace_outer, trace_projections, n, d, m, n_test, act, act_param, loss,            \
        loss_param, scale, train_outer, risk_bound, weight_bound, log_risk_every_step, t_start, t_stop, steps,       \
        record_every, weights_every, configs, records, neuron_records, weight_records, outer_records, n_directions,  \
        tangents, tangents_a, log_growth, trace_lyapunov, row_space, n_tangents, lyapunov_records, tile_rows,        \
        x_shared, w_shared, g_shared

namespace lgd {
// The two builds of run_chunk as entry bodies (LGD_ENTRY takes a template of the dtype alone).
template <typename T> __device__ void run_full(LGD_RUN_PARAMS(T)) { run_chunk<T, true>(LGD_RUN_ARGS()); }
template <typename T> __device__ void run_plain(LGD_RUN_PARAMS(T)) { run_chunk<T, false>(LGD_RUN_ARGS()); }
}  // namespace lgd

#include "products.cuh"

#ifdef LGD_HOST_BUILD
// The host launcher of an entry NAME: NAME_host runs the grid of blocks on host threads (host_compat.h).
#define LGD_HOST_ENTRY(NAME, LIST, T, ARGS)                                                                          \
    extern "C" void NAME##_host(unsigned grid, unsigned block, size_t shared, LIST(T)) {                             \
        lgd::host::launch(grid, block, shared, [&] { NAME(ARGS()); });                                               \
    }
#else
#define LGD_HOST_ENTRY(NAME, LIST, T, ARGS)
#endif

#ifdef LGD_HOST_BUILD
// The kernel's copies of lgd.backends.record_slot and lgd.stepsize.stepsize_at, for the host tests that
// compare them with the Python rules.
extern "C" long long lgd_record_slot(long long t, long long steps, long long every) {
    return lgd::record_slot(t, steps, every);
}
extern "C" double lgd_stepsize_at(int code, double p0, double p1, double p2, long long t, long long steps,
                                  double risk, double log_risk, double grad_norm, double sharpness) {
    return lgd::stepsize_at(code, p0, p1, p2, t, steps, risk, log_risk, grad_norm, sharpness);
}
// The formulas of formulas.cuh over an array x, for the host tests that compare them with the catalogs': rows
// of out (7 x n) phi, phi', phi'' of the activation, the loss's value, slope and second derivative, and
// exp_of (the float64 exp, or float's).
template <typename T>
void apply_formulas(int act, double c, int loss, double p, const T* x, T* out, long long n, int* fault) {
    for (long long i = 0; i < n; ++i) {
        lgd::activation(act, T(c), x[i], out[i], out[n + i], fault);
        out[2 * n + i] = lgd::activation_second(act, T(c), x[i], fault);
        lgd::loss_and_slope(loss, T(p), x[i], out[3 * n + i], out[4 * n + i], fault);
        out[5 * n + i] = lgd::loss_second(loss, T(p), x[i], fault);
        out[6 * n + i] = lgd::exp_of(x[i]);
    }
}
extern "C" void lgd_formulas_f64(int act, double c, int loss, double p, const double* x, double* out, long long n,
                                 int* fault) {
    apply_formulas(act, c, loss, p, x, out, n, fault);
}
extern "C" void lgd_formulas_f32(int act, double c, int loss, double p, const float* x, float* out, long long n,
                                 int* fault) {
    apply_formulas(act, c, loss, p, x, out, n, fault);
}
extern "C" size_t lgd_shared_bytes(int n, int d, int m, int itemsize, int threads, int tile_rows, int x_shared,
                                   int w_shared, int g_shared) {
    return lgd::shared_bytes(n, d, m, itemsize, threads, tile_rows, x_shared, w_shared, g_shared);
}
extern "C" size_t lgd_rows_shared_bytes(int m, int itemsize, int threads, int rows_per_block) {
    return lgd::rows_shared_bytes(m, itemsize, threads, rows_per_block);
}
#endif

// An entry NAME_SUFFIX of dtype T: the kernel BODY<T>(ARGS) with parameter list LIST(T), and its host launcher.
#define LGD_ENTRY(NAME, SUFFIX, T, LIST, ARGS, BODY)                                                                 \
    extern "C" __global__ void __launch_bounds__(LGD_THREADS, LGD_MIN_BLOCKS) NAME##_##SUFFIX(LIST(T)) {             \
        BODY<T>(ARGS());                                                                                             \
    }                                                                                                                \
    LGD_HOST_ENTRY(NAME##_##SUFFIX, LIST, T, ARGS)
#define LGD_ENTRIES(T, SUFFIX)                                                                                       \
    LGD_ENTRY(lgd_run, SUFFIX, T, LGD_RUN_PARAMS, LGD_RUN_ARGS, lgd::run_full)                                       \
    LGD_ENTRY(lgd_run_plain, SUFFIX, T, LGD_RUN_PARAMS, LGD_RUN_ARGS, lgd::run_plain)                                \
    LGD_ENTRY(lgd_rows, SUFFIX, T, LGD_ROWS_PARAMS, LGD_ROWS_ARGS, lgd::rows_block)                                  \
    LGD_ENTRY(lgd_norms, SUFFIX, T, LGD_NORMS_PARAMS, LGD_NORMS_ARGS, lgd::norms_block)                              \
    LGD_ENTRY(lgd_finalize, SUFFIX, T, LGD_FINALIZE_PARAMS, LGD_FINALIZE_ARGS, lgd::finalize_block)                  \
    LGD_ENTRY(lgd_update, SUFFIX, T, LGD_UPDATE_PARAMS, LGD_UPDATE_ARGS, lgd::update_grid)

LGD_ENTRIES(double, f64)
LGD_ENTRIES(float, f32)
