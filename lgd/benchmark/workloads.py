"""The benchmark workloads, their data and initial weights, and the machine's roofline for each.

A workload is one GD problem that every implementation (lgd's backends and the peers) runs identically:
leaky softplus (c = 0.5), logistic loss, mean-field two-layer net (scale 1/m) with alternating outer
weights a = (+1, -1, +1, ...), W_0 ~ N(0, 1) drawn by lgd's own seeding (``init_weights``), constant
stepsize, risk recorded at every step t = 0..T. Data: ``lgd.data.separable(n, d, margin=0.1, seed=0)``,
Gaussian points scaled into the unit ball (||x_i|| <= 1) and labelled by a random unit direction with
margin 0.1.

The roofline (``measure_roofline``) is a model, not a proof: per (configuration-)step a workload needs
the two products X W^T and G^T X (2 n d m flops each) and one exp plus one log1p per entry of the n x m
block Z (softplus and sigmoid of Z share one exp(-|z|)). The products are timed as numpy matmuls of
exactly those shapes (for sweeps, of all configurations stacked into one product, which is the best
shape), the transcendentals as numpy exp and log1p over an n x m block. best steps/s = 1 / (product
time + transcendental time). A kernel with a faster exp than numpy's can beat it. ``roofline_run``
does the work of a whole run of T steps, so that the bench times it beside each timed round: T steps,
then the forward product and the transcendentals of the risk at T, which every implementation records
(a run keeps the risks of t = 0..T). Beside it, the machine's GEMM peak (``gemm_peak_gflops``: a large
square numpy matmul) gives the least time the two products of a step could take at any shape.

Nothing here imports torch, jax or numba.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

ACTIVATION = "leaky_softplus(0.5)"
# The same net with an activation that costs no transcendental: lgd's breakdown of a step (where the time
# goes) times its backends on it too, and the difference is the exp/log1p/division work.
CHEAP_ACTIVATION = "leaky_relu(0.5)"
SLOPE = 0.5
LOSS = "logistic"
MARGIN = 0.1
# Agreement run before any timing: this many steps, final risk within these relative tolerances of lgd's
# numpy oracle at the same dtype.
CHECK_STEPS = 20
CHECK_RTOL = {"float64": 1e-8, "float32": 1e-4}
# Fewest steps of a scaled workload (see Workload.scaled).
MIN_STEPS = 20


@dataclass(frozen=True)
class Workload:
    """One benchmark problem: n points in R^d, width m, ``steps`` GD steps at each of ``stepsizes``."""

    name: str
    n: int
    d: int
    m: int
    steps: int
    stepsizes: tuple
    device: bool = False  # needs a GPU

    @property
    def configs(self) -> int:
        return len(self.stepsizes)

    @property
    def sweep(self) -> bool:
        return self.configs > 1

    @property
    def flops_per_step(self) -> float:
        """Flops of the two products of one configuration-step: X W^T and G^T X, 2 n d m each."""
        return 4.0 * self.n * self.d * self.m

    def scaled(self, steps_scale: float) -> "Workload":
        """The same problem with ``steps`` scaled, for quick runs: at least MIN_STEPS (or all of them).

        The floor keeps a run's one-off costs (checking the data, initial weights, a transposed copy of
        X for the BLAS path) from passing for throughput on a workload of few, long steps (L).
        """
        return replace(self, steps=max(min(self.steps, MIN_STEPS), int(round(self.steps * steps_scale))))

    def shrunk(self) -> "Workload":
        """A small stand-in (same code paths, a few steps) used when benchmarking is disabled (CI)."""
        stepsizes = self.stepsizes[:: max(1, self.configs // 4)]
        return replace(self, n=min(self.n, 64), d=min(self.d, 32), m=min(self.m, 16), steps=3,
                       stepsizes=stepsizes)


STEPSIZE = 10.0
SWEEP_STEPSIZES = tuple(np.logspace(-1, 3, 64).tolist())

WORKLOADS = {
    "S": Workload("S", n=256, d=16, m=64, steps=20_000, stepsizes=(STEPSIZE,)),
    "M": Workload("M", n=360, d=64, m=256, steps=5_000, stepsizes=(STEPSIZE,)),
    "L": Workload("L", n=2000, d=3072, m=256, steps=50, stepsizes=(STEPSIZE,)),
    "SWEEP": Workload("SWEEP", n=256, d=16, m=64, steps=5_000, stepsizes=SWEEP_STEPSIZES),
    "SWEEP-1024": Workload("SWEEP-1024", n=256, d=16, m=64, steps=5_000,
                           stepsizes=tuple(np.logspace(-1, 3, 1024).tolist()), device=True),
    "LARGE": Workload("LARGE", n=20_000, d=3072, m=1024, steps=50, stepsizes=(STEPSIZE,), device=True),
}
DTYPES = ("float64", "float32")  # every workload runs in each


def problem(workload: Workload, dtype: str):
    """(X, y, W0, a, etas) of a workload: data, W_0 (C, m, d) per configuration, outer weights, stepsizes.

    W_0 is drawn exactly as ``lgd.gd(..., seed=0)`` draws it (float64 N(0, 1), then cast), so peers start
    where lgd starts.
    """
    import lgd

    X, y = lgd.data.separable(n=workload.n, d=workload.d, margin=MARGIN, seed=0)
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((workload.m, workload.d))
    a = model(workload).outer_weights(rng)
    W0 = np.repeat(W0[None], workload.configs, axis=0)
    return (X.astype(dtype), y.astype(dtype), W0.astype(dtype), a.astype(dtype),
            np.asarray(workload.stepsizes, dtype=np.float64))


def model(workload: Workload, activation: str = ACTIVATION):
    import lgd

    return lgd.TwoLayerNet(workload.m, activation=activation, scaling="mean_field", outer="alternating")


def oracle_final_risk(workload: Workload, dtype: str, steps: int = CHECK_STEPS) -> np.ndarray:
    """Final risk of each configuration after ``steps`` steps of lgd's numpy oracle (the reference)."""
    import lgd

    X, y = lgd.data.separable(n=workload.n, d=workload.d, margin=MARGIN, seed=0)
    result = lgd.sweep(X, y, model(workload), LOSS, stepsizes=workload.stepsizes, steps=steps,
                       record=lgd.Record(neuron_margins=False),
                       compute=lgd.Compute(backend="numpy", dtype=dtype, progress=False))
    return result.risk[:, -1]


