"""Every compiled backend against the numpy oracle, case by case: the catalogs' activations and losses, the
models, float64 and float32, whole traces, divergence, and codes a kernel does not know.

The cases come from tests/conftest.py (``compiled_backend_dtype``) and from the catalogs, so a new
activation, loss or backend is tested here without editing this file.
"""

import numpy as np
import pytest
from conftest import (ACTIVATIONS, LOSSES, MODELS, assert_traces_close, initial_state, make_problem, problem_data,
                      run_backend)

import lgd
from lgd import backends
from lgd.backends import Trace, record_steps

ORACLE = backends.resolve("numpy")
ONE_STEP_CASES = ([(model, act, loss) for model in MODELS for act in ACTIVATIONS for loss in LOSSES]
                  + [("linear", "identity", loss) for loss in LOSSES])


def _model(name, act):
    return lgd.Linear() if name == "linear" else MODELS[name](act)


@pytest.mark.parametrize("model_name, act, loss", ONE_STEP_CASES, ids=["-".join(c) for c in ONE_STEP_CASES])
def test_one_step_matches_the_oracle(compiled_backend_dtype, model_name, act, loss):
    """Risk, gradient (through W_1) and every record of step 0 from the same iterate."""
    case = compiled_backend_dtype
    model = _model(model_name, act)
    problem = make_problem(model, loss, case.dtype)
    expected = run_backend(ORACLE, model, problem, [0.7], steps=1)
    actual = run_backend(case.backend, model, problem, [0.7], steps=1)
    assert_traces_close(expected, actual, rtol=case.rtol_one_step, atol=case.rtol_one_step * 1e-3)


WHOLE_TRACE_CASES = [(model, act, loss) for model in MODELS for act in ("leaky_softplus", "gelu", "tanh", "relu")
                     for loss in LOSSES] + [("linear", "identity", loss) for loss in LOSSES]


@pytest.mark.parametrize("model_name, act, loss", WHOLE_TRACE_CASES, ids=["-".join(c) for c in WHOLE_TRACE_CASES])
def test_whole_traces_match_the_oracle(compiled_backend_dtype, model_name, act, loss):
    """A few hundred steps at a small stepsize, in chunks as the driver advances them: every recorded field.
    The host build of the CUDA kernels runs a block's threads as host threads, a hundred times slower than
    the kernel: it takes 40 steps in chunks of 13, the same code at every step and every chunk boundary."""
    case = compiled_backend_dtype
    model = _model(model_name, act)
    problem = make_problem(model, loss, case.dtype)
    steps = 300 if case.dtype == np.float64 else 100
    chunk = 41
    if case.backend.name == "cuda-host":
        steps, chunk = 40, 13
    expected = run_backend(ORACLE, model, problem, [0.3], steps=steps, every=7)
    actual = run_backend(case.backend, model, problem, [0.3], steps=steps, every=7, chunk=chunk)
    rtol = case.rtol if case.dtype == np.float64 else 2e-4  # float32: 100 steps of rounding drift
    assert_traces_close(expected, actual, rtol=rtol, atol=rtol * 1e-3)


def test_divergence_is_reported_at_the_same_step(compiled_backend_dtype):
    """A stepsize that blows the exponential loss up stops at the oracle's step, with the oracle's trace."""
    case = compiled_backend_dtype
    X, y, _, _ = problem_data("exponential", dtype=case.dtype, test=False)
    runs = [lgd.gd(X, y, lgd.TwoLayerNet(6), "exponential", stepsize=1e4, steps=50,
                   compute=lgd.Compute(backend=name, progress=False)) for name in ("numpy", case.backend.name)]
    assert runs[0].status == runs[1].status == "diverged"
    assert runs[0].diverged_step == runs[1].diverged_step
    np.testing.assert_allclose(runs[1].risk, runs[0].risk, rtol=case.rtol_one_step)
    np.testing.assert_allclose(runs[1].weights, runs[0].weights, rtol=case.rtol_one_step)


