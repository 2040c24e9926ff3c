"""What only the numba backend has: its team of threads, BLAS or fused products, register tiles, the fast
exp/log1p, the code table and the on-disk cache (its agreement with the oracle, case by case from the
catalogs, is in test_backends.py).

Compile cost is bounded: activation and loss are runtime codes, so the whole file compiles two kernels per
dtype, one per product mode (about 10 s each with an empty cache, under a second from the cache), two more
per dtype for a team split by neurons (the gradient factors on the rows of X, or of phi'), and one
subprocess the float64 fused kernel at the other vector width (LGD_VECTOR_BYTES) for its checks (about 5 s
from the cache, 10 s more with an empty one).
"""

import functools
import math
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import lgd  # noqa: E402
from conftest import (assert_traces_close, initial_state, make_problem, problem_data,  # noqa: E402
                      run_backend)
from lgd import activations, backends, losses  # noqa: E402
from lgd.backends import Trace, _numba  # noqa: E402
from lgd.kernels import numba_cpu  # noqa: E402
from lgd.kernels.numba_cpu import compiler, exp_log1p, formulas, intrinsics, step, tiles  # noqa: E402

NUMPY, NUMBA = backends.resolve("numpy"), backends.resolve("numba")


def run_both(model, loss, dtype, stepsizes, steps, every=1, prepare=None):
    problem = make_problem(model, loss, dtype)
    return [run_backend(backend, model, problem, stepsizes, steps, every, prepare=prepare)
            for backend in (NUMPY, NUMBA)]


def fast(**options):
    return lgd.Compute(progress=False, **options)


