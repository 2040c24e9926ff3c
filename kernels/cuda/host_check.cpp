// A standalone run of lgd.cu on the host, for the sanitizers (tests/test_cuda_host.py builds it with
// -fsanitize=address,undefined and with -fsanitize=thread and fails on any report).
//
// A small sweep on synthetic data in both dtypes: held-out data, per-neuron margins, a trajectory and
// projections, a trained outer layer, two tangent vectors (Lyapunov exponents), a stepsize from the
// sharpness (inverse_sharpness), one configuration that diverges (the exponential loss at a huge
// stepsize), in two layouts (everything in shared memory with one
// tile; X, W and the gradient in global memory with several tiles), with blocks of two warps; the plain
// build (lgd_run_plain) on the same sweep without the held-out data, records and tangents; then the same
// kind of sweep through the products path's kernels (products.cuh), its products as plain loops. Every array
// is allocated at its exact size, so that an index one past an end is a heap overflow for AddressSanitizer;
// a missing __syncthreads is a race for ThreadSanitizer. It also checks the warp-shuffle emulation. Exit
// status 0 when every check passes.
// host_compat.h is force-included by the build (g++ -include), lgd.cu included here.

#include "lgd.cu"

#include <cstdio>
#include <limits>
#include <vector>

namespace {

int failures = 0;
const double NaN = std::numeric_limits<double>::quiet_NaN();

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "check failed: %s\n", what);
        ++failures;
    }
}

// The host entries of the products path by dtype.
template <typename T> struct Entries;
template <> struct Entries<double> {
    static constexpr auto rows = lgd_rows_f64_host;
    static constexpr auto norms = lgd_norms_f64_host;
    static constexpr auto finalize = lgd_finalize_f64_host;
    static constexpr auto update = lgd_update_f64_host;
};
template <> struct Entries<float> {
    static constexpr auto rows = lgd_rows_f32_host;
    static constexpr auto norms = lgd_norms_f32_host;
    static constexpr auto finalize = lgd_finalize_f32_host;
    static constexpr auto update = lgd_update_f32_host;
};

