"""The cupy backend: CUDA sources compile (no GPU needed), the glue's checks, why CUDA cannot run; on a GPU,
results match the numpy oracle.

The compile checks run everywhere NVRTC is installed (CI installs it with the test extra); the table of
codes (cuda/codes.cuh), the glue's checks (lgd.kernels.cuda_run, no cupy needed) and the reasons
``available()`` gives (its probes faked) run everywhere. The kernel's numbers are checked against the
oracle on the CPU by its host build (backend 'cuda-host' in test_backends.py, test_cuda_host.py); the
comparison tests here need a usable CUDA device, which the fixture probes for, skipping with the reason.
"""

import importlib.util
import re
import types

import numpy as np
import pytest

import lgd
from lgd import backends
from lgd.backends import _cupy
from lgd.kernels import cuda_codes, cuda_run

FORMULAS = cuda_codes.HEADER.with_name("formulas.cuh")

CATALOG_ENTRIES = [pytest.param(kind, entry, id=f"{kind}-{entry.name}")
                   for kind, catalog in (("activation", lgd.activations), ("loss", lgd.losses))
                   for entry in catalog.ENTRIES]


class UnknownActivation(lgd.activations.Activation):
    name, code = "unknown", 99


class UnknownLoss(lgd.losses.Loss):
    name, code = "unknown", 99


class Impostor(lgd.activations.Activation):
    """An entry that takes another entry's code (relu's): its formula is not relu's."""

    name, code = "impostor", lgd.activations.RELU


def _cupy_gpu():
    pytest.importorskip("cupy", reason="cupy is not installed")
    from lgd.kernels import cupy_gpu

    return cupy_gpu


def test_cuda_header_is_generated_from_the_catalogs():
    assert cuda_codes.HEADER.read_text() == cuda_codes.header(), (
        "kernels/cuda/codes.cuh is out of date with lgd/activations.py, lgd/losses.py and lgd/stepsize.py: "
        "regenerate it with `python -m lgd.kernels.cuda_codes` and commit it")
    assert cuda_codes.codes() == {"activation": lgd.activations.CODES, "loss": lgd.losses.CODES,
                                  "rule": cuda_codes.RULES}
    assert sorted(cuda_codes.RULES.values()) == list(range(len(cuda_codes.RULES)))


def test_the_kernels_stepsize_rules_have_cases_and_the_others_are_refused(monkeypatch):
    source = FORMULAS.with_name("lgd.cu").read_text()
    for name in cuda_run.KERNEL_RULES:
        constant = cuda_codes.constant("rule", name)
        assert name == "constant" or re.search(rf"\bcase {constant}:", source), f"lgd.cu has no case {constant}"
    cuda_run.check_rules([cuda_codes.RULES[name] for name in cuda_run.KERNEL_RULES])
    # A rule without a case is refused by name (today every rule of lgd.stepsize has one: cosine stands in).
    monkeypatch.setattr(cuda_run, "KERNEL_RULES", tuple(name for name in cuda_run.KERNEL_RULES if name != "cosine"))
    for name in set(cuda_codes.RULES) - set(cuda_run.KERNEL_RULES):
        with pytest.raises(ValueError, match=rf"no stepsize rule '{name}'.*compute='numba'"):
            cuda_run.check_rules([0, cuda_codes.RULES[name]])


@pytest.mark.parametrize("kind, entry", CATALOG_ENTRIES)
def test_every_catalog_entry_has_a_cuda_formula(kind, entry):
    constant = cuda_codes.constant(kind, entry.name)
    assert re.search(rf"\bcase {constant}:", FORMULAS.read_text()), \
        f"kernels/cuda/formulas.cuh has no `case {constant}:` for the {kind} {entry.name!r}"
    activation, loss = lgd.activations.identity(), lgd.losses.squared()
    if kind == "activation":
        activation = entry()
    else:
        loss = entry()
    cuda_run.check_codes(activation, loss)


@pytest.mark.parametrize("activation, loss, message", [
    (UnknownActivation(), lgd.losses.logistic(), r"activation 'unknown' \(code 99\)"),
    (Impostor(), lgd.losses.logistic(), r"activation 'impostor' \(code 1\)"),
    (lgd.activations.relu(), UnknownLoss(), r"loss 'unknown' \(code 99\)"),
], ids=["unknown_activation", "impostor_activation", "unknown_loss"])
def test_unknown_codes_are_rejected_before_any_launch(activation, loss, message):
    pattern = rf"the CUDA kernels have no formula for the {message}; they know .*compute='numpy'"
    with pytest.raises(ValueError, match=pattern):
        cuda_run.check_codes(activation, loss)
    with pytest.raises(ValueError, match=pattern):  # before advance touches the (here absent) device
        cuda_run.advance(None, 0, 1, 1, 1, activation, loss, 1.0, False)


