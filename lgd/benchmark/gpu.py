"""The GPU benchmark of bench/gpu_check.sh: lgd's cupy backend against PyTorch and JAX on one lent GPU, within a
deadline, with the device's measured peaks and the two-product cuBLAS roofline.

``python -m lgd.benchmark.gpu --out DIR --seconds 150`` runs the cases of :func:`plan` in order (the comparisons
the targets name first, torch.compile last: its compiles are the slowest), each checked against lgd's numpy
oracle before it is timed, and stops starting new cases once the deadline is near; what it did not reach is
listed as skipped. It writes ``gpu.json`` and ``gpu.md`` to DIR and prints the table last. Implementations
are those of :mod:`lgd.benchmark.peers` on the device: ``lgd-cupy``; ``torch-analytic`` (eager) and
``torch-compile``; ``jax-scan`` (jit of a scanned loop, vmap over the stepsizes) and ``jax-jit``.

``python -m lgd.benchmark.gpu --describe`` builds the kernel module and prints its resources and the layout of
each workload; ``python -m lgd.benchmark.gpu --sanitize`` runs a small sweep through the kernel on the device in every
layout (for compute-sanitizer's memcheck and racecheck; exit status 0 when every check holds);
``python -m lgd.benchmark.gpu --profile`` runs a chunk of a few workloads for Nsight Compute.

Workloads (lgd.benchmark.workloads): S (n=256 d=16 m=64), M (n=360 d=64 m=256), L (n=2000 d=3072 m=256),
SWEEP-64 and SWEEP-1024 (S at 64 or 1,024 stepsizes log-spaced over 1e-1..1e3). cupy, torch and jax are
imported inside the functions that use them: this module imports on a machine without them (its CPU test
checks the plan, the arguments and the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np

from .workloads import CHECK_RTOL, CHECK_STEPS, WORKLOADS, Workload, oracle_final_risk

FORMAT = "lgd-gpu-bench/1"
IMPLS = ("lgd-cupy", "jax-scan", "torch-analytic", "jax-jit", "torch-compile")
DTYPES = ("float64", "float32")
WORKLOAD_NAMES = ("S", "SWEEP-1024", "L", "M", "SWEEP-64")
# Launch shapes of lgd-cupy timed besides the default (threads per block x blocks per multiprocessor, see
# lgd.kernels.cupy_gpu.launch_shape), on every workload but L, after the lgd and JAX loop cases. On the H200
# (2026-12-04) 512x1 ran 1.1-1.4x faster than the default and 256x2 0.7x on S: the others are left out.
LAUNCHES = ("512x1",)
# lgd-cupy on the path 'auto' does not take (lgd.kernels.cuda_products.choose: the products path for M and
# L, the fused kernel for S and the sweeps), timed after the lgd and JAX loop cases so that a lent GPU can
# settle the choice; L on the fused kernel ran at 3.75 steps/s on the H200 (2026-12-04) and is left out.
OTHER_PATHS = {"S": "products", "SWEEP-64": "products", "SWEEP-1024": "products", "M": "fused"}
# Seconds a timed call aims at (its steps are chosen from the checked run's speed).
TIMED_SECONDS = 0.6
# Configurations of a sweep the oracle check compares (first, middle, last): the numpy oracle is slow.
CHECKED_CONFIGS = 3


def workload(name: str) -> Workload:
    """A workload by name: SWEEP-64 is lgd.benchmark's SWEEP (64 stepsizes)."""
    return WORKLOADS["SWEEP" if name == "SWEEP-64" else name]


def plan(workloads=WORKLOAD_NAMES, impls=IMPLS, dtypes=DTYPES, launches=LAUNCHES, paths=True) -> list[tuple]:
    """(workload, impl, dtype, variant) in the order they run: implementation by implementation in the order
    of `impls` (lgd and the JAX loop first), each over the workloads and dtypes, so that a deadline cuts the
    least informative cases; lgd-cupy on its other path ('path:NAME', with `paths`) and at its other
    `launches` (variant None: the default shape and path) come after the first two implementations."""
    cases = [(name, impl, dtype, None) for impl in impls for name in workloads for dtype in dtypes]
    others = []
    if "lgd-cupy" in impls:
        others = [(name, "lgd-cupy", dtype, f"path:{OTHER_PATHS[name]}") for name in workloads
                  if paths and name in OTHER_PATHS for dtype in dtypes]
        others += [(name, "lgd-cupy", dtype, launch) for launch in launches for name in workloads if name != "L"
                   for dtype in dtypes]
    first = sum(1 for case in cases if case[1] in impls[:2])
    return cases[:first] + others + cases[first:]


