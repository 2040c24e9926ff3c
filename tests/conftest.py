"""The cases the suite is written in: one (backend, dtype) fixture, one tolerance table, problems from the catalogs.

Tests that compare a backend with the numpy oracle take the ``backend_dtype`` fixture (or
``compiled_backend_dtype`` for every backend but the oracle itself): one case per backend and dtype,
with readable ids (``numba-float32``), skipped with the reason when that backend cannot run here (the
probe runs in the fixture, never at import or collection). Activations, losses and models are
enumerated from the catalogs, so a new catalog entry is tested on every backend without editing a
test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import lgd
from lgd import backends
from lgd.backends import Problem, State, Trace, record_steps

DTYPES = {"float64": np.float64, "float32": np.float32}
# A backend against the numpy oracle on the same inputs, relative, per dtype: whole traces and weights
# after a few hundred steps at calm stepsizes.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
# The same after one step (where nothing has had time to accumulate).
TOLERANCE_ONE_STEP = {"float64": 1e-12, "float32": 1e-5}

ACTIVATIONS = lgd.activations.NAMES
LOSSES = lgd.losses.NAMES
# Width 21: a register tile of the products (8 float64 / 16 float32 columns) and the columns after it.
MODELS = {
    "mean_field": lambda act: lgd.TwoLayerNet(21, activation=act),
    "ntk_train_outer": lambda act: lgd.TwoLayerNet(21, activation=act, scaling="ntk", outer="random",
                                                   train_outer=True),
}


@dataclass(frozen=True)
class Case:
    """One (backend, dtype) case: the backend object, the numpy dtype and the tolerances against the oracle."""

    backend: backends.Backend
    dtype: type
    rtol: float
    rtol_one_step: float

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name


# The GPU kernels' host build (lgd.backends._cuda_host): not a user's backend, so not in backends.NAMES; its
# cases register it for the test's duration, under the name the driver then accepts from lgd.Compute.
HOST_CUDA = backends.Backend("cuda-host", "lgd.backends._cuda_host")
# The same on the products path (cuBLAS products and four kernels per step, the path of large problems), at
# the suite's small sizes: four launches per step, each a set of host threads, so its cases are chosen
# (tests/test_cuda_products.py) rather than the whole matrix of the compiled backends.
HOST_PRODUCTS = backends.Backend("cuda-host-products", "lgd.backends._cuda_host_products")
HOST_BACKENDS = (HOST_CUDA, HOST_PRODUCTS)


def register_host_cuda(monkeypatch) -> None:
    """Make 'cuda-host' and 'cuda-host-products' backend names lgd.gd and lgd.sweep accept, for the test's
    duration."""
    for backend in HOST_BACKENDS:
        monkeypatch.setitem(backends._BACKENDS, backend.name, backend)
    monkeypatch.setattr(lgd.options, "BACKEND_NAMES", (*backends.NAMES, *(b.name for b in HOST_BACKENDS)))


def _case(request) -> Case:
    name, dtype = request.param
    if name in {backend.name for backend in HOST_BACKENDS}:
        register_host_cuda(request.getfixturevalue("monkeypatch"))
    usable, reason = backends.availability(name)
    if not usable:
        pytest.skip(f"backend {name} cannot run here: {reason}")
    return Case(backends.resolve(name), DTYPES[dtype], TOLERANCE[dtype], TOLERANCE_ONE_STEP[dtype])


_ALL = [(name, dtype) for name in backends.NAMES for dtype in DTYPES]
_COMPILED = [(name, dtype) for name, dtype in _ALL if name != "numpy"] + [(HOST_CUDA.name, dtype) for dtype in DTYPES]


@pytest.fixture(params=_ALL, ids=[f"{name}-{dtype}" for name, dtype in _ALL])
def backend_dtype(request) -> Case:
    return _case(request)


@pytest.fixture(params=_COMPILED, ids=[f"{name}-{dtype}" for name, dtype in _COMPILED])
def compiled_backend_dtype(request) -> Case:
    return _case(request)


def problem_data(loss, n=23, d=5, seed=0, dtype=np.float64, test=True):
    """(X, y, X_test, y_test): Gaussian inputs, labels +-1 for margin losses and real targets otherwise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) / math.sqrt(d)
    y = np.where(rng.standard_normal(n) > 0, 1.0, -1.0) if lgd.losses.get(loss).margin else rng.standard_normal(n)
    X_test, y_test = (X[:7] * 0.9, y[:7]) if test else (None, None)
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(X), cast(y), cast(X_test), cast(y_test)