def test_weights_that_overflow_are_a_divergence(compiled_backend_dtype):
    """An update past the dtype's range (eta near its largest number): W_1 is inf, where the logistic loss and its
    gradient are 0 and finite. The run diverged at step 1, on the oracle as on the kernels (it was 'completed'
    with risk 0 and accuracy 1)."""
    case = compiled_backend_dtype
    eta = 1e38 if case.dtype == np.float32 else 1e308
    for name in ("numpy", case.backend.name):
        run = lgd.gd(np.array([[10.0]], dtype=case.dtype), np.array([1.0], dtype=case.dtype), lgd.Linear(),
                     "logistic", stepsize=eta, steps=3, init=np.array([-1.0]),
                     compute=lgd.Compute(backend=name, dtype=case.dtype_name, progress=False))
        assert run.status == "diverged" and run.diverged_step == 1, name
        assert run.step.tolist() == [0, 1] and run.risk[0] > 1 and np.isinf(run.weight_norm[1]), name


def test_a_float32_weight_norm_is_summed_beyond_the_range_of_its_squares(compiled_backend_dtype):
    """||W|| of 3.2e19 is a float32 number whose square is not: the norm (and the normalized margin) is that
    of the weights, on the oracle as on the kernels, not inf (nor a divergence by the weight-norm bound)."""
    case = compiled_backend_dtype
    if case.dtype != np.float32:
        pytest.skip("float32's range")
    X, y = lgd.data.wu_toy()
    runs = [lgd.gd(X, y, lgd.Linear(), "logistic", stepsize=1e20, steps=2, init="zeros",
                   divergence=lgd.Divergence(risk=float("inf"), weight_norm=1e30),
                   compute=lgd.Compute(backend=name, dtype="float32", progress=False))
            for name in ("numpy", case.backend.name)]
    for run in runs:
        assert run.status == "completed"
        norm = np.sqrt(np.sum(run.weights.astype(np.float64) ** 2))
        assert norm > 1e19 and run.weight_norm[-1] == pytest.approx(norm, rel=1e-6)
        assert np.isfinite(run.normalized_margin[1:]).all()


def test_a_float32_gradient_norm_beyond_the_range_of_its_square_is_no_overflow(compiled_backend_dtype):
    """At step 1 the risk (4.3e35) and the gradient (norm 8.4e34) are float32 numbers, the square of the norm
    is not: the run records them and diverges at step 2, where the weights overflow, as in float64."""
    case = compiled_backend_dtype
    if case.dtype != np.float32:
        pytest.skip("float32's range")
    X, y = lgd.data.separable(n=30, d=3, margin=0.1, seed=0)
    runs = {(name, dtype): lgd.gd(X, y, lgd.TwoLayerNet(4), "exponential", stepsize=1e5, steps=3,
                                  divergence=float("inf"),
                                  compute=lgd.Compute(backend=name, dtype=dtype, progress=False))
            for name in ("numpy", case.backend.name) for dtype in ("float32", "float64")}
    for (name, dtype), run in runs.items():
        assert run.status == "diverged" and run.diverged_step == 2, (name, dtype)
        assert run.grad_norm[1] == pytest.approx(8.381e34, rel=1e-3) and run.risk[1] > 1e35, (name, dtype)


def test_a_sweep_is_its_single_runs(compiled_backend_dtype):
    """One batched call over stepsizes and seeds gives each configuration's single run."""
    case = compiled_backend_dtype
    X, y, X_test, y_test = problem_data("logistic", dtype=case.dtype)
    model = lgd.TwoLayerNet(6)
    options = dict(steps=60, record=5, X_test=X_test, y_test=y_test)
    compute = lgd.Compute(backend=case.backend.name, progress=False)
    swept = lgd.sweep(X, y, model, "logistic", stepsizes=[0.1, 1.0], seeds=(0, 1), compute=compute, **options)
    for i, (eta, seed) in enumerate(zip(swept.stepsize, swept.seed)):
        single = lgd.gd(X, y, model, "logistic", stepsize=float(eta), seed=int(seed), compute=compute, **options)
        np.testing.assert_allclose(single.risk, swept.risk[i], rtol=case.rtol)
        np.testing.assert_allclose(single.weights, swept.weights[i], rtol=case.rtol)


