"""The numba backend against the numpy oracle: every (activation, loss, model, dtype) case, whole traces,
divergence, sweeps, the fast exp/log1p, and the on-disk cache.

Compile cost is bounded: activation and loss are runtime codes, so the whole file compiles two kernels per
dtype, one per product mode (about 10-15 s each with an empty cache, under a second from the cache).
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

import lgd  # noqa: E402
from lgd import activations, losses  # noqa: E402
from lgd.backends import Problem, State, Trace, _numba, _numpy, record_steps  # noqa: E402
from lgd.kernels import numba_cpu  # noqa: E402

RTOL_STEP = {np.float64: 1e-12, np.float32: 1e-5}
# Width 21: register tiles of the products (8 float64 / 16 float32 columns) and the columns after them.
MODELS = {
    "mean_field": lambda act: lgd.TwoLayerNet(21, activation=act),
    "ntk_train_outer": lambda act: lgd.TwoLayerNet(21, activation=act, scaling="ntk", outer="random",
                                                   train_outer=True),
    "linear": lambda act: lgd.Linear(),
}


def problem_data(loss, n=23, d=5, seed=0, dtype=np.float64, test=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) / math.sqrt(d)
    if losses.get(loss).margin:
        y = np.where(rng.standard_normal(n) > 0, 1.0, -1.0)
    else:
        y = rng.standard_normal(n)
    X_test, y_test = (X[:7] * 0.9, y[:7]) if test else (None, None)
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(X), cast(y), cast(X_test), cast(y_test)


def make_problem(model, loss, dtype, test=True, d=5):
    X, y, X_test, y_test = problem_data(loss, d=d, dtype=dtype, test=test)
    return Problem(X=X, y=y, activation=model.activation, loss=losses.get(loss), scale=model.scale,
                   train_outer=model.train_outer, linear=isinstance(model, lgd.Linear), X_test=X_test,
                   y_test=y_test)


def initial_state(model, d, dtype, stepsizes, seed=1):
    rng = np.random.default_rng(seed)
    C, m = len(stepsizes), model.width
    W = rng.standard_normal((C, m, d)).astype(dtype)
    a = np.stack([model.outer_weights(rng) for _ in range(C)]).astype(dtype)
    return State(W=W, a=a, stepsizes=np.asarray(stepsizes, dtype=np.float64))


def run_both(model, loss, dtype, stepsizes, steps, every=1, test=True):
    problem = make_problem(model, loss, dtype, test=test)
    results = []
    for backend in (_numpy, _numba):
        state = initial_state(model, problem.X.shape[1], dtype, stepsizes)
        trace = Trace.empty(len(stepsizes), record_steps(steps, every).size, model.width, True)
        backend.runner(problem, state.W.shape).run(state, trace, 0, steps + 1, steps, every)
        results.append((state, trace))
    return results


def assert_traces_close(expected, actual, rtol, atol=0.0):
    (s0, t0), (s1, t1) = expected, actual
    np.testing.assert_array_equal(s1.diverged, s0.diverged)
    for name in ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy",
                 "neuron_margins"):
        np.testing.assert_allclose(getattr(t1, name), getattr(t0, name), rtol=rtol, atol=atol, err_msg=name)
    np.testing.assert_allclose(s1.W, s0.W, rtol=rtol, atol=atol)
    np.testing.assert_allclose(s1.a, s0.a, rtol=rtol, atol=atol)


def test_blas_kernel_compiles_without_the_fused_loops(tmp_path):
    """The BLAS kernel passes None for the fused loops' tile rows, which prunes them (and their
    register tiles) from its compile; a fresh cache, so that this process compiles it."""
    script = (
        "import numpy as np, lgd\n"
        "from lgd.backends import Problem, _numba\n"
        "from lgd.kernels import numba_cpu\n"
        "X = np.ones((64, _numba.BLAS_MIN_D)); y = np.ones(64)\n"
        "p = Problem(X=X, y=y, activation=lgd.activations.get('relu'), loss=lgd.losses.get('logistic'),\n"
        "            scale=1.0, train_outer=False, linear=False)\n"
        "runner = _numba.runner(p, shape=(1, _numba.BLAS_WORK // X.size + 1))\n"
        "assert runner._use_blas(_numba.BLAS_WORK // X.size + 1)\n"
        "compiled = [f.__name__ for lib in numba_cpu._SUBROUTINES for f, _ in numba_cpu._SUBROUTINES[lib]]\n"
        "print(' '.join(sorted(set(compiled))))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    compiled = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                              env=env).stdout.split()
    assert "sample_block" in compiled and "activate_row" in compiled
    assert "forward_rows" not in compiled and "backward_rows" not in compiled


def test_codes_match_the_catalogs():
    for name in activations.NAMES:
        act = activations.get(name)
        assert getattr(numba_cpu, type(act).__name__.upper().replace("SOFTPLUS_ACTIVATION", "SOFTPLUS")) == act.code
    for name in losses.NAMES:
        assert getattr(numba_cpu, name.upper()) == losses.get(name).code


def test_available_without_importing_numba():
    code = "import sys, lgd.backends._numba as b; assert b.available()[0]; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_one_step_every_activation_and_loss(model_name, dtype):
    """Risk, gradient (through W_1) and every step-0 record from the same iterate, all combinations."""
    for act in activations.NAMES:
        if model_name == "linear" and act != activations.NAMES[0]:
            continue
        for loss in losses.NAMES:
            model = MODELS[model_name](act)
            expected, actual = run_both(model, loss, dtype, [0.7], steps=1)
            tol = RTOL_STEP[dtype]
            try:
                assert_traces_close(expected, actual, rtol=tol, atol=tol * 1e-3)
            except AssertionError as exc:
                raise AssertionError(f"{model_name} {act} {loss} {np.dtype(dtype).name}: {exc}") from None


@pytest.mark.parametrize("model_name", list(MODELS))
def test_whole_traces_float64(model_name):
    """A few hundred steps at a small stepsize: every recorded field within 1e-10."""
    for act in ("leaky_softplus", "gelu", "tanh", "relu"):
        if model_name == "linear" and act != "leaky_softplus":
            continue
        for loss in losses.NAMES:
            model = MODELS[model_name](act)
            expected, actual = run_both(model, loss, np.float64, [0.3], steps=300, every=7)
            try:
                assert_traces_close(expected, actual, rtol=1e-10, atol=1e-13)
            except AssertionError as exc:
                raise AssertionError(f"{model_name} {act} {loss}: {exc}") from None


def test_whole_trace_float32():
    model = MODELS["mean_field"]("leaky_softplus")
    expected, actual = run_both(model, "logistic", np.float32, [0.3], steps=200, every=10)
    assert_traces_close(expected, actual, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_divergence_reported_identically(dtype):
    X, y, _, _ = problem_data("exponential", dtype=dtype, test=False)
    runs = [lgd.gd(X, y, lgd.TwoLayerNet(6), "exponential", stepsize=1e4, steps=50, backend=backend,
                   progress=False) for backend in ("numpy", "numba")]
    assert runs[0].status == runs[1].status == "diverged"
    assert runs[0].diverged_step == runs[1].diverged_step
    np.testing.assert_allclose(runs[1].risk, runs[0].risk, rtol=RTOL_STEP[dtype])
    np.testing.assert_allclose(runs[1].weights, runs[0].weights, rtol=RTOL_STEP[dtype])


@pytest.mark.parametrize("products", ["fused", "blas"])
def test_sweep_equals_single_runs_and_oracle(products, monkeypatch):
    """A sweep (threads taking the configurations from a shared queue) equals the single runs (a team of
    threads per step) and the oracle, with the products in the fused loops or through BLAS."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 0 if products == "blas" else 1 << 62)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    X, y, X_test, y_test = problem_data("logistic")
    stepsizes = [0.1, 1.0, 10.0, 1e5]
    kwargs = dict(steps=120, record_every=5, seeds=(0, 1), X_test=X_test, y_test=y_test, progress=False)
    model = lgd.TwoLayerNet(6)
    swept = lgd.sweep(X, y, model, "logistic", stepsizes=stepsizes, backend="numba", **kwargs)
    oracle = lgd.sweep(X, y, model, "logistic", stepsizes=stepsizes, backend="numpy", **kwargs)
    assert swept.status == oracle.status
    np.testing.assert_array_equal(swept.diverged_step, oracle.diverged_step)
    for i, eta in enumerate(np.repeat(stepsizes, 2)):
        if eta > 1.0:  # chaotic: block-wise summation orders differ at 1e-16 and the runs drift apart
            continue
        single = lgd.gd(X, y, model, "logistic", stepsize=eta, seed=(0, 1)[i % 2], backend="numba",
                        **{k: v for k, v in kwargs.items() if k != "seeds"})
        np.testing.assert_allclose(single.risk, swept.risk[i], rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(single.weights, swept.weights[i], rtol=1e-10)
    calm = np.repeat(np.array(stepsizes) <= 1.0, 2)
    np.testing.assert_allclose(swept.risk[calm], oracle.risk[calm], rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("team, stepsizes", [(2, [0.3]), (2, [3e3]), (3, [0.3, 3e3])],
                         ids=["calm", "diverging", "two_configs"])
@pytest.mark.parametrize("products", ["fused", "blas"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_team_of_threads_matches_oracle(team, stepsizes, dtype, products, monkeypatch):
    """run_team (threads splitting the samples of every step, barriers between) against the oracle:
    whole traces, test metrics and neuron margins, divergence, configurations one after the other,
    with the products in the fused loops or through BLAS on each thread's block."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 0 if products == "blas" else 1 << 62)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    model = lgd.TwoLayerNet(21, train_outer=True)
    problem = make_problem(model, "exponential", dtype)
    steps, every = 150, 7
    results = []
    for backend in (_numpy, _numba):
        state = initial_state(model, problem.X.shape[1], dtype, stepsizes)
        trace = Trace.empty(len(stepsizes), record_steps(steps, every).size, model.width, True)
        runner = backend.runner(problem, state.W.shape)
        if backend is _numba:
            runner._threads = team
            assert runner.team_size(len(stepsizes), model.width) == team
            assert runner._use_blas(model.width) == (products == "blas")
        for t0 in range(0, steps + 1, 40):  # in chunks, as the driver calls it
            runner.run(state, trace, t0, min(t0 + 40, steps + 1), steps, every)
        results.append((state, trace))
    (s0, t0), (s1, t1) = results
    assert list(s0.diverged >= 0) == [eta > 1.0 for eta in stepsizes]
    np.testing.assert_array_equal(s1.diverged, s0.diverged)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for c, eta in enumerate(stepsizes):
        # A diverging run is compared up to its divergence (the trace is nan after it).
        cut = s0.diverged[c] if s0.diverged[c] >= 0 else None
        for name in ("risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy",
                     "neuron_margins"):
            np.testing.assert_allclose(getattr(t1, name)[c][:cut], getattr(t0, name)[c][:cut], rtol=tol,
                                       atol=tol * 1e-3, err_msg=name)
        np.testing.assert_allclose(s1.W[c], s0.W[c], rtol=tol)
        np.testing.assert_allclose(s1.a[c], s0.a[c], rtol=tol)


@pytest.mark.parametrize("team", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", ["wide_inputs", "wide_net"])
def test_wide_inputs_and_nets_match_oracle(shape, team, dtype, monkeypatch):
    """The shape-dependent paths of the fused pass, whole traces against the oracle, by one thread and by
    a team (blocks of 12 and 11 samples): from d >= WIDE_MIN_D the forward tiles take WIDE_ROWS samples
    (a block's last few TILE_ROWS, then one at a time: every kind of tile); from m > WAITING_MAX_M the
    samples wait for the gradient BACKWARD_GROUP at a time, not WAITING_SAMPLES."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    d, width = (numba_cpu.WIDE_MIN_D + 3, 21) if shape == "wide_inputs" else (5, numba_cpu.WAITING_MAX_M + 3)
    model = lgd.TwoLayerNet(width, train_outer=True)
    problem = make_problem(model, "logistic", dtype, d=d)
    steps, every = 60, 3
    results = []
    for backend in (_numpy, _numba):
        state = initial_state(model, problem.X.shape[1], dtype, [0.7])
        trace = Trace.empty(1, record_steps(steps, every).size, model.width, True)
        runner = backend.runner(problem, state.W.shape)
        if backend is _numba:
            runner._threads = team
            assert runner.team_size(1, model.width) == team and not runner._use_blas(model.width)
        runner.run(state, trace, 0, steps + 1, steps, every)
        results.append((state, trace))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert_traces_close(*results, rtol=tol, atol=tol * 1e-3)


def test_team_size_follows_the_work():
    """As many threads per configuration as the n x m block has TEAM_WORK entries for, up to the threads;
    one per configuration when there are as many configurations as threads."""
    model = lgd.TwoLayerNet(6)
    runner = _numba.runner(make_problem(model, "logistic", np.float64))  # n = 23
    runner._threads = 16
    work = 23 * 6
    assert runner.team_size(1, 6) == max(1, min(16, work // _numba.TEAM_WORK))
    assert runner.team_size(1, 6 * _numba.TEAM_WORK) == 16
    assert runner.team_size(1, 3 * _numba.TEAM_WORK // 23 + 1) == 3
    assert runner.team_size(16, 6 * _numba.TEAM_WORK) == 1


@pytest.mark.parametrize("collecting", [True, False])
def test_compiling_leaves_the_garbage_collector_as_it_was(collecting):
    """A runner holds Python's cyclic collector off while it compiles (or loads) its kernel, then restores
    the user's setting."""
    import gc

    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        _numba.runner(make_problem(lgd.TwoLayerNet(6), "logistic", np.float64))
        assert gc.isenabled() == collecting
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(2, 3), (3, 1), (2, 4, 8), (4, 2, 16)])
def test_members_rows_never_share_a_cache_line(shape, dtype):
    """Wherever numpy puts the buffer, the bytes one member writes (the first shape[-1] of each of its
    rows) and the next member's are at least a cache line apart, so never on one line."""
    rows = _numba._own_rows(shape, dtype)
    assert rows.shape[:-1] == shape[:-1] and rows.shape[-1] > shape[-1]
    for member in range(shape[0] - 1):
        used = rows[member].size - rows.shape[-1] + shape[-1]  # up to the end of its last row's first shape[-1]
        last_byte = rows[member].ctypes.data + used * rows.itemsize - 1
        assert rows[member + 1].ctypes.data - last_byte > _numba.CACHE_LINE - 1, member


def test_blas_only_from_the_dimension_where_it_pays(monkeypatch):
    """The fused tiles run every problem with d < BLAS_MIN_D, however large; BLAS from there on (given
    BLAS_WORK and threadpoolctl), never for the linear model."""
    model = lgd.TwoLayerNet(6)
    runner = _numba.runner(make_problem(model, "logistic", np.float64), (1, 6, 5))
    assert not runner._use_blas(1 << 40)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 5)
    assert runner._use_blas(1 << 40) == runner._threadpoolctl
    assert not runner._use_blas(1)
    linear = _numba.runner(make_problem(lgd.Linear(), "logistic", np.float64), (1, 1, 5))
    assert not linear._use_blas(1 << 40)


def test_no_blas_inside_a_team_without_threadpoolctl(monkeypatch):
    """BLAS in a team needs threadpoolctl to hold it to one thread; without it the fused loops do the products."""
    monkeypatch.setattr(_numba, "BLAS_WORK", 0)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    runner = _numba.runner(make_problem(lgd.TwoLayerNet(6), "logistic", np.float64))
    assert runner._use_blas(6)
    runner._threadpoolctl = False
    assert not runner._use_blas(6)


def test_gd_uses_the_team_and_agrees(monkeypatch):
    """Through lgd.gd: a single run with n m >= 2 TEAM_WORK goes to a team of threads, same numbers."""
    X, y, X_test, y_test = problem_data("logistic", n=300, d=7)
    model = lgd.TwoLayerNet(16)
    kwargs = dict(stepsize=0.5, steps=200, record_every=3, X_test=X_test, y_test=y_test, progress=False)
    monkeypatch.setattr(_numba, "TEAM_WORK", 300 * 16 // 2)
    team = lgd.gd(X, y, model, "logistic", backend="numba", **kwargs)
    oracle = lgd.gd(X, y, model, "logistic", backend="numpy", **kwargs)
    monkeypatch.setattr(_numba, "TEAM_WORK", 300 * 16)
    serial = lgd.gd(X, y, model, "logistic", backend="numba", **kwargs)
    for run in (team, serial):
        np.testing.assert_allclose(run.risk, oracle.risk, rtol=1e-10)
        np.testing.assert_allclose(run.test_risk, oracle.test_risk, rtol=1e-10)
        np.testing.assert_allclose(run.weights, oracle.weights, rtol=1e-10)


@pytest.mark.parametrize("bound", [False, True], ids=["team_blas", "one_thread_blas"])
def test_blas_path_matches_fused(bound, monkeypatch):
    """BLAS products on each team member's block, or (products-bound problems) on one thread with all of
    BLAS's threads, against the fused loops and the oracle."""
    model = lgd.TwoLayerNet(6, train_outer=True)
    fused = run_both(model, "logistic", np.float64, [0.5], steps=40, every=3)[1]
    monkeypatch.setattr(_numba, "BLAS_WORK", 0)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_BOUND_D", 0 if bound else 1 << 30)
    teams, limited = [], []
    run_team, one_blas_thread = _numba.Runner._run_team, _numba.Runner._one_blas_thread
    monkeypatch.setattr(_numba.Runner, "_run_team",
                        lambda self, team, *a: teams.append(team) or run_team(self, team, *a))
    monkeypatch.setattr(_numba.Runner, "_one_blas_thread", lambda self: limited.append(1) or one_blas_thread(self))
    expected, blas = run_both(model, "logistic", np.float64, [0.5], steps=40, every=3)
    assert_traces_close(expected, blas, rtol=1e-10, atol=1e-13)
    assert_traces_close(fused, blas, rtol=1e-10, atol=1e-13)
    import numba

    if numba.get_num_threads() > 1:  # the path taken: one thread with all of BLAS, or a team with one BLAS thread
        assert set(teams[1:]) == ({1} if bound else {numba.get_num_threads()})  # teams[0]: compiling
        assert bool(limited) != bound


@pytest.mark.parametrize("blas", [False, True])
def test_runner_compiles_the_product_mode_it_runs(blas, monkeypatch):
    """Building a runner compiles (or loads) the kernel its runs take: with the fused products the BLAS
    buffers are None, so that kernel has no BLAS calls; with BLAS, the BLAS kernel. Running then
    compiles nothing more."""
    from numba import types

    monkeypatch.setattr(_numba, "BLAS_WORK", 0 if blas else 1 << 60)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    model = lgd.TwoLayerNet(6)
    problem = make_problem(model, "logistic", np.float64)
    state = initial_state(model, problem.X.shape[1], np.float64, [0.5])
    runner = _numba.runner(problem, state.W.shape)
    compiled = set(numba_cpu.run_team.signatures)
    assert any(isinstance(sig[-1], types.Array) == blas and (sig[-1] == types.none) != blas for sig in compiled)
    runner.run(state, Trace.empty(1, 4, model.width, True), 0, 4, 3, 1)
    assert set(numba_cpu.run_team.signatures) == compiled
    assert np.isfinite(state.W).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_register_tiles_sum_as_the_scalar_loops(dtype):
    """forward_rows and backward_rows (register tiles of four or six samples forward, then the rows and
    columns after them; other counts one by one) give the results of plain fma loops in the same order,
    bit for bit, for sizes below, at and between multiples of a tile."""
    from numba import njit

    @njit
    def tiled(X, Wt, rows, count, qs, zt, grad):
        numba_cpu.forward_rows(X, 1, min(count, numba_cpu.WIDE_ROWS), Wt, zt)
        numba_cpu.backward_rows(X, rows, count, qs, grad)

    @njit
    def scalar(X, Wt, rows, count, qs, zt, grad):
        d, m = Wt.shape
        for r in range(min(count, numba_cpu.WIDE_ROWS)):
            for j in range(m):
                s = numba_cpu.like(Wt, 0.0)
                for k in range(d):
                    s = numba_cpu.fma(X[1 + r, k], Wt[k, j], s)
                zt[r, j] = s
        for k in range(d):
            for j in range(m):
                g = grad[k, j]
                for r in range(count):
                    g = numba_cpu.fma(X[rows[r], k], qs[r, j], g)
                grad[k, j] = g

    rng = np.random.default_rng(5)
    columns = numba_cpu.tile_columns(dtype)
    for d in (1, 4, 7, 16):
        for m in (3, columns, 2 * columns, 2 * columns + 5, 64):
            X = rng.standard_normal((9, d)).astype(dtype)
            Wt, grad = (rng.standard_normal((d, m)).astype(dtype) for _ in range(2))
            qs = rng.standard_normal((numba_cpu.WAITING_SAMPLES, m)).astype(dtype)
            rows = rng.integers(0, len(X), numba_cpu.WAITING_SAMPLES)
            for count in range(1, numba_cpu.WAITING_SAMPLES + 1):
                outs = []
                for kernel in (tiled, scalar):
                    zt, g = np.full((numba_cpu.WIDE_ROWS, m), np.nan, dtype), grad.copy()
                    kernel(X, Wt, rows, count, qs, zt, g)
                    outs.append((zt, g))
                where = f"d={d} m={m} count={count}"
                np.testing.assert_array_equal(outs[0][0], outs[1][0], err_msg=f"forward {where}")
                np.testing.assert_array_equal(outs[0][1], outs[1][1], err_msg=f"backward {where}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_dot_row_sums_as_eight_scalar_chains(dtype):
    """dot_row's vector accumulators give the eight scalar fma chains' sums bit for bit (terms j = r mod 8
    in chain r, the last m % 8 in chain 0, then the pairwise total), reading nothing past m."""
    from numba import njit

    @njit
    def vector(a, p, m):
        return numba_cpu.dot_row(a, p, m)

    @njit
    def scalar(a, p, m):
        s = [numba_cpu.like(p, 0.0)] * 8
        for j in range(m - m % 8):
            s[j % 8] = numba_cpu.fma(a[j], p[j], s[j % 8])
        for j in range(m - m % 8, m):
            s[0] = numba_cpu.fma(a[j], p[j], s[0])
        return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))

    rng = np.random.default_rng(7)
    for m in (0, 1, 7, 8, 9, 16, 63, 64, 259):
        a = rng.standard_normal(m).astype(dtype)
        p = np.concatenate([rng.standard_normal(m), [np.nan] * 8]).astype(dtype)  # a padded row
        got, want = vector(a, p, m), scalar(a, p, m)
        assert got == want, (m, got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_sum_squares_in_float64(dtype):
    """sum_squares (gradient and weight norms): float64 sums of the squares, in vector code for float64
    arrays (dot_row's lanes) and widened entry by entry for float32 ones."""
    from numba import njit

    @njit
    def apply(x):
        return numba_cpu.sum_squares(x)

    rng = np.random.default_rng(11)
    for size in (0, 1, 7, 8, 9, 1024, 16385):
        x = rng.standard_normal(size).astype(dtype)
        np.testing.assert_allclose(apply(x), np.sum(x.astype(np.float64) ** 2), rtol=1e-14, atol=0)


def test_exp_and_log1p_accuracy():
    from numba import njit

    @njit
    def apply(x):
        out = np.empty((3, x.size))
        for i in range(x.size):
            out[0, i] = numba_cpu.exp(x[i])
            e = numba_cpu.exp(-abs(x[i]))
            out[1, i], out[2, i] = numba_cpu.log1p_unit(e)
        return out

    x = np.concatenate([np.linspace(-745, 709.7, 200001), [-1e6, -746, 709.78, 710, 1e6, 0.0, -0.0]])
    out = apply(x)
    with np.errstate(over="ignore"):
        exact = np.exp(x)
    normal = exact > 1e-300
    np.testing.assert_allclose(out[0][normal], exact[normal], rtol=4e-16)
    assert np.all(out[0][~normal & (exact == 0)] == 0) and np.isinf(out[0][x > 709.8]).all()
    np.testing.assert_allclose(out[1], np.log1p(np.exp(-np.abs(x))), rtol=4e-16, atol=1e-320)
    np.testing.assert_allclose(out[2], 1.0 / (1.0 + np.exp(-np.abs(x))), rtol=4e-16)
    assert np.isnan(apply(np.array([np.nan]))).all()


def test_float32_exp_softplus_and_sigmoid_accuracy():
    """The float32 functions of float32 runs: a few float32 ulps over the whole range, inf, 0 and nan kept."""
    from numba import njit

    @njit
    def apply(x):
        out = np.empty((3, x.size), dtype=np.float32)
        for i in range(x.size):
            out[0, i] = numba_cpu.exp32(x[i])
            out[1, i], out[2, i] = numba_cpu.softplus_sigmoid_from_exp32(x[i], numba_cpu.exp32(-abs(x[i])))
        return out

    x = np.concatenate([np.linspace(-110, 95, 400001), [-1e30, 88.72, 88.73, 0.0, -0.0, 1e30]]).astype(np.float32)
    out = apply(x)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = np.exp(x64)
    normal = (exact > 1.2e-38) & (exact < 3.4e38)
    np.testing.assert_allclose(out[0][normal], exact[normal], rtol=2e-7)
    assert np.all(out[0][exact < 1e-46] == 0) and np.isinf(out[0][exact > 3.41e38]).all()
    softplus, sigmoid = np.logaddexp(0.0, x64), np.exp(-np.logaddexp(0.0, -x64))
    shown = softplus > 1.2e-38
    np.testing.assert_allclose(out[1][shown], softplus[shown], rtol=3e-7)
    shown = sigmoid > 1.2e-38
    np.testing.assert_allclose(out[2][shown], sigmoid[shown], rtol=5e-7)
    assert np.isnan(apply(np.array([np.nan], dtype=np.float32))).all()


def test_second_process_loads_from_cache():
    script = (
        "import time, numpy as np, lgd\n"
        "from lgd.backends import Problem, _numba\n"
        "from lgd.kernels import numba_cpu\n"
        "X = np.ones((4, 2)); y = np.ones(4)\n"
        "p = Problem(X=X, y=y, activation=lgd.activations.get('relu'), loss=lgd.losses.get('logistic'),\n"
        "            scale=1.0, train_outer=False, linear=False)\n"
        "_numba.runner(p)\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in (numba_cpu.run_team,)))\n"
    )
    env = dict(os.environ)
    first = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    assert int(first.stdout.split()[-1]) >= 0
    assert int(second.stdout.split()[-1]) == 0