def launch_shape(text: str) -> tuple[int, int]:
    """'512x1' as (512, 1)."""
    threads, _, blocks = text.partition("x")
    return int(threads), int(blocks)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lgd.benchmark.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-bench-out", help="folder for gpu.json and gpu.md")
    parser.add_argument("--seconds", type=float, default=150.0, help="deadline of the whole benchmark")
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES))
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--launches", default=",".join(LAUNCHES),
                        help="lgd-cupy's launch shapes besides the default, THREADSxBLOCKS_PER_SM ('' for none)")
    parser.add_argument("--sanitize", action="store_true", help="run the small sweep for compute-sanitizer")
    parser.add_argument("--describe", action="store_true",
                        help="build the kernel module; print its resources and each workload's layout")
    parser.add_argument("--profile", action="store_true",
                        help="the short runs bench/gpu_check.sh profiles with Nsight Compute")
    args = parser.parse_args(argv)
    for option, valid in (("workloads", WORKLOAD_NAMES), ("impls", IMPLS), ("dtypes", DTYPES)):
        chosen = [item for item in getattr(args, option).split(",") if item]
        unknown = sorted(set(chosen) - set(valid))
        if unknown:
            parser.error(f"unknown {option}: {', '.join(unknown)}; valid: {', '.join(valid)}")
        setattr(args, option, chosen)
    args.launches = [item for item in args.launches.split(",") if item]
    for item in args.launches:
        try:
            launch_shape(item)
        except ValueError:
            parser.error(f"a launch shape is THREADSxBLOCKS_PER_SM, e.g. 512x1; got {item!r}")
    return args


def device_peaks(seconds: float = 0.3) -> dict:
    """Measured on the current device: FP64 and FP32 FMA peaks of the vector units (a RawKernel of independent
    FMA chains), and the cuBLAS GEMM rates of 8192-square products (FP64 there runs on the tensor cores)."""
    import cupy

    source = r"""
    template <typename T> __device__ void chains(T* out, T seed, int rounds) {
        T a0 = seed, a1 = seed + T(1), a2 = seed + T(2), a3 = seed + T(3), a4 = seed + T(4), a5 = seed + T(5),
          a6 = seed + T(6), a7 = seed + T(7);
        const T b = T(0.999999), c = T(1e-7);
        for (int r = 0; r < rounds; ++r) {
            a0 = a0 * b + c; a1 = a1 * b + c; a2 = a2 * b + c; a3 = a3 * b + c;
            a4 = a4 * b + c; a5 = a5 * b + c; a6 = a6 * b + c; a7 = a7 * b + c;
        }
        out[blockIdx.x * blockDim.x + threadIdx.x] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    }
    extern "C" __global__ void fma_f64(double* out, double seed, int rounds) { chains(out, seed, rounds); }
    extern "C" __global__ void fma_f32(float* out, float seed, int rounds) { chains(out, seed, rounds); }
    """
    module = cupy.RawModule(code=source, options=("--std=c++17",))
    runtime = cupy.cuda.runtime
    sms = runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, cupy.cuda.Device().id)
    blocks, threads, rounds = sms * 16, 256, 4096
    peaks = {"sms": sms}
    for dtype, suffix in (("float64", "f64"), ("float32", "f32")):
        kernel = module.get_function(f"fma_{suffix}")
        out = cupy.empty(blocks * threads, dtype=dtype)
        args = (out, np.dtype(dtype).type(1.0), np.int32(rounds))
        best = _best_device_time(lambda: kernel((blocks,), (threads,), args), seconds)
        peaks[f"fma_{dtype}_tflops"] = 2.0 * 8 * rounds * blocks * threads / best / 1e12
        size = 8192 if dtype == "float32" else 4096
        a = cupy.random.standard_normal((size, size)).astype(dtype)
        product = cupy.empty_like(a)
        best = _best_device_time(lambda: cupy.matmul(a, a, out=product), seconds)
        peaks[f"gemm_{dtype}_tflops"] = 2.0 * size ** 3 / best / 1e12
    return peaks


