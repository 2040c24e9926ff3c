"""The glue of the CUDA kernel cuda/lgd.cu, written against an array namespace: one code path for the GPU and
for the host build that CI runs.

What lives here: the kernel's parameter list (:data:`PARAMS`, the order of ``LGD_RUN_PARAMS`` in lgd.cu),
the choice of what goes into shared memory (:func:`layout`), the buffers of one batch of configurations
(:class:`ChunkRun`, arrays of ``engine.xp``), the launch of one chunk (:func:`advance`, on the kernel's full or
plain build, :func:`entry_for`) and the checks of the
codes before a launch and of the kernel's fault flag after one (:func:`check_codes`, :func:`check_fault`).

An *engine* is what differs between the two places the kernel runs: ``xp`` (cupy or numpy), ``threads``
(the block size), ``shared_budget`` (bytes of dynamic shared memory a block may use) and
``launch(suffix, grid, block, shared_bytes, args, entry=ENTRY)`` (the entry's parameters are
``ENTRY_PARAMS[entry]``), and, for the products path (:mod:`lgd.kernels.cuda_products`), ``ordered()`` (a
context in which launches and products run in order on one stream), ``capture(work)`` (a replayable
recording of ``work()``: a CUDA graph on the GPU) and ``replay(recording)``. :mod:`lgd.kernels.cupy_gpu`
has the GPU engine (a RawModule), :mod:`lgd.kernels.cuda_host` the host engine (g++ and ctypes). Nothing
here imports cupy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import cuda_codes

# The parameters of lgd_run_<suffix> in order, with their kinds: 'T*' an array of the run's dtype, 'f64*',
# 'i64*', 'i32*' arrays of those types, 'i32', 'i64', 'f64' scalars. Must match LGD_RUN_PARAMS in lgd.cu.
PARAMS = (
    ("X", "T*"), ("y", "T*"), ("X_test", "T*"), ("y_test", "T*"), ("W", "T*"), ("a", "T*"), ("rules", "i64*"),
    ("rule_params", "f64*"), ("sharpness_last", "f64*"), ("diverged", "i64*"), ("fault", "i32*"),
    ("workspace", "T*"), ("trace", "f64*"), ("trace_neuron", "f64*"), ("directions", "T*"), ("trace_weights", "T*"),
    ("trace_outer", "T*"), ("trace_projections", "f64*"), ("n", "i32"), ("d", "i32"), ("m", "i32"),
    ("n_test", "i32"), ("act", "i32"), ("act_param", "f64"), ("loss", "i32"), ("loss_param", "f64"),
    ("scale", "f64"), ("train_outer", "i32"), ("risk_bound", "f64"), ("weight_bound", "f64"),
    ("log_risk_every_step", "i32"), ("t_start", "i64"), ("t_stop", "i64"), ("steps", "i64"),
    ("record_every", "i64"), ("weights_every", "i64"), ("configs", "i32"), ("records", "i32"),
    ("neuron_records", "i32"), ("weight_records", "i32"), ("outer_records", "i32"), ("n_directions", "i32"),
    ("tangents", "f64*"), ("tangents_a", "f64*"), ("log_growth", "f64*"), ("trace_lyapunov", "f64*"),
    ("row_space", "f64*"), ("n_tangents", "i32"), ("lyapunov_records", "i32"), ("tile_rows", "i32"),
    ("x_shared", "i32"), ("w_shared", "i32"), ("g_shared", "i32"),
)
ENTRY = "lgd_run"
# The same kernel built without the held-out pass, the trajectory records and the tangent vectors (FULL false in
# lgd.cu): fewer registers for the runs that need none of them (entry_for).
PLAIN_ENTRY = "lgd_run_plain"
# The entries of the products path (cuda/products.cuh, glue in lgd.kernels.cuda_products), their parameters
# in the order of LGD_ROWS_PARAMS, LGD_NORMS_PARAMS, LGD_FINALIZE_PARAMS and LGD_UPDATE_PARAMS.
ROWS_PARAMS = (
    ("Z", "T*"), ("y", "T*"), ("a", "T*"), ("diverged", "i64*"), ("clock", "i64*"), ("fault", "i32*"),
    ("parts", "f64*"), ("partial_a", "T*"), ("partial_neuron", "f64*"), ("n", "i32"), ("m", "i32"),
    ("configs", "i32"), ("rows_per_block", "i32"), ("blocks_per_config", "i32"), ("act", "i32"),
    ("act_param", "f64"), ("loss", "i32"), ("loss_param", "f64"), ("scale", "f64"), ("train_outer", "i32"),
    ("held_out", "i32"), ("log_risk_every_step", "i32"), ("steps", "i64"), ("record_every", "i64"),
    ("neuron_records", "i32"),
)
NORMS_PARAMS = (
    ("W", "T*"), ("grad", "T*"), ("diverged", "i64*"), ("norms", "f64*"), ("dm", "i32"),
    ("blocks_per_config", "i32"), ("per_block", "i32"),
)
FINALIZE_PARAMS = (
    ("a", "T*"), ("grad_a", "T*"), ("rules", "i64*"), ("rule_params", "f64*"), ("sharpness_last", "f64*"),
    ("diverged", "i64*"), ("clock", "i64*"), ("parts", "f64*"), ("test_parts", "f64*"), ("partial_a", "T*"),
    ("partial_neuron", "f64*"), ("norms", "f64*"), ("eta", "f64*"), ("moving", "i32*"), ("trace", "f64*"),
    ("trace_neuron", "f64*"), ("n", "i32"), ("m", "i32"), ("n_test", "i32"), ("configs", "i32"),
    ("blocks_per_config", "i32"), ("test_blocks", "i32"), ("norm_blocks", "i32"), ("train_outer", "i32"),
    ("risk_bound", "f64"), ("weight_bound", "f64"), ("log_risk_every_step", "i32"), ("steps", "i64"),
    ("record_every", "i64"), ("records", "i32"), ("neuron_records", "i32"),
)
UPDATE_PARAMS = (
    ("W", "T*"), ("a", "T*"), ("grad", "T*"), ("grad_a", "T*"), ("eta", "f64*"), ("moving", "i32*"),
    ("clock", "i64*"), ("dm", "i32"), ("m", "i32"), ("configs", "i32"), ("train_outer", "i32"),
)
# Every entry of lgd.cu (lgd_run_<suffix>, its plain build and the products path's), by name: its parameters.
ENTRY_PARAMS = {ENTRY: PARAMS, PLAIN_ENTRY: PARAMS, "lgd_rows": ROWS_PARAMS, "lgd_norms": NORMS_PARAMS,
                "lgd_finalize": FINALIZE_PARAMS, "lgd_update": UPDATE_PARAMS}
SUFFIX = {"float64": "f64", "float32": "f32"}
# The trace fields the kernel writes, in the order of its `trace` array (TRACE_* in lgd.cu); the per-neuron
# margins go to their own array. A Trace field not named here is left as the runner found it.
KERNEL_FIELDS = ("risk", "log_risk", "accuracy", "grad_norm", "weight_norm", "margin", "test_risk", "test_accuracy",
                 "eta")
# The trajectory fields: written in the run's dtype (weights, outer) or float64 (projections), slots of
# record_steps(steps, weights_every).
TRAJECTORY_FIELDS = ("weights", "outer", "projections")
# The log growth of the tangent vectors (Lyapunov exponents) at record steps, (C, records, k) float64.
LYAPUNOV_FIELD = "lyapunov_sum"
# Trace fields the driver fills for this runner (it measures the sharpness between chunks).
DRIVER_FIELDS = ("sharpness",)
# The stepsize rules lgd.cu has a case for (lgd.stepsize; cuda_codes.RULES has every rule): a run with any
# other is refused before it starts. inverse_sharpness reads each configuration's latest sharpness from the
# kernels' `sharpness_last` array, which the runner refreshes before every chunk.
KERNEL_RULES = ("constant", "warmup", "step_decay", "cosine", "adaptive", "polyak", "normalized",
                "inverse_sharpness")
# Values each thread keeps for the block reductions (STATS in lgd.cu).
STATS = 5
# The largest tile of samples a block works on at once (rows of phi and phi' in shared memory).
TILE_ROWS_MAX = 256


def reduce_scratch_bytes(threads: int) -> int:
    """Bytes of shared scratch a block reduction takes for a block of `threads` threads
    (lgd::reduce_scratch doubles)."""
    return 8 * STATS * (threads + 32)


@dataclass(frozen=True)
class Layout:
    """Where the kernel keeps what (True: dynamic shared memory, else global memory / L2) and the tile size."""

    tile_rows: int
    x_shared: bool
    w_shared: bool
    g_shared: bool
    shared_bytes: int


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 16) * 16


def neuron_groups(threads: int, m: int) -> int:
    """Groups of threads that share a neuron's sums over samples (lgd::neuron_groups)."""
    return threads // m if threads >= m else 1


