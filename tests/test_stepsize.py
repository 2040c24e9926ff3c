"""Stepsize rules (lgd.stepsize): runtime data mixed in one sweep, the same eta_t on every backend, and the
closed forms each rule promises."""

import math

import numpy as np
import pytest
from conftest import problem_data

import lgd
from lgd import stepsize

RULES = {"constant": stepsize.constant(0.8), "warmup": stepsize.warmup(2.0, 10), "step_decay": stepsize.step_decay(
    2.0, 7, 0.5), "cosine": stepsize.cosine(1.5), "adaptive": stepsize.adaptive(0.5), "polyak": stepsize.polyak(0.0),
    "normalized": stepsize.normalized(0.3)}


def _compute(case):
    return lgd.Compute(backend=case.backend.name, dtype=case.dtype_name, progress=False)


def test_every_rule_in_one_sweep_matches_the_oracle(compiled_backend_dtype):
    """All the rules side by side in one batched call: traces, eta_t and weights as the numpy oracle's."""
    case = compiled_backend_dtype
    X, y, X_test, y_test = problem_data("logistic", dtype=case.dtype)
    net = lgd.TwoLayerNet(6, train_outer=True)
    options = dict(stepsizes=list(RULES.values()), steps=12, record=3, X_test=X_test, y_test=y_test)
    actual = lgd.sweep(X, y, net, **options, compute=_compute(case))
    expected = lgd.sweep(X, y, net, **options, compute=lgd.Compute("numpy", dtype=case.dtype_name))
    assert actual.stepsize_rule == expected.stepsize_rule == [rule.spec for rule in RULES.values()]
    assert actual.status == expected.status
    # Polyak's and the normalised steps are large: rounding differences grow from step to step.
    rtol = 1e-9 if case.dtype == np.float64 else 2e-4
    for name in ("risk", "eta", "grad_norm", "weight_norm"):
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=rtol, err_msg=name)
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=rtol, atol=rtol)


def test_schedules_follow_their_formulas():
    X, y, _, _ = problem_data("logistic")
    result = lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=[RULES["warmup"], RULES["step_decay"], RULES["cosine"]],
                       steps=40, compute="numpy")
    t = result.step.astype(float)
    np.testing.assert_allclose(result.eta[0], 2.0 * np.minimum(1.0, (t + 1) / 10))
    np.testing.assert_allclose(result.eta[1], 2.0 * 0.5 ** np.floor(t / 7))
    np.testing.assert_allclose(result.eta[2], 1.5 * 0.5 * (1 + np.cos(np.pi * t / 40)))


def test_the_adaptive_step_is_eta_over_the_risk_and_finite_where_the_risk_underflows(backend_dtype):
    """eta_t L(W_t) = eta while the risk is in range; on separable data the risk falls below 1e-308 and the
    step, computed from the log-risk, stays finite (held at e^709 eta beyond)."""
    case = backend_dtype
    if case.dtype == np.float32:
        pytest.skip("the float32 risk leaves its range at 1e-45: the float64 case says it")
    X, y = lgd.data.separable(n=30, d=3, margin=0.3, seed=2)
    run = lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=stepsize.adaptive(100.0), steps=80, init=np.zeros(3),
                 compute=_compute(case), divergence=math.inf)
    assert run.status == "completed"
    normal = run.risk > 1e-300
    np.testing.assert_allclose(run.eta[normal] * run.risk[normal], 100.0, rtol=1e-12)
    with np.errstate(over="ignore"):
        expected = np.minimum(100.0 * np.exp(np.minimum(-run.log_risk, 709.0)), np.finfo(np.float64).max)
    np.testing.assert_allclose(run.eta, expected, rtol=1e-12)
    assert run.risk[-1] < 1e-300 and run.log_risk[-1] < -700 and np.isfinite(run.eta).all()


def test_polyak_halves_a_quadratic_error_and_normalized_steps_have_length_eta(backend_dtype):
    """On L = (1/2)(2w - 1)^2 (L_min = 0) Polyak's step is 1/(2 lambda): the error halves every step.
    Normalised GD moves the weights by exactly eta per step."""
    case = backend_dtype
    X, y = np.array([[2.0]]), np.array([1.0])
    run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=stepsize.polyak(0.0), steps=12, init=np.zeros(1),
                 record=lgd.Record(weights=1), compute=_compute(case))
    error = run.trajectory[:, 0].astype(np.float64) - 0.5
    np.testing.assert_allclose(error[1:] / error[:-1], 0.5, rtol=1e-5 if case.dtype == np.float32 else 1e-12)
    run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=stepsize.normalized(0.01), steps=10, init=np.zeros(1),
                 record=lgd.Record(weights=1), compute=_compute(case))
    np.testing.assert_allclose(np.diff(run.trajectory[:, 0].astype(np.float64)), 0.01,
                               rtol=1e-5 if case.dtype == np.float32 else 1e-12)


