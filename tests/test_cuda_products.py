"""The CUDA products path (kernels/cuda/products.cuh, lgd.kernels.cuda_products): large problems as two
cuBLAS products and four kernels per step, replayed from captured CUDA graphs, against the numpy oracle.

Every case runs on the host build (numpy's products, the recordings replayed as calls; blocks of several
sample rows and norm slices forced small so that every partial sum crosses blocks) and, where a GPU is
usable, on the GPU with cupy's products and CUDA graphs (the backend 'cupy' with the path forced). The
choice of path, the kernel's shared-memory count and the record schedule are checked here too.
"""

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import (ACTIVATIONS, HOST_CUDA, LOSSES, MODELS, TOLERANCE, TOLERANCE_ONE_STEP, assert_every_rule_matches,
                      assert_inverse_sharpness_matches, assert_inverse_sharpness_resumes, assert_traces_close,
                      make_problem, problem_data, register_host_cuda, run_backend)

import lgd
from lgd import backends
from lgd.backends import _cupy, record_slot
from lgd.kernels import cuda_products, cuda_run

ORACLE = backends.resolve("numpy")

pytestmark = pytest.mark.skipif(not HOST_CUDA.availability()[0], reason="no C++ compiler for the host build")


@pytest.fixture(params=["host", "gpu"])
def products(request, monkeypatch):
    """The backend name of the products path: its host build, or cupy on a GPU with the path forced. Blocks
    of 4 sample rows and norm slices of one entry per thread, so that every sum crosses blocks."""
    monkeypatch.setattr(cuda_products, "ROWS_MAX", 4)
    monkeypatch.setattr(cuda_products, "NORM_ENTRIES_PER_THREAD", 1)
    if request.param == "host":
        register_host_cuda(monkeypatch)
        return "cuda-host-products"
    usable, reason = backends.availability("cupy")
    if not usable:
        pytest.skip(f"no GPU backend here: {reason}")
    monkeypatch.setattr(_cupy.Runner, "requested_path", "products")
    return "cupy"


def _model(name, act):
    return lgd.Linear() if name == "linear" else MODELS[name](act)


ONE_STEP_CASES = ([("ntk_train_outer", act, loss) for act in ACTIVATIONS for loss in LOSSES]
                  + [("linear", "identity", loss) for loss in LOSSES])


@pytest.mark.parametrize("model_name, act, loss", ONE_STEP_CASES, ids=["-".join(c) for c in ONE_STEP_CASES])
def test_one_step_matches_the_oracle(products, model_name, act, loss):
    """Every activation x loss, float64: step 0's records and W_1 from the same iterate (held-out data
    included)."""
    model = _model(model_name, act)
    problem = make_problem(model, loss, np.float64)
    expected = run_backend(ORACLE, model, problem, [0.7], steps=1)
    actual = run_backend(backends.resolve(products), model, problem, [0.7], steps=1)
    rtol = TOLERANCE_ONE_STEP["float64"]
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3)


WHOLE_TRACE_CASES = [(model, act, loss, dtype) for model in MODELS for act, loss in
                     (("leaky_softplus", "logistic"), ("tanh", "squared"), ("relu", "flattened_exponential"))
                     for dtype in ("float64", "float32")]


@pytest.mark.parametrize("model_name, act, loss, dtype", WHOLE_TRACE_CASES,
                         ids=["-".join(c) for c in WHOLE_TRACE_CASES])