def make_problem(model, loss, dtype, test=True, d=5, n=23) -> Problem:
    X, y, X_test, y_test = problem_data(loss, n=n, d=d, dtype=dtype, test=test)
    return Problem(X=X, y=y, activation=model.activation, loss=lgd.losses.get(loss), scale=model.scale,
                   train_outer=model.train_outer, linear=isinstance(model, lgd.Linear), X_test=X_test,
                   y_test=y_test)


def initial_state(model, d, dtype, stepsizes, seed=1) -> State:
    rng = np.random.default_rng(seed)
    C, m = len(stepsizes), model.width
    W = rng.standard_normal((C, m, d)).astype(dtype)
    a = np.stack([model.outer_weights(rng) for _ in range(C)]).astype(dtype)
    return State(W=W, a=a, stepsizes=np.asarray(stepsizes, dtype=np.float64))


def run_backend(backend, model, problem, stepsizes, steps, every=1, chunk=None, prepare=None):
    """(state, trace) after `steps` steps of the configurations `stepsizes` of `problem` on `backend` (a
    Backend), advanced in chunks of `chunk` evaluations (all at once when None), as the driver does;
    `prepare(runner)` may adjust the runner before it starts."""
    state = initial_state(model, problem.X.shape[1], problem.dtype, stepsizes)
    trace = Trace.empty(len(stepsizes), record_steps(steps, every).size, model.width, True, dim=problem.X.shape[1],
                        dtype=problem.dtype)
    runner = backend.runner(problem, steps, every, state.W.shape)
    if prepare is not None:
        prepare(runner)
    runner.start(state, trace)
    chunk = chunk or steps + 1
    for t0 in range(0, steps + 1, chunk):
        runner.advance(t0, min(t0 + chunk, steps + 1))
    runner.finish()
    return state, trace


def assert_traces_close(expected, actual, rtol, atol=0.0, upto=None):
    """Every trace field, the weights and the divergence steps of two (state, trace) pairs agree; with
    `upto`, configuration c only up to record upto[c] (a diverging run's trace is nan after it)."""
    (s0, t0), (s1, t1) = expected, actual
    np.testing.assert_array_equal(s1.diverged, s0.diverged)
    for name in Trace._fields:
        want, got = getattr(t0, name), getattr(t1, name)
        # A relative error e of the risk is an absolute error e of its log (which may be near 0).
        field_atol = max(atol, rtol) if name == "log_risk" else atol
        for c in range(want.shape[0]):
            cut = None if upto is None else upto[c]
            np.testing.assert_allclose(got[c][:cut], want[c][:cut], rtol=rtol, atol=field_atol,
                                       err_msg=f"{name}[{c}]")
    np.testing.assert_allclose(s1.W, s0.W, rtol=rtol, atol=atol)
    np.testing.assert_allclose(s1.a, s0.a, rtol=rtol, atol=atol)


def assert_every_rule_matches(backend_name, dtype, fields=("eta", "risk", "log_risk", "grad_norm")):
    """One sweep mixing every stepsize rule the CUDA kernels have (eta_t from the risk, its log, the gradient
    norm and t) on `backend_name` against the oracle: the stepsizes applied (trace eta), `fields` and the
    weights."""
    from lgd import stepsize

    X, y = lgd.data.separable(n=30, d=4, margin=0.1, seed=4)
    rules = [0.5, stepsize.warmup(2.0, 10), stepsize.step_decay(2.0, 7, 0.5), stepsize.cosine(2.0),
             stepsize.adaptive(0.5), stepsize.polyak(0.0, 0.5), stepsize.normalized(0.3)]
    runs = [lgd.sweep(X, y, lgd.TwoLayerNet(8), stepsizes=rules, steps=25, record=3,
                      compute=lgd.Compute(backend=name, dtype=dtype, progress=False))
            for name in ("numpy", backend_name)]
    rtol = TOLERANCE[dtype] * (1 if dtype == "float64" else 20)
    # Polyak steps grow to 1e6 here as the gradient vanishes: in float32 that amplifies rounding to 4e-3
    # between numba and the oracle as well, so float32 compares the other rules.
    keep = list(range(len(rules))) if dtype == "float64" else [i for i in range(len(rules)) if i != 5]
    for field in fields:
        np.testing.assert_allclose(getattr(runs[1], field)[keep], getattr(runs[0], field)[keep], rtol=rtol,
                                   atol=rtol * 1e-3, err_msg=field)
    np.testing.assert_allclose(runs[1].weights[keep], runs[0].weights[keep], rtol=rtol, atol=rtol * 1e-3)