def test_polyak_and_normalized_steps_stop_at_a_stationary_point_and_polyak_at_its_least_risk(backend_dtype):
    """A ReLU net started at zero has a zero gradient (phi'(0) = 0): Polyak's and the normalised step are 0 there,
    the weights stay and the run completes (inf times the zero gradient made them NaN, 'diverged'). Polyak's step
    with a least risk above the risk reached is 0 from there on, not negative (uphill)."""
    case = backend_dtype
    X, y = lgd.data.xor(n=30)
    X, y = X.astype(case.dtype), y.astype(case.dtype)
    net = lgd.TwoLayerNet(4, activation="relu")
    for rule in (stepsize.normalized(1.0), stepsize.polyak(0.0)):
        run = lgd.gd(X, y, net, stepsize=rule, steps=5, init="zeros", compute=_compute(case))
        assert run.status == "completed" and np.all(run.grad_norm == 0) and np.all(run.eta == 0), rule
        assert np.all(run.weights == 0), rule
    X, y = np.array([[2.0]], dtype=case.dtype), np.array([1.0], dtype=case.dtype)
    for least, moves in ((1.0, False), (0.25, True)):  # L = (2w - 1)^2 / 2 = 0.5 at w = 0
        run = lgd.gd(X, y, lgd.Linear(), "squared", stepsize=stepsize.polyak(least), steps=12, init=np.zeros(1),
                     compute=_compute(case))
        if moves:  # down to 0.25 from above (quadratically), never below it, and then no step
            assert run.eta[0] > 0 and np.all(run.eta >= 0) and np.all(np.diff(run.risk) <= 0)
            assert np.all(run.risk >= least * (1 - 1e-6)) and run.risk[-1] == pytest.approx(least, rel=1e-6)
        else:  # already below 1: no step, rather than one uphill
            assert np.all(run.eta == 0) and np.all(run.risk == 0.5)


@pytest.mark.parametrize("make, message", [
    (lambda: stepsize.warmup(1.0, 0), "steps must be a positive"),
    (lambda: stepsize.step_decay(1.0, 5, 2.0), "factor must be at most 1"),
    (lambda: stepsize.adaptive(-1.0), "eta must be a positive"),
    (lambda: stepsize.polyak(math.nan), "risk_min must be a finite"),
], ids=["warmup", "step_decay", "adaptive", "polyak"])
def test_bad_rule_parameters_name_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_rules_label_tells_apart_every_two_parameters():
    """A rule's spec (the label a result records) is short where that is exact, in full where it is not."""
    assert stepsize.constant(1.0000001).spec == "constant(1.0000001)" and stepsize.constant(30.0).spec == "constant(30)"
    assert stepsize.warmup(math.pi, 10).spec == f"warmup({math.pi!r}, 10)"
    assert stepsize.step_decay(2.0, 100, 0.9999999).spec == "step_decay(2, 100, 0.9999999)"
    assert stepsize.polyak(1e-7, 0.5).spec == "polyak(1e-07, 0.5)"
    assert repr(stepsize.cosine(1234567.0)) == "lgd.stepsize.cosine(1234567.0)"


def test_rules_are_saved_with_the_run(tmp_path):
    X, y, _, _ = problem_data("logistic")
    run = lgd.gd(X, y, lgd.TwoLayerNet(3), stepsize=RULES["cosine"], steps=5, compute="numpy")
    again = lgd.load(run.save(tmp_path / "run"))
    assert again.stepsize_rule == "cosine(1.5)" and (again.eta == run.eta).all()
    with pytest.raises(ValueError, match="stepsizes must be a positive number or an lgd.stepsize rule"):
        lgd.sweep(X, y, lgd.TwoLayerNet(3), stepsizes=[1.0, "fast"], steps=5, compute="numpy")


def test_adaptive_is_eta_over_the_risk_up_to_the_largest_float64():
    """eta / L from the log-risk where e^-log L alone overflows but eta e^-log L does not (eta < 1), and the
    largest float64 where that overflows too."""
    for eta, log_risk in ((0.5, -700.0), (1.0, -709.5), (1e-3, -715.0), (0.5, -710.0)):
        expected = eta * math.exp(700.0) * math.exp(-log_risk - 700.0)
        assert stepsize.stepsize_at(stepsize.ADAPTIVE, eta, 0.0, 0.0, 0, 10, 0.0, log_risk, 0.0, 0.0) == \
            pytest.approx(expected, rel=1e-12)
    for eta, log_risk in ((2.0, -709.5), (1.0, -800.0), (1e-3, -1e6), (1e10, -709.0)):
        assert stepsize.stepsize_at(stepsize.ADAPTIVE, eta, 0.0, 0.0, 0, 10, 0.0, log_risk, 0.0, 0.0) == \
            np.finfo(np.float64).max


