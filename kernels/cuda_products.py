"""The products path of the CUDA kernels (cuda/products.cuh): large problems as two cuBLAS products and four
kernels per GD step, replayed from captured CUDA graphs so that Python launches nothing per step.

What lives here: :func:`choose` (the fused kernel or the products path for a problem), :func:`rows_per_block`
(the kernel's block of sample rows and its shared memory), :class:`ProductRun` (the buffers of one batch of
configurations, arrays of ``engine.xp``) and :func:`advance` (the steps of one chunk). Written against an
engine (:mod:`lgd.kernels.cuda_run`): on the GPU the products are cupy's (cuBLAS) and a run of steps is a
CUDA graph; on the host they are numpy's and the recording is replayed as calls, so CI runs this same code
against the numpy oracle.

Every step is replayed from graphs of 1, 2, 4, ... :data:`GRAPH_STEPS` steps (a run of k steps is the
binary decomposition of k, at most log2(GRAPH_STEPS) + 1 replays). The kernels read the step from a counter
on the device that the last kernel of a step advances, and decide from it whether the step records, so a
graph replays unchanged at any step, record steps included; with held-out data the record steps add the
held-out pass and replay from graphs of their own.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import cuda_run

# The paths (LGD_CUDA_PATH): 'auto' chooses by the problem's sizes (:func:`choose`).
PATHS = ("auto", "fused", "products")
# The longest captured run of steps (a power of two).
GRAPH_STEPS = 64
# lgd_rows works on blocks of at most ROWS_MAX sample rows, their phi in at most ROWS_SHARED bytes of shared
# memory (the default a block gets without opting in).
ROWS_MAX = 32
ROWS_SHARED = 48 * 1024
# Entries of W and grad_W per block of lgd_norms, per thread of the block.
NORM_ENTRIES_PER_THREAD = 8
# Blocks of lgd_update per multiple of the block size (a grid-stride loop covers the rest).
UPDATE_BLOCKS_MAX = 4096


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 16) * 16


def rows_shared(m: int, itemsize: int, threads: int, rows: int) -> int:
    """Bytes of dynamic shared memory lgd_rows takes (lgd::rows_shared_bytes): the reduction scratch, the
    rows' coefficients and their phi."""
    return _aligned(cuda_run.reduce_scratch_bytes(threads)) + _aligned(itemsize * rows) + _aligned(itemsize * rows * m)


def rows_per_block(n: int, m: int, itemsize: int, threads: int) -> int:
    """The sample rows of a block of lgd_rows: as many as fit ROWS_SHARED, at most ROWS_MAX and n. Raises
    ValueError when not one row of width m fits."""
    rows = max(1, min(n, ROWS_MAX))
    while rows > 1 and rows_shared(m, itemsize, threads, rows) > ROWS_SHARED:
        rows -= 1
    if rows_shared(m, itemsize, threads, rows) > ROWS_SHARED:
        raise ValueError(f"a network of width {m} needs {rows_shared(m, itemsize, threads, 1)} bytes of shared "
                         f"memory per sample in the products path; a block has {ROWS_SHARED}")
    return rows


