"""Numbers at the ends of float64's range: gradient and weight norms beyond 1e+-154 (whose squares under- or
overflow), the stepsize rules that divide by a gradient norm of 1e-200, a sharpness of 1e-300 (and of 0), and
tanh's derivatives where tanh z rounds to 1. Every backend against closed forms (mpmath), the compiled ones
on the same runs as the oracle."""

import math
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from conftest import HOST_CUDA, register_host_cuda

import lgd
from lgd import backends

BACKENDS = ["numpy", "numba", HOST_CUDA.name]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == HOST_CUDA.name:
        register_host_cuda(monkeypatch)
    usable, reason = backends.availability(request.param)
    if not usable:
        pytest.skip(f"backend {request.param} cannot run here: {reason}")
    return request.param


def _gd(backend, X, y, model, loss, **kwargs):
    return lgd.gd(X, y, model, loss, compute=lgd.Compute(backend=backend, progress=False), **kwargs)


@pytest.mark.parametrize("rule", [lgd.stepsize.normalized(10.0), lgd.stepsize.polyak()], ids=repr)
def test_gradient_rules_keep_stepping_where_the_squared_norm_underflows(backend, rule):
    """normalized and Polyak steps on separable data: the gradient falls below 1.5e-154, whose square
    underflows to 0, and the rules still step (a rule tested on |grad|^2 > 0 gave eta 0 there and GD stood)."""
    X, y = lgd.data.separable(n=20, d=3, margin=0.1, seed=0)
    run = _gd(backend, X, y, lgd.Linear(), "logistic", stepsize=rule, steps=2000, init="zeros", record=200)
    assert run.status == "completed"
    assert 0.0 < run.grad_norm[-1] < 1e-154
    assert np.all(run.eta > 0.0) and run.weight_norm[-1] > run.weight_norm[-2]


def test_the_rules_divide_by_the_norm_not_its_square():
    from lgd import stepsize

    assert stepsize.stepsize_at(stepsize.NORMALIZED, 2.0, 0.0, 0.0, 0, 10, 0.5, math.log(0.5), 1e-170, 0.0) \
        == pytest.approx(2e170, abs=0)
    assert stepsize.stepsize_at(stepsize.POLYAK, 0.0, 1.0, 0.0, 0, 10, 1e-300, math.log(1e-300), 1e-160, 0.0) \
        == pytest.approx(1e20, abs=0)
    assert stepsize.stepsize_at(stepsize.NORMALIZED, 2.0, 0.0, 0.0, 0, 10, 0.5, math.log(0.5), 0.0, 0.0) == 0.0


def test_norms_are_exact_across_the_float64_range(backend):
    """grad_norm and weight_norm of a one-weight logistic regression at w = 400 (gradient 1.9e-174), weights
    of 1e-170 and of 1e200 (squares under- and overflowing), and an exponential loss whose gradient is 5e173:
    a finite norm, not a divergence."""
    X1, y1 = np.array([[1.0]]), np.array([1.0])
    run = _gd(backend, X1, y1, lgd.Linear(), "logistic", stepsize=1.0, steps=1, init=np.array([400.0]))
    assert run.grad_norm[0] == pytest.approx(float(1 / (1 + mp.exp(400))), rel=1e-13, abs=0)
    for scale in (1e-170, 1e200):
        w = scale * np.array([1.0, 2.0, -1.0])
        run = _gd(backend, np.eye(3), np.ones(3), lgd.Linear(), "logistic", stepsize=1e-300, steps=1, init=w,
                  divergence=np.inf)
        assert run.weight_norm[0] == pytest.approx(math.sqrt(6.0) * scale, rel=1e-13, abs=0)
        if scale < 1:
            assert run.normalized_margin[0] == pytest.approx(-1 / math.sqrt(6.0), rel=1e-13, abs=0)
    run = _gd(backend, X1, y1, lgd.Linear(), "exponential", stepsize=1.0, steps=1, init=np.array([-400.0]),
              divergence=np.inf)
    assert run.status == "completed"
    assert run.grad_norm[0] == pytest.approx(float(mp.exp(400)), rel=1e-13, abs=0)