def test_whole_traces_match_the_oracle(products, model_name, act, loss, dtype):
    """40 steps in chunks of 13, records every 7: the steps between records replayed from recordings of 1,
    2 and 4 steps, every field recorded at the record steps."""
    model = _model(model_name, act)
    problem = make_problem(model, loss, np.dtype(dtype).type)
    expected = run_backend(ORACLE, model, problem, [0.3], steps=40, every=7)
    actual = run_backend(backends.resolve(products), model, problem, [0.3], steps=40, every=7, chunk=13)
    rtol = TOLERANCE[dtype] if dtype == "float64" else 2e-4
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_sweep_with_a_diverging_configuration_matches_the_oracle(products, dtype):
    """Three configurations side by side in the products, one of which diverges: it stops at the oracle's
    step with W_t, the others go on; held-out data, a trained outer layer."""
    model = lgd.TwoLayerNet(21, activation="leaky_softplus", scaling="ntk", outer="random", train_outer=True)
    problem = make_problem(model, "exponential", np.dtype(dtype).type, n=45)
    expected = run_backend(ORACLE, model, problem, [0.3, 1.0, 3e3], steps=40, every=3)
    actual = run_backend(backends.resolve(products), model, problem, [0.3, 1.0, 3e3], steps=40, every=3, chunk=17)
    assert actual[0].diverged[2] >= 0 and actual[0].diverged[0] < 0
    upto = [None, None, int(actual[0].diverged[2]) // 3 + 1]
    rtol = TOLERANCE[dtype] * (1 if dtype == "float64" else 20)
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3, upto=upto)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_stepsize_rule_is_the_oracles(products, dtype):
    assert_every_rule_matches(products, dtype, fields=("eta", "risk", "log_risk", "grad_norm", "accuracy", "margin"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_stepsize_from_the_sharpness_is_the_oracles(products, dtype):
    """inverse_sharpness: the runner copies the sharpness the driver measured into the array lgd_finalize
    reads, in place, so that the steps replayed from recordings take the latest too."""
    assert_inverse_sharpness_matches(products, dtype)


def test_a_resumed_run_takes_the_sharpness_measured_before_it_stopped(products, tmp_path, monkeypatch):
    assert_inverse_sharpness_resumes(products, monkeypatch, tmp_path)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_log_risk_where_the_risk_underflows_is_the_oracles(products, dtype):
    """The risk reaches 0.0: the log-risk comes from the blocks' log-sum-exps of the log-losses, combined."""
    X, y = lgd.data.separable(n=40, d=3, margin=0.2, seed=1)
    runs = [lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=1e5, steps=30, init=np.zeros(3),
                   compute=lgd.Compute(backend=name, dtype=dtype, progress=False)) for name in ("numpy", products)]
    assert np.any(runs[1].risk == 0.0) and np.all(np.isfinite(runs[1].log_risk))
    np.testing.assert_allclose(runs[1].log_risk, runs[0].log_risk, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype])
    # a sample whose squared loss is exactly 0 first in its block, the risk of the others subnormal: its log-loss
    # -inf met an empty log-sum-exp (-inf - -inf) and made the log-risk -inf
    X, y = np.array([[0.0], [1.0]]), np.zeros(2)
    init = np.array([1e-150 if dtype == "float64" else 1e-20])
    runs = [lgd.gd(X, y, lgd.Linear(), "squared", stepsize=0.1, steps=1, init=init,
                   compute=lgd.Compute(backend=name, dtype=dtype, progress=False)) for name in ("numpy", products)]
    assert np.isfinite(runs[0].log_risk).all()
    np.testing.assert_allclose(runs[1].log_risk, runs[0].log_risk, rtol=TOLERANCE[dtype])


def test_a_sweep_is_its_single_runs(products):
    X, y, X_test, y_test = problem_data("logistic")
    model = lgd.TwoLayerNet(6)
    options = dict(steps=30, record=5, X_test=X_test, y_test=y_test)
    compute = lgd.Compute(backend=products, progress=False)
    swept = lgd.sweep(X, y, model, "logistic", stepsizes=[0.1, 1.0], seeds=(0, 1), compute=compute, **options)
    for i, (eta, seed) in enumerate(zip(swept.stepsize, swept.seed)):
        single = lgd.gd(X, y, model, "logistic", stepsize=float(eta), seed=int(seed), compute=compute, **options)
        np.testing.assert_allclose(single.risk, swept.risk[i], rtol=TOLERANCE["float64"])
        np.testing.assert_allclose(single.test_risk, swept.test_risk[i], rtol=TOLERANCE["float64"])
        np.testing.assert_allclose(single.weights, swept.weights[i], rtol=TOLERANCE["float64"])


