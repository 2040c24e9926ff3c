"""The numpy oracle (lgd.models.evaluate): gradients against finite differences and closed forms."""

import math

import numpy as np
import pytest

import lgd
from lgd import activations, losses
from lgd.models import evaluate, predict

MODELS = {
    "mean_field": lambda act: lgd.TwoLayerNet(5, activation=act),
    "ntk_random_trained": lambda act: lgd.TwoLayerNet(4, activation=act, scaling="ntk", outer="random",
                                                      train_outer=True),
    "scale_0.7": lambda act: lgd.TwoLayerNet(3, activation=act, scaling=0.7, outer=[1.0, -0.5, 2.0]),
}


def _problem(loss, seed=0, n=7, d=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0) if loss.margin else rng.standard_normal(n)
    return X, y, rng


def _risk(W, a, X, y, act, loss, scale):
    return evaluate(W, a, X, y, act, loss, scale).risk


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("loss_name", losses.NAMES)
@pytest.mark.parametrize("act_name", activations.NAMES)
def test_gradient_matches_finite_differences(act_name, loss_name, model_name):
    loss = losses.get(loss_name)
    model = MODELS[model_name](act_name)
    X, y, rng = _problem(loss)
    W = 0.8 * rng.standard_normal((model.width, X.shape[1]))
    a = model.outer_weights(rng)
    act = model.activation
    ev = evaluate(W, a, X, y, act, loss, model.scale, model.train_outer)
    h = 1e-6
    numeric = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        numeric[idx] = (_risk(W + E, a, X, y, act, loss, model.scale)
                        - _risk(W - E, a, X, y, act, loss, model.scale)) / (2 * h)
    np.testing.assert_allclose(ev.grad_W, numeric, rtol=1e-5, atol=1e-8)
    if model.train_outer:
        numeric_a = np.array([(_risk(W, a + h * e, X, y, act, loss, model.scale)
                               - _risk(W, a - h * e, X, y, act, loss, model.scale)) / (2 * h)
                              for e in np.eye(model.width)])
        np.testing.assert_allclose(ev.grad_a, numeric_a, rtol=1e-5, atol=1e-8)
    else:
        assert ev.grad_a is None


def test_linear_logistic_closed_form():
    X, y, rng = _problem(losses.get("logistic"), n=9, d=4)
    w = rng.standard_normal(4)
    ev = evaluate(w[None, :], np.ones(1), X, y, activations.get("identity"), losses.get("logistic"), 1.0)
    margins = y * (X @ w)
    assert ev.risk == pytest.approx(np.mean(np.log1p(np.exp(-margins))), rel=1e-14)
    expected = -(X * (y / (1 + np.exp(margins)))[:, None]).mean(axis=0)
    np.testing.assert_allclose(ev.grad_W[0], expected, rtol=1e-13)
    assert ev.margin == pytest.approx(margins.min())
    assert ev.accuracy == pytest.approx(np.mean(margins > 0))


def test_zero_weights_give_loss_at_zero_and_mean_field_outputs():
    X, y, _ = _problem(losses.get("logistic"))
    net = lgd.TwoLayerNet(4)  # alternating outer weights: the outputs cancel at W = 0
    ev = evaluate(np.zeros((4, 3)), net.outer_weights(None), X, y, net.activation, losses.get("logistic"), net.scale)
    assert ev.risk == pytest.approx(math.log(2.0))
    np.testing.assert_allclose(ev.outputs, 0.0, atol=1e-16)
    W = np.ones((4, 3))
    f = predict(W, np.array([1.0, 1, 1, 1]), X, activations.get("identity"), net.scale)
    np.testing.assert_allclose(f, X.sum(axis=1), rtol=1e-14)  # (1/m) * m * (1 . x)


def test_neuron_margins_definition():
    X, y, rng = _problem(losses.get("logistic"))
    net = lgd.TwoLayerNet(3, activation="tanh", outer=[1.0, -1.0, 0.5])
    W = rng.standard_normal((3, 3))
    ev = evaluate(W, net.outer, X, y, net.activation, losses.get("logistic"), net.scale)
    for j in range(3):
        assert ev.neuron_margins[j] == pytest.approx(min(y * net.outer[j] * np.tanh(X @ W[j])))


@pytest.mark.parametrize("train_outer", [False, True])
def test_the_normalized_margin_of_a_homogeneous_net_does_not_change_with_its_scale(train_outer):
    """margin / ||theta||^L over the L trained layers (Cai et al.): a ReLU net's margin grows as c^L when its
    trained weights grow as c, so the normalized margin stays."""
    X, y = lgd.data.xor(n=20)
    W0, a0 = np.random.default_rng(0).standard_normal((4, 2)), np.array([1.0, -1.0, 1.0, -1.0])
    runs = []
    for c in (1.0, 10.0):
        net = lgd.TwoLayerNet(4, "relu", outer=c * a0 if train_outer else a0, train_outer=train_outer)
        runs.append(lgd.gd(X, y, net, stepsize=1.0, steps=1, init=c * W0, compute="numpy"))
    small, large = runs
    assert large.margin[0] == pytest.approx(small.margin[0] * (100.0 if train_outer else 10.0), rel=1e-12)
    assert large.normalized_margin[0] == pytest.approx(small.normalized_margin[0], rel=1e-12)
    norm_sq = np.sum(W0 ** 2) + (np.sum(a0 ** 2) if train_outer else 0.0)
    assert small.normalized_margin[0] == pytest.approx(small.margin[0] / norm_sq ** (1.0 if train_outer else 0.5))


def test_float32_stays_float32():
    X, y, rng = _problem(losses.get("logistic"))
    X, y = X.astype(np.float32), y.astype(np.float32)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    a = np.ones(5, dtype=np.float32)
    for act in activations.NAMES:
        ev = evaluate(W, a, X, y, activations.get(act), losses.get("logistic"), 0.2, True)
        assert ev.grad_W.dtype == np.float32 and ev.grad_a.dtype == np.float32
        assert np.asarray(ev.risk).dtype == np.float32
