// A standalone run of lgd.cu on the host, for the sanitizers (tests/test_cuda_host.py builds it with
// -fsanitize=address,undefined and with -fsanitize=thread and fails on any report).
//
// A small sweep on synthetic data in both dtypes: held-out data, per-neuron margins, a trajectory and
// projections, a trained outer layer, two tangent vectors (Lyapunov exponents), one configuration that
// diverges (the exponential loss at a huge stepsize), in two layouts (everything in shared memory with one
// tile; X, W and the gradient in global memory with several tiles), with blocks of two warps. Every array
// is allocated at its exact size, so that an index one past an end is a heap overflow for AddressSanitizer;
// a missing __syncthreads is a race for ThreadSanitizer. It also checks the warp-shuffle emulation. Exit
// status 0 when every check passes.
// host_compat.h is force-included by the build (g++ -include), lgd.cu included here.

#include "lgd.cu"

#include <cstdio>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "check failed: %s\n", what);
        ++failures;
    }
}

unsigned long long state = 88172645463325252ULL;
double uniform() {  // xorshift64: the same numbers on every machine
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

template <typename T>
void sweep(int tile_rows, int x_shared, int w_shared, int g_shared,
           void (*entry)(unsigned, unsigned, size_t, LGD_RUN_PARAMS(T))) {
    const int n = 37, d = 5, m = 21, n_test = 11, configs = 3, threads = 64, directions_count = 2;
    const long long steps = 12, every = 4, weights_every = 5;
    const int records = (int)(steps / every) + 2, weight_records = (int)(steps / weights_every) + 1;
    std::vector<T> X(n * d), y(n), X_test(n_test * d), y_test(n_test), W(configs * m * d), a(configs * m);
    std::vector<T> directions(directions_count * m * d), workspace(configs * 2 * d * m);
    for (T& v : X) v = (T)(0.5 * uniform());
    for (int i = 0; i < n; ++i) y[i] = uniform() > 0 ? T(1) : T(-1);
    for (T& v : X_test) v = (T)(0.5 * uniform());
    for (int i = 0; i < n_test; ++i) y_test[i] = uniform() > 0 ? T(1) : T(-1);
    for (T& v : W) v = (T)uniform();
    for (int k = 0; k < configs * m; ++k) a[k] = k % 2 ? T(-1) : T(1);
    for (T& v : directions) v = (T)uniform();
    // Constant stepsizes 0.3 and 2 and 1e6 (diverges); the log-risk at every step, as the adaptive rule needs.
    std::vector<long long> rules(configs, lgd::RULE_CONSTANT);
    std::vector<double> rule_params = {0.3, 0.0, 0.0, 2.0, 0.0, 0.0, 1e6, 0.0, 0.0};
    std::vector<long long> diverged(configs, -1);
    std::vector<int> fault(1, 0);
    std::vector<double> trace(9 * configs * records, -7.0), neuron(configs * records * m, -7.0);
    std::vector<double> projections(configs * weight_records * directions_count, -7.0);
    std::vector<T> weights(configs * weight_records * m * d), outer(configs * weight_records * m);
    // Two tangent vectors per configuration (Lyapunov exponents); their workspace and row space.
    const int tangent_count = 2;
    std::vector<double> tangents(configs * tangent_count * m * d), tangents_a(configs * tangent_count * m);
    std::vector<double> log_growth(configs * tangent_count, 0.0), lyapunov(configs * records * tangent_count, -7.0);
    std::vector<double> row_space(configs * 3 * tile_rows);
    for (double& v : tangents) v = uniform() / (m * d);
    for (double& v : tangents_a) v = uniform() / m;
    workspace.resize(configs * (4 * d * m + 2 * m));
    const size_t shared = lgd::shared_bytes(n, d, m, sizeof(T), threads, tile_rows, x_shared, w_shared, g_shared);
    for (int loss : {lgd::LOSS_EXPONENTIAL, lgd::LOSS_LOGISTIC}) {
        for (int pass = 0; pass < 2; ++pass) {  // trajectory, then projections
            const long long start = 0, stop = steps + 1;
            entry(configs, threads, shared, X.data(), y.data(), X_test.data(), y_test.data(), W.data(), a.data(),
                  rules.data(), rule_params.data(), diverged.data(), fault.data(), workspace.data(), trace.data(),
                  neuron.data(), directions.data(), weights.data(), outer.data(), projections.data(), n, d, m, n_test,
                  lgd::ACT_LEAKY_SOFTPLUS, 0.5, loss, 0.0, 1.0 / m, 1, 1e10, 1e4, 1, start, stop, steps, every,
                  weights_every, configs, records, records, pass == 0 ? weight_records : 0,
                  pass == 0 ? weight_records : 0, pass == 0 ? 0 : directions_count, tangents.data(),
                  tangents_a.data(), log_growth.data(), lyapunov.data(), row_space.data(), tangent_count, records,
                  tile_rows, x_shared, w_shared, g_shared);
        }
        check(fault[0] == 0, "no fault");
        check(diverged[0] < 0, "the small stepsize runs to the end");
        check(diverged[2] >= 0 && diverged[2] < steps, "the huge stepsize diverges (risk or weight bound)");
        check(trace[0] > 0 && trace[0] < 10, "a finite first risk");
        check(trace[6 * configs * records] > 0, "a held-out risk");
        const long long last_slot = steps % every == 0 ? steps / every : steps / every + 1;
        const double last_sum = lyapunov[last_slot * tangent_count + tangent_count - 1];
        check(last_sum != -7.0 && last_sum == last_sum, "a finite Lyapunov sum at the last record");
        for (long long t = 0; t < configs; ++t) diverged[t] = -1;
    }
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
    std::printf("host check: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
