"""What the heavier records cost against a plain run, numba backend, measured side by side in one run:

- Lyapunov exponents (Record(lyapunov=1): one exact HVP per step) on S, one run (n=256 d=16 m=64);
- the sharpness every 10 steps (Record(sharpness_every=10): Lanczos in the kernel) on SWEEP (64 stepsizes);
- the risk-adaptive stepsize (lgd.stepsize.adaptive) against constant stepsizes on SWEEP.

The issues' budgets: 3x, 2x and 1.05x. Run with ``python -m pytest bench/test_records.py --benchmark-enable``;
with benchmarks disabled (CI) each case runs a few steps.
"""

import numpy as np
import pytest

import lgd

pytest.importorskip("numba")

PLAIN = lgd.Record(neuron_margins=False)
CASES = {
    "S-plain": (1, PLAIN, False, 2000),
    "S-lyapunov": (1, lgd.Record(neuron_margins=False, lyapunov=1), False, 2000),
    "SWEEP-plain": (64, PLAIN, False, 200),
    "SWEEP-sharpness10": (64, lgd.Record(neuron_margins=False, sharpness_every=10), False, 200),
    "SWEEP-adaptive": (64, PLAIN, True, 200),
}


@pytest.fixture(scope="module")
def data():
    return lgd.data.separable(n=256, d=16, margin=0.1, seed=0)


@pytest.mark.parametrize("record_case", list(CASES))
def test_record_cost(benchmark, data, record_case):
    X, y = data
    configs, record, adaptive, steps = CASES[record_case]
    steps = 3 if benchmark.disabled else steps
    etas = np.logspace(-1, 3, configs) if configs > 1 else np.array([10.0])
    stepsizes = [lgd.stepsize.adaptive(eta * 1e-2) for eta in etas] if adaptive else list(etas)
    compute = lgd.Compute("numba", progress=False)

    def run():
        return lgd.sweep(X, y, lgd.TwoLayerNet(64), "logistic", stepsizes=stepsizes, steps=steps, record=record,
                         compute=compute)

    run()  # compile or load before timing
    benchmark.group = record_case.split("-")[0]
    result = benchmark.pedantic(run, rounds=1 if benchmark.disabled else 5, iterations=1)
    benchmark.extra_info.update(configs=configs, steps=steps)
    assert result.risk.shape[0] == configs