class HostFlag:
    """Stands for the device fault flag: check_fault only copies it to the host."""

    def __init__(self, bits):
        self.bits = bits

    def get(self):
        return np.array([self.bits], dtype=np.int32)


@pytest.mark.parametrize("bits, message", [
    (0, None),
    (cuda_codes.FAULTS["activation"], "activation 'relu' (code 1)"),
    (cuda_codes.FAULTS["loss"], "loss 'logistic' (code 0)"),
], ids=["clear", "activation", "loss"])
def test_the_fault_flag_raises_naming_the_code(bits, message):
    run = types.SimpleNamespace(fault=HostFlag(bits))
    if message is None:
        cuda_run.check_fault(run, lgd.activations.relu(), lgd.losses.logistic())
    else:
        with pytest.raises(ValueError, match=re.escape(message) + ".*wrote NaN.*compute='numpy'"):
            cuda_run.check_fault(run, lgd.activations.relu(), lgd.losses.logistic())


def test_the_kernel_records_every_scalar_field_of_the_trace():
    """The kernel's trace rows (TRACE_* in lgd.cu, in order) are cuda_run.KERNEL_FIELDS, every scalar field of
    lgd.backends.Trace; with the trajectories, the neuron margins, the Lyapunov sums and what the driver
    fills (the sharpness), that is every field: a new one fails here until the kernel writes it."""
    source = (FORMULAS.with_name("lgd.cu")).read_text()
    constants = re.search(r"constexpr int (TRACE_RISK = 0.*?);", source, re.S).group(1)
    order = [name.lower() for name, _ in sorted(re.findall(r"TRACE_(\w+) = (\d+)", constants), key=lambda p: int(p[1]))]
    assert tuple(order) == cuda_run.KERNEL_FIELDS
    assert set(cuda_run.KERNEL_FIELDS) == set(backends.TRACE_FIELDS)
    covered = {*cuda_run.KERNEL_FIELDS, *cuda_run.TRAJECTORY_FIELDS, "neuron_margins", cuda_run.LYAPUNOV_FIELD,
               *cuda_run.DRIVER_FIELDS}
    assert covered == set(backends.Trace._fields)


def test_the_parameter_list_is_the_kernels():
    """cuda_run.PARAMS names LGD_RUN_PARAMS of lgd.cu in order (ctypes and cupy pass them by position)."""
    source = (FORMULAS.with_name("lgd.cu")).read_text()
    macro = re.search(r"#define LGD_RUN_PARAMS\(T\)(.*?)\n#define", source, re.S).group(1)
    names = re.findall(r"(\w+)\s*(?:,|$)", macro.replace("\\", " ").strip())
    assert tuple(names) == tuple(name for name, _ in cuda_run.PARAMS)


ARCHS = ("sm_90", "sm_80")


@pytest.fixture(scope="module")
def nvrtc_logs():
    """NVRTC's log of lgd.cu for each of ARCHS, compiled side by side in two fresh processes (a compile
    takes half a minute of one core; NVRTC fails when two compile at once in one process)."""
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC from PyPI is not installed")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from lgd.kernels import cupy_gpu

    with ProcessPoolExecutor(len(ARCHS), mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(ARCHS, pool.map(cupy_gpu.nvrtc_compile, ARCHS)))


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_source_compiles_without_warnings_or_spills(arch, nvrtc_logs, capsys):
    log = nvrtc_logs[arch]
    assert "warning" not in log.lower(), log
    entries = set(re.findall(r"Compiling entry function '(\w+)'", log))
    assert entries == {f"{entry}_{suffix}" for entry in cuda_run.ENTRY_PARAMS for suffix in ("f64", "f32")}
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(store == "0" and load == "0" for store, load in spills), log
    with capsys.disabled():
        registers = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", log, re.S)
        print(f"\n{arch} registers: " + ", ".join(f"{name} {count}" for name, count in registers))


