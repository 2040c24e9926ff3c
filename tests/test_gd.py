"""The GD driver on the numpy backend: validation, recording, divergence, sweeps, results, phases."""

import dataclasses
import math

import numpy as np
import pytest

import lgd
from lgd.backends import record_count, record_slot, record_steps
from lgd.models import evaluate


@pytest.fixture
def xor():
    return lgd.data.xor(n=40, seed=1)


def test_gd_matches_hand_written_gradient_descent(xor):
    X, y = xor
    net = lgd.TwoLayerNet(6, activation="gelu")
    run = lgd.gd(X, y, net, "logistic", stepsize=3.0, steps=25, seed=4, compute="numpy")
    W = np.random.default_rng(4).standard_normal((6, 2))
    a = net.outer_weights(None)
    risks = []
    for _ in range(26):
        ev = evaluate(W, a, X, y, net.activation, lgd.losses.get("logistic"), net.scale)
        risks.append(ev.risk)
        W = W - 3.0 * ev.grad_W
    W = W + 3.0 * ev.grad_W  # no update after the last evaluation
    np.testing.assert_allclose(run.risk, risks, rtol=1e-14)
    np.testing.assert_allclose(run.weights, W, rtol=1e-13)
    assert run.status == "completed" and run.diverged_step is None
    assert run.step.tolist() == list(range(26))
    np.testing.assert_allclose(run.normalized_margin, run.margin / run.weight_norm)


def test_record_every_k_records_multiples_and_the_last_step(xor):
    X, y = xor
    full = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=23, compute="numpy")
    sparse = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=23, record=5, compute="numpy")
    assert sparse.step.tolist() == [0, 5, 10, 15, 20, 23]
    np.testing.assert_allclose(sparse.risk, full.risk[sparse.step], rtol=1e-14)
    np.testing.assert_allclose(sparse.weights, full.weights, rtol=1e-14)
    assert record_steps(20, 5).tolist() == [0, 5, 10, 15, 20]
    assert [record_slot(t, 23, 5) for t in (0, 4, 5, 22, 23)] == [0, -1, 1, -1, 5]
    # record_count is their number, without building them
    assert all(record_count(steps, every) == record_steps(steps, every).size for steps in range(1, 40)
               for every in range(1, 45))


def test_deterministic_for_a_seed_and_different_across_seeds(xor):
    X, y = xor
    net = lgd.TwoLayerNet(8, outer="random")
    first = lgd.gd(X, y, net, stepsize=1.0, steps=10, seed=3, compute="numpy")
    again = lgd.gd(X, y, net, stepsize=1.0, steps=10, seed=3, compute="numpy")
    other = lgd.gd(X, y, net, stepsize=1.0, steps=10, seed=4, compute="numpy")
    np.testing.assert_array_equal(first.risk, again.risk)
    np.testing.assert_array_equal(first.outer_weights, again.outer_weights)
    assert not np.array_equal(first.risk, other.risk)


def test_sweep_equals_single_runs(xor):
    X, y = xor
    net = lgd.TwoLayerNet(5, train_outer=True)
    result = lgd.sweep(X, y, net, "logistic", stepsizes=[0.5, 8.0], steps=30, seeds=(0, 2), record=3,
                       compute="numpy")
    assert len(result) == 4 and result.risk.shape == (4, 11)
    assert result.stepsize.tolist() == [0.5, 0.5, 8.0, 8.0] and result.seed.tolist() == [0, 2, 0, 2]
    for i, run in enumerate(result):
        single = lgd.gd(X, y, net, stepsize=run.stepsize, steps=30, seed=run.seed, record=3, compute="numpy")
        np.testing.assert_array_equal(run.risk, single.risk)
        np.testing.assert_array_equal(run.neuron_margins, single.neuron_margins)
        np.testing.assert_array_equal(result.weights[i], single.weights)
        np.testing.assert_array_equal(result.outer_weights[i], single.outer_weights)
    assert result.final_risk.shape == (4,)
    assert result[-1].seed == 2 and result[np.int64(1)].seed == 2
    with pytest.raises(TypeError, match="indexed by one configuration's number \\(an int\\), got slice"):
        result[0:2]
    with pytest.raises(IndexError, match=r"configuration 4 is not in this sweep of 4 configurations \(0 to 3, or -4"):
        result[4]
    assert result[-4].stepsize == 0.5