def _fixed_shared(m: int, itemsize: int, threads: int) -> int:
    """Shared bytes of a block whatever the layout: the reduction scratch, the neuron margins, a, grad_a and
    the thread groups' parts of grad_a and of the margins."""
    parts = neuron_groups(threads, m) * m
    return (_aligned(reduce_scratch_bytes(threads)) + _aligned(8 * m) + _aligned(8 * parts) + 2 * _aligned(itemsize * m)
            + _aligned(itemsize * parts))


def _tile_shared(rows: int, m: int, itemsize: int) -> int:
    """Shared bytes of a tile of `rows` samples: phi and phi' (m + 1 columns) and the coefficients."""
    return 2 * _aligned(itemsize * rows * (m + 1)) + _aligned(itemsize * rows)


def minimum_shared(m: int, itemsize: int, threads: int, rows: int = 1) -> int:
    """The fewest bytes of shared memory a block needs for tiles of `rows` samples: X, W and grad_W in
    global memory."""
    return _fixed_shared(m, itemsize, threads) + _tile_shared(rows, m, itemsize)


def layout(n: int, d: int, m: int, itemsize: int, threads: int, budget: int) -> Layout:
    """What fits in `budget` bytes of shared memory for a block of `threads` threads, in order of benefit:
    the block's W^T and grad_W^T (d x m each, touched by every product), then X and y (n x d + n), then the
    largest tile of samples up to :data:`TILE_ROWS_MAX`; the layout of lgd.cu's `take` calls.

    It depends on the problem's sizes only, never on the number of configurations, so that a sweep and its
    single runs add in the same order. Raises ValueError when not even one row of a tile fits.
    """
    fixed = _fixed_shared(m, itemsize, threads)

    def tile(rows: int) -> int:
        return _tile_shared(rows, m, itemsize)

    if fixed + tile(1) > budget:
        raise ValueError(f"a network of width {m} needs {fixed + tile(1)} bytes of shared memory per block for "
                         f"one sample; this device has {budget}")
    used = fixed + tile(1)
    placed = {}
    for name, nbytes in (("w_shared", _aligned(itemsize * d * m)), ("g_shared", _aligned(itemsize * d * m)),
                         ("x_shared", _aligned(itemsize * n * d) + _aligned(itemsize * n))):
        placed[name] = used + nbytes <= budget
        used += nbytes if placed[name] else 0
    rows = max(1, min(n, TILE_ROWS_MAX))
    while rows > 1 and used - tile(1) + tile(rows) > budget:
        rows -= 1
    return Layout(tile_rows=rows, shared_bytes=used - tile(1) + tile(rows), **placed)