def test_the_launch_shape_comes_from_the_environment_and_is_checked(monkeypatch):
    cupy_gpu = _cupy_gpu()
    monkeypatch.delenv("LGD_CUDA_THREADS", raising=False)
    monkeypatch.delenv("LGD_CUDA_BLOCKS_PER_SM", raising=False)
    assert cupy_gpu.launch_shape() == (cupy_gpu.THREADS, cupy_gpu.BLOCKS_PER_SM)
    monkeypatch.setenv("LGD_CUDA_THREADS", "512")
    monkeypatch.setenv("LGD_CUDA_BLOCKS_PER_SM", "2")
    assert cupy_gpu.launch_shape() == (512, 2)
    assert cupy_gpu.launch_shape(128) == (128, 2)
    assert "-DLGD_THREADS=512" in cupy_gpu.options(512, 2) and "-DLGD_MIN_BLOCKS=2" in cupy_gpu.options(512, 2)
    for threads, blocks, problem in (("500", "1", "multiple of 32"), ("2048", "1", "multiple of 32"),
                                     ("1024", "4", "at most 2048"), ("256", "0", "1 to 32"),
                                     ("many", "1", "LGD_CUDA_THREADS must be a whole number")):
        monkeypatch.setenv("LGD_CUDA_THREADS", threads)
        monkeypatch.setenv("LGD_CUDA_BLOCKS_PER_SM", blocks)
        with pytest.raises(ValueError, match=problem):
            cupy_gpu.launch_shape()


def test_nvrtc_errors_carry_the_log(tmp_path, monkeypatch):
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC from PyPI is not installed")
    from lgd.kernels import cupy_gpu

    broken = tmp_path / "lgd.cu"
    broken.write_text('extern "C" __global__ void k(double* x) { x[0] = undefined_name; }\n')
    monkeypatch.setattr(cupy_gpu, "SOURCE", broken)
    with pytest.raises(RuntimeError, match="undefined_name"):
        cupy_gpu.nvrtc_compile("sm_90")


@pytest.fixture(scope="module")
def gpu():
    usable, reason = backends.availability("cupy")
    if not usable:
        pytest.skip(f"no GPU backend here: {reason}")
    import cupy

    return cupy


def _problem(loss_name, seed=0, n=48, d=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1).max()
    if lgd.losses.get(loss_name).margin:
        y = np.where(X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0, 1.0, -1.0)
    else:
        y = rng.standard_normal(n)
    return X, y


# The runs of every activation x loss x model x dtype against the oracle, sweeps and divergence are the
# compiled-backend cases of test_backends.py, which include cupy.


@pytest.mark.parametrize("kind", ["activation", "loss"])
def test_kernels_flag_a_code_without_a_case_and_write_nan(gpu, kind, monkeypatch):
    from lgd.kernels import cupy_gpu

    monkeypatch.setattr(cuda_run, "check_codes", lambda activation, loss: None)  # as if lgd.cu lacked the case
    activation = UnknownActivation() if kind == "activation" else lgd.activations.relu()
    loss = UnknownLoss() if kind == "loss" else lgd.losses.logistic()
    X, y = (gpu.asarray(values) for values in _problem("logistic", n=8, d=3))
    configs, width = 2, 4
    run = cuda_run.ChunkRun(cupy_gpu.GpuEngine(), X, y, None, None, gpu.ones((configs, width, 3)),
                            gpu.ones((configs, width)), gpu.zeros(configs, dtype=gpu.int64),
                            gpu.full((configs, 3), 0.1), gpu.full(configs, -1, dtype=gpu.int64), 2, 0)
    cuda_run.advance(run, 0, 1, 1, 1, activation, loss, 1.0, False)
    with pytest.raises(ValueError, match=rf"no formula for the {kind} 'unknown' \(code 99\)"):
        cuda_run.check_fault(run, activation, loss)
    np.testing.assert_array_equal(run.diverged.get(), 0)  # the NaN risk stops every config at step 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_stepsize_rule_is_the_oracles_on_the_fused_kernel(gpu, dtype, monkeypatch):
    """Every stepsize rule, inverse_sharpness included (the sharpness the driver measures between chunks,
    copied to the device before each chunk), on the GPU's fused kernel, against the oracle (the products
    path's cases are in test_cuda_products.py; the host build's in test_cuda_host.py)."""
    from conftest import assert_every_rule_matches, assert_inverse_sharpness_matches

    monkeypatch.setattr(_cupy.Runner, "requested_path", "fused")
    assert_every_rule_matches("cupy", dtype)
    assert_inverse_sharpness_matches("cupy", dtype)