def memory_bytes(n: int, n_test: int, configs: int, m: int, d: int, itemsize: int, threads: int) -> int:
    """Device bytes of the products path's buffers for a batch (Z, Z_test, grad_W and the partial sums)."""
    rows = rows_per_block(n, m, itemsize, threads)
    blocks = -(-n // rows)
    per_config = ((n + n_test) * m + m * d + 2 * m) * itemsize + blocks * (m * (itemsize + 8) + 40)
    return configs * per_config


def choose(requested: str, n: int, d: int, m: int, itemsize: int, threads: int, shared_budget: int, *,
           n_test: int = 0, configs: int = 1, memory_budget: float = math.inf, trajectories: bool = False,
           tangents: bool = False) -> str:
    """'fused' or 'products' for a run. `requested` is one of :data:`PATHS` (else the environment's
    LGD_CUDA_PATH, else 'auto').

    'auto' takes the products path where the fused kernel cannot keep X in shared memory beside a block's
    W and gradient (the M and L sizes: the fused kernel then reads X from L2 at every step, one block per
    configuration), unless the run records trajectories or tangent vectors (the products path has neither)
    or its buffers exceed `memory_budget`. The threshold is a choice made before the path has run on a
    GPU; bench/gpu_check.sh times both paths so that a lent GPU can settle it.
    """
    if requested is None:
        requested = os.environ.get("LGD_CUDA_PATH", "auto").strip() or "auto"
    if requested not in PATHS:
        raise ValueError(f"the CUDA path must be one of {', '.join(PATHS)} (LGD_CUDA_PATH), got {requested!r}")
    unsupported = [what for what, wanted in (("trajectories", trajectories), ("Lyapunov exponents", tangents))
                   if wanted]
    if requested == "products":
        if unsupported:
            raise ValueError(f"the CUDA products path records no {' or '.join(unsupported)}: run them on the "
                             f"fused kernel (LGD_CUDA_PATH=fused or auto)")
        rows_per_block(n, m, itemsize, threads)
        return "products"
    if requested == "fused" or unsupported:
        return "fused"
    try:
        needed = memory_bytes(n, n_test, configs, m, d, itemsize, threads)
    except ValueError:
        return "fused"
    try:
        x_shared = cuda_run.layout(n, d, m, itemsize, threads, shared_budget).x_shared
    except ValueError:  # one sample of a wide network does not fit the fused kernel's block: the products path
        if needed > memory_budget:
            raise
        rows_per_block(n, m, itemsize, threads)  # or neither path takes it, which this says
        return "products"
    return "products" if not x_shared and needed <= memory_budget else "fused"


def _record_steps_between(t: int, stop: int, steps: int, every: int) -> int:
    """The first record step in [t, stop) (a multiple of `every`, or `steps`: lgd.backends.record_slot), else
    stop."""
    return min(-(-t // every) * every, stop, steps if steps >= t else stop)


def _record_run_end(t: int, stop: int, steps: int, every: int) -> int:
    """The end of the run of consecutive record steps that starts at record step t, within [t, stop): every
    step with `every` 1; otherwise t alone, or t and t + 1 when t + 1 is the last evaluation `steps` (two
    multiples of an `every` of 2 or more are never neighbours)."""
    if every == 1:
        return stop
    return t + 2 if t + 1 == steps and t + 1 < stop else t + 1


class ProductRun:
    """The buffers of one batch of C configurations on the products path (the attributes the cupy runner
    reads are those of :class:`lgd.kernels.cuda_run.ChunkRun`: W, a, diverged, fault, trace, trace_neuron,
    trajectories, lyapunov, tangents, sharpness_last)."""

    def __init__(self, engine, X, y, X_test, y_test, W, a, rules, rule_params, diverged, records: int,
                 neuron_records: int):
        xp = engine.xp
        self.engine = engine
        self.dtype = np.dtype(X.dtype)
        self.X, self.y = X, y
        C, m, d = W.shape
        n = X.shape[0]
        self.n_test = 0 if X_test is None else int(X_test.shape[0])
        itemsize, threads = self.dtype.itemsize, engine.threads
        self.rows = rows_per_block(max(n, self.n_test), m, itemsize, threads)
        self.blocks = -(-n // self.rows)
        self.test_blocks = -(-self.n_test // self.rows)
        self.norm_per_block = threads * NORM_ENTRIES_PER_THREAD
        self.norm_blocks = -(-(d * m) // self.norm_per_block)
        if C * max(self.blocks, self.norm_blocks) >= 2**31 or d * m >= 2**31:  # a grid's blocks, 32-bit indices
            raise ValueError(f"problem too large for the CUDA products path: n={n}, d={d}, m={m}, {C} configurations")
        self.W, self.a = W, a
        self.W_rows = W.reshape(C * m, d)  # a view: configuration c's neurons are rows c m .. c m + m - 1
        self.rules, self.rule_params, self.diverged = rules, rule_params, diverged
        # Each configuration's latest measured sharpness, as ChunkRun's: the runner copies it in place (a captured
        # graph keeps the array's address, not its values).
        self.sharpness_last = xp.full(C, np.nan)
        self.fault = xp.zeros(1, dtype=np.int32)
        self.clock = xp.zeros(1, dtype=np.int64)
        dummy = xp.zeros(1, dtype=self.dtype)
        self.X_test = dummy if X_test is None else X_test
        self.y_test = dummy if y_test is None else y_test
        self.Z = xp.zeros((n, C * m), dtype=self.dtype)
        self.Z_test = xp.zeros((self.n_test, C * m) if self.n_test else (1, 1), dtype=self.dtype)
        self.grad = xp.zeros((C * m, d), dtype=self.dtype)
        self.grad_a = xp.zeros(C * m, dtype=self.dtype)
        self.parts = xp.zeros(C * self.blocks * 5)
        self.test_parts = xp.zeros(max(1, C * self.test_blocks * 5))
        self.partial_a = xp.zeros(C * self.blocks * m, dtype=self.dtype)
        self.partial_neuron = xp.zeros(C * self.blocks * m if neuron_records else 1)
        self.norms = xp.zeros(C * self.norm_blocks * 2)
        self.eta = xp.zeros(C)
        self.moving = xp.zeros(C, dtype=np.int32)
        self.trace = xp.full((len(cuda_run.KERNEL_FIELDS), C, records), np.nan)
        self.trace_neuron = xp.full((C, neuron_records, m), np.nan)
        # What the fused kernel alone records: empty here (the runner copies nothing of them).
        self.trajectories = {"weights": xp.zeros((C, 0, m, d), dtype=self.dtype),
                             "outer": xp.zeros((C, 0, m), dtype=self.dtype), "projections": xp.zeros((C, 0, 0))}
        self.lyapunov = xp.zeros((C, 0, 0))
        self.tangents, self.tangents_a, self.log_growth = xp.zeros((C, 0, m, d)), xp.zeros((C, 0, m)), xp.zeros((C, 0))
        self._recordings = {}
        # The products' first call outside any capture: cuBLAS sets itself up on it (its workspace).
        with engine.ordered():
            xp.matmul(self.X, self.W_rows.T, out=self.Z)

    def _launch(self, entry: str, grid: int, shared_bytes: int, values: dict) -> None:
        args = [values[name] for name, _ in cuda_run.ENTRY_PARAMS[entry]]
        self.engine.launch(cuda_run.SUFFIX[self.dtype.name], grid, self.engine.threads, shared_bytes, args, entry=entry)

    def step(self, settings: dict, held_out: bool) -> None:
        """Launch one evaluation of every configuration (the step read from the device's counter): the
        products, the held-out pass when `held_out`, the norms, the end of the step and the update."""
        xp, C, m, d = self.engine.xp, self.W.shape[0], self.W.shape[1], self.W.shape[2]
        n, threads, itemsize = self.X.shape[0], self.engine.threads, self.dtype.itemsize
        rows_bytes = rows_shared(m, itemsize, threads, self.rows)
        scratch_bytes = _aligned(cuda_run.reduce_scratch_bytes(threads))
        rows = dict(settings["rows"], y=self.y, a=self.a, diverged=self.diverged, clock=self.clock, fault=self.fault,
                    partial_a=self.partial_a, partial_neuron=self.partial_neuron, m=m, configs=C,
                    rows_per_block=self.rows)
        xp.matmul(self.X, self.W_rows.T, out=self.Z)
        self._launch("lgd_rows", C * self.blocks, rows_bytes,
                     dict(rows, Z=self.Z, parts=self.parts, n=n, blocks_per_config=self.blocks, held_out=0))
        xp.matmul(self.Z.T, self.X, out=self.grad)
        if held_out and self.n_test:
            xp.matmul(self.X_test, self.W_rows.T, out=self.Z_test)
            self._launch("lgd_rows", C * self.test_blocks, rows_bytes,
                         dict(rows, Z=self.Z_test, y=self.y_test, parts=self.test_parts, n=self.n_test,
                              blocks_per_config=self.test_blocks, held_out=1))
        self._launch("lgd_norms", C * self.norm_blocks, scratch_bytes,
                     dict(W=self.W, grad=self.grad, diverged=self.diverged, norms=self.norms, dm=d * m,
                          blocks_per_config=self.norm_blocks, per_block=self.norm_per_block))
        self._launch("lgd_finalize", C, scratch_bytes, dict(
            settings["finalize"], a=self.a, grad_a=self.grad_a, rules=self.rules, rule_params=self.rule_params,
            sharpness_last=self.sharpness_last, diverged=self.diverged, clock=self.clock, parts=self.parts,
            test_parts=self.test_parts, partial_a=self.partial_a, partial_neuron=self.partial_neuron,
            norms=self.norms, eta=self.eta, moving=self.moving, trace=self.trace, trace_neuron=self.trace_neuron,
            n=n, m=m, n_test=self.n_test, configs=C, blocks_per_config=self.blocks, test_blocks=self.test_blocks,
            norm_blocks=self.norm_blocks, records=self.trace.shape[2], neuron_records=self.trace_neuron.shape[1]))
        blocks = max(1, min(UPDATE_BLOCKS_MAX, -(-C * d * m // threads)))
        self._launch("lgd_update", blocks, 0, dict(
            W=self.W, a=self.a, grad=self.grad, grad_a=self.grad_a, eta=self.eta, moving=self.moving,
            clock=self.clock, dm=d * m, m=m, configs=C, train_outer=settings["finalize"]["train_outer"]))

    def steps(self, count: int, settings: dict, key, held_out: bool = False) -> None:
        """`count` steps, each with the held-out pass when `held_out`, replayed from recordings of 2^k such
        steps (captured on first use). The kernels read the step from the device's counter and decide its
        records themselves, so a recording serves record steps and the steps between them alike."""
        size = GRAPH_STEPS
        while count:
            while size > count:
                size //= 2
            recording = self._recordings.get((key, held_out, size))
            if recording is None:
                recording = self.engine.capture(
                    lambda size=size: [self.step(settings, held_out) for _ in range(size)])
                self._recordings[(key, held_out, size)] = recording
            self.engine.replay(recording)
            count -= size


def advance(run: ProductRun, t_start: int, t_stop: int, steps: int, record_every: int, activation, loss,
            scale: float, train_outer: bool, bounds=(math.inf, math.inf), weights_every: int = 0,
            log_risk_every_step: bool = False) -> None:
    """Run evaluations t_start..t_stop-1 of every configuration of ``run`` (queued on the device; the host
    does not wait). The arguments are those of :func:`lgd.kernels.cuda_run.advance`; the products path
    records no trajectories, so `weights_every` is unused."""
    cuda_run.check_codes(activation, loss)
    rows = dict(act=activation.code, act_param=activation.param, loss=loss.code, loss_param=loss.param,
                scale=scale, train_outer=int(bool(train_outer)), log_risk_every_step=int(bool(log_risk_every_step)),
                steps=steps, record_every=record_every, neuron_records=run.trace_neuron.shape[1])
    finalize = dict(train_outer=int(bool(train_outer)), risk_bound=bounds[0], weight_bound=bounds[1],
                    log_risk_every_step=int(bool(log_risk_every_step)), steps=steps, record_every=record_every)
    settings = {"rows": rows, "finalize": finalize}
    key = tuple(sorted(rows.items())) + tuple(sorted(finalize.items()))
    with run.engine.ordered():
        run.clock[...] = t_start
        if not run.n_test:  # a record step launches what every step launches: one run of recordings
            run.steps(t_stop - t_start, settings, key)
            return
        t = t_start
        while t < t_stop:  # the record steps add the held-out pass: runs of them replay from their own recordings
            record = _record_steps_between(t, t_stop, steps, record_every)
            if record > t:
                run.steps(record - t, settings, key)
                t = record
            if t < t_stop:
                end = _record_run_end(t, t_stop, steps, record_every)
                run.steps(end - t, settings, key, held_out=True)
                t = end