def _best_time(fn, repeat: int, number: int) -> float:
    fn()
    best = np.inf
    for _ in range(repeat):
        tic = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - tic) / number)
    return best


def _roofline_parts(workload: Workload, dtype: str):
    """(forward, backward, transcendentals): the numpy work of one step's two products for all configurations
    (stacked into one product each: X W^T, then G^T X) and of one configuration-step's transcendentals (an
    n x m block)."""
    rng = np.random.default_rng(42)
    n, d, m, configs = workload.n, workload.d, workload.m, workload.configs
    X = rng.standard_normal((n, d)).astype(dtype)
    W = rng.standard_normal((configs * m, d)).astype(dtype)  # all configurations stacked: the best shape
    GT = rng.standard_normal((configs * m, n)).astype(dtype)
    Z = rng.standard_normal((n, m)).astype(dtype)
    out_z, out_g = np.empty((n, configs * m), dtype), np.empty((configs * m, d), dtype)
    scratch = np.empty_like(Z)

    def forward():
        np.matmul(X, W.T, out=out_z)

    def backward():
        np.matmul(GT, X, out=out_g)

    def transcendentals():
        np.exp(Z, out=scratch)
        np.log1p(scratch, out=scratch)

    return forward, backward, transcendentals


def measure_roofline(workload: Workload, dtype: str, budget: float = 0.3) -> dict:
    """Timed numpy products and transcendentals of one configuration-step of ``workload``; see the module doc.

    >>> r = measure_roofline(WORKLOADS["S"].shrunk(), "float64", budget=0.01)
    >>> r["steps_per_s"] > 0 and r["product_gflops"] > 0
    True
    """
    forward, backward, transcendentals = _roofline_parts(workload, dtype)

    def products():
        forward()
        backward()

    def reps(fn):
        once = _best_time(fn, 1, 1)
        number = max(1, int(budget / 5 / max(once, 1e-7)))
        return _best_time(fn, 5, number)

    product_s = reps(products) / workload.configs
    transcendental_s = reps(transcendentals)
    n, m = workload.n, workload.m
    peak = gemm_peak_gflops(dtype)
    return {"product_s": product_s, "transcendental_s": transcendental_s, "gemm_peak_gflops": peak,
            "product_at_peak_s": workload.flops_per_step / (peak * 1e9),
            "product_gflops": workload.flops_per_step / product_s / 1e9,
            "transcendental_ns_per_entry": transcendental_s / (n * m) * 1e9,
            "steps_per_s": 1.0 / (product_s + transcendental_s)}


def roofline_run(workload: Workload, dtype: str):
    """A function of ``steps`` doing the roofline's work of a run of that many steps of every configuration,
    for timing right beside it: per step the stacked products once and the transcendentals once per
    configuration, then for the risk at the last step the forward product and the transcendentals again
    (a run of T steps returns the risks of t = 0..T: T + 1 forward products, T backward; at L's 20 steps
    the last forward product is about 2% of the call). Timed beside the run because, on a shared machine,
    a run and a roofline timed minutes apart see different neighbours, while adjacent ones mostly see the
    same.

    >>> roofline_run(WORKLOADS["S"].shrunk(), "float64")(2)
    """
    forward, backward, transcendentals = _roofline_parts(workload, dtype)

    def evaluate() -> None:
        forward()
        for _ in range(workload.configs):
            transcendentals()

    def run(steps: int) -> None:
        for _ in range(steps):
            evaluate()
            backward()
        evaluate()

    return run


GEMM_PEAK_SIZE = 1024
_gemm_peaks = {}


def gemm_peak_gflops(dtype: str) -> float:
    """GFLOP/s of a GEMM_PEAK_SIZE-square numpy matmul in ``dtype`` with all of BLAS's threads, best of twelve:
    the machine's practical peak for matrix products (measured once per process and dtype)."""
    if dtype not in _gemm_peaks:
        rng = np.random.default_rng(7)
        a, b = (rng.standard_normal((GEMM_PEAK_SIZE, GEMM_PEAK_SIZE)).astype(dtype) for _ in range(2))
        out = np.empty_like(a)
        seconds = _best_time(lambda: np.matmul(a, b, out=out), 12, 1)
        _gemm_peaks[dtype] = 2 * GEMM_PEAK_SIZE ** 3 / seconds / 1e9
    return _gemm_peaks[dtype]
