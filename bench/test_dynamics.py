"""What a bifurcation diagram costs: the XOR net of ``lgd reproduce xor`` (n = 100, m = 20, leaky softplus,
1/m, logistic loss) over 4,096 stepsizes from 1 to 10^4.5, 5,000 steps, in one batched call on the numba
backend, against the plain sweep of the same size:

- ``plain``: the sweep, recording the metrics at the start and the end only;
- ``periods``: the same sweep recording the weights at every step, projected on 2 random directions
  (``Record(weights=1, project_onto=...)``: 2 numbers per step and configuration instead of 40), then the
  periods of the last 256 steps of every configuration (:func:`lgd.dynamics.attractors`, compiled);
- ``periods_lyapunov``: ``periods`` with the largest Lyapunov exponent (``Record(lyapunov=1)``, metrics and
  cumulative log growth every 10 steps).

Throughput is config-steps per second (``benchmark.extra_info``); the numbers measured are in
bench/results/dynamics.md. Run with ``python -m pytest bench/test_dynamics.py --benchmark-enable``; with
benchmarks disabled (CI) each case runs 16 stepsizes for 300 steps and checks its shapes.
"""

import numpy as np
import pytest

import lgd
from lgd.dynamics import attractors

pytest.importorskip("numba")

STEPSIZES, STEPS, WINDOW = 4096, 5000, 256
DIRECTIONS = np.random.default_rng(42).standard_normal((2, 20, 2))


def _record(recording: str, steps: int) -> lgd.Record:
    if recording == "plain":
        return lgd.Record(every=steps, neuron_margins=False)
    lyapunov = {"lyapunov": 1, "every": 10} if recording == "periods_lyapunov" else {"every": steps}
    return lgd.Record(weights=1, project_onto=DIRECTIONS, neuron_margins=False, **lyapunov)


@pytest.fixture(scope="module")
def problem():
    X, y = lgd.data.xor(n=100)
    return X, y, lgd.TwoLayerNet(20, activation="leaky_softplus(0.5)", scaling="mean_field")


@pytest.mark.parametrize("recording", ["plain", "periods", "periods_lyapunov"])
def test_bifurcation_sweep(benchmark, problem, recording):
    if recording == "periods_lyapunov" and not hasattr(lgd.Record(), "lyapunov"):
        pytest.skip("Record(lyapunov=k) not in this tree")
    X, y, net = problem
    count, steps = (16, 300) if benchmark.disabled else (STEPSIZES, STEPS)
    stepsizes = np.logspace(0, 4.5, count)
    compute = lgd.Compute("numba", progress=False)
    record = _record(recording, steps)

    def run():
        sweep = lgd.sweep(X, y, net, "logistic", stepsizes=stepsizes, steps=steps, record=record, compute=compute)
        return sweep, (None if recording == "plain" else attractors(sweep, WINDOW, backend="numba"))

    lgd.sweep(X, y, net, "logistic", stepsizes=stepsizes[:2], steps=3, record=record, compute=compute)  # compile
    attractors(values=np.zeros((1, 4, 1)), backend="numba")
    benchmark.group = "bifurcation diagram, XOR net"
    sweep, found = benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean if not benchmark.disabled else None
    benchmark.extra_info.update(configs=count, steps=steps, config_steps=count * steps,
                                config_steps_per_second=None if seconds is None else count * steps / seconds,
                                gd_seconds=sweep.seconds)
    assert len(sweep) == count and sweep.step[-1] == steps
    if recording == "plain":
        assert sweep.projections is None
    else:
        assert sweep.projections.shape == (count, steps + 1, 2)
        assert len(found) == count and found.window == min(WINDOW, steps + 1)
