"""The Numba CPU backend: whole runs of compiled code from :mod:`lgd.kernels.numba_cpu`.

Numba is imported only when a runner is built. The kernel compiles once per dtype and product mode
(fused loops or BLAS; with ``cache=True``, so later processes load it from disk); activation, loss,
their parameters and the stepsizes are runtime data. Every chunk runs :func:`run_team` (compiled,
nogil, called from Python threads):

- with fewer configurations than threads (a single run), a team of threads works on every step,
  each on its block of samples, meeting at a spinning barrier once or twice a step
  (:func:`replicated_close`) and never leaving compiled code during a chunk (:meth:`Runner.team_size`,
  :data:`TEAM_WORK`); the threads beside the calling one come from a pool the calling thread keeps
  (:func:`member_pool`);
- otherwise (sweeps) each thread runs a team of one, taking the configurations one at a time from a
  queue the threads share;
- the team size is decided every :data:`TEAM_PERIOD` steps from the configurations live then, so the
  bits of a run do not depend on where the driver's chunks end (nor on where a resumed run stopped).

The two products of a step run in the fused loops (k-blocked for large inputs), or, with 32-byte tiles
(no AVX-512; :data:`BLAS_WITH_WIDE_TILES`) for problems with d >= :data:`BLAS_MIN_D` and at least
:data:`BLAS_WORK` (with 64-byte tiles where OpenBLAS runs its AVX-512 kernels, from a bound on d that depends
on the CPU: :func:`blas_bound_d`), as BLAS calls on each thread's block of samples
(numpy's OpenBLAS where :func:`numpy_gemm` finds it, else scipy's), BLAS held to one thread meanwhile
(threadpoolctl) since the team already occupies the cores; a single run from :data:`BLAS_BOUND_D` runs on
one thread and BLAS uses all the cores. From :data:`BLAS_SWAPPED_MIN_D`, where OpenBLAS runs its AVX-512
kernels, BLAS forms each thread's part of the gradient transposed, and in float64 Z transposed
(:data:`BLAS_Z_TRANSPOSED`).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import importlib.util
import math
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from . import CACHE_LINE, Problem, State, Trace, kernels_have

# With 32-byte tiles, a step's products go through BLAS (on each thread's block of samples) rather than the
# fused loops' register tiles from d >= BLAS_MIN_D and n * d * m >= BLAS_WORK: below that the fused loops,
# which never leave L1, are faster; above it BLAS's blocking won (docs/performance.md has the measurements).
BLAS_MIN_D = 128
BLAS_WORK = 1 << 19
# With 64-byte tiles (an AVX-512 target) the fused loops run the products of every size, k-blocked from
# tiles.BLOCKED_MIN_D: on the AVX-512 host of docs/performance.md a step ran 1.3-1.7x faster than through
# BLAS on sizes from d = 128 to L's (numpy's OpenBLAS, on its AVX2 kernels there; per product on one thread
# the tiles also passed its AVX-512 kernels in X W^T and matched them in G^T X). BLAS stays the path of
# large problems with 32-byte tiles; True gives it back the large problems on every target.
BLAS_WITH_WIDE_TILES = False
# ... except, where the process's OpenBLAS runs its AVX-512 kernels (blas_is_avx512), from a bound on d that
# depends on numba's target (blas_bound_d): on Intel's cores from BLAS_BOUND_D (the Intel AVX-512 host of
# docs/performance.md, a Xeon with AMX under a hypervisor: L's step 1.13x faster through those kernels than in
# the tiles, 1.24x with the gradient's product transposed (BLAS_SWAPPED_MIN_D), (2000, 512, 256) 1.08x, while
# d = 128 and 256 stayed faster fused); on AMD's Zen 4 (znver4, which runs a 512-bit operation as two 256-bit
# halves) from 2048 (through BLAS, (2000, d, 256) at d = 512 ran 0.74-0.88x the tiles' speed, 1024 0.90-1.09x,
# 2048 1.03-1.14x, L 1.03-1.17x); never on Zen 5 (znver5), whose tiles passed those kernels per product, nor on
# the Zen cores not measured. False: the tiles on every target.
BLAS_FROM_BOUND = True
BLAS_BOUND_D_BY_TARGET = {"znver4": 2048, "znver5": None}
# From this d, where OpenBLAS runs its AVX-512 kernels, BLAS forms each member's part of the gradient
# transposed, (m, d) (tiles.blas_backward), and the sum of the parts transposes it back: OpenBLAS's
# SkylakeX kernels ran that shape faster on large inputs (L, float64: 20 ms against 26 on two threads, 39
# against 49 on one; L's step 48.8 ms against 54) and slower on small ones ((500, 128, 64) in a team: 10%).
# With its Haswell (AVX2) kernels the product was faster too (30 against 34), but L's step was not (77-80 ms
# both ways, 32-byte kernels): those keep the gradient's layout.
BLAS_SWAPPED_MIN_D = 512
# With the gradient's parts transposed, a run holds the weights being stepped in their layout too, as rows W
# (m, d) rather than Wt (d, m) (weights_as_rows): BLAS then writes the gradient of a team of one straight into
# grad, and the transposing sum, a pass over the gradient that read it a column at a time, goes. On L (float64,
# the Intel AVX-512 host of docs/performance.md, numba loops standing in for the step's, timed right after the
# step's products) the gradient's and weights' passes took 1.9-2.1 ms against 3.9-4.0 with the transposing sum,
# and L's step ran about 5% faster (3.5-14% over five alternations of separate trees). Not with trajectories,
# the sharpness or tangent vectors, whose code reads Wt (d, m).
BLAS_WEIGHTS_AS_ROWS = True
# With the gradient's parts transposed, a float64 run holds Z transposed too, (m, n) (tiles.blas_forward), and
# the pass over the training samples takes it a group of columns at a time (numba_cpu.step.column_block):
# OpenBLAS's SkylakeX kernels formed Z^T faster on L (two threads, products alternating as in a step: 21.1-23.1
# ms against 23.5-25.4; L's step 46.5 ms against 48.6), but not in float32 (10.6-11.6 against 10.0-10.5; L's
# call level). Not with the Lyapunov exponents' tangent vectors either: the pass keeping their curvature rows
# reads Z a sample's row at a time.
BLAS_Z_TRANSPOSED = True
# OpenBLAS's kernels with AVX-512 GEMM: its core names as threadpoolctl reports them, lower case.
AVX512_BLAS_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
# Dimension d from which the products are nearly all of a step's work: a single run (that would
# otherwise take a team) then runs on one thread and BLAS spreads each product over all the cores,
# faster than a team of threads each with a single-threaded BLAS.
BLAS_BOUND_D = 512
# Entries of the n x m block per thread of a team: a single run is split over at most n m / TEAM_WORK
# threads, so that each thread's share of a step outweighs the barriers (one or two a step: replicated_close,
# about a microsecond each) that a team meets.
TEAM_WORK = 1 << 11
# Lanczos iterations at most per sharpness measurement (fewer when the top eigenvalues converge, warm-started
# from the last measurement's top eigenvector; at most the number of trained parameters).
LANCZOS_ITERATIONS = 60
# Seconds a runner waits for its kernel before it says that it is compiling (a cache load is faster).
COMPILE_NOTICE_S = 1.0
# The kernel variants (dtype, BLAS products, tangent map, sharpness) this process has compiled or loaded: a
# Runner of one of these starts without the zero-step call that would (Runner._compile: a timer thread,
# buffers and a pool thread, 0.35 ms of the 1.6 ms that lgd.sweep took around S's steps). Should a later
# runner's arguments type differently all the same, its first chunk compiles or loads them, only without
# the notice.
_LOADED = set()
# Pools of the threads that run the other members of a team (and a sweep's teams of one), kept between calls,
# one per calling thread and size: starting a fresh pool's thread at every call cost S about 0.45 ms of the
# 1.2 ms that lgd.sweep took around a one-step run, on the Intel AVX-512 host of docs/performance.md. One per
# calling thread, as each call had a pool of its own before: the members of calls made at once from several
# threads never wait in one queue, where a member waiting at its barrier for a partner queued behind it
# could hold the last free thread. A forked child starts with none (its parent's threads are not in it).
_POOLS = threading.local()
# Seconds that a pool thread spins for its next task, and a caller for its task's end, before blocking
# (MemberPool): the driver's chunks, and a script's calls, follow each other within that. As a count of
# pauses, which last 10-150 cycles by CPU: measured once per process (idle_spins).
IDLE_SECONDS = 2e-3
# The finalizers that end the pools' threads (MemberPool), which a forked child drops.
_CLOSINGS, _CLOSINGS_LOCK = [], threading.Lock()


def _forget_pools():
    global _POOLS, _CLOSINGS_LOCK
    _POOLS, _CLOSINGS_LOCK = threading.local(), threading.Lock()
    for closing in _CLOSINGS:  # the parent's pools: their threads and any lock they held are not in the child
        closing.detach()
    _CLOSINGS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def member_pool(threads: int) -> MemberPool:
    """The calling thread's pool of `threads` threads (see _POOLS), made on first use."""
    pools = getattr(_POOLS, "pools", None)
    if pools is None:
        pools = _POOLS.pools = {}
    if threads not in pools:
        pools[threads] = MemberPool(threads)
    return pools[threads]