def _counting_runner(captured: list, launched: list):
    """A host products-path runner class whose engine lists each recording it captures (`captured`), and a
    ProductRun.step that lists each step run outside a capture or a replay (`launched`: launched one by one)."""
    from lgd.backends import _cuda_host_products
    from lgd.kernels import cuda_products

    inside = []  # non-empty while the engine captures or replays (the host's capture returns the work,
    # its replay runs it)

    def within(method):
        def wrapped(*args):
            inside.append(True)
            try:
                return method(*args)
            finally:
                inside.pop()
        return wrapped

    class Counting(_cuda_host_products.Runner):
        def _engine(self):
            engine = super()._engine()
            capture = within(engine.capture)

            def counted(work):
                recording = capture(work)
                captured.append(recording)
                return recording

            engine.capture, engine.replay = counted, within(engine.replay)
            return engine

    step = cuda_products.ProductRun.step

    def counted_step(self, settings, held_out):
        if not inside:
            launched.append(held_out)
        return step(self, settings, held_out)

    return Counting, counted_step


def test_runs_of_record_steps_end_where_the_record_rule_says():
    """_record_run_end against lgd.backends.record_slot step by step: from each record step, the run of
    consecutive record steps within [t, stop)."""
    from lgd.backends import record_slot
    from lgd.kernels.cuda_products import _record_run_end

    for steps in (1, 2, 5, 6, 7, 12):
        for every in (1, 2, 3, 5):
            for stop in range(1, steps + 2):
                for t in range(stop):
                    if record_slot(t, steps, every) < 0:
                        continue
                    end = t
                    while end < stop and record_slot(end, steps, every) >= 0:
                        end += 1
                    assert _record_run_end(t, stop, steps, every) == end, (t, stop, steps, every)


# (held-out data, record interval, recordings captured): the evaluations 0..21 in the driver's chunks of 16 and 6.
REPLAY_CASES = {"training_only": (False, 3, 3),  # 16, then 4 + 2: record steps replay as any other
                "held_out": (True, 3, 2),  # 2 steps between records, 1 record step (with the held-out pass)
                "records_every_step": (True, 1, 3)}  # one run of record steps: 16, then 4 + 2, held-out pass in each


@pytest.mark.parametrize("replay", REPLAY_CASES)
def test_every_step_replays_from_recordings(replay, monkeypatch):
    """Every step of a run, record steps included, comes from recordings of 2^k steps, captured once each:
    the kernels decide the records from the step counter. With held-out data the record steps replay from
    recordings of their own, with the held-out pass; a run recording every step (the benchmark's) is one run
    of them. Nothing is launched step by step."""
    from lgd.kernels import cuda_products

    held_out, every, recordings = REPLAY_CASES[replay]
    register_host_cuda(monkeypatch)
    captured, launched = [], []
    runner_class, counted_step = _counting_runner(captured, launched)
    monkeypatch.setattr(cuda_products.ProductRun, "step", counted_step)
    model = lgd.TwoLayerNet(5)
    problem = make_problem(model, "logistic", np.float64, test=held_out)
    expected = run_backend(ORACLE, model, problem, [0.5], steps=21, every=every)
    actual = run_backend(_backend_of(runner_class), model, problem, [0.5], steps=21, every=every)
    assert_traces_close(expected, actual, rtol=TOLERANCE["float64"], atol=1e-13)
    assert launched == [] and len(captured) == recordings


def _backend_of(runner_class):
    """A Backend whose runner is `runner_class` (a test's own subclass)."""

    class _Backend(backends.Backend):
        def runner(self, problem, steps, record_every, shape):
            return runner_class(problem, steps, record_every, shape)

    return _Backend("counting", "lgd.backends._cuda_host_products")


