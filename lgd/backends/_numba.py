"""The Numba CPU backend: whole runs of compiled code from :mod:`lgd.kernels.numba_cpu`.

Numba is imported only when a runner is built. The kernels compile once per dtype (with
``cache=True``, so later processes load them from disk); activation, loss, their parameters and
the stepsizes are runtime data. Which kernel runs a chunk:

- :func:`run_config` (compiled, nogil) for each configuration, spread over a pool of Python
  threads, one whole chunk per call: sweeps with at least as many configurations as threads, and
  small problems (below :data:`TEAM_WORK`);
- :func:`run_team` when there are fewer configurations than threads: all threads work on every
  step of one configuration, each on its block of samples, meeting at a spinning barrier twice a
  step and never leaving compiled code during a chunk;
- :func:`run_steps` for large problems (see :data:`BLAS_WORK`): the two matrix products of a step
  go through BLAS (which has its own threads), numba threads split the elementwise pass.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import Problem, State, Trace

# n * m * d from which a step's products go through BLAS rather than the fused loops.
BLAS_WORK = 1 << 23
# n * m from which a single run is split over a team of threads: below it a step's work is
# comparable to the two barriers (about a microsecond each) that a team needs per step.
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
        self._XT = None
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
        configs, width = (1, 1) if shape is None else shape[:2]
        self._compile(self._kernel_for(configs, width))

    def _use_blas(self, width: int) -> bool:
        n, d = self._X.shape
        return not self.problem.linear and n * d * width >= BLAS_WORK

    def _kernel_for(self, configs: int, width: int):
        """run_steps (BLAS products), run_team (threads split every step) or run_config (a thread per configuration)."""
        n = self._X.shape[0]
        if self._use_blas(width):
            return self._kernels.run_steps
        if 1 < self._threads and configs < self._threads and n * width >= TEAM_WORK:
            return self._kernels.run_team
        return self._kernels.run_config

    def _compile(self, kernel):
        """Compile (or load from the cache) the driver a batch of this shape needs, for zero steps.

        Only that one: a cold compile costs tens of seconds per driver and dtype."""
        d = self._X.shape[1]
        m = 1
        state = State(W=np.zeros((1, m, d), dtype=self.problem.dtype), a=np.ones((1, m), dtype=self.problem.dtype),
                      stepsizes=np.ones(1))
        trace = Trace.empty(1, 1, m, True)
        self._call(kernel, state, trace, 0, 0, 1, 1)

    def _call(self, kernel, state: State, trace: Trace, t_start: int, t_stop: int, steps: int, every: int):
        dtype = self.problem.dtype
        etas = np.asarray(state.stepsizes, dtype=dtype)
        traces = tuple(getattr(trace, name) for name in ("risk", "accuracy", "grad_norm", "weight_norm", "margin",
                                                          "test_risk", "test_accuracy"))
        arrays = traces + (trace.neuron_margins, state.W, state.a, state.diverged)
        if not all(x.flags.c_contiguous for x in arrays):
            raise ValueError("the numba backend needs C-contiguous state and trace arrays")
        common = (state.W, state.a, etas, state.diverged, traces, trace.neuron_margins) + self._codes[:5] + \
                 (self._codes[5], self._codes[6], self._codes[7], t_start, t_stop, steps, every,
                  dtype == np.float32)
        if kernel is self._kernels.run_config:
            args = (self._X, self._y, self._X_test, self._y_test) + common
            live = [c for c in range(state.W.shape[0]) if state.diverged[c] < 0]
            if len(live) <= 1:
                for c in live:
                    kernel(*args, c)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="lgd-numba")
            # Interleaved shares: neighbouring stepsizes (similar cost) go to different threads.
            shares = [live[i::self._threads] for i in range(self._threads)]
            futures = [self._pool.submit(_run_share, kernel, args, share) for share in shares if share]
            for future in futures:
                future.result()
            return
        if kernel is self._kernels.run_team:
            self._call_team(kernel, state, common)
            return
        width = state.W.shape[1]
        use_blas = self._use_blas(width)
        if use_blas and self._XT is None:
            self._XT = np.ascontiguousarray(self._X.T)
        XT = self._XT if use_blas else self._X[:0].T.copy()
        blocks = max(1, min(self._threads, self._X.shape[0]))
        kernel(self._X, XT, self._y, self._X_test, self._y_test, *common, blocks, use_blas)

    def _call_team(self, kernel, state: State, common: tuple):
        """All threads on every step: member 0 in this thread, the others in the pool."""
        team = self._threads
        _, m, d = state.W.shape
        dtype = self.problem.dtype
        empty = np.empty
        buffers = (empty((d, m), dtype), empty(m, dtype), empty(m), empty((team, m)), empty((team, m)),
                   empty((team, m)), empty((team, d, m)), empty((team, m)), empty((team, m)), empty((2 * team, 3)),
                   empty((d, m)), empty(m), empty(m), empty((2, 3)))
        sync = np.zeros(2, dtype=np.int64)
        go = np.zeros(1, dtype=np.int64)
        data = (self._X, self._y, self._X_test, self._y_test)

        def member(k):
            kernel(k, team, sync, go, *data, *common, *buffers)

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="lgd-numba")
        futures = [self._pool.submit(member, k) for k in range(1, team)]
        member(0)
        for future in futures:
            future.result()

    def run(self, state: State, trace: Trace, t_start: int, t_stop: int, steps: int, record_every: int):
        kernel = self._kernel_for(state.W.shape[0], state.W.shape[1])
        self._call(kernel, state, trace, t_start, t_stop, steps, record_every)


def _run_share(kernel, args, configs):
    for c in configs:
        kernel(*args, c)


def runner(problem: Problem, shape=None) -> Runner:
    return Runner(problem, shape)
