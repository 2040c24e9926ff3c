"""Hessian-vector products against finite differences of the oracle gradient; sharpness against dense Hessians."""

import itertools

import numpy as np
import pytest

import lgd
from lgd import hessian
from lgd.models import evaluate

CASES = list(itertools.product(lgd.activations.NAMES, lgd.losses.NAMES, (False, True)))


def _problem(loss, seed, n=12, d=3, m=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) / 2
    y = rng.standard_normal(n) if not loss.margin else np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return X, y, rng.standard_normal((m, d)), rng.standard_normal(m)


def _oracle_gradient(activation, loss, X, y, scale, train_outer, shape, a_fixed):
    m, d = shape

    def gradient(params):
        W = params[:m * d].reshape(m, d)
        a = params[m * d:] if train_outer else a_fixed
        ev = evaluate(W, a, X, y, activation, loss, scale, train_outer)
        return np.concatenate([ev.grad_W.ravel()] + ([ev.grad_a] if train_outer else []))

    return gradient


@pytest.mark.parametrize("activation_name, loss_name, train_outer", CASES)
def test_hvp_matches_finite_differences_of_the_oracle_gradient(activation_name, loss_name, train_outer):
    activation, loss = lgd.activations.get(activation_name), lgd.losses.get(loss_name)
    X, y, W, a = _problem(loss, seed=CASES.index((activation_name, loss_name, False)))
    scale = 0.5
    gradient = _oracle_gradient(activation, loss, X, y, scale, train_outer, W.shape, a)
    params = np.concatenate([W.ravel()] + ([a] if train_outer else []))
    eps = 1e-6
    columns = [(gradient(params + eps * e) - gradient(params - eps * e)) / (2 * eps) for e in np.eye(params.size)]
    finite_differences = np.stack(columns, axis=1)
    dense = hessian.dense_hessian(W, a, X, y, activation, loss, scale, train_outer=train_outer)
    assert dense.shape == (params.size, params.size)
    np.testing.assert_allclose(dense, finite_differences, rtol=0, atol=1e-6 * np.abs(dense).max() + 1e-12)
    # A single product along a random direction agrees with the dense matrix.
    direction = np.random.default_rng(3).standard_normal(params.size)
    product = hessian.hvp(W, a, X, y, activation, loss, scale, direction, train_outer=train_outer)
    np.testing.assert_allclose(product, dense @ direction, rtol=1e-12, atol=1e-14 * np.abs(dense).max())


@pytest.mark.parametrize("activation_name, loss_name, train_outer",
                         [(act, loss, outer) for act, loss, outer in CASES
                          if act in ("leaky_softplus", "gelu", "tanh", "relu")])
def test_lanczos_sharpness_matches_the_dense_hessian(activation_name, loss_name, train_outer):
    activation, loss = lgd.activations.get(activation_name), lgd.losses.get(loss_name)
    X, y, W, a = _problem(loss, seed=5, n=30, d=8, m=8)  # 64 (+8) parameters: the Lanczos path
    assert W.size >= hessian.DENSE_PARAMETERS
    dense = hessian.dense_hessian(W, a, X, y, activation, loss, 0.3, train_outer=train_outer)
    np.testing.assert_allclose(dense, dense.T, rtol=0, atol=1e-13 * np.abs(dense).max())
    expected = np.linalg.eigvalsh(dense)[::-1][:3]
    top = hessian.sharpness(W, a, X, y, activation, loss, 0.3, train_outer=train_outer, k=3)
    np.testing.assert_allclose(top, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())


def test_linear_model_sharpness_is_the_top_eigenvalue_of_the_weighted_covariance():
    # Logistic regression: H = (1/n) sum_i loss''(y_i w.x_i) x_i x_i^T.
    X, y = lgd.data.separable(n=40, d=6, seed=2)
    w = np.random.default_rng(0).standard_normal(6)
    loss = lgd.losses.get("logistic")
    weights = loss.d2(y * (X @ w)) / len(y)
    expected = np.linalg.eigvalsh((X * weights[:, None]).T @ X)[::-1][:2]
    top = hessian.sharpness(w, np.ones(1), X, y, "identity", "logistic", 1.0, k=2)
    np.testing.assert_allclose(top, expected, rtol=1e-12)


def test_points_keeps_the_first_training_points():
    X, y = lgd.data.xor(n=50)
    W, a = np.random.default_rng(1).standard_normal((30, 2)), np.where(np.arange(30) % 2, -1.0, 1.0)
    args = ("tanh", "squared", 1 / 30)
    np.testing.assert_allclose(hessian.sharpness(W, a, X, y, *args, points=20),
                               hessian.sharpness(W, a, X[:20], y[:20], *args), rtol=1e-10)


