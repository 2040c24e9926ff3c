"""The cupy backend: CUDA sources compile (no GPU needed); on a GPU, results match the numpy oracle.

The compile checks run everywhere NVRTC is installed (CI installs it with the test extra); the
table of codes (cuda/codes.cuh) and the checks of the glue run wherever cupy imports. The
comparison tests need a usable CUDA device; the fixture probes for one and skips with the reason.
"""

import re
import types

import numpy as np
import pytest

import lgd
from lgd import backends
from lgd.kernels import cuda_codes

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
        "kernels/cuda/codes.cuh is out of date with lgd/activations.py and lgd/losses.py: "
        "regenerate it with `python -m lgd.kernels.cuda_codes` and commit it")
    assert cuda_codes.codes() == {"activation": lgd.activations.CODES, "loss": lgd.losses.CODES}


@pytest.mark.parametrize("kind, entry", CATALOG_ENTRIES)
def test_every_catalog_entry_has_a_cuda_formula(kind, entry):
    cupy_gpu = _cupy_gpu()
    constant = cuda_codes.constant(kind, entry.name)
    assert re.search(rf"\bcase {constant}:", cupy_gpu.SOURCE.read_text()), \
        f"kernels/cuda/lgd.cu has no `case {constant}:` for the {kind} {entry.name!r}"
    activation, loss = lgd.activations.identity(), lgd.losses.squared()
    if kind == "activation":
        activation = entry()
    else:
        loss = entry()
    cupy_gpu.check_codes(activation, loss)


@pytest.mark.parametrize("activation, loss, message", [
    (UnknownActivation(), lgd.losses.logistic(), r"activation 'unknown' \(code 99\)"),
    (Impostor(), lgd.losses.logistic(), r"activation 'impostor' \(code 1\)"),
    (lgd.activations.relu(), UnknownLoss(), r"loss 'unknown' \(code 99\)"),
], ids=["unknown_activation", "impostor_activation", "unknown_loss"])
def test_unknown_codes_are_rejected_before_any_launch(activation, loss, message):
    cupy_gpu = _cupy_gpu()
    pattern = rf"the CUDA kernels have no formula for {message}; they know .*compute='numpy'"
    with pytest.raises(ValueError, match=pattern):
        cupy_gpu.check_codes(activation, loss)
    with pytest.raises(ValueError, match=pattern):  # before gd_steps touches the (here absent) device
        cupy_gpu.gd_steps(None, 0, 1, 1, 1, activation, loss, 1.0, False)


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
    cupy_gpu = _cupy_gpu()
    run = types.SimpleNamespace(fault=HostFlag(bits))
    if message is None:
        cupy_gpu.check_fault(run, lgd.activations.relu(), lgd.losses.logistic())
    else:
        with pytest.raises(ValueError, match=re.escape(message) + ".*wrote NaN.*compute='numpy'"):
            cupy_gpu.check_fault(run, lgd.activations.relu(), lgd.losses.logistic())


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_source_compiles_without_warnings_or_spills(arch, capsys):
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC from PyPI is not installed")
    from lgd.kernels import cupy_gpu

    log = cupy_gpu.nvrtc_compile(arch)
    assert "warning" not in log.lower(), log
    entries = set(re.findall(r"Compiling entry function '(\w+)'", log))
    assert entries == {f"{entry}_{suffix}" for entry in cupy_gpu.ENTRIES for suffix in ("f64", "f32")}
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(store == "0" and load == "0" for store, load in spills), log
    with capsys.disabled():
        registers = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", log, re.S)
        print(f"\n{arch} registers: " + ", ".join(f"{name} {count}" for name, count in registers))


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

    monkeypatch.setattr(cupy_gpu, "check_codes", lambda activation, loss: None)  # as if lgd.cu lacked the case
    activation = UnknownActivation() if kind == "activation" else lgd.activations.relu()
    loss = UnknownLoss() if kind == "loss" else lgd.losses.logistic()
    X, y = (gpu.asarray(values) for values in _problem("logistic", n=8, d=3))
    configs, width = 2, 4
    run = cupy_gpu.DeviceRun(X, y, None, None, gpu.ones((configs, width, 3)), gpu.ones((configs, width)),
                             gpu.full(configs, 0.1), gpu.full(configs, -1, dtype=gpu.int64), 2, 0)
    cupy_gpu.gd_steps(run, 0, 1, 1, 1, activation, loss, 1.0, False)
    with pytest.raises(ValueError, match=rf"no formula for {kind} 'unknown' \(code 99\)"):
        cupy_gpu.check_fault(run, activation, loss)
    np.testing.assert_array_equal(run.diverged.get(), 0)  # the NaN risk stops every config at step 0


def test_cupy_inputs_stay_on_the_device(gpu):
    X, y = _problem("logistic")
    run = lgd.gd(gpu.asarray(X), gpu.asarray(y), lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="auto")
    assert run.meta["backend"] == "cupy"
    assert isinstance(run.weights, gpu.ndarray) and isinstance(run.risk, np.ndarray)
