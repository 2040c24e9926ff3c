"""The reduced (--quick) reproductions on the numpy backend (numba for orbits and chaos, thousands of runs): the
claims of each figure, read off its summary."""

import json

import numpy as np
import pytest

from lgd import reproduce
from lgd._json import to_json
from lgd.cli import PLUGGED_COMMANDS, main


def test_fig4_network_margin_turns_positive_while_each_neuron_margin_stays_negative():
    summary = reproduce.fig4(quick=True, backend="numpy").summary
    assert summary["final_network_margin"] > 0 and summary["final_accuracy"] == 1.0
    assert summary["first_step_network_margin_positive"] > 0
    assert summary["largest_neuron_margin_after_step_0"] < 0
    assert all(margin < 0 for margin in summary["final_neuron_margins"])


def test_xor_large_stepsizes_oscillate_then_beat_the_small_one():
    small, *large = reproduce.xor(quick=True, backend="numpy").summary["runs"]
    assert small["edge_of_stability"]["increases"] == 0 and small["stable"]["monotone"]
    for run in large:
        assert run["edge_of_stability"]["increases"] > 0 and run["edge_of_stability"]["peak_over_initial"] > 1
        assert run["phase"]["transition_step"] is not None and run["stable"]["monotone"]
        assert run["final_risk"] < small["final_risk"] and run["final_accuracy"] == 1.0
    assert large[-1]["final_risk"] < 1e-3 * small["final_risk"]
    # in the stable phase the risk falls like a power of t close to 1/t
    assert all(-1.3 < run["stable"]["slope"] < -0.7 for run in (small, *large))


def test_digits_large_stepsizes_reach_smaller_risk():
    summary = reproduce.digits(quick=True, backend="numpy").summary
    for runs in (summary["logistic_regression"], summary["two_layer"]["runs"]):
        small, large = runs
        assert small["stepsize"] < large["stepsize"]
        assert large["final_risk"] < 0.1 * small["final_risk"]


def test_acceleration_monotone_runs_are_stuck_at_one_over_t():
    summary = reproduce.acceleration(quick=True, backend="numpy").summary
    assert -1.3 < summary["best_monotone_risk_slope_in_T"] < -0.7
    for budget in summary["budgets"]:
        assert budget["monotone"][0] and not budget["monotone"][-1]
        assert budget["best_risk"] < 1e-3 * budget["best_monotone_risk"]
        assert budget["best_stepsize"] > budget["best_monotone_stepsize"]


def test_eos_sharpness_rises_to_two_over_eta_and_hovers():
    summary = reproduce.eos(quick=True, backend="numpy").summary
    small, *large = summary["runs"]
    assert small["sharpness"]["progressive_sharpening"] > 1.15 and small["sharpness"]["peak_over_limit"] < 0.9
    for run in large:
        sharpness = run["sharpness"]
        assert sharpness["reached_step"] is not None
        assert 0.93 < sharpness["median_over_limit_after"] < 1.07
        assert sharpness["peak_over_limit"] < 1.3
        assert run["edge_of_stability"]["increases"] > 10  # the risk is not monotone at the edge of stability


def test_balancing_larger_stepsizes_end_more_balanced():
    summary = reproduce.balancing(quick=True, backend="numpy").summary
    assert summary["gap_decreasing_below_0.85_reference"]
    assert summary["every_converged_gap_within_bound"]
    gaps = np.array(summary["final_gap"], dtype=float)
    assert gaps[0] > 0.9 * summary["initial_gap"] and np.nanmin(gaps) < 0.25 * summary["initial_gap"]


