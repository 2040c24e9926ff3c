"""Activations and losses: derivatives against finite differences and closed forms, overflow safety."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lgd
from lgd import activations, losses

ACTIVATIONS = [activations.get(name) for name in activations.NAMES] + [
    activations.get("leaky_softplus(0.2)"), activations.get("leaky_relu(0.3)")]
LOSSES = [losses.get(name) for name in losses.NAMES] + [
    losses.get("flattened_exponential(2.5)"), losses.get("flattened_polynomial(0.5)")]
SMOOTH = {"softplus", "leaky_softplus", "gelu", "silu", "tanh", "identity"}


def _central(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.spec)
@settings(max_examples=60, deadline=None)
@given(z=st.floats(-30, 30))
def test_activation_derivatives_match_finite_differences(act, z):
    if act.name not in SMOOTH and abs(z) < 1e-3:
        return  # the kink of (leaky) ReLU
    x = np.array(z)
    h = 1e-6 * max(1.0, abs(z))
    assert act.dphi(x) == pytest.approx(_central(act.phi, x, h), rel=1e-6, abs=1e-7)
    assert act.ddphi(x) == pytest.approx(_central(act.dphi, x, h), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.spec)
@settings(max_examples=60, deadline=None)
@given(u=st.floats(-20, 30))
def test_loss_derivatives_match_finite_differences(loss, u):
    if loss.name.startswith("flattened") and abs(u) < 1e-3:
        return  # loss'' jumps at 0 (the loss is C^1 only)
    x = np.array(u)
    h = 1e-6 * max(1.0, abs(u))
    assert loss.d1(x) == pytest.approx(_central(loss.value, x, h), rel=1e-6, abs=1e-9)
    assert loss.d2(x) == pytest.approx(_central(loss.d1, x, h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.spec)
def test_activations_finite_and_dtype_kept_at_extremes(act, dtype):
    z = np.array([-1e6, -1e3, -50.0, -1e-8, 0.0, 1e-8, 50.0, 1e3, 1e6], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = [act.phi(z), act.dphi(z), act.ddphi(z)]
    for v in values:
        assert v.dtype == dtype
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.spec)
def test_losses_finite_and_dtype_kept_at_extremes(loss, dtype):
    u = np.array([-1e6, -1e3, -50.0, 0.0, 50.0, 1e3, 1e6], dtype=dtype)
    if loss.name == "exponential":
        u = u[u > -50]  # e^{-u} truly overflows below; the driver reports that as divergence
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = [loss.value(u), loss.d1(u), loss.d2(u)]
    for v in values:
        assert v.dtype == dtype
        assert np.all(np.isfinite(v))


def test_closed_forms_at_the_tails():
    u = np.array([40.0, 700.0, -40.0])
    logistic = losses.get("logistic")
    # log(1 + e^-u) ~ e^-u for large u: relative accuracy, not absolute, is what a risk of 1e-15 needs.
    assert logistic.value(u)[0] == pytest.approx(math.exp(-40.0), rel=1e-15)
    assert logistic.value(u)[1] == pytest.approx(math.exp(-700.0), rel=1e-14)
    assert logistic.value(u)[2] == pytest.approx(40.0 + math.log1p(math.exp(-40.0)), rel=1e-15)
    assert logistic.d1(u)[0] == pytest.approx(-math.exp(-40.0), rel=1e-14)
    softplus = activations.get("softplus")
    assert softplus.phi(np.array(-700.0)) == pytest.approx(math.exp(-700.0), rel=1e-14)
    assert activations.get("leaky_softplus").phi(np.array(0.0)) == pytest.approx(0.5 * math.log(2.0))
    gelu = activations.get("gelu")
    assert gelu.phi(np.array(1.0)) == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))), rel=1e-15)
    assert losses.get("flattened_exponential(2)").value(np.array(-3.0)) == pytest.approx(7.0)
    assert losses.get("flattened_polynomial(2)").value(np.array(1.0)) == pytest.approx(0.25)
    assert losses.get("exponential").value(np.array(-800.0)) == np.inf
    assert losses.get("logistic").at_zero == pytest.approx(math.log(2.0))


def test_specs_parse_and_round_trip():
    assert activations.get("leaky_softplus").param == 0.5
    assert activations.get(" leaky_softplus( 0.25 ) ").param == 0.25
    assert activations.get("swish") == activations.get("silu")
    for entry in ACTIVATIONS:
        assert activations.get(entry.spec) == entry
    for entry in LOSSES:
        assert losses.get(entry.spec) == entry
    # to the last bit, short where that is exact: a result's metadata rebuilds the model that ran
    assert activations.get("leaky_softplus(0.1234567)").spec == "leaky_softplus(0.1234567)"
    assert activations.get("leaky_relu(1e-5)").spec == "leaky_relu(1e-05)"
    third = activations.leaky_softplus(1 / 3)
    assert activations.get(third.spec) == third and losses.get("flattened_exponential(2)").spec == \
        "flattened_exponential(2)"
    wide = losses.get(f"flattened_polynomial({1 / 7!r})")
    assert losses.get(wide.spec) == wide
    net = lgd.TwoLayerNet(3, activation=third)
    run = lgd.gd(*lgd.data.wu_toy(), net, wide, stepsize=1.0, steps=2, compute="numpy")
    assert run.model.activation == third and run.meta["loss"] == wide.spec


class Softsign(activations.Activation):
    """An activation of a user's own (no kernel has it): z / (1 + |z|)."""

    name = "softsign"

    def phi(self, z):
        return np.asarray(z) / (1 + np.abs(z))

    def dphi(self, z):
        return 1 / (1 + np.abs(z)) ** 2

    def ddphi(self, z):
        return -2 * np.sign(z) / (1 + np.abs(z)) ** 3


