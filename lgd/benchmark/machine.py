"""The machine a benchmark ran on: CPU, cores and how their threads share the floating-point units, BLAS, GPU,
library versions. Numba (the fp_sharing probe), threadpoolctl and nvidia-smi are used only where present and
imported only inside the functions that use them."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

VERSIONS = ("lgd", "numpy", "scipy", "numba", "llvmlite", "torch", "jax", "jaxlib", "cupy-cuda12x", "cupy-cuda13x",
            "pytest", "pytest-benchmark", "threadpoolctl")


def describe_machine() -> dict:
    """CPU model (name, family/model/stepping, caches), cores, BLAS libraries and threads, GPU, OS and library
    versions."""
    from importlib import metadata

    cpu = cpu_name()
    versions = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    usable = usable_cores()
    return {"cpu": cpu, "cpu_id": cpu_id(), "caches": caches(), "cores": os.cpu_count(), "usable_cores": usable,
            "vector_features": vector_features(), **numba_target(), "fp_sharing": fp_sharing(usable),
            "blas": blas_libraries(), "gpu": _gpu(), "os": platform.platform(), "versions": versions}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo's, else what the platform says)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# The CPU flags that say which vector code a host runs (hosts of one machine kind differ: AVX-512 or not).
_VECTOR_FLAG = re.compile(r"(avx\w*|fma\w*|amx\w*|sse4_\d)")


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ('' where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_id() -> str:
    """'family F model M stepping S' of /proc/cpuinfo ('' where it has none): under a hypervisor the model name
    can be as plain as "Intel(R) Xeon(R) Processor" on hosts of several generations."""
    fields = [(name, _cpuinfo(name)) for name in ("cpu family", "model", "stepping")]
    return " ".join(f"{name.split()[-1]} {value}" for name, value in fields if value)


def caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict:
    """The data caches cpu0 sees, by level, as sysfs gives them: {'L1d': {'size': '48K', 'shared_by': 1}, 'L2':
    ..., 'L3': ...}, shared_by the CPUs sharing it; {} where sysfs has none. Hosts of one machine kind differ in
    them (L3: 480 MB on one Intel host of docs/performance.md), and a peer whose arrays outgrow L2 runs at the
    speed of the L3 it gets."""
    found = {}
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        found[f"L{level}" + ("d" if kind == "Data" else "")] = {"size": size, "shared_by": _cpu_count(shared)}
    return found


def _cpu_count(cpu_list: str) -> int:
    """The CPUs in a sysfs CPU list such as '0-3,8,10-11'."""
    count = 0
    for part in filter(None, cpu_list.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def vector_features() -> list:
    """The CPU's vector flags (AVX, AVX-512, FMA, AMX, SSE4), sorted; [] where /proc/cpuinfo is not there."""
    return sorted(flag for flag in _cpuinfo("flags").split() if _VECTOR_FLAG.fullmatch(flag))


def numba_target() -> dict:
    """What numba compiles lgd's kernels for here: LLVM's name of the CPU and the register tiles' width in
    bytes (64 with AVX-512, else 32; LGD_VECTOR_BYTES overrides it). Empty without numba."""
    if importlib.util.find_spec("numba") is None:
        return {}
    from ..kernels.numba_cpu import compiler

    return {"llvm_cpu": compiler.target_cpu_name(), "tile_bytes": compiler.VECTOR_BYTES}


def usable_cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fp_sharing(threads: int, seconds: float = 0.2):
    """How `threads` threads share the floating-point units, measured (numba; None without it or with one thread).

    Each thread runs the same two loops: twelve independent scalar fma chains (bound by the FP pipes'
    throughput) and one dependent multiply-add chain (bound by latency). Returned: one thread's fma per ns
    and each loop's speedup with all threads at once over one thread. A throughput speedup near 1 with a
    latency speedup near `threads` means the threads share one core's pipes (SMT siblings, or vCPUs
    placed so): parallel threads then gain only where one thread leaves the pipes idle.
    """
    if threads < 2 or importlib.util.find_spec("numba") is None:
        return None
    import threading

    chains, chain = _fp_kernels()

    def timed(kernel, reps, count):
        workers = [threading.Thread(target=kernel, args=(reps, 0.999, 0.001)) for _ in range(count)]
        tic = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - tic

    result = {}
    for name, kernel in (("throughput", chains), ("latency", chain)):
        reps = 1 << 16
        while timed(kernel, reps, 1) < seconds / 4:
            reps *= 2
        one = min(timed(kernel, reps, 1) for _ in range(3))
        together = min(timed(kernel, reps, threads) for _ in range(3))
        result[f"{name}_speedup"] = threads * one / together
        if name == "throughput":
            result["fma_per_ns_one_thread"] = 12 * reps / one / 1e9
    return result