def test_a_step_past_the_dtypes_range_is_held_at_its_largest(backend_dtype):
    """Normalised steps of length 1 on a logistic loss whose gradient falls like e^-w: eta_t = 1 / |grad|
    passes float32's range near w = 88 (float64's near 709). It is held at the dtype's largest number, the
    weights stay finite and the run completes: float64 reaches w = 120 in 120 steps; float32's gradient
    underflows to subnormals and then to 0, and the run stops moving there, as float32 GD does."""
    case = backend_dtype
    run = lgd.gd(np.array([[1.0]], dtype=case.dtype), np.array([1.0], dtype=case.dtype), lgd.Linear(),
                 stepsize=stepsize.normalized(1.0), steps=120, init="zeros", compute=_compute(case))
    assert run.status == "completed" and np.isfinite(run.weights).all()
    if case.dtype == np.float64:
        assert run.weights[0] == pytest.approx(120.0, rel=1e-12)
    else:
        assert run.eta.max() == np.finfo(np.float32).max and 88.0 < run.weights[0] < 120.0


def test_the_sharpness_measured_inside_the_kernels_agrees_with_eigsh(backend_dtype):
    """Record(sharpness_every=s): the top-k Hessian eigenvalues of every configuration of a sweep, measured
    by the backend itself (numba: Lanczos on exact HVPs in the kernel, warm-started), within 1e-6 of
    scipy's eigsh on lgd.hessian's products; and the stepsize tied to it, c / lambda_max."""
    pytest.importorskip("scipy")
    case = backend_dtype
    rtol = 1e-6 if case.dtype == np.float64 else 1e-3  # float32: the iterates themselves differ at 1e-5 or so
    X, y = lgd.data.xor(n=40)
    X, y = X.astype(case.dtype), y.astype(case.dtype)
    net = lgd.TwoLayerNet(8, activation="tanh", train_outer=True)
    record = lgd.Record(every=5, sharpness_every=10, sharpness_k=2)
    result = lgd.sweep(X, y, net, "squared", stepsizes=[0.5, 2.0], steps=40, record=record, compute=_compute(case))
    oracle = lgd.sweep(X, y, net, "squared", stepsizes=[0.5, 2.0], steps=40, record=record,
                       compute=lgd.Compute("numpy", dtype=case.dtype_name))
    assert result.sharpness.shape == (2, 5, 2) and result.sharpness_step.tolist() == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(result.sharpness, oracle.sharpness, rtol=rtol)
    for i in range(2):
        run = result[i]
        top = lgd.hessian.sharpness(result.initial_weights[i], result.initial_outer_weights[i], X, y, net.activation,
                                    lgd.losses.get("squared"), net.scale, train_outer=True, k=2)
        np.testing.assert_allclose(run.sharpness[0], top, rtol=rtol)
    tied = lgd.gd(X, y, net, "squared", stepsize=stepsize.inverse_sharpness(1.0), steps=20, record=record,
                  compute=_compute(case))
    at = np.searchsorted(tied.step, tied.sharpness_step)
    np.testing.assert_allclose(tied.eta[at] * tied.sharpness[:, 0], 1.0,
                               rtol=1e-12 if case.dtype == np.float64 else 1e-6)
    with pytest.raises(ValueError, match="inverse_sharpness needs the sharpness measured"):
        lgd.gd(X, y, net, "squared", stepsize=stepsize.inverse_sharpness(1.0), steps=2, compute="numpy")