def test_cupy_inputs_stay_on_the_device(gpu):
    X, y = _problem("logistic")
    run = lgd.gd(gpu.asarray(X), gpu.asarray(y), lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="auto")
    assert run.meta["backend"] == "cupy"
    assert isinstance(run.weights, gpu.ndarray) and isinstance(run.risk, np.ndarray)


def test_numpy_inputs_on_the_gpu_come_back_as_numpy(gpu):
    X, y = _problem("logistic")
    run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="cupy")
    assert run.meta["backend"] == "cupy" and isinstance(run.weights, np.ndarray)


class _Runtime:
    """Stands for cupy.cuda.runtime: the versions and device count a machine would report."""

    CUDARuntimeError = RuntimeError

    def __init__(self, driver=13000, runtime=13000, devices=1, count_error=None):
        self.driver, self.runtime, self.devices, self.count_error = driver, runtime, devices, count_error

    def driverGetVersion(self):  # noqa: N802 (cupy's name)
        return self.driver

    def runtimeGetVersion(self):  # noqa: N802
        return self.runtime

    def getDeviceCount(self):  # noqa: N802
        if self.count_error:
            raise RuntimeError(self.count_error)
        return self.devices

    def getDeviceProperties(self, index):  # noqa: N802
        return {"name": b"NVIDIA H200", "major": 9, "minor": 0}


@pytest.mark.parametrize("driver, runtime, expected", [
    (False, _Runtime(), r"^no NVIDIA driver \(libcuda.so.1 cannot be loaded\)"),
    (True, _Runtime(driver=12080, runtime=13000),
     r"NVIDIA driver supports CUDA 12.8 but this cupy needs CUDA 13.x: update the driver, or install the cupy "
     r"package for CUDA 12 \(cupy-cuda12x\)"),
    (True, _Runtime(driver=0), r"^no NVIDIA driver \(libcuda loads but reports no driver version\)"),
    (True, _Runtime(devices=0), r"^no CUDA device found \(the NVIDIA driver is installed\)"),
    (True, _Runtime(count_error="cudaErrorNoDevice: no CUDA-capable device is detected"),
     r"^no usable CUDA device \(cudaErrorNoDevice"),
    (True, _Runtime(), r"^NVIDIA H200 \(compute capability 9.0\), CUDA runtime 13.0, driver 13.0$"),
    (True, _Runtime(driver=13000, runtime=13020),
     r"^NVIDIA H200 \(compute capability 9.0\), CUDA runtime 13.2, driver 13.0$"),
], ids=["no_driver", "old_driver", "driver_zero", "no_device", "device_error", "usable", "newer_minor_runtime"])
def test_available_says_why_cuda_cannot_run(driver, runtime, expected, monkeypatch):
    """Each reason, with the probes faked: the driver library, the driver's and cupy's CUDA versions, the
    devices."""
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    monkeypatch.setattr(_cupy, "_driver_library", lambda: driver)
    monkeypatch.setattr(cupy.cuda, "runtime", runtime)
    usable, reason = _cupy.available()
    assert usable == expected.endswith("$")
    assert re.search(expected, reason), reason


def test_an_install_is_suggested_only_when_cupy_is_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(_cupy, "_driver_library", lambda: False)
    if real_find_spec("cupy") is not None:
        with pytest.raises(lgd.BackendUnavailable) as installed:
            backends.resolve("cupy")
        assert "no NVIDIA driver" in str(installed.value) and "pip install" not in str(installed.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "cupy" else
                        real_find_spec(name, *args))
    with pytest.raises(lgd.BackendUnavailable, match=r"cupy is not installed; install it with pip install"):
        backends.resolve("cupy")


def test_the_log_risk_rule_is_the_oracles():
    """The kernel computes the log-risk from the samples below the same risks as lgd.models."""
    from lgd import models

    source = FORMULAS.with_name("lgd.cu").read_text()
    found = dict(re.findall(r"(LOG_RISK_EXACT_BELOW(?:_F32)?) = ([0-9.e+-]+)", source))
    assert float(found["LOG_RISK_EXACT_BELOW"]) == models.LOG_RISK_EXACT_BELOW
    assert float(found["LOG_RISK_EXACT_BELOW_F32"]) == models.LOG_RISK_EXACT_BELOW_F32