def test_the_first_record_step_is_lgd_backends_rule():
    for steps, every in ((10, 1), (10, 3), (12, 4), (7, 10), (21, 7)):
        for t in range(steps + 1):
            for stop in range(t + 1, steps + 2):
                want = next((u for u in range(t, stop) if record_slot(u, steps, every) >= 0), stop)
                assert cuda_products._record_steps_between(t, stop, steps, every) == want, (t, stop, steps, every)


@pytest.mark.parametrize("m, itemsize, threads", [(21, 8, 32), (64, 8, 256), (256, 8, 256), (256, 4, 256),
                                                  (3000, 8, 256)])
def test_the_rows_shared_memory_is_the_kernels(m, itemsize, threads):
    from lgd.kernels import cuda_host

    kernel = cuda_host.library().lgd_rows_shared_bytes
    kernel.restype = ctypes.c_size_t
    rows = cuda_products.rows_per_block(2000, m, itemsize, threads)
    assert 1 <= rows <= cuda_products.ROWS_MAX
    assert cuda_products.rows_shared(m, itemsize, threads, rows) == kernel(m, itemsize, threads, rows)
    assert kernel(m, itemsize, threads, rows) <= cuda_products.ROWS_SHARED


def test_a_width_beyond_a_block_is_refused_with_its_numbers():
    with pytest.raises(ValueError, match=r"width 8000 needs \d+ bytes of shared memory per sample"):
        cuda_products.rows_per_block(10, 8000, 8, 256)


def test_auto_takes_the_products_path_where_x_leaves_shared_memory(monkeypatch):
    """S (X in shared memory) stays fused; M and L take the products path, unless the run records
    trajectories or tangent vectors or the buffers exceed the memory budget; LGD_CUDA_PATH chooses."""
    monkeypatch.delenv("LGD_CUDA_PATH", raising=False)
    budget = 227 * 1024
    choose = cuda_products.choose
    assert choose(None, 256, 16, 64, 8, 256, budget) == "fused"
    assert choose(None, 360, 64, 256, 8, 256, budget) == "products"
    assert choose(None, 2000, 3072, 256, 8, 256, budget) == "products"
    assert choose(None, 2000, 3072, 256, 8, 256, budget, trajectories=True) == "fused"
    assert choose(None, 2000, 3072, 256, 8, 256, budget, tangents=True) == "fused"
    assert choose(None, 2000, 3072, 256, 8, 256, budget, configs=1024, memory_budget=1e9) == "fused"
    assert choose("products", 256, 16, 64, 8, 256, budget) == "products"
    monkeypatch.setenv("LGD_CUDA_PATH", "fused")
    assert choose(None, 2000, 3072, 256, 8, 256, budget) == "fused"
    monkeypatch.setenv("LGD_CUDA_PATH", "cublas")
    with pytest.raises(ValueError, match=r"one of auto, fused, products \(LGD_CUDA_PATH\), got 'cublas'"):
        choose(None, 256, 16, 64, 8, 256, budget)
    with pytest.raises(ValueError, match="records no Lyapunov exponents"):
        choose("products", 256, 16, 64, 8, 256, budget, tangents=True)


def test_a_run_the_products_path_cannot_record_is_refused_before_it_starts(monkeypatch):
    register_host_cuda(monkeypatch)
    X, y = lgd.data.separable(n=20, d=3, margin=0.1, seed=0)
    with pytest.raises(ValueError, match="products path records no trajectories"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.1, steps=5, record=lgd.Record(weights=1),
               compute=lgd.Compute(backend="cuda-host-products", progress=False))