_FP_KERNELS = []


def _fp_kernels() -> tuple:
    """fp_sharing's two loops, compiled once per process (numba is imported here, not with the module)."""
    if not _FP_KERNELS:
        from numba import njit

        from ..kernels.numba_cpu.intrinsics import fma

        @njit(nogil=True)
        def chains(reps, b, c):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = 1.0
            for _ in range(reps):
                a0, a1, a2, a3 = fma(a0, b, c), fma(a1, b, c), fma(a2, b, c), fma(a3, b, c)
                a4, a5, a6, a7 = fma(a4, b, c), fma(a5, b, c), fma(a6, b, c), fma(a7, b, c)
                a8, a9, a10, a11 = fma(a8, b, c), fma(a9, b, c), fma(a10, b, c), fma(a11, b, c)
            return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11

        @njit(nogil=True)
        def chain(reps, b, c):
            a = 1.0
            for _ in range(reps):
                a = a * b + c
            return a

        for kernel in (chains, chain):
            kernel(10, 0.999, 0.001)  # compile before anything is timed
        _FP_KERNELS.extend((chains, chain))
    return tuple(_FP_KERNELS)


def blas_libraries() -> list:
    """The BLAS libraries loaded in this process (numpy's, and scipy's once scipy.linalg is imported): name,
    version, threads, the kernels OpenBLAS chose for this CPU, file; [] without threadpoolctl."""
    try:
        import numpy  # noqa: F401  (loads numpy's BLAS so that threadpoolctl sees it)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"library": info.get("internal_api"), "version": info.get("version"), "threads": info.get("num_threads"),
             "architecture": info.get("architecture"), "file": Path(info.get("filepath", "")).name}
            for info in threadpool_info() if info.get("user_api") == "blas"]


# The AVX-512 subsets that OpenBLAS's AVX-512 GEMM kernels (lgd.backends._numba.AVX512_BLAS_CORES) need.
# OpenBLAS picks its kernels when it loads, by the CPU's model or by OPENBLAS_CORETYPE, which some hosts set to
# Haswell (AVX2) because older OpenBLAS builds crash or compute wrong results on their CPUs: on the Zen 5 host
# of docs/performance.md, a 2000 x 2000 float64 product ran at 106-119 GFLOP/s with Haswell's kernels and
# 167-198 with SkylakeX's.
_AVX512_SUBSETS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def blas_note(blas: list, features: list) -> str | None:
    """A line on an OpenBLAS of `blas` (as :func:`blas_libraries` lists them) that runs AVX2 kernels on a CPU
    whose vector `features` have AVX-512, and why (the environment's OPENBLAS_CORETYPE, or its own choice);
    None otherwise."""
    from ..backends._numba import AVX512_BLAS_CORES

    if not _AVX512_SUBSETS <= set(features):
        return None
    narrow = sorted({f"{b['library']} {b['version']}" for b in blas if b.get("library") == "openblas"
                     and b.get("architecture") and b["architecture"].lower() not in AVX512_BLAS_CORES})
    if not narrow:
        return None
    forced = os.environ.get("OPENBLAS_CORETYPE")
    why = (f"OPENBLAS_CORETYPE={forced} in the environment holds them there (some hosts set it: older OpenBLAS "
           "builds crash or compute wrong results on their CPUs; with it and OPENBLAS_L2_SIZE unset before Python "
           "starts, a current OpenBLAS picks its AVX-512 kernels for a CPU it knows)" if forced
           else "OpenBLAS chose them for this CPU (OPENBLAS_CORETYPE=SkylakeX, set before Python starts, "
                "selects the AVX-512 ones)")
    return (f"{' and '.join(narrow)} run AVX2 kernels on this AVX-512 CPU (on a Zen 5 host their GEMM ran at 0.6x "
            f"the AVX-512 kernels'): {why}. The numba backend's products do not go through them on this CPU: its "
            "own AVX-512 tiles run them (faster than these kernels); numpy and the benchmark's peers do.")


def _gpu():
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None
