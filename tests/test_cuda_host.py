"""The CUDA kernel's host build (kernels/cuda/host_compat.h, lgd.kernels.cuda_host): what the oracle cases of
test_backends.py (backend 'cuda-host') do not cover.

The layouts the GPU takes for larger problems (X, W and the gradient in global memory, several tiles, blocks
of several warps) against the oracle; the glue's layout against the kernel's own byte count; a code without
a formula raising the fault flag; and a small sweep under AddressSanitizer + UBSan and under ThreadSanitizer,
where any report fails (an index past an end, a missing __syncthreads).
"""

import ctypes
import itertools
import os
import subprocess

import numpy as np
import pytest
from conftest import (HOST_CUDA, TOLERANCE, assert_every_rule_matches, assert_inverse_sharpness_matches,
                      assert_inverse_sharpness_resumes, assert_traces_close, make_problem, register_host_cuda,
                      run_backend)

import lgd
from lgd import backends

pytestmark = pytest.mark.skipif(not HOST_CUDA.availability()[0], reason="no C++ compiler for the host build")

ORACLE = backends.resolve("numpy")


def _host():
    from lgd.kernels import cuda_host

    return cuda_host


@pytest.mark.parametrize("n, d, m, itemsize, threads", [
    (23, 5, 21, 8, 32), (256, 16, 64, 8, 256), (256, 16, 64, 4, 256), (360, 64, 256, 8, 256),
    (2000, 3072, 256, 4, 256), (5, 3, 2, 8, 64)])
def test_the_layout_is_what_the_kernel_takes(n, d, m, itemsize, threads):
    """cuda_run.layout's byte count is the kernel's own (lgd::shared_bytes) for the placement it chooses, and
    fits the budget: the Hopper opt-in limit."""
    from lgd.kernels import cuda_run

    budget = 227 * 1024
    lay = cuda_run.layout(n, d, m, itemsize, threads, budget)
    kernel_bytes = _host().library().lgd_shared_bytes
    kernel_bytes.restype = ctypes.c_size_t
    assert lay.shared_bytes == kernel_bytes(n, d, m, itemsize, threads, lay.tile_rows, lay.x_shared, lay.w_shared,
                                            lay.g_shared)
    assert lay.shared_bytes <= budget and 1 <= lay.tile_rows <= n


def test_the_research_sizes_keep_what_matters_in_shared_memory():
    """S keeps X, W and the gradient in shared memory; M keeps W (X from L2); L keeps nothing but a tile."""
    from lgd.kernels import cuda_run

    budget = 227 * 1024
    small = cuda_run.layout(256, 16, 64, 8, 256, budget)
    assert small.x_shared and small.w_shared and small.g_shared and small.tile_rows >= 64
    medium = cuda_run.layout(360, 64, 256, 8, 256, budget)
    assert medium.w_shared and not medium.x_shared
    large = cuda_run.layout(2000, 3072, 256, 4, 256, budget)
    assert not (large.x_shared or large.w_shared or large.g_shared)


class _Engine:
    """The host engine with another block size or shared-memory budget (the layouts larger problems get)."""

    def __init__(self, threads, budget):
        self.threads, self.budget = threads, budget

    def __call__(self, runner):
        runner.engine.threads = self.threads
        runner.engine.shared_budget = self.budget