class LogCosh(losses.Loss):
    """A loss of a user's own, of the residual: log cosh r."""

    name, margin = "logcosh", False

    def value(self, r):
        r = np.abs(r)
        return r + np.log1p(np.exp(-2 * r)) - math.log(2.0)

    def d1(self, r):
        return np.tanh(r)

    def d2(self, r):
        return 1 - np.tanh(r) ** 2


def test_entries_of_your_own_are_known_by_name_once_given(tmp_path):
    """The names an entry of the user's own leaves in a result's metadata rebuild it in the process that ran
    it: the model, the phase, a resumed checkpoint; a name never given is refused, saying so."""
    with pytest.raises(ValueError, match="unknown activation 'softsign'.*of your own is known by name"):
        activations.get("softsign")
    X, y = lgd.data.xor(n=20)
    act, loss = Softsign(), LogCosh()
    run = lgd.gd(X, y, lgd.TwoLayerNet(4, activation=act), loss, steps=5, compute="numpy")
    assert run.model.activation is act and activations.get("softsign") is act and losses.get("logcosh") is loss
    assert run.phase.peak_risk == pytest.approx(run.risk.max())
    path = tmp_path / "own.ckpt"
    done = lgd.sweep(X, y, lgd.TwoLayerNet(4, activation=act), loss, stepsizes=[1.0], steps=20, compute="numpy",
                     checkpoint=path)
    resumed = lgd.resume(path)
    assert resumed.status == ["completed"] and np.array_equal(resumed.risk, done.risk)


class RetouchedTanh(activations.tanh):
    """A tanh of a user's own that keeps the catalog's name."""

    def phi(self, z):
        return 2 * np.tanh(z)


class ScaledLogistic(losses.logistic):
    def value(self, r):
        return 2 * super().value(r)


def test_entries_of_your_own_are_equal_only_to_themselves():
    """Entries of a user's own share a code (none): equality and hashes tell them apart by class and name."""
    assert Softsign() == Softsign() and hash(Softsign()) == hash(Softsign())
    assert Softsign() != RetouchedSoftsign() and len({Softsign(), RetouchedSoftsign()}) == 2
    assert activations.get("swish") == activations.get("silu")


class RetouchedSoftsign(activations.Activation):
    name = "softsign2"


def test_an_entry_of_your_own_under_a_catalog_name_is_refused():
    """A subclass of a catalog entry that keeps the entry's name would be recorded, and rebuilt from a
    result (run.model, lgd.resume), as the catalog's: refused where it is passed, naming both classes."""
    with pytest.raises(ValueError, match="activation 'tanh' is a RetouchedTanh, not the catalog's tanh: give"):
        lgd.TwoLayerNet(3, activation=RetouchedTanh())
    with pytest.raises(ValueError, match="loss 'logistic' is a ScaledLogistic, not the catalog's logistic"):
        lgd.gd(*lgd.data.xor(n=8), lgd.TwoLayerNet(3), ScaledLogistic(), steps=1, compute="numpy")
    assert activations.get(activations.tanh()).name == "tanh" and activations.get(activations.silu()).name == "silu"


@pytest.mark.parametrize("spec, message", [
    ("sigmoidal", "unknown activation 'sigmoidal'; valid: gelu, identity"),
    ("relu(0.1)", "takes no parameter"),
    ("leaky_softplus(x)", "is not a number"),
    ("leaky_softplus(1.5)", r"must lie in \[0.0, 1.0\]"),
    ("leaky_softplus(0.5", "cannot parse"),
])
def test_bad_activation_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        activations.get(spec)


@pytest.mark.parametrize("spec, message", [
    ("hinge", "unknown loss 'hinge'; valid: exponential, flattened_exponential"),
    ("flattened_exponential(0)", r"must lie in \(0.0, inf\), got 0.0"),
    ("flattened_exponential(inf)", r"must lie in \(0.0, inf\), got inf"),
    ("flattened_polynomial(-1)", "must lie in"),
])
def test_bad_loss_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        losses.get(spec)
    with pytest.raises(TypeError, match="loss must be a name"):
        losses.get(3)


@pytest.mark.parametrize("catalog", [lgd.activations, lgd.losses], ids=["activations", "losses"])
def test_one_table_of_codes(catalog):
    """Every entry has its own code, the codes are 0, 1, 2, ... in ENTRIES' order, every name resolves to
    its entry, and the margin rule is the entries' own."""
    codes = [entry.code for entry in catalog.ENTRIES]
    assert codes == list(range(len(codes)))
    assert catalog.CODES == {entry.name: entry.code for entry in catalog.ENTRIES}
    assert set(catalog.NAMES) == set(catalog.CODES)
    for name in catalog.NAMES:
        assert catalog.get(name).code == catalog.CODES[name]
    if catalog is lgd.losses:
        assert catalog.MARGIN_CODES == {entry.code for entry in catalog.ENTRIES if entry.margin}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=200, deadline=None)
@given(u=st.floats(-1e6, 1e6))
def test_every_formula_is_finite_up_to_one_million(dtype, u):
    x = np.array([u], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for act in ACTIVATIONS:
            for value in (act.phi(x), act.dphi(x), act.ddphi(x)):
                assert value.dtype == dtype and np.isfinite(value).all(), act.spec
        for loss in LOSSES:
            if loss.name == "exponential" and u < -80:
                continue  # e^{-u} itself overflows there: the driver reports divergence
            for value in (loss.value(x), loss.d1(x), loss.d2(x)):
                assert value.dtype == dtype and np.isfinite(value).all(), loss.spec
