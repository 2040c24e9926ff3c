"""CuPy glue of the CUDA kernels in cuda/lgd.cu: module building and one batched GD step.

The module is built once per process (a RawModule, lazily, on first use) and its entries are
fetched by dtype suffix. :func:`gd_steps` runs evaluations t_start..t_stop-1 of every config
without synchronising the host: the stepsizes, divergence flags and traces stay on the device.
:func:`check_codes` rejects, before any launch, an activation or loss the kernels have no formula
for (the table of cuda/codes.cuh, see :mod:`lgd.kernels.cuda_codes`); :func:`check_fault` reads the
kernels' fault flag once the host has synchronised. :func:`nvrtc_compile` compiles the source for
an explicit architecture without a GPU (for CI).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import cupy

from . import cuda_codes

SOURCE = Path(__file__).with_name("cuda") / "lgd.cu"
ENTRIES = ("lgd_forward", "lgd_finish", "lgd_test_metrics")
SUFFIX = {"float64": "f64", "float32": "f32"}
THREADS = 256  # LGD_THREADS in lgd.cu (the kernels' launch bounds)
OPTIONS = ("--std=c++17",)

_module = None


def options() -> tuple[str, ...]:
    """OPTIONS, the include path of SOURCE's headers (codes.cuh) and a digest of those headers."""
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


def kernel(entry: str, dtype) -> "cupy.RawKernel":
    return module().get_function(f"{entry}_{SUFFIX[cupy.dtype(dtype).name]}")


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


@functools.cache
def _known() -> dict[str, dict[str, int]]:
    return cuda_codes.codes()


def check_codes(activation, loss) -> None:
    """Raise ValueError unless the kernels have a formula for ``activation`` and ``loss``.

    A formula is known by the entry's code and name in cuda/codes.cuh: an entry the header does not
    list, or a code the header gives to another entry, would otherwise run a formula that is not its own.
    """
    for kind, entry in (("activation", activation), ("loss", loss)):
        known = _known()[kind]
        if known.get(entry.name) != entry.code:
            listed = ", ".join(f"{name} ({code})" for name, code in known.items())
            raise _no_formula(kind, entry, f"; they know {listed}")


def check_fault(run: "DeviceRun", activation, loss) -> None:
    """Raise ValueError when a kernel of ``run`` met a code it has no formula for (and wrote NaN).

    Copies the fault flag to the host: call it after the host has waited for the device anyway (the
    copies at the end of a chunk), never per step.
    """
    fault = int(run.fault.get()[0])
    for kind, entry in (("activation", activation), ("loss", loss)):
        if fault & cuda_codes.FAULTS[kind]:
            raise _no_formula(kind, entry, ": lgd.cu has no case for it and wrote NaN")


def _no_formula(kind: str, entry, detail: str) -> ValueError:
    return ValueError(f"the CUDA kernels have no formula for {kind} {entry.spec!r} (code {entry.code}){detail}. "
                      "Run it on the numpy backend: compute='numpy'.")


class DeviceRun:
    """Device buffers of one batch of configs: data, iterates, scratch and traces (all cupy)."""

    def __init__(self, X, y, X_test, y_test, W, a, stepsizes, diverged, records: int, neuron_records: int):
        dtype = X.dtype
        self.X, self.y, self.X_test, self.y_test = X, y, X_test, y_test
        self.W, self.a = W, a
        self.stepsizes, self.diverged = stepsizes, diverged
        self.fault = cupy.zeros(1, dtype=cupy.int32)  # bits of cuda_codes.FAULTS, see check_fault
        C, m, d = W.shape
        n = X.shape[0]
        self.ZG = cupy.empty((C, n, m), dtype=dtype)
        self.P = cupy.empty((C, n, m), dtype=dtype)
        self.grad_W = cupy.empty((C, m, d), dtype=dtype)
        self.grad_a = cupy.zeros((C, m), dtype=dtype)
        self.row_loss = cupy.empty((C, n), dtype=dtype)
        self.row_yf = cupy.empty((C, n), dtype=dtype)
        self.row_coef = cupy.empty((C, n), dtype=dtype)
        self.Z_test = None if X_test is None else cupy.empty((C, X_test.shape[0], m), dtype=dtype)
        self.trace = {name: cupy.full((C, records), cupy.nan) for name in
                      ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy")}
        self.trace["neuron_margins"] = cupy.full((C, neuron_records, m), cupy.nan)


def gd_steps(run: DeviceRun, t_start: int, t_stop: int, steps: int, record_every: int, activation, loss,
             scale: float, train_outer: bool):
    """Launch evaluations t_start..t_stop-1 (metrics of W_t, then W_{t+1} = W_t - eta grad when t < steps)."""
    check_codes(activation, loss)
    dtype = run.X.dtype
    real = dtype.type
    forward, finish, test_metrics = (kernel(entry, dtype) for entry in ENTRIES)
    C, m, d = run.W.shape
    n = run.X.shape[0]
    records = run.trace["risk"].shape[1]
    neuron_records = run.trace["neuron_margins"].shape[1]
    Wt = run.W.transpose(0, 2, 1)
    for t in range(t_start, t_stop):
        slot = t // record_every if t % record_every == 0 else (records - 1 if t == steps else -1)
        cupy.matmul(run.X, Wt, out=run.ZG)
        store_p = train_outer or (slot >= 0 and neuron_records > 0)
        if slot >= 0 and run.X_test is not None:
            cupy.matmul(run.X_test, Wt, out=run.Z_test)
            test_metrics((C,), (THREADS,), (
                run.Z_test, run.a, run.y_test, run.diverged, run.fault, run.trace["test_risk"],
                run.trace["test_accuracy"], _i32(run.X_test.shape[0]), _i32(m), _i32(activation.code),
                real(activation.param), _i32(loss.code), real(loss.param), real(scale), _i32(slot), _i32(records)))
        forward((n, C), (min(THREADS, _round_up(m, 32)),), (
            run.ZG, run.P, run.a, run.y, run.row_loss, run.row_yf, run.row_coef, run.diverged, run.fault,
            _i32(n), _i32(m), _i32(activation.code), real(activation.param), _i32(loss.code),
            real(loss.param), real(scale), _i32(store_p)))
        cupy.matmul(run.ZG.transpose(0, 2, 1), run.X, out=run.grad_W)
        if train_outer:
            cupy.matmul(run.row_coef[:, None, :], run.P, out=run.grad_a[:, None, :])
            run.grad_a *= real(scale)
        finish((C,), (THREADS,), (
            run.W, run.a, run.grad_W, run.grad_a, run.row_loss, run.row_yf, run.y, run.P, run.stepsizes,
            run.diverged, run.trace["risk"], run.trace["accuracy"], run.trace["grad_norm"],
            run.trace["weight_norm"], run.trace["margin"], run.trace["neuron_margins"], _i32(n), _i32(m),
            _i32(d), _i32(train_outer), cupy.int64(t), cupy.int64(steps), _i32(slot),
            _i32(records), _i32(neuron_records)))


def _i32(value):
    return cupy.int32(value)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