def test_a_net_of_tiny_weights_has_the_oracles_norms(backend):
    """A two-layer net of weights of 1e-160: the norms as the oracle's (the closed form's for the weights)."""
    X, y = lgd.data.separable(n=12, d=3, margin=0.1, seed=1)
    net = lgd.TwoLayerNet(4, activation="identity")
    W = 1e-160 * np.random.default_rng(0).standard_normal((4, 3))
    runs = [_gd(name, X, y, net, "logistic", stepsize=1.0, steps=2, init=W.copy()) for name in ("numpy", backend)]
    want = float(mp.sqrt(mp.fsum(mp.mpf(v) ** 2 for v in W.ravel())))
    assert runs[0].weight_norm[0] == pytest.approx(want, rel=1e-13, abs=0)
    assert runs[1].weight_norm[0] == pytest.approx(want, rel=1e-13, abs=0)
    for field in ("grad_norm", "weight_norm"):
        assert np.all(getattr(runs[1], field) > 0)
        np.testing.assert_allclose(getattr(runs[1], field), getattr(runs[0], field), rtol=1e-10)


@pytest.mark.parametrize("w0", [5.0, 200.0, 690.0])
def test_the_sharpness_is_exact_relative_to_its_size(backend, w0):
    """The one-weight logistic regression's Hessian sigmoid(w) sigmoid(-w), down to 1e-300: the numba kernels'
    bisection stopped at 2^-200 (6.2e-61) whatever the eigenvalue."""
    if backend == HOST_CUDA.name:
        pytest.skip("the CUDA backend measures the sharpness through the oracle")
    X1, y1 = np.array([[1.0]]), np.array([1.0])
    run = _gd(backend, X1, y1, lgd.Linear(), "logistic", stepsize=1e-30, steps=1, init=np.array([w0]),
              record=lgd.Record(sharpness_every=1))
    want = float(mp.exp(-w0) / (1 + mp.exp(-w0)) ** 2)
    assert run.sharpness[0, 0] == pytest.approx(want, rel=1e-10, abs=0)


def test_a_tiny_sharpness_in_three_dimensions_and_a_zero_one(backend):
    """Lanczos on a 3 x 3 Hessian of about 1e-290 (as the oracle's eigsh), and a curvature of exactly 0 (the
    flattened exponential loss below u = 0), which came back as -6.2e-61."""
    if backend == HOST_CUDA.name:
        pytest.skip("the CUDA backend measures the sharpness through the oracle")
    X = np.array([[1.0, 0.3, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.4, 1.0], [0.7, -0.5, 0.3]])
    w = np.array([1330.0, 1330.0, 1330.0])
    runs = [_gd(name, X, np.ones(4), lgd.Linear(), "exponential", stepsize=1e-30, steps=1, init=w,
                record=lgd.Record(sharpness_every=1)) for name in ("numpy", backend)]
    H = sum(mp.exp(-mp.mpf(float(x @ w))) * mp.matrix(x) * mp.matrix(x).T for x in X) / 4
    want = float(max(mp.eigsy(H)[0]))
    assert 1e-300 < want < 1e-280
    assert runs[0].sharpness[0, 0] == pytest.approx(want, rel=1e-10, abs=0)
    assert runs[1].sharpness[0, 0] == pytest.approx(want, rel=1e-10, abs=0)
    run = _gd(backend, np.array([[1.0]]), np.array([1.0]), lgd.Linear(), "flattened_exponential", stepsize=1e-3,
              steps=1, init=np.array([-3.0]), record=lgd.Record(sharpness_every=1))
    assert run.sharpness[0, 0] == 0.0


