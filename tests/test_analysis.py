"""lgd.analysis on synthetic traces with known answers, and on short real runs."""

import dataclasses
import math

import numpy as np
import pytest

import lgd
from lgd import analysis


@pytest.fixture(scope="module")
def template():
    """A real run whose traces the synthetic tests replace (wu_toy: n = 4, logistic loss)."""
    X, y = lgd.data.wu_toy()
    return lgd.gd(X, y, lgd.Linear(), stepsize=10.0, steps=5, init="zeros", compute="numpy")


def _synthetic(template, risk, stepsize=10.0, margin=None, sharpness=None, sharpness_step=None):
    step = np.arange(len(risk))
    margin = np.linspace(0.1, 0.2, len(risk)) if margin is None else np.asarray(margin, dtype=float)
    return dataclasses.replace(template, step=step, risk=np.asarray(risk, dtype=float), log_risk=None,
                               stepsize=stepsize, normalized_margin=margin, steps=len(risk) - 1,
                               steps_taken=len(risk) - 1, sharpness=sharpness, sharpness_step=sharpness_step)


def _eos_then_power_law(power, eta=10.0, steps=1000):
    # threshold = min(1/eta, log 2 / 4) = 0.1; the EoS part stays above it, with 4 increases, peak 5 at step 4.
    eos = [0.7, 2.0, 0.5, 3.0, 5.0, 0.2, 0.3]
    t = np.arange(len(eos), steps + 1, dtype=float)
    return np.concatenate([eos, 0.09 * (t / len(eos)) ** -power])


def test_edge_of_stability_and_stable_rate_of_a_one_over_t_trace(template):
    run = _synthetic(template, _eos_then_power_law(1.0))
    eos = analysis.edge_of_stability(run)
    assert (eos.increases, eos.peak_risk, eos.peak_step, eos.length) == (4, 5.0, 4, 7)
    assert eos.present and eos.peak_over_initial == pytest.approx(5.0 / 0.7)
    stable = analysis.stable_rate(run)
    assert stable.start == 7 and stable.end == 1000 and stable.monotone and stable.increases == 0
    assert stable.slope == pytest.approx(-1.0, abs=1e-12)
    assert stable.rate_change_last_decade == pytest.approx(0.0, abs=1e-12)
    assert stable.final_rate == pytest.approx(10.0 * 1000 * 0.09 * 7 / 1000)


def test_stable_rate_tells_one_over_t_squared_and_a_stall_apart(template):
    faster = analysis.stable_rate(_synthetic(template, _eos_then_power_law(2.0)))
    assert faster.slope == pytest.approx(-2.0, abs=1e-12)
    assert faster.rate_change_last_decade == pytest.approx(-0.9, abs=1e-12)
    stalled = analysis.stable_rate(_synthetic(template, _eos_then_power_law(0.0)))
    assert stalled.slope == pytest.approx(0.0, abs=1e-12) and stalled.rate_change_last_decade == pytest.approx(9.0)


def test_a_rise_after_the_transition_is_counted(template):
    risk = _eos_then_power_law(1.0)
    risk[500] = risk[499] * 1.5
    stable = analysis.stable_rate(_synthetic(template, risk))
    assert not stable.monotone and stable.increases == 1


def test_no_transition_gives_no_stable_phase(template):
    run = _synthetic(template, [0.7, 0.8, 0.6, 0.9, 0.5])
    assert analysis.edge_of_stability(run).length is None
    assert analysis.edge_of_stability(run).increases == 2
    stable = analysis.stable_rate(run)
    assert stable.start is None and math.isnan(stable.slope) and not stable.monotone
    assert analysis.margin_monotonicity(run).start is None


def test_margin_monotonicity_counts_decreases_and_the_largest_drawdown(template):
    risk = [0.7, 0.05, 0.04, 0.03, 0.02, 0.01]   # transition at step 1
    margin = [-1.0, 0.1, 0.2, 0.15, 0.3, 0.3]
    result = analysis.margin_monotonicity(_synthetic(template, risk, margin=margin))
    assert result.start == 1 and result.decreases == 1
    assert result.fraction_decreasing == pytest.approx(1 / 4)
    assert result.largest_relative_decrease == pytest.approx(0.25)
    assert (result.initial, result.final) == (0.1, 0.3)


def test_sharpness_summary_reads_progressive_sharpening_and_the_limit(template):
    limit = 2 / 10.0
    top = np.array([0.05, 0.1, 0.15, 0.19, 0.21, 0.2, 0.19, 0.2])
    run = _synthetic(template, np.linspace(1, 0.5, 71), sharpness=top[:, None], sharpness_step=np.arange(8) * 10)
    result = analysis.sharpness_summary(run)
    assert result.limit == pytest.approx(limit) and result.initial == 0.05 and result.peak == 0.21
    assert result.peak_step == 40 and result.progressive_sharpening == pytest.approx(4.2)
    assert result.reached_step == 30 and result.median_over_limit_after == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sharpness_every"):
        analysis.sharpness_summary(_synthetic(template, [1.0, 0.5]))
    # Under a rule whose eta_t moves (here c / lambda_max with c = 10) there is no one line 2/eta.
    ruled = dataclasses.replace(run, stepsize_rule="inverse_sharpness(10)")
    assert math.isnan(ruled.sharpness_limit) and math.isnan(analysis.sharpness_summary(ruled).limit)
    assert analysis.sharpness_summary(ruled).reached_step is None