@functools.cache
def _installed(module: str) -> bool:
    """Whether `module` can be imported: a search of sys.path (0.1 ms) once per process, not per runner."""
    return importlib.util.find_spec(module) is not None


@functools.cache
def idle_spins(spin_while) -> int:
    """Pauses of spin_while that last about IDLE_SECONDS on this CPU."""
    counts, spins = np.zeros(1, dtype=np.int64), 1 << 12
    spin_while(counts, 0, 0, 16)
    tic = time.perf_counter()
    spin_while(counts, 0, 0, spins)
    return max(spins, int(spins * IDLE_SECONDS / max(time.perf_counter() - tic, 1e-9)))


class MemberPool:
    """`threads` threads that run the functions submitted to them: ``submit(fn, *args)`` hands fn to a thread
    that has no task (the first such), and returns a task whose ``result()`` gives fn's value or raises its
    exception.

    A thread that has run its task spins for its next one (in a nogil kernel, team.spin_while) for IDLE_SECONDS
    before it blocks, and ``result()`` spins so for the task's end: with ThreadPoolExecutor's threads, a
    team of two on S started its other member about 95 us after the caller's, and the caller got the GIL back
    45 us after the member's end (the Intel AVX-512 host of docs/performance.md, where the driver's three
    chunks of a 1,000-step run of S took 0.8 ms longer than one). Each thread waits on a count of its own:
    a task wakes one thread, never the pool. The threads end when the pool is collected (at its calling
    thread's end)."""

    def __init__(self, threads: int):
        from ..kernels.numba_cpu import spin_while

        self._shared = shared = _Shared(threads, spin_while)
        for k in range(threads):
            threading.Thread(target=shared.serve, args=(k,), name=f"lgd-numba_{k}", daemon=True).start()
        with _CLOSINGS_LOCK:
            _CLOSINGS[:] = [closing for closing in _CLOSINGS if closing.alive]
            _CLOSINGS.append(weakref.finalize(self, shared.close))

    def submit(self, fn, *args, rung: bool = True) -> _Task:
        """fn(*args) on a free thread. rung=False leaves the count that wakes a spinning thread to the caller:
        its team's run_team adds one to bell[task.ring] (counts) once it has let the GIL go."""
        return self._shared.post(_Task(fn, args, self._shared), rung)

    @property
    def counts(self) -> np.ndarray:
        return self._shared.counts


class _Shared:
    """What a MemberPool's threads share (not the pool: its collection ends them). Per thread k: its tasks
    (a deque), whether it has one, the condition it blocks on and counts[k STRIDE], the tasks posted to it;
    counts[finished] counts the tasks done. The counts lie a cache line apart: the spins read them."""

    STRIDE = CACHE_LINE // 8

    def __init__(self, threads: int, spin_while):
        self.spin_while, self.spins = spin_while, idle_spins(spin_while)
        self.finished = threads * self.STRIDE
        self.counts = np.zeros((threads + 1) * self.STRIDE, dtype=np.int64)
        self.tasks = [collections.deque() for _ in range(threads)]
        self.busy = [False] * threads
        self.lock = threading.Lock()
        self.wakes = [threading.Condition(self.lock) for _ in range(threads)]

    def post(self, task, rung: bool = True, k: int | None = None):
        with self.lock:
            if k is None:  # the first free thread; all busy (not lgd's use), the one with the fewest tasks
                k = next((k for k, busy in enumerate(self.busy) if not busy), None)
                if k is None:
                    k = min(range(len(self.tasks)), key=lambda k: len(self.tasks[k]))
            self.busy[k] = True
            self.tasks[k].append(task)
            if task is not None:
                task.ring = k * self.STRIDE
            if rung:
                self.counts[k * self.STRIDE] += 1
            self.wakes[k].notify()  # a blocked thread finds its task without the count
        return task

    def close(self):
        for k in range(len(self.tasks)):
            self.post(None, True, k)

    def serve(self, k: int):
        own, tasks = k * self.STRIDE, self.tasks[k]
        while True:
            posted = int(self.counts[own])
            with self.lock:
                task = tasks.popleft() if tasks else _IDLE
                self.busy[k] = task is not _IDLE
            if task is None:
                return
            if task is not _IDLE:
                task.run()
            elif not self.spin_while(self.counts, own, posted, self.spins):
                with self.lock:  # post appends and notifies under this lock: no task is missed
                    while not tasks:
                        self.wakes[k].wait()


