// The products path: GD steps of large problems as two cuBLAS products and four kernels per step
// (lgd.kernels.cuda_products is its glue; lgd.cu's lgd_run is the fused path, one block per configuration).
//
// The C configurations of a batch sit side by side: W (C, m, d) is one (C m) x d matrix, so that
// Z = X W^T is one n x (C m) product (configuration c's neurons are columns c m .. c m + m - 1) and
// grad_W = G^T X one (C m) x d product with W's layout. One evaluation t of every configuration:
//   Z = X W^T                       cuBLAS (the glue)
//   lgd_rows      one block per (configuration, block of R rows): phi, phi', f, the losses; G = phi' (cs a)
//                 over Z in place; the block's partial sums: risk, correct, margin (min), log-sum-exp of the
//                 log-losses (when the log-risk is needed), grad_a and the neuron margins
//   grad = G^T X                    cuBLAS
//   lgd_rows      (held-out pass, record steps with held-out data only: Z_test = X_test W^T first) risk, correct
//   lgd_norms     one block per (configuration, slice of its m d entries): |grad_W|^2 and |W|^2
//   lgd_finalize  one block per configuration: the partial sums in a fixed order, the divergence check, the
//                 log-risk, eta_t from the stepsize rule, the records, the bounds; eta and whether W moves
//   lgd_update    W -= eta grad_W, a -= eta grad_a where the configuration moves; then the step counter + 1
// The step t is read from `clock` on the device and lgd_update advances it, so that a CUDA graph captured
// over several steps replays unchanged. Each configuration's numbers are those of lgd_run (the same
// formulas, the same narrowing of float32 runs); every sum is in a fixed order that depends on (n, d, m,
// the block size, R) only, never on C: a sweep gives each configuration's single run exactly.
#pragma once