@functools.cache
def _known() -> dict[str, dict[str, int]]:
    return cuda_codes.codes()


def check_codes(activation, loss) -> None:
    """Raise ValueError unless the kernels have a formula for ``activation`` and ``loss``.

    A formula is known by the entry's code and name in cuda/codes.cuh: an entry the header does not
    list, or a code the header gives to another entry, would otherwise run a formula that is not its own;
    so would a subclass of the user's that keeps a catalog entry's name and code (kernels_have).
    """
    from lgd.backends import kernels_have

    for kind, entry in (("activation", activation), ("loss", loss)):
        known = _known()[kind]
        if known.get(entry.name) != entry.code or not kernels_have(entry):
            listed = ", ".join(f"{name} ({code})" for name, code in known.items())
            raise _no_formula(kind, entry, f"; they know {listed}")


def check_rules(rules) -> None:
    """Raise ValueError when a configuration's stepsize rule (codes of lgd.stepsize) has no case in lgd.cu."""
    names = {code: name for name, code in cuda_codes.codes()["rule"].items()}
    known = {cuda_codes.codes()["rule"][name] for name in KERNEL_RULES}
    for code in sorted(set(int(code) for code in np.asarray(rules).ravel()) - known):
        raise ValueError(f"the CUDA kernels have no stepsize rule {names.get(code, code)!r} (code {code}); they "
                         f"know {', '.join(KERNEL_RULES)}. Run it with compute='numba' or compute='numpy'.")