_IDLE = object()
_NO_RINGS, _NO_BELL = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)


class _Task:
    __slots__ = ("fn", "args", "shared", "done", "value", "error", "ring")

    def __init__(self, fn, args, shared: _Shared):
        self.fn, self.args, self.shared = fn, args, shared
        self.done = threading.Event()
        self.value = self.error = self.ring = None

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as error:  # re-raised in the caller's result()
            self.error = error
        self.done.set()
        shared = self.shared
        with shared.lock:  # after done: a spin that sees the count move finds done set
            shared.counts[shared.finished] += 1

    def result(self):
        shared = self.shared
        while not self.done.is_set():
            finished = int(shared.counts[shared.finished])
            if self.done.is_set():
                break
            if not shared.spin_while(shared.counts, shared.finished, finished, shared.spins):
                self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


# Steps of a team period: the team size of the steps [k P, (k + 1) P) follows from the configurations live
# at step k P, read off the divergence flags, never from where a chunk starts. A team of another size sums
# the samples' gradients in other blocks (other roundings), so a decision at each chunk would make the
# bits of a run depend on the chunks, which follow the clock (and a resumed run on where it stopped). A
# sweep whose runs diverge takes the larger team of its few survivors within P steps.
TEAM_PERIOD = 1024


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("numba") is None:
        return False, "numba is not installed"
    if importlib.util.find_spec("scipy") is None:
        return False, "scipy is not installed (numba needs it for matrix products)"
    return True, "numba is installed"


