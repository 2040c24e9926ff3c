"""Options and shared fixtures of the throughput suite: which cases run, the oracle's risks, the roofline.

``--lgd-workloads S,M --lgd-impls numpy,lgd-numba --lgd-dtypes float64`` select cases (``lgd bench`` passes
them); ``--lgd-steps-scale`` scales every workload's steps (quick runs); ``--lgd-round-budget`` is the
seconds of timed rounds aimed at per case.
"""

import pytest

from bench.peers import IMPLEMENTATIONS
from bench.workloads import WORKLOADS, measure_roofline, oracle_final_risk

DTYPES = ("float64", "float32")


def pytest_addoption(parser):
    group = parser.getgroup("lgd bench")
    group.addoption("--lgd-workloads", default=",".join(WORKLOADS), help="comma-separated workloads to run")
    group.addoption("--lgd-impls", default=",".join(IMPLEMENTATIONS), help="comma-separated implementations")
    group.addoption("--lgd-dtypes", default=",".join(DTYPES), help="comma-separated dtypes")
    group.addoption("--lgd-steps-scale", type=float, default=1.0, help="scale every workload's steps")
    group.addoption("--lgd-round-budget", type=float, default=6.0, help="seconds of timed rounds per case")


def _selection(config, name: str, valid) -> set:
    chosen = {v for v in config.getoption(name).replace(" ", "").split(",") if v}
    unknown = chosen - set(valid)
    if unknown:
        raise pytest.UsageError(f"{name}: unknown {sorted(unknown)}; valid: {', '.join(valid)}")
    return chosen


def pytest_collection_modifyitems(config, items):
    workloads = _selection(config, "--lgd-workloads", WORKLOADS)
    impls = _selection(config, "--lgd-impls", IMPLEMENTATIONS)
    dtypes = _selection(config, "--lgd-dtypes", DTYPES)
    keep, drop = [], []
    for item in items:
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
        if case is None or (case[0] in workloads and case[1] in impls and case[2] in dtypes):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def bench_options(request):
    return {"steps_scale": request.config.getoption("--lgd-steps-scale"),
            "round_budget": request.config.getoption("--lgd-round-budget")}


@pytest.fixture(scope="session")
def oracle_risk():
    """Final risks of lgd's numpy oracle after the agreement run, cached per (workload, dtype)."""
    cache = {}

    def get(workload, dtype):
        key = (workload, dtype)
        if key not in cache:
            cache[key] = oracle_final_risk(workload, dtype)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def roofline():
    """The machine's best steps/s per (workload, dtype), measured once in this run (bench.workloads)."""
    cache = {}

    def get(workload, dtype, budget):
        key = (workload, dtype)
        if key not in cache:
            cache[key] = measure_roofline(workload, dtype, budget)
        return cache[key]

    return get