namespace lgd {

// Per (configuration, block of rows): the partial sums lgd_rows leaves for lgd_finalize.
constexpr int PART_RISK = 0, PART_CORRECT = 1, PART_MARGIN = 2, PART_LOG_TOP = 3, PART_LOG_SUM = 4, PARTS = 5;

// Bytes of dynamic shared memory lgd_rows takes for blocks of `threads` threads and R = rows_per_block
// (the glue's cuda_products.rows_layout computes the same).
__host__ __device__ inline size_t rows_shared_bytes(int m, int itemsize, int threads, int rows_per_block) {
    return align16(sizeof(double) * reduce_scratch(threads)) + align16((size_t)itemsize * rows_per_block) +
           align16((size_t)itemsize * rows_per_block * m);
}

template <typename T>
__device__ void rows_block(T* Z, const T* y, const T* a, const long long* diverged, const long long* clock,
                           int* fault, double* parts, T* partial_a, double* partial_neuron, int n, int m,
                           int configs, int rows_per_block, int blocks_per_config, int act, double act_param_d,
                           int loss, double loss_param, double scale, int train_outer, int held_out,
                           int log_risk_every_step, long long steps, long long record_every, int neuron_records) {
    const int c = blockIdx.x / blocks_per_config, part = blockIdx.x - c * blocks_per_config;
    if (diverged[c] >= 0) return;  // the whole block: a stopped configuration keeps W_t
    const int tid = threadIdx.x, threads = blockDim.x, lane = tid % 32, warp = tid / 32, warps = threads / 32;
    const int i0 = part * rows_per_block, rows = n - i0 < rows_per_block ? n - i0 : rows_per_block;
    const long long t = clock[0], slot = record_slot(t, steps, record_every);
    const bool want_log = !held_out && (slot >= 0 || log_risk_every_step);
    const bool neurons = !held_out && slot >= 0 && neuron_records > 0;
    const bool f32 = sizeof(T) == 4, margin_loss = is_margin_loss(loss);
    const long long width = (long long)configs * m;
    const T* ac = a + (long long)c * m;
    const T act_param = (T)act_param_d;
    const double inv_n = held_out ? 1.0 : 1.0 / n;

    unsigned char* shared = LGD_DYNAMIC_SHARED();
    double* scratch = (double*)shared;
    T* cs = (T*)(shared + align16(sizeof(double) * reduce_scratch(threads)));
    T* phi = (T*)((unsigned char*)cs + align16(sizeof(T) * rows_per_block));

    // A warp per row: its lanes take the neurons j = lane, lane + 32, ...; f by a butterfly of shuffles
    // (every lane ends with the same sum: IEEE addition commutes). Lane 0 has the sample's numbers.
    double stat[STATS] = {0.0, 0.0, infinity(0.0), infinity(0.0), 0.0};  // risk, correct, margin, -max l, -
    double top = -infinity(0.0), total = 0.0;  // this thread's log-sum-exp of its samples' log-losses
    for (int r = warp; r < rows; r += warps) {
        T* z = Z + (long long)(i0 + r) * width + (long long)c * m;
        T f_part = T(0);
        for (int j = lane; j < m; j += 32) {
            T p, dp;
            activation(act, act_param, z[j], p, dp, fault);
            phi[r * m + j] = p;
            if (!held_out) z[j] = dp;  // Z's entry becomes phi', then G (below)
            f_part += ac[j] * p;
        }
        for (int offset = 16; offset > 0; offset /= 2) f_part += __shfl_xor_sync(0xffffffffu, f_part, offset);
        if (lane == 0) {
            const double f = scale * (double)f_part, yi = (double)y[i0 + r];
            const double u = margin_loss ? yi * f : f - yi;
            double value, slope;
            loss_and_slope(loss, loss_param, u, value, slope, fault);
            value = narrow(value, f32);
            slope = narrow(slope, f32);
            cs[r] = (T)((margin_loss ? slope * yi : slope) * inv_n * scale);
            stat[PART_RISK] += value;
            stat[PART_CORRECT] += yi * f > 0.0 ? 1.0 : 0.0;
            stat[PART_MARGIN] = fmin(stat[PART_MARGIN], yi * f);
            if (want_log) {
                const double l = log_loss(loss, loss_param, u, fault);
                if (l > top) {
                    total = total * exp(top - l) + 1.0;
                    top = l;
                } else if (l != -infinity(0.0)) {  // a loss of exactly 0 adds nothing (and -inf - -inf is NaN)
                    total += exp(l - top);
                }
            }
        }
    }
    __syncthreads();
    if (!held_out) {
        for (int e = tid; e < rows * m; e += threads) {
            const int r = e / m, j = e - r * m;
            T* g = Z + (long long)(i0 + r) * width + (long long)c * m + j;
            *g = *g * (cs[r] * ac[j]);
        }
        T* pa = partial_a + ((long long)c * blocks_per_config + part) * m;
        double* pn = partial_neuron + ((long long)c * blocks_per_config + part) * m;
        for (int j = tid; j < m; j += threads) {
            if (train_outer) {
                T sum = T(0);
                for (int r = 0; r < rows; ++r) sum += cs[r] * phi[r * m + j];
                pa[j] = sum;
            }
            if (neurons) {
                double low = infinity(0.0);
                for (int r = 0; r < rows; ++r)
                    low = fmin(low, (double)y[i0 + r] * (double)ac[j] * (double)phi[r * m + j]);
                pn[j] = low;
            }
        }
    }
    stat[PART_LOG_TOP] = -top;
    const bool is_min[STATS] = {false, false, true, true, false};
    block_reduce(stat, is_min, scratch);
    double* out = parts + ((long long)c * blocks_per_config + part) * PARTS;
    if (want_log) {  // the threads' sums rescaled to the block's largest log-loss
        const double block_top = -stat[PART_LOG_TOP];
        double sum[STATS] = {top > -infinity(0.0) ? total * exp(top - block_top) : 0.0, 0.0, 0.0, 0.0, 0.0};
        const bool sums[STATS] = {false, false, false, false, false};
        block_reduce(sum, sums, scratch);
        if (tid == 0) out[PART_LOG_SUM] = sum[0];
    }
    if (tid == 0) {
        out[PART_RISK] = stat[PART_RISK];
        out[PART_CORRECT] = stat[PART_CORRECT];
        out[PART_MARGIN] = stat[PART_MARGIN];
        out[PART_LOG_TOP] = -stat[PART_LOG_TOP];
    }
}

// |grad_W|^2 and |W|^2 of a slice of `per_block` entries of a configuration's m d, into norms[(c, slice),
// 0..1]: in double whatever T, as every backend sums a norm.
template <typename T>
__device__ void norms_block(const T* W, const T* grad, const long long* diverged, double* norms, int dm,
                            int blocks_per_config, int per_block) {
    const int c = blockIdx.x / blocks_per_config, part = blockIdx.x - c * blocks_per_config;
    if (diverged[c] >= 0) return;
    const long long base = (long long)c * dm;
    const int start = part * per_block, stop = dm - start < per_block ? dm : start + per_block;
    double stat[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int e = start + threadIdx.x; e < stop; e += blockDim.x) {
        const double g = (double)grad[base + e], w = (double)W[base + e];
        stat[0] += g * g;
        stat[1] += w * w;
    }
    const bool sums[STATS] = {false, false, false, false, false};
    block_reduce(stat, sums, (double*)LGD_DYNAMIC_SHARED());
    if (threadIdx.x == 0) {
        norms[((long long)c * blocks_per_config + part) * 2] = stat[0];
        norms[((long long)c * blocks_per_config + part) * 2 + 1] = stat[1];
    }
}

// One configuration's evaluation t from the partial sums: lgd_run's end of a step, in its order of
// decisions (not finite: stopped, nothing recorded; records; bounds: recorded, then stopped; t < steps: move).
template <typename T>
__device__ void finalize_block(const T* a, T* grad_a, const long long* rules, const double* rule_params,
                               const double* sharpness_last, long long* diverged, const long long* clock,
                               const double* parts, const double* test_parts, const T* partial_a,
                               const double* partial_neuron, const double* norms, double* eta, int* moving,
                               double* trace, double* trace_neuron, int n, int m, int n_test, int configs,
                               int blocks_per_config, int test_blocks, int norm_blocks, int train_outer,
                               double risk_bound, double weight_bound, int log_risk_every_step, long long steps,
                               long long record_every, int records, int neuron_records) {
    const int c = blockIdx.x, tid = threadIdx.x, threads = blockDim.x;
    if (tid == 0) moving[c] = 0;
    if (diverged[c] >= 0) return;
    const bool f32 = sizeof(T) == 4;
    const long long t = clock[0], slot = record_slot(t, steps, record_every);
    const int B = blocks_per_config;
    // grad_a and the outer layer's part of the norms.
    double stat[STATS] = {0.0, 0.0, 0.0, 0.0, 0.0};
    if (train_outer) {
        for (int j = tid; j < m; j += threads) {
            T g = T(0);
            for (int b = 0; b < B; ++b) g += partial_a[((long long)c * B + b) * m + j];
            grad_a[(long long)c * m + j] = g;
            const double w = (double)a[(long long)c * m + j];
            stat[0] += (double)g * (double)g;
            stat[1] += w * w;
        }
    }
    const bool sums[STATS] = {false, false, false, false, false};
    block_reduce(stat, sums, (double*)LGD_DYNAMIC_SHARED());  // also: every thread has read diverged[c]

    // The scalars, by every thread alike (the same reads in the same order), written by thread 0.
    double risk_sum = 0.0, correct = 0.0, margin = infinity(0.0), log_top = -infinity(0.0);
    for (int b = 0; b < B; ++b) {
        const double* p = parts + ((long long)c * B + b) * PARTS;
        risk_sum += p[PART_RISK];
        correct += p[PART_CORRECT];
        margin = fmin(margin, p[PART_MARGIN]);
    }
    double grad_sq = 0.0, weight_sq = 0.0;
    for (int q = 0; q < norm_blocks; ++q) {
        grad_sq += norms[((long long)c * norm_blocks + q) * 2];
        weight_sq += norms[((long long)c * norm_blocks + q) * 2 + 1];
    }
    grad_sq += stat[0];
    weight_sq += stat[1];
    const double risk = narrow(narrow(risk_sum, f32) / n, f32);
    const double grad_norm = sqrt(grad_sq), weight_norm = sqrt(weight_sq);
    if (!isfinite(risk) || !isfinite(grad_norm)) {
        if (tid == 0) diverged[c] = t;
        return;
    }
    double log_risk = 0.0;
    if (slot >= 0 || log_risk_every_step) {
        if (risk >= (f32 ? LOG_RISK_EXACT_BELOW_F32 : LOG_RISK_EXACT_BELOW)) {
            log_risk = log(risk);
        } else {  // the blocks' log-sum-exps combined: max_b top_b + log sum_b sum_b e^(top_b - max) - log n
            for (int b = 0; b < B; ++b) log_top = fmax(log_top, parts[((long long)c * B + b) * PARTS + PART_LOG_TOP]);
            double total = 0.0;
            for (int b = 0; b < B; ++b) {
                const double* p = parts + ((long long)c * B + b) * PARTS;
                if (p[PART_LOG_SUM] > 0.0) total += p[PART_LOG_SUM] * exp(p[PART_LOG_TOP] - log_top);
            }
            log_risk = isfinite(log_top) ? log_top + log(total) - log((double)n) : log_top;
        }
    }
    const long long rule = rules[c];
    const double eta_t = narrow_stepsize(stepsize_at((int)rule, rule_params[3 * c], rule_params[3 * c + 1],
                                                     rule_params[3 * c + 2], t, steps, risk, log_risk, grad_norm,
                                                     sharpness_last[c]), f32);
    if (slot >= 0) {
        const long long at = (long long)c * records + slot, field = (long long)configs * records;
        if (tid == 0) {
            record_scalars(trace + at, field, eta_t, risk, log_risk, correct / n, grad_norm, weight_norm, margin);
            if (n_test > 0) {
                double test_risk = 0.0, test_correct = 0.0;
                for (int b = 0; b < test_blocks; ++b) {
                    test_risk += test_parts[((long long)c * test_blocks + b) * PARTS + PART_RISK];
                    test_correct += test_parts[((long long)c * test_blocks + b) * PARTS + PART_CORRECT];
                }
                trace[TRACE_TEST_RISK * field + at] = narrow(narrow(test_risk, f32) / n_test, f32);
                trace[TRACE_TEST_ACCURACY * field + at] = test_correct / n_test;
            }
        }
        if (neuron_records > 0) {
            double* row = trace_neuron + ((long long)c * neuron_records + slot) * m;
            for (int j = tid; j < m; j += threads) {
                double low = infinity(0.0);
                for (int b = 0; b < B; ++b) low = fmin(low, partial_neuron[((long long)c * B + b) * m + j]);
                row[j] = low;
            }
        }
    }
    if (tid == 0) {
        // The norm beyond the bound, or not finite: weights an update took past the dtype's range.
        if (risk > risk_bound || !(isfinite(weight_norm) && weight_norm <= weight_bound)) {
            diverged[c] = t;
        } else if (t < steps) {
            eta[c] = (double)(T)eta_t;
            moving[c] = 1;
        }
    }
}

// W -= eta grad_W and a -= eta grad_a of the configurations that move; then the step counter advances
// (block 0, thread 0: no other block of this kernel reads it).
template <typename T>
__device__ void update_grid(T* W, T* a, const T* grad, const T* grad_a, const double* eta, const int* moving,
                            long long* clock, int dm, int m, int configs, int train_outer) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long e = first; e < (long long)configs * dm; e += stride) {
        const int c = (int)(e / dm);
        if (moving[c]) W[e] -= (T)eta[c] * grad[e];
    }
    if (train_outer)
        for (long long e = first; e < (long long)configs * m; e += stride) {
            const int c = (int)(e / m);
            if (moving[c]) a[e] -= (T)eta[c] * grad_a[e];
        }
    if (blockIdx.x == 0 && threadIdx.x == 0) clock[0] += 1;
}

}  // namespace lgd