def test_divergence_stops_the_run_and_keeps_its_trace(xor):
    X, y = xor
    run = lgd.gd(X, y, lgd.Linear(), "exponential", stepsize=1e4, steps=100, compute="numpy")
    assert run.status == "diverged"
    assert run.diverged_step == 1
    # Step 1's risk (1.3e284) and gradient norm are finite numbers: recorded, then the run stops at the bound.
    assert run.step.tolist() == [0, 1] and np.isfinite(run.risk).all() and run.risk[1] > 1e10
    assert math.isnan(run.final_risk) and math.isnan(run.final_log_risk)  # not the healthy-looking record at 0
    assert np.all(np.isfinite(run.weights))
    mixed = lgd.sweep(X, y, lgd.Linear(), "exponential", stepsizes=[0.1, 1e4], steps=20, compute="numpy")
    assert mixed.status == ["completed", "diverged"]
    assert mixed.diverged_step.tolist() == [-1, 1]
    assert mixed.risk[1, 1] > 1e10 and np.isnan(mixed.risk[1, 2:]).all() and np.isfinite(mixed.risk[0]).all()
    assert math.isnan(mixed.final_risk[1])


def test_test_data_is_recorded(xor):
    X, y = xor
    Xt, yt = lgd.data.xor(n=20, seed=9)
    net = lgd.TwoLayerNet(8)
    run = lgd.gd(X, y, net, stepsize=100.0, steps=300, X_test=Xt, y_test=yt, compute="numpy")
    assert run.test_risk.shape == run.risk.shape
    held_out = evaluate(run.weights, run.outer_weights, Xt, yt, net.activation, lgd.losses.get("logistic"), net.scale)
    assert run.test_risk[-1] == pytest.approx(held_out.risk, rel=1e-14)
    assert run.test_accuracy[-1] == held_out.accuracy == 1.0
    plain = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=4.0, steps=5, compute="numpy")
    assert plain.test_risk is None and plain.test_accuracy is None


def test_float32_runs_in_float32_and_agrees_with_float64(xor):
    X, y = xor
    run64 = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=40, compute="numpy")
    run32 = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=40, compute=lgd.Compute("numpy", dtype="float32"))
    assert run32.weights.dtype == np.float32 and run32.meta["dtype"] == "float32"
    np.testing.assert_allclose(run32.risk, run64.risk, rtol=1e-5)
    auto32 = lgd.gd(X.astype(np.float32), y, lgd.TwoLayerNet(4), stepsize=2.0, steps=2, compute="numpy")
    assert auto32.weights.dtype == np.float32
    # float32 input however it comes: rows of float32, the other byte order
    for given in (list(X.astype(np.float32)), X.astype(">f4")):
        assert lgd.gd(given, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=2, compute="numpy").meta["dtype"] == "float32"
    big_endian = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=2, compute=lgd.Compute("numpy", dtype=">f8"))
    assert big_endian.meta["dtype"] == "float64"


def test_linear_model_and_init_arrays():
    X, y = lgd.data.wu_toy()
    run = lgd.gd(X, y, lgd.Linear(), stepsize=1.0, steps=200, init="zeros", compute="numpy")
    assert run.weights.shape == (2,)
    assert run.risk[0] == pytest.approx(math.log(2.0))
    assert run.accuracy[-1] == 1.0
    given = lgd.gd(X, y, lgd.Linear(), stepsize=1.0, steps=3, init=np.array([1.0, -2.0]), compute="numpy")
    assert given.weight_norm[0] == pytest.approx(math.sqrt(5.0))