def test_the_entries_parameter_lists_are_the_kernels():
    """cuda_run.ENTRY_PARAMS has lgd.cu's entries (its LGD_ENTRY lines), each with the names of the
    LGD_*_PARAMS macro the entry is declared with, in order (ctypes and cupy pass the arguments by position)."""
    folder = Path(cuda_run.__file__).with_name("cuda")
    text = (folder / "lgd.cu").read_text() + (folder / "products.cuh").read_text()
    declared = dict(re.findall(r"LGD_ENTRY\((\w+), SUFFIX, T, (LGD_\w+_PARAMS),", text))
    assert declared.keys() == cuda_run.ENTRY_PARAMS.keys()
    for entry, params in cuda_run.ENTRY_PARAMS.items():
        macro = declared[entry]
        body = re.search(rf"#define {macro}\(T\)(.*?)\n#define", text, re.S).group(1)
        names = re.findall(r"(\w+)\s*(?:,|$)", body.replace("\\", " ").strip())
        assert tuple(names) == tuple(name for name, _ in params), entry


def test_a_resumed_run_has_the_bits_of_a_run_never_stopped(products, tmp_path, monkeypatch):
    """A run on the products path that failed after a checkpoint, resumed with lgd.resume: the records of
    the steps before the checkpoint go back to the device, the steps after it replay from new recordings,
    and every field is the uninterrupted run's, bit for bit (adaptive stepsizes, held-out data, neuron
    margins, the driver's sharpness)."""
    from test_checkpoint import assert_same_bits, interrupt_once

    from lgd import checkpoint

    X, y = lgd.data.xor(n=30)
    path = tmp_path / "gd.ckpt"
    arguments = dict(stepsize=lgd.stepsize.adaptive(0.5), steps=120, seed=3, init_scale=0.7,
                     record=lgd.Record(every=7, sharpness_every=50, neuron_margins=True), compute=products,
                     X_test=X[:4], y_test=y[:4])
    net = lgd.TwoLayerNet(6, activation="leaky_softplus", outer="random", train_outer=True)
    expected = lgd.gd(X, y, net, "logistic", **arguments)
    fired = interrupt_once(monkeypatch, products, 40, error=MemoryError)
    with pytest.raises(MemoryError):
        lgd.gd(X, y, net, "logistic", **arguments, checkpoint=path, checkpoint_every=1e-9)
    assert checkpoint.read(path).header["reached"] == fired[0]
    resumed = lgd.resume(path)
    assert resumed.status == "completed"
    assert_same_bits(expected, resumed)


def test_the_run_says_which_path_it_took(monkeypatch):
    register_host_cuda(monkeypatch)
    X, y = lgd.data.separable(n=20, d=3, margin=0.1, seed=0)
    for name, path in (("cuda-host-products", "products"), ("cuda-host", "fused")):
        run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.1, steps=5, compute=lgd.Compute(backend=name, progress=False))
        assert run.meta["cuda_path"] == path
    assert "cuda_path" not in lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.1, steps=5, compute="numpy").meta


def test_a_network_too_wide_for_the_fused_kernels_block_takes_the_products_path(monkeypatch):
    """Width 4,500 in float64: one sample's row does not fit the fused kernel's block (227 KiB), the products
    path's does. 'auto' takes it there (it was refused); a width neither takes is refused naming numba."""
    register_host_cuda(monkeypatch)
    X, y = lgd.data.xor(n=4)
    compute = lgd.Compute(backend="cuda-host", progress=False)
    run = lgd.gd(X, y, lgd.TwoLayerNet(4500), stepsize=1.0, steps=2, compute=compute)
    oracle = lgd.gd(X, y, lgd.TwoLayerNet(4500), stepsize=1.0, steps=2, compute="numpy")
    assert run.meta["cuda_path"] == "products"
    np.testing.assert_allclose(run.risk, oracle.risk, rtol=TOLERANCE["float64"])
    with pytest.raises(ValueError, match=r"width 6000 needs .* the numba backend \(compute='numba'\) has no such"):
        lgd.gd(X, y, lgd.TwoLayerNet(6000), stepsize=1.0, steps=2, compute=compute)
