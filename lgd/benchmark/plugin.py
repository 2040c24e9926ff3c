"""The pytest plugin of the throughput suite (lgd.benchmark.suite): its options and its shared fixtures.

``--lgd-workloads S,M --lgd-impls numpy,lgd-numba --lgd-dtypes float64`` select cases (``lgd bench`` passes
them); ``--lgd-steps-scale`` scales every workload's steps (quick runs); ``--lgd-round-budget`` is the
seconds of timed rounds aimed at per case. Fixtures: ``bench_options`` (the two numbers and the selected
implementations), ``prepared`` (implementations prepared once), ``oracle_risk`` (the numpy oracle's final
risks) and ``roofline`` (the machine's best steps/s), each per session.

``lgd bench`` loads it with ``-p lgd.benchmark.plugin``; the repository's bench/conftest.py imports its hooks
and fixtures for ``python -m pytest bench``. Only pytest loads this module: it imports pytest.
"""

import pytest

from .peers import IMPLEMENTATIONS, prepare
from .workloads import DTYPES, WORKLOADS, measure_roofline, oracle_final_risk


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
        # The suite's cases only: a parameter of another test may have the same name.
        ours = getattr(item, "originalname", None) == "test_throughput"
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case") if ours else None
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
            "round_budget": request.config.getoption("--lgd-round-budget"),
            "impls": _selection(request.config, "--lgd-impls", IMPLEMENTATIONS)}


@pytest.fixture(scope="session")
def prepared():
    """``get(impl, workload, dtype, keep=False)``: the implementation prepared (lgd.benchmark.peers.prepare),
    or raising what preparing it raised. With ``keep`` it stays prepared for a later request (a peer timed
    beside lgd's rounds is not compiled again in its own case: torch.compile takes 10-50 s a shape);
    without, a kept one is handed over and forgotten, so that no more than those peers hold their data."""
    kept = {}

    def get(impl, workload, dtype, keep=False):
        key = (impl, workload, dtype)
        if key in kept:
            found = kept[key] if keep else kept.pop(key)
        else:
            try:
                found = prepare(impl, workload, dtype, device=workload.device)
            except Exception as exc:  # noqa: BLE001 (the case reports it: Unavailable skips, others fail)
                found = exc
            if keep:
                kept[key] = found
        if isinstance(found, Exception):
            raise found
        return found

    return get


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
    """The machine's best steps/s per (workload, dtype), measured once in this run (lgd.benchmark.workloads)."""
    cache = {}

    def get(workload, dtype, budget):
        key = (workload, dtype)
        if key not in cache:
            cache[key] = measure_roofline(workload, dtype, budget)
        return cache[key]

    return get
