#!/usr/bin/env bash
# The GPU checks of lgd's cupy backend, as one prepared script for a lent GPU machine (device tool):
#
#   run(command="bash bench/gpu_check.sh", timeout_s=560)
#
# 1. the GPU comparison tests against the numpy oracle (tests/test_cupy.py), then
# 2. the GPU benchmarks against PyTorch and JAX on the same GPU, recorded as JSON and markdown.
# Everything it writes goes to $OUT (or ./gpu-check-out when OUT is unset): copy the JSON and the table
# into bench/results/ afterwards. Each stage has its own time limit so that a hang cannot eat the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 --version; } 2>&1 | tee "$out/machine.txt"
# The machine has numpy, numba, cupy, torch, jax, pytest and pytest-benchmark: install lgd alone.
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
    echo "pip install failed (see install.log); using the source tree with lgd/kernels linked" | tee -a "$out/install.log"
    ln -sfn ../kernels lgd/kernels
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m lgd.cli info 2>&1 | tee "$out/info.txt"

timeout 240 python3 -m pytest tests/test_cupy.py -q -x -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 280 python3 -m lgd.cli bench --workloads S,SWEEP,SWEEP-1024,LARGE \
    --impls lgd-cupy,torch-compile,torch-analytic,jax-scan,jax-jit --dtypes float64,float32 \
    --steps-scale 0.05 --round-budget 2 --out "$out/gpu.json" --plot "$out/gpu.png" 2>&1 | tee "$out/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu tests exit $tests_rc, gpu bench exit $bench_rc" | tee "$out/summary.txt"
exit $(( tests_rc != 0 || bench_rc != 0 ))
