"""The run record: log-risk, the divergence rule, trajectories and projections, initial weights, starting
points as a sweep axis, and a Ctrl-C that stops a run with its weights and last record in agreement.

Every record is checked on every backend against the numpy oracle (the ``backend_dtype`` fixture).
"""

import math
import os
import signal
import threading

import numpy as np
import pytest
from conftest import problem_data, register_host_cuda

import lgd
from lgd.models import evaluate


def _compute(case, **options):
    return lgd.Compute(backend=case.backend.name, dtype=case.dtype_name, progress=False, **options)


def test_log_risk_is_a_number_where_the_risk_underflows(backend_dtype):
    """Separable data at a huge stepsize: the risk reaches 0.0, the log-risk keeps falling, and the
    compiled backends agree with the oracle on it."""
    case = backend_dtype
    X, y = lgd.data.separable(n=40, d=3, margin=0.2, seed=1)
    below = 1e-300 if case.dtype == np.float64 else 1e-40
    run = lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=1e5, steps=30, init=np.zeros(3), compute=_compute(case))
    oracle = lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=1e5, steps=30, init=np.zeros(3),
                    compute=lgd.Compute("numpy", dtype=case.dtype_name))
    assert run.status == "completed"
    assert np.any(run.risk < below) and np.all(np.isfinite(run.log_risk))
    assert run.log_risk[-1] < math.log(below)
    np.testing.assert_allclose(run.log_risk, oracle.log_risk, rtol=case.rtol * 10, atol=case.rtol)
    normal = run.risk > 1e-250 if case.dtype == np.float64 else run.risk > 1e-30
    np.testing.assert_allclose(run.log_risk[normal], np.log(run.risk[normal]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", lgd.losses.NAMES)
def test_log_value_is_the_log_of_the_loss(loss):
    """Every catalog loss: log_value agrees with log(value) where the value is in range, and stays finite
    (for nonzero arguments) where the value underflows."""
    entry = lgd.losses.get(loss)
    u = np.array([-30.0, -1.0, -1e-3, 1e-3, 0.5, 3.0, 30.0, 300.0])
    value = entry.value(u)
    np.testing.assert_allclose(entry.log_value(u), np.log(value), rtol=1e-13, atol=1e-15)
    far = np.array([800.0, 1e4, 1e6]) if entry.margin else np.array([1e-200, 1e-300, 1e-320])
    assert np.all(np.isfinite(entry.log_value(far)))


def test_the_quadratic_beyond_two_over_smoothness_diverges_by_the_rule(backend_dtype):
    """(1/2)(2w - 1)^2 at h = 0.51 > 2/L = 0.5 grows by (1 - 4h)^2 per step: stopped as diverged once the
    risk passes 1e10 max(1, L_0), long before it overflows, with the step recorded and W_t kept."""
    case = backend_dtype
    X, y = np.array([[2.0]]), np.array([1.0])
    run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=0.51, steps=1000, init=np.zeros(1), compute=_compute(case))
    assert run.status == "diverged"
    t = run.diverged_step
    assert run.step[-1] == t and 1e10 < run.risk[-1] < 1e10 * 1.09
    assert run.steps_taken == t
    np.testing.assert_allclose(0.5 * (2 * run.weights[0] - 1) ** 2, run.risk[-1], rtol=case.rtol)
    loose = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=0.51, steps=100, init=np.zeros(1),
                   compute=_compute(case), divergence=lgd.Divergence(risk=math.inf))
    assert loose.status == "completed"
    bounded = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=0.51, steps=1000, init=np.zeros(1),
                     compute=_compute(case), divergence=lgd.Divergence(weight_norm=10.0))
    assert bounded.status == "diverged" and abs(bounded.weights[0]) > 10.0 and bounded.diverged_step < t


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "big", True])
def test_a_bad_divergence_bound_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="divergence|Divergence"):
        lgd.gd(np.ones((2, 1)), np.array([1.0, -1.0]), lgd.Linear(), steps=1, divergence=bad, compute="numpy")


