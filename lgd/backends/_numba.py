"""The Numba CPU backend: whole runs of compiled code from :mod:`lgd.kernels.numba_cpu`.

Numba is imported only when a runner is built. The kernels compile once per dtype (with
``cache=True``, so later processes load them from disk); activation, loss, their parameters and
the stepsizes are runtime data. Which kernel runs a chunk:

- :func:`run_config` (compiled, nogil) for each configuration, spread over a pool of Python
  threads, one whole chunk per call: sweeps, and small problems (below :data:`PARALLEL_WORK`);
- :func:`run_steps` when there are fewer configurations than threads and the problem is larger:
  numba threads split the samples of every step; large problems (see :data:`BLAS_WORK`) take
  their two matrix products through BLAS there instead of the fused loops.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import Problem, State, Trace

# n * m * d from which a step's products go through BLAS rather than the fused loops.
BLAS_WORK = 1 << 23
# n * m * d from which a single run splits every step's samples over threads: below it the cost of
# waking the threads every step (large on a busy machine) outweighs the work shared.
PARALLEL_WORK = 1 << 22


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
        """run_steps (threads split every step) or run_config (one thread per configuration)."""
        n, d = self._X.shape
        split_samples = self._use_blas(width) or (configs < self._threads and n * d * width >= PARALLEL_WORK)
        return self._kernels.run_steps if split_samples else self._kernels.run_config

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
        width = state.W.shape[1]
        use_blas = self._use_blas(width)
        if use_blas and self._XT is None:
            self._XT = np.ascontiguousarray(self._X.T)
        XT = self._XT if use_blas else self._X[:0].T.copy()
        blocks = max(1, min(self._threads, self._X.shape[0]))
        kernel(self._X, XT, self._y, self._X_test, self._y_test, *common, blocks, use_blas)

    def run(self, state: State, trace: Trace, t_start: int, t_stop: int, steps: int, record_every: int):
        kernel = self._kernel_for(state.W.shape[0], state.W.shape[1])
        self._call(kernel, state, trace, t_start, t_stop, steps, record_every)


def _run_share(kernel, args, configs):
    for c in configs:
        kernel(*args, c)


def runner(problem: Problem, shape=None) -> Runner:
    return Runner(problem, shape)
