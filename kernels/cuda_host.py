"""The host build of the CUDA sources: cuda/lgd.cu compiled by the system C++ compiler through
cuda/host_compat.h and called through ctypes, so that CI runs the GPU kernels on the CPU.

What lives here: :func:`library` (the build, cached by a digest of the sources, the flags and the compiler's
version in a folder outside the source tree, :func:`cache_dir`), :class:`HostEngine` (the engine of
:mod:`lgd.kernels.cuda_run` on numpy arrays: blocks one after another, a block's threads as host threads)
and :func:`build` (also used for the sanitizer builds of the test driver). No cupy and no GPU needed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .cuda_run import ENTRY, ENTRY_PARAMS

SOURCE_DIR = Path(__file__).with_name("cuda")
SOURCE = SOURCE_DIR / "lgd.cu"
COMPAT = SOURCE_DIR / "host_compat.h"
FLAGS = ("-std=c++20", "-O2", "-pthread", "-DLGD_HOST_BUILD", "-Wall", "-Wno-unknown-pragmas")
# A block's threads on the host: one warp. The kernel is written for any multiple of 32; more threads
# only cost time here (each barrier wakes every thread of the block on the machine's few cores).
THREADS = 32
# Shared memory a host block may use: the opt-in limit of a Hopper GPU, so that the host takes the
# device's layout decisions for the same sizes.
SHARED_BUDGET = 227 * 1024

_CTYPES = {"T*": ctypes.c_void_p, "f64*": ctypes.c_void_p, "i64*": ctypes.c_void_p, "i32*": ctypes.c_void_p,
           "i32": ctypes.c_int, "i64": ctypes.c_longlong, "f64": ctypes.c_double}
_DTYPES = {"f64*": np.float64, "i64*": np.int64, "i32*": np.int32}


def compiler() -> str | None:
    """The C++ compiler of the host build ($CXX, else g++), or None when there is none."""
    name = os.environ.get("CXX", "g++")
    return shutil.which(name)


def cache_dir() -> Path:
    """Where host builds are kept: $LGD_CACHE_DIR, else ~/.cache/lgd (else the temporary folder)."""
    if "LGD_CACHE_DIR" in os.environ:
        return Path(os.environ["LGD_CACHE_DIR"]) / "cuda-host"
    home = Path.home() / ".cache" / "lgd"
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home / "cuda-host"
    except OSError:
        return Path(tempfile.gettempdir()) / "lgd-cache" / "cuda-host"


def _digest(sources: list[Path], flags: tuple[str, ...], cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(version.encode() + "\0".join(flags).encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def build(main: Path, output_name: str, flags: tuple[str, ...]) -> Path:
    """Compile `main` (which includes lgd.cu) with host_compat.h force-included and `flags`; return the
    output, built once per digest of every source of cuda/ and `main`, the flags and the compiler."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found: the host build of the CUDA kernels needs one")
    sources = sorted(SOURCE_DIR.glob("*.c*")) + sorted(SOURCE_DIR.glob("*.h")) + [Path(main)]
    folder = cache_dir() / _digest(sources, flags, cxx)
    output = folder / output_name
    if output.exists():
        return output
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{output_name}.{os.getpid()}"
    command = [cxx, *flags, "-I", str(SOURCE_DIR), "-include", str(COMPAT), "-x", "c++", str(main), "-o",
               str(partial)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"host build of {main.name} failed:\n{' '.join(command)}\n{done.stderr}")
    os.replace(partial, output)  # atomic: a concurrent build of the same digest writes the same file
    return output


@functools.cache
def library() -> ctypes.CDLL:
    """lgd.cu as a shared library for the host (built on first use, then loaded from the cache)."""
    path = build(SOURCE, "liblgd_host.so", FLAGS + ("-shared", "-fPIC"))
    lib = ctypes.CDLL(str(path))
    for entry, params in ENTRY_PARAMS.items():
        for suffix in ("f64", "f32"):
            function = getattr(lib, f"{entry}_{suffix}_host")
            head = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t]
            function.argtypes = head + [_CTYPES[kind] for _, kind in params]
            function.restype = None
    return lib


class HostEngine:
    """The engine of :mod:`lgd.kernels.cuda_run` on the CPU: numpy arrays, the ctypes host build."""

    xp = np

    def __init__(self, threads: int = THREADS, shared_budget: int = SHARED_BUDGET):
        self.threads, self.shared_budget = threads, shared_budget
        self.memory_budget = 1 << 30  # the products path's buffers on the host (cuda_products.choose)
        self.lib = library()

    def launch(self, suffix: str, grid: int, block: int, shared_bytes: int, args, entry: str = ENTRY) -> None:
        """Run the grid now (returns when every block is done), checking each array argument's dtype and
        layout: ctypes passes raw pointers."""
        dtype = {"f64": np.float64, "f32": np.float32}[suffix]
        params = ENTRY_PARAMS[entry]
        if len(args) != len(params):
            raise TypeError(f"{entry} takes {len(params)} arguments, got {len(args)}")
        converted = []
        for (name, kind), value in zip(params, args):
            if kind.endswith("*"):
                want = dtype if kind == "T*" else _DTYPES[kind]
                if not (isinstance(value, np.ndarray) and value.dtype == want and value.flags.c_contiguous
                        and value.flags.writeable):
                    raise TypeError(f"argument {name} must be a writeable C-contiguous {np.dtype(want).name} "
                                    f"numpy array")
                converted.append(value.ctypes.data)
            else:
                converted.append(value)
        getattr(self.lib, f"{entry}_{suffix}_host")(grid, block, shared_bytes, *converted)

    def ordered(self):
        """Launches run one after another on the host: nothing to order. numpy's products stay as quiet as
        cuBLAS's where a diverging configuration's numbers are no longer finite."""
        return np.errstate(all="ignore")

    def capture(self, work):
        """The host has no graphs: the recording is the work itself, run again at each replay."""
        return work

    def replay(self, recording) -> None:
        recording()