def test_blas_kernel_compiles_without_the_fused_loops(tmp_path):
    """The BLAS kernel passes None for the fused loops' tile rows, which prunes them (and their
    register tiles) from its compile; a fresh cache, so that this process compiles it."""
    script = (
        "import numpy as np, lgd\n"
        "from lgd.backends import Problem, _numba\n"
        "from lgd.kernels import numba_cpu\n"
        "X = np.ones((64, _numba.BLAS_MIN_D)); y = np.ones(64)\n"
        "p = Problem(X=X, y=y, activation=lgd.activations.get('relu'), loss=lgd.losses.get('logistic'),\n"
        "            scale=1.0, train_outer=False, linear=False)\n"
        "from lgd.kernels.numba_cpu import compiler\n"
        "_numba.BLAS_WITH_WIDE_TILES = True\n"
        "runner = _numba.Runner(p, 1, 1, shape=(1, _numba.BLAS_WORK // X.size + 1))\n"
        "assert runner._use_blas(_numba.BLAS_WORK // X.size + 1)\n"
        "compiled = [f.__name__ for lib in compiler._SUBROUTINES for f, _ in compiler._SUBROUTINES[lib]]\n"
        "print(' '.join(sorted(set(compiled))))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    compiled = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                              env=env).stdout.split()
    assert "sample_block" in compiled and "row_output" in compiled
    assert "forward_rows" not in compiled and "backward_rows" not in compiled


@pytest.mark.parametrize("entry", activations.ENTRIES, ids=lambda entry: entry.name)
def test_every_catalog_activation_has_a_formula(entry):
    """The kernels take their codes from the catalog and have a formula for each of its entries."""
    assert entry.code in formulas.ACTIVATIONS


@pytest.mark.parametrize("entry", losses.ENTRIES, ids=lambda entry: entry.name)
def test_every_catalog_loss_has_a_formula(entry):
    assert entry.code in formulas.LOSSES


def test_a_missing_numba_internal_is_named():
    with pytest.raises(ImportError, match=r"numba\.core\.compiler\.no_such_internal.*tested with numba"):
        compiler._internal("numba.core.compiler", "no_such_internal")


def test_an_edit_in_a_helper_module_is_compiled_not_loaded_stale(tmp_path):
    """numba's cache stamps a kernel with its own module only; ours with every source it is compiled from.
    In a copy of the package laid out as installed: run, edit the squared loss in formulas.py (not the
    kernel's module), run again in a new process: the second run computes the edited formula."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(lgd.__file__), site / "lgd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(site / "lgd" / "kernels", ignore_errors=True)
    shutil.copytree(os.path.dirname(numba_cpu.__file__), site / "lgd" / "kernels" / "numba_cpu",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "lgd" / "kernels" / "__init__.py").write_text("")
    kernels = os.path.dirname(os.path.dirname(numba_cpu.__file__))
    shutil.copy(os.path.join(kernels, "polynomials.py"), site / "lgd" / "kernels")
    script = ("import numpy as np, lgd\n"
              "assert lgd.__file__.startswith(%r)\n"
              "run = lgd.gd(np.ones((3, 2)), np.zeros(3), lgd.Linear(), 'squared', stepsize=0.1, steps=1,\n"
              "             init=np.ones(2), compute=lgd.Compute(backend='numba', progress=False))\n"
              "print(run.risk[0])\n" % str(site))
    env = dict(os.environ, PYTHONPATH=str(site), NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def risk():
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    assert risk() == 2.0  # (1/2) (w . x)^2 with w . x = 2
    formulas_py = site / "lgd" / "kernels" / "numba_cpu" / "formulas.py"
    source = formulas_py.read_text()
    assert "return 0.5 * u * u, u" in source
    formulas_py.write_text(source.replace("return 0.5 * u * u, u", "return 0.25 * u * u, u"))
    assert risk() == 1.0


def test_without_a_writable_cache_folder_the_kernels_compile_uncached(monkeypatch, capsys):
    """Where numba finds no folder to cache in (a read-only install, a home that cannot be written: numba's
    "no locator available"), a kernel is compiled in the process, uncached, and lgd says so once; so is the
    classifier of lgd.dynamics."""
    from numba.core import caching

    from lgd.dynamics import periods

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(compiler, "_UNCACHED", [])
    with pytest.raises(RuntimeError, match="no locator available"):
        compiler.FolderCache(test_without_a_writable_cache_folder_the_kernels_compile_uncached)

    def plus_one(x):
        return x + 1

    first, second = compiler.kernel(plus_one), compiler.kernel(plus_one)
    assert first(1) == second(2) - 1 == 2 and compiler.cache_unwritable()
    assert capsys.readouterr().err.count("set NUMBA_CACHE_DIR") == 1
    monkeypatch.setattr(periods, "_COMPILED", [])
    found = lgd.dynamics.attractors(values=np.ones((1, 8, 1)), backend="numba")
    assert found.names == ["converged"]


def test_available_without_importing_numba():
    code = "import sys, lgd.backends._numba as b; assert b.available()[0]; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def blas_products(products: str, monkeypatch):
    """The product mode `products` for the numba runs that follow: "fused" (the tiles), "blas" (the gradient's
    parts as they are), "blas_swapped" (transposed, (m, d), with the weights held as rows and, in float64, Z
    transposed too) or "blas_transposing" (the same, but the weights kept as Wt (d, m): the transposing sum).
    Returns the list of the gemm choices of every BLAS scratch built (_numba.buffers)."""
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62 if products == "fused" else 0)
    swapped = products in ("blas_swapped", "blas_transposing")
    monkeypatch.setattr(_numba, "BLAS_SWAPPED_MIN_D", 0 if swapped else 1 << 62)
    monkeypatch.setattr(_numba, "BLAS_WEIGHTS_AS_ROWS", products == "blas_swapped")
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: True)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    made, build = [], _numba.buffers

    def recording(*args, **kwargs):
        scratch = build(*args, **kwargs)
        if scratch.gemm is not None:
            made.append(tuple(int(x) for x in scratch.gemm[1:]))
        return scratch

    monkeypatch.setattr(_numba, "buffers", recording)
    return made


def assert_blas_layouts(products: str, made: list, dtype=np.float64):
    """Every BLAS scratch in `made` (blas_products) took the layouts of `products`: (swapped, Z transposed,
    weights as rows)."""
    swapped = products in ("blas_swapped", "blas_transposing")
    expected = (int(swapped), int(swapped and dtype == np.float64), int(products == "blas_swapped"))
    assert made if products != "fused" else not made
    assert set(made) <= {expected}, (products, set(made))


@pytest.mark.parametrize("products", ["fused", "blas", "blas_swapped", "blas_transposing"])
def test_sweep_equals_single_runs_and_oracle(products, monkeypatch):
    """A sweep (threads taking the configurations from a shared queue) equals the single runs (a team of
    threads per step) and the oracle, with the products in the fused loops or through BLAS (the gradient's
    parts as they are, or transposed with Z held transposed too in float64 and the weights held as rows,
    blas_swapped, or as Wt (d, m), blas_transposing)."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    made = blas_products(products, monkeypatch)
    X, y, X_test, y_test = problem_data("logistic")
    stepsizes = [0.1, 1.0, 10.0, 1e5]
    kwargs = dict(steps=120, record=5, seeds=(0, 1), X_test=X_test, y_test=y_test)
    model = lgd.TwoLayerNet(6)
    swept = lgd.sweep(X, y, model, "logistic", stepsizes=stepsizes, compute=fast(backend="numba"), **kwargs)
    oracle = lgd.sweep(X, y, model, "logistic", stepsizes=stepsizes, compute=fast(backend="numpy"), **kwargs)
    assert swept.status == oracle.status
    np.testing.assert_array_equal(swept.diverged_step, oracle.diverged_step)
    for i, eta in enumerate(np.repeat(stepsizes, 2)):
        if eta > 1.0:  # chaotic: block-wise summation orders differ at 1e-16 and the runs drift apart
            continue
        single = lgd.gd(X, y, model, "logistic", stepsize=eta, seed=(0, 1)[i % 2], compute=fast(backend="numba"),
                        **{k: v for k, v in kwargs.items() if k != "seeds"})
        np.testing.assert_allclose(single.risk, swept.risk[i], rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(single.weights, swept.weights[i], rtol=1e-10)
    calm = np.repeat(np.array(stepsizes) <= 1.0, 2)
    np.testing.assert_allclose(swept.risk[calm], oracle.risk[calm], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(swept.weights[calm], oracle.weights[calm], rtol=1e-10)
    assert_blas_layouts(products, made)


@pytest.mark.parametrize("team, stepsizes", [(2, [0.3]), (2, [3e3]), (3, [0.3, 3e3])],
                         ids=["calm", "diverging", "two_configs"])
@pytest.mark.parametrize("products", ["fused", "blas", "blas_swapped", "blas_transposing"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_team_of_threads_matches_oracle(team, stepsizes, dtype, products, monkeypatch):
    """run_team (threads splitting the samples of every step, barriers between) against the oracle:
    whole traces, test metrics and neuron margins, divergence, configurations one after the other,
    with the products in the fused loops or through BLAS on each thread's block (the gradient's parts as they
    are, or transposed: blas_swapped and blas_transposing, where float64 holds Z transposed too and makes its
    pass over the training samples by step.column_block; the weights held as rows, or as Wt)."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    made = blas_products(products, monkeypatch)
    model = lgd.TwoLayerNet(21, train_outer=True)
    problem = make_problem(model, "exponential", dtype)
    steps, every = 150, 7

    def as_team(runner):
        runner._threads = team
        assert runner.team_size(len(stepsizes), model.width) == team
        assert runner._use_blas(model.width) == (products != "fused")

    expected = run_backend(NUMPY, model, problem, stepsizes, steps, every)
    actual = run_backend(NUMBA, model, problem, stepsizes, steps, every, chunk=40, prepare=as_team)
    assert list(expected[0].diverged >= 0) == [eta > 1.0 for eta in stepsizes]
    tol = 1e-10 if dtype == np.float64 else 1e-4
    # A diverging run is compared up to its divergence (the trace is nan after it).
    upto = [dv if dv >= 0 else None for dv in expected[0].diverged]
    assert_traces_close(expected, actual, rtol=tol, atol=tol * 1e-3, upto=upto)
    assert_blas_layouts(products, made, dtype)


PAGE = 4096


def _assert_apart(end, start):
    """From `end` (one past a member's last byte) to the next member's first byte `start`, MEMBER_GAP bytes or
    more, and no 4 KB page holds bytes of both, wherever numpy put the array."""
    assert start - end >= _numba.MEMBER_GAP and (end - 1) // PAGE < start // PAGE


def _assert_blocks_a_page_apart(block, rows, width):
    """_assert_apart for each member's block (its last entry: row rows - 1, column width - 1) and the next."""
    for member in range(block.shape[0] - 1):
        _assert_apart(block[member, rows - 1, width - 1:].ctypes.data + block.itemsize, block[member + 1].ctypes.data)


@pytest.mark.parametrize("width", [24, 5, 1024])
def test_copies_of_the_weights_lie_a_page_apart(width):
    """A replicated close's copies of the weights, one per member, lie MEMBER_GAP bytes (a page) or more apart,
    whether a copy is smaller than a page, a whole number of lines or larger than a page: each member writes its
    own at every step. A single copy takes no spare ones."""
    copies = _numba._copies(3, (7, width), np.float32)
    assert copies[1, 0].shape == (7, width) and copies[1, 0].flags.c_contiguous
    for r in range(2):
        _assert_apart(copies[r, 0].ctypes.data + copies[r, 0].nbytes, copies[r + 1, 0].ctypes.data)
    assert _numba._copies(1, (7, width), np.float32).shape == (1, 1, 7, width)


def test_replicated_close_only_where_the_partials_are_small():
    """A team closes on copies of its own only in the fused mode without tangents or sharpness, and only while
    the partial gradients each member sums of the others' come to at most REPLICATED_BYTES (M's team of two:
    128 KB); a larger team or net keeps the one copy that member 0 updates."""
    small = dict(blas=False, tangents=0, lanczos=0)
    assert _numba.replicated_close(2, 64, 256, np.float64, **small)
    assert _numba.replicated_close(3, 64, 256, np.float32, **small)
    assert not _numba.replicated_close(4, 64, 256, np.float64, **small)
    assert not _numba.replicated_close(1, 16, 64, np.float64, **small)
    for other in (dict(blas=True), dict(tangents=1), dict(lanczos=3)):
        assert not _numba.replicated_close(2, 16, 64, np.float64, **{**small, **other})
    from lgd.kernels import numba_cpu

    assert _numba.buffers(numba_cpu, 2, 256, 64, 360, 0, np.float64, False).Wt.shape[0] == 2
    assert _numba.buffers(numba_cpu, 4, 256, 64, 360, 0, np.float64, False).Wt.shape[0] == 1


def test_claim_prefetches_for_writing():
    """A member's claim on its partials (team.claim) changes nothing and compiles to prefetches for writing:
    PREFETCHW and no read prefetch, where the host has prfchw (elsewhere only the first is checked)."""
    import re

    from numba import njit

    from lgd.kernels.numba_cpu import team

    @njit
    def claim_twice(part):
        team.claim(part)
        team.claim(part[1:])

    part = np.arange(3 * 200, dtype=np.float64).reshape(3, 200)
    claim_twice(part)
    assert np.array_equal(part, np.arange(3 * 200, dtype=np.float64).reshape(3, 200))
    features = numba.core.config.CPU_FEATURES or numba.core.codegen.get_host_cpu_features()
    if platform.machine() in ("x86_64", "AMD64") and "+prfchw" in features.split(","):
        asm = claim_twice.inspect_asm(claim_twice.signatures[0])
        assert re.search(r"\bprefetchw\b", asm), "no PREFETCHW in team.claim's code"
        assert not re.search(r"\bprefetch(t0|t1|t2|nta)\b", asm), "a read prefetch in team.claim's code"


def _team_run():
    """The risk trace of a run that a team takes (with numba's thread count patched above one)."""
    X, y = lgd.data.separable(n=64, d=5, margin=0.1, seed=0)
    run = lgd.gd(X, y, lgd.TwoLayerNet(64), stepsize=1.0, steps=30,
                 compute=lgd.Compute(backend="numba", progress=False))
    return run.risk


def _member_threads() -> set:
    return {thread.ident for thread in threading.enumerate() if thread.name.startswith("lgd-numba")}


def test_member_pools_are_kept_per_calling_thread(monkeypatch):
    """The threads that run a team's other members are the same from call to call of one calling thread (a
    fresh one cost each call about 0.45 ms), and another calling thread has a pool of its own."""
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    first = _team_run()
    threads = _member_threads()
    assert threads and np.array_equal(_team_run(), first)
    assert _member_threads() == threads
    pool = _numba.member_pool(2)
    assert _numba.member_pool(2) is pool
    other = []
    caller = threading.Thread(target=lambda: other.append(_numba.member_pool(2)))
    caller.start()
    caller.join()
    assert other[0] is not pool


def test_a_team_rings_its_pool_threads_from_compiled_code(monkeypatch):
    """The pool thread of a team's other member is woken by run_team itself (member 0 adds one to its count once
    it has let the GIL go), not by Python's post: the count moves by one per chunk, all from the kernel."""
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    _team_run()
    pool = _numba.member_pool(1)
    rung, chunks = int(pool.counts[0]), []
    advance = _numba.Runner.advance
    monkeypatch.setattr(_numba.Runner, "advance", lambda self, *span: (chunks.append(span), advance(self, *span)))
    _team_run()
    assert len(chunks) > 1 and int(pool.counts[0]) - rung == len(chunks)


def test_member_pool_runs_tasks_and_gives_back_their_errors():
    """A MemberPool runs what is submitted (more tasks than threads queue on the least busy), returns each
    task's value and raises its exception in the caller; a task posted without its count (rung=False) whose
    ring never comes still runs, once the thread's spin gives up; its threads end with the pool."""
    import gc
    import time

    before = set(threading.enumerate())
    pool = _numba.MemberPool(2)
    threads = set(threading.enumerate()) - before
    assert sorted(thread.name for thread in threads) == ["lgd-numba_0", "lgd-numba_1"]
    tasks = [pool.submit(pow, k, 2) for k in range(7)]
    assert [task.result() for task in tasks] == [k * k for k in range(7)]
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result()
    assert pool.submit(abs, -3, rung=False).result() == 3
    del pool, tasks
    gc.collect()
    deadline = time.monotonic() + 30
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(thread.is_alive() for thread in threads)


def _run_in_child(out):
    out.put(_team_run().tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_runs_a_team(monkeypatch):
    """A child forked after its parent ran a team (its pool's threads are not in the child) runs one too."""
    import multiprocessing

    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    expected = _team_run()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_run_in_child, args=(out,))
    child.start()
    try:
        got = out.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert np.array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("case, team", [("adaptive", 2), ("adaptive", 3), ("weight_bound", 2), ("weight_bound", 3),
                                        ("sweep", 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_replicated_close_gives_the_one_copy_bits(case, team, dtype, monkeypatch):
    """A team whose members each close the step on a copy of the weights of their own (alternating two sets of
    partials) gives, bit for bit, the run of the same team closing on one copy that member 0 updates: every
    record, the held-out metrics, the neuron margins, the stop and the final weights. The cases: a rule that
    reads the log-risk at every step (whose members must each compute it, between the records), a run that
    stops at a weight-norm bound (each member must stop at the same step), and a sweep of two configurations
    (fewer than the threads: one team takes them from the queue in turn)."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62)
    monkeypatch.setattr(numba, "get_num_threads", lambda: team)
    X, y, X_test, y_test = problem_data("logistic", n=61, d=7, dtype=dtype)
    model = lgd.TwoLayerNet(24, train_outer=True)
    kwargs = dict(steps=90, record=lgd.Record(every=4, neuron_margins=True), X_test=X_test, y_test=y_test)
    built = []
    buffers = _numba.buffers

    def recording_buffers(kernels, size, *args, **kwargs):
        made = buffers(kernels, size, *args, **kwargs)
        built.append((size, made.Wt.shape[0]))
        return made

    monkeypatch.setattr(_numba, "buffers", recording_buffers)

    def run(replicated, bound=1e10):
        monkeypatch.setattr(_numba, "REPLICATED_CLOSE", replicated)
        built.clear()
        compute = fast(backend="numba")
        if case == "sweep":
            result = lgd.sweep(X, y, model, "logistic", stepsizes=[0.5, 8.0], compute=compute, **kwargs)
        else:
            rule = lgd.stepsize.adaptive(0.05) if case == "adaptive" else 30.0
            result = lgd.gd(X, y, model, "logistic", stepsize=rule, divergence=bound, compute=compute, **kwargs)
        assert set(built) == {(team, team if replicated else 1)}, built
        return result

    bound = 1e10
    if case == "weight_bound":  # a norm the growing weights pass half-way through the run
        bound = lgd.Divergence(weight_norm=float(np.median(run(False).weight_norm)))
    copies, one = run(True, bound), run(False, bound)
    if case == "weight_bound":
        assert 0 < one.diverged_step < 90
    for name in ("risk", "log_risk", "accuracy", "test_risk", "test_accuracy", "margin", "grad_norm", "weight_norm",
                 "neuron_margins", "eta", "weights", "outer_weights", "diverged_step", "status"):
        np.testing.assert_array_equal(getattr(copies, name), getattr(one, name), err_msg=name)


def test_split_team_only_where_the_whole_net_is_not_needed_at_once(monkeypatch):
    """A team splits the neurons among its members only in the fused mode of a net, for widths of whole cache
    lines per member, inputs below BLOCKED_MIN_D, partial gradients from SPLIT_MIN_BYTES (or the bound of
    SPLIT_MIN_BYTES_BY_TARGET where it names the target) and rows within SPLIT_ROWS_BYTES, and never for runs
    whose measurements need the whole net on one member: trajectories, tangent vectors, the sharpness."""
    m_run = dict(team=2, n=360, d=64, m=256, dtype=np.float64, blas=False, tangents=0, lanczos=0, trajectory=False,
                 linear=False)
    s_run = {**m_run, "d": 16, "m": 64, "n": 256}  # S: 8 KB of partial gradient
    monkeypatch.setattr(_numba, "target_cpu_name", lambda: "sapphirerapids")
    assert _numba.split_team(**m_run)
    assert _numba.split_team(**{**m_run, "team": 3, "m": 48 * 5})
    assert _numba.split_team(**s_run)
    monkeypatch.setattr(_numba, "target_cpu_name", lambda: "znver4")  # from 16 KB there
    assert _numba.split_team(**m_run) and not _numba.split_team(**s_run)
    assert _numba.split_team(**{**s_run, "m": 128})
    monkeypatch.setattr(_numba, "target_cpu_name", lambda: "sapphirerapids")
    assert _numba.split_team(**{**m_run, "m": 272})  # 136 columns a member: 17 cache lines
    assert not _numba.split_team(**{**m_run, "m": 272, "dtype": np.float32})  # 136 float32: 8.5 lines
    for other in (dict(team=1), dict(blas=True), dict(tangents=1), dict(lanczos=3), dict(trajectory=True),
                  dict(linear=True), dict(m=260), dict(d=tiles.BLOCKED_MIN_D), dict(d=16, m=64, dtype=np.float32),
                  dict(n=3000)):
        assert not _numba.split_team(**{**m_run, **other}), other


@pytest.mark.parametrize("case, team, dtype, d", [
    ("calm", 2, np.float64, 7), ("calm", 2, np.float32, 7), ("calm", 2, np.float64, 40),
    ("fixed_outer", 3, np.float64, 7), ("adaptive", 2, np.float64, 7), ("adaptive", 3, np.float32, 7),
    ("weight_bound", 2, np.float64, 7), ("weight_bound", 3, np.float32, 7), ("diverging", 2, np.float64, 40),
    ("sweep", 3, np.float64, 7), ("held_out", 2, np.float64, 7), ("held_out", 3, np.float32, 40)])
def test_team_split_by_neurons_matches_oracle(case, team, dtype, d, monkeypatch):
    """A team split by neurons (each member its columns of the net, the outputs' parts and the norms' parts
    exchanged at two barriers a step) against the oracle: every record (neuron margins, each member's; the
    log-risk by the samples' losses, which member 0 writes and the others read), the stepsizes, the stop
    and the final weights. With d <= w the gradient factors scale the rows of X, with d > w (d = 40) the rows
    of phi'. The cases: a calm run; a fixed outer layer; a rule reading the log-risk at every step; a stop at a
    weight-norm bound (the whole net's norm, from the members' parts: every member stops at the same step); a
    run whose gradient overflows; two configurations, fewer than the threads, one after the other; held-out
    samples (their outputs from the members' parts, at record steps: 37 samples, tiles of every size)."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES_BY_TARGET", {})
    monkeypatch.setattr(numba, "get_num_threads", lambda: team)
    X, y, _, _ = problem_data("logistic", n=150, d=d, dtype=dtype, test=False)
    held_out = {}
    if case == "held_out":
        X_test, y_test, _, _ = problem_data("logistic", n=37, d=d, dtype=dtype, seed=1, test=False)
        held_out = dict(X_test=X_test, y_test=y_test)
    model = lgd.TwoLayerNet(16 * team, train_outer=case != "fixed_outer")
    built = []
    buffers = _numba.buffers

    def recording_buffers(kernels, size, *args, **kwargs):
        made = buffers(kernels, size, *args, **kwargs)
        built.append((size, made.split is not None))
        return made

    monkeypatch.setattr(_numba, "buffers", recording_buffers)
    options = dict(steps=80, record=lgd.Record(every=3, neuron_margins=True), **held_out)
    if case == "weight_bound":
        free = lgd.gd(X, y, model, "logistic", stepsize=30.0, compute=fast(backend="numpy"), **options)
        options["divergence"] = lgd.Divergence(weight_norm=float(np.median(free.weight_norm)))
    stepsize = {"adaptive": lgd.stepsize.adaptive(0.05), "diverging": 1e30}.get(case, 30.0)
    results = []
    for backend in ("numpy", "numba"):
        built.clear()
        if case == "sweep":
            results.append(lgd.sweep(X, y, model, "logistic", stepsizes=[0.5, 8.0], compute=fast(backend=backend),
                                     **options))
        else:
            results.append(lgd.gd(X, y, model, "logistic", stepsize=stepsize, compute=fast(backend=backend),
                                  **options))
    assert set(built) == {(team, True)}, built
    oracle, split = results
    if case == "weight_bound":
        assert 0 < oracle.diverged_step < 80
    if case == "diverging":
        assert oracle.status == "diverged"
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_array_equal(split.diverged_step, oracle.diverged_step)
    assert np.array_equal(split.status, oracle.status)
    if case == "held_out":
        assert np.isfinite(oracle.test_risk).all()
    for name in ("risk", "log_risk", "accuracy", "margin", "grad_norm", "weight_norm", "neuron_margins", "eta",
                 "weights", "outer_weights", "test_risk", "test_accuracy"):
        if getattr(oracle, name) is None:  # held-out metrics of a run without held-out samples
            assert getattr(split, name) is None, name
            continue
        want, got = np.asarray(getattr(oracle, name)), np.asarray(getattr(split, name))
        atol = tol if name == "log_risk" else tol * 1e-3
        np.testing.assert_allclose(got, want, rtol=tol, atol=atol, err_msg=name)


@pytest.mark.parametrize("team", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", ["wide_inputs", "wide_net", "blocked_inputs"])
def test_wide_inputs_and_nets_match_oracle(shape, team, dtype, monkeypatch):
    """The shape-dependent paths of the fused pass, whole traces against the oracle, by one thread and by
    a team (blocks of 12 and 11 samples): from d >= WIDE_MIN_D the forward tiles take WIDE_ROWS samples
    (a block's last few TILE_ROWS, then one at a time: every kind of tile); from m > WAITING_MAX_M the
    samples wait for the gradient BACKWARD_GROUP at a time, not WAITING_SAMPLES; from d >= BLOCKED_MIN_D
    a waiting group of WAITING_BLOCKED samples (one whole, then 13; a team's blocks of 71 and 70) has its
    rows of z k-blocked at once, on the fused path whatever the tiles' width."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    # Width 29: at 64-byte vectors a float64 tile, a half tile and 5 columns (float32: a half tile and 13).
    d, width, n = {"wide_inputs": (tiles.WIDE_MIN_D + 3, 29, 23), "wide_net": (5, tiles.WAITING_MAX_M + 3, 23),
                   "blocked_inputs": (tiles.BLOCKED_MIN_D + 3, 29, tiles.WAITING_BLOCKED + 13)}[shape]
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62)
    model = lgd.TwoLayerNet(width, train_outer=True)
    problem = make_problem(model, "logistic", dtype, d=d, n=n)
    steps, every = 60, 3

    def as_team(runner):
        runner._threads = team
        assert runner.team_size(1, model.width) == team and not runner._use_blas(model.width)

    expected = run_backend(NUMPY, model, problem, [0.7], steps, every)
    actual = run_backend(NUMBA, model, problem, [0.7], steps, every, prepare=as_team)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert_traces_close(expected, actual, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("kept", ["kept", "formed"])
@pytest.mark.parametrize("products", ["fused", "blas", "blas_swapped"])
@pytest.mark.parametrize("train_outer", [False, True], ids=["fixed_outer", "train_outer"])
def test_lyapunov_from_kept_or_formed_curvature_matches_oracle(kept, products, train_outer, monkeypatch):
    """The tangent map's curvature of each sample, kept by the step's pass over the samples or, over the
    budget _numba.KEPT_BYTES, formed again a block at a time, by a team of threads (blocks of 37 and 38
    samples: a whole block of BLOCK and a part of one each), with the products fused or through BLAS (with
    the gradient's parts transposed, blas_swapped, Z keeps its rows: the pass keeping the curvature reads
    them): the log growth of two tangent vectors against the oracle's."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62 if products == "fused" else 0)
    monkeypatch.setattr(_numba, "BLAS_SWAPPED_MIN_D", 0 if products == "blas_swapped" else 1 << 62)
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: True)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    if kept == "formed":
        monkeypatch.setattr(_numba, "KEPT_BYTES", 0)
    X, y, _, _ = problem_data("logistic", n=75, test=False)
    model = lgd.TwoLayerNet(21, train_outer=train_outer)
    options = dict(stepsize=0.7, steps=20, record=lgd.Record(lyapunov=2), divergence=float("inf"))
    expected = lgd.gd(X, y, model, "logistic", compute=fast(backend="numpy"), **options)
    actual = lgd.gd(X, y, model, "logistic", compute=fast(backend="numba"), **options)
    np.testing.assert_allclose(actual.lyapunov_sum, expected.lyapunov_sum, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=1e-10)


def test_the_chunks_of_a_run_share_one_scratch(monkeypatch):
    """A run of many chunks builds its run_team scratch once (the runner keeps it between chunks: fresh
    buffers cost their page faults at every chunk), and gives the same records as in one chunk."""
    from lgd import driver

    built, calls = [], []
    build, run_team = _numba.buffers, _numba.Runner._run_team
    monkeypatch.setattr(_numba, "buffers", lambda *args: built.append(args) or build(*args))
    monkeypatch.setattr(_numba.Runner, "_run_team", lambda self, *args: calls.append(1) or run_team(self, *args))
    X, y, _, _ = problem_data("logistic", test=False)
    model = lgd.TwoLayerNet(6)
    options = dict(stepsize=0.5, steps=40, compute=fast(backend="numba"))
    whole = lgd.gd(X, y, model, "logistic", **options)
    monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-9)  # a chunk per evaluation after the first 16
    built.clear(), calls.clear()
    chunked = lgd.gd(X, y, model, "logistic", **options)
    assert len(calls) > 20 and len(built) == 1
    np.testing.assert_array_equal(chunked.risk, whole.risk)
    np.testing.assert_array_equal(chunked.weights, whole.weights)


def test_team_size_follows_the_work():
    """As many threads per configuration as the n x m block has TEAM_WORK entries for, up to the threads;
    one per configuration when there are as many configurations as threads."""
    model = lgd.TwoLayerNet(6)
    runner = _numba.Runner(make_problem(model, "logistic", np.float64), 1, 1)  # n = 23
    runner._threads = 16
    work = 23 * 6
    assert runner.team_size(1, 6) == max(1, min(16, work // _numba.TEAM_WORK))
    assert runner.team_size(1, 6 * _numba.TEAM_WORK) == 16
    assert runner.team_size(1, 3 * _numba.TEAM_WORK // 23 + 1) == 3
    assert runner.team_size(16, 6 * _numba.TEAM_WORK) == 1


@pytest.mark.parametrize("collecting", [True, False])
def test_compiling_leaves_the_garbage_collector_as_it_was(collecting, monkeypatch):
    """A runner holds Python's cyclic collector off while it compiles (or loads) its kernel, then restores
    the user's setting."""
    import gc

    monkeypatch.setattr(_numba, "_LOADED", set())  # so that this runner loads its kernel, whatever ran before
    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        _numba.Runner(make_problem(lgd.TwoLayerNet(6), "logistic", np.float64), 1, 1)
        assert gc.isenabled() == collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_a_runner_loads_its_kernel_variant_once_a_process(monkeypatch):
    """The zero-step call that compiles or loads a kernel runs for the first runner of each variant (dtype,
    product mode, tangent map, sharpness) in a process, not for the next ones, and their runs match."""
    monkeypatch.setattr(_numba, "_LOADED", set())
    chunks = []
    chunk = _numba.Runner._chunk

    def counting(runner, batch, trace, live, t_start, t_stop, team):
        chunks.append((np.dtype(runner.problem.dtype).name, t_start == t_stop))
        return chunk(runner, batch, trace, live, t_start, t_stop, team)

    monkeypatch.setattr(_numba.Runner, "_chunk", counting)
    net = lgd.TwoLayerNet(6)
    runs = [run_backend(NUMBA, net, make_problem(net, "logistic", np.float64), [0.5], 3) for _ in range(2)]
    assert chunks == [("float64", True), ("float64", False), ("float64", False)]
    _numba.Runner(make_problem(net, "logistic", np.float32), 3, 1)
    assert chunks[3:] == [("float32", True)]
    assert_traces_close(*runs, rtol=0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(2, 3), (3, 1), (2, 4, 8), (4, 2, 16)])
def test_members_rows_never_share_a_cache_line(shape, dtype):
    """Wherever numpy puts the buffer, the bytes one member writes (the first shape[-1] of each of its
    rows) and the next member's are at least a cache line apart, so never on one line."""
    rows = _numba._own_rows(shape, dtype)
    assert rows.shape[:-1] == shape[:-1] and rows.shape[-1] > shape[-1]
    for member in range(shape[0] - 1):
        used = rows[member].size - rows.shape[-1] + shape[-1]  # up to the end of its last row's first shape[-1]
        last_byte = rows[member].ctypes.data + used * rows.itemsize - 1
        assert rows[member + 1].ctypes.data - last_byte > _numba.CACHE_LINE - 1, member


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 6, 1), (3, 32, 29), (2, 32, 64), (2, 6, 128), (2, 32, 256), (3, 6, 259),
                                   (2, 4, 1024)])
def test_members_blocks_lie_a_page_apart(shape, dtype):
    """_own_block: each member's rows follow one another while a row is at most SPAN_ROW_BYTES (the fused
    step's activation spans them), else each keeps _own_rows's gap; either way a member's rows and the
    next member's are a page (MEMBER_GAP bytes) or more apart, so that no core's prefetching of its own
    block reaches into another's. _gapless's rows follow one another at any width, its blocks as far apart."""
    team, rows, width = shape
    block = _numba._own_block(shape, dtype)
    spanned = width * np.dtype(dtype).itemsize <= _numba.SPAN_ROW_BYTES
    assert block.shape[0] == team and block.shape[1] >= rows
    assert block.shape[2] == width if spanned else block.shape[2] > width
    _assert_blocks_a_page_apart(block, rows, width)
    gapless = _numba._gapless(shape, dtype)
    assert gapless.shape[0] == team and gapless.shape[1] >= rows and gapless.shape[2] == width
    _assert_blocks_a_page_apart(gapless, rows, width)


def test_hessian_vector_blocks_lie_a_page_apart():
    """The members' scratch of the Hessian-vector products' blocks: each array's members a page apart too."""
    team, block, m, d = 3, 16, 24, 5
    arrays = _numba._hvp_block(team, block, m, d, np.float32)
    for array in arrays[:-1]:
        _assert_blocks_a_page_apart(array, block, array.shape[2])
    order = arrays[-1]
    assert order.shape[0] == team and (order[:, :block] == np.arange(block)).all()
    for member in range(team - 1):
        _assert_apart(order[member, block - 1:].ctypes.data + 8, order[member + 1].ctypes.data)


def test_scratch_memory_is_kept_and_reused_only_once_no_array_uses_it(monkeypatch):
    """aligned_empty takes its memory from a kept block of that size once every array made from the block is
    gone (a view of it keeps it taken); never more than SCRATCH_KEEP_BYTES are kept, free blocks of other
    sizes making room for a new one, and a block in use is neither handed out again nor dropped."""
    monkeypatch.setattr(_numba, "_BLOCKS", {})
    block = 8 * 64 * 8 + _numba.CACHE_LINE  # the bytes behind an (8, 64) float64 array
    monkeypatch.setattr(_numba, "SCRATCH_KEEP_BYTES", 3 * block)
    first = _numba.aligned_empty((8, 64))
    address = first.ctypes.data
    rows = first[2:4]
    del first
    second = _numba.aligned_empty((8, 64))
    assert second.ctypes.data != address  # rows, a view of the first array, still uses its block
    del rows
    third = _numba.aligned_empty((8, 64))
    assert third.ctypes.data == address and _numba._kept_bytes() == 2 * block
    small = _numba.aligned_empty((4, 8))  # another size: kept beside the two
    fourth = _numba.aligned_empty((8, 64))  # no room while all three are in use: not kept
    assert _numba._kept_bytes() == 2 * block + small.nbytes + _numba.CACHE_LINE
    assert len({a.ctypes.data for a in (second, third, small, fourth)}) == 4
    del fourth, small
    fifth = _numba.aligned_empty((8, 64))  # the small block, free now, makes room for this one
    assert _numba._kept_bytes() == 3 * block and list(_numba._BLOCKS) == [block]
    kept = {a.ctypes.data for a in (second, third, fifth)}
    del second, third, fifth
    assert {_numba.aligned_empty((8, 64)).ctypes.data for _ in range(3)} <= kept


def test_a_runs_scratch_reuses_the_last_runs_memory(monkeypatch):
    """A second run of the same problem builds its scratch in the first run's memory (no fresh pages to fault
    in), and runs as the first did, bit for bit."""
    monkeypatch.setattr(_numba, "_BLOCKS", {})  # whatever earlier tests left kept, or in use
    made, buffers = [], _numba.buffers

    def recording(*args, **kwargs):
        scratch = buffers(*args, **kwargs)
        made.append(scratch.Wt.ctypes.data)
        return scratch

    monkeypatch.setattr(_numba, "buffers", recording)
    X, y = lgd.data.separable(n=96, d=8, margin=0.1, seed=1)
    model = lgd.TwoLayerNet(32, activation="leaky_softplus(0.5)", scaling="mean_field")
    runs = [lgd.gd(X, y, model, "logistic", stepsize=2.0, steps=30, compute=fast(backend="numba"))
            for _ in range(2)]
    assert len(made) == 2 and made[0] == made[1]
    assert np.array_equal(runs[0].risk, runs[1].risk)


def _arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, tuple):
        for part in value:
            yield from _arrays(part)


@pytest.mark.parametrize("blas", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_buffer_starts_at_a_cache_line(dtype, blas):
    """Each scratch array of a team, and where its rows are whole lines each member's block of it, starts at
    a cache-line boundary: a 64-byte vector load or store of the tiles then never spans two lines. numpy alone
    aligns to 16 bytes: over these 30-odd buffers, plain np.empty would pass once in about 4^30 runs. (An
    empty array, such as the column pass's scratch of a run with tangent vectors, holds no line.) The same
    holds for a replicated close's copies of the weights (a run without tangents or sharpness)."""
    from lgd.kernels import numba_cpu

    b = _numba.buffers(numba_cpu, 2, 64, 16, 40, 10, dtype, blas, tangents=1, lanczos=3, eigenvalues=1,
                       curvature_rows=8)
    plain = _numba.buffers(numba_cpu, 2, 64, 16, 40, 10, dtype, blas)
    assert b.Wt.shape[0] == 1 and plain.Wt.shape[0] == (1 if blas else 2)
    arrays = [array for array in _arrays(tuple(b) + tuple(plain)) if array.size]
    assert len(arrays) > 30
    for array in arrays:
        assert array.ctypes.data % _numba.CACHE_LINE == 0, array.shape
        assert array.flags.c_contiguous and array.flags.writeable
        if array.ndim > 1 and len(array) > 1 and array[0].nbytes % _numba.CACHE_LINE == 0:
            assert array[1].ctypes.data % _numba.CACHE_LINE == 0, array.shape
    assert _numba.aligned_empty(5, np.int64).shape == (5,)
    assert _numba.aligned_empty((0, 3)).shape == (0, 3)


def test_rows_flat_is_a_run_of_rows_without_references():
    """rows_flat(A, row, count) is rows [row, row + count) of A as one 1-d array, written through to A, and
    takes no reference: called many times from counting code, A's reference count is unchanged."""
    from numba import njit

    @njit
    def scale_rows(A, row, count, factor, times):
        total = 0.0
        for _ in range(times):
            run = intrinsics.rows_flat(A, row, count)
            total += run.size
        run = intrinsics.rows_flat(A, row, count)
        for k in range(run.size):
            run[k] *= factor
        return total

    A = np.arange(5 * 7, dtype=np.float64).reshape(5, 7)
    expected = A.copy()
    expected[1:4] *= 3.0
    references = sys.getrefcount(A)
    assert scale_rows(A, 1, 3, 3.0, 1000) == 1000 * 21
    assert sys.getrefcount(A) == references
    np.testing.assert_array_equal(A, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("d, activation", [(5, "leaky_softplus"), (tiles.WIDE_MIN_D + 1, "softplus"),
                                           (tiles.WIDE_MIN_D + 1, "gelu")])
def test_activation_spans_give_the_row_by_row_results(d, activation, dtype, monkeypatch):
    """The fused step's activation over a tile's rows in one span (rows that follow one another) and row
    by row (padded rows, SPAN_ROW_BYTES 0) give the same runs bit for bit: by a team of the process's threads
    (two on this project's machines: blocks of 76 and 75 samples, a waiting group of WAITING_FUSED and a
    part of one each, so that tiles of TILE_ROWS or WIDE_ROWS samples end short and, where WIDE_ROWS does
    not divide a group, straddle the groups), train and held-out data. The buffers are recorded,
    so that the test fails if both runs took the same path."""
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62)
    X, y, X_test, y_test = problem_data("logistic", n=2 * tiles.WAITING_FUSED + 23, d=d, dtype=dtype)
    model = lgd.TwoLayerNet(24, activation=activation, train_outer=True)

    layouts = []  # (team, zt rows of exactly m entries) of every buffers() call: which path each run took
    buffers = _numba.buffers

    def recording_buffers(kernels, team, m, *args, **kwargs):
        made = buffers(kernels, team, m, *args, **kwargs)
        layouts.append((team, made.zs.shape[-1] == m and made.pending_q.shape[-1] == m))
        return made

    monkeypatch.setattr(_numba, "buffers", recording_buffers)

    def run():
        layouts.clear()
        result = lgd.gd(X, y, model, "logistic", stepsize=2.0, steps=30, X_test=X_test, y_test=y_test,
                        compute=fast(backend="numba"))
        return result, set(layouts)

    spanned, spanned_layouts = run()
    monkeypatch.setattr(_numba, "SPAN_ROW_BYTES", 0)
    by_rows, row_layouts = run()
    assert {flat for _, flat in spanned_layouts} == {True} and {flat for _, flat in row_layouts} == {False}
    assert spanned.neuron_margins is not None
    for name in ("risk", "test_risk", "margin", "grad_norm", "neuron_margins", "weights"):
        np.testing.assert_array_equal(getattr(spanned, name), getattr(by_rows, name), err_msg=name)


def test_blas_only_from_the_dimension_where_it_pays(monkeypatch):
    """The fused tiles run every problem with d < BLAS_MIN_D, however large; BLAS from there on (given
    BLAS_WORK and threadpoolctl), never for the linear model, and with 64-byte tiles (AVX-512) only where
    OpenBLAS runs AVX-512 kernels, from the target's bound (BLAS_BOUND_D on Intel's cores, that of
    BLAS_BOUND_D_BY_TARGET on the Zen cores it names, never on other Zen cores), or with BLAS_WITH_WIDE_TILES."""
    model = lgd.TwoLayerNet(6)
    runner = _numba.Runner(make_problem(model, "logistic", np.float64), 1, 1, (1, 6, 5))
    assert not runner._use_blas(1 << 40)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 5)
    usable, d = runner._threadpoolctl, runner._data.X.shape[1]
    for width in (32, 64):
        monkeypatch.setattr(runner._kernels, "VECTOR_BYTES", width)
        # (target, OpenBLAS on AVX-512 kernels, Intel's bound, Zen 4's bound, BLAS with 64-byte tiles)
        for cpu, avx512_blas, bound, zen4_bound, wide_blas in [
                ("sapphirerapids", True, d, None, True), ("sapphirerapids", True, d + 1, d, False),
                ("sapphirerapids", False, d, d, False), ("znver4", True, d, d + 1, False),
                ("znver4", True, d + 1, d, True), ("znver4", False, d, d, False), ("znver5", True, d, d, False),
                ("znver6", True, d, d, False)]:
            monkeypatch.setattr(_numba, "target_cpu_name", lambda: cpu)
            monkeypatch.setattr(_numba, "blas_is_avx512", lambda: avx512_blas)
            monkeypatch.setattr(_numba, "BLAS_BOUND_D", bound)
            monkeypatch.setitem(_numba.BLAS_BOUND_D_BY_TARGET, "znver4", zen4_bound)
            expected = usable and (width == 32 or wide_blas)
            assert runner._use_blas(1 << 40) == expected, (width, cpu, avx512_blas, bound, zen4_bound)
        monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
        assert runner._use_blas(1 << 40) == usable
        assert not runner._use_blas(1)
        monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", False)
    monkeypatch.setattr(runner._kernels, "VECTOR_BYTES", 64)
    monkeypatch.setattr(_numba, "target_cpu_name", lambda: "sapphirerapids")
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: True)
    monkeypatch.setattr(_numba, "BLAS_BOUND_D", d)
    assert runner._use_blas(1 << 40) == usable
    monkeypatch.setattr(_numba, "BLAS_FROM_BOUND", False)  # the switch: the tiles on every target
    assert not runner._use_blas(1 << 40)
    linear = _numba.Runner(make_problem(lgd.Linear(), "logistic", np.float64), 1, 1, (1, 1, 5))
    assert not linear._use_blas(1 << 40)


@pytest.mark.parametrize("cpu, zen", [("znver4", True), ("znver5", True), ("sapphirerapids", False),
                                      ("rocketlake", False)])
def test_amd_zen_target_follows_numbas_cpu_name(cpu, zen, monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", cpu)
    assert compiler.target_cpu_name() == cpu and compiler.amd_zen_target() is zen and _numba.target_cpu_name() == cpu


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tangents", [0, 1])
@pytest.mark.parametrize("avx512_blas", [True, False])
@pytest.mark.parametrize("min_d", [5, 6])
def test_blas_gradient_parts_transposed_from_the_dimension_with_avx512_blas(avx512_blas, min_d, tangents, dtype,
                                                                            monkeypatch):
    """The BLAS buffers hold the gradient's parts transposed, (team, m, d), with gemm[1] = 1, from
    BLAS_SWAPPED_MIN_D where OpenBLAS runs its AVX-512 kernels; else (team, d, m) and gemm[1] = 0. With them
    a float64 run holds Z transposed, (m, n), gemm[2] = 1, with a column group's scratch for each member,
    unless it has tangent vectors; else Z is (n, m), gemm[2] = 0 and that scratch has no columns."""
    monkeypatch.setattr(_numba, "BLAS_SWAPPED_MIN_D", min_d)
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: avx512_blas)
    team, m, d, n = 2, 3, 5, 8
    b = _numba.buffers(numba_cpu, team, m, d, n, 0, dtype, blas=True, tangents=tangents)
    swapped = avx512_blas and d >= min_d
    assert b.grads_blas.shape == ((team, m, d) if swapped else (team, d, m))
    assert b.gemm[1] == int(swapped)
    transposed = swapped and not tangents and dtype == np.float64
    assert b.Z.shape == ((m, n) if transposed else (n, m)) and b.gemm[2] == int(transposed)
    P, Q, F, outs = b.columns
    if transposed:
        group = numba_cpu.COLUMN_GROUP
        assert P.shape == Q.shape and P.shape[0] == team and P.shape[1] >= m and P.shape[2] == group
        assert F.shape[:2] == (team, 3 * numba_cpu.PRODUCT_LANES) and outs.shape[:2] == (team, 4)
        assert min(F.shape[2], outs.shape[2]) >= group
    else:
        assert all(x.shape == (team, 0, 0) for x in b.columns)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_weights_held_as_rows_only_where_the_gradient_is_transposed_and_nothing_reads_wt(dtype, monkeypatch):
    """A BLAS run holds the weights it steps as rows, W (m, d), and its gradient so (gemm[3] = 1), where the
    gradient's product is transposed (BLAS_SWAPPED_MIN_D, AVX-512 BLAS) and no tangent vectors, sharpness or
    trajectory read Wt (d, m); a run with a trajectory keeps Wt and matches the oracle (the runs with the rows
    are test_team_of_threads_matches_oracle's and test_sweep_equals_single_runs_and_oracle's blas_swapped)."""
    monkeypatch.setattr(_numba, "BLAS_SWAPPED_MIN_D", 6)
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: True)
    rows = _numba.weights_as_rows
    assert rows(6, True, 0, False, False)
    assert not rows(5, True, 0, False, False) and not rows(6, False, 0, False, False)
    assert not any(rows(6, True, *other) for other in [(1, False, False), (0, True, False), (0, False, True)])
    monkeypatch.setattr(_numba, "BLAS_WEIGHTS_AS_ROWS", False)
    assert not rows(6, True, 0, False, False)
    monkeypatch.setattr(_numba, "BLAS_WEIGHTS_AS_ROWS", True)
    monkeypatch.setattr(_numba, "blas_is_avx512", lambda: False)
    assert not rows(6, True, 0, False, False)
    m, d, n = 3, 6, 8
    held = _numba.buffers(numba_cpu, 1, m, d, n, 0, dtype, blas=True, rows=True)
    kept = _numba.buffers(numba_cpu, 1, m, d, n, 0, dtype, blas=True)
    assert held.Wt[0, 0].shape == held.grad[0, 0].shape == (m, d) and held.gemm[3] == 1
    assert kept.Wt[0, 0].shape == kept.grad[0, 0].shape == (d, m) and kept.gemm[3] == 0

    made = blas_products("blas_swapped", monkeypatch)
    X, y, _, _ = problem_data("logistic", d=7, dtype=dtype, test=False)
    model = lgd.TwoLayerNet(4, train_outer=True)
    options = dict(stepsize=0.5, steps=12, record=lgd.Record(weights=3))
    expected = lgd.gd(X, y, model, "logistic", compute=fast(backend="numpy", dtype=dtype), **options)
    actual = lgd.gd(X, y, model, "logistic", compute=fast(backend="numba", dtype=dtype), **options)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(actual.trajectory, expected.trajectory, rtol=tol, atol=tol)
    np.testing.assert_allclose(actual.weights, expected.weights, rtol=tol, atol=tol)
    assert made and {layouts[2] for layouts in made} == {0}


@pytest.mark.parametrize("libraries, expected", [
    ([("libscipy_openblas64_-1.so", "SkylakeX"), ("libscipy_openblas-2.so", "Haswell")], True),
    ([("libscipy_openblas64_-1.so", "Haswell"), ("libscipy_openblas-2.so", "SkylakeX")], False),
    ([("libscipy_openblas-2.so", "SapphireRapids")], True),
    ([("libscipy_openblas-2.so", "Zen")], False),
    ([], False)])
def test_blas_is_avx512_reads_the_kernels_of_numpys_openblas_first(libraries, expected, monkeypatch):
    import threadpoolctl

    infos = [{"internal_api": "openblas", "user_api": "blas", "filepath": f"/lib/{name}", "architecture": core}
             for name, core in libraries]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: infos)
    _numba.blas_is_avx512.cache_clear()
    try:
        assert _numba.blas_is_avx512() is expected
    finally:
        _numba.blas_is_avx512.cache_clear()


def test_no_blas_inside_a_team_without_threadpoolctl(monkeypatch):
    """BLAS in a team needs threadpoolctl to hold it to one thread; without it the fused loops do the products."""
    monkeypatch.setattr(_numba, "BLAS_WORK", 0)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    runner = _numba.Runner(make_problem(lgd.TwoLayerNet(6), "logistic", np.float64), 1, 1)
    assert runner._use_blas(6)
    runner._threadpoolctl = False
    assert not runner._use_blas(6)


@pytest.mark.parametrize("d", [7, 40], ids=["x_rows_scaled", "phi_rows_scaled"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gd_uses_the_team_and_agrees(d, dtype, monkeypatch):
    """Through lgd.gd: a single run with n m >= 2 TEAM_WORK goes to a team of threads, same numbers. The
    fused step's groups whole and in part (blocks of 150 samples for the team, 300 alone: groups of
    WAITING_FUSED and the rest), with the gradient's factor on each sample's row of X (d <= m) or of phi'."""
    X, y, X_test, y_test = problem_data("logistic", n=300, d=d)
    model = lgd.TwoLayerNet(16)
    assert tiles.waiting_samples.implementation(d, model.width) == tiles.WAITING_FUSED < 150
    kwargs = dict(stepsize=0.5, steps=200, record=3, X_test=X_test, y_test=y_test)
    monkeypatch.setattr(_numba, "TEAM_WORK", 300 * 16 // 2)
    monkeypatch.setattr(_numba, "BLAS_WORK", 1 << 62)
    team = lgd.gd(X, y, model, "logistic", compute=fast(backend="numba", dtype=dtype), **kwargs)
    oracle = lgd.gd(X, y, model, "logistic", compute=fast(backend="numpy", dtype=dtype), **kwargs)
    monkeypatch.setattr(_numba, "TEAM_WORK", 300 * 16)
    serial = lgd.gd(X, y, model, "logistic", compute=fast(backend="numba", dtype=dtype), **kwargs)
    tol = 1e-10 if dtype == "float64" else 1e-4
    for run in (team, serial):
        np.testing.assert_allclose(run.risk, oracle.risk, rtol=tol)
        np.testing.assert_allclose(run.test_risk, oracle.test_risk, rtol=tol)
        np.testing.assert_allclose(run.weights, oracle.weights, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("bound", [False, True], ids=["team_blas", "one_thread_blas"])
def test_blas_path_matches_fused(bound, monkeypatch):
    """BLAS products on each team member's block, or (products-bound problems) on one thread with all of
    BLAS's threads, against the fused loops and the oracle."""
    model = lgd.TwoLayerNet(6, train_outer=True)
    fused = run_both(model, "logistic", np.float64, [0.5], steps=40, every=3)[1]
    monkeypatch.setattr(_numba, "BLAS_WORK", 0)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_BOUND_D", 0 if bound else 1 << 30)
    monkeypatch.setattr(_numba, "_LOADED", set())  # the runner's first call compiles or loads, whatever ran before
    teams, limited = [], []
    run_team, one_blas_thread = _numba.Runner._run_team, _numba.Runner._one_blas_thread
    monkeypatch.setattr(_numba.Runner, "_run_team",
                        lambda self, team, *a: teams.append(team) or run_team(self, team, *a))
    monkeypatch.setattr(_numba.Runner, "_one_blas_thread", lambda self: limited.append(1) or one_blas_thread(self))
    expected, blas = run_both(model, "logistic", np.float64, [0.5], steps=40, every=3)
    assert_traces_close(expected, blas, rtol=1e-10, atol=1e-13)
    assert_traces_close(fused, blas, rtol=1e-10, atol=1e-13)
    import numba

    if numba.get_num_threads() > 1:  # the path taken: one thread with all of BLAS, or a team with one BLAS thread
        assert set(teams[1:]) == ({1} if bound else {numba.get_num_threads()})  # teams[0]: compiling
        assert bool(limited) != bound


def _numpy_blas_is_scipy_openblas64() -> bool:
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return config.get("name") == "scipy-openblas" and "USE64BITINT" in (config.get("openblas configuration") or "")


def test_numpy_gemm_found_where_numpy_bundles_its_openblas():
    """The BLAS mode's gemm is numpy's own OpenBLAS where numpy has one (its PyPI wheels), one address per
    dtype; elsewhere 0 (scipy's, through numba)."""
    addresses = [_numba.numpy_gemm(dtype) for dtype in ("float64", "float32")]
    if _numpy_blas_is_scipy_openblas64():
        assert all(addresses) and addresses[0] != addresses[1]
    else:
        assert addresses == [0, 0]


@pytest.mark.parametrize("gemm", ["numpy", "scipy"])
@pytest.mark.parametrize("bound", [False, True], ids=["team_blas", "one_thread_blas"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_blas_products_through_either_gemm_match_oracle(gemm, bound, dtype, monkeypatch):
    """The BLAS mode's products called through numpy's gemm (its address, a kernel argument) and through
    scipy's (numba's wrapper, address 0), on each team member's block and on one thread: the oracle's
    traces and weights."""
    if gemm == "numpy" and not _numba.numpy_gemm("float64"):
        pytest.skip("numpy has no bundled ILP64 OpenBLAS here")
    if gemm == "scipy":
        monkeypatch.setattr(_numba, "numpy_gemm", lambda dtype: 0)
    monkeypatch.setattr(_numba, "BLAS_WORK", 0)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "BLAS_BOUND_D", 0 if bound else 1 << 30)
    model = lgd.TwoLayerNet(6, train_outer=True)
    expected, blas = run_both(model, "logistic", dtype, [0.5], steps=30, every=3)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert_traces_close(expected, blas, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("blas", [False, True])
def test_runner_compiles_the_product_mode_it_runs(blas, monkeypatch):
    """Building a runner compiles (or loads) the kernel its runs take: with the fused products the BLAS
    buffers are None, so that kernel has no BLAS calls; with BLAS, the BLAS kernel. Running then
    compiles nothing more."""
    from numba import types

    monkeypatch.setattr(_numba, "BLAS_WORK", 0 if blas else 1 << 60)
    monkeypatch.setattr(_numba, "BLAS_MIN_D", 0)
    monkeypatch.setattr(_numba, "BLAS_WITH_WIDE_TILES", True)
    model = lgd.TwoLayerNet(6)
    problem = make_problem(model, "logistic", np.float64)
    state = initial_state(model, problem.X.shape[1], np.float64, [0.5])
    runner = _numba.Runner(problem, 3, 1, state.W.shape)
    compiled = set(numba_cpu.run_team.signatures)
    field = numba_cpu.Buffers._fields.index("grads_blas")
    grads_blas = [sig[-1].types[field] for sig in compiled]  # the BLAS buffers' type: an array or None
    assert any(isinstance(kind, types.Array) == blas and (kind == types.none) != blas for kind in grads_blas)
    runner.start(state, Trace.empty(1, 4, model.width, True, dim=problem.X.shape[1]))
    runner.advance(0, 4)
    assert set(numba_cpu.run_team.signatures) == compiled
    assert np.isfinite(state.W).all()


def _narrowed_sum_of_squares(x):
    """step.sum_squares_narrowing, one value at a time in Python: each entry rounded to float32 in place,
    the squares in eight float64 partial sums by k mod 8 (the last len % 8 terms in the first), their tree."""
    with np.errstate(over="ignore"):
        x[:] = x.astype(np.float32).astype(np.float64)
    sums, whole = [0.0] * 8, len(x) - len(x) % 8
    for k, v in enumerate(x.tolist()):
        sums[k % 8 if k < whole else 0] += v * v
    s = sums
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))


def test_float32_sum_of_squares_in_vector_lanes_is_the_scalar_rule():
    """sum_squares_narrowing (its eight lanes one vector: intrinsics.narrowed_square_lanes) gives the scalar
    rule bit for bit and narrows the array in place, for lengths below, at and past multiples of eight, with
    entries whose squares overflow float32 (the sum does not: it is float64's), entries that overflow it
    (inf) and squares that underflow it."""
    from numba import njit

    @njit
    def narrowing(x):
        return step.sum_squares_narrowing(x)

    rng = np.random.default_rng(11)
    for size in (0, 5, 8, 13, 64, 1003):
        for scale in (1.0, 1e-23, 1e20, 1e39):
            x = scale * rng.standard_normal(size)
            given, expected_x = x.copy(), x.copy()
            expected = _narrowed_sum_of_squares(expected_x)
            assert narrowing(x) == expected
            np.testing.assert_array_equal(x, expected_x)
            assert np.array_equal(x, given) == (size == 0)
            if size:
                assert np.isfinite(expected) == (scale < 1e39)


@functools.cache
def _row_and_column_passes():
    """(rows, columns): the BLAS mode's pass over a training block reading Z by rows (step.sample_block) and
    reading Z^T by columns (step.column_block), each returning its G in place; compiled once for the test
    below."""
    from numba import njit

    @njit
    def rows(Z, y, a, spec, record, i0, i1, p, q, qs, pending, ps, outs, grad_a, neuron, stats, us):
        step.sample_block(Z, Z, y, np.empty((0, Z.shape[1]), Z.dtype), a, spec, 1.0 / Z.shape[0], record, True,
                          i0, i1, None, 0, p, q, qs, pending, np.empty((0, 0), Z.dtype), grad_a, neuron, stats,
                          True, us, None, ps, outs, None)

    @njit
    def columns(ZT, y, a, spec, record, i0, i1, P, Q, F, outs, grad_a, neuron, stats, us):
        step.column_block(ZT, y, a, spec, 1.0 / ZT.shape[1], record, True, i0, i1, (P, Q, F, outs), 0, grad_a,
                          neuron, stats, us)

    return rows, columns


@pytest.mark.parametrize("outer", ["trained", "fixed"])
@pytest.mark.parametrize("loss", ["logistic", "exponential"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_column_pass_gives_the_row_pass_bits(loss, dtype, outer):
    """Given the same Z, step.column_block (Z held transposed: groups of COLUMN_GROUP samples, f summed for a
    whole group at once) gives sample_block's numbers bit for bit: G, the risk, accuracy and margin, each
    sample's loss argument, grad_a and the neurons' margins, on a block that starts and ends inside a group,
    for widths with and without a remainder of eight and of sixteen; with the outer layer fixed at +-c, in
    float64 the outputs in product form (formulas.PRODUCT_MAX_M), the margins from its phi."""
    rows, columns = _row_and_column_passes()
    rng = np.random.default_rng(3)
    group = numba_cpu.COLUMN_GROUP
    n, i0, i1 = 2 * group + 30, 3, 2 * group + 25
    for m in (16, 21, 40):
        spec = numba_cpu.Spec(activation=activations.get("leaky_softplus(0.5)").code, activation_param=0.5,
                              loss=losses.get(loss).code, loss_param=0.0, margin_loss=True, scale=1.0 / m,
                              train_outer=outer == "trained", linear=False, f32=dtype == np.float32,
                              risk_bound=np.inf, weight_bound=np.inf, log_risk_every_step=False)
        Z = (4 * rng.standard_normal((n, m))).astype(dtype)
        Z[5] = -40.0 - rng.random(m)  # a sample whose output is e^-40-small: the product form keeps it
        ZT, Z0 = np.ascontiguousarray(Z.T), Z.copy()
        y = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(dtype)
        a = (rng.standard_normal(m) if outer == "trained" else np.where(rng.random(m) < 0.5, -0.3, 0.3)).astype(dtype)
        spec = spec._replace(product=formulas.product_form(spec.activation, spec.f32, spec.train_outer, a[None]))
        assert spec.product == (outer == "fixed" and dtype == np.float64)
        got = {}
        for name in ("rows", "columns"):
            grad_a, neuron, stats, us = np.empty(m, dtype), np.empty(m), np.empty(3), np.zeros(n)
            if name == "rows":
                waiting = tiles.waiting_samples.implementation(1, m)
                rows(Z, y, a, spec, True, i0, i1, np.empty(m, dtype), np.empty(m, dtype), np.empty((waiting, m), dtype),
                     np.empty(waiting, np.int64), np.empty((waiting, m), dtype), np.empty((4, waiting)), grad_a, neuron,
                     stats, us)
                G = Z
            else:
                columns(ZT, y, a, spec, True, i0, i1, np.empty((1, m, group), dtype), np.empty((1, m, group), dtype),
                        np.empty((1, 3 * numba_cpu.PRODUCT_LANES, group), dtype), np.empty((1, 4, group)), grad_a,
                        neuron, stats, us)
                G = ZT.T
            got[name] = (G[i0:i1], stats, us, grad_a, neuron)
        for G in (Z, ZT.T):  # G over the block's z, nothing outside it
            assert not np.isin(G[i0:i1], Z0[i0:i1]).any()
            np.testing.assert_array_equal(np.delete(G, np.s_[i0:i1], axis=0), np.delete(Z0, np.s_[i0:i1], axis=0))
        for row_part, column_part in zip(got["rows"], got["columns"]):
            np.testing.assert_array_equal(column_part, row_part)
        assert np.isfinite(got["rows"][1]).all() and np.count_nonzero(got["rows"][2]) == i1 - i0


@functools.cache
def _tiled_and_scalar_products():
    """(tiled, scalar): both products of the fused mode by forward_rows and backward_rows, and by plain fma
    loops in the same order; compiled once per dtype for every case of the test below."""
    from numba import njit

    @njit
    def tiled(X, Wt, rows, count, qs, zt, grad):
        tiles.forward_rows(X, 1, min(count, tiles.WIDE_ROWS), Wt, zt)
        tiles.backward_rows(X, rows, count, qs, grad)

    @njit
    def scalar(X, Wt, rows, count, qs, zt, grad):
        d, m = Wt.shape
        for r in range(min(count, tiles.WIDE_ROWS)):
            for j in range(m):
                s = intrinsics.like(Wt, 0.0)
                for k in range(d):
                    s = intrinsics.fma(X[1 + r, k], Wt[k, j], s)
                zt[r, j] = s
        for k in range(d):
            for j in range(m):
                g = grad[k, j]
                for r in range(count):
                    g = intrinsics.fma(X[rows[r], k], qs[r, j], g)
                grad[k, j] = g

    return tiled, scalar


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_register_tiles_k_blocked_sum_as_the_scalar_loops(dtype):
    """forward_rows_blocked (a group's rows of z BLOCK_K entries of k at a time: tiles of WIDE_ROWS, one of
    TILE_ROWS, the rest row by row) gives the plain fma loops' results bit for bit, for d below, at and
    past multiples of BLOCK_K and every count of rows up to two wide tiles, a short one and three more."""
    from numba import njit

    @njit
    def blocked(X, Wt, count, zt):
        tiles.forward_rows_blocked(X, 2, count, Wt, zt)

    @njit
    def scalar(X, Wt, count, zt):
        d, m = Wt.shape
        for r in range(count):
            for j in range(m):
                s = intrinsics.like(Wt, 0.0)
                for k in range(d):
                    s = intrinsics.fma(X[2 + r, k], Wt[k, j], s)
                zt[r, j] = s

    rng = np.random.default_rng(6)
    columns = intrinsics.tile_columns(dtype)
    rows = 2 * tiles.WIDE_ROWS + tiles.TILE_ROWS + 3
    for d in (tiles.BLOCK_K - 1, tiles.BLOCK_K, 2 * tiles.BLOCK_K + 5):
        for m in (3, columns, columns + 5, 2 * columns):
            X = rng.standard_normal((rows + 2, d)).astype(dtype)
            Wt = rng.standard_normal((d, m)).astype(dtype)
            for count in range(1, rows + 1):
                outs = [np.full((rows + 1, m), np.nan, dtype) for _ in range(2)]
                blocked(X, Wt, count, outs[0])
                scalar(X, Wt, count, outs[1])
                np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"d={d} m={m} count={count}")


# d = 13: whole backward tiles and rows after them at both widths (GRAD_ROWS 8 or 4).
@pytest.mark.parametrize("d", [1, 4, 7, 13, 16], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_register_tiles_sum_as_the_scalar_loops(dtype, d):
    """forward_rows and backward_rows (register tiles of four and WIDE_ROWS samples forward, then the rows and
    columns after them; other counts one by one) give the results of plain fma loops in the same order,
    bit for bit, for sizes below, at and between multiples of a tile, and (with 64-byte vectors) with a
    32-byte half tile after the full ones. At this process's vector width; the other width runs in
    test_the_other_vector_width."""
    tiled, scalar = _tiled_and_scalar_products()
    rng = np.random.default_rng(5)
    columns, half = intrinsics.tile_columns(dtype), intrinsics.tile_columns(dtype, intrinsics.HALF_BYTES)
    for m in sorted({3, half, half + 3, columns, columns + half + 3, 2 * columns + 5, 64}):
        X = rng.standard_normal((9, d)).astype(dtype)
        Wt, grad = (rng.standard_normal((d, m)).astype(dtype) for _ in range(2))
        # backward_rows takes up to a fused group (WAITING_FUSED) below the k-blocked sizes
        qs = rng.standard_normal((tiles.WAITING_FUSED, m)).astype(dtype)
        rows = rng.integers(0, len(X), tiles.WAITING_FUSED)
        for count in range(1, tiles.WAITING_FUSED + 1):
            outs = []
            for kernel in (tiled, scalar):
                zt, g = np.full((tiles.WIDE_ROWS, m), np.nan, dtype), grad.copy()
                kernel(X, Wt, rows, count, qs, zt, g)
                outs.append((zt, g))
            where = f"m={m} count={count}"
            np.testing.assert_array_equal(outs[0][0], outs[1][0], err_msg=f"forward {where}")
            np.testing.assert_array_equal(outs[0][1], outs[1][1], err_msg=f"backward {where}")


def test_vector_width_is_the_override_or_the_target():
    """LGD_VECTOR_BYTES decides the tiles' width when set; else 64 bytes where numba's target has AVX-512."""
    chosen = os.environ.get(compiler.VECTOR_BYTES_VARIABLE)
    expected = int(chosen) if chosen else compiler.target_vector_bytes()
    assert intrinsics.VECTOR_BYTES == compiler.VECTOR_BYTES == expected
    assert intrinsics.tile_columns(np.float64) == expected // 4 and intrinsics.tile_columns(np.float32) == expected // 2


@pytest.mark.parametrize("value", ["48", "avx512", "0"])
def test_an_unknown_vector_width_is_refused(value):
    with pytest.raises(ValueError, match=r"LGD_VECTOR_BYTES=.*one of 32, 64"):
        compiler.vector_bytes({compiler.VECTOR_BYTES_VARIABLE: value})


def test_the_cache_keys_on_the_vector_width():
    """A kernel's cache index at 32 bytes and at 64 differs in its stamp (never loaded as the other's) and
    in its file (neither overwrites the other's entries)."""
    narrow, wide = (compiler.FolderCache(numba_cpu.run_team.py_func, width)._cache_file for width in (32, 64))
    assert narrow._source_stamp != wide._source_stamp
    assert narrow._index_path != wide._index_path
    assert narrow._data_name_pattern != wide._data_name_pattern


# An AVX-512 target whose LLVM tuning prefers 32-byte vectors (Intel's), named explicitly, so that the
# check compiles the same code on any x86 host (it only compiles, nothing runs).
_INTEL_AVX512 = {"NUMBA_CPU_NAME": "skylake-avx512",
                 "NUMBA_CPU_FEATURES": "+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cmov,+avx,+avx2,"
                                       "+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+avx512f,+avx512dq,+avx512cd,"
                                       "+avx512bw,+avx512vl"}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 targets only")
@pytest.mark.parametrize("width", [32, 64])
def test_loops_llvm_vectorises_take_the_vector_width(width):
    """The activation's loop that LLVM vectorises itself (log1p and the division) is built at the process's
    vector width, also on a target whose tuning prefers 32 bytes: 64-byte (zmm) divisions at 64, 32-byte (ymm)
    at 32. (exp before it is passes' code, eight lanes at either width.)"""
    script = (
        "import numpy as np, re\n"
        "from numba import njit\n"
        "from lgd.activations import LEAKY_SOFTPLUS\n"
        "from lgd.kernels.numba_cpu.formulas import activate_span\n"
        "@njit(error_model='numpy')\n"
        "def apply(z, p, q):\n"
        "    activate_span(LEAKY_SOFTPLUS, 0.5, z, p, q, None, z.size)\n"
        "apply.compile('(float64[::1], float64[::1], float64[::1])')\n"
        "asm = apply.inspect_asm(apply.signatures[0])\n"
        "print(len(re.findall(r'vdivpd\\s[^\\n]*ymm', asm)), len(re.findall(r'vdivpd\\s[^\\n]*zmm', asm)))\n")
    env = dict(os.environ, **_INTEL_AVX512, **{compiler.VECTOR_BYTES_VARIABLE: str(width)})
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    narrow, wide = map(int, done.stdout.split())
    assert (wide > 0 if width == 64 else narrow > 0 and wide == 0), done.stdout


# The checks whose code depends on the vector width: the tiles, dot_row and log1p_parts' quotients bit for
# bit, the whole kernel against the oracle (float64: the tiles and the quotients are the only
# width-dependent code, and each float32 tile is checked bit for bit above).
WIDTH_CHECKS = ("vector_width_is_the_override or register_tiles or dot_row or two_divisions"
                " or (wide_inputs_and_nets and float64)")


def _index_stamp(path):
    import pickle

    with open(path, "rb") as index:
        pickle.load(index)  # numba's version
        return pickle.loads(index.read())[0]


def test_the_other_vector_width():
    """The width this process did not compile, by LGD_VECTOR_BYTES in one subprocess running WIDTH_CHECKS
    (LLVM splits 64-byte vectors on a host without AVX-512, so both widths run anywhere). It shares this
    process's numba cache folder: the other width's kernel goes to its own index, stamped with its width,
    and this width's index is left byte for byte as it was."""
    other = {32: 64, 64: 32}[intrinsics.VECTOR_BYTES]
    _numba.Runner(make_problem(lgd.TwoLayerNet(6), "logistic", np.float64), 1, 1)  # this width's kernel cached
    own_index = numba_cpu.run_team._cache._cache_file._index_path
    other_index = compiler.FolderCache(numba_cpu.run_team.py_func, other)._cache_file._index_path
    before = Path(own_index).read_bytes()
    env = dict(os.environ, **{compiler.VECTOR_BYTES_VARIABLE: str(other)})
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-k", WIDTH_CHECKS],
                          capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-1000:]
    assert Path(own_index).read_bytes() == before
    assert _index_stamp(other_index)[-1] == f"vector_bytes={other}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_dot_row_sums_as_eight_scalar_chains(dtype):
    """dot_row's vector accumulators give the eight scalar fma chains' sums bit for bit (terms j = r mod 8
    in chain r, the last m % 8 in chain 0, then the pairwise total), reading nothing past m."""
    from numba import njit

    @njit
    def vector(a, p, m):
        return step.dot_row(a, p, m)

    @njit
    def scalar(a, p, m):
        s = [intrinsics.like(p, 0.0)] * 8
        for j in range(m - m % 8):
            s[j % 8] = intrinsics.fma(a[j], p[j], s[j % 8])
        for j in range(m - m % 8, m):
            s[0] = intrinsics.fma(a[j], p[j], s[0])
        return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))

    rng = np.random.default_rng(7)
    for m in (0, 1, 7, 8, 9, 16, 63, 64, 259):
        a = rng.standard_normal(m).astype(dtype)
        p = np.concatenate([rng.standard_normal(m), [np.nan] * 8]).astype(dtype)  # a padded row
        got, want = vector(a, p, m), scalar(a, p, m)
        assert got == want, (m, got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_sum_squares_in_float64(dtype):
    """sum_squares (gradient and weight norms): float64 sums of the squares, in vector code for float64
    arrays (dot_row's lanes) and widened entry by entry for float32 ones."""
    from numba import njit

    @njit
    def apply(x):
        return step.sum_squares(x)

    rng = np.random.default_rng(11)
    for size in (0, 1, 7, 8, 9, 1024, 16385):
        x = rng.standard_normal(size).astype(dtype)
        np.testing.assert_allclose(apply(x), np.sum(x.astype(np.float64) ** 2), rtol=1e-14, atol=0)


def test_exp_and_log1p_accuracy():
    from numba import njit

    @njit
    def apply(x):
        out = np.empty((3, x.size))
        for i in range(x.size):
            out[0, i] = exp_log1p.exp(x[i])
            e = exp_log1p.exp(-abs(x[i]))
            out[1, i], out[2, i] = exp_log1p.log1p_unit(e)
        return out

    x = np.concatenate([np.linspace(-745, 709.7, 200001), [-1e6, -746, 709.78, 710, 1e6, 0.0, -0.0]])
    out = apply(x)
    with np.errstate(over="ignore"):
        exact = np.exp(x)
    normal = exact > 1e-300
    np.testing.assert_allclose(out[0][normal], exact[normal], rtol=4e-16)
    assert np.all(out[0][~normal & (exact == 0)] == 0) and np.isinf(out[0][x > 709.8]).all()
    np.testing.assert_allclose(out[1], np.log1p(np.exp(-np.abs(x))), rtol=4e-16, atol=1e-320)
    np.testing.assert_allclose(out[2], 1.0 / (1.0 + np.exp(-np.abs(x))), rtol=4e-16)
    assert np.isnan(apply(np.array([np.nan]))).all()


def test_log1p_parts_quotients_are_the_two_divisions_bit_for_bit():
    """The sigmoid 1 / (1 + e) and s = e / (2 + e) from one division and a Newton step each
    (quotients_one_division, which log1p_parts takes with 64-byte vectors on Intel's cores:
    exp_log1p.ONE_DIVISION) are the correctly rounded quotients, as two divisions give them, at every e of
    [0, 1] tried (uniform, e^-x down to the subnormals, both ends), and nan is kept; log1p_parts returns
    the same whichever it compiled."""
    from numba import njit

    @njit
    def apply(e):
        out = np.empty((4, e.size))
        for i in range(e.size):
            out[0, i], out[1, i] = exp_log1p.quotients_one_division(e[i])
            s, u, r = exp_log1p.log1p_parts(e[i])
            out[2, i], out[3, i] = r, s
        return out

    rng = np.random.default_rng(12)
    e = np.concatenate([rng.random(300_000), np.exp(-rng.random(300_000) * 745.0),
                        [0.0, 1.0, np.nextafter(1.0, 0.0), 5e-324, 2.2250738585072014e-308]])
    out = apply(e)
    for r, s in (out[:2], out[2:]):
        np.testing.assert_array_equal(r, 1.0 / (1.0 + e))
        np.testing.assert_array_equal(s, e / (2.0 + e))
    assert np.isnan(apply(np.array([np.nan]))).all()
    assert exp_log1p.ONE_DIVISION == (intrinsics.VECTOR_BYTES == 64 and not compiler.amd_zen_target())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_exp_of_a_nonpositive_argument_is_exp_bit_for_bit(dtype):
    """exp_nonpositive (the activations' e^-|z|, without the clamp from above) is exp on x <= 0, bit for bit,
    to the underflow and at -inf; a nan passes both clamps and both arithmetics (no select keeps it)."""
    from numba import njit

    @njit
    def apply(x):
        out = np.empty((2, x.size), dtype=x.dtype)
        for i in range(x.size):
            out[0, i] = exp_log1p.exp_of(x[i])
            out[1, i] = exp_log1p.exp_nonpositive_of(x[i])
        return out

    low = -760.0 if dtype == np.float64 else -110.0
    x = np.concatenate([np.linspace(low, 0.0, 100001), [-np.inf, -0.0, np.nan, -1e30]]).astype(dtype)
    out = apply(x)
    np.testing.assert_array_equal(out[0], out[1])
    assert out[0][-4] == 0.0 and out[0][-3] == 1.0 and np.isnan(out[0][-2]) and out[0][-1] == 0.0
    assert np.isnan(apply(np.array([np.nan, -np.nan], dtype=dtype))).all()
    with np.errstate(over="ignore"):
        assert np.array_equal(apply(np.array([np.inf, 1e30], dtype=dtype))[0], [np.inf, np.inf])


@functools.cache
def _vector_passes():
    from numba import njit

    from lgd.kernels.numba_cpu import passes

    def compiled(exp_pass, product_pass):
        @njit
        def exps(z, count):
            e = np.full(count + 3, -7.0)
            exp_pass(z, e, count)
            return e

        @njit
        def products(c, z, count):
            """(e, l, phi', phi'') of z's first count entries, and the three entries after them untouched."""
            out = np.full((4, z.size), -7.0, z.dtype)
            out[0] = z
            product_pass(c, out[0], out[1], out[2], out[3], count)
            return out

        return exps, products

    return {"polynomial": compiled(passes.exp_pass_polynomial, passes.product_pass_polynomial),
            "table": compiled(passes.exp_pass_table, passes.product_pass_table)}


def _needs_avx512(form):
    if form == "table" and not compiler.target_avx512():
        pytest.skip("exp by a table is AVX-512 code: numba's target here has no avx512f")


def _entries_of_z():
    rng = np.random.default_rng(21)
    specials = [0.0, -0.0, np.nan, np.inf, -np.inf, 745.1, 745.2, 746.0, 1e300, 5e-324, 708.4, 709.8, 744.4]
    # the table form's worst found (0.760-0.774 ulp): r near +-ln2/32, the ends of its reduced interval
    worst = [670.2949827793004, 679.3058882347201, 544.8353412509284, 60.32540866697181, 0.7147922213847552]
    return np.concatenate([rng.uniform(-745.2, 745.2, 20000), 3.0 * rng.standard_normal(20000),
                           -np.linspace(700.0, 745.2, 4001), specials, worst])


@pytest.mark.parametrize("form", ["polynomial", "table"])
def test_vector_exp_of_minus_abs_z(form):
    """passes' e^-|z|, eight lanes at a time and the rest through a vector in memory: the polynomial form
    (hosts without AVX-512) is exp_nonpositive bit for bit; the table form (AVX-512) within 0.78 ulp of mpmath's
    over the normal range and 1 ulp of the subnormals' spacing, 1 at 0, 0 below the underflow and at infinities,
    nan kept. Either gives every entry the same bits at any position of a span of any length, writes nothing
    beyond it, and nothing for a negative count."""
    mpmath = pytest.importorskip("mpmath")
    from numba import njit
    _needs_avx512(form)
    exps, _ = _vector_passes()[form]

    @njit
    def scalar(z):
        out = np.empty_like(z)
        for i in range(z.size):
            out[i] = exp_log1p.exp_nonpositive(-abs(z[i]))
        return out

    z = _entries_of_z()
    e = exps(z, z.size)
    assert e[z.size:].tolist() == [-7.0] * 3
    e = e[:z.size]
    for count in range(18):
        for start in (0, 5):
            part = exps(z[start:start + count], count)
            np.testing.assert_array_equal(part[:count], e[start:start + count])
            assert part[count:].tolist() == [-7.0] * 3
    assert exps(z[:8], -1).tolist() == [-7.0] * 2  # a negative count is no entry (nothing written)
    if form == "polynomial":
        np.testing.assert_array_equal(e, scalar(z))
    finite = np.isfinite(z)
    assert np.isnan(e[np.isnan(z)]).all() and (e[np.isinf(z)] == 0.0).all() and e[z == 0.0].tolist() == [1.0, 1.0]
    with mpmath.workprec(120):
        exact = [mpmath.exp(-abs(mpmath.mpf(float(v)))) for v in z[finite]]
        # in ulps of the nearest float64 (the difference alone can lie below the least subnormal)
        ulps = np.array([float(abs(mpmath.mpf(float(got)) - want) / max(np.spacing(float(want)), 5e-324))
                         for got, want in zip(e[finite], exact)])
    normal = np.array([float(w) for w in exact]) >= np.finfo(float).tiny  # a subnormal is rounded twice
    assert ulps[normal].max() <= (0.78 if form == "table" else 1.2), z[finite][normal][np.argmax(ulps[normal])]
    assert ulps[~normal].max() <= 1.0


@pytest.mark.parametrize("form", ["polynomial", "table"])
@pytest.mark.parametrize("c", [0.5, 0.0, 0.1])
def test_vector_product_pass_entries(form, c):
    """passes' product form's pass: from its own e (the exp pass's bits), l = max(z, c z), phi' = (1 - c) s + c
    with s = (1 or e) / (1 + e) (one division) and phi'' = (1 - c) (e s) s (z >= 0) or (1 - c) s (1 - s) as numpy
    forms them, bit for bit, over spans of every length up to 17, nothing written beyond them; phi'' within 4 ulp
    of (1 - c) e / (1 + e)^2 (mpmath; measured 3.6 where z >= 0, 2.2 below); float32 spans as the float64 values
    rounded."""
    _needs_avx512(form)
    exps, products = _vector_passes()[form]
    z = _entries_of_z()
    out = products(c, z, z.size)
    e = out[0]
    np.testing.assert_array_equal(e, exps(z, z.size)[:z.size])
    with np.errstate(invalid="ignore"):
        lin = np.where(c * z > z, c * z, z) if c != 0.0 else np.where(0.0 > z, 0.0, z)
        s = np.where(z >= 0.0, 1.0, e) / (1.0 + e)
        upper = ~(z < 0.0)  # nan included
    dphi = (1.0 - c) * s
    # numpy has no fma: phi' = fma(1 - c, sigmoid, c) within an ulp of the product rounded first
    np.testing.assert_array_equal(out[1], lin)
    np.testing.assert_allclose(out[2], dphi + c, rtol=2.3e-16, atol=0)
    np.testing.assert_array_equal(out[3], np.where(upper, (1.0 - c) * (e * s) * s, (1.0 - c) * s * (1.0 - s)))
    # phi'' against mpmath where it is a normal number (subnormal e's spacing is not relative)
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workprec(120):
        for v, got in zip(z[::97], out[3][::97]):
            if np.isfinite(v):
                ev = mpmath.exp(-abs(mpmath.mpf(float(v))))
                want = (1 - mpmath.mpf(c)) * ev / (1 + ev) ** 2
                if want >= np.finfo(float).tiny:
                    assert abs(mpmath.mpf(float(got)) - want) <= 4 * np.spacing(float(want)), v
    for count in range(18):
        part = products(c, z[3:3 + count + 3], count)
        np.testing.assert_array_equal(part[:, :count], out[:, 3:3 + count])
        assert (part[1:, count:] == -7.0).all()
    # float32 spans (which a float32 kernel compiles, never runs): the float64 values of their z, rounded
    with np.errstate(over="ignore"):
        z32 = z.astype(np.float32)  # 1e300 becomes inf
        np.testing.assert_array_equal(products(c, z32, z.size), products(c, z32.astype(np.float64), z.size).astype(
            np.float32))


def test_float32_exp_softplus_and_sigmoid_accuracy():
    """The float32 functions of float32 runs: a few float32 ulps over the whole range, inf, 0 and nan kept."""
    from numba import njit

    @njit
    def apply(x):
        out = np.empty((3, x.size), dtype=np.float32)
        for i in range(x.size):
            out[0, i] = exp_log1p.exp32(x[i])
            out[1, i], out[2, i] = exp_log1p.softplus_sigmoid_from_exp32(x[i], exp_log1p.exp32(-abs(x[i])))
        return out

    x = np.concatenate([np.linspace(-110, 95, 400001), [-1e30, 88.72, 88.73, 0.0, -0.0, 1e30]]).astype(np.float32)
    out = apply(x)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = np.exp(x64)
    normal = (exact > 1.2e-38) & (exact < 3.4e38)
    np.testing.assert_allclose(out[0][normal], exact[normal], rtol=2e-7)
    assert np.all(out[0][exact < 1e-46] == 0) and np.isinf(out[0][exact > 3.41e38]).all()
    softplus, sigmoid = np.logaddexp(0.0, x64), np.exp(-np.logaddexp(0.0, -x64))
    shown = softplus > 1.2e-38
    np.testing.assert_allclose(out[1][shown], softplus[shown], rtol=3e-7)
    shown = sigmoid > 1.2e-38
    np.testing.assert_allclose(out[2][shown], sigmoid[shown], rtol=5e-7)
    assert np.isnan(apply(np.array([np.nan], dtype=np.float32))).all()


def test_second_process_loads_from_cache_and_only_a_compile_says_so(tmp_path):
    """With an empty cache the first process compiles and says so on stderr (once); the second loads the
    kernel from the cache (no cache miss) and says nothing."""
    script = (
        "import time, numpy as np, lgd\n"
        "from lgd.backends import Problem, _numba\n"
        "from lgd.kernels import numba_cpu\n"
        "X = np.ones((4, 2)); y = np.ones(4)\n"
        "p = Problem(X=X, y=y, activation=lgd.activations.get('relu'), loss=lgd.losses.get('logistic'),\n"
        "            scale=1.0, train_outer=False, linear=False)\n"
        "_numba.Runner(p, 1, 1)\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in (numba_cpu.run_team,)))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    assert int(first.stdout.split()[-1]) >= 1
    assert first.stderr.count("lgd: compiling the numba kernel for float64 (fused products)") == 1, first.stderr
    assert int(second.stdout.split()[-1]) == 0
    assert "compiling" not in second.stderr


def test_log_normal_within_an_ulp_and_a_bit():
    """exp_log1p.log_normal (the product form's log of a row) is within 1.1 ulp of the log (math.log, itself
    within an ulp) over the normal numbers: random exponents and mantissas, the reduction's edges at sqrt(1/2)
    and sqrt 2, powers of two, the smallest and largest normal numbers."""
    from numba import njit

    from lgd.kernels.numba_cpu.exp_log1p import log_normal

    @njit
    def logs(x, out):
        for i in range(x.size):
            out[i] = log_normal(x[i])

    rng = np.random.default_rng(5)
    edges = [np.sqrt(0.5), np.sqrt(2.0), 1.0, 2.0, 0.5, np.finfo(float).tiny, np.finfo(float).max]
    x = np.concatenate([np.exp(rng.uniform(-700, 700, 20000)), rng.uniform(0.5, 2.0, 20000),
                        2.0 ** rng.integers(-1022, 1024, 500), np.nextafter(edges, 0.0), edges,
                        np.nextafter(edges[:-1], np.inf)])
    got = np.empty_like(x)
    logs(x, got)
    expected = np.array([math.log(v) for v in x])
    assert got[x == 1.0].tolist() == [0.0] * int(np.count_nonzero(x == 1.0))
    ulps = np.abs(got - expected) / np.spacing(np.abs(expected) + (expected == 0))
    assert ulps.max() <= 2.0, x[np.argmax(ulps)]
    assert np.mean(ulps) < 0.3


@functools.cache
def _product_rows():
    from numba import njit

    from lgd.kernels.numba_cpu import formulas as kernel_formulas

    @njit
    def product_rows(code, c, a, Z, outputs, phi, dphi, alpha, summed_dphi):
        """The product form's outputs, phi (product_phi) and phi' of every row of Z (copied), given its alpha,
        and activate_span's phi' (the sum of phi's pass)."""
        m = Z.shape[1]
        V = Z.copy()
        for i in range(Z.shape[0]):
            kernel_formulas.activate_span(code, c, Z[i], np.empty(m), summed_dphi[i], None, m)
            kernel_formulas.product_span(c, V[i], phi[i], dphi[i], None, m)
            outputs[i] = kernel_formulas.product_row(c, alpha, a, V[i], phi[i], m)
            kernel_formulas.product_phi_span(c, V[i], phi[i], m)

    return product_rows


@pytest.mark.parametrize("name", ["leaky_softplus(0.5)", "softplus", "leaky_softplus(0.1)"])
def test_product_form_outputs_match_the_sum_of_phi(name):
    """sum_j a_j phi(z_j) in product form (formulas.PRODUCT_MAX_M: two logs a row) against the oracle's formula
    in numpy with outer weights +-alpha, for widths 1 to 70 (remainders of sixteen), |z| from 1e-300 to 1e6 and
    rows whose every z is far below 0 (outputs of e^-50, e^-700): within a few roundings of the sum of
    |a_j phi_j|; phi from the product form within a few roundings of |phi|, and phi' within an ulp of
    activate_span's (whose sigmoid of z < 0 is e times 1 / (1 + e), two roundings where the product form's is one
    division)."""
    activation = activations.get(name)
    product_rows = _product_rows()
    rng = np.random.default_rng(8)
    for m in (1, 7, 16, 17, 33, 64, 70):
        scales = 10.0 ** rng.uniform(-300, 6, size=(40, 1))
        Z = scales * rng.standard_normal((40, m))
        Z[0] = 0.0
        Z[1, ::2] = 800.0 * rng.standard_normal(Z[1, ::2].shape)
        Z[2] = -50.0 - rng.random(m)
        Z[3] = -700.0 - rng.random(m)
        a = np.where(rng.random(m) < 0.5, -1.0, 1.0) / m
        outputs, phi, dphi, summed_dphi = np.empty(40), np.empty((40, m)), np.empty((40, m)), np.empty((40, m))
        product_rows(activation.code, activation.param, a, Z, outputs, phi, dphi, 1.0 / m, summed_dphi)
        exact_phi = activation.phi(Z)
        terms = np.abs(a * exact_phi).sum(axis=1) + np.abs(a).sum() * np.log(2.0)
        np.testing.assert_array_less(np.abs(outputs - exact_phi @ a), 8 * np.finfo(float).eps * terms + 1e-300)
        np.testing.assert_array_less(np.abs(phi - exact_phi), 4 * np.finfo(float).eps * (np.abs(exact_phi) + 1.0))
        np.testing.assert_allclose(dphi, summed_dphi, rtol=4e-16, atol=0)
        np.testing.assert_array_equal(dphi[Z >= 0.0], summed_dphi[Z >= 0.0])
        np.testing.assert_allclose(dphi, activation.dphi(Z), rtol=4e-16, atol=0)


@pytest.mark.parametrize("case, eligible", [
    ("alternating", True), ("one neuron", True), ("two configurations", True), ("trained", False),
    ("float32", False), ("relu", False), ("magnitudes differ", False), ("another configuration's differ", False),
    ("zeros", False), ("too wide", False)])
def test_product_form_only_where_it_holds(case, eligible):
    """formulas.product_form (the host's choice for a run): the softplus family in float64 with the outer layer
    fixed at +-alpha_c (alpha_c > 0) in every configuration, up to PRODUCT_MAX_M neurons; every other run keeps
    the sum of phi."""
    m = formulas.PRODUCT_MAX_M + 1 if case == "too wide" else (1 if case == "one neuron" else 6)
    A = np.where(np.arange(m) % 2 == 0, 0.25, -0.25)[None]
    if case in ("two configurations", "another configuration's differ"):
        A = np.vstack([A, 3.0 * A])
        if case == "another configuration's differ":
            A[1, 2] = 1.0
    if case == "magnitudes differ":
        A[0, 3] = 0.5
    if case == "zeros":
        A[:] = 0.0
    code = activations.get("relu" if case == "relu" else "leaky_softplus(0.5)").code
    assert formulas.product_form(code, case == "float32", case == "trained", A) is eligible


@pytest.mark.parametrize("d, m", [(5, 24), (40, 128)])
@pytest.mark.parametrize("team", [1, 2])
def test_recording_neuron_margins_leaves_the_run_as_it_is(team, d, m, monkeypatch):
    """A run that records the neurons' margins (phi from the product form at those steps) steps as one that
    does not, bit for bit, by one thread and by a team (split by samples, or by neurons for the wider net); and
    its margins are the oracle's."""
    import numba

    monkeypatch.setattr(numba, "get_num_threads", lambda: team)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES", 0 if m > 100 else 1 << 40)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES_BY_TARGET", {})
    X, y = lgd.data.separable(70, d, margin=0.1, seed=2)
    net = lgd.TwoLayerNet(m, activation="leaky_softplus(0.5)", scaling="mean_field")
    runs = {}
    for margins in (True, False):
        runs[margins] = lgd.gd(X, y, net, "logistic", stepsize=20.0, steps=40,
                               record=lgd.Record(every=3, neuron_margins=margins), compute=fast(backend="numba"))
    for name in ("risk", "log_risk", "margin", "grad_norm", "weights"):
        np.testing.assert_array_equal(getattr(runs[True], name), getattr(runs[False], name), err_msg=name)
    oracle = lgd.gd(X, y, net, "logistic", stepsize=20.0, steps=40, record=lgd.Record(every=3, neuron_margins=True),
                    compute=fast(backend="numpy"))
    np.testing.assert_allclose(runs[True].neuron_margins, oracle.neuron_margins, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("activation", ["softplus", "tanh", "gelu", "leaky_softplus"])
def test_the_sharpness_finds_every_copy_of_a_repeated_eigenvalue(activation):
    """m identical neurons: H = I (x) B + 1 1^T (x) C, each eigenvalue of B m - 1 times. The restarts' directions
    (1 + 0.5 sin(c p + 7 j + 3 k): three neuron profiles, a space this Hessian keeps, and phases 1 to 4 only)
    found 2 copies whatever the multiplicity: 0.082294 x 4 came back as two copies, then 0.00833 and -0.001221."""
    X, y = lgd.data.xor(n=40)
    loss = losses.get("logistic")
    for m in (3, 4, 5, 6):
        net = lgd.TwoLayerNet(m, activation=activation, outer=[1.0] * m, scaling=1.0)
        W0 = np.tile([0.7, -0.4], (m, 1))
        H = lgd.hessian.dense_hessian(W0, np.ones(m), X, y, net.activation, loss, 1.0)
        for k in range(2, min(6, 2 * m - 1) + 1):
            want = np.linalg.eigvalsh(H)[::-1][:k]
            run = lgd.gd(X, y, net, "logistic", stepsize=0.1, steps=1, init=W0, compute="numba",
                         record=lgd.Record(sharpness_every=1, sharpness_k=k))
            np.testing.assert_allclose(run.sharpness[0], want, rtol=0, atol=1e-6 * abs(want[0]),
                                       err_msg=f"m={m} k={k}")


@pytest.mark.parametrize("seed", [4, 6, 9])
def test_the_sharpness_finds_every_copy_where_neurons_differ_but_share_their_active_points(seed):
    """ReLU, outer layer trained and so large that the logistic loss is saturated (loss'' 0): the Hessian is
    the cross term, neuron i's [[0, g_i], [g_i^T, 0]] with g_i a sum over its active points, so neurons 0, 1, 2
    (w, 2w, w / 2: different neurons, the same active points) give one eigenvalue three times. A restart after
    convergence kept the whole block with beta 0, dropping its residual: the next blocks saw the Hessian on the
    complement of a space that is not invariant, and 0.365303 x 3 came back as 0.365303 and values 6e-3 and
    3e-2 below it (fuzz case 13: 0.161363 x 3 as 0.161363 twice and 0.161357)."""
    rng = np.random.default_rng(seed)
    n, d, m = 30, 8, 8
    X = rng.standard_normal((n, d))
    y = np.sign(X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n))
    y[y == 0] = 1.0
    W = rng.standard_normal((m, d))
    W[1], W[2] = 2.0 * W[0], 0.5 * W[0]
    a = 1e5 * rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 2.0, m)
    H = lgd.hessian.dense_hessian(W, a, X, y, "relu", "logistic", 1.0, train_outer=True)
    net = lgd.TwoLayerNet(m, activation="relu", outer=a, scaling=1.0, train_outer=True)
    for k in range(2, 6):
        want = np.linalg.eigvalsh(0.5 * (H + H.T))[::-1][:k]
        run = lgd.gd(X, y, net, "logistic", stepsize=0.1, steps=1, init=W, compute="numba",
                     record=lgd.Record(sharpness_every=1, sharpness_k=k))
        np.testing.assert_allclose(run.sharpness[0], want, rtol=0, atol=1e-6 * abs(want[0]), err_msg=f"k={k}")


def test_the_sharpness_stops_once_a_restart_reaches_the_null_space_of_a_relu_net(monkeypatch):
    """A ReLU net's Hessian on 6 points has a large null space. Each restart there is a one-vector block that
    closes at once, which counts as converged (asking it for two settled steps ran the Lanczos to its limit:
    16 s at 1500 products, against 2 ms; a cost, measured in docs/performance.md, not asserted here): the values
    are eigsh's, whatever the limit."""
    monkeypatch.setattr(_numba, "LANCZOS_ITERATIONS", 1500)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 40)), np.sign(rng.standard_normal(6))
    net = lgd.TwoLayerNet(40, activation="relu")
    W = rng.standard_normal((40, 40))
    run = lgd.gd(X, y, net, "logistic", stepsize=0.1, steps=1, init=W, compute="numba",
                 record=lgd.Record(sharpness_every=1, sharpness_k=2))
    want = lgd.hessian.sharpness(W, net.outer_weights(None), X, y, "relu", "logistic", net.scale, k=2)
    np.testing.assert_allclose(run.sharpness[0], want, rtol=1e-6)


@pytest.mark.parametrize("outer", ["one magnitude", "magnitudes differ by member"])
@pytest.mark.parametrize("team", [1, 2])
def test_outputs_of_neurons_all_far_below_zero_keep_their_digits(team, outer, monkeypatch):
    """A sample whose every pre-activation is far below 0 has a softplus output of e^-50: the product form holds its
    products less 1, which keep it (1 + e^-50 rounds to 1), so its margin and accuracy are the oracle's; by one
    thread and by a team split by neurons, whose members decide nothing alone (outer weights of two magnitudes,
    one per member, take the sum of phi on every member)."""
    import numba

    monkeypatch.setattr(numba, "get_num_threads", lambda: team)
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(_numba, "SPLIT_MIN_BYTES_BY_TARGET", {})
    m, d = 128, 32
    rng = np.random.default_rng(4)
    X = rng.standard_normal((20, d))
    X[0] = 0.0
    X[0, 0] = 1.0  # z = w_j0: W's first column at -50 and below
    y = np.where(rng.random(20) < 0.5, -1.0, 1.0)
    y[0] = 1.0
    W = rng.standard_normal((m, d))
    W[:, 0] = -50.0 - rng.random(m)
    A = np.ones(m) if outer == "one magnitude" else np.r_[np.ones(m // 2), 2.0 * np.ones(m // 2)]
    net = lgd.TwoLayerNet(m, activation="softplus", outer=A, scaling=1.0)
    runs = [lgd.gd(X[:1], y[:1], net, "logistic", stepsize=1e-3, steps=2, init=W,
                   record=lgd.Record(every=1, neuron_margins=True), compute=fast(backend=backend))
            for backend in ("numpy", "numba")]
    assert 0 < runs[0].margin[0] < 1e-18
    np.testing.assert_allclose(runs[1].margin, runs[0].margin, rtol=1e-10)
    np.testing.assert_allclose(runs[1].neuron_margins, runs[0].neuron_margins, rtol=1e-10)
    np.testing.assert_array_equal(runs[1].accuracy, runs[0].accuracy)


def test_the_sharpness_warm_start_stays_finite_where_the_top_eigenvalue_is_far_below_the_hessians_scale():
    """A softplus net whose Hessian has a top eigenvalue of rounding size (1e-16) beside -4.9: the top Ritz vector
    of the first measurement, by inverse iteration with a shift 1e-10 |theta| past a theta far below T's rounding,
    was NaN (a zero pivot), and the next measurements, warm-started from it, gave 0 and NaN. They are eigsh's,
    within 1e-6 of the Hessian's spectral radius at each recorded step (the values below rounding are noise)."""
    X = np.array([[-190.863, 56.133, 89.119, 34.12, 43.436, 138.316, -29.421, 0.018],
                  [-72.859, -184.808, -82.066, 107.095, 139.02, 98.711, -8.496, -70.494],
                  [95.94, 12.774, -96.452, 19.322, -27.103, 52.796, -66.589, -102.745],
                  [42.427, -10.786, -172.617, 103.559, 106.308, 53.026, 193.266, 115.418],
                  [10.184, 10.893, -24.911, 17.703, 15.513, -190.17, -163.103, -134.066]])
    y = np.array([1.0, 1.0, -1.0, -1.0, -1.0])
    W0 = np.array([[11.073, -8.124, 11.787, 6.318, 5.784, -7.313, -11.656, 8.4],
                   [2.164, 10.248, 17.335, 7.145, -9.724, -5.392, 11.095, 13.668],
                   [11.802, 3.484, -7.983, -8.124, 1.067, -4.37, 14.356, -17.869]])
    net = lgd.TwoLayerNet(3, activation="softplus", scaling="ntk", outer=np.array([1.0, 1.0, -1.0]))
    run = lgd.gd(X, y, net, "logistic", steps=2, stepsize=1.944, init=W0, compute="numba",
                 record=lgd.Record(every=1, sharpness_every=1, sharpness_k=2, weights=1))
    a = net.outer_weights(None)
    assert np.isfinite(run.sharpness).all(), run.sharpness
    for W, got in zip(run.trajectory, run.sharpness):
        H = lgd.hessian.dense_hessian(W, a, X, y, "softplus", "logistic", net.scale)
        want = lgd.hessian.sharpness(W, a, X, y, "softplus", "logistic", net.scale, k=2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(np.linalg.eigvalsh(0.5 * (H + H.T))).max())