def test_the_sharpness_of_repeated_eigenvalues_and_of_a_symmetric_network(backend_dtype):
    """Where Lanczos from one vector falls short: a Hessian whose top eigenvalue is repeated (two linear neurons
    on X = 3 I: H = [[A, A], [A, A]], A = X^T X / n = 4.5 I, eigenvalues 9, 9, 0, 0), and a network started at
    zero (its neurons alike, so that its Hessian keeps invariant subspaces the warm start never leaves): the
    top-k eigenvalues of the dense Hessian at every measured iterate, repeated ones included."""
    pytest.importorskip("scipy")
    case = backend_dtype
    rtol = 1e-9 if case.dtype == np.float64 else 1e-4
    # Sweeps of two stepsizes of widths >= 2: the kernel the other sharpness tests compile (a single run takes a
    # team's, width 1 another): no compile of its own in the suite.
    X, y = (3.0 * np.eye(2)).astype(case.dtype), np.array([1.0, -1.0], dtype=case.dtype)
    pair = lgd.TwoLayerNet(2, activation="identity", scaling=1.0, outer=[1.0, 1.0])
    result = lgd.sweep(X, y, pair, "squared", stepsizes=[0.1, 0.2], steps=4, init="zeros", compute=_compute(case),
                       record=lgd.Record(sharpness_every=2, sharpness_k=2))
    np.testing.assert_allclose(result.sharpness, 9.0, rtol=rtol)
    X, y = lgd.data.xor(n=30)
    X, y = X.astype(case.dtype), y.astype(case.dtype)
    net = lgd.TwoLayerNet(4, activation="leaky_softplus(0.5)")
    result = lgd.sweep(X, y, net, stepsizes=[2.0, 0.5], steps=20, init="zeros", compute=_compute(case),
                       record=lgd.Record(sharpness_every=10, sharpness_k=3))
    assert result.sharpness_step.tolist() == [0, 10, 20]
    for c, eta in enumerate(result.stepsize):
        for t, measured in zip(result.sharpness_step, result.sharpness[c]):
            # W_t from a sweep of t steps (the same bits: where a run stops does not change them)
            W = lgd.sweep(X, y, net, stepsizes=[2.0, 0.5], steps=int(t), init="zeros",
                          compute=_compute(case)).weights[c] if t else result.initial_weights[c]
            H = lgd.hessian.dense_hessian(W.astype(np.float64), result.outer_weights[c].astype(np.float64),
                                          X.astype(np.float64), y.astype(np.float64), net.activation,
                                          lgd.losses.get("logistic"), net.scale)
            top = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
            np.testing.assert_allclose(measured, top, rtol=rtol, atol=rtol * top[0])
    # Four alike tanh neurons, both layers trained: the second eigenvalue is repeated where the basis has
    # converged long before its Krylov space closes (a single Lanczos run gave the next one down as the third).
    X, y = lgd.data.xor(n=24)
    W0 = np.tile(np.random.default_rng(1).standard_normal((1, 2)), (4, 1))
    alike = lgd.TwoLayerNet(4, activation="tanh", outer=[1.0, 1.0, 1.0, 1.0], train_outer=True)
    result = lgd.sweep(X.astype(case.dtype), y.astype(case.dtype), alike, stepsizes=[0.5, 0.2], steps=1,
                       init=W0.astype(case.dtype), compute=_compute(case),
                       record=lgd.Record(sharpness_every=1, sharpness_k=3))
    H = lgd.hessian.dense_hessian(W0, np.ones(4), X, y, alike.activation, lgd.losses.get("logistic"), alike.scale,
                                  train_outer=True)
    top = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
    assert top[1] == pytest.approx(top[2], rel=1e-12) and top[0] > 3 * top[1]
    np.testing.assert_allclose(result.sharpness[:, 0], [top, top], rtol=rtol, atol=rtol * top[0])


def test_the_sharpness_where_the_top_eigenvalues_lie_close(backend_dtype):
    """A tanh net whose neurons saturate (init_scale 3, eta 100): its top two eigenvalues within 6% of each
    other, where Lanczos whose new vectors are orthogonalised once made spurious Ritz values (2-6% off, above
    the largest): the top two of the dense Hessian at the run's last weights."""
    pytest.importorskip("scipy")
    case = backend_dtype
    rtol = 1e-9 if case.dtype == np.float64 else 1e-4
    X, y = lgd.data.separable(n=20, d=3, margin=0.1, seed=1)
    X, y = X.astype(case.dtype), y.astype(case.dtype)
    net = lgd.TwoLayerNet(6, activation="tanh", scaling="ntk")
    result = lgd.sweep(X, y, net, stepsizes=[100.0, 50.0], steps=200, init_scale=3.0, compute=_compute(case),
                       record=lgd.Record(every=200, sharpness_every=20, sharpness_k=2))
    for c in range(2):
        H = lgd.hessian.dense_hessian(result.weights[c].astype(np.float64), result.outer_weights[c].astype(np.float64),
                                      X.astype(np.float64), y.astype(np.float64), net.activation,
                                      lgd.losses.get("logistic"), net.scale)
        top = np.sort(np.linalg.eigvalsh(H))[::-1][:2]
        np.testing.assert_allclose(result.sharpness[c, -1], top, rtol=rtol)
    assert result.sharpness[0, -1, 1] < 0.95 * result.sharpness[0, -1, 0]  # close, yet apart