// The parameter lists of the products path's entries (cuda_run.ENTRY_PARAMS lists them for the glue).
#define LGD_ROWS_PARAMS(T)                                                                                       \
    T *Z, const T *y, const T *a, const long long *diverged, const long long *clock, int *fault, double *parts,  \
        T *partial_a, double *partial_neuron, int n, int m, int configs, int rows_per_block,                     \
        int blocks_per_config, int act, double act_param, int loss, double loss_param, double scale,             \
        int train_outer, int held_out, int log_risk_every_step, long long steps, long long record_every,         \
        int neuron_records
#define LGD_ROWS_ARGS()                                                                                          \
    Z, y, a, diverged, clock, fault, parts, partial_a, partial_neuron, n, m, configs, rows_per_block,            \
        blocks_per_config, act, act_param, loss, loss_param, scale, train_outer, held_out, log_risk_every_step,  \
        steps, record_every, neuron_records
#define LGD_NORMS_PARAMS(T)                                                                                      \
    const T *W, const T *grad, const long long *diverged, double *norms, int dm, int blocks_per_config,          \
        int per_block
#define LGD_NORMS_ARGS() W, grad, diverged, norms, dm, blocks_per_config, per_block
#define LGD_FINALIZE_PARAMS(T)                                                                                   \
    const T *a, T *grad_a, const long long *rules, const double *rule_params, const double *sharpness_last,      \
        long long *diverged, const long long *clock, const double *parts, const double *test_parts,              \
        const T *partial_a, const double *partial_neuron, const double *norms, double *eta, int *moving,         \
        double *trace, double *trace_neuron, int n, int m, int n_test, int configs, int blocks_per_config,       \
        int test_blocks, int norm_blocks, int train_outer, double risk_bound, double weight_bound,               \
        int log_risk_every_step, long long steps, long long record_every, int records, int neuron_records
#define LGD_FINALIZE_ARGS()                                                                                      \
    a, grad_a, rules, rule_params, sharpness_last, diverged, clock, parts, test_parts, partial_a,                \
        partial_neuron, norms, eta, moving, trace, trace_neuron, n, m, n_test, configs, blocks_per_config,       \
        test_blocks, norm_blocks, train_outer, risk_bound, weight_bound, log_risk_every_step, steps,             \
        record_every, records, neuron_records
#define LGD_UPDATE_PARAMS(T)                                                                                     \
    T *W, T *a, const T *grad, const T *grad_a, const double *eta, const int *moving, long long *clock, int dm,  \
        int m, int configs, int train_outer
#define LGD_UPDATE_ARGS() W, a, grad, grad_a, eta, moving, clock, dm, m, configs, train_outer