def test_neuron_margins_follow_the_budget(xor, monkeypatch):
    X, y = xor
    assert lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="numpy").neuron_margins.shape == (6, 4)
    off = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="numpy",
                 record=lgd.Record(neuron_margins=False))
    assert off.neuron_margins is None
    monkeypatch.setattr(lgd.driver, "NEURON_BUDGET", 10)
    assert lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=5, compute="numpy").neuron_margins is None


def test_fig4_neurons_stay_negative_while_the_network_margin_turns_positive():
    """Cai et al. Fig. 4: W_0 = 0, outer weights +1/-1 with mean-field scaling (so +-1/2), eta = 3."""
    X, y = lgd.data.fig4()
    run = lgd.gd(X, y, lgd.TwoLayerNet(2), "logistic", stepsize=3.0, steps=3000, init="zeros", compute="numpy")
    assert run.status == "completed"
    assert np.all(run.neuron_margins < 0)
    assert run.margin[-1] > 0 and run.accuracy[-1] == 1.0
    assert run.margin[0] == 0.0


def test_phase_of_a_large_stepsize_run():
    X, y = lgd.data.xor(n=100)
    net = lgd.TwoLayerNet(20)
    large = lgd.gd(X, y, net, stepsize=3000.0, steps=3000, compute="numpy")
    phase = large.phase
    assert phase.increases_before > 0 and phase.peak_risk > large.risk[0]
    assert phase.transition_step is not None and phase.monotone_after
    assert phase.threshold == pytest.approx(min(1 / 3000, math.log(2) / 100))
    assert large.risk[phase.transition_step] <= phase.threshold < large.risk[phase.transition_step - 1]
    assert phase.final_rate == pytest.approx(3000 * 3000 * large.risk[-1])
    small = lgd.gd(X, y, net, stepsize=1.0, steps=200, compute="numpy").phase
    assert small.transition_step is None and small.increases_before == 0


def test_the_peak_risk_is_read_up_to_the_transition_step_included():
    """A run below the threshold from its first record has a peak: its initial risk."""
    phase = lgd.results.phase_of(np.arange(4), [0.3, 0.2, 0.25, 0.1], stepsize=1.0, threshold=0.5)
    assert (phase.transition_step, phase.peak_risk, phase.increases_after) == (0, 0.3, 1)
    phase = lgd.results.phase_of(np.arange(4), [0.9, 2.0, 0.4, 0.3], stepsize=1.0, threshold=0.5)
    assert (phase.transition_step, phase.peak_risk, phase.increases_before) == (2, 2.0, 1)
    assert "up to s, s included" in " ".join(lgd.Phase.__doc__.split())


def test_save_and_load_round_trip(tmp_path, xor):
    X, y = xor
    Xt, yt = lgd.data.xor(n=8, seed=5)
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=2.0, steps=10, X_test=Xt, y_test=yt, compute="numpy")
    run.save(tmp_path / "run.npz")
    back = lgd.load(tmp_path / "run.npz")
    assert isinstance(back, lgd.Run) and back.status == run.status and back.stepsize == run.stepsize
    np.testing.assert_array_equal(back.risk, run.risk)
    np.testing.assert_array_equal(back.test_risk, run.test_risk)
    assert back.meta == run.meta and back.phase == run.phase
    assert back.model.config() == lgd.TwoLayerNet(3).config()
    result = lgd.sweep(X, y, lgd.Linear(), "exponential", stepsizes=[0.1, 1e4], steps=5, compute="numpy")
    result.save(tmp_path / "sweep.npz")
    again = lgd.load(tmp_path / "sweep.npz")
    assert again.status == result.status and again.test_risk is None and again.neuron_margins is not None
    np.testing.assert_array_equal(again.diverged_step, result.diverged_step)
    np.testing.assert_array_equal(again[0].risk, result[0].risk)