def _best_device_time(call, seconds: float) -> float:
    """Best time of `call` on the device (events around it), repeated for about `seconds`."""
    import cupy

    call()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    best, begun = math.inf, time.perf_counter()
    while time.perf_counter() - begun < seconds or best == math.inf:
        start.record()
        call()
        stop.record()
        stop.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def product_roofline(work: Workload, dtype: str, seconds: float = 0.2) -> dict:
    """Config-steps per second of the two products of a step alone, cuBLAS on the device (all configurations
    stacked into one product each, the best shape): the bound the L target is measured against."""
    import cupy

    rng = cupy.random.default_rng(0)
    n, d, m, configs = work.n, work.d, work.m, work.configs
    X = rng.standard_normal((n, d)).astype(dtype)
    W = rng.standard_normal((configs * m, d)).astype(dtype)
    G = rng.standard_normal((configs * m, n)).astype(dtype)
    Z, grad = cupy.empty((n, configs * m), dtype), cupy.empty((configs * m, d), dtype)

    def products():
        cupy.matmul(X, W.T, out=Z)
        cupy.matmul(G, X, out=grad)

    best = _best_device_time(products, seconds)
    return {"products_s": best, "steps_per_s": configs / best, "gflops": work.flops_per_step * configs / best / 1e9}


