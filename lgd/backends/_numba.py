"""The Numba CPU backend: whole runs of compiled code from :mod:`lgd.kernels.numba_cpu`.

Numba is imported only when a runner is built. The kernel compiles once per dtype and product mode
(fused loops or BLAS; with ``cache=True``, so later processes load it from disk); activation, loss,
their parameters and the stepsizes are runtime data. Every chunk runs :func:`run_team` (compiled,
nogil, called from Python threads):

- with fewer configurations than threads (a single run), a team of threads works on every step,
  each on its block of samples, meeting at a spinning barrier twice a step and never leaving
  compiled code during a chunk (:meth:`Runner.team_size`, :data:`TEAM_WORK`);
- otherwise (sweeps) each thread runs a team of one, taking the configurations one at a time from a
  queue the threads share.

The two products of a step run in the fused loops, or, for problems with d >= :data:`BLAS_MIN_D` and
at least :data:`BLAS_WORK`, as BLAS calls on each thread's block of samples, BLAS held to one thread
meanwhile (threadpoolctl) since the team already occupies the cores; a single run from
:data:`BLAS_BOUND_D` runs on one thread and BLAS uses all the cores.
"""

from __future__ import annotations

import gc
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import Problem, State, Trace

# A step's products go through BLAS (on each thread's block of samples) rather than the fused loops'
# register tiles from d >= BLAS_MIN_D and n * d * m >= BLAS_WORK. Measured on 2 cores (leaky softplus,
# fused time over BLAS time, float64 / float32): d = 16, 32: 0.81-0.83 / 0.77-0.78 at n, d, m = 512, 32,
# 128 and 1000, 16, 256; d = 64: 0.85-1.02 / 0.75-0.99 (n, m from 256, 64 to 2000, 256); d = 128:
# 1.39 / 1.12 at 1000, 128, 256; d = 256: 1.26-1.98 / 1.31-1.32.
BLAS_MIN_D = 128
BLAS_WORK = 1 << 19
# Dimension d from which the products are nearly all of a step's work: a single run (that would
# otherwise take a team) then runs on one thread and BLAS spreads each product over all the cores
# (a team of threads, each with a single-threaded BLAS, was 1.25x slower at n, d, m = 2000, 3072,
# 256 on 2 cores).
BLAS_BOUND_D = 512
# Entries of the n x m block per thread of a team: a single run is split over at most n m / TEAM_WORK
# threads, so that each thread's share of a step outweighs the two barriers (about a microsecond
# each) that a team needs per step.
TEAM_WORK = 1 << 11


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("numba") is None:
        return False, "numba is not installed"
    if importlib.util.find_spec("scipy") is None:
        return False, "scipy is not installed (numba needs it for matrix products)"
    return True, "numba is installed"


