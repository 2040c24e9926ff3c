"""The GPU engine of the CUDA kernels: cuda/lgd.cu as a CuPy RawModule, and its NVRTC compile check.

What lives here: :func:`module` (the RawModule, built once per process on first use; one ``lgd_run`` entry
per dtype, fetched by suffix), :class:`GpuEngine` (the engine of :mod:`lgd.kernels.cuda_run`: cupy arrays,
one launch per chunk with the dynamic shared memory the layout asks for, opted in above 48 KB) and
:func:`nvrtc_compile` (compiles the source for an explicit architecture without a GPU, for CI). The glue
that is the same on the host and the GPU (buffers, layout, code checks) is :mod:`lgd.kernels.cuda_run`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cupy
import numpy as np

from .cuda_run import ENTRY, PARAMS

SOURCE = Path(__file__).with_name("cuda") / "lgd.cu"
ENTRIES = (ENTRY,)
THREADS = 256  # LGD_THREADS in lgd.cu (the kernel's launch bounds)
OPTIONS = ("--std=c++17",)
# Dynamic shared memory a block gets without opting in.
DEFAULT_SHARED = 48 * 1024

_module = None
_SCALARS = {"i32": np.int32, "i64": np.int64, "f64": np.float64}


def options() -> tuple[str, ...]:
    """OPTIONS, the include path of SOURCE's headers and a digest of those headers."""
    # CuPy keys its kernel cache on the source text and the options, not on the headers the source
    # includes: the digest among the options rebuilds the module when a header changes.
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(SOURCE.parent.glob("*.cuh"))))
    return OPTIONS + (f"--include-path={SOURCE.parent}", f"-DLGD_HEADERS_SHA256={digest.hexdigest()}")


def module():
    """The compiled RawModule (built on the first call, then reused)."""
    global _module
    if _module is None:
        _module = cupy.RawModule(code=SOURCE.read_text(), options=options())
    return _module


def nvrtc_compile(arch: str) -> str:
    """Compile lgd.cu to a cubin for ``arch`` (e.g. 'sm_90') with NVRTC and CuPy's flags; return the log.

    Needs no GPU. The flags are those CuPy's RawModule compiles with (-ftz=true,
    --device-as-default-execution-space) plus ours; ptxas reports registers and spills in the log.
    Raises RuntimeError carrying the NVRTC log when the source does not compile.
    """
    from cupy_backends.cuda.libs import nvrtc

    flags = options() + ("-ftz=true", "--device-as-default-execution-space", f"-arch={arch}", "--ptxas-options=-v")
    program = nvrtc.createProgram(SOURCE.read_text(), SOURCE.name, (), ())
    try:
        nvrtc.compileProgram(program, flags)
    except nvrtc.NVRTCError as exc:
        raise RuntimeError(f"NVRTC failed for {arch}: {exc}\n{nvrtc.getProgramLog(program)}") from None
    finally:
        log = nvrtc.getProgramLog(program)
        nvrtc.destroyProgram(program)
    return log.rstrip("\x00")


class GpuEngine:
    """The engine of :mod:`lgd.kernels.cuda_run` on the current CUDA device (cupy arrays, the RawModule)."""

    xp = cupy
    threads = THREADS

    def __init__(self):
        module()  # built here, outside any timed chunk
        runtime = cupy.cuda.runtime
        self.shared_budget = int(runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                                            cupy.cuda.Device().id))

    def launch(self, suffix: str, grid: int, block: int, shared_bytes: int, args) -> None:
        """Launch the entry of `suffix` asynchronously on the current stream."""
        kernel = module().get_function(f"{ENTRY}_{suffix}")
        if shared_bytes > DEFAULT_SHARED and kernel.max_dynamic_shared_size_bytes < shared_bytes:
            kernel.max_dynamic_shared_size_bytes = shared_bytes
        converted = [value if kind.endswith("*") else _SCALARS[kind](value) for (_, kind), value in zip(PARAMS, args)]
        kernel((grid,), (block,), tuple(converted), shared_mem=shared_bytes)
