"""The GPU engine of the CUDA kernels: cuda/lgd.cu as a CuPy RawModule, and its NVRTC compile check.

What lives here: :func:`module` (the RawModule, built once per process on first use; each entry of
``cuda_run.ENTRY_PARAMS`` once per dtype, fetched by suffix), :class:`GpuEngine` (the engine of
:mod:`lgd.kernels.cuda_run` and :mod:`lgd.kernels.cuda_products`: cupy arrays, launches with the dynamic
shared memory the layout asks for, opted in above 48 KB, a stream of its own for the products path and its
CUDA graphs),
:func:`launch_shape` (threads per block and blocks per multiprocessor, from the environment) and
:func:`nvrtc_compile` (compiles the source for an explicit architecture without a GPU, for CI). The glue
that is the same on the host and the GPU (buffers, layout, code checks) is :mod:`lgd.kernels.cuda_run`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cupy
import numpy as np

from .cuda_run import ENTRY, ENTRY_PARAMS

SOURCE = Path(__file__).with_name("cuda") / "lgd.cu"
# The launch shape: threads per block, and blocks a multiprocessor holds at once (LGD_THREADS and
# LGD_MIN_BLOCKS in lgd.cu, its launch bounds). The environment variables LGD_CUDA_THREADS and
# LGD_CUDA_BLOCKS_PER_SM choose another (docs/backends.md); each shape is a module of its own.
THREADS = 256
BLOCKS_PER_SM = 1
OPTIONS = ("--std=c++17",)
# Dynamic shared memory a block gets without opting in.
DEFAULT_SHARED = 48 * 1024

_modules = {}
_SCALARS = {"i32": np.int32, "i64": np.int64, "f64": np.float64}


def launch_shape(threads: int | None = None, blocks_per_sm: int | None = None) -> tuple[int, int]:
    """(threads per block, blocks per multiprocessor): the arguments, else the environment's
    LGD_CUDA_THREADS and LGD_CUDA_BLOCKS_PER_SM, else THREADS and BLOCKS_PER_SM; checked."""
    chosen = []
    for value, variable, default in ((threads, "LGD_CUDA_THREADS", THREADS),
                                     (blocks_per_sm, "LGD_CUDA_BLOCKS_PER_SM", BLOCKS_PER_SM)):
        if value is None:
            text = os.environ.get(variable, "").strip()
            try:
                value = int(text) if text else default
            except ValueError:
                raise ValueError(f"{variable} must be a whole number, got {text!r}") from None
        chosen.append(int(value))
    threads, blocks_per_sm = chosen
    if threads % 32 or not 32 <= threads <= 1024:
        raise ValueError(f"threads per block (LGD_CUDA_THREADS) must be a multiple of 32 from 32 to 1024, "
                         f"got {threads}")
    if not 1 <= blocks_per_sm <= 32 or threads * blocks_per_sm > 2048:
        raise ValueError(f"blocks per multiprocessor (LGD_CUDA_BLOCKS_PER_SM) must be 1 to 32 with at most 2048 "
                         f"threads in all, got {blocks_per_sm} blocks of {threads}")
    return threads, blocks_per_sm


def options(threads: int = THREADS, blocks_per_sm: int = BLOCKS_PER_SM) -> tuple[str, ...]:
    """OPTIONS, the launch shape, the include path of SOURCE's headers and a digest of those headers."""
    # CuPy keys its kernel cache on the source text and the options, not on the headers the source
    # includes: the digest among the options rebuilds the module when a header changes.
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(SOURCE.parent.glob("*.cuh"))))
    return OPTIONS + (f"-DLGD_THREADS={threads}", f"-DLGD_MIN_BLOCKS={blocks_per_sm}",
                      f"--include-path={SOURCE.parent}", f"-DLGD_HEADERS_SHA256={digest.hexdigest()}")


def module(threads: int = THREADS, blocks_per_sm: int = BLOCKS_PER_SM):
    """The compiled RawModule of a launch shape (built on the first call, then reused)."""
    key = (threads, blocks_per_sm)
    if key not in _modules:
        _modules[key] = cupy.RawModule(code=SOURCE.read_text(), options=options(*key))
    return _modules[key]