def test_save_into_and_load_from_an_open_file(tmp_path, xor):
    import io

    X, y = xor
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=2.0, steps=10, compute="numpy")
    result = lgd.sweep(X, y, lgd.TwoLayerNet(3), stepsizes=[1.0, 2.0], steps=5, compute="numpy")
    for saved in (run, result):
        buffer = io.BytesIO(b"before")  # read from where the file stands, as save wrote it
        buffer.seek(6)
        saved.save(buffer)
        buffer.seek(6)
        assert lgd.load(buffer) == saved
    run.save(tmp_path / "run.npz")
    with open(tmp_path / "run.npz", "rb") as file:
        assert lgd.load(file) == run
    with open(tmp_path / "run.npz") as file, pytest.raises(ValueError, match="text mode: open it with mode 'rb'"):
        lgd.load(file)
    with pytest.raises(ValueError, match="is not a result lgd saved"):
        lgd.load(io.BytesIO(b"not an archive"))


def test_results_compare_equal_field_by_field(tmp_path, xor):
    X, y = xor
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=2.0, steps=10, compute="numpy")
    result = lgd.sweep(X, y, lgd.TwoLayerNet(3), "exponential", stepsizes=[1.0, 1e6], steps=10, compute="numpy")
    assert "diverged" in result.status  # NaN in its traces, equal to themselves
    assert run == run and result == result and result[1] == result[1] and run != result
    assert lgd.load(run.save(tmp_path / "run")) == run and lgd.load(result.save(tmp_path / "sweep")) == result
    assert result[0] != result[1]
    risk = run.risk.copy()
    risk[-1] = np.nextafter(risk[-1], 1.0)
    assert dataclasses.replace(run, risk=risk) != run
    assert dataclasses.replace(run, risk=run.risk.astype(np.float32)) != run  # the dtype counts
    assert dataclasses.replace(run, seconds=run.seconds + 1) != run
    with pytest.raises(TypeError, match="unhashable"):
        hash(run)


def test_repr_shows_a_risk_that_underflowed_from_its_log():
    run = lgd.gd(*lgd.data.wu_toy(), lgd.Linear(), stepsize=1e6, steps=200, init="zeros", compute="numpy")
    assert run.risk[-1] == 0.0 and run.final_log_risk == pytest.approx(-10000.69, abs=0.01)
    assert "final_risk=5.677e-4344," in repr(run)
    small = lgd.gd(*lgd.data.wu_toy(), lgd.Linear(), stepsize=1.0, steps=10, init="zeros", compute="numpy")
    assert f"final_risk={small.final_risk:.3e}," in repr(small)


def test_to_pandas(xor):
    pd = pytest.importorskip("pandas")
    X, y = xor
    result = lgd.sweep(X, y, lgd.TwoLayerNet(3), stepsizes=[1.0, 2.0], steps=4, compute="numpy")
    frame = result[1].to_pandas()
    assert list(frame.index) == [0, 1, 2, 3, 4] and "normalized_margin" in frame
    long = result.to_pandas()
    assert isinstance(long, pd.DataFrame) and len(long) == 10 and set(long.stepsize) == {1.0, 2.0}
    assert {"log_risk", "eta"} <= set(frame) and "start" not in long
    starts = lgd.sweep(X, y, lgd.TwoLayerNet(3), stepsizes=[1.0, lgd.stepsize.warmup(1.0, 10)], steps=4,
                       inits=np.zeros((2, 3, 2)), compute="numpy").to_pandas()
    assert sorted(set(zip(starts.stepsize_rule, starts.start))) == [
        ("constant(1)", 0), ("constant(1)", 1), ("warmup(1, 10)", 0), ("warmup(1, 10)", 1)]


def test_timing_is_reported(xor):
    X, y = xor
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=50, compute="numpy")
    assert run.seconds > 0 and run.steps_per_second == pytest.approx(50 / run.seconds)