def test_lgd_reproduce_writes_summary_and_figure(tmp_path, capsys):
    assert "reproduce" in PLUGGED_COMMANDS
    assert main(["reproduce", "balancing", "--quick", "--backend", "numpy", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "balancing.json").read_text())
    assert summary["quick"] is True and summary["experiment"] == "balancing"
    assert (tmp_path / "balancing.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out
    # run again without the figure: the earlier one does not stay beside the new JSON
    assert main(["reproduce", "balancing", "--quick", "--backend", "numpy", "--no-plot", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["balancing.json"]


def test_data_experiments_need_a_path(tmp_path, capsys):
    assert main(["reproduce", "mnist", "--quick", "--out", str(tmp_path)]) == 2
    assert "--data-path" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown experiment"):
        reproduce.reproduce("fig5")
    # and the others read none: a path given to them is a mistake, said before any work
    assert main(["reproduce", "fig4", "--quick", "--data-path", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "fig4 reads no data files: --data-path is for cifar10 and mnist" in capsys.readouterr().err


def test_regimes_smooth_oscillating_divergent_and_the_flows():
    summary = reproduce.regimes(quick=True, backend="numpy").summary
    assert summary["every_regime_as_theory"]
    for run in summary["runs"]:
        assert abs(run["lyapunov"] - run["log_abs_1_minus_h"]) < 1e-9
        assert run["risk_decreasing"] == (run["stepsize"] < 2)
    assert 0.9 < summary["gradient_flow_order"] < 1.1 and 1.8 < summary["modified_flow_order"] < 2.2
    small = [d for d in summary["flow_distances"] if d["stepsize"] < 0.5]
    assert all(d["modified_flow"] < d["gradient_flow"] for d in small)


def test_orbits_at_h_1_9_are_measured_not_assumed():
    pytest.importorskip("numba")   # thousands of runs: too slow on the numpy backend for a test
    summary = reproduce.orbits(quick=True, backend="numba").summary
    bifurcation = summary["bifurcation"]
    assert bifurcation["period"][0] == 1 and 0.95 < bifurcation["first_stepsize_without_fixed_point"] < 1.1
    periods = {window["period"] for window in bifurcation["periodic_windows"]}
    assert {2, 4} <= periods
    by_stepsize = {entry["stepsize"]: entry for entry in summary["basins"]["per_stepsize"]}
    assert "period 2" in by_stepsize[1.1]["counts"] and "period 4" in by_stepsize[1.25]["counts"]
    # what lgd measures at h = 1.9 (see docs/science.md): no periodic orbit on the grid, only a chaotic
    # (positive Lyapunov exponent) attractor on the balanced diagonal x = y, and divergence
    at_19 = by_stepsize[1.9]
    assert summary["periods_found_at_1.9"] == [] and not summary["claim_periods_2_3_4_at_1.9"]
    assert at_19["counts"]["bounded"] == at_19["bounded_without_period_balanced"] > 0
    assert at_19["median_lyapunov_bounded_without_period"] > 0.5


def test_chaos_on_xor_the_stable_phase_is_not_chaotic():
    pytest.importorskip("numba")
    summary = reproduce.chaos(quick=True, backend="numba").summary
    assert summary["chaotic_in_last_1000_steps"] == 0 and summary["largest_lyapunov_last_1000_steps"] < 1e-3
    assert summary["chaotic_oscillating_phase"] > 0
    assert 1e3 < summary["first_stepsize_chaotic_oscillating_phase"] < 1e4


def test_adaptive_steps_beat_constant_ones_where_the_claim_applies():
    """Quick version: on every problem some stepsize's risk-adaptive run eta / L(w_t) ends far (e^5) below the
    constant run at that stepsize; the summary is strict JSON with each problem's fit over the runs that left
    their starting risk."""
    pytest.importorskip("numba")
    summary = reproduce.adaptive(quick=True, backend="numba").summary
    text = to_json(summary)
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)
    for name, problem in summary["problems"].items():
        gain = np.array(problem["constant_log_risk"]) - np.array(problem["adaptive_log_risk"])
        assert np.nanmax(gain) > 5.0, name
        assert sum(problem["adaptive_in_claims_regime"]) >= 2, name