def test_trajectories_and_projections_agree_with_the_oracle(backend_dtype):
    """Record(weights=k): W_t and a_t every k steps, the last one the final weights; project_onto records
    <W_t, V_p> instead."""
    case = backend_dtype
    X, y, _, _ = problem_data("logistic", dtype=case.dtype)
    net = lgd.TwoLayerNet(6, train_outer=True)
    run = lgd.gd(X, y, net, stepsize=0.5, steps=20, record=lgd.Record(every=2, weights=5), compute=_compute(case))
    oracle = lgd.gd(X, y, net, stepsize=0.5, steps=20, record=lgd.Record(every=2, weights=5),
                    compute=lgd.Compute("numpy", dtype=case.dtype_name))
    assert run.trajectory_step.tolist() == [0, 5, 10, 15, 20]
    assert run.trajectory.shape == (5, 6, X.shape[1]) and run.trajectory.dtype == case.dtype
    np.testing.assert_allclose(run.trajectory, oracle.trajectory, rtol=case.rtol, atol=case.rtol * 1e-3)
    np.testing.assert_allclose(run.outer_trajectory, oracle.outer_trajectory, rtol=case.rtol)
    np.testing.assert_array_equal(run.trajectory[0], run.initial_weights)
    np.testing.assert_array_equal(run.trajectory[-1], run.weights)
    directions = np.random.default_rng(3).standard_normal((2, 6, X.shape[1]))
    projected = lgd.gd(X, y, net, stepsize=0.5, steps=20, compute=_compute(case),
                       record=lgd.Record(every=2, weights=5, project_onto=directions))
    assert projected.trajectory is None and projected.projections.shape == (5, 2)
    expected = np.einsum("pjk,tjk->tp", directions, run.trajectory.astype(np.float64))
    np.testing.assert_allclose(projected.projections, expected, rtol=case.rtol, atol=case.rtol)
    # lgd.Linear's directions have its weights' shape (P, d), as its inits (K, d) and trajectory (R, d)
    linear = lgd.gd(X, y, lgd.Linear(), stepsize=0.5, steps=20, compute=_compute(case),
                    record=lgd.Record(weights=5, project_onto=directions[:, 0]))
    weights = lgd.gd(X, y, lgd.Linear(), stepsize=0.5, steps=20, compute=_compute(case), record=lgd.Record(weights=5))
    np.testing.assert_allclose(linear.projections, weights.trajectory.astype(np.float64) @ directions[:, 0].T,
                               rtol=case.rtol, atol=case.rtol)
    with pytest.raises(ValueError, match=r"Record.project_onto must have shape \(P, 6, 5\) for this model"):
        lgd.gd(X, y, net, stepsize=0.5, steps=2, record=lgd.Record(weights=5, project_onto=directions[:, 0]))


def test_initial_weights_are_returned_and_reproducible_from_the_seed():
    """The documented draw: default_rng(seed), W_0 = init_scale * standard_normal((m, d)), then the random
    outer weights from the same generator."""
    X, y, _, _ = problem_data("logistic")
    net = lgd.TwoLayerNet(4, outer="random")
    run = lgd.gd(X, y, net, stepsize=0.1, steps=3, seed=7, init_scale=0.5, compute="numpy")
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(run.initial_weights, 0.5 * rng.standard_normal((4, X.shape[1])))
    np.testing.assert_array_equal(run.initial_outer_weights, rng.choice(np.array([1.0, -1.0]), size=4))


def test_starting_points_are_a_sweep_axis_equal_to_single_runs(backend_dtype):
    """lgd.sweep(inits=, outer_inits=) runs every (stepsize, seed, starting point) in one call; each equals
    its single run from that starting point; init_grid builds the (x, y) grid of (1 - x y)^2 / 2."""
    case = backend_dtype
    net = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[1.0], train_outer=True)
    X, y = np.array([[1.0]]), np.array([1.0])
    grid = lgd.init_grid(net, [0.5, 1.5, 3.0], [0.2, 2.0])
    swept = lgd.sweep(X, y, net, "squared", stepsizes=[0.1, 0.4], steps=30, **grid, compute=_compute(case))
    assert len(swept) == 2 * 3 * 2 and swept.init_index.tolist() == [0, 1, 2, 3, 4, 5] * 2
    for i in (0, 5, 7, 11):
        k = swept.init_index[i]
        single_net = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=grid["outer_inits"][k],
                                     train_outer=True)
        single = lgd.gd(X, y, single_net, "squared", stepsize=float(swept.stepsize[i]), steps=30,
                        init=grid["inits"][k], compute=_compute(case))
        assert swept[i].status == single.status
        np.testing.assert_allclose(swept[i].risk, single.risk, rtol=case.rtol, atol=1e-300)
        np.testing.assert_allclose(swept.outer_weights[i], single.outer_weights, rtol=case.rtol)
    np.testing.assert_array_equal(swept.initial_weights[:6, 0, 0], grid["inits"][:, 0, 0])