@pytest.mark.parametrize("threads, budget", [(64, 227 * 1024), (32, 6 * 1024), (64, 12 * 1024)],
                         ids=["two_warps", "global_memory_small_tiles", "two_warps_global_memory"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_layout_matches_the_oracle(threads, budget, dtype):
    """Whole traces of a sweep with held-out data, a trained outer layer and a diverging configuration, in
    the layouts the GPU uses for problems beyond shared memory."""
    dtype = np.dtype(dtype).type
    model = lgd.TwoLayerNet(21, activation="leaky_softplus", scaling="ntk", outer="random", train_outer=True)
    problem = make_problem(model, "exponential", dtype, n=45)
    expected = run_backend(ORACLE, model, problem, [0.3, 1.0, 3e3], steps=40, every=3)
    actual = run_backend(HOST_CUDA, model, problem, [0.3, 1.0, 3e3], steps=40, every=3, chunk=17,
                         prepare=_Engine(threads, budget))
    assert actual[0].diverged[2] >= 0
    upto = [None, None, int(actual[0].diverged[2]) // 3 + 1]
    rtol = TOLERANCE[np.dtype(dtype).name] * (1 if dtype == np.float64 else 20)
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3, upto=upto)


@pytest.mark.parametrize("threads, width", [(32, 45), (64, 21), (64, 64)],
                         ids=["wider_than_the_block", "three_threads_a_neuron", "one_thread_a_neuron"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_per_neuron_sums_match_the_oracle(threads, width, dtype):
    """grad_a and the neuron margins, summed by groups of threads that share a neuron (lgd::neuron_groups:
    several threads a neuron, one, or several neurons a thread), over tiles of a few rows."""
    from lgd.kernels import cuda_run

    dtype = np.dtype(dtype).type
    model = lgd.TwoLayerNet(width, activation="softplus", scaling="ntk", outer="random", train_outer=True)
    problem = make_problem(model, "logistic", dtype, n=37)
    itemsize = np.dtype(dtype).itemsize
    budget = cuda_run.minimum_shared(width, itemsize, threads, 8)
    assert cuda_run.layout(37, 5, width, itemsize, threads, budget).tile_rows < 37  # several tiles a step
    expected = run_backend(ORACLE, model, problem, [0.5, 2.0], steps=12, every=4)
    engine = _Engine(threads, budget)

    def fused(runner):  # X in global memory: 'auto' would take the products path
        engine(runner)
        runner.requested_path = "fused"

    actual = run_backend(HOST_CUDA, model, problem, [0.5, 2.0], steps=12, every=4, chunk=5, prepare=fused)
    assert np.isfinite(actual[1].neuron_margins).all()
    rtol = TOLERANCE[np.dtype(dtype).name] * (1 if dtype == np.float64 else 20)
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("kind", ["activation", "loss"])
def test_the_kernel_flags_a_code_without_a_case_and_writes_nan(kind, monkeypatch):
    """As if lgd.cu lacked a case: the fault flag names the code, and the NaN risk stops every config."""
    from lgd.kernels import cuda_run

    from test_cupy import UnknownActivation, UnknownLoss

    monkeypatch.setattr(cuda_run, "check_codes", lambda activation, loss: None)
    activation = UnknownActivation() if kind == "activation" else lgd.activations.relu()
    loss = UnknownLoss() if kind == "loss" else lgd.losses.logistic()
    engine = _host().HostEngine()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 3)), np.where(rng.standard_normal(8) > 0, 1.0, -1.0)
    configs, width = 2, 4
    run = cuda_run.ChunkRun(engine, X, y, None, None, np.ones((configs, width, 3)), np.ones((configs, width)),
                            np.zeros(configs, dtype=np.int64), np.full((configs, 3), 0.1),
                            np.full(configs, -1, dtype=np.int64), 2, 0)
    cuda_run.advance(run, 0, 1, 1, 1, activation, loss, 1.0, False)
    with pytest.raises(ValueError, match=rf"no formula for the {kind} 'unknown' \(code 99\)"):
        cuda_run.check_fault(run, activation, loss)
    np.testing.assert_array_equal(run.diverged, 0)


def test_the_host_build_has_no_warnings():
    host = _host()
    host.build(host.SOURCE, "lgd_werror.o", host.FLAGS + ("-Wextra", "-Werror", "-c"))


SANITIZERS = {
    "address": (("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"),
                {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"},
                ("ERROR: AddressSanitizer", "runtime error", "ERROR: LeakSanitizer")),
    "thread": (("-fsanitize=thread",), {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66"},
               ("WARNING: ThreadSanitizer",)),
}


@pytest.mark.parametrize("sanitizer", list(SANITIZERS))
def test_a_small_sweep_is_clean_under_the_sanitizers(sanitizer):
    """kernels/cuda/host_check.cpp (a sweep with a diverging configuration, held-out data, records and
    trajectories, in two layouts and both dtypes, blocks of two warps) under AddressSanitizer + UBSan or
    ThreadSanitizer: any report fails."""
    host = _host()
    flags, environment, reports = SANITIZERS[sanitizer]
    program = host.build(host.SOURCE_DIR / "host_check.cpp", f"host_check_{sanitizer}",
                         ("-std=c++20", "-O1", "-g", "-pthread", "-DLGD_HOST_BUILD", *flags))
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **environment})
    found = [report for report in reports if report in done.stderr]
    assert done.returncode == 0 and not found, f"{sanitizer} sanitizer: exit {done.returncode}\n{done.stderr[-6000:]}"
    assert "host check: ok" in done.stdout


@pytest.fixture
def host_cuda(monkeypatch):
    register_host_cuda(monkeypatch)
    return HOST_CUDA.name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_log_risk_where_the_risk_underflows_is_the_oracles(host_cuda, dtype):
    """Separable data at a huge stepsize: the risk reaches 0.0 and the kernel's log-risk (from the samples'
    log-losses) keeps falling with the oracle's."""
    X, y = lgd.data.separable(n=40, d=3, margin=0.2, seed=1)
    runs = [lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=1e5, steps=30, init=np.zeros(3),
                   compute=lgd.Compute(backend=name, dtype=dtype, progress=False)) for name in ("numpy", host_cuda)]
    assert np.any(runs[1].risk == 0.0) and np.all(np.isfinite(runs[1].log_risk))
    np.testing.assert_allclose(runs[1].log_risk, runs[0].log_risk, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_trajectories_and_projections_are_the_oracles(host_cuda, dtype):
    X, y = lgd.data.separable(n=23, d=5, margin=0.1, seed=2)
    net = lgd.TwoLayerNet(6, train_outer=True)
    directions = np.random.default_rng(3).standard_normal((2, 6, 5))
    for record in (lgd.Record(every=2, weights=5), lgd.Record(every=2, weights=5, project_onto=directions)):
        runs = [lgd.gd(X, y, net, stepsize=0.5, steps=20, record=record,
                       compute=lgd.Compute(backend=name, dtype=dtype, progress=False)) for name in ("numpy", host_cuda)]
        rtol = TOLERANCE[dtype]
        if record.project_onto is None:
            np.testing.assert_allclose(runs[1].trajectory, runs[0].trajectory, rtol=rtol, atol=rtol * 1e-3)
            np.testing.assert_allclose(runs[1].outer_trajectory, runs[0].outer_trajectory, rtol=rtol)
        else:
            np.testing.assert_allclose(runs[1].projections, runs[0].projections, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_plain_run_takes_the_plain_build_with_the_full_builds_bits(host_cuda, dtype, monkeypatch):
    """A run without held-out data, trajectories or tangent vectors launches lgd_run_plain (the build without
    those paths: fewer registers on a GPU), which gives the full build's results bit for bit (a sweep with
    a diverging configuration, neuron margins, chunks); a run with any of them launches the full build."""
    from lgd.kernels import cuda_host, cuda_run

    launched = []
    launch = cuda_host.HostEngine.launch

    def spy(self, suffix, grid, block, shared_bytes, args, entry=cuda_run.ENTRY):
        launched.append(entry)
        return launch(self, suffix, grid, block, shared_bytes, args, entry=entry)

    monkeypatch.setattr(cuda_host.HostEngine, "launch", spy)
    model = lgd.TwoLayerNet(7, activation="leaky_softplus(0.5)", scaling="ntk", outer="random", train_outer=True)
    problem = make_problem(model, "exponential", np.dtype(dtype).type, test=False, n=29)
    builds = {}
    for entry in (cuda_run.PLAIN_ENTRY, cuda_run.ENTRY):
        if entry == cuda_run.ENTRY:
            monkeypatch.setattr(cuda_run, "entry_for", lambda values: cuda_run.ENTRY)
        launched.clear()
        builds[entry] = run_backend(HOST_CUDA, model, problem, [0.5, 4.0, 3e3], steps=25, every=2, chunk=9)
        assert set(launched) == {entry}
    (s0, t0), (s1, t1) = builds.values()
    assert s0.diverged[2] >= 0 and s0.diverged[0] < 0 and np.isfinite(t0.neuron_margins[0]).all()
    for name in ("W", "a", "diverged"):
        np.testing.assert_array_equal(getattr(s0, name), getattr(s1, name), err_msg=name)
    for name in cuda_run.KERNEL_FIELDS + ("neuron_margins",):
        np.testing.assert_array_equal(getattr(t0, name), getattr(t1, name), err_msg=name)

    monkeypatch.undo()
    monkeypatch.setattr(cuda_host.HostEngine, "launch", spy)
    register_host_cuda(monkeypatch)
    X, y = lgd.data.separable(n=29, d=4, margin=0.1, seed=5)
    for options in (dict(X_test=X[:9], y_test=y[:9]), dict(record=lgd.Record(every=2, weights=3)),
                    dict(record=lgd.Record(every=2, lyapunov=1)), dict()):
        launched.clear()
        lgd.gd(X, y, model, stepsize=0.5, steps=6, compute=lgd.Compute(backend=host_cuda, dtype=dtype, progress=False),
               **options)
        assert set(launched) == {cuda_run.PLAIN_ENTRY if not options else cuda_run.ENTRY}, options


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_stepsize_rule_is_the_oracles(host_cuda, dtype):
    assert_every_rule_matches(host_cuda, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_stepsize_from_the_sharpness_is_the_oracles(host_cuda, dtype):
    """inverse_sharpness: the driver measures the sharpness between chunks and the kernel takes the latest."""
    assert_inverse_sharpness_matches(host_cuda, dtype)


def test_a_resumed_run_takes_the_sharpness_measured_before_it_stopped(host_cuda, tmp_path, monkeypatch):
    assert_inverse_sharpness_resumes(host_cuda, monkeypatch, tmp_path)


def test_the_kernels_record_rule_is_lgd_backends():
    lib = _host().library()
    lib.lgd_record_slot.restype = ctypes.c_longlong
    lib.lgd_record_slot.argtypes = [ctypes.c_longlong] * 3
    for steps, every in ((10, 1), (10, 3), (12, 4), (7, 10)):
        for t in range(steps + 1):
            assert lib.lgd_record_slot(t, steps, every) == backends.record_slot(t, steps, every)


def test_the_kernels_stepsize_rules_are_lgd_stepsize():
    """stepsize_at of lgd.cu against lgd.stepsize.stepsize_at, for every rule the kernel has, on a grid of
    steps, risks (down to 0 with a finite log-risk), gradient norms (0 included, and down to 1e-170, whose square
    underflows) and sharpnesses (none measured yet, not positive, positive)."""
    from lgd import stepsize
    from lgd.kernels import cuda_codes, cuda_run

    lib = _host().library()
    lib.lgd_stepsize_at.restype = ctypes.c_double
    lib.lgd_stepsize_at.argtypes = [ctypes.c_int, *[ctypes.c_double] * 3, ctypes.c_longlong, ctypes.c_longlong,
                                    *[ctypes.c_double] * 4]
    for name in cuda_run.KERNEL_RULES:
        code = cuda_codes.RULES[name]
        for params in ((0.5, 7.0, 0.5), (2.0, 1.0, 0.9), (1e10, 1.0, 0.9)):
            for t in (0, 3, 20, 50):
                for risk, log_risk in ((0.7, np.log(0.7)), (1e-300, np.log(1e-300)), (0.0, -709.5), (0.0, -800.0)):
                    for grad_norm, sharpness in itertools.product((0.0, 1e-170, 1e-8, 2.5), (np.nan, -0.3, 0.0, 4.2)):
                        want = stepsize.stepsize_at(code, *params, t, 50, risk, log_risk, grad_norm, sharpness)
                        got = lib.lgd_stepsize_at(code, *params, t, 50, risk, log_risk, grad_norm, sharpness)
                        assert got == pytest.approx(want, rel=1e-15), (name, params, t, risk, grad_norm, sharpness)


def _formulas(activation, loss, x):
    """formulas.cuh over x by the host build (lgd_formulas_f64 / _f32): phi, phi', phi'', the loss's value,
    slope and second derivative, exp_of; and the fault flag."""
    lib = _host().library()
    suffix = "f64" if x.dtype == np.float64 else "f32"
    entry = getattr(lib, f"lgd_formulas_{suffix}")
    pointer = np.ctypeslib.ndpointer(dtype=x.dtype, flags="C_CONTIGUOUS")
    entry.restype = None
    entry.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_int, ctypes.c_double, pointer, pointer,
                      ctypes.c_longlong, ctypes.POINTER(ctypes.c_int)]
    out, fault = np.empty((7, x.size), x.dtype), ctypes.c_int(0)
    entry(activation.code, activation.param, loss.code, loss.param, np.ascontiguousarray(x), out, x.size, fault)
    return out, fault.value


def test_the_float64_exp_softplus_and_sigmoid_are_within_an_ulp_or_two():
    """formulas.cuh's float64 exp (the numba kernels' algorithm on the constants codes.cuh has from
    lgd.kernels.polynomials), softplus and sigmoid over the whole range: within 2 ulps of numpy's (whose own
    are within 1), gradual underflow to 0, inf, NaN kept."""
    x = np.concatenate([np.linspace(-745, 709.7, 200001), [-1e6, -746, 709.78, 710, 1e6, 0.0, -0.0]])
    out, fault = _formulas(lgd.activations.get("softplus"), lgd.losses.get("logistic"), x)
    assert fault == 0
    with np.errstate(over="ignore"):
        exact = np.exp(x)
    normal = exact > 1e-300
    np.testing.assert_allclose(out[6][normal], exact[normal], rtol=4e-16)
    assert np.all(out[6][~normal & (exact == 0)] == 0) and np.isinf(out[6][x > 709.8]).all()
    softplus = np.logaddexp(0.0, x)
    np.testing.assert_allclose(out[0], softplus, rtol=4e-16, atol=1e-320)
    with np.errstate(over="ignore", invalid="ignore"):
        sigmoid = np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))
    np.testing.assert_allclose(out[1], sigmoid, rtol=5e-16, atol=1e-320)
    np.testing.assert_allclose(out[3], np.logaddexp(0.0, -x), rtol=4e-16, atol=1e-320)  # the logistic loss
    assert np.isnan(_formulas(lgd.activations.get("softplus"), lgd.losses.get("logistic"), np.array([np.nan]))[0]).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation, loss", [
    (activation, loss) for activation, loss in itertools.zip_longest(
        lgd.activations.ENTRIES, lgd.losses.ENTRIES, fillvalue=None)])