unsigned long long state = 88172645463325252ULL;
double uniform() {  // xorshift64: the same numbers on every machine
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

// Synthetic data (inputs in [-0.5, 0.5], labels +-1), weights in [-1, 1] and outer weights +-1.
template <typename T>
void fill(std::vector<T>& X, std::vector<T>& y, std::vector<T>& X_test, std::vector<T>& y_test, std::vector<T>& W,
          std::vector<T>& a) {
    for (T& v : X) v = (T)(0.5 * uniform());
    for (T& v : y) v = uniform() > 0 ? T(1) : T(-1);
    for (T& v : X_test) v = (T)(0.5 * uniform());
    for (T& v : y_test) v = uniform() > 0 ? T(1) : T(-1);
    for (T& v : W) v = (T)uniform();
    for (size_t k = 0; k < a.size(); ++k) a[k] = k % 2 ? T(-1) : T(1);
}

// `plain`: the sweep the plain build (lgd_run_plain) gets, without held-out data, trajectories, projections
// and tangent vectors.
template <typename T>
void sweep(int tile_rows, int x_shared, int w_shared, int g_shared,
           void (*entry)(unsigned, unsigned, size_t, LGD_RUN_PARAMS(T)), bool plain = false) {
    const int n = 37, d = 5, m = 21, n_test = plain ? 0 : 11, configs = 3, threads = 64, directions_count = 2;
    const long long steps = 12, every = 4, weights_every = 5;
    const int records = (int)(steps / every) + 2, weight_records = (int)(steps / weights_every) + 1;
    std::vector<T> X(n * d), y(n), X_test(n_test * d), y_test(n_test), W(configs * m * d), a(configs * m);
    std::vector<T> directions(directions_count * m * d), workspace(configs * 2 * d * m);
    fill(X, y, X_test, y_test, W, a);
    for (T& v : directions) v = (T)uniform();
    // Stepsizes 0.3, 2 (2 / lambda_max at a measured sharpness of 1) and 1e6 (diverges); the log-risk at
    // every step, as the adaptive rule needs.
    std::vector<long long> rules = {lgd::RULE_CONSTANT, lgd::RULE_INVERSE_SHARPNESS, lgd::RULE_CONSTANT};
    std::vector<double> rule_params = {0.3, 0.0, 0.0, 2.0, 0.0, 0.0, 1e6, 0.0, 0.0};
    std::vector<double> sharpness_last = {NaN, 1.0, NaN};
    std::vector<long long> diverged(configs, -1);
    std::vector<int> fault(1, 0);
    std::vector<double> trace(9 * configs * records, -7.0), neuron(configs * records * m, -7.0);
    std::vector<double> projections(configs * weight_records * directions_count, -7.0);
    std::vector<T> weights(configs * weight_records * m * d), outer(configs * weight_records * m);
    // Two tangent vectors per configuration (Lyapunov exponents); their workspace and row space.
    const int tangent_count = plain ? 0 : 2;
    std::vector<double> tangents(configs * tangent_count * m * d), tangents_a(configs * tangent_count * m);
    std::vector<double> log_growth(configs * tangent_count, 0.0), lyapunov(configs * records * tangent_count, -7.0);
    std::vector<double> row_space(configs * 3 * tile_rows);
    for (double& v : tangents) v = uniform() / (m * d);
    for (double& v : tangents_a) v = uniform() / m;
    workspace.resize(configs * (4 * d * m + 2 * m));
    const size_t shared = lgd::shared_bytes(n, d, m, sizeof(T), threads, tile_rows, x_shared, w_shared, g_shared);
    for (int loss : {lgd::LOSS_EXPONENTIAL, lgd::LOSS_LOGISTIC}) {
        for (int pass = 0; pass < (plain ? 1 : 2); ++pass) {  // trajectory, then projections (none if plain)
            const int trajectory = pass == 0 && !plain ? weight_records : 0;
            const long long start = 0, stop = steps + 1;
            entry(configs, threads, shared, X.data(), y.data(), X_test.data(), y_test.data(), W.data(), a.data(),
                  rules.data(), rule_params.data(), sharpness_last.data(), diverged.data(), fault.data(),
                  workspace.data(), trace.data(), neuron.data(), directions.data(), weights.data(), outer.data(),
                  projections.data(), n, d, m, n_test, lgd::ACT_LEAKY_SOFTPLUS, 0.5, loss, 0.0, 1.0 / m, 1, 1e10, 1e4,
                  1, start, stop, steps, every, weights_every, configs, records, records,
                  trajectory, trajectory, pass == 0 ? 0 : directions_count,
                  tangents.data(), tangents_a.data(), log_growth.data(), lyapunov.data(), row_space.data(),
                  tangent_count, records, tile_rows, x_shared, w_shared, g_shared);
        }
        check(fault[0] == 0, "no fault");
        check(diverged[0] < 0, "the small stepsize runs to the end");
        check(diverged[2] >= 0 && diverged[2] < steps, "the huge stepsize diverges (risk or weight bound)");
        check(trace[0] > 0 && trace[0] < 10, "a finite first risk");
        check(plain || trace[6 * configs * records] > 0, "a held-out risk");
        check(trace[lgd::TRACE_ETA * configs * records + records] == 2.0, "eta = 2 / lambda_max");
        if (!plain) {
            const long long last_slot = steps % every == 0 ? steps / every : steps / every + 1;
            const double last_sum = lyapunov[last_slot * tangent_count + tangent_count - 1];
            check(last_sum != -7.0 && last_sum == last_sum, "a finite Lyapunov sum at the last record");
        }
        for (long long t = 0; t < configs; ++t) diverged[t] = -1;
    }
}

// The products path (products.cuh) on a small sweep: the glue's sequence of one step (Z = X W^T, lgd_rows,
// grad = G^T X, the held-out pass at record steps, lgd_norms, lgd_finalize, lgd_update), the products as plain
// loops, rows and norms in several blocks per configuration, one configuration diverging.
template <typename T>
void products_sweep() {
    const int n = 29, d = 4, m = 19, n_test = 9, configs = 3, threads = 64, rows = 4, per_block = 2 * threads;
    const long long steps = 10, every = 3;
    const int records = (int)(steps / every) + 2, blocks = (n + rows - 1) / rows;
    const int test_blocks = (n_test + rows - 1) / rows;
    const int dm = d * m, norm_blocks = (dm + per_block - 1) / per_block, width = configs * m;
    std::vector<T> X(n * d), y(n), X_test(n_test * d), y_test(n_test), W(configs * dm), a(configs * m);
    fill(X, y, X_test, y_test, W, a);
    std::vector<long long> rules = {lgd::RULE_CONSTANT, lgd::RULE_INVERSE_SHARPNESS, lgd::RULE_CONSTANT};
    std::vector<long long> diverged(configs, -1), clock(1, 0);
    std::vector<double> rule_params = {0.3, 0.0, 0.0, 2.0, 0.0, 0.0, 1e6, 0.0, 0.0};
    std::vector<double> sharpness_last = {NaN, 1.0, NaN};
    std::vector<int> fault(1, 0), moving(configs, 0);
    std::vector<T> Z(n * width), Z_test(n_test * width), grad(configs * dm), grad_a(configs * m);
    std::vector<T> partial_a(configs * blocks * m);
    std::vector<double> parts(configs * blocks * lgd::PARTS), test_parts(configs * test_blocks * lgd::PARTS);
    std::vector<double> partial_neuron(configs * blocks * m), norms(configs * norm_blocks * 2), eta(configs);
    std::vector<double> trace(9 * configs * records, -7.0), neuron(configs * records * m, -7.0);
    auto forward = [&](const std::vector<T>& data, int rows_of, std::vector<T>& out) {
        for (int i = 0; i < rows_of; ++i)
            for (int col = 0; col < width; ++col) {
                T sum = T(0);
                for (int k = 0; k < d; ++k) sum += data[i * d + k] * W[col * d + k];
                out[i * width + col] = sum;
            }
    };
    const size_t rows_shared = lgd::rows_shared_bytes(m, sizeof(T), threads, rows);
    const size_t scratch = lgd::align16(sizeof(double) * lgd::reduce_scratch(threads));
    auto rows_pass = [&](std::vector<T>& z, const std::vector<T>& labels, std::vector<double>& out, int count,
                         int count_blocks, int held_out) {
        Entries<T>::rows(configs * count_blocks, threads, rows_shared, z.data(), labels.data(), a.data(),
                         diverged.data(), clock.data(), fault.data(), out.data(), partial_a.data(),
                         partial_neuron.data(), count, m, configs, rows, count_blocks, lgd::ACT_LEAKY_SOFTPLUS, 0.5,
                         lgd::LOSS_EXPONENTIAL, 0.0, 1.0 / m, 1, held_out, 1, steps, every, records);
    };
    for (long long t = 0; t <= steps; ++t) {
        const bool record = lgd::record_slot(t, steps, every) >= 0;
        forward(X, n, Z);
        rows_pass(Z, y, parts, n, blocks, 0);
        for (int col = 0; col < width; ++col)
            for (int k = 0; k < d; ++k) {
                T sum = T(0);
                for (int i = 0; i < n; ++i) sum += Z[i * width + col] * X[i * d + k];
                grad[col * d + k] = sum;
            }
        if (record) {
            forward(X_test, n_test, Z_test);
            rows_pass(Z_test, y_test, test_parts, n_test, test_blocks, 1);
        }
        Entries<T>::norms(configs * norm_blocks, threads, scratch, W.data(), grad.data(), diverged.data(),
                         norms.data(), dm, norm_blocks, per_block);
        Entries<T>::finalize(configs, threads, scratch, a.data(), grad_a.data(), rules.data(), rule_params.data(),
                            sharpness_last.data(), diverged.data(), clock.data(), parts.data(), test_parts.data(),
                            partial_a.data(), partial_neuron.data(), norms.data(), eta.data(), moving.data(),
                            trace.data(), neuron.data(), n, m, n_test, configs, blocks, test_blocks, norm_blocks,
                            1, 1e10, 1e4, 1, steps, every, records, records);
        Entries<T>::update(3, threads, 0, W.data(), a.data(), grad.data(), grad_a.data(), eta.data(), moving.data(),
                          clock.data(), dm, m, configs, 1);
    }
    check(fault[0] == 0, "products: no fault");
    check(clock[0] == steps + 1, "products: the step counter advanced once per step");
    check(diverged[0] < 0 && diverged[1] < 0, "products: the small stepsizes run to the end");
    check(diverged[2] >= 0 && diverged[2] < steps, "products: the huge stepsize diverges");
    check(trace[0] > 0 && trace[0] < 10, "products: a finite first risk");
    check(trace[6 * configs * records] > 0, "products: a held-out risk");
    check(trace[lgd::TRACE_ETA * configs * records + records] == 2.0, "products: eta = 2 / lambda_max");
    check(neuron[0] != -7.0, "products: neuron margins");
}

// The shuffles of host_compat.h against their definition, in one warp and across two.
void shuffles() {
    std::vector<int> down(64), across(64);
    lgd::host::launch(1, 64, 0, [&] {
        down[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x * 10, 3);
        across[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    });
    for (int tid = 0; tid < 64; ++tid) {
        const int lane = tid % 32;
        check(down[tid] == (lane + 3 < 32 ? tid + 3 : tid) * 10, "__shfl_down_sync");
        check(across[tid] == (tid ^ 1), "__shfl_xor_sync");
    }
}

}  // namespace

int main() {
    shuffles();
    sweep<double>(64, 1, 1, 1, lgd_run_f64_host);
    sweep<double>(8, 0, 0, 0, lgd_run_f64_host);
    sweep<float>(64, 1, 1, 1, lgd_run_f32_host);
    sweep<float>(8, 0, 0, 0, lgd_run_f32_host);
    sweep<double>(8, 0, 0, 0, lgd_run_plain_f64_host, true);
    sweep<float>(8, 0, 0, 0, lgd_run_plain_f32_host, true);
    products_sweep<double>();
    products_sweep<float>();
    lgd::host::pool().shutdown();
    std::printf("host check: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