def assert_inverse_sharpness_matches(backend_name, dtype):
    """A sweep of lgd.stepsize.inverse_sharpness (c / lambda_max) beside a constant rule on `backend_name` (a
    runner the driver measures the sharpness for, between chunks) against the oracle (which measures it inside
    its steps): the stepsizes applied, the risk, the sharpness and the weights; and at every sharpness step
    eta_t = c / lambda_max(W_t), the sharpness of that very step."""
    from lgd import stepsize

    X, y = lgd.data.xor(n=40)
    rules = [stepsize.inverse_sharpness(1.0), stepsize.inverse_sharpness(1.9), 0.5]
    record = lgd.Record(every=2, sharpness_every=6)
    runs = [lgd.sweep(X, y, lgd.TwoLayerNet(8, activation="tanh", train_outer=True), "squared", stepsizes=rules,
                      steps=40, seeds=(0, 1), record=record,
                      compute=lgd.Compute(backend=name, dtype=dtype, progress=False))
            for name in ("numpy", backend_name)]
    # Both measure with lgd.hessian.sharpness at the same steps; their iterates differ by the rounding of the
    # kernels' sums (another order than the oracle's) and nothing else, so the oracle's tolerances hold
    # (float64: 1e-13 or so here, well inside them).
    rtol = TOLERANCE[dtype] * (1 if dtype == "float64" else 20)
    assert np.all(runs[1].diverged_step < 0)
    for field in ("eta", "risk", "sharpness"):
        np.testing.assert_allclose(getattr(runs[1], field), getattr(runs[0], field), rtol=rtol, atol=rtol * 1e-3,
                                   err_msg=field)
    np.testing.assert_allclose(runs[1].weights, runs[0].weights, rtol=rtol, atol=rtol * 1e-3)
    at = np.searchsorted(runs[1].step, runs[1].sharpness_step)
    for c in range(4):  # stepsize-major: configurations 0 to 3 are the two seeds of the two inverse_sharpness rules
        np.testing.assert_allclose(runs[1].eta[c, at] * runs[1].sharpness[c, :, 0], rules[c // 2].eta,
                                   rtol=1e-12 if dtype == "float64" else 1e-6)


def assert_inverse_sharpness_resumes(backend_name, monkeypatch, tmp_path):
    """A sweep of lgd.stepsize.inverse_sharpness on `backend_name` that failed between two sharpness steps
    after a checkpoint, resumed with lgd.resume: its first steps take the sharpness measured before the
    failure, saved with the state, and every field is the uninterrupted run's, bit for bit."""
    from test_checkpoint import assert_same_bits, interrupt_once

    from lgd import checkpoint, driver

    X, y = lgd.data.xor(n=30)
    path = tmp_path / "sweep.ckpt"
    arguments = dict(stepsizes=[lgd.stepsize.inverse_sharpness(1.5), 0.5], steps=60, seeds=(3,),
                     record=lgd.Record(every=3, sharpness_every=10), compute=backend_name)
    net = lgd.TwoLayerNet(6, activation="tanh", train_outer=True)
    expected = lgd.sweep(X, y, net, "squared", **arguments)
    # Chunks of one step, so that the failure comes at step 33, between the sharpness steps 30 and 40.
    monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-9)
    fired = interrupt_once(monkeypatch, backend_name, 33, error=MemoryError)
    with pytest.raises(MemoryError):
        lgd.sweep(X, y, net, "squared", **arguments, checkpoint=path, checkpoint_every=1e-9)
    assert fired == [33] and checkpoint.read(path).header["reached"] == 33
    resumed = lgd.resume(path)
    assert resumed.status == ["completed", "completed"]
    assert_same_bits(expected, resumed)
