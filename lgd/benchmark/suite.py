"""The throughput suite: lgd's backends and the peers on every workload (lgd.benchmark.workloads) and dtype.

Each case: build the implementation (a missing peer or device skips with the reason), check it against
lgd's numpy oracle on a short run, make one untimed warm-up call (compilation; its time is reported as
``warmup_s``/``compile_s``, never counted), then time whole runs with pytest-benchmark, each round after
the roofline's timing, a rest and an untimed run of the same steps (ROOFLINE_REST_S). ``extra_info``
holds steps/s (configuration-steps/s for sweeps), GFLOP/s of the two products and the roofline fraction:
the median over the rounds of the roofline's time for the round's steps, timed just before it, over the
round's time (and, for reference, the best round against a roofline timed once, apart). lgd-numba's cases
also time the fastest peers in turns with lgd (``paired_peers``: the peer's time over lgd's, median of
PAIRED_ROUNDS pairs).

With benchmarking disabled (``--benchmark-disable``, as CI runs it) every workload is shrunk to a few
steps on small shapes: the code paths and the agreement checks run, in seconds.

The test needs pytest-benchmark's ``benchmark`` fixture and those of lgd.benchmark.plugin. ``lgd bench`` runs
this file with ``-p lgd.benchmark.plugin``; the repository's bench/test_throughput.py exposes the test to
``python -m pytest bench``. The module's name keeps pytest from collecting it where it collects lgd's doctests.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from .peers import IMPLEMENTATIONS, LGD, Unavailable, prepare, steps_for
from .workloads import CHEAP_ACTIVATION, CHECK_RTOL, CHECK_STEPS, DTYPES, WORKLOADS, roofline_run

CASES = [(w, impl, dtype) for w in WORKLOADS for impl in IMPLEMENTATIONS for dtype in DTYPES]
# Timed rounds per case: as many as the round budget holds, at least MIN_ROUNDS (a workload whose one run
# outlasts the budget, as L, is otherwise timed once: one unlucky moment of a shared machine), at most MAX_ROUNDS.
MIN_ROUNDS, MAX_ROUNDS = 3, 5
# Pause between a roofline timing and the round after it: OpenBLAS's threads spin for about 0.1 s after a
# call before they sleep, and numpy's would take a core from a run using another BLAS (scipy's, lgd's).
# After the pause the implementation runs the round's steps once untimed: cores left idle for 0.2 s start
# slow (on the AVX-512 VM of docs/performance.md, lgd-numba's S at 1,000 steps ran at a median 40,000
# steps/s right after such a pause, 54,000 after one untimed run, 56,000 back to back; torch.compile's
# single thread level), and a long run's steps follow each other without pauses.
ROOFLINE_REST_S = 0.2


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_throughput(benchmark, case, bench_options, prepared, oracle_risk, roofline):
    name, impl, dtype = case
    workload = WORKLOADS[name]
    workload = workload.shrunk() if benchmark.disabled else workload.scaled(bench_options["steps_scale"])
    benchmark.group = f"{name} {dtype}"
    if benchmark.disabled and impl == "torch-compile":
        pytest.skip("torch.compile takes 10-50 s per shape: timed runs only (lgd bench)")
    try:
        run = prepared(impl, workload, dtype)
    except Unavailable as exc:
        pytest.skip(str(exc))

    reference = oracle_risk(workload, dtype)
    rel_error = check_error(run, reference)
    assert rel_error <= CHECK_RTOL[dtype], f"{impl} final risk after {CHECK_STEPS} steps is off by {rel_error:.2e}"

    steps = steps_for(impl, workload)
    if benchmark.disabled:
        assert benchmark.pedantic(run, args=(steps,)).shape == (workload.configs, steps + 1)
        return
    tic = time.perf_counter()
    out = run(steps)
    warmup = time.perf_counter() - tic
    # The timed call's own output: its shape, and where it has the agreement run's step, its risks there
    # (an implementation right for CHECK_STEPS steps and not for the timed ones would otherwise pass).
    assert out.shape == (workload.configs, steps + 1), f"{impl} returned {out.shape} for {steps} steps"
    if steps >= CHECK_STEPS:
        drift = float(np.max(np.abs(np.asarray(out)[:, CHECK_STEPS] - reference) / np.abs(reference)))
        assert drift <= CHECK_RTOL[dtype], f"{impl}'s timed run is off the oracle at step {CHECK_STEPS} by {drift:.2e}"
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, bench_options["round_budget"] // warmup)))
    # Before each timed round, the roofline's work of the same steps: each round's roofline fraction compares
    # two timings seconds apart, which a shared machine's slow phases (tens of percent, lasting seconds to
    # minutes) mostly leave alone.
    roofline_steps = roofline_run(workload, dtype)
    roofline_steps(1)
    roofline_s = []

    def time_roofline():
        tic = time.perf_counter()
        roofline_steps(steps)
        roofline_s.append(time.perf_counter() - tic)
        rest_then_warm(run, steps)

    benchmark.pedantic(run, args=(steps,), setup=time_roofline, rounds=rounds, iterations=1)

    best = benchmark.stats.stats.min
    config_steps = workload.configs * steps
    limit = roofline(workload, dtype, budget=0.3)
    paired = [roof / took for roof, took in zip(roofline_s, benchmark.stats.stats.data)]
    benchmark.extra_info.update({
        "workload": name, "impl": impl, "kind": "lgd" if impl in LGD else "peer", "dtype": dtype,
        "n": workload.n, "d": workload.d, "m": workload.m, "configs": workload.configs, "steps": steps,
        "config_steps": config_steps, "flops": workload.flops_per_step * config_steps,
        "check_rel_error": rel_error, "warmup_s": warmup, "compile_s": max(0.0, warmup - best),
        "steps_per_s": config_steps / best, "gflops": workload.flops_per_step * config_steps / best / 1e9,
        "roofline": limit, "roofline_fraction": config_steps / best / limit["steps_per_s"],
        "roofline_fraction_paired": float(np.median(paired)), "roofline_fraction_rounds": paired})
    if impl in PAIRED:
        benchmark.extra_info["paired_peers"] = paired_peers(run, steps, workload, dtype, bench_options["impls"],
                                                            prepared, reference)
    if impl in BREAKDOWN:
        benchmark.extra_info["breakdown"] = breakdown(impl, workload, dtype, run, steps)
    if impl == "lgd-numba" and name in FIRST_CALL_WORKLOADS:
        benchmark.extra_info["first_call"] = first_call(name, dtype)


# lgd backends timed against the fastest peers in one process, round after round (paired_peers), and those
# peers. Each case is otherwise timed minutes apart from the others, and on a shared machine a peer's speed
# moves by 10-40% between runs (docs/performance.md): a ratio of two cases is partly the machine's.
PAIRED = ("lgd-numba",)
PAIRED_PEERS = ("torch-compile", "jax-scan")
PAIRED_ROUNDS = 3


def paired_peers(run, steps, workload, dtype, impls, prepared, reference) -> dict:
    """For each of PAIRED_PEERS selected and available here: the peer's time over lgd's for the same steps,
    the two timed in turns PAIRED_ROUNDS times (seconds apart, so that both see the same machine; each after
    a rest and an untimed run, _rested_run), after the peer's agreement check against the oracle:
    {peer: {"ratio": median, "ratios": [...]}}. A peer that is unavailable or disagrees with the oracle is
    left out (its own case reports why)."""
    result = {}
    for peer in PAIRED_PEERS:
        if peer not in impls:
            continue
        try:
            other = prepared(peer, workload, dtype, keep=True)
        except Unavailable:
            continue
        if not check_error(other, reference) <= CHECK_RTOL[dtype]:  # NaN too
            continue
        ratios = []
        for _ in range(PAIRED_ROUNDS):
            ours = _rested_run(run, steps)
            ratios.append(_rested_run(other, steps) / ours)
        result[peer] = {"ratio": float(np.median(ratios)), "ratios": ratios}
    return result


def check_error(run, reference) -> float:
    """The largest relative error of run's final risks after CHECK_STEPS steps against the oracle's."""
    got = run(CHECK_STEPS)[:, -1]
    return float(np.max(np.abs(got - reference) / np.abs(reference)))


def rest_then_warm(fn, steps: int) -> None:
    """What comes before a timed run: a rest of ROOFLINE_REST_S, then fn(steps) untimed (see ROOFLINE_REST_S)."""
    time.sleep(ROOFLINE_REST_S)
    fn(steps)


def _rested_run(fn, steps: int) -> float:
    """Seconds of fn(steps) after rest_then_warm. The rest lets the threads of whatever ran before stop
    spinning: timed right after a peer, lgd's team of two lost a core (S at 2.5x torch.compile back to back,
    4.5x in cases timed apart, 4.3x with the rest; the peers' spinning threads are the likely cause, not
    checked). The untimed run wakes the idle cores."""
    rest_then_warm(fn, steps)
    tic = time.perf_counter()
    fn(steps)
    return time.perf_counter() - tic


# lgd backends whose steps are broken down (where the time goes): the same runs with CHEAP_ACTIVATION.
BREAKDOWN = ("lgd-numba", "lgd-cupy")
BREAKDOWN_ROUNDS = 3


def breakdown(impl, workload, dtype, run, steps) -> dict:
    """Per configuration-step: all of it, the part the activation's transcendentals take (the difference
    to the same run with a piecewise-linear activation) and the rest (products, loss, records, update).

    The two runs alternate, best of BREAKDOWN_ROUNDS each, so that both see the same machine."""
    cheap = prepare(impl, workload, dtype, device=workload.device, activation=CHEAP_ACTIVATION)
    cheap(steps)
    best = {run: np.inf, cheap: np.inf}
    for _ in range(BREAKDOWN_ROUNDS):
        for fn in best:
            tic = time.perf_counter()
            fn(steps)
            best[fn] = min(best[fn], time.perf_counter() - tic)
    config_steps = workload.configs * steps
    step_s, rest_s = best[run] / config_steps, best[cheap] / config_steps
    return {"step_us": step_s * 1e6, "rest_us": rest_s * 1e6, "activation_us": (step_s - rest_s) * 1e6,
            "activation_ns_per_entry": (step_s - rest_s) / (workload.n * workload.m) * 1e9}


# Workloads whose first lgd-numba call is timed in fresh processes: S compiles the fused kernel, L the BLAS one.
FIRST_CALL_WORKLOADS = ("S", "L")
FIRST_CALL_SCRIPT = """
import sys, time
import lgd
from lgd.benchmark.workloads import WORKLOADS, model, LOSS
workload, dtype = WORKLOADS[sys.argv[1]], sys.argv[2]
X, y = lgd.data.separable(n=workload.n, d=workload.d, margin=0.1, seed=0)
tic = time.perf_counter()
import numba
numba.njit(lambda x: x + 1)(1)
startup = time.perf_counter() - tic
tic = time.perf_counter()
lgd.gd(X.astype(dtype), y.astype(dtype), model(workload), LOSS, stepsize=1.0, steps=1,
       compute=lgd.Compute(backend="numba", progress=False))
print(startup, time.perf_counter() - tic)
"""


def first_call(name: str, dtype: str) -> dict:
    """Seconds of lgd.gd's first one-step call on the workload in a new process, with an empty kernel cache and
    then from the cache that run left; numba's own start-up (its import, and the registries its first compile
    or cache load reads: about a second, scipy's import included) is timed apart, before."""
    site = Path(__file__).resolve().parents[2]  # the new processes import this lgd, wherever pytest found it
    with tempfile.TemporaryDirectory(prefix="lgd-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join(
            filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-c", FIRST_CALL_SCRIPT, name, dtype]
        runs = [[float(v) for v in subprocess.run(command, check=True, env=env, cwd=cache, capture_output=True,
                                                  text=True).stdout.split()[-2:]]
                for _ in ("cold", "cached")]
    return {"numba_startup_s": min(run[0] for run in runs), "cold_s": runs[0][1], "cached_s": runs[1][1]}