def test_the_sharpness_limit_of_a_sweep_is_per_configuration():
    X, y = lgd.data.xor(n=20)
    swept = lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=[2.0, lgd.stepsize.warmup(4.0, 10)], steps=4,
                      compute="numpy")
    np.testing.assert_array_equal(swept.sharpness_limit, [1.0, np.nan])
    assert swept[0].sharpness_limit == 1.0 and math.isnan(swept[1].sharpness_limit)


def test_acceleration_curve_of_a_synthetic_sweep():
    X, y = lgd.data.wu_toy()
    grid = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, 10.0, 100.0], seeds=(0, 1), steps=3, init="zeros",
                     compute="numpy")
    risk = np.array([[4, 3, 2, 1.0], [4, 3, 2, 4.0],          # eta = 1: monotone / not: geometric mean 2
                     [4, 3, 2, 0.5], [4, 3, 2, 0.5],          # eta = 10: monotone, 0.5
                     [4, 5, 2, 0.1], [4, 5, 2, 0.001]])       # eta = 100: non-monotone, 0.01
    curve = analysis.acceleration_curve(dataclasses.replace(grid, risk=risk, log_risk=None))
    np.testing.assert_allclose(curve.risk, [2.0, 0.5, 0.01])
    assert curve.monotone.tolist() == [False, True, False]
    assert (curve.best_stepsize, curve.best_monotone_stepsize, curve.smallest_stepsize_risk) == (100.0, 10.0, 2.0)
    at_two = analysis.acceleration_curve(dataclasses.replace(grid, risk=risk, log_risk=None), steps=2)
    np.testing.assert_allclose(at_two.risk, [2.0, 2.0, 2.0])
    assert at_two.monotone.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="not recorded"):
        analysis.acceleration_curve(grid, steps=7)
    # rules are points of their own: adaptive(10) is not another seed of eta = 10
    rules = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, lgd.stepsize.adaptive(3.0), lgd.stepsize.adaptive(30.0)],
                      steps=3, init="zeros", compute="numpy")
    curve = analysis.acceleration_curve(rules)
    assert curve.stepsizes.tolist() == [1.0, 3.0, 30.0]
    np.testing.assert_array_equal(curve.log_risk, rules.log_risk[:, -1])
    mixed = lgd.sweep(X, y, lgd.Linear(), stepsizes=[10.0, lgd.stepsize.adaptive(10.0), 3.0], steps=3,
                      init="zeros", compute="numpy")
    with pytest.raises(ValueError, match=r"rules that share a stepsize \(constant\(10\), adaptive\(10\)\):"):
        analysis.acceleration_curve(mixed)
    # stepsizes that print alike to six digits are points of their own
    close = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, 1.0000001, 1.0000002], steps=3, init="zeros",
                      compute="numpy")
    assert close.stepsize_rule == ["constant(1)", "constant(1.0000001)", "constant(1.0000002)"]
    assert analysis.acceleration_curve(close).stepsizes.tolist() == [1.0, 1.0000001, 1.0000002]


def test_real_runs_small_stepsize_monotone_large_stepsize_eos_then_rate_one_over_t():
    X, y = lgd.data.wu_toy()
    small, large = lgd.sweep(X, y, lgd.Linear(), stepsizes=[0.5, 10.0], steps=3000, init="zeros", compute="numpy")
    small_result, large_result = analysis.analyze(small), analysis.analyze(large)
    assert not small_result.edge_of_stability.present
    assert large_result.edge_of_stability.present and large_result.edge_of_stability.peak_over_initial > 2
    for result in (small_result, large_result):
        assert result.stable.monotone
        assert -1.15 < result.stable.slope < -0.85          # L = Theta(1/(eta t)) (log factors aside)
        assert abs(result.stable.rate_change_last_decade) < 0.1
    # eta * t * L levels off at a constant that barely depends on eta (science.md, section 1)
    assert large_result.stable.final_rate == pytest.approx(small_result.stable.final_rate, rel=0.2)


def test_analyze_a_sweep_and_the_xor_margin_in_the_stable_phase():
    X, y = lgd.data.xor(n=40)
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(8), stepsizes=[50.0], steps=1500, compute="numpy")
    (result,) = analysis.analyze(grid)
    assert result.phase.transition_step is not None
    # each per-run reading takes the sweep too: one reading per configuration
    for reading in (analysis.edge_of_stability, analysis.stable_rate, analysis.margin_monotonicity):
        assert reading(grid) == [reading(grid[0])]
    assert result.margin.final > result.margin.initial > 0
    assert result.margin.largest_relative_decrease < 0.05


