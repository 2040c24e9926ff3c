"""What recording trajectories costs: a 64-configuration sweep (SWEEP's shape, n=256 d=16 m=64) with
the weights recorded at every step, against the same sweep without them, on the numba backend.

The issue's budget is 1.5x the plain sweep. Run with ``python -m pytest bench/test_trajectories.py
--benchmark-enable``; with benchmarks disabled (CI) each case runs a few steps and checks its shapes.
"""

import numpy as np
import pytest

import lgd

pytest.importorskip("numba")

STEPS = 500
CASES = {"plain": lgd.Record(neuron_margins=False),
         "weights_every_step": lgd.Record(neuron_margins=False, weights=1)}


@pytest.fixture(scope="module")
def problem():
    X, y = lgd.data.separable(n=256, d=16, margin=0.1, seed=0)
    return X, y, lgd.TwoLayerNet(64), np.logspace(-1, 3, 64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("recording", list(CASES))
def test_sweep_with_trajectories(benchmark, problem, recording, dtype):
    X, y, net, stepsizes = problem
    steps = 3 if benchmark.disabled else STEPS
    compute = lgd.Compute("numba", dtype=dtype, progress=False)

    def run():
        return lgd.sweep(X, y, net, "logistic", stepsizes=stepsizes, steps=steps, record=CASES[recording],
                         compute=compute)

    run()  # compile or load before timing
    benchmark.group = f"trajectories {dtype}"
    result = benchmark.pedantic(run, rounds=1 if benchmark.disabled else 5, iterations=1)
    benchmark.extra_info.update(configs=len(stepsizes), steps=steps)
    if recording == "weights_every_step":
        assert result.trajectory.shape == (64, steps + 1, 64, 16)
    else:
        assert result.trajectory is None