def test_float32_weights_give_float32_products():
    X, y = lgd.data.xor(n=20)
    W = np.random.default_rng(1).standard_normal((30, 2)).astype(np.float32)
    a = np.ones(30, dtype=np.float32)
    product = hessian.hvp(W, a, X, y, "gelu", "logistic", 1 / 30, np.ones(60))
    assert product.dtype == np.float32
    top32 = hessian.sharpness(W, a, X, y, "gelu", "logistic", 1 / 30)
    top64 = hessian.sharpness(W.astype(np.float64), a.astype(np.float64), X, y, "gelu", "logistic", 1 / 30)
    np.testing.assert_allclose(top32, top64, rtol=1e-4)


def test_bad_arguments_raise():
    X, y = lgd.data.xor(n=10)
    W, a = np.zeros((2, 2)), np.ones(2)
    with pytest.raises(ValueError, match="k"):
        hessian.sharpness(W, a, X, y, "tanh", "logistic", 0.5, k=0)
    with pytest.raises(ValueError, match="exceeds"):
        hessian.sharpness(W, a, X, y, "tanh", "logistic", 0.5, k=5)
    with pytest.raises(ValueError, match="points"):
        hessian.sharpness(W, a, X, y, "tanh", "logistic", 0.5, points=0)
    with pytest.raises(ValueError, match="shapes"):
        hessian.hvp(W, np.ones(3), X, y, "tanh", "logistic", 0.5, np.ones(4))
    with pytest.raises(ValueError, match=r"vector must have 4 entries \(W's 4\), got 6"):
        hessian.hvp(W, a, X, y, "tanh", "logistic", 0.5, np.ones(6))
    with pytest.raises(ValueError, match=r"vector must have 6 entries \(W's 4 and then m = 2 for a\), got 4"):
        hessian.hvp(W, a, X, y, "tanh", "logistic", 0.5, np.ones(4), train_outer=True)
    # the data are checked as lgd.gd checks them (a y of one label was broadcast, 0/1 labels taken)
    with pytest.raises(ValueError, match=r"y must be a 1-D array of length 10 \(rows of X\), got shape \(1,\)"):
        hessian.dense_hessian(W, a, X, y[:1], "tanh", "logistic", 0.5)
    with pytest.raises(ValueError, match=r"labels \+1 or -1 for the logistic loss"):
        hessian.sharpness(W, a, X, (y + 1) / 2, "tanh", "logistic", 0.5)
    with pytest.raises(ValueError, match="vector must hold real numbers, got dtype complex128"):
        hessian.hvp(W, a, X, y, "tanh", "logistic", 0.5, np.ones(4, dtype=complex))
    # integer weights are computed in float64 (they truncated X and the scale 0.5 to 0)
    W_int = np.array([[1, 2], [3, -1]])
    np.testing.assert_array_equal(hessian.sharpness(W_int, a, X, y, "tanh", "logistic", 0.5, k=2),
                                  hessian.sharpness(W_int.astype(float), a, X, y, "tanh", "logistic", 0.5, k=2))
    assert hessian.sharpness(W_int, a, X, y, "tanh", "logistic", 0.5)[0] > 0


def test_missing_scipy_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    X, y = lgd.data.xor(n=10)
    W, a = np.zeros((30, 2)), np.ones(30)
    with pytest.raises(ImportError, match=r'lgd\[analysis\]'):
        hessian.sharpness(W, a, X, y, "tanh", "logistic", 1 / 30)


# --- the GD driver records the sharpness of W_t at t = 0, s, 2s, ... and T


