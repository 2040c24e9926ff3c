#!/usr/bin/env bash
# The GPU checks of lgd's cupy backend as one prepared script for a lent GPU machine (device tool), at most
# six minutes, with only what that machine has installed (cupy-cuda13x, numba, torch, jax, pytest,
# pytest-benchmark; no network):
#
#   run(command="bash bench/gpu_check.sh", timeout_s=480)
#
# 1. the kernel modules of the default launch shape and of 512 threads per block (1.1-1.4x faster on the H200,
#    2026-12-04), compiled (their resources printed);
# 2. the GPU test suite: every cupy case of the tests against the numpy oracle (the products path's cases of
#    tests/test_cuda_products.py included: cuBLAS products and CUDA graphs), at both launch shapes; the
#    README's main job with --backend cupy;
# 3. compute-sanitizer memcheck, then racecheck (slow: a minute), on a small sweep through the kernel in every
#    layout, with held-out data and tangent vectors, and through the products path;
# 4. the GPU benchmark (python -m lgd.benchmark.gpu): lgd-cupy (on the path 'auto' chooses, on the other path,
#    at each launch shape) against PyTorch (eager,
#    torch.compile) and JAX (jit of a scanned loop with vmap over the stepsizes; jit per step) on S, M, L,
#    SWEEP-64 and SWEEP-1024 in float64 and float32, each checked against the oracle before it is timed,
#    with the device's FP64/FP32 peaks and the two-product cuBLAS roofline measured in the same run, and
#    lgd-cupy's fused-kernel cases as ratios to the committed run (bench/results/gpu-h200.json, 2026-12-04:
#    the kernel before its per-neuron pass was reworked, its float64 exp and log1p replaced by the numba
#    kernels' and plain runs given a build of their own with fewer registers (lgd_run_plain), all on the CPU);
# 5. when time is left, Nsight Compute on a chunk of S, SWEEP-1024 and M: where lgd_run's and the products
#    path's time goes, with the warps' stall reasons (the H200 run's timings suggest latency-bound blocks;
#    the counters can say).
# Each step has its own time limit and runs whatever the previous ones did; about 6 minutes in all. Everything
# printed also goes to $OUT/gpu_check.log; the results are $OUT/gpu.json and $OUT/gpu.md (commit them as
# bench/results/gpu-h200.{json,md}); the table is printed last. Other files go to a scratch folder: the
# device tool brings back at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
scratch=$(mktemp -d)
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# JAX would take 75% of the device memory at start; cupy and torch share the device with it here.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
begin=$SECONDS
declare -A status

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record the exit status
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at $((SECONDS - begin))s)"
    timeout --kill-after=5 "$limit" "$@"
    status[$name]=$?
    echo "=== $name: exit ${status[$name]} (at $((SECONDS - begin))s)"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; python3 --version
  python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee "$out/machine.txt"

# lgd itself, from this copy, without the network (its dependencies are on the machine already).
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$scratch/install.log" 2>&1; then
    tail -n 3 "$scratch/install.log"
    echo "pip install failed: using the source tree on PYTHONPATH with lgd/kernels linked"
    if [ ! -e lgd/kernels ]; then
        ln -s ../kernels lgd/kernels
        trap 'rm -f lgd/kernels' EXIT
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
step info 20 python3 -m lgd.cli info
# The RawModule of each launch shape compiles once (NVRTC, about 15 s; the shapes in parallel) into CuPy's
# kernel cache, which the later steps reuse; each prints its resources and the layout of each workload.
shapes=(512x1)
compiles=()
for shape in "${shapes[@]}"; do
    LGD_CUDA_THREADS=${shape%x*} LGD_CUDA_BLOCKS_PER_SM=${shape#*x} timeout 120 \
        python3 -m lgd.benchmark.gpu --describe >"$scratch/describe-$shape.txt" 2>&1 &
    compiles+=($!)
done
step compile 90 python3 -m lgd.benchmark.gpu --describe
# Those compiles by their process ids: a bare `wait` also waits for the tee above, which never ends.
wait "${compiles[@]}"
for shape in "${shapes[@]}"; do echo "--- $shape"; grep -E "lgd_run|module|Error" "$scratch/describe-$shape.txt"; done

# The NVRTC compile checks need no GPU (CI runs them): left out here, for time.
gpu_tests=(tests/test_cupy.py tests/test_backends.py tests/test_run_record.py tests/test_cuda_products.py)
gpu_cases="(cupy or gpu) and not compiles"
step tests 120 python3 -m pytest "${gpu_tests[@]}" -k "$gpu_cases" -q -p no:cacheprovider -o addopts="" --durations=10
# The same tests at the other launch shape (the benchmark times it too).
for shape in "${shapes[@]}"; do
    LGD_CUDA_THREADS=${shape%x*} LGD_CUDA_BLOCKS_PER_SM=${shape#*x} step "tests-$shape" 60 python3 -m pytest \
        "${gpu_tests[@]}" -k "$gpu_cases" -q -x -p no:cacheprovider -o addopts=""
done
# The README's main job on the GPU backend.
step run 60 python3 -m lgd.cli run --backend cupy --out "$scratch/run" --no-plot --no-progress

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$sanitizer" ]; then
    step memcheck 45 "$sanitizer" --tool memcheck --leak-check no --error-exitcode 7 \
        python3 -m lgd.benchmark.gpu --sanitize
    step racecheck 75 "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 7 \
        python3 -m lgd.benchmark.gpu --sanitize
else
    echo "compute-sanitizer not found: memcheck and racecheck skipped"
    status[memcheck]=skipped
    status[racecheck]=skipped
fi

step bench 200 python3 -m lgd.benchmark.gpu --out "$out" --seconds 180

# Where the kernels' time goes, from the hardware counters (Nsight Compute; clocks left alone, as the device
# notes ask): the first lgd_run of S (float64, float32) and SWEEP-1024, and the first lgd_rows and
# lgd_finalize of M, with their stall reasons. Only while the script is within its six minutes.
ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -z "$ncu_bin" ]; then
    echo "ncu not found: the profile skipped"
    status[profile]=skipped
elif [ $((SECONDS - begin)) -gt 390 ]; then
    echo "no time left for the profile: skipped"
    status[profile]=skipped
else
    step profile 50 "$ncu_bin" --clock-control none --target-processes all -k regex:'lgd_(run|rows|finalize)' \
        --launch-count 5 --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
        python3 -m lgd.benchmark.gpu --profile
fi

echo "=== summary after $((SECONDS - begin))s"
for name in info compile tests tests-512x1 run memcheck racecheck bench profile; do
    echo "$name: ${status[$name]:-not run}"
done | tee "$out/summary.txt"
failed=0
grep -q -v -E ': (0|skipped)$' "$out/summary.txt" && failed=1
[ -f "$out/gpu.md" ] && cat "$out/gpu.md"
exit $failed