BAD_CALLS = [
    (dict(X=np.zeros(5)), "X must be a 2-D array"),
    (dict(y=np.ones(7)), r"y must be a 1-D array of length 6"),
    (dict(X=np.full((6, 2), np.nan)), "X contains NaN or Inf"),
    (dict(y=np.array([1.0, -1, 1, np.inf, 1, 1])), "y contains NaN or Inf"),
    (dict(y=np.array([1.0, 0, 1, -1, 2, 1])), r"labels \+1 or -1 for the logistic loss; found \[0.0, 2.0\]"),
    (dict(stepsize=0.0), "stepsize must be positive and finite, got 0.0"),
    (dict(stepsize=-1.0), "stepsize must be positive"),
    (dict(stepsize=float("inf")), "stepsize must be positive and finite"),
    (dict(stepsize="big"), "stepsize must be a positive number"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(record=0), "Record.every must be an integer >= 1"),
    (dict(loss="hinge"), "unknown loss 'hinge'"),
    (dict(compute="jax"), "unknown backend 'jax'"),
    (dict(init="uniform"), "unknown init 'uniform'"),
    (dict(init=np.zeros((3, 3))), r"init array must have shape \(4, 2\)"),
    (dict(init_scale=-1.0), "init_scale must be a finite number >= 0"),
    (dict(X_test=np.zeros((2, 2))), "give both X_test and y_test"),
    (dict(X_test=np.zeros((2, 3)), y_test=np.ones(2)), "X_test has 3 features but X has 2"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63 - 1\], got -1"),
    (dict(seed=2**64 - 1), r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
    (dict(seed=True), r"seed must be an integer in \[0, 2\*\*63 - 1\], got True"),
    (dict(seed="2"), r"seed must be an integer in \[0, 2\*\*63 - 1\], got '2'"),
    (dict(init="zeros", init_scale=3.0), "init_scale scales the 'normal' init only; init is 'zeros'"),
    (dict(init=np.ones((4, 2)), init_scale=3.0), "init_scale scales the 'normal' init only; init is an array"),
    (dict(steps=10**20), r"steps must be at most 2\*\*62"),
    (dict(init=np.full((4, 2), 1e39), compute=lgd.Compute("numpy", dtype="float32")),
     r"the initial weights \(init, inits or init_scale\) reach 1e\+39, which does not fit in float32"),
    (dict(model=lgd.TwoLayerNet(4, outer=[1e39, -1, 1, -1]), compute=lgd.Compute("numpy", dtype="float32")),
     r"the initial outer weights \(outer or outer_inits\) reach 1e\+39"),
    (dict(model=lgd.TwoLayerNet(4, scaling=1e-50), compute=lgd.Compute("numpy", dtype="float32")),
     "the model's scaling 1e-50 rounds to 0 in float32"),
    (dict(stepsize=1e-50, compute=lgd.Compute("numpy", dtype="float32")), "stepsize 1e-50 rounds to 0 in float32"),
    (dict(init=np.ones((4, 2), dtype=complex)), "init array must hold real numbers, got dtype complex128"),
    (dict(init_scale="1"), "init_scale must be a finite number >= 0, got '1'"),
    (dict(init_scale=True), "init_scale must be a finite number >= 0, got True"),
    (dict(record=lgd.Record(sharpness_every=2, sharpness_k=9)),
     "Record.sharpness_k asks for 9 eigenvalues but the model has 8 trained parameters"),
    (dict(record=lgd.Record(lyapunov=9)),
     "Record.lyapunov asks for 9 exponents but the model has 8 trained parameters"),
    (dict(X=np.full((6, 2), 1e39), compute=lgd.Compute("numpy", dtype="float32")),
     r"X holds 1e\+39, which does not fit in float32"),
    (dict(X_test=np.ones((2, 2)), y_test=np.array([1.0, -1e300]), loss="squared",
          compute=lgd.Compute("numpy", dtype="float32")), r"y_test holds 1e\+300, which does not fit in float32"),
]


@pytest.mark.parametrize("change, message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_input_gets_a_clear_error(change, message):
    rng = np.random.default_rng(0)
    kwargs = dict(X=rng.standard_normal((6, 2)), y=np.array([1.0, -1, 1, -1, 1, 1]), model=lgd.TwoLayerNet(4),
                  loss="logistic", stepsize=1.0, steps=3, compute="numpy")
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        lgd.gd(**kwargs)


def test_more_bad_input():
    X, y = np.ones((4, 2)), np.array([1.0, -1, 1, -1])
    with pytest.raises(TypeError, match="model must be an lgd.TwoLayerNet or lgd.Linear"):
        lgd.gd(X, y, "mlp", stepsize=1.0, steps=1)
    with pytest.raises(ValueError, match="stepsizes must be positive"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, -2.0], steps=1, compute="numpy")
    with pytest.raises(ValueError, match="seeds must be distinct"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0], seeds=(1, 1), steps=1, compute="numpy")
    for seeds in (1.5, None, "12", {1, 2}):
        with pytest.raises(ValueError, match="seeds must be an integer or a sequence of integers"):
            lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0], seeds=seeds, steps=1, compute="numpy")
    with pytest.raises(ValueError, match=r"stepsizes must be a non-empty 1-D sequence .* got set"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes={1.0, 2.0}, steps=1, compute="numpy")
    assert lgd.gd(X, y, lgd.Linear(), stepsize=np.array(2.0), steps=1, compute="numpy").stepsize == 2.0
    with pytest.raises(ValueError, match="train_outer must be True or False, got 'False'"):
        lgd.TwoLayerNet(4, train_outer="False")
    for scaling in (True, None, [0.5]):
        with pytest.raises(ValueError, match="scaling must be 'mean_field', 'ntk' or a positive number"):
            lgd.TwoLayerNet(4, scaling=scaling)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        lgd.TwoLayerNet(0)
    with pytest.raises(ValueError, match="outer weights must hold real numbers, got dtype complex128"):
        lgd.TwoLayerNet(4, outer=np.ones(4, dtype=complex))
    with pytest.raises(ValueError, match=r"outer_inits is for a TwoLayerNet: lgd.Linear has no outer layer"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0], steps=1, outer_inits=[[5.0], [1.0]], compute="numpy")
    with pytest.raises(ValueError, match="inits gives the starting points: init and init_scale do not apply"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0], steps=1, inits=np.zeros((2, 2)), init="zeros", compute="numpy")
    with pytest.raises(ValueError, match="inits gives the starting points"):
        lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0], steps=1, inits=np.zeros((2, 2)), init_scale=0.1,
                  compute="numpy")
    with pytest.raises(ValueError, match="unknown scaling 'xavier'"):
        lgd.TwoLayerNet(4, scaling="xavier")
    with pytest.raises(ValueError, match=r"outer weights must have shape \(4,\)"):
        lgd.TwoLayerNet(4, outer=[1.0, -1.0])
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        lgd.TwoLayerNet(4, activation="sigmoid")
    # the squared loss takes real targets
    run = lgd.gd(X, np.array([0.3, -2.0, 1.5, 0.0]), lgd.Linear(), "squared", stepsize=0.1, steps=3, compute="numpy")
    assert run.status == "completed"


