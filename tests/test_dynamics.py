"""lgd.dynamics: periods against orbits built by hand (numba and numpy agree), the reference flows against the
closed forms on a quadratic, the Lyapunov window, and the diagrams on small sweeps."""

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import lgd
from lgd.dynamics import (BOUNDED, CONVERGED, DIVERGED, PERIODIC, attractors, basins, bifurcation, compare_flows,
                          flow, lyapunov_window)

MINIATURE = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[1.0], train_outer=True)
BALANCED = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[0.5], train_outer=True)  # from (x, 0.5)
ONE, TARGET = np.array([[1.0]]), np.array([1.0])


def _orbits(rng):
    """Windows (C, N, P) of known outcome: fixed points, periods 2..9 and 64, a chaotic orbit, a NaN, an Inf."""
    count, size = 200, 3
    cases, expected = [], []
    for p in (1, 2, 3, 4, 5, 7, 9, 64):
        cycle = rng.standard_normal((p, size)) * 10.0 ** rng.integers(-3, 4)
        # noise well inside the tolerance must not change the period
        cases.append(np.tile(cycle, (count // p + 1, 1))[:count] * (1 + 1e-9 * rng.standard_normal((count, size))))
        expected.append((CONVERGED if p == 1 else PERIODIC, p))
    u, logistic = 0.3, []
    for _ in range(count):  # the logistic map at r = 4: chaotic
        u = 4 * u * (1 - u)
        logistic.append([u, 1 - u, 0.5])
    cases.append(np.array(logistic))
    expected.append((BOUNDED, 0))
    slow = np.outer(0.9 ** np.arange(count), np.ones(size))  # converging, but not within 1e-6 over the window
    cases.append(slow)
    expected.append((BOUNDED, 0))
    for bad in (np.nan, np.inf):
        broken = np.ones((count, size))
        broken[17, 1] = bad
        cases.append(broken)
        expected.append((DIVERGED, 0))
    return np.stack(cases), expected


def test_periods_of_known_orbits_numba_and_numpy_agree():
    pytest.importorskip("numba")
    values, expected = _orbits(np.random.default_rng(0))
    results = [attractors(values=values, max_period=64, window=200, backend=b) for b in ("numba", "numpy")]
    for found in results:
        assert [(int(k), int(p)) for k, p in zip(found.kind, found.period)] == expected
        assert found.max_period == 64 and found.window == 200
    numba, numpy = results
    np.testing.assert_array_equal(numba.kind, numpy.kind)
    np.testing.assert_array_equal(numba.period, numpy.period)
    np.testing.assert_allclose(numba.spread, numpy.spread, rtol=1e-12)
    assert numba.spread[0] < 1e-6 and np.isnan(numba.spread[-1])


def test_tolerance_and_the_bound_on_periods():
    cycle = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    perturbed = np.tile(cycle, 20) + 1e-4 * np.sin(np.arange(100))
    assert attractors(values=perturbed, tol=1e-3).period[0] == 5
    assert attractors(values=perturbed, tol=1e-6).kind[0] == BOUNDED
    assert attractors(values=np.tile(cycle, 20), max_period=4).kind[0] == BOUNDED   # period above the bound
    found = attractors(values=np.tile(cycle, 3), max_period=64)                     # 15 records: p <= 7
    assert found.max_period == 7 and found.period[0] == 5
    with pytest.raises(ValueError, match="max_period"):
        attractors(values=cycle, max_period=0)
    with pytest.raises(ValueError, match="pass a result or values"):
        attractors()


def test_gd_on_the_miniature_factorisation_numpy_backend():
    # (1 - xy)^2 / 2 from the balanced point (0.5, 0.5): a fixed point at h = 0.5, period 2 at h = 1.1,
    # period 4 at h = 1.25 (the cubic map u -> (1 + h) u - h u^3 on the diagonal), chaos at h = 1.9
    sweep = lgd.sweep(ONE, TARGET, BALANCED, "squared", stepsizes=[0.5, 1.1, 1.25, 1.9, 2.5], steps=1500,
                      init=[[0.5]], record=lgd.Record(every=1, weights=1), compute="numpy")
    found = attractors(sweep, 256)
    assert found.names == ["converged", "periodic", "periodic", "bounded", "diverged"]
    assert found.period.tolist() == [1, 2, 4, 0, 0]
    assert "period 2: 1" in found.summary() and found.counts()["diverged"] == 1
    # the same from a scalar trace
    assert attractors(sweep, 256, of="risk").period.tolist()[:3] == [1, 2, 4]
    single = attractors(sweep[1], 256)
    assert single.period.tolist() == [2] and len(single) == 1
    with pytest.raises(ValueError, match="Record\\(weights=1\\)"):
        attractors(lgd.gd(ONE, TARGET, MINIATURE, "squared", stepsize=0.1, steps=5, compute="numpy"))


def test_a_last_record_off_the_grid_is_left_out_of_the_window():
    """w -> (1 - eta lambda) w with eta lambda = 2 (L = 2 w^2, eta = 1/2): the orbit +-1 of period 2, recorded
    every 2nd step it reads as a fixed point; 101 steps end with a record at 101 (w = -1) after one at 100
    (w = +1), which is not a step of the orbit as recorded and is left out."""
    for steps in (100, 101):
        run = lgd.gd(np.array([[2.0]]), np.zeros(1), lgd.Linear(), "squared", stepsize=0.5, steps=steps,
                     init=np.ones(1), record=lgd.Record(every=2, weights=2), compute="numpy", divergence=math.inf)
        assert run.trajectory_step[-1] == steps
        for of in ("weights", "risk"):
            found = attractors(run, window=20, of=of)
            assert found.names == ["converged"] and found.window == 20, (steps, of)


def test_flows_match_the_closed_forms_on_a_quadratic():
    # L = lambda w^2 / 2: lgd.Linear on X = [[sqrt(lambda)]], y = 0 with the squared loss
    curvature, eta, steps = 3.0, 0.05, 40
    X = np.array([[np.sqrt(curvature)]])
    run = lgd.gd(X, np.zeros(1), lgd.Linear(), "squared", stepsize=eta, steps=steps, init=np.ones(1),
                 record=lgd.Record(weights=1), compute="numpy")
    k = np.arange(steps + 1)
    np.testing.assert_allclose(run.trajectory[:, 0], (1 - eta * curvature) ** k, rtol=1e-12)
    compared = compare_flows(run, X, np.zeros(1))
    t = k * eta
    np.testing.assert_allclose(compared.gradient_flow.parameters[:, 0], np.exp(-curvature * t), rtol=1e-8)
    np.testing.assert_allclose(compared.modified_flow.parameters[:, 0],
                               np.exp(-curvature * (1 + eta * curvature / 2) * t), rtol=1e-8)
    assert compared.gradient_flow.success and compared.modified_flow.success
    assert compared.largest_distance_modified_flow < 0.1 * compared.largest_distance_gradient_flow
    warming = lgd.gd(X, np.zeros(1), lgd.Linear(), "squared", stepsize=lgd.stepsize.warmup(eta, 10), steps=steps,
                     init=np.ones(1), record=lgd.Record(weights=1), compute="numpy")
    with pytest.raises(ValueError, match=r"constant stepsize.*rule is warmup\(0.05, 10\)"):
        compare_flows(warming, X, np.zeros(1))


def test_modified_flow_error_is_second_order_gradient_flow_first_order():
    # a non-quadratic risk: both layers of the miniature factorisation, over the fixed time T = 1
    errors = {}
    for eta in (0.02, 0.01):
        run = lgd.gd(ONE, TARGET, MINIATURE, "squared", stepsize=eta, steps=int(round(1 / eta)), init=[[0.3]],
                     record=lgd.Record(weights=1), compute="numpy")
        compared = compare_flows(run, ONE, TARGET)
        errors[eta] = (compared.largest_distance_gradient_flow, compared.largest_distance_modified_flow)
    gradient_order = np.log2(errors[0.02][0] / errors[0.01][0])
    modified_order = np.log2(errors[0.02][1] / errors[0.01][1])
    assert 0.85 < gradient_order < 1.15 and 1.8 < modified_order < 2.2
    assert errors[0.01][1] < 0.05 * errors[0.01][0]


def test_flow_checks_its_times():
    with pytest.raises(ValueError, match="increasing"):
        flow(ONE, TARGET, lgd.Linear(), "squared", np.ones(1), [1.0, 0.5])
    start = flow(ONE, TARGET, MINIATURE, "squared", [[0.6]], [0.0])  # time 0 alone: the start, no solver
    assert start.success and start.parameters.tolist() == [[0.6, 1.0]]
    # and the rest of its input, as lgd.gd does (an infinite time integrated forever; W^T was reshaped)
    X, y = lgd.data.xor(n=12)
    net, W = lgd.TwoLayerNet(4, activation="tanh"), np.ones((4, 2))
    for times in ([0.0, np.inf], [0.0, np.nan]):
        with pytest.raises(ValueError, match="times must be finite, increasing"):
            flow(X, y, net, "logistic", W, times)
    with pytest.raises(ValueError, match=r"init must be finite weights of shape \(4, 2\) .* got shape \(2, 4\)"):
        flow(X, y, net, "logistic", W.T, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"outer_init must be finite weights of shape \(4,\)"):
        flow(X, y, net, "logistic", W, [0.0, 1.0], outer_init=np.ones(3))
    with pytest.raises(ValueError, match=r"labels \+1 or -1"):
        flow(X, (y + 1) / 2, net, "logistic", W, [0.0, 1.0])
    with pytest.raises(ValueError, match="stepsize must be a positive number or None, got True"):
        flow(X, y, net, "logistic", W, [0.0, 1.0], stepsize=True)


def test_lyapunov_window_is_the_difference_quotient():
    step = np.array([0, 10, 20, 30])
    sums = np.array([[0.0, 0.0], [-1.0, -3.0], [-2.0, -6.0], [-3.5, -9.0]])
    run = SimpleNamespace(status="completed", step=step, lyapunov_sum=sums)
    np.testing.assert_allclose(lyapunov_window(run, 10), [-2.5 / 20, -6.0 / 20])
    np.testing.assert_allclose(lyapunov_window(run, 0, 20), [-0.1, -0.3])
    np.testing.assert_allclose(lyapunov_window(run, 5, 20), [-0.1, -0.3])        # start moves to step 10
    broken = sums.copy()
    broken[3] = np.nan                                                            # diverged at the last record
    sweep = SimpleNamespace(status=["completed", "diverged"], step=step, lyapunov_sum=np.stack([sums, broken]))
    found = lyapunov_window(sweep, 0)
    np.testing.assert_allclose(found, [[-3.5 / 30, -0.3], [-0.1, -0.3]])
    vanished = sums.copy()
    vanished[2:, 1] = -np.inf                                                     # the second vector sent to 0
    run = SimpleNamespace(status="completed", step=step, lyapunov_sum=vanished)
    np.testing.assert_array_equal(lyapunov_window(run, 0), [-3.5 / 30, -np.inf])
    np.testing.assert_array_equal(lyapunov_window(run, 20), [-1.5 / 10, -np.inf])  # from -inf on: -inf
    with pytest.raises(ValueError, match="lyapunov=k"):
        lyapunov_window(SimpleNamespace(status="completed", step=step, lyapunov_sum=None))


@pytest.mark.skipif(not hasattr(lgd.Record(), "lyapunov"), reason="Record(lyapunov=k) not in this tree yet")
def test_lyapunov_window_on_a_quadratic_is_log_of_one_minus_eta_lambda():
    curvature = 3.0
    X = np.array([[np.sqrt(curvature)]])
    sweep = lgd.sweep(X, np.zeros(1), lgd.Linear(), "squared", stepsizes=[0.1, 0.5], steps=60, init=np.ones(1),
                      record=lgd.Record(every=5, lyapunov=1), compute="numpy")
    expected = np.log(np.abs(1 - np.array([0.1, 0.5]) * curvature))
    np.testing.assert_allclose(lyapunov_window(sweep, 20)[:, 0], expected, rtol=1e-8)
    # Curvatures 2 and 0.5 at eta = 0.5: the map I - eta H is diag(0, 0.75), exponents log 0.75 and -inf.
    run = lgd.gd(np.diag([2.0, 1.0]), np.zeros(2), lgd.Linear(), "squared", stepsize=0.5, steps=200,
                 init=np.array([1.0, 0.7]), record=lgd.Record(lyapunov=2), compute="numpy")
    window = lyapunov_window(run, 50, 150)
    assert window[0] == pytest.approx(math.log(0.75), rel=1e-12) and window[1] == -np.inf
    assert lyapunov_window(run, 50)[1] == -np.inf and run.lyapunov[1] == -np.inf


def test_a_risk_of_exactly_zero_is_a_fixed_point_not_a_divergence():
    """GD on w^2 / 2 at eta = 1 reaches w = 0, risk 0, log-risk -inf, in one step: converged by log_risk."""
    sweep = lgd.sweep(ONE, np.zeros(1), lgd.Linear(), "squared", stepsizes=[1.0], steps=100, init=np.ones(1),
                      compute="numpy")
    assert sweep.status == ["completed"] and sweep.risk[0, -1] == 0.0
    assert attractors(sweep, 50, of="log_risk").names == ["converged"]
    assert bifurcation(sweep, window=50).attractors.names == ["converged"]


def test_the_bifurcation_exponent_spans_the_window_and_labels_take_any_period():
    """The exponent of bifurcation() is over the window's `window` steps (a whole number of an even period's
    cycles), as lyapunov_window from the record before; periods beyond 64 keep their own labels."""
    from lgd.dynamics.diagrams import _label_name, _labels

    sweep = lgd.sweep(ONE, TARGET, BALANCED, "squared", stepsizes=[1.2358, 1.2875], steps=600, init=[[0.6]],
                      record=lgd.Record(weights=1, lyapunov=1), compute="numpy")
    diagram = bifurcation(sweep, of=0, window=256)
    np.testing.assert_array_equal(diagram.lyapunov, lyapunov_window(sweep, 600 - 256)[:, 0])
    assert diagram.step[0] == 600 - 255
    found = attractors(values=np.stack([np.tile(np.arange(65.0), 3), np.tile(np.arange(66.0), 3)[:195]])[:, :, None],
                       max_period=100)
    assert found.period.tolist() == [65, 66]
    assert [_label_name(label) for label in _labels(found.kind, found.period)] == ["period 65", "period 66"]


def test_bifurcation_and_basins_on_the_miniature_factorisation(tmp_path):
    stepsizes = [0.5, 1.1, 1.25]
    sweep = lgd.sweep(ONE, TARGET, BALANCED, "squared", stepsizes=stepsizes, steps=1200, init=[[0.5]],
                      record=lgd.Record(every=1, weights=1), compute="numpy")
    diagram = bifurcation(sweep, of="risk", window=128)
    assert diagram.values.shape == (3, 128) and diagram.period.tolist() == [1, 2, 4]
    assert diagram.period_of == "weights" and diagram.step[-1] == 1200
    weight = bifurcation(sweep, of=0, window=128)
    assert len(np.unique(np.round(weight.values[2], 6))) == 4
    first = second = np.array([-0.2, 0.5, 1.0, 3.0])
    grid = lgd.sweep(ONE, TARGET, MINIATURE, "squared", stepsizes=[0.5, 1.1], steps=600, **lgd.init_grid(
        MINIATURE, first, second), record=lgd.Record(every=600, weights=1), compute="numpy")
    found = basins(grid, first, second, window=128)
    assert found.kind.shape == (2, 4, 4) and found.final.shape == (2, 4, 4, 2)
    assert found.period[0, 1, 1] == 1 and found.period[1, 1, 1] == 2 and found.kind[0, 3, 3] == DIVERGED
    assert sum(found.counts(0).values()) == 16
    # the stepsizes in the sweep's order, not sorted: each panel with its own outcomes
    reverse = lgd.sweep(ONE, TARGET, MINIATURE, "squared", stepsizes=[1.1, 0.5], steps=600, **lgd.init_grid(
        MINIATURE, first, second), record=lgd.Record(every=600, weights=1), compute="numpy")
    backwards = basins(reverse, first, second, window=128)
    assert backwards.stepsize.tolist() == [1.1, 0.5] and backwards.counts(0) == found.counts(1)
    np.testing.assert_array_equal(backwards.kind, found.kind[::-1])
    pytest.importorskip("matplotlib")
    from lgd.dynamics import plot_basins, plot_bifurcation

    for figure in (plot_bifurcation(diagram), plot_basins(found, names=("x0", "y0"))):
        figure.savefig(tmp_path / "figure.png")
        assert (tmp_path / "figure.png").stat().st_size > 5_000


def test_import_lgd_dynamics_stays_light():
    code = ("import sys, lgd; lgd.dynamics.attractors; heavy = [m for m in ('numba', 'scipy', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_numba_auto_falls_back_to_numpy_and_numba_raises(monkeypatch):
    from lgd.dynamics import periods

    monkeypatch.setattr(periods, "_COMPILED", [None])      # as if numba were not installed
    values = np.tile([1.0, -1.0], 40)
    assert attractors(values=values).period.tolist() == [2]
    with pytest.raises(ImportError, match="needs numba"):
        attractors(values=values, backend="numba")