Z_LARGE = [0.5, 5.0, 9.0, 15.0, 18.0, 19.5, 25.0, 40.0, 100.0, 300.0]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_tanh_derivatives_are_sech_squared_at_large_z(dtype, rtol):
    """The catalog's tanh' = sech^2 z and tanh'' = -2 tanh z sech^2 z against mpmath, either sign, in float64
    and float32 (1 - tanh^2 z was 4% off at z = 18 and 0 from 19.1 in float64, wrong from about 5 in float32);
    0 only where sech^2 z itself is below the dtype's smallest number."""
    tanh = lgd.activations.get("tanh")
    z = np.array(Z_LARGE + [-v for v in Z_LARGE], dtype=dtype)
    dphi, ddphi = tanh.dphi(z), tanh.ddphi(z)
    assert dphi.dtype == dtype and ddphi.dtype == dtype
    tiny = np.finfo(dtype).smallest_subnormal
    for k, v in enumerate(z):
        s2 = mp.sech(mp.mpf(float(v))) ** 2
        for got, want in ((dphi[k], s2), (ddphi[k], -2 * mp.tanh(mp.mpf(float(v))) * s2)):
            if abs(want) < 100 * tiny:
                assert abs(float(got)) <= 200 * tiny
            else:
                assert float(got) == pytest.approx(float(want), rel=rtol, abs=0), (v, got, want)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_kernels_tanh_derivatives_are_the_catalogs_at_large_z(dtype):
    """activate_span's tanh branch (phi' and phi'') against the catalog where tanh z has rounded to 1."""
    pytest.importorskip("numba")
    from numba import njit

    from lgd.kernels.numba_cpu.formulas import TANH, activate_span

    @njit
    def rows(z):
        p, q, r = np.empty_like(z), np.empty_like(z), np.empty_like(z)
        activate_span(TANH, 0.0, z, p, q, r, z.size)
        return q, r

    z = np.array(Z_LARGE + [-v for v in Z_LARGE], dtype=dtype)
    q, r = rows(z)
    tanh = lgd.activations.get("tanh")
    rtol = 1e-14 if dtype == "float64" else 2e-6
    tiny = float(np.finfo(dtype).smallest_subnormal)
    np.testing.assert_allclose(q, tanh.dphi(z), rtol=rtol, atol=200 * tiny)
    np.testing.assert_allclose(r, tanh.ddphi(z), rtol=rtol, atol=200 * tiny)
    assert q[list(z).index(18.0)] > 0 and q[list(z).index(25.0)] > 0


def test_the_cuda_kernels_threshold_of_exact_squares_is_lgd_backends():
    import re

    from lgd.kernels import cuda_host

    source = (Path(cuda_host.__file__).parent / "cuda" / "lgd.cu").read_text()
    assert float(re.search(r"SQUARES_EXACT_FROM = ([0-9.e+-]+);", source).group(1)) == backends.SQUARES_EXACT_FROM


def test_gelu_keeps_its_subnormal_values():
    """gelu(z) = z Phi(z) and gelu'(z) for z in [-40, -37], against mpmath: scipy's erfc is 0 from z = -37.68 on
    (cephes), where both are still subnormal float64s, and gelu(-38) was -0.0 for -1.096e-314. Normal values to
    1e-12 relative, subnormals to 2 of their steps (numba's x erfc(-x / sqrt 2) / 2, from libm, keeps them)."""
    gelu = lgd.activations.get("gelu")
    z = np.linspace(-40.0, -37.0, 61)
    phi, dphi = gelu.phi(z), gelu.dphi(z)
    tiny = np.finfo(np.float64).smallest_subnormal
    for v, got, got_d in zip(z, phi, dphi):
        x = mp.mpf(float(v))
        want = float(x * mp.ncdf(x))
        assert abs(float(got) - want) <= max(1e-12 * abs(want), 2 * tiny), (v, got, want)
        # phi' = Phi + z N: its Phi term (1 / z^2 of it) was lost from z = -37.68 on; where N itself is a
        # subnormal (z < -37.7), z N carries N's rounding, not checked here.
        want = float(mp.ncdf(x) + x * mp.npdf(x))
        if abs(want) > 1e-309:
            assert float(got_d) == pytest.approx(want, rel=1e-10, abs=0), (v, got_d, want)
    assert gelu.phi(-38.0) == pytest.approx(-1.096462777e-314, rel=1e-9, abs=0)
    assert gelu.phi(np.array([-38.0], dtype=np.float32))[0] == 0.0