def test_unavailable_backend_named_explicitly_raises(monkeypatch):
    from lgd import backends

    monkeypatch.setattr(backends.Backend, "availability", lambda self: (False, "no usable device"))
    with pytest.raises(lgd.BackendUnavailable, match="backend 'cupy' is not available: no usable device"):
        lgd.gd(np.ones((2, 2)), np.array([1.0, -1.0]), lgd.Linear(), stepsize=1.0, steps=1, compute="cupy")
    assert backends.resolve("auto").name == "numpy"  # numba unusable too: numpy input falls to the oracle


def test_auto_follows_the_input_not_the_machine(monkeypatch):
    """numpy input never goes to the GPU because one is present; it goes to numba when installed."""
    from lgd import backends

    numba_usable = backends.availability("numba")[0]
    monkeypatch.setattr(backends.Backend, "availability",
                        lambda self: (self.name != "numba" or numba_usable, "probed"))
    assert backends.resolve("auto", np.ones((2, 2))).name == ("numba" if numba_usable else "numpy")


def test_a_stepsize_beyond_the_float32_range_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"stepsize 1e\+39 does not fit in float32"):
        lgd.gd(np.ones((2, 2)), np.array([1.0, -1.0]), lgd.Linear(), stepsize=1e39, steps=1,
               compute=lgd.Compute("numpy", dtype="float32"))


