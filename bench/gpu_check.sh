#!/usr/bin/env bash
# The GPU checks of lgd's cupy backend as one prepared script for a lent GPU machine (device tool), at most
# six minutes, with only what that machine has installed (cupy-cuda13x, numba, torch, jax, pytest,
# pytest-benchmark; no network):
#
#   run(command="bash bench/gpu_check.sh", timeout_s=400)
#
# 1. the GPU test suite: every cupy case of the tests against the numpy oracle, the NVRTC compile check;
# 2. compute-sanitizer memcheck, then racecheck, on a small sweep through the kernel in every layout;
# 3. the GPU benchmark (python -m lgd.benchmark.gpu): lgd-cupy against PyTorch (eager, torch.compile) and
#    JAX (jit of a scanned loop with vmap over the stepsizes; jit per step) on S, M, L, SWEEP-64 and
#    SWEEP-1024 in float64 and float32, each checked against the oracle before it is timed, with the
#    device's FP64/FP32 peaks and the two-product cuBLAS roofline measured in the same run.
# Each step has its own time limit and runs whatever the previous ones did. Everything printed also goes to
# $OUT/gpu_check.log; the results are $OUT/gpu.json and $OUT/gpu.md (commit them as
# bench/results/gpu-h200.{json,md}); the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
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
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
    echo "pip install failed (see install.log): using the source tree on PYTHONPATH with lgd/kernels linked"
    if [ ! -e lgd/kernels ]; then
        ln -s ../kernels lgd/kernels
        trap 'rm -f lgd/kernels' EXIT
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
step info 20 python3 -m lgd.cli info

# The NVRTC compile checks need no GPU (CI runs them): left out here, for time.
step tests 110 python3 -m pytest tests/test_cupy.py tests/test_backends.py tests/test_run_record.py \
    -k "cupy and not compiles" -q -p no:cacheprovider -o addopts="" --junitxml="$out/gpu_tests.xml"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$sanitizer" ]; then
    step memcheck 30 "$sanitizer" --tool memcheck --leak-check no --error-exitcode 7 \
        python3 -m lgd.benchmark.gpu --sanitize
    step racecheck 35 "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 7 \
        python3 -m lgd.benchmark.gpu --sanitize
else
    echo "compute-sanitizer not found: memcheck and racecheck skipped"
    status[memcheck]=skipped
    status[racecheck]=skipped
fi

step bench 140 python3 -m lgd.benchmark.gpu --out "$out" --seconds 115

echo "=== summary after $((SECONDS - begin))s"
for name in info tests memcheck racecheck bench; do
    echo "$name: ${status[$name]:-not run}"
done | tee "$out/summary.txt"
failed=0
grep -q -v -E ': (0|skipped)$' "$out/summary.txt" && failed=1
[ -f "$out/gpu.md" ] && cat "$out/gpu.md"
exit $failed