class _Unknown(lgd.activations.Activation):
    """An activation of the user's own: numpy formulas, a code no kernel has."""

    name, code = "cube", 99

    def phi(self, z):
        return z ** 3

    def dphi(self, z):
        return 3 * z ** 2

    def ddphi(self, z):
        return 6 * z


class _Retouched(lgd.activations.relu):
    """A ReLU of the user's own with a formula of its own (a smoothed kink) and a name of its own: relu's
    code."""

    name = "smoothed_relu"

    def phi(self, z):
        return np.sqrt(z * z + 1e-4) / 2 + z / 2


def test_a_code_the_kernels_do_not_have_is_refused(compiled_backend_dtype):
    """An entry whose code a kernel has no formula for, or a subclass of a catalog entry with a formula of
    its own under the entry's code, is refused before any work, naming it, never computed as another; the
    oracle runs it, and compute='auto' takes the oracle for it."""
    case = compiled_backend_dtype
    model = lgd.TwoLayerNet(4, activation=_Unknown())
    problem = make_problem(model, "logistic", case.dtype)
    with pytest.raises(ValueError, match=r"no formula for the activation 'cube' \(code 99\)"):
        case.backend.runner(problem, 3, 1, (1, 4, 5))
    retouched = make_problem(lgd.TwoLayerNet(4, activation=_Retouched()), "logistic", case.dtype)
    with pytest.raises(ValueError, match=r"no formula for the activation 'smoothed_relu' \(code 1\)"):
        case.backend.runner(retouched, 3, 1, (1, 4, 5))
    assert backends.resolve("auto", entries=(_Retouched(), lgd.losses.logistic())).name == "numpy"
    assert backends.resolve("auto", entries=(lgd.activations.relu(), lgd.losses.logistic())).name == \
        backends.resolve("auto").name
    state = initial_state(model, 5, case.dtype, [0.1])
    runner = ORACLE.runner(problem, 3, 1, state.W.shape)
    runner.start(state, Trace.empty(1, record_steps(3, 1).size, 4, True, dim=5, dtype=case.dtype))
    runner.advance(0, 4)
    assert np.all(state.diverged < 0) and np.isfinite(state.W).all()


TANGENT_CASES = [(model, act, loss) for model in MODELS for act in ACTIVATIONS for loss in LOSSES]


@pytest.mark.parametrize("model_name, act, loss", TANGENT_CASES, ids=["-".join(c) for c in TANGENT_CASES])
def test_lyapunov_sums_match_the_oracle(compiled_backend_dtype, model_name, act, loss):
    """The tangent map's exact Hessian-vector products (phi'' and loss'' of every catalog entry): the log
    growth of two tangent vectors over a few steps, against lgd.hessian's products on the oracle."""
    case = compiled_backend_dtype
    X, y, _, _ = problem_data(loss, dtype=case.dtype, test=False)
    model = MODELS[model_name](act)
    options = dict(stepsize=0.7, steps=6, record=lgd.Record(lyapunov=2), divergence=float("inf"))
    expected = lgd.gd(X, y, model, loss, compute=lgd.Compute("numpy", dtype=case.dtype_name), **options)
    actual = lgd.gd(X, y, model, loss, compute=lgd.Compute(case.backend.name, dtype=case.dtype_name, progress=False),
                    **options)
    rtol = 1e-9 if case.dtype == np.float64 else 1e-4
    np.testing.assert_allclose(actual.lyapunov_sum, expected.lyapunov_sum, rtol=rtol, atol=rtol)