class Runner:
    """Runs configurations of one problem in compiled code; see :mod:`lgd.backends` for the protocol."""

    name = "numba"
    measures_sharpness = True  # inside the kernel (kernels/numba_cpu/sharpness.py)

    def __init__(self, problem: Problem, steps: int, record_every: int, shape=None):
        import numba

        from ..kernels import numba_cpu

        self.problem, self.steps, self.record_every = problem, steps, record_every
        self._kernels = numba_cpu
        _check_codes(problem, numba_cpu)
        self._threads = numba.get_num_threads()
        p = problem
        d = p.X.shape[1]
        if p.X_test is not None:
            test = (np.ascontiguousarray(p.X_test), np.ascontiguousarray(p.y_test))
        else:
            test = (np.empty((0, d), dtype=p.dtype), np.empty(0, dtype=p.dtype))
        m = 1 if shape is None else int(shape[1])
        directions = (np.empty((0, m, d), dtype=p.dtype) if p.directions is None
                      else np.ascontiguousarray(p.directions, dtype=p.dtype))
        X, y = np.ascontiguousarray(p.X), np.ascontiguousarray(p.y)
        self._data = numba_cpu.Data(X, y, *test, directions, X[:p.sharpness_points], y[:p.sharpness_points])
        self._spec = numba_cpu.Spec(activation=int(p.activation.code), activation_param=float(p.activation.param),
                                    loss=int(p.loss.code), loss_param=float(p.loss.param),
                                    margin_loss=bool(p.loss.margin), scale=float(p.scale),
                                    train_outer=bool(p.train_outer), linear=bool(p.linear),
                                    f32=p.dtype == np.float32, risk_bound=float(p.risk_bound),
                                    weight_bound=float(p.weight_bound),
                                    log_risk_every_step=bool(p.log_risk_every_step))
        # Scratch of finished run_team calls by their buffers() arguments, for the next chunk's calls: fresh
        # buffers cost their page faults again at every chunk (about 3 ms a chunk for L's 20 MB).
        self._scratch, self._scratch_lock = {}, threading.Lock()
        # Without threadpoolctl no BLAS runs inside a team: the fused loops do every product.
        self._threadpoolctl = _installed("threadpoolctl")
        self._blas_limits = None  # threadpoolctl's controller of the BLAS libraries, made on first use (ms)
        self.state, self.trace, self._batch = None, None, None
        self._compile(m)

    def start(self, state: State, trace: Trace, t_start: int = 0):
        arrays = tuple(trace) + (state.W, state.a, state.diverged)
        if not all(x.flags.c_contiguous for x in arrays):
            raise ValueError("the numba backend needs C-contiguous state and trace arrays")
        self.state, self.trace = state, trace
        p = self.problem
        self._spec = self._spec._replace(product=self._kernels.product_form(
            int(p.activation.code), p.dtype == np.float32, bool(p.train_outer), state.a))
        self._batch = self._kernels.Batch(state.W, state.a, state.diverged, *state.tangent_arrays(), state.rules,
                                          state.rule_params, *state.curvature_arrays())

    def advance(self, t_start: int, t_stop: int):
        diverged, m = self.state.diverged, self.state.W.shape[1]
        t = t_start
        while t < t_stop:
            period = t - t % TEAM_PERIOD
            team = self.team_size(int(np.count_nonzero((diverged < 0) | (diverged >= period))), m)
            # A team of one can become a larger one at the next period; a larger one stays as it is.
            stop = t_stop if team > 1 or self.team_size(1, m) == 1 else min(t_stop, period + TEAM_PERIOD)
            self._chunk(self._batch, self.trace, np.flatnonzero(diverged < 0), t, stop, team)
            t = stop

    def sync(self):
        """Nothing to copy: the kernels write the trace in place."""

    def finish(self):
        """Nothing to copy: the kernels wrote the trace in place."""

    def _use_blas(self, width: int) -> bool:
        n, d = self._data.X.shape
        if self.problem.linear or d < BLAS_MIN_D or n * d * width < BLAS_WORK or not self._threadpoolctl:
            return False
        if BLAS_WITH_WIDE_TILES or self._kernels.VECTOR_BYTES < 64:
            return True
        bound = blas_bound_d(target_cpu_name())
        return BLAS_FROM_BOUND and bound is not None and d >= bound and blas_is_avx512()

    def _one_blas_thread(self):
        """Context holding every loaded BLAS to one thread (threadpoolctl), restored on exit."""
        if self._blas_limits is None:
            from threadpoolctl import ThreadpoolController

            self._blas_limits = ThreadpoolController().select(user_api="blas")
        return self._blas_limits.limit(limits=1)

    def _compile(self, m: int):
        """Compile (or load from the cache) the kernel that runs of width m use (its dtype and product
        mode), running zero steps; nothing where this process has that variant already (_LOADED)."""
        d = self._data.X.shape[1]
        dtype = self.problem.dtype
        measuring = self.problem.sharpness_every > 0  # the variant with the sharpness's Lanczos
        blas = self._use_blas(m)
        trajectory = self.problem.weights_every > 0
        split = self._split(self.team_size(1, m), m, blas, int(bool(self.problem.lyapunov)), measuring, trajectory)
        variant = (np.dtype(dtype).name, blas, bool(self.problem.lyapunov), measuring, split)
        if variant in _LOADED:
            return
        compiling = State(W=np.zeros((1, m, d), dtype=dtype), a=np.ones((1, m), dtype=dtype), stepsizes=np.ones(1))
        if self.problem.lyapunov:  # the variant with the tangent map
            compiling.tangents, compiling.tangents_a = np.zeros((1, 1, m, d)), np.zeros((1, 1, m))
            compiling.log_growth = np.zeros((1, 1))
        batch = self._kernels.Batch(compiling.W, compiling.a, compiling.diverged, *compiling.tangent_arrays(),
                                    compiling.rules, compiling.rule_params, *compiling.curvature_arrays())
        # Python's cyclic garbage collector, left on, walks numba's many compiler objects again and again
        # during a cold compile; off, the compile's garbage waits for the first collection after it.
        collecting = gc.isenabled()
        gc.disable()
        # Loading from the cache takes well under COMPILE_NOTICE_S: a call still busy then is compiling,
        # which takes seconds, and says so once rather than sit silent.
        what = ", ".join([f"{'BLAS' if blas else 'fused'} products"] +
                         ["the tangent map"] * bool(self.problem.lyapunov) + ["the sharpness"] * measuring)
        later = ("later processes compile it again (no cache folder)" if self._kernels.cache_unwritable()
                 else "later runs load it from the cache")
        notice = threading.Timer(COMPILE_NOTICE_S, print, (
            f"lgd: compiling the numba kernel for {np.dtype(dtype).name} ({what}): about 10 s, once for this "
            f"variant; {later}",), {"file": sys.stderr, "flush": True})
        notice.daemon = True
        notice.start()
        try:
            # A trajectory's records rule out a team split by neurons (split_team): the compile's trace has one
            # where the run's will, so that it compiles the kernel the run takes.
            trace = Trace.empty(1, 1, m, True, weight_records=int(trajectory), dim=d, dtype=dtype,
                                sharpness_records=int(measuring), sharpness_k=int(measuring))
            self._chunk(batch, trace, np.zeros(1, dtype=np.intp), 0, 0, self.team_size(1, m))
            _LOADED.add(variant)
        finally:
            notice.cancel()
            if collecting:
                gc.enable()

    def _chunk(self, batch, trace: Trace, live, t_start: int, t_stop: int, team: int):
        """Evaluations [t_start, t_stop) of the configurations `live`, `team` threads per configuration
        (t_start == t_stop: compile only)."""
        schedule = self._kernels.Schedule(t_start, t_stop, self.steps, self.record_every,
                                          max(1, self.problem.weights_every), max(1, self.problem.sharpness_every))
        m = batch.W.shape[1]
        blas = self._use_blas(m)
        if blas and team > 1 and self._data.X.shape[1] >= BLAS_BOUND_D:
            # A single run whose products are nearly all of the work: rather than a team with one BLAS
            # thread each, one thread runs the step and BLAS spreads each product over all the cores.
            self._run_team(1, live, batch, trace, schedule, blas)
        elif blas:
            with self._one_blas_thread():
                self._run_configs(live, team, batch, trace, schedule, blas)
        else:
            self._run_configs(live, team, batch, trace, schedule, blas)

    def _run_configs(self, live, team: int, batch, trace: Trace, schedule, blas: bool):
        """A team of `team` threads per configuration, or (team of one) a thread per configuration, the
        threads taking them from a queue they share."""
        threads = min(self._threads, len(live))
        if team > 1 or threads <= 1:
            self._run_team(team, live, batch, trace, schedule, blas)
            return
        # A team of one per thread, taking the configurations from one queue: each runs the next one
        # not taken yet, so the threads finish together however their speeds differ.
        queue = np.zeros(1, dtype=np.int64)
        tasks = [self._thread_pool().submit(self._run_team, 1, live, batch, trace, schedule, blas, queue)
                 for _ in range(threads - 1)]
        try:
            self._run_team(1, live, batch, trace, schedule, blas, queue)
        finally:
            for task in tasks:
                task.result()

    def team_size(self, configs: int, width: int) -> int:
        """Threads per configuration: with fewer configurations than threads, as many as the problem is
        worth (at least TEAM_WORK entries of the n x m block each), else one (each thread with its share
        of the configurations)."""
        if configs >= self._threads:
            return 1
        return max(1, min(self._threads, self._data.X.shape[0] * width // max(1, TEAM_WORK)))

    def _split(self, team: int, m: int, blas: bool, tangents: int, measuring: bool, trajectory: bool) -> bool:
        """split_team for this problem's runs of width m by a team of `team`."""
        n, d = self._data.X.shape
        return split_team(team, n, d, m, self.problem.dtype, blas, tangents, LANCZOS_ITERATIONS if measuring else 0,
                          trajectory, self.problem.linear)

    def _thread_pool(self, team: int = 1) -> MemberPool:
        """The threads beside this one (the caller runs member 0, or a team of one, itself): at least one for
        each other member of a team of `team`, which waits at its barriers for all of them."""
        return member_pool(max(self._threads, team) - 1)

    def _run_team(self, team: int, configs, batch, trace: Trace, schedule, blas: bool, queue=None):
        """run_team by `team` threads over `configs` (those not taken yet from `queue`, which other teams may
        share; a fresh one if None): member 0 in this thread, the others in the pool."""
        kernels = self._kernels
        _, m, d = batch.W.shape
        measuring = trace.sharpness.shape[1] > 0
        trajectory = trace.weights.shape[1] > 0 or trace.projections.shape[1] > 0
        split = self._split(team, m, blas, batch.tangents.shape[1], measuring, trajectory)
        rows = weights_as_rows(d, blas, batch.tangents.shape[1], measuring, trajectory)
        key = (team, m, d, len(self._data.X), len(self._data.X_test), self.problem.dtype, blas,
               batch.tangents.shape[1], LANCZOS_ITERATIONS if measuring else 0,
               trace.sharpness.shape[2] if measuring else 0, len(self._data.X_curvature), self.problem.train_outer,
               split, rows)
        with self._scratch_lock:
            spare = self._scratch.setdefault(key, [])
            scratch = spare.pop() if spare else None
        if scratch is None:
            scratch = buffers(kernels, *key)
        sync = np.zeros(2, dtype=np.int64)
        go = np.zeros(2, dtype=np.int64)  # the step's verdict (not diverged), the configuration's index
        if queue is None:
            queue = np.zeros(1, dtype=np.int64)
        configs = np.ascontiguousarray(configs, dtype=np.intp)

        def member(k, rings=_NO_RINGS):
            return kernels.run_team(kernels.Team(k, team, sync, go, queue, configs, bell, rings), self._data, batch,
                                    trace, self._spec, schedule, scratch)

        if team > 1:
            pool = self._thread_pool(team)
            bell = pool.counts
            tasks = [pool.submit(member, k, rung=False) for k in range(1, team)]
            verdict = member(0, np.array([task.ring for task in tasks], dtype=np.intp))
        else:
            bell, tasks = _NO_BELL, []
            verdict = member(0)
        for task in tasks:
            task.result()
        with self._scratch_lock:
            self._scratch[key].append(scratch)
        if verdict != kernels.KNOWN:  # _check_codes refused these codes already: the kernel agrees
            raise ValueError(f"the numba kernels have no formula for {_unknown(self.problem, verdict, kernels)}")


def _unknown(problem: Problem, verdict: int, kernels) -> str:
    if verdict == kernels.UNKNOWN_ACTIVATION:
        return f"the activation {problem.activation.spec!r} (code {problem.activation.code})"
    return f"the loss {problem.loss.spec!r} (code {problem.loss.code})"


def _check_codes(problem: Problem, kernels):
    """Refuse, before any compile, an activation or loss whose formula the kernels do not have: a code they
    do not know, or an entry of the user's own that takes a catalog entry's code (kernels_have)."""
    for verdict, entry, known in ((kernels.UNKNOWN_ACTIVATION, problem.activation, kernels.ACTIVATIONS),
                                  (kernels.UNKNOWN_LOSS, problem.loss, kernels.LOSSES)):
        if entry.code not in known or not kernels_have(entry):
            raise ValueError(f"the numba kernels have no formula for {_unknown(problem, verdict, kernels)}; "
                             f"run it with compute='numpy', or add it to the kernels' formulas "
                             f"(kernels/numba_cpu/formulas.py, docs/extending.md)")


def buffers(kernels, team: int, m: int, d: int, n: int, n_test: int, dtype, blas: bool, tangents: int = 0,
            lanczos: int = 0, eigenvalues: int = 0, curvature_rows: int = 0, train_outer: bool = True,
            split: bool = False, rows: bool = False):
    """The scratch of one run_team call by a team of `team` (kernels.Buffers documents each buffer).

    What a member writes at every sample is in _own_rows, apart from the other members' rows. With BLAS
    the fused loops' tile rows are None, without it the BLAS buffers: each mode's kernel is compiled
    without the other's code. `tangents`: the Lyapunov tangent vectors; `lanczos`, `eigenvalues`: the
    Lanczos iterations and eigenvalues of a sharpness measurement, `curvature_rows` the samples it is
    measured on (each sample's curvature is kept for the measurement: 4 m values); without them (0) their
    scratch is None too, and the kernel is compiled without their code (a variant of its own, compiled on
    first use). `train_outer`: whether the tangent map needs phi and phi' of each sample too (_kept_rows).
    `split`: a team split by neurons (split_team), whose scratch _split_buffers builds. `rows`: the BLAS mode
    holds the weights as rows (weights_as_rows): Wt and grad (m, d)."""
    empty = aligned_empty
    if split:
        return _split_buffers(kernels, team, m, d, n, n_test, dtype)
    if blas:
        swapped = d >= BLAS_SWAPPED_MIN_D and blas_is_avx512()
        transposed = swapped and BLAS_Z_TRANSPOSED and np.dtype(dtype) == np.float64 and not tangents
        group = kernels.COLUMN_GROUP
        # Empty arrays rather than None where Z keeps its rows: the same types, so one BLAS kernel serves both
        # layouts (gemm[2] chooses at run time) and neither is a compile of its own.
        # The third: the outputs' sums (and the product form's products: step.column_block) in lanes.
        lanes = 3 * kernels.PRODUCT_LANES
        columns = ((_own_block((team, m, group), dtype), _own_block((team, m, group), dtype),
                    _own_rows((team, lanes, group), dtype), _own_rows((team, 4, group), np.float64)) if transposed
                   else (empty((team, 0, 0), dtype), empty((team, 0, 0), dtype), empty((team, 0, 0), dtype),
                         empty((team, 0, 0), np.float64)))
        products = dict(Z=empty((m, n) if transposed else (n, m), dtype), Z_test=empty((n_test, m), dtype),
                        grads_blas=empty((team, m, d) if swapped else (team, d, m), dtype),
                        gemm=empty(4, np.int64), columns=columns)
        products["gemm"][:] = numpy_gemm(np.dtype(dtype).name), int(swapped), int(transposed), int(rows)
    else:
        products = dict(Z=None, Z_test=None, grads_blas=None, gemm=None, columns=None)
    waiting = kernels.waiting_samples.implementation(d, m)
    # Copies of the weights, and sets of the members' partials: see replicated_close.
    copies, sets = (team, 2) if replicated_close(team, d, m, dtype, blas, tangents, lanczos) else (1, 1)
    weights = (m, d) if rows else (d, m)
    return kernels.Buffers(
        Wt=_copies(copies, weights, dtype), a=_copies(copies, (m,), dtype), a_step=_copies(copies, (m,), dtype),
        zs=None if blas else _own_block((team, kernels.z_rows(d, m), m), dtype),
        ps=_own_rows((team, m), dtype), qs=_own_rows((team, m), dtype), pending_q=_own_block((team, waiting, m), dtype),
        pending_rows=_own_rows((team, waiting), np.int64), grads=empty((sets, team, d, m), dtype),
        grads_a=_own_rows((sets, team, m), dtype), neurons_part=_own_rows((sets, team, m), np.float64),
        stats=_own_rows((sets, 2 * team, 3), np.float64), grad=_copies(copies, weights), grad_a=_copies(copies, (m,)),
        neuron=_copies(copies, (m,)), total=_copies(copies, (2, 3)), us=empty((sets, n)),
        tangent=(empty((tangents, m, d)), empty((tangents, m)), empty((team, tangents, d, m)),
                 empty((team, tangents, d, m)), empty((team, tangents, m)), empty(1)) if tangents else None,
        kept=_kept_rows(team, m, n, dtype, train_outer) if tangents else None,
        curvature=(empty((lanczos + 1, m, d)), empty((lanczos + 1, m)), empty((1, m, d)), empty((1, m)),
                   empty((1, d, m)), empty((1, d, m)), empty(lanczos + 1), empty(lanczos + 1), empty(eigenvalues),
                   empty((2, lanczos + 1)),
                   (empty((curvature_rows, m), dtype), empty((curvature_rows, m), dtype),
                    empty((curvature_rows, m)), empty((curvature_rows, m)), empty((curvature_rows, 2))))
        if lanczos else None,
        rows=_hvp_block(team, kernels.HVP_BLOCK, m, d, dtype) if tangents or lanczos else None,
        group=(_own_block((team, waiting, m), dtype), _own_rows((team, 4, waiting), np.float64),
               None if blas or d > m else _own_block((team, waiting, d), dtype)),
        split=None, **products)


def weights_as_rows(d: int, blas: bool, tangents: int, measuring: bool, trajectory: bool) -> bool:
    """Whether a BLAS run holds the weights it steps as rows, W (m, d), the layout of its gradient's transposed
    product (BLAS_WEIGHTS_AS_ROWS): where that product is transposed (BLAS_SWAPPED_MIN_D, OpenBLAS's AVX-512
    kernels), and without tangent vectors, the sharpness or a trajectory (their code reads Wt (d, m))."""
    return (BLAS_WEIGHTS_AS_ROWS and blas and d >= BLAS_SWAPPED_MIN_D and blas_is_avx512() and not tangents
            and not measuring and not trajectory)


# Whether a team's members each close the step on a copy of the weights of their own (replicated_close), and
# the most bytes of the other members' partial gradients each member then sums a step.
REPLICATED_CLOSE = True
REPLICATED_BYTES = 256 << 10


def replicated_close(team: int, d: int, m: int, dtype, blas: bool, tangents: int, lanczos: int) -> bool:
    """Whether every member of a team closes each step (sums the members' partial gradients, takes the
    verdict and updates) on a copy of the weights of its own, rather than member 0 alone on the one copy
    that all read: the fused products' runs without tangent vectors or sharpness measurements (which the
    team computes together from the one copy), where the other members' partials (d x m each) come to at
    most REPLICATED_BYTES. Every member then reads all of them at every step, where member 0 alone did:
    cheap for a team of two or a small net (M's 128 KB, S's 8 KB), but a large team's many large partials,
    each read by every member, would load the cores' shared caches (not measured: the hosts here have two
    cores).

    Member 0 alone would update the weights in lines the other members' caches hold, which each store waits
    on, the others would wait at a second barrier, then fetch every line back in their next pass: on S, member
    0 spent 1.1 us in that barrier though it arrived last, and member 1's pass ran 3 us longer than member
    0's. A replicated team meets once a step, 3-4% faster on S and M on an Intel AVX-512 host
    (docs/performance.md); it alternates two sets of partials, so that a member already in the next step's
    pass writes none that a slower one is still summing. The copies stay equal bit for bit: every member sums
    the same partials in the same order."""
    partials = (team - 1) * d * m * np.dtype(dtype).itemsize
    return REPLICATED_CLOSE and team > 1 and not blas and not tangents and not lanczos and partials <= REPLICATED_BYTES


# Whether a team may split the net's neurons among its members rather than the samples (split_team), the least
# bytes of the other members' partial gradients from which it does, and the most bytes of phi and phi' of every
# sample a member then holds (2 n w entries).
SPLIT_TEAM = True
SPLIT_MIN_BYTES = 8 << 10
# ... but 16 KB on AMD's Zen 4 (znver4): there S (8 KB) ran 1-7% faster split by samples (median 1.7%, six
# rounds), (256, 16, 128) (16 KB) level, (256, 32, 128) (32 KB) and M faster split by neurons.
SPLIT_MIN_BYTES_BY_TARGET = {"znver4": 16 << 10}
SPLIT_ROWS_BYTES = 1 << 20


def split_team(team: int, n: int, d: int, m: int, dtype, blas: bool, tangents: int, lanczos: int,
               trajectory: bool, linear: bool) -> bool:
    """Whether a team splits the net's neurons among its members (member r holds w = m / team columns of W
    and a) rather than the samples (numba_cpu.team.run_split_steps): each member then computes its neurons'
    part of every output, the members exchange n outputs and a few sums a step, and no member reads another's
    d x w gradient. That pays where the other members' partial gradients, which each member of a team split by
    samples reads from the other cores, outweigh the split step's second barrier and exchange (about 1 us): on
    an Intel AVX-512 host (docs/performance.md), M 6-9% faster a step (128 KB of partial gradient in float64,
    64 KB in float32), S 4% in float64 (8 KB) and 2% slower in float32 (4 KB); so from SPLIT_MIN_BYTES (on AMD's
    Zen 4 from SPLIT_MIN_BYTES_BY_TARGET's 16 KB), with every member's phi and phi' of all the samples within
    SPLIT_ROWS_BYTES (its core's L2); and where each member's w columns fill whole cache lines, so that the
    tiles leave none to the scalar loops (split so, n = 360, d = 64 took 179 us a step at m = 100, w = 50,
    against 162 split by samples; 84 against 63 at m = 50; 257-260 against 266-268 at m = 272, w = 136). Only
    the fused products of a net (not linear) with d below tiles.BLOCKED_MIN_D, and runs without trajectories,
    tangent vectors or the sharpness, whose measurements need the whole net (held-out samples are split as the
    training samples: each member its part of their outputs)."""
    from ..kernels.numba_cpu.tiles import BLOCKED_MIN_D

    itemsize = np.dtype(dtype).itemsize
    return (SPLIT_TEAM and team > 1 and not blas and not tangents and not lanczos and not trajectory
            and not linear and m % (team * (CACHE_LINE // itemsize)) == 0 and d < BLOCKED_MIN_D
            and (team - 1) * d * m * itemsize >= SPLIT_MIN_BYTES_BY_TARGET.get(target_cpu_name(), SPLIT_MIN_BYTES)
            and 2 * n * (m // team) * itemsize <= SPLIT_ROWS_BYTES)


# At most this many bytes of curvature rows kept by the step's pass for the tangent map (2 m float64 values a
# sample, 4 m when the outer layer is trained): beyond it the tangent map forms them again, a block at a time.
KEPT_BYTES = 64 << 20


def _kept_rows(team: int, m: int, n: int, dtype, train_outer: bool) -> tuple:
    """What the step's pass keeps of each training sample for the tangent map (numba_cpu.step.sample_block's
    `kept`): P, Q (n, m) in the run's dtype (0 rows unless the outer layer is trained), AQ, AR (n, m) and
    coef (n, 2) float64, and each member's row of phi'' (team, m) in the run's dtype. With more samples
    than KEPT_BYTES allows, 0 rows: the tangent map forms each block's curvature itself."""
    size = np.dtype(dtype).itemsize
    per_sample = 16 * m + 16 + (2 * size * m if train_outer else 0)
    rows = n if n * per_sample <= KEPT_BYTES else 0
    outer = rows if train_outer else 0
    empty = aligned_empty
    return (empty((outer, m), dtype), empty((outer, m), dtype), empty((rows, m)), empty((rows, m)), empty((rows, 2)),
            _own_rows((team, m), dtype))


# The least bytes between two members' blocks of scratch (_own_block, _gapless, _copies, _hvp_block): a page.
# Each member writes its own block at every step, and a core's prefetchers, which stay within a 4 KB page,
# reach up to 20 lines past the lines it streams through; a neighbour's block that starts closer is fetched
# into the wrong core and taken back at its next write. With one line between members' blocks of scaled rows
# of X (group[2]: M's team split by neurons), the member whose block came second ran its backward pass 7-8%
# slower than the first, whichever core it ran on, and the other waited for it at the barrier: M 3% slower
# a step (docs/performance.md).
MEMBER_GAP = 4096

# Rows up to this many bytes follow one another in a member's block (_own_block); longer ones keep
# _own_rows's gap. Without the gap, M (rows of 2 KB in float64) ran 4-10% slower, most likely because rows
# 2 KB apart fall on a few cache sets in the backward tiles; and the activation's spans save little at that
# width.
SPAN_ROW_BYTES = 1024


def _split_buffers(kernels, team: int, m: int, d: int, n: int, n_test: int, dtype):
    """The scratch of a team split by neurons (numba_cpu.team.run_split_steps), member r holding the w = m / team
    columns r w .. (r + 1) w - 1 of the net. Buffers' arrays as for a replicated close, each member's at width w,
    but for: pending_q and group[0] hold phi' and phi of every sample (team, n, w), and zs its tiles' rows of z,
    each member's rows without gaps (_gapless); one set of partials; ps and qs empty (team, 0) and stats and
    neuron unused (neurons_part holds a member's margins); and split = (the members' parts of the outputs
    (team, n) and of the norms (team, 4: step.split_norms), float64, each member's row its own lines; the
    neurons' margins of the whole net (m,), which each member fills in at record steps; the members' parts of the
    held-out samples' outputs (team, n_test) float64; and per member a tile's rows of their phi and phi'
    (team, z_rows, w) each)."""
    empty = aligned_empty
    w = m // team
    waiting = kernels.waiting_samples.implementation(d, w)
    return kernels.Buffers(
        Wt=_copies(team, (d, w), dtype), a=_copies(team, (w,), dtype), a_step=_copies(team, (w,), dtype),
        zs=_gapless((team, kernels.z_rows(d, w), w), dtype), ps=empty((team, 0), dtype), qs=empty((team, 0), dtype),
        pending_q=_gapless((team, n, w), dtype), pending_rows=_own_rows((team, waiting), np.int64),
        group=(_gapless((team, n, w), dtype), _own_rows((team, 4, waiting), np.float64),
               None if d > w else _own_block((team, waiting, d), dtype)),
        grads=empty((1, team, d, w), dtype), grads_a=_own_rows((1, team, w), dtype),
        neurons_part=_own_rows((1, team, w), np.float64), stats=_own_rows((1, 2 * team, 3), np.float64),
        grad=_copies(team, (d, w)), grad_a=_copies(team, (w,)), neuron=_copies(team, (w,)), total=_copies(team, (2, 3)),
        us=empty((1, n)), tangent=None, kept=None, curvature=None, rows=None, Z=None, Z_test=None, grads_blas=None,
        gemm=None, columns=None,
        split=(_own_rows((team, n), np.float64), _own_rows((team, 4), np.float64), empty(m),
               _own_rows((team, n_test), np.float64),
               (_gapless((team, kernels.z_rows(d, w), w), dtype), _gapless((team, kernels.z_rows(d, w), w), dtype))))


def _gapless(shape: tuple, dtype) -> np.ndarray:
    """An empty array of shape (team, rows, width) whose members' blocks lie MEMBER_GAP bytes or more apart
    (spare rows after each) and whose rows follow one another, however long (what the activation's spans of
    rows need: _own_block keeps a gap after long rows)."""
    team, rows, width = shape
    return aligned_empty((team, rows + _spare_rows(width, dtype), width), dtype=dtype)


def _spare_rows(width: int, dtype) -> int:
    """Rows of `width` entries that make up MEMBER_GAP bytes or more (at least one)."""
    return _spare(width * np.dtype(dtype).itemsize)


def _spare(unit_bytes: int) -> int:
    """Units of unit_bytes that make up MEMBER_GAP bytes or more (at least one)."""
    return -(-MEMBER_GAP // max(unit_bytes, 1))


def _own_block(shape: tuple, dtype) -> np.ndarray:
    """An empty array of shape (team, rows, width) whose members' blocks lie MEMBER_GAP bytes or more apart
    (spare rows after each block). Rows up to SPAN_ROW_BYTES follow one another within a block, so that the
    fused step's activation takes a run of rows as one span; longer rows each keep _own_rows's gap too."""
    team, rows, width = shape
    row_bytes = width * np.dtype(dtype).itemsize
    spare = _spare_rows(width, dtype)
    if row_bytes == 0 or row_bytes > SPAN_ROW_BYTES:
        return _own_rows((team, rows + spare, width), dtype)
    return aligned_empty((team, rows + spare, width), dtype=dtype)


def _copies(copies: int, shape: tuple, dtype=np.float64) -> np.ndarray:
    """An empty array (copies, spare + 1) + shape: copy r is [r, 0], the copies MEMBER_GAP bytes or more apart
    (spare copies between; none for one copy)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    spare = 0 if copies == 1 else _spare(size)
    return aligned_empty((copies, 1 + spare) + shape, dtype=dtype)


def _hvp_block(team: int, block: int, m: int, d: int, dtype) -> tuple:
    """Each member's scratch of a block of samples in the Hessian-vector products (numba_cpu.tangent.hessian_part's
    `block`, every array with a leading axis of members). The tiles read each array's row length, so the
    members are kept MEMBER_GAP bytes apart by spare rows after each member's block, not by longer rows."""

    def rows(width: int, kind=dtype) -> np.ndarray:
        return aligned_empty((team, block + _spare_rows(width, kind), width), dtype=kind)

    order = aligned_empty((team, block + _spare_rows(1, np.int64)), dtype=np.int64)
    order[...] = np.arange(order.shape[1])
    return (rows(m), rows(m), rows(m), rows(m), rows(m, np.float64), rows(m, np.float64), rows(2, np.float64),
            rows(d, np.float64), rows(m, np.float64), rows(m, np.float64), order)



# The BLAS mode's gemm: numpy's own OpenBLAS where numpy has one (its PyPI wheels bundle scipy-openblas64:
# ILP64, its symbols prefixed scipy_ and suffixed 64_), else scipy's through numba. numpy's is the newer
# build: on the AVX-512 host of docs/performance.md L's products ran 1.1x faster in it.
_NUMPY_BLAS_FILE = "libscipy_openblas64_"
_NUMPY_GEMM = {"float64": "scipy_dgemm_64_", "float32": "scipy_sgemm_64_"}


def target_cpu_name() -> str:
    """kernels' compiler.target_cpu_name (the CPU numba compiles for, as LLVM names it), imported when asked
    (it imports numba)."""
    from ..kernels.numba_cpu.compiler import target_cpu_name as name

    return name()


def blas_bound_d(cpu: str):
    """The d from which a problem's products go through OpenBLAS's AVX-512 kernels with 64-byte tiles on
    numba's target `cpu` (an LLVM CPU name), or None for never: BLAS_BOUND_D_BY_TARGET's bound, else none on
    AMD's Zen cores (znver*), else BLAS_BOUND_D."""
    from ..kernels.numba_cpu.compiler import amd_zen

    if cpu in BLAS_BOUND_D_BY_TARGET:
        return BLAS_BOUND_D_BY_TARGET[cpu]
    return None if amd_zen(cpu) else BLAS_BOUND_D


@functools.cache
def blas_is_avx512() -> bool:
    """Whether the BLAS the kernels call (numpy's OpenBLAS, else any OpenBLAS loaded) runs its AVX-512
    kernels (AVX512_BLAS_CORES); False without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    cores = {Path(info.get("filepath") or "").name.startswith(_NUMPY_BLAS_FILE):
             (info.get("architecture") or "").lower()
             for info in threadpool_info() if info.get("internal_api") == "openblas"}
    return cores.get(True, cores.get(False, "")) in AVX512_BLAS_CORES


@functools.cache
def numpy_gemm(dtype: str) -> int:
    """The address of the Fortran ?gemm_ (ILP64) of numpy's OpenBLAS for `dtype` ('float64' or 'float32'), or
    0 where numpy has no such library loaded (the kernels then call scipy's). Found through threadpoolctl's
    list of the loaded BLAS libraries; 0 without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 0
    for info in threadpool_info():
        path = info.get("filepath") or ""
        if Path(path).name.startswith(_NUMPY_BLAS_FILE):
            try:
                return ctypes.cast(getattr(ctypes.CDLL(path), _NUMPY_GEMM[dtype]), ctypes.c_void_p).value or 0
            except (OSError, AttributeError):
                return 0
    return 0


def _own_rows(shape: tuple, dtype) -> np.ndarray:
    """An empty array of `shape` whose rows (along its last axis) are a cache line longer, unused.

    A team stacks its members' buffers (member first), and the kernel writes its member's block of
    each at every sample. Without the gap, two neighbouring blocks share the cache line where they meet
    (unless a row is a whole number of lines long), and the two cores pass that line back and forth at
    every sample; that matters most for narrow rows (docs/performance.md). The array starts at a line
    (aligned_empty), so where a row is a whole number of lines long, every member's block starts at one."""
    pad = CACHE_LINE // np.dtype(dtype).itemsize
    return aligned_empty(shape[:-1] + (shape[-1] + pad,), dtype=dtype)


def aligned_empty(shape, dtype=np.float64) -> np.ndarray:
    """np.empty(shape, dtype), its first element at a cache-line boundary. numpy aligns to 16 bytes only;
    a row that starts inside a line splits every 64-byte vector load and store of the tiles across two
    lines, which cost S's and M's steps about 10% on an AVX-512 host (docs/performance.md). Its memory is a
    block that an earlier run's scratch no longer uses, where one of that size is kept (_block)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = _block(size + CACHE_LINE)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + size].view(dtype).reshape(shape)


# Blocks of bytes behind aligned_empty's arrays, kept by size for later calls, up to SCRATCH_KEEP_BYTES in all
# and SCRATCH_KEEP_BLOCK_BYTES a block. A block is free when nothing but its list refers to it: every view of a
# numpy array refers to the array that owns its memory, so while any array made from a block lives, the
# block's reference count says so. Fresh memory costs its page faults at its first write, in every call:
# M's 250-step call took about 330 (1.3 MB of scratch), 0.65 ms of its 59 ms on the Intel AVX-512 host of
# docs/performance.md; memory that the allocator had kept cost none (S's, SWEEP's and L's calls).
SCRATCH_KEEP_BYTES = 32 << 20
SCRATCH_KEEP_BLOCK_BYTES = 8 << 20
# The kept blocks by size (the sizes least recently used first), and the lock for them.
_BLOCKS, _BLOCKS_LOCK = {}, threading.Lock()


def _block(nbytes: int) -> np.ndarray:
    """A uint8 array of nbytes: a kept block that no array uses any more, else a new one, kept where the
    budget allows once free blocks of other sizes make room."""
    with _BLOCKS_LOCK:
        kept = _BLOCKS.pop(nbytes, [])
        _BLOCKS[nbytes] = kept  # now the most recently used size
        i = _free_index(kept)
        if i >= 0:
            return kept[i]
        block = np.empty(nbytes, dtype=np.uint8)
        if nbytes <= SCRATCH_KEEP_BLOCK_BYTES:
            for blocks in _BLOCKS.values():
                while _kept_bytes() + nbytes > SCRATCH_KEEP_BYTES and (j := _free_index(blocks)) >= 0:
                    del blocks[j]
            if _kept_bytes() + nbytes <= SCRATCH_KEEP_BYTES:
                kept.append(block)
        for size in [size for size, blocks in _BLOCKS.items() if not blocks]:
            del _BLOCKS[size]
        return block


def _kept_bytes() -> int:
    return sum(size * len(blocks) for size, blocks in _BLOCKS.items())


def _references(blocks: list, i: int) -> int:
    return sys.getrefcount(blocks[i])


def _free_index(blocks: list) -> int:
    """The index of a block in `blocks` that nothing else refers to, or -1."""
    for i in range(len(blocks)):
        if _references(blocks, i) <= _FREE_REFERENCES:
            return i
    return -1


# What _references counts for a block that only its list holds, on this interpreter.
_FREE_REFERENCES = _references([np.empty(1, dtype=np.uint8)], 0)


def _forget_blocks_lock():
    global _BLOCKS_LOCK
    _BLOCKS_LOCK = threading.Lock()  # a forked child keeps the blocks, not a lock that a parent's thread held


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_blocks_lock)