def test_outer_starting_points_alone_are_named_too():
    """outer_inits without inits is a sweep axis of its own: init_index names it, to_xarray has its start."""
    outer = np.array([[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    swept = lgd.sweep(*lgd.data.xor(n=10), lgd.TwoLayerNet(3), stepsizes=[1.0, 2.0], steps=2, outer_inits=outer,
                      compute="numpy")
    assert swept.init_index.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(swept.initial_outer_weights, outer[[0, 1, 0, 1]])
    assert swept.to_xarray().sizes["start"] == 2


def test_a_bad_starting_point_is_refused_before_any_work():
    net = lgd.TwoLayerNet(2)
    with pytest.raises(ValueError, match=r"inits must have shape \(K, 2, 3\)"):
        lgd.sweep(np.ones((4, 3)), np.ones(4), net, inits=np.ones((5, 3, 2)), compute="numpy")
    with pytest.raises(ValueError, match="outer_inits must have shape"):
        lgd.sweep(np.ones((4, 3)), np.ones(4), net, outer_inits=np.ones((5, 3)), compute="numpy")
    with pytest.raises(ValueError, match="init_grid is for models with two trained parameters"):
        lgd.init_grid(net, [1.0], [2.0])


def test_ctrl_c_stops_a_run_with_its_weights_at_its_last_record(backend_dtype):
    """A SIGINT during a run: 'interrupted', the last record at the step the weights are at (the oracle's
    risk of the returned weights is the last recorded risk), honest steps taken and steps per second."""
    case = backend_dtype
    X, y, _, _ = problem_data("logistic", n=200, d=8, dtype=case.dtype)
    options = dict(stepsize=0.05, record=997, compute=_compute(case))
    lgd.gd(X, y, lgd.TwoLayerNet(16), steps=1, **options)  # compile (or load) the kernel before the clock starts
    steps = 10**5 if case.backend.name == "numpy" else 10**7
    # A shell running the suite in the background ignores SIGINT: give the test Python's own handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        run = lgd.gd(X, y, lgd.TwoLayerNet(16), steps=steps, **options)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert run.status == "interrupted"
    assert 0 < run.steps_taken < steps and run.step[-1] == run.steps_taken
    assert run.steps_per_second == pytest.approx(run.steps_taken / run.seconds)
    a = np.where(np.arange(16) % 2 == 0, 1.0, -1.0).astype(case.dtype)
    ev = evaluate(run.weights, a, X, y, lgd.activations.get("leaky_softplus"), lgd.losses.get("logistic"), 1 / 16)
    np.testing.assert_allclose(run.risk[-1], ev.risk, rtol=case.rtol)


def test_a_diverged_runs_trajectory_ends_where_it_diverged(backend_dtype):
    """The trajectory holds W_t up to the divergence and NaN after it (overflowing numbers: NaN at it)."""
    case = backend_dtype
    X, y, _, _ = problem_data("exponential", dtype=case.dtype, test=False)
    result = lgd.sweep(X, y, lgd.TwoLayerNet(6), "exponential", stepsizes=[0.1, 1e4], steps=40,
                       record=lgd.Record(weights=3), compute=_compute(case), divergence=math.inf)
    calm, wild = result[0], result[1]
    assert calm.status == "completed" and np.isfinite(calm.trajectory).all()
    assert wild.status == "diverged"
    before = result.trajectory_step < wild.diverged_step
    assert np.isfinite(result.trajectory[1][before]).all() and np.isnan(result.trajectory[1][~before]).all()
    np.testing.assert_array_equal(wild.trajectory_step, result.trajectory_step[before])


def test_lyapunov_exponents_of_a_quadratic_are_log_one_minus_eta_lambda(backend_dtype):
    """L = (1/2n) |X w - y|^2 with X = diag(2, 1) sqrt(2): H = diag(4, 1). The tangent map is the same at
    every step, so the exponents are log|1 - eta lambda| for lambda = 4 and 1, sorted: their sum (the log
    volume growth) exactly from the first step, each one once the random start has aligned (the window
    from step 20 on)."""
    case = backend_dtype
    X, y = np.diag([2.0, 1.0]) * math.sqrt(2.0), np.array([0.5, -0.5])
    tol = 1e-5 if case.dtype == np.float32 else 1e-9
    for eta in (0.1, 0.45, 0.6):
        run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=eta, steps=40, init=np.zeros(2),
                     record=lgd.Record(lyapunov=2), compute=_compute(case), divergence=math.inf)
        expected = sorted((math.log(abs(1 - eta * 4.0)), math.log(abs(1 - eta * 1.0))), reverse=True)
        assert run.lyapunov.sum() == pytest.approx(sum(expected), rel=tol)
        window = (run.lyapunov_sum[40] - run.lyapunov_sum[20]) / 20
        np.testing.assert_allclose(window, expected, rtol=1e-4 if case.dtype == np.float32 else 1e-6)
        np.testing.assert_allclose(run.lyapunov_sum[-1], run.lyapunov * run.steps_taken, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy", "cuda-host"])
def test_a_tangent_map_that_is_singular_gives_minus_infinity_not_nan(backend, dtype, monkeypatch):
    """L = 2 w^2 (X = [[2]]) at eta = 1/4: I - eta H = 0 exactly, the closed form log|1 - eta lambda| = -inf. The
    tangent vector sent to 0 stays 0 (its sum -inf from step 1 on), where 0/0 made it NaN (and math.log(0)
    stopped the numpy run)."""
    register_host_cuda(monkeypatch)
    usable, reason = lgd.backends.availability(backend)
    if not usable:
        pytest.skip(f"backend {backend} cannot run here: {reason}")
    run = lgd.gd(np.array([[2.0]]), np.zeros(1), lgd.Linear(), "squared", stepsize=0.25, steps=20, init=np.ones(1),
                 record=lgd.Record(lyapunov=1), compute=lgd.Compute(backend=backend, dtype=dtype, progress=False))
    assert run.status == "completed" and run.lyapunov.tolist() == [-math.inf]
    assert run.lyapunov_sum[0, 0] == 0.0 and np.all(run.lyapunov_sum[1:, 0] == -math.inf)


@pytest.mark.parametrize("team", [2, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_team_of_threads_splits_the_tangent_map_and_matches_the_oracle(team, dtype, monkeypatch):
    """numba runs a single configuration on a team of threads, each adding its samples' part of the
    Hessian-vector products of the tangent map (37 samples: members of 12 or 13, blocks cut short): the
    Lyapunov sums, risks and final weights agree with the oracle, the outer layer trained too."""
    pytest.importorskip("numba")
    from lgd.backends import _numba

    monkeypatch.setattr(_numba.Runner, "team_size", lambda self, configs, width: team)
    X, y = lgd.data.separable(n=37, d=5, margin=0.1, seed=1)
    options = dict(stepsize=0.7, steps=30, record=lgd.Record(lyapunov=2), divergence=math.inf)
    model = lgd.TwoLayerNet(21, train_outer=True)
    expected = lgd.gd(X, y, model, "logistic", compute=lgd.Compute("numpy", dtype=dtype, progress=False), **options)
    actual = lgd.gd(X, y, model, "logistic", compute=lgd.Compute("numba", dtype=dtype, progress=False), **options)
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(actual.lyapunov_sum, expected.lyapunov_sum, rtol=tol, atol=tol)
    np.testing.assert_allclose(actual.risk, expected.risk, rtol=tol)
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=tol, atol=tol)
    assert np.all(np.diff(actual.lyapunov_sum[:, 0]) != 0)  # the tangent map ran at every step


def test_lyapunov_exponents_on_the_diagonal_of_the_matrix_factorisation(backend_dtype):
    """GD on (1 - x y)^2 / 2 from x = y stays on the diagonal, where it is the scalar map
    x -> x + h (1 - x^2) x, and the Hessian splits along (1, 1) and (1, -1) at every iterate: the
    exponents' sum is the mean of log|1 + h (1 - 3 x_t^2)| (the scalar map's exponent) plus that of
    log|1 - h (1 - x_t^2)|, and the largest is one of the two."""
    case = backend_dtype
    for h, x0 in ((0.4, 0.3), (1.9, 0.8)):
        net = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[x0], train_outer=True)
        run = lgd.gd(np.array([[1.0]]), np.array([1.0]), net, "squared", stepsize=h, steps=400,
                     init=np.array([[x0]]), record=lgd.Record(lyapunov=2, weights=1), compute=_compute(case))
        assert run.status == "completed"
        np.testing.assert_array_equal(run.trajectory[:, 0, 0], run.outer_trajectory[:, 0])
        x = run.trajectory[:-1, 0, 0].astype(np.float64)
        along = np.mean(np.log(np.abs(1 + h * (1 - 3 * x * x))))
        across = np.mean(np.log(np.abs(1 - h * (1 - x * x))))
        tol = 1e-4 if case.dtype == np.float32 else 1e-9
        assert run.lyapunov.sum() == pytest.approx(along + across, rel=tol, abs=tol)
        assert run.lyapunov[0] == pytest.approx(max(along, across), abs=0.05)