class Runner:
    """Runs configurations of one problem in compiled code; see :mod:`lgd.backends` for the contract."""

    name = "numba"

    def __init__(self, problem: Problem, shape=None):
        import numba

        from ..kernels import numba_cpu

        self.problem = problem
        self._kernels = numba_cpu
        self._threads = numba.get_num_threads()
        p = problem
        d = p.X.shape[1]
        self._X = np.ascontiguousarray(p.X)
        self._y = np.ascontiguousarray(p.y)
        if p.X_test is not None:
            self._X_test = np.ascontiguousarray(p.X_test)
            self._y_test = np.ascontiguousarray(p.y_test)
        else:
            self._X_test = np.empty((0, d), dtype=p.dtype)
            self._y_test = np.empty(0, dtype=p.dtype)
        code, param = int(p.activation.code), float(p.activation.param)
        if code == numba_cpu.IDENTITY:  # the kernels treat the identity as leaky_relu(1)
            code, param = numba_cpu.LEAKY_RELU, 1.0
        self._codes = (code, param, int(p.loss.code), float(p.loss.param), bool(p.loss.margin), float(p.scale),
                       bool(p.train_outer), bool(p.linear))
        self._pool = None
        # Without threadpoolctl no BLAS runs inside a team: the fused loops do every product.
        self._threadpoolctl = importlib.util.find_spec("threadpoolctl") is not None
        self._blas_limits = None  # threadpoolctl's controller of the BLAS libraries, made on first use (ms)
        self._compile(1 if shape is None else int(shape[1]))

    def _use_blas(self, width: int) -> bool:
        n, d = self._X.shape
        return (not self.problem.linear and d >= BLAS_MIN_D and n * d * width >= BLAS_WORK
                and self._threadpoolctl)

    def _one_blas_thread(self):
        """Context holding every loaded BLAS to one thread (threadpoolctl), restored on exit."""
        if self._blas_limits is None:
            from threadpoolctl import ThreadpoolController

            self._blas_limits = ThreadpoolController().select(user_api="blas")
        return self._blas_limits.limit(limits=1)

    def _compile(self, m: int):
        """Compile (or load from the cache) the driver that runs of width m use (its dtype and product
        mode), running zero steps."""
        d = self._X.shape[1]
        state = State(W=np.zeros((1, m, d), dtype=self.problem.dtype), a=np.ones((1, m), dtype=self.problem.dtype),
                      stepsizes=np.ones(1))
        trace = Trace.empty(1, 1, m, True)
        # Python's cyclic garbage collector, left on, walks numba's many compiler objects again and again
        # during a cold compile (three full collections, 0.9 s of 9 s here); off, the compile's garbage
        # waits for the first collection after it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.run(state, trace, 0, 0, 1, 1)
        finally:
            if collecting:
                gc.enable()

    def run(self, state: State, trace: Trace, t_start: int, t_stop: int, steps: int, record_every: int):
        dtype = self.problem.dtype
        etas = np.asarray(state.stepsizes, dtype=dtype)
        traces = tuple(getattr(trace, name) for name in ("risk", "accuracy", "grad_norm", "weight_norm", "margin",
                                                          "test_risk", "test_accuracy"))
        arrays = traces + (trace.neuron_margins, state.W, state.a, state.diverged)
        if not all(x.flags.c_contiguous for x in arrays):
            raise ValueError("the numba backend needs C-contiguous state and trace arrays")
        blas = self._use_blas(state.W.shape[1])
        common = (state.W, state.a, etas, state.diverged, traces, trace.neuron_margins) + self._codes[:5] + \
                 (self._codes[5], self._codes[6], self._codes[7], t_start, t_stop, steps, record_every,
                  dtype == np.float32)
        data = (self._X, self._y, self._X_test, self._y_test)
        live = np.flatnonzero(state.diverged < 0)
        if t_start >= t_stop:  # compiling only: run the kernel's early return
            live = np.zeros(1, dtype=np.intp)
        team = self.team_size(len(live), state.W.shape[1])
        if blas and team > 1 and self._X.shape[1] >= BLAS_BOUND_D:
            # A single run whose products are nearly all of the work: rather than a team with one BLAS
            # thread each, one thread runs the step and BLAS spreads each product over all the cores.
            self._run_team(1, live, data, common, state, blas)
        elif blas:
            with self._one_blas_thread():
                self._run_configs(live, team, data, common, state, blas)
        else:
            self._run_configs(live, team, data, common, state, blas)

    def _run_configs(self, live, team: int, data: tuple, common: tuple, state: State, blas: bool):
        """A team of `team` threads per configuration, or (team of one) a thread per configuration, the
        threads taking them from a queue they share."""
        threads = min(self._threads, len(live))
        if team > 1 or threads <= 1:
            self._run_team(team, live, data, common, state, blas)
            return
        # A team of one per thread, taking the configurations from one queue: each runs the next one
        # not taken yet, so the threads finish together however their speeds differ.
        queue = np.zeros(1, dtype=np.int64)
        futures = [self._thread_pool().submit(self._run_team, 1, live, data, common, state, blas, queue)
                   for _ in range(threads)]
        for future in futures:
            future.result()

    def team_size(self, configs: int, width: int) -> int:
        """Threads per configuration: with fewer configurations than threads, as many as the problem is
        worth (at least TEAM_WORK entries of the n x m block each), else one (each thread with its share
        of the configurations)."""
        if configs >= self._threads:
            return 1
        return max(1, min(self._threads, self._X.shape[0] * width // max(1, TEAM_WORK)))

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="lgd-numba")
        return self._pool

    def _run_team(self, team: int, configs, data: tuple, common: tuple, state: State, blas: bool, queue=None):
        """run_team by `team` threads over `configs` (those not taken yet from `queue`, which other teams may
        share; a fresh one if None): member 0 in this thread, the others in the pool."""
        _, m, d = state.W.shape
        dtype = self.problem.dtype
        empty = np.empty
        # In the run's dtype: Wt, a, a_step, z rows (a register tile's worth; None with BLAS, which prunes the
        # fused loops from that kernel), p/q rows, waiting q rows (and their sample indices, int64), partial
        # gradients; with BLAS, Z, Z_test and the BLAS gradients, else None (the kernel then compiles without
        # its BLAS calls: a separate, smaller specialisation).
        # What a member writes at every sample is in _own_rows, apart from the other members' rows.
        if blas:
            products = (empty((len(self._X), m), dtype), empty((len(self._X_test), m), dtype),
                        empty((team, d, m), dtype))
        else:
            products = (None, None, None)
        tile, waiting = self._kernels.WIDE_ROWS, self._kernels.WAITING_SAMPLES
        buffers = (empty((d, m), dtype), empty(m, dtype), empty(m, dtype),
                   None if blas else _own_rows((team, tile, m), dtype),
                   _own_rows((team, m), dtype), _own_rows((team, m), dtype), _own_rows((team, waiting, m), dtype),
                   _own_rows((team, waiting), np.int64), empty((team, d, m), dtype),
                   _own_rows((team, m), dtype), _own_rows((team, m), np.float64), _own_rows((2 * team, 3), np.float64),
                   empty((d, m)), empty(m), empty(m), empty((2, 3))) + products
        sync = np.zeros(2, dtype=np.int64)
        go = np.zeros(2, dtype=np.int64)  # the step's verdict (not diverged), the configuration's index
        if queue is None:
            queue = np.zeros(1, dtype=np.int64)
        configs = np.ascontiguousarray(configs, dtype=np.intp)
        kernel = self._kernels.run_team

        def member(k):
            kernel(k, team, sync, go, queue, configs, *data, *common, *buffers)

        futures = [self._thread_pool().submit(member, k) for k in range(1, team)]
        member(0)
        for future in futures:
            future.result()


CACHE_LINE = 64


def _own_rows(shape: tuple, dtype) -> np.ndarray:
    """An empty array of `shape` whose rows (along its last axis) are a cache line longer, unused.

    A team stacks its members' buffers (member first), and the kernel writes its member's block of
    each at every sample. Without the gap, two neighbouring blocks share the cache line where they meet
    (numpy aligns to 16 bytes, not 64), and the two cores pass that line back and forth at every
    sample. With the gap a team of two was 1.4x faster at m = 8 (n, d = 4096, 16), 1.17x at m = 16,
    1.03x at m = 32 and level at m = 64: one shared line per row matters less as rows grow."""
    pad = CACHE_LINE // np.dtype(dtype).itemsize
    return np.empty(shape[:-1] + (shape[-1] + pad,), dtype=dtype)


def runner(problem: Problem, shape=None) -> Runner:
    return Runner(problem, shape)