def nvrtc_compile(arch: str, threads: int = THREADS, blocks_per_sm: int = BLOCKS_PER_SM) -> str:
    """Compile lgd.cu to a cubin for ``arch`` (e.g. 'sm_90') with NVRTC and CuPy's flags; return the log.

    Needs no GPU. The flags are those CuPy's RawModule compiles with (-ftz=true,
    --device-as-default-execution-space) plus ours; ptxas reports registers and spills in the log.
    Raises RuntimeError carrying the NVRTC log when the source does not compile.
    """
    from cupy_backends.cuda.libs import nvrtc

    flags = options(threads, blocks_per_sm) + ("-ftz=true", "--device-as-default-execution-space", f"-arch={arch}",
                                               "--ptxas-options=-v")
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
    """The engine of :mod:`lgd.kernels.cuda_run` on the current CUDA device (cupy arrays, the RawModule of
    the launch shape, see :func:`launch_shape`).

    The shared-memory budget of a block is what lets `blocks_per_sm` blocks share a multiprocessor (the
    layout then takes smaller tiles), within the most one block may opt in to.
    """

    xp = cupy

    def __init__(self, threads: int | None = None, blocks_per_sm: int | None = None):
        self.threads, self.blocks_per_sm = launch_shape(threads, blocks_per_sm)
        built = module(self.threads, self.blocks_per_sm)  # built here, outside any timed chunk
        # Every entry fetched and cuBLAS's handle made here, before any stream capture (cuda_products) could
        # be the first to ask for them.
        for entry in ENTRY_PARAMS:
            for suffix in ("f64", "f32"):
                built.get_function(f"{entry}_{suffix}")
        cupy.cuda.device.get_cublas_handle()
        runtime, device = cupy.cuda.runtime, cupy.cuda.Device().id
        per_block = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device)
        per_sm = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)
        reserved = runtime.deviceGetAttribute(runtime.cudaDevAttrReservedSharedMemoryPerBlock, device)
        self.shared_budget = int(min(per_block, per_sm // self.blocks_per_sm - reserved))
        self._stream = None
        # The products path takes at most a quarter of the device's memory for its buffers (cuda_products.choose).
        self.memory_budget = cupy.cuda.Device().mem_info[1] // 4

    def launch(self, suffix: str, grid: int, block: int, shared_bytes: int, args, entry: str = ENTRY) -> None:
        """Launch `entry` of `suffix` asynchronously on the current stream."""
        kernel = module(self.threads, self.blocks_per_sm).get_function(f"{entry}_{suffix}")
        if shared_bytes > DEFAULT_SHARED and kernel.max_dynamic_shared_size_bytes < shared_bytes:
            kernel.max_dynamic_shared_size_bytes = shared_bytes
        params = ENTRY_PARAMS[entry]
        if len(args) != len(params):
            raise TypeError(f"{entry} takes {len(params)} arguments, got {len(args)}")
        converted = [value if kind.endswith("*") else _SCALARS[kind](value) for (_, kind), value in zip(params, args)]
        kernel((grid,), (block,), tuple(converted), shared_mem=shared_bytes)

    def ordered(self):
        """The engine's stream as the current one: the products path's launches and cuBLAS products in order
        on a stream that may be captured (capture cannot start on the legacy default stream). It is a
        blocking stream: the host's copies on the default stream wait for it."""
        if self._stream is None:
            self._stream = cupy.cuda.Stream()
        return self._stream

    def capture(self, work):
        """A CUDA graph of what ``work()`` launches on the engine's stream (nothing runs while capturing)."""
        stream = self.ordered()
        with stream:
            stream.begin_capture()
            try:
                work()
            finally:
                graph = stream.end_capture()
        return graph

    def replay(self, recording) -> None:
        """Launch a captured graph on the engine's stream."""
        recording.launch(stream=self.ordered())