def test_driver_records_the_sharpness_of_the_iterate_at_each_sharpness_step(tmp_path):
    X, y = lgd.data.xor(n=30, seed=2)
    net = lgd.TwoLayerNet(30, activation="tanh", scaling="ntk", train_outer=True)
    run = lgd.gd(X, y, net, "squared", stepsize=1.5, steps=23, seed=3, compute="numpy",
                 record=lgd.Record(sharpness_every=5, sharpness_k=2, sharpness_points=20))
    assert run.sharpness_step.tolist() == [0, 5, 10, 15, 20, 23]
    assert run.sharpness.shape == (6, 2) and run.sharpness_limit == pytest.approx(2 / 1.5)
    # Replay GD by hand and compare with the Hessian of W_t on the first 20 points.
    W = np.random.default_rng(3).standard_normal((30, 2))
    a = net.outer_weights(None)
    loss = lgd.losses.get("squared")
    for t in range(24):
        if t in run.sharpness_step:
            expected = np.linalg.eigvalsh(hessian.dense_hessian(W, a, X[:20], y[:20], net.activation, loss, net.scale,
                                                                train_outer=True))[::-1][:2]
            slot = run.sharpness_step.tolist().index(t)
            np.testing.assert_allclose(run.sharpness[slot], expected, rtol=1e-8)
        ev = evaluate(W, a, X, y, net.activation, loss, net.scale, True)
        W, a = W - 1.5 * ev.grad_W, a - 1.5 * ev.grad_a
    assert run.meta["sharpness_seconds"] is None and run.meta["sharpness_every"] == 5  # measured inside the steps
    run.save(tmp_path / "run.npz")
    loaded = lgd.load(tmp_path / "run.npz")
    np.testing.assert_array_equal(loaded.sharpness, run.sharpness)
    np.testing.assert_array_equal(loaded.sharpness_step, run.sharpness_step)
    plain = lgd.gd(X, y, net, "squared", stepsize=1.5, steps=3, compute="numpy")
    assert plain.sharpness is None and lgd.load(_saved(plain, tmp_path)).sharpness is None


def _saved(run, folder):
    path = folder / "plain.npz"
    run.save(path)
    return path


def test_sweep_sharpness_stops_at_divergence_and_per_run_views_follow():
    X, y = lgd.data.xor(n=20)
    net = lgd.TwoLayerNet(30, activation="identity", train_outer=True)
    grid = lgd.sweep(X, y, net, "squared", stepsizes=[1.0, 1e3], steps=200, compute="numpy",
                     record=lgd.Record(sharpness_every=10))
    assert grid.status == ["completed", "diverged"]
    assert grid.sharpness.shape == (2, 21, 1) and np.all(np.isfinite(grid.sharpness[0]))
    diverged_at = grid.diverged_step[1]
    assert np.all(np.isnan(grid.sharpness[1][grid.sharpness_step >= diverged_at]))
    view = grid[1]
    assert np.all(view.sharpness_step < diverged_at) and view.sharpness.shape == (view.sharpness_step.size, 1)
    np.testing.assert_array_equal(grid[0].sharpness, grid.sharpness[0])
    np.testing.assert_allclose(grid.sharpness_limit, [2.0, 2e-3])


def test_sharpness_measured_between_chunks_is_not_counted_as_gd_time(monkeypatch):
    """A backend that does not measure the sharpness inside its steps (the cupy backend) gets it measured by
    the driver between chunks, with lgd.hessian, timed apart from the GD steps."""
    import time

    from lgd.backends import _numpy

    def slow_sharpness(*args, k=1, **kwargs):
        time.sleep(0.05)
        return np.zeros(k)

    monkeypatch.setattr(_numpy.Runner, "measures_sharpness", False)
    monkeypatch.setattr(hessian, "sharpness", slow_sharpness)
    X, y = lgd.data.xor(n=20)
    run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=1.0, steps=20, compute="numpy",
                 record=lgd.Record(sharpness_every=2))
    assert run.sharpness_step.size == 11
    assert run.meta["sharpness_seconds"] >= 11 * 0.05
    assert run.seconds < 11 * 0.05


def test_sharpness_arguments_are_checked():
    for bad, name in (({"sharpness_every": 0}, "sharpness_every"), ({"sharpness_every": 2, "sharpness_k": 0},
                      "sharpness_k"), ({"sharpness_every": 2, "sharpness_points": 1.5}, "sharpness_points")):
        with pytest.raises(ValueError, match=f"Record.{name} must be an integer >= 1"):
            lgd.Record(**bad)


@pytest.mark.parametrize("k", [1, 3])
def test_the_sharpness_of_a_hessian_of_zero_above_the_dense_cutoff_is_zero(k):
    """A Hessian of exactly 0 on more than DENSE_PARAMETERS parameters (ReLU at zero weights: phi = phi' =
    phi'' = 0): ARPACK's first product is 0 and it raised "error -9: Starting vector is zero"."""
    X, y = lgd.data.xor(n=40)
    net = lgd.TwoLayerNet(30, activation="relu")
    assert 60 > hessian.DENSE_PARAMETERS
    top = hessian.sharpness(np.zeros((30, 2)), net.outer_weights(None), X, y, "relu", "logistic", 1.0, k=k)
    np.testing.assert_array_equal(top, np.zeros(k))
    run = lgd.gd(X, y, net, "logistic", stepsize=1.0, steps=2, init="zeros", compute="numpy",
                 record=lgd.Record(sharpness_every=1, sharpness_k=k))
    assert run.sharpness.size == 3 * k and np.all(run.sharpness == 0.0)