def check_fault(run, activation, loss) -> None:
    """Raise ValueError when a kernel of ``run`` met a code it has no formula for (and wrote NaN).

    Copies the fault flag to the host: call it once the host has waited for the device anyway (after the
    divergence flags of a chunk), never per step.
    """
    fault = int(to_host(run.fault)[0])
    for kind, entry in (("activation", activation), ("loss", loss)):
        if fault & cuda_codes.FAULTS[kind]:
            raise _no_formula(kind, entry, ": lgd.cu has no case for it and wrote NaN")


def _no_formula(kind: str, entry, detail: str) -> ValueError:
    return ValueError(f"the CUDA kernels have no formula for the {kind} {entry.spec!r} (code {entry.code}){detail}. "
                      "Run it on the numpy backend: compute='numpy'.")


def to_host(array) -> np.ndarray:
    """A numpy copy (or the array itself) of a cupy or numpy array."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


class ChunkRun:
    """The buffers of one batch of C configurations of one problem, as arrays of ``engine.xp``.

    X, y (and X_test, y_test) are the problem's data, W (C, m, d) and a (C, m) the iterates, rules (C,) int64
    and rule_params (C, 3) float64 the stepsize rules (lgd.stepsize), diverged (C,) int64, fault (1,) int32;
    the records: trace (len(KERNEL_FIELDS), C, records) and trace_neuron (C, neuron_records, m) float64,
    and the trajectories of ``shapes`` (TRAJECTORY_FIELDS: their shapes as the host trace has them), NaN until written.
    `directions` (P, m, d) are the projection directions, or None; `tangents` (V, b, log growth) the tangent
    vectors of Lyapunov exponents (float64, updated in place), or None. ``sharpness_last`` (C,) float64 is each
    configuration's latest measured sharpness (the inverse_sharpness rule's), NaN until the runner copies one in.
    """

    def __init__(self, engine, X, y, X_test, y_test, W, a, rules, rule_params, diverged, records: int,
                 neuron_records: int, shapes: dict | None = None, directions=None, tangents=None):
        xp = engine.xp
        self.engine = engine
        self.dtype = np.dtype(X.dtype)
        self.X, self.y = X, y
        dummy = xp.zeros(1, dtype=self.dtype)  # stands for an absent array (never read: its count is 0)
        self.X_test = dummy if X_test is None else X_test
        self.y_test = dummy if y_test is None else y_test
        self.n_test = 0 if X_test is None else int(X_test.shape[0])
        self.W, self.a = W, a
        self.rules, self.rule_params, self.diverged = rules, rule_params, diverged
        self.fault = xp.zeros(1, dtype=np.int32)  # bits of cuda_codes.FAULTS, see check_fault
        C, m, d = W.shape
        self.sharpness_last = xp.full(C, np.nan)
        n = X.shape[0]
        if d * m >= 2**31 or n * d >= 2**31:  # the kernel's per-configuration indices are 32-bit
            raise ValueError(f"problem too large for the CUDA kernels: n={n}, d={d}, m={m}")
        self.layout = layout(n, d, m, self.dtype.itemsize, engine.threads, engine.shared_budget)
        # Tangent vectors (Lyapunov exponents): V (C, k, m, d), b (C, k, m) and their log growth (C, k), float64.
        if tangents is None:
            tangents = (xp.zeros((C, 0, m, d)), xp.zeros((C, 0, m)), xp.zeros((C, 0)))
        self.tangents, self.tangents_a, self.log_growth = tangents
        k = self.tangents.shape[1]
        in_global = not (self.layout.w_shared and self.layout.g_shared)
        per_config = 4 * d * m + 2 * m if k else 2 * d * m if in_global else 0
        self.workspace = xp.zeros(max(1, C * per_config), dtype=self.dtype)
        self.row_space = xp.zeros(C * 3 * self.layout.tile_rows if k else 1)
        self.trace = xp.full((len(KERNEL_FIELDS), C, records), np.nan)
        self.trace_neuron = xp.full((C, neuron_records, m), np.nan)
        shapes = shapes or {}
        self.trajectories = {
            "weights": xp.full(shapes.get("weights", (C, 0, m, d)), np.nan, dtype=self.dtype),
            "outer": xp.full(shapes.get("outer", (C, 0, m)), np.nan, dtype=self.dtype),
            "projections": xp.full(shapes.get("projections", (C, 0, 0)), np.nan),
        }
        self.lyapunov = xp.full(shapes.get(LYAPUNOV_FIELD, (C, 0, k)), np.nan)
        # What the kernel gets for each: an array without entries is never written, a stand-in will do.
        self.passed = {name: array if array.size else xp.zeros(1, dtype=array.dtype)
                       for name, array in (*self.trajectories.items(), ("lyapunov", self.lyapunov),
                                           ("tangents", self.tangents), ("tangents_a", self.tangents_a),
                                           ("log_growth", self.log_growth))}
        self.directions = dummy if directions is None else directions


def entry_for(values: dict) -> str:
    """The lgd_run build a launch with these arguments (advance's, by parameter name) takes: PLAIN_ENTRY unless
    it has held-out data, trajectory or projection slots or tangent vectors, which only ENTRY computes."""
    full = (values["n_test"] > 0 or values["weight_records"] > 0 or values["outer_records"] > 0
            or values["n_tangents"] > 0)
    return ENTRY if full else PLAIN_ENTRY


def advance(run: ChunkRun, t_start: int, t_stop: int, steps: int, record_every: int, activation, loss,
            scale: float, train_outer: bool, bounds=(math.inf, math.inf), weights_every: int = 0,
            log_risk_every_step: bool = False) -> None:
    """Launch evaluations t_start..t_stop-1 of every configuration of ``run`` (one launch; the host does not
    wait for it). `bounds` are the (risk, weight norm) beyond which a run stops as diverged; the trajectory
    is recorded every `weights_every` steps (when run has trajectory slots); the log-risk is computed at
    every step when `log_risk_every_step` (a rule needs it), else at record steps."""
    check_codes(activation, loss)
    C, m, d = run.W.shape
    lay = run.layout
    trajectories = run.trajectories
    values = dict(
        X=run.X, y=run.y, X_test=run.X_test, y_test=run.y_test, W=run.W, a=run.a, rules=run.rules,
        rule_params=run.rule_params, sharpness_last=run.sharpness_last, diverged=run.diverged, fault=run.fault,
        workspace=run.workspace, trace=run.trace, trace_neuron=run.trace_neuron, directions=run.directions,
        trace_weights=run.passed["weights"], trace_outer=run.passed["outer"],
        trace_projections=run.passed["projections"], n=run.X.shape[0], d=d, m=m, n_test=run.n_test,
        act=activation.code, act_param=activation.param, loss=loss.code, loss_param=loss.param, scale=scale,
        train_outer=int(bool(train_outer)), risk_bound=bounds[0], weight_bound=bounds[1],
        log_risk_every_step=int(bool(log_risk_every_step)), t_start=t_start, t_stop=t_stop, steps=steps,
        record_every=record_every, weights_every=max(1, weights_every), configs=C, records=run.trace.shape[2],
        neuron_records=run.trace_neuron.shape[1],
        weight_records=max(trajectories["weights"].shape[1], trajectories["projections"].shape[1]),
        outer_records=trajectories["outer"].shape[1], n_directions=trajectories["projections"].shape[2],
        tangents=run.passed["tangents"], tangents_a=run.passed["tangents_a"], log_growth=run.passed["log_growth"],
        trace_lyapunov=run.passed["lyapunov"], row_space=run.row_space, n_tangents=run.tangents.shape[1],
        lyapunov_records=run.lyapunov.shape[1],
        tile_rows=lay.tile_rows, x_shared=int(lay.x_shared), w_shared=int(lay.w_shared),
        g_shared=int(lay.g_shared))
    args = [values[name] for name, _ in PARAMS]
    run.engine.launch(SUFFIX[run.dtype.name], C, run.engine.threads, lay.shared_bytes, args, entry=entry_for(values))


