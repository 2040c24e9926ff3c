"""The cupy backend: CUDA sources compile (no GPU needed); on a GPU, results match the numpy oracle.

The compile checks run everywhere NVRTC is installed (CI installs it with the test extra). The
comparison tests need a usable CUDA device; the fixture probes for one and skips with the reason.
"""

import re

import numpy as np
import pytest

import lgd
from lgd import backends

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


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


MODELS = {
    "mean_field": lambda act: lgd.TwoLayerNet(7, activation=act),
    "ntk_trained_outer": lambda act: lgd.TwoLayerNet(6, activation=act, scaling="ntk", outer="random",
                                                     train_outer=True),
    "linear": lambda act: lgd.Linear(),
}


def _compare(reference, candidate, rtol):
    assert candidate.status == reference.status and candidate.diverged_step == reference.diverged_step
    np.testing.assert_array_equal(candidate.step, reference.step)
    for name in ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "normalized_margin", "test_risk",
                 "test_accuracy", "neuron_margins"):
        ref, got = getattr(reference, name), getattr(candidate, name)
        if ref is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * 1e-3, err_msg=name)
    np.testing.assert_allclose(np.asarray(candidate.weights), reference.weights, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("loss_name", lgd.losses.NAMES)
@pytest.mark.parametrize("act_name", lgd.activations.NAMES)
def test_runs_match_the_numpy_oracle(gpu, act_name, loss_name, model_name, dtype):
    X, y = _problem(loss_name)
    Xt, yt = _problem(loss_name, seed=1, n=20)
    model = MODELS[model_name](act_name)
    kwargs = dict(stepsize=0.5, steps=60, record_every=7, dtype=dtype, X_test=Xt, y_test=yt, seed=3)
    reference = lgd.gd(X, y, model, loss_name, backend="numpy", **kwargs)
    candidate = lgd.gd(X, y, model, loss_name, backend="cupy", **kwargs)
    _compare(reference, candidate, TOLERANCE[dtype])


def test_sweep_matches_single_runs_and_divergence_is_reported(gpu):
    X, y = _problem("exponential")
    model = lgd.TwoLayerNet(8)
    stepsizes = [0.1, 3.0, 1e6]
    result = lgd.sweep(X, y, model, "exponential", stepsizes=stepsizes, seeds=(0, 1), steps=40, backend="cupy")
    reference = lgd.sweep(X, y, model, "exponential", stepsizes=stepsizes, seeds=(0, 1), steps=40, backend="numpy")
    assert result.status == reference.status and "diverged" in result.status
    for got, ref in zip(result, reference):
        _compare(ref, got, 1e-10)


def test_cupy_inputs_stay_on_the_device(gpu):
    X, y = _problem("logistic")
    run = lgd.gd(gpu.asarray(X), gpu.asarray(y), lgd.TwoLayerNet(4), stepsize=1.0, steps=5, backend="auto")
    assert run.meta["backend"] == "cupy"
    assert isinstance(run.weights, gpu.ndarray) and isinstance(run.risk, np.ndarray)