def test_acceleration_curve_ranks_risks_that_underflowed_by_their_log():
    """Risks below about 1e-308 are 0.0 in float64: the curve reads log_risk and names the right best stepsize."""
    X, y = lgd.data.wu_toy()
    grid = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, 10.0, 100.0], seeds=(0, 1), steps=3, init="zeros",
                     compute="numpy")
    log_risk = np.array([[0, -1, -2, -3.0]] * 2 + [[0, -100, -400, -700.0]] * 2 + [[0, -200, -600, -1000.0]] * 2)
    curve = analysis.acceleration_curve(dataclasses.replace(grid, risk=np.exp(log_risk), log_risk=log_risk))
    assert curve.risk[2] == 0.0 and curve.log_risk.tolist() == [-3.0, -700.0, -1000.0]
    assert curve.best_stepsize == 100.0 and curve.best_log_risk == -1000.0 and curve.monotone.all()
    # results without log_risk: log(0) = -inf, still ranked first and never dropped as missing
    fallback = analysis.acceleration_curve(dataclasses.replace(grid, risk=np.exp(log_risk), log_risk=None))
    assert fallback.best_stepsize == 100.0 and fallback.log_risk[2] == -np.inf and fallback.monotone.all()


def test_a_real_sweep_whose_largest_stepsize_underflows_is_ranked_best():
    X, y = lgd.data.wu_toy()
    grid = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, 1e4, 1e6], steps=200, init="zeros", compute="numpy")
    assert grid.risk[-1, -1] == 0.0 and np.isfinite(grid.log_risk[-1, -1])
    curve = analysis.acceleration_curve(grid)
    assert curve.best_stepsize == 1e6 and curve.best_log_risk == pytest.approx(grid.log_risk[-1, -1])
    assert grid[-1].final_log_risk == curve.best_log_risk


def test_stable_rate_of_a_run_whose_risk_underflowed(template):
    t = np.arange(1001, dtype=float)
    with np.errstate(divide="ignore"):
        log_risk = -800.0 - np.log(np.maximum(t, 1.0))          # L = e^-800 / t: 0.0 in float64 at every step
    run = dataclasses.replace(_synthetic(template, np.exp(log_risk)), log_risk=log_risk)
    assert not run.risk.any()
    stable = analysis.stable_rate(run)
    assert stable.monotone and stable.slope == pytest.approx(-1.0, abs=1e-12)
    assert stable.rate_change_last_decade == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(analysis.stable_rate(dataclasses.replace(run, log_risk=None)).slope)  # log(0): nothing to fit


def test_the_runs_figure_draws_every_run_and_tells_them_apart(tmp_path):
    """lgd.plot: a single Run is a figure of one run; a run whose risk underflowed to 0.0 stays in the risk and
    rate panels (log10 of its log-risk); labels name the rule and the seed where runs differ in them, and the
    step a diverged run diverged at."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from lgd import plot

    X, y = lgd.data.xor(n=40)
    run = lgd.gd(X, y, lgd.TwoLayerNet(8), stepsize=50.0, steps=20, compute="numpy")
    plot.save_runs_figure(run, tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(8), stepsizes=[50.0, lgd.stepsize.adaptive(50.0)], seeds=(0, 1), steps=20,
                     compute="numpy")
    runs = list(grid)
    runs[3] = dataclasses.replace(runs[3], risk=np.where(runs[3].step > 5, 0.0, runs[3].risk),
                                  log_risk=np.where(runs[3].step > 5, -1e5, runs[3].log_risk))
    figure = plot.plot_runs(runs)
    ax_risk, ax_margin, ax_rate = figure.axes
    assert [line.get_label() for line in ax_risk.get_lines() if not line.get_label().startswith("_")] == [
        "eta = 50, seed 0", "eta = 50, seed 1", "adaptive(50), seed 0", "adaptive(50), seed 1"]
    drawn = [line for line in ax_risk.get_lines() if not line.get_label().startswith("_")]
    assert min(line.get_ydata().min() for line in drawn) == pytest.approx(-1e5 / math.log(10))
    assert all(len(line.get_xdata()) == 20 for line in drawn) and ax_risk.get_ylabel() == "log10 L(W_t)"
    assert all(len(line.get_xdata()) == 20 for line in ax_rate.get_lines())
    # a diverged run's label says at which step: its curves end at the last record before it
    diverged = lgd.gd(X, y, lgd.TwoLayerNet(8), "squared", stepsize=1e7, steps=20, record=lgd.Record(every=10),
                      compute="numpy")
    assert diverged.status == "diverged" and 0 < diverged.diverged_step < 10
    ax_risk = plot.plot_runs([run, diverged]).axes[0]
    assert [line.get_label() for line in ax_risk.get_lines() if not line.get_label().startswith("_")] == [
        "eta = 50", f"eta = 1e+07 (diverged at step {diverged.diverged_step})"]