def run_case(name: str, impl: str, dtype: str, deadline: float, launch: str | None = None) -> dict:
    """Check `impl` on workload `name` against the oracle, then time it: one record (or raises). `launch`
    (lgd-cupy only) is a launch shape, or 'path:NAME' a path (lgd.kernels.cuda_products.PATHS), through the
    environment that lgd.kernels.cupy_gpu and cuda_products read."""
    if launch is None:
        return _run_case(name, impl, dtype, deadline)
    if launch.startswith("path:"):
        settings = {"LGD_CUDA_PATH": launch.removeprefix("path:")}
    else:
        threads, blocks = launch_shape(launch)
        settings = {"LGD_CUDA_THREADS": str(threads), "LGD_CUDA_BLOCKS_PER_SM": str(blocks)}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        record = _run_case(name, impl, dtype, deadline)
        return record if launch.startswith("path:") else {**record, "launch": launch}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_case(name: str, impl: str, dtype: str, deadline: float) -> dict:
    from . import peers

    work = workload(name)
    record = {"workload": name, "impl": impl, "dtype": dtype, "n": work.n, "d": work.d, "m": work.m,
              "configs": work.configs}
    if impl == "lgd-cupy":
        from ..kernels import cuda_products, cupy_gpu

        record["launch"] = "{}x{}".format(*cupy_gpu.launch_shape())
        engine = cupy_gpu.GpuEngine()
        record["path"] = cuda_products.choose(None, work.n, work.d, work.m, np.dtype(dtype).itemsize, engine.threads,
                                              engine.shared_budget, configs=work.configs,
                                              memory_budget=engine.memory_budget)
    tic = time.perf_counter()
    run = peers.prepare(impl, work, dtype, device=True)
    risk = run(CHECK_STEPS)  # the first call compiles
    record["first_call_s"] = time.perf_counter() - tic
    picks = sorted({0, work.configs // 2, work.configs - 1})[:CHECKED_CONFIGS]
    expected = oracle_final_risk(replace(work, stepsizes=tuple(work.stepsizes[i] for i in picks)), dtype)
    got = np.asarray(risk)[picks, -1]
    error = float(np.max(np.abs(got - expected) / np.abs(expected)))
    record["check_rel_error"] = error
    if not error <= CHECK_RTOL[dtype]:
        raise AssertionError(f"{impl} disagrees with the oracle on {name} {dtype}: relative error {error:.2e}")
    tic = time.perf_counter()
    run(CHECK_STEPS)
    per_step = max((time.perf_counter() - tic) / CHECK_STEPS, 1e-7)
    left = max(0.05, min(TIMED_SECONDS, (deadline - time.perf_counter()) / 4))
    steps = int(min(work.steps, max(CHECK_STEPS, left / per_step)))
    if impl == "jax-scan":
        run(steps)  # jax-scan compiles once per number of steps: not in the timed call
    best = math.inf
    for _ in range(2):
        tic = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - tic)
    record.update(steps=steps, seconds=best, steps_per_s=work.configs * steps / best,
                  gflops=work.flops_per_step * work.configs * steps / best / 1e9)
    return record


# An earlier run of this benchmark on the same kind of device (committed from bench/gpu_check.sh's output):
# lgd-cupy's fused-kernel cases are also given as ratios to it, so that a run after a change of the kernel
# shows what the change did (across runs: the default's figures moved up to 15% between two runs there).
RECORDED = Path("bench/results/gpu-h200.json")


def _recorded_key(record: dict) -> tuple | None:
    """The key of an lgd-cupy record on the fused kernel: (workload, dtype, launch shape or 'default')."""
    if record.get("impl") != "lgd-cupy" or record.get("path", "fused") != "fused":
        return None
    return record["workload"], record["dtype"], record.get("launch") or "default"


def recorded_rates(path: Path = RECORDED) -> tuple[str | None, dict]:
    """(the date of the earlier run, its lgd-cupy fused-kernel steps/s by _recorded_key) from a committed
    report: its 'benchmark' section (the default launch shape) and its 'launch_shapes' section (each
    record under the shape it names). (None, {}) where there is no such file."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None, {}
    rates = {}
    for section in ("benchmark", "launch_shapes"):
        for record in (saved.get(section) or {}).get("records") or []:
            key = _recorded_key(record)
            if key is not None:
                rates[key] = record["steps_per_s"]
    return saved.get("date") or (saved.get("benchmark") or {}).get("created"), rates


def ratios(records: list, peaks: dict, rooflines: dict, recorded: dict | None = None) -> None:
    """Add to each record its ratios to jax-scan on the same case, to the FP peak of its dtype, to the
    two-product roofline and (lgd-cupy's fused kernel) to the `recorded` steps/s of the same case, by
    _recorded_key (in place)."""
    by_case = {(r["workload"], r["impl"], r["dtype"]): r for r in records}
    for record in records:
        key = _recorded_key(record)
        before = (recorded or {}).get(key) if key else None
        record["vs_recorded"] = record["steps_per_s"] / before if before else None
        jax = by_case.get((record["workload"], "jax-scan", record["dtype"]))
        record["vs_jax_scan"] = record["steps_per_s"] / jax["steps_per_s"] if jax else None
        peak = peaks.get(f"fma_{record['dtype']}_tflops")
        record["fraction_of_fma_peak"] = record["gflops"] / (peak * 1e3) if peak else None
        roof = rooflines.get((record["workload"], record["dtype"]))
        record["vs_product_roofline"] = record["steps_per_s"] / roof["steps_per_s"] if roof else None


COLUMNS = ("workload", "dtype", "impl", "launch", "path", "steps_per_s", "gflops", "vs_jax_scan",
           "fraction_of_fma_peak", "vs_product_roofline", "vs_recorded", "first_call_s", "check_rel_error")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(report: dict) -> str:
    """The report as markdown: the device, its peaks, one row per case, the skipped and failed cases."""
    peaks = report.get("peaks") or {}
    lines = [f"# lgd GPU benchmark ({report.get('created', '')})", "",
             f"Device: {report.get('device') or 'unknown'}", ""]
    if peaks:
        lines += ["Measured peaks (TFLOP/s): " + ", ".join(f"{key} {value:.3g}" for key, value in peaks.items()
                                                           if key.endswith("tflops")), ""]
    if report.get("recorded_date"):
        lines += [f"vs_recorded: lgd-cupy's fused kernel against the run of {report['recorded_date']} "
                  f"({RECORDED}), same case and launch shape.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for record in report.get("records", []):
        lines.append("| " + " | ".join(_cell(record.get(column)) for column in COLUMNS) + " |")
    for title, key in (("Failed", "failed"), ("Skipped", "skipped")):
        if report.get(key):
            lines += ["", f"{title}:", *(f"- {entry}" for entry in report[key])]
    return "\n".join(lines) + "\n"


def _device() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{name}, driver {cupy.cuda.runtime.driverGetVersion()}, runtime {cupy.cuda.runtime.runtimeGetVersion()}"


def benchmark(args) -> dict:
    """Every case of the plan until the deadline; the report (also written to args.out after each case)."""
    deadline = time.perf_counter() + args.seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recorded_date, recorded = recorded_rates()
    report = {"format": FORMAT, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": None, "peaks": None,
              "recorded_date": recorded_date, "rooflines": [], "records": [], "failed": [], "skipped": []}

    def save():
        (out / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "gpu.md").write_text(markdown(report))

    for step, action in (("device", _device), ("peaks", device_peaks)):
        try:
            report[step] = action()
        except Exception as exc:  # one failure must not lose the rest
            report["failed"].append(f"{step}: {type(exc).__name__}: {exc}")
    rooflines = {}
    for name in args.workloads:
        for dtype in args.dtypes:
            try:
                rooflines[(name, dtype)] = product_roofline(workload(name), dtype)
                report["rooflines"].append({"workload": name, "dtype": dtype, **rooflines[(name, dtype)]})
            except Exception as exc:
                report["failed"].append(f"roofline {name} {dtype}: {type(exc).__name__}: {exc}")
    save()
    for name, impl, dtype, launch in plan(args.workloads, args.impls, args.dtypes, args.launches):
        case = f"{name} {impl} {dtype}" + (f" {launch}" if launch else "")
        if time.perf_counter() > deadline - (40 if impl == "torch-compile" else 8):
            report["skipped"].append(f"{case}: out of time")
            continue
        print(f"-- {case}", flush=True)
        try:
            report["records"].append(run_case(name, impl, dtype, deadline, launch))
        except Exception as exc:
            message = f"{case}: {type(exc).__name__}: {exc}"
            print(message + "\n" + traceback.format_exc(limit=3), flush=True)
            (report["skipped"] if type(exc).__name__ == "Unavailable" else report["failed"]).append(message)
        ratios(report["records"], report["peaks"] or {}, rooflines, recorded)
        save()
    return report


def sanitize_sweep() -> int:
    """A small sweep on the device, both dtypes, with a diverging configuration and held-out data: through
    the products path first (cuBLAS products, its four kernels, every step from CUDA graphs;
    it has not run on a GPU before), then through lgd_run in every layout (shared memory, global memory
    with small tiles) with two tangent vectors: 0 when the records are sane."""
    import cupy

    import lgd

    from ..kernels import cuda_products, cuda_run, cupy_gpu

    cupy.cuda.set_allocator(None)  # one cudaMalloc per array: memcheck sees each array's own bounds
    failures = 0
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((37, 5)) / 3, np.where(rng.standard_normal(37) > 0, 1.0, -1.0)
    activation, loss = lgd.activations.get("leaky_softplus"), lgd.losses.get("exponential")
    C, m, k = 3, 21, 2  # configurations, width, tangent vectors (Lyapunov exponents)
    for dtype in ("float64", "float32"):
        def batch():  # the arrays of a batch of C configurations, in this dtype, on the device
            return (cupy.asarray(X, dtype=dtype), cupy.asarray(y, dtype=dtype), cupy.asarray(X[:11], dtype=dtype),
                    cupy.asarray(y[:11], dtype=dtype), cupy.asarray(rng.standard_normal((C, m, 5)), dtype=dtype),
                    cupy.ones((C, m), dtype=dtype), cupy.zeros(C, dtype=cupy.int64),
                    cupy.asarray([[0.3, 0, 0], [2.0, 0, 0], [1e6, 0, 0]]), cupy.full(C, -1, dtype=cupy.int64))

        run = cuda_products.ProductRun(cupy_gpu.GpuEngine(), *batch(), 9, 9)
        cuda_products.advance(run, 0, 31, 30, 4, activation, loss, 1.0 / m, True, bounds=(1e10, 1e4))
        diverged = run.diverged.get()
        ok = diverged[0] < 0 and 0 <= diverged[2] < 30 and np.isfinite(run.trace.get()[0, 0, :]).all()
        print(f"sanitize sweep {dtype} products path: diverged {diverged.tolist()} {'ok' if ok else 'BAD'}")
        failures += not ok
        # The fused kernel in the device's layout (everything in shared memory), then with the least shared
        # memory that leaves room for tiles of two samples: X, W and grad_W in global memory.
        for squeeze in (False, True):
            engine = cupy_gpu.GpuEngine()
            budget = None
            if squeeze:
                budget = cuda_run.minimum_shared(m, np.dtype(dtype).itemsize, engine.threads, rows=2)
                engine.shared_budget = budget
            run = cuda_run.ChunkRun(engine, *batch(), 9, 9, shapes={"lyapunov_sum": (C, 9, k)},
                                    tangents=(cupy.asarray(rng.standard_normal((C, k, m, 5))),
                                              cupy.asarray(rng.standard_normal((C, k, m))), cupy.zeros((C, k))))
            cuda_run.advance(run, 0, 31, 30, 4, activation, loss, 1.0 / m, True, bounds=(1e10, 1e4))
            diverged = run.diverged.get()
            ok = (diverged[0] < 0 and 0 <= diverged[2] < 30 and np.isfinite(run.trace.get()[0, 0, :]).all()
                  and np.isfinite(run.lyapunov.get()[0]).all())
            print(f"sanitize sweep {dtype} budget {budget}: diverged {diverged.tolist()} {'ok' if ok else 'BAD'}")
            failures += not ok
    return 1 if failures else 0


# The runs bench/gpu_check.sh profiles with Nsight Compute (--profile): lgd-cupy on the path 'auto' takes, each
# one chunk of PROFILE_EVALUATIONS evaluations (the driver's first chunk: one lgd_run launch on the fused
# kernel) recording at every step as the benchmark's runs do; the profiler takes the first launches of
# lgd_run (S float64 and float32, SWEEP-1024) and of lgd_rows and lgd_finalize (M, the products path).
PROFILE_CASES = (("S", "float64"), ("S", "float32"), ("SWEEP-1024", "float64"), ("M", "float64"))
PROFILE_EVALUATIONS = 16


def profile_runs() -> int:
    """The short runs of PROFILE_CASES, one after another, for a profiler that watches the kernels they
    launch: 0 when every run finished."""
    from .peers import prepare

    for name, dtype in PROFILE_CASES:
        run = prepare("lgd-cupy", workload(name), dtype, device=True)
        tic = time.perf_counter()
        risk = run(PROFILE_EVALUATIONS - 1)
        print(f"profile run {name} {dtype}: {PROFILE_EVALUATIONS} evaluations in {time.perf_counter() - tic:.2f} s, "
              f"final risk {float(np.asarray(risk)[0, -1]):.6g}", flush=True)
    return 0


def describe() -> int:
    """Build the RawModule (into CuPy's kernel cache, for the later steps), print the kernel's registers,
    shared and local memory, and the shared-memory layout of each workload in both dtypes."""
    from ..kernels import cuda_products, cuda_run, cupy_gpu

    tic = time.perf_counter()
    engine = cupy_gpu.GpuEngine()
    print(f"module built in {time.perf_counter() - tic:.1f} s; dynamic shared memory per block (opt-in) "
          f"{engine.shared_budget} bytes; {engine.threads} threads per block")
    for entry in cuda_run.ENTRY_PARAMS:
        for suffix in cuda_run.SUFFIX.values():
            print(f"{entry}_{suffix}:", cupy_gpu.module().get_function(f"{entry}_{suffix}").attributes)
    for name in WORKLOAD_NAMES:
        work = workload(name)
        for dtype in DTYPES:
            print(name, dtype, cuda_run.layout(work.n, work.d, work.m, np.dtype(dtype).itemsize, engine.threads,
                                               engine.shared_budget), "path (auto):",
                  cuda_products.choose(None, work.n, work.d, work.m, np.dtype(dtype).itemsize, engine.threads,
                                       engine.shared_budget, configs=work.configs,
                                       memory_budget=engine.memory_budget))
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.sanitize:
        return sanitize_sweep()
    if args.describe:
        return describe()
    if args.profile:
        return profile_runs()
    report = benchmark(args)
    print(markdown(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
