"""A 256-configuration sweep (64 stepsizes x 4 seeds, numba) on a Dask LocalCluster of 2 worker processes (one
thread each) against the same sweep in one process (numba's threads over the configurations), in one run.

The issue's target: the cluster's time at most 1/0.8 of the one process's (a ratio one/cluster of 0.8x or
better): on the same cores the cluster can only lose (transfers, scheduling, one kernel cache load per worker
process), and the target bounds that loss. Run with ``python -m pytest bench/test_distributed.py
--benchmark-enable``: it writes bench/results/distributed.{json,md} with the host and its load average. With
benchmarks disabled (CI) each case runs a few steps.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import lgd
import lgd.distributed

pytest.importorskip("numba")
pytest.importorskip("distributed")

STEPS = 10000
RESULTS = Path(__file__).parent / "results"


@pytest.fixture(scope="module")
def problem():
    X, y = lgd.data.xor(n=100)
    return X, y, lgd.TwoLayerNet(20, activation="leaky_softplus(0.5)"), np.logspace(-1, 3, 64), tuple(range(4))


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def timings():
    """The cases' best and median seconds (filled only when benchmarks run); written to bench/results."""
    found = {}
    yield found
    if len(found) == 2:
        _write(found)


@pytest.mark.parametrize("where", ["one-process", "cluster-2-workers"])
def test_distributed_sweep(benchmark, problem, client, timings, where):
    X, y, net, stepsizes, seeds = problem
    steps = 5 if benchmark.disabled else STEPS
    compute = lgd.Compute("numba", progress=False)

    def run():
        if where.startswith("cluster"):
            return lgd.distributed.sweep(X, y, net, stepsizes=stepsizes, steps=steps, seeds=seeds, record=100,
                                         compute=compute, client=client)
        return lgd.sweep(X, y, net, stepsizes=stepsizes, steps=steps, seeds=seeds, record=100, compute=compute)

    run()  # compile or load the kernel (in the workers too) before timing
    benchmark.group = "distributed"
    result = benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert len(result) == 256 and result.status.count("completed") == 256
    benchmark.extra_info.update(configs=256, steps=steps, config_steps_per_second=256 * steps / benchmark.stats["min"]
                                if not benchmark.disabled else None)
    if not benchmark.disabled:
        timings[where] = {"min_s": benchmark.stats["min"], "median_s": benchmark.stats["median"], "rounds": 3}


def _write(found: dict) -> None:
    from lgd.benchmark.machine import describe_machine

    machine = describe_machine()
    load = os.getloadavg()
    ratio = found["one-process"]["min_s"] / found["cluster-2-workers"]["min_s"]
    ratio_median = found["one-process"]["median_s"] / found["cluster-2-workers"]["median_s"]
    report = {"host": {"cpu": machine["cpu"], "cores": machine["cores"], "usable_cores": machine["usable_cores"],
                       "gpu": machine["gpu"], "date": time.strftime("%Y-%m-%d"), "load_average": list(load)},
              "versions": machine["versions"], "problem": {"data": "xor n=100", "width": 20, "configs": 256,
                                                           "steps": STEPS},
              "benchmarks": found, "speed_ratio_one_process_over_cluster": {"min": ratio, "median": ratio_median},
              "target": 0.8}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(report, indent=1) + "\n")
    met = "met" if ratio >= 0.8 else "not met"
    lines = [
        "# A sweep on a 2-worker Dask LocalCluster against one process (numba backend)", "",
        f"Host: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable); "
        f"{'no GPU' if not machine['gpu'] else machine['gpu']}. {report['host']['date']}. Load average while it ran "
        f"(1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (the cores are shared). "
        "`python -m pytest bench/test_distributed.py --benchmark-enable` (3 rounds each, after a warm-up call).", "",
        f"256 configurations (64 stepsizes x 4 seeds), xor n=100, width 20, {STEPS} steps, recorded every 100.", "",
        "| where | best (s) | median (s) |", "|---|---:|---:|",
        *(f"| {where} | {t['min_s']:.3f} | {t['median_s']:.3f} |" for where, t in found.items()), "",
        f"Speed of the cluster relative to one process (one-process time / cluster time): {ratio:.2f}x best, "
        f"{ratio_median:.2f}x median; the target 0.8x or better: {met}.", ""]
    (RESULTS / "distributed.md").write_text("\n".join(lines))