def test_every_formula_is_the_catalogs(activation, loss, dtype):
    """Each activation and loss of formulas.cuh (with its derivatives) against the catalog's numpy formula,
    over margins and pre-activations from 1e-6 to 1e6 of either sign: float64 within a few ulps, float32
    within a few float32 ulps, of the value or of the scale of its terms (1 + |x|: leaky softplus's c z and
    (1 - c) softplus(z) cancel where phi crosses 0), whichever is larger;
    inf and NaN where the catalog has them."""
    activation = lgd.activations.get((activation or lgd.activations.ENTRIES[0]).name)
    loss = lgd.losses.get((loss or lgd.losses.ENTRIES[0]).name)
    magnitudes = np.geomspace(1e-6, 1e6, 2001)
    x = np.concatenate([-magnitudes[::-1], [0.0], magnitudes]).astype(dtype)
    out, fault = _formulas(activation, loss, x)
    assert fault == 0
    rtol = 2e-15 if dtype == "float64" else 3e-6
    bound = rtol * (1.0 + np.abs(x.astype(np.float64)))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        want = [activation.phi(x), activation.dphi(x), activation.ddphi(x), loss.value(x), loss.d1(x), loss.d2(x)]
    for row, (name, expected) in enumerate(zip(("phi", "phi'", "phi''", "loss", "loss'", "loss''"), want)):
        got, expected = out[row].astype(np.float64), np.asarray(expected, dtype=np.float64)
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))
        with np.errstate(invalid="ignore"):
            close = np.abs(got - expected) <= rtol * np.abs(expected) + bound
        bad = np.flatnonzero(~(same | close))
        assert bad.size == 0, (f"{activation.name if row < 3 else loss.name} {name}: {bad.size} of {x.size} off, e.g. "
                               f"x = {x[bad[:3]]}: {got[bad[:3]]} against {expected[bad[:3]]}")