def test_progress_bar_on_request_and_off_when_not_a_terminal(xor, capsys):
    pytest.importorskip("tqdm")
    X, y = xor
    lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=30, compute=lgd.Compute("numpy", progress=True))
    assert "step" in capsys.readouterr().err
    lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=30, compute="numpy")  # stderr is not a TTY here
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("first_chunk", [1, 7, 1000])
def test_progress_bar_counts_the_gd_steps(xor, monkeypatch, first_chunk):
    """The bar's total and its updates are the run's steps (not its steps + 1 evaluations), in chunks of any
    size."""
    class Bar:
        def __init__(self, total):
            self.total, self.count = total, 0

        def update(self, n):
            assert n >= 0
            self.count += n

        def close(self):
            pass

    bars = []
    monkeypatch.setattr(lgd.driver, "_progress_bar", lambda progress, total, unit="step": bars.append(Bar(total))
                        or bars[-1])
    monkeypatch.setattr(lgd.driver, "FIRST_CHUNK_STEPS", first_chunk)
    X, y = xor
    lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=30, compute="numpy")
    assert [(bar.total, bar.count) for bar in bars] == [(30, 30)]


def test_without_tqdm_a_terminal_gets_no_bar_and_progress_true_says_what_to_install(xor, monkeypatch):
    """progress=None in a terminal is a bar where tqdm is installed and none (no error) where it is not: `pip
    install lgd` is numpy only; progress=True without tqdm names the extra."""
    import sys

    X, y = xor
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=5, compute="numpy")
    assert run.status == "completed"
    with pytest.raises(ImportError, match=r'progress=True needs tqdm: pip install tqdm \(or "lgd\[progress\]"\)'):
        lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=1.0, steps=5, compute=lgd.Compute("numpy", progress=True))


def test_the_driver_takes_the_rest_of_a_run_in_one_chunk_where_it_fits(monkeypatch):
    """After its first chunk (16 evaluations) the driver takes the rest of a run in one chunk where that fits in
    CHUNK_SECONDS at the first chunk's pace (each chunk is a runner call), else it grows the chunk toward
    CHUNK_SECONDS, here one evaluation at a time."""
    from lgd import driver
    from lgd.backends import _numpy

    spans, advance = [], _numpy.Runner.advance
    monkeypatch.setattr(_numpy.Runner, "advance", lambda self, *span: (spans.append(span), advance(self, *span))[1])
    X, y = lgd.data.xor(n=20)

    def chunks(seconds):
        spans.clear()
        monkeypatch.setattr(driver, "CHUNK_SECONDS", seconds)
        lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.5, steps=300, compute=lgd.Compute(backend="numpy", progress=False))
        return list(spans)

    assert chunks(1e3) == [(0, 16), (16, 301)]
    assert chunks(1e-9) == [(0, 16)] + [(t, t + 1) for t in range(16, 301)]
    # A batch whose steps may take long starts with one: a Ctrl-C waits for a step, not sixteen.
    for options in (dict(record=lgd.Record(sharpness_every=100)), dict(record=lgd.Record(lyapunov=1))):
        spans.clear()
        monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e3)
        lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.5, steps=300, compute=lgd.Compute("numpy", progress=False),
               **options)
        assert spans[0] == (0, 1)
    spans.clear()
    monkeypatch.setattr(driver, "FIRST_CHUNK_WORK", 20 * 2 * 4 - 1)
    lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=0.5, steps=300, compute=lgd.Compute("numpy", progress=False))
    assert spans[0] == (0, 1)
