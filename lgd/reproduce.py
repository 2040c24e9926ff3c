"""``lgd reproduce NAME``: the figures of the literature lgd serves, each with a JSON summary of its numbers.

What lives here: one function per experiment (:func:`fig4`, :func:`xor`, :func:`digits`,
:func:`acceleration`, :func:`eos`, :func:`balancing`; :func:`regimes`, :func:`orbits`, :func:`chaos` for
GD as a dynamical system; :func:`adaptive` for stepsize rules; and :func:`mnist`, :func:`cifar10` on local
files), each returning a
:class:`Reproduction` -- the summary (plain JSON numbers read off the runs by :mod:`lgd.analysis` and
:mod:`lgd.dynamics`) and a function drawing the figure -- plus the command-line plumbing
(:func:`configure`, :func:`main`). ``quick=True`` runs a reduced version (fewer steps and points)
that the tests assert on; the full versions take minutes on two cores. An experiment whose runs were
interrupted (Ctrl-C) raises KeyboardInterrupt rather than summarise part of them; the summaries are
written as strict JSON (NaN and Inf as null, :func:`lgd._json.to_json`).

What does not: the formulas (:mod:`lgd.models`, :mod:`lgd.hessian`), the phase analysis
(:mod:`lgd.analysis`) and the dynamics tools (:mod:`lgd.dynamics`). Nothing heavy is imported at module
level: the parser is built on every ``lgd`` call.

References: Cai, Wu, Mei, Lindsey, Bartlett (NeurIPS 2024) for fig4, xor and cifar10; Wu, Bartlett,
Telgarsky, Yu (COLT 2024) for digits, mnist and acceleration; Cohen et al. (ICLR 2021) for eos;
Wang, Chen, Zhao, Tao (ICLR 2022) for balancing; Tao and Wang's notes, Kong and Tao (NeurIPS 2020) for
regimes, orbits and chaos (science notes, section 6); Zhang, Wu, Lin, Bartlett (2025) for adaptive.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

NAMES = ("fig4", "xor", "digits", "acceleration", "eos", "balancing", "regimes", "orbits", "chaos", "adaptive", "mnist",
         "cifar10")


@dataclass
class Reproduction:
    """The outcome of one experiment: ``summary`` (JSON-ready) and ``draw()`` returning a matplotlib figure."""

    name: str
    summary: dict
    draw: Callable


def _pyplot():
    from .plot import _pyplot as pyplot

    return pyplot()


def _finished(result):
    """``result`` (a Run or Sweep) when none of its runs was interrupted; KeyboardInterrupt otherwise.

    The driver turns Ctrl-C into runs with status 'interrupted'; a figure of the literature drawn from
    part of its runs would be wrong, so the experiment stops as if the signal had reached it.
    """
    status = [result.status] if isinstance(result.status, str) else result.status
    if "interrupted" in status:
        raise KeyboardInterrupt
    return result


def _run_summary(run) -> dict:
    """The per-run numbers every experiment reports (lgd.analysis), as plain JSON values."""
    from .analysis import analyze

    result = analyze(run)
    summary = {"stepsize": run.stepsize, "status": run.status, "final_risk": run.final_risk,
               "final_log_risk": run.final_log_risk,
               "final_accuracy": float(run.accuracy[-1]) if run.accuracy.size else math.nan,
               "final_normalized_margin": float(run.normalized_margin[-1]) if run.risk.size else math.nan,
               "phase": asdict(result.phase), "edge_of_stability": asdict(result.edge_of_stability),
               "stable": asdict(result.stable), "margin": asdict(result.margin),
               "steps_per_second": run.steps_per_second}
    if result.sharpness is not None:
        summary["sharpness"] = asdict(result.sharpness)
    return summary


def _trace_panels(axes, runs, title: str):
    """Risk (log-log, dotted line at the transition), eta * t * risk and normalized margin for each run."""
    plt = _pyplot()
    ax_risk, ax_rate, ax_margin = axes
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(runs), 1)))
    for run, color in zip(runs, colors):
        t = run.step.astype(np.float64)
        shown = (t > 0) & (run.risk > 0)
        label = f"eta = {run.stepsize:g}"
        ax_risk.loglog(t[shown], run.risk[shown], color=color, lw=1.1, label=label)
        s = run.phase.transition_step
        if s:
            ax_risk.axvline(s, color=color, ls=":", lw=0.8)
        ax_rate.loglog(t[shown], run.stepsize * t[shown] * run.risk[shown], color=color, lw=1.1, label=label)
        ax_margin.semilogx(t[t > 0], run.normalized_margin[t > 0], color=color, lw=1.1, label=label)
    ax_risk.set(xlabel="step t", ylabel="risk L(W_t)", title=f"{title}: risk")
    ax_rate.set(xlabel="step t", ylabel="eta t L(W_t)", title="stable-phase rate")
    ax_margin.set(xlabel="step t", ylabel="min_i y_i f(x_i) / ||W||", title="normalized margin")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    ax_risk.legend(fontsize=8)


def _runs_figure(groups, suptitle: str):
    """One row of :func:`_trace_panels` per (title, runs) group."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4 * len(groups)), constrained_layout=True, squeeze=False)
    for row, (title, runs) in zip(axes, groups):
        _trace_panels(row, runs, title)
    fig.suptitle(suptitle)
    return fig


# ---------------------------------------------------------------------------------------------- experiments


def fig4(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Cai et al. Fig. 4: margin improvement with every neuron's margin negative.

    Five points in R^3 (max-margin direction (1, 0, 0), margin 0.05), two neurons with outer weights
    +1 and -1 under the 1/m scaling (so +1/2 and -1/2), phi = leaky softplus c = 0.5, logistic loss,
    W_0 = 0, eta = 3. Expected: each neuron's margin min_i y_i a_j phi(w_j . x_i) stays negative while
    the network margin min_i y_i f(x_i) turns positive: the network separates data that neither neuron does.
    """
    import lgd

    X, y = lgd.data.fig4()
    net = lgd.TwoLayerNet(2, activation="leaky_softplus(0.5)", scaling="mean_field", outer=[1.0, -1.0])
    run = _finished(lgd.gd(X, y, net, "logistic", stepsize=3.0, steps=3000 if quick else 20000, init="zeros",
                           record=lgd.Record(neuron_margins=True), compute=lgd.Compute(backend, progress=progress)))
    positive = np.flatnonzero(run.margin > 0)
    summary = {"experiment": "fig4", "stepsize": 3.0, "steps": run.steps, "backend": run.meta["backend"],
               "final_network_margin": float(run.margin[-1]),
               "final_normalized_margin": float(run.normalized_margin[-1]),
               "first_step_network_margin_positive": int(run.step[positive[0]]) if positive.size else None,
               "final_neuron_margins": run.neuron_margins[-1].tolist(),
               "largest_neuron_margin_after_step_0": float(run.neuron_margins[1:].max()),
               "final_accuracy": float(run.accuracy[-1]), "run": _run_summary(run)}

    def draw():
        plt = _pyplot()
        fig, (ax_margin, ax_risk) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        t = run.step[1:]
        ax_margin.semilogx(t, run.margin[1:], color="k", lw=1.5, label="network margin min_i y_i f(x_i)")
        for j, style in enumerate(("--", ":")):
            ax_margin.semilogx(t, run.neuron_margins[1:, j] * net.scale, ls=style, lw=1.2,
                               label=f"neuron {j + 1}: s min_i y_i a_j phi(w_j.x_i)")
        ax_margin.axhline(0, color="grey", lw=0.8)
        ax_margin.set(xlabel="step t", ylabel="margin", title="Cai et al. Fig. 4: neurons negative, network positive")
        ax_margin.legend(fontsize=8)
        ax_risk.loglog(t, run.risk[1:], color="C3")
        ax_risk.set(xlabel="step t", ylabel="risk", title="risk (eta = 3, W_0 = 0)")
        for ax in (ax_margin, ax_risk):
            ax.grid(True, alpha=0.3)
        return fig

    return Reproduction("fig4", summary, draw)


def xor(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Cai et al. Fig. 2 (XOR): risk, eta * t * risk and normalized margin for a small and two large stepsizes.

    Noisy XOR (n = 100), two-layer net, 20 neurons, leaky softplus c = 0.5, 1/m scaling, logistic loss.
    Expected: the small stepsize is monotone and slow; the large ones oscillate (EoS), cross the
    transition min(1/eta, log 2 / n), then decrease monotonically with eta * t * risk levelling off
    and the normalized margin growing.
    """
    import lgd

    X, y = lgd.data.xor(n=40 if quick else 100)
    net = lgd.TwoLayerNet(10 if quick else 20, activation="leaky_softplus(0.5)", scaling="mean_field")
    stepsizes = (30.0, 1000.0, 3000.0)
    grid = _finished(lgd.sweep(X, y, net, "logistic", stepsizes=stepsizes, steps=4000 if quick else 20000,
                               compute=lgd.Compute(backend, progress=progress)))
    runs = list(grid)
    summary = {"experiment": "xor", "n": X.shape[0], "width": net.width, "steps": grid.steps,
               "backend": grid.meta["backend"], "runs": [_run_summary(run) for run in runs]}
    return Reproduction("xor", summary, lambda: _runs_figure([("XOR, two-layer leaky softplus", runs)],
                                                             "Cai et al. Fig. 2 (XOR)"))


def _two_class(name: str, X, y, steps: int, linear_stepsizes, net_stepsizes, width: int, backend, progress,
               X_test=None, y_test=None) -> Reproduction:
    """Logistic regression and a two-layer net (leaky softplus, 1/m) at a small and a large stepsize."""
    import lgd

    compute = lgd.Compute(backend, progress=progress)
    linear = _finished(lgd.sweep(X, y, lgd.Linear(), "logistic", stepsizes=linear_stepsizes, steps=steps,
                                 init="zeros", X_test=X_test, y_test=y_test, compute=compute))
    net = lgd.TwoLayerNet(width, activation="leaky_softplus(0.5)", scaling="mean_field")
    network = _finished(lgd.sweep(X, y, net, "logistic", stepsizes=net_stepsizes, steps=steps, X_test=X_test,
                                  y_test=y_test, compute=compute))
    summary = {"experiment": name, "n": X.shape[0], "d": X.shape[1], "steps": steps,
               "backend": linear.meta["backend"],
               "logistic_regression": [_run_summary(run) for run in linear],
               "two_layer": {"model": net.describe(), "runs": [_run_summary(run) for run in network]}}
    return Reproduction(name, summary, lambda: _runs_figure(
        [("logistic regression", list(linear)), (f"two-layer, {width} neurons", list(network))],
        f"{name}: small vs large stepsize"))


def digits(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Wu et al. on real data: scikit-learn's 8x8 digits 0 vs 8 (n = 352, ||x|| <= 1), small vs large stepsizes.

    Logistic regression from w_0 = 0 at eta = 1 and 1000, and a two-layer net at eta = 10 and 3000.
    Expected: the large stepsizes reach far smaller risk within the budget; the two-layer net at eta = 3000
    oscillates first, logistic regression at eta = 1000 does not (the data are separable with a large margin:
    it is in the stable phase from the first step).
    """
    import lgd

    X, y = lgd.data.digits(0, 8, n=120 if quick else None)
    return _two_class("digits", X, y, 1000 if quick else 5000, (1.0, 1000.0), (10.0, 3000.0), 20, backend, progress)


def mnist(path, quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Wu et al.: 1,000 MNIST digits 0 vs 8 read from the IDX files under ``path``; as :func:`digits`."""
    import lgd

    X, y = lgd.data.mnist(path, digits=(0, 8), n=200 if quick else 1000)
    return _two_class("mnist", X, y, 1000 if quick else 5000, (1.0, 1000.0), (10.0, 3000.0), 20, backend, progress)


def cifar10(path, quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Cai et al. Fig. 2 (CIFAR-10): airplane vs automobile read from the pickles under ``path``; as :func:`digits`."""
    import lgd

    X, y = lgd.data.cifar10(path, n=200 if quick else 1000)
    return _two_class("cifar10", X, y, 1000 if quick else 5000, (1.0, 1000.0), (10.0, 3000.0), 20, backend,
                      progress)


def acceleration(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Wu et al.: risk after T steps against the stepsize, logistic regression on their toy set from w_0 = 0.

    Stepsizes log-spaced over 0.1 .. 10^4; budgets T = 100, 1000, 10000 (quick: 100, 300, 1000 and
    stepsizes up to 10^3). Expected: the best stepsize among the runs whose risk never rose is stuck
    at risk ~ 1/T (slope -1 against T), while large stepsizes (EoS first) reach risks smaller by orders
    of magnitude.
    """
    import lgd
    from .analysis import acceleration_curve

    X, y = lgd.data.wu_toy()
    stepsizes = np.logspace(-1, 3, 9) if quick else np.logspace(-1, 4, 16)
    budgets = (100, 300, 1000) if quick else (100, 1000, 10000)
    grid = _finished(lgd.sweep(X, y, lgd.Linear(), "logistic", stepsizes=stepsizes, steps=budgets[-1],
                               init="zeros", compute=lgd.Compute(backend, progress=progress)))
    curves = [acceleration_curve(grid, T) for T in budgets]
    log_budgets = np.log(budgets)
    monotone_slope = float(np.polyfit(log_budgets, [c.best_monotone_log_risk for c in curves], 1)[0])
    summary = {"experiment": "acceleration", "data": "wu_toy", "backend": grid.meta["backend"],
               "stepsizes": stepsizes.tolist(),
               "budgets": [{"steps": c.steps, "risk": c.risk.tolist(), "log_risk": c.log_risk.tolist(),
                            "monotone": c.monotone.tolist(), "best_stepsize": c.best_stepsize,
                            "best_risk": c.best_risk, "best_log_risk": c.best_log_risk,
                            "best_monotone_stepsize": c.best_monotone_stepsize,
                            "best_monotone_risk": c.best_monotone_risk,
                            "smallest_stepsize_risk": c.smallest_stepsize_risk} for c in curves],
               "best_monotone_risk_slope_in_T": monotone_slope,
               "largest_monotone_stepsize": float(stepsizes[curves[-1].monotone][-1])}

    def draw():
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for curve, color in zip(curves, plt.cm.viridis(np.linspace(0, 0.85, len(curves)))):
            ax.loglog(curve.stepsizes, curve.risk, "o-", color=color, ms=4, label=f"T = {curve.steps}")
            ax.loglog(curve.stepsizes[~curve.monotone], curve.risk[~curve.monotone], "o", color=color, ms=8,
                      mfc="none")
        ax.set(xlabel="stepsize eta", ylabel="risk L(w_T)",
               title="Wu et al. toy set: risk after T steps (open circles: non-monotone runs)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        return fig

    return Reproduction("acceleration", summary, draw)


def eos(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Cohen et al.: progressive sharpening and the edge of stability, sharpness against 2/eta.

    Squared loss on noisy XOR (n = 200, targets +-1), tanh net with 32 neurons, 1/sqrt(m) scaling,
    both layers trained, W_0 ~ N(0, 0.5^2); sharpness (top Hessian eigenvalue, exact HVPs + Lanczos)
    every 100-200 steps at eta = 2, 5, 6.5. Expected: at eta = 2 the sharpness rises throughout
    (progressive sharpening) while 2/eta = 1 stays out of reach; at eta = 5 and 6.5 it rises to 2/eta
    (0.4, 0.31) and hovers there while the risk keeps decreasing non-monotonically.
    """
    import lgd

    X, y = lgd.data.xor(n=200, noise=0.2)
    net = lgd.TwoLayerNet(32, activation="tanh", scaling="ntk", outer="random", train_outer=True)
    steps, every = (2000, 100) if quick else (8000, 200)
    grid = _finished(lgd.sweep(X, y, net, "squared", stepsizes=(2.0, 5.0, 6.5), steps=steps, init_scale=0.5,
                               record=lgd.Record(sharpness_every=every),
                               compute=lgd.Compute(backend, progress=progress)))
    runs = list(grid)
    summary = {"experiment": "eos", "backend": grid.meta["backend"], "steps": steps, "sharpness_every": every,
               "sharpness_seconds": grid.meta["sharpness_seconds"], "runs": [_run_summary(run) for run in runs]}

    def draw():
        plt = _pyplot()
        fig, (ax_sharp, ax_risk) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
        for run, color in zip(runs, ("C0", "C1", "C2")):
            ax_sharp.plot(run.sharpness_step, run.sharpness[:, 0], "o-", ms=3, color=color,
                          label=f"eta = {run.stepsize:g}")
            ax_sharp.axhline(run.sharpness_limit, color=color, ls="--", lw=1)
            ax_risk.plot(run.step, run.risk, color=color, lw=1, label=f"eta = {run.stepsize:g}")
        ax_sharp.set(xlabel="step t", ylabel="top Hessian eigenvalue", title="sharpness (dashed: 2/eta)")
        ax_risk.set(xlabel="step t", ylabel="risk (squared loss)", title="risk", yscale="log")
        for ax in (ax_sharp, ax_risk):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Edge of stability: tanh net, both layers trained, squared loss on XOR")
        return fig

    return Reproduction("eos", summary, draw)


def balancing(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Wang et al.: GD on (1/2)(1 - x y)^2 from (x0, y0) = (9, 1); larger stepsizes end more balanced.

    The model is ``TwoLayerNet(1, 'identity', scaling=1, outer=[y0], train_outer=True)`` on X = [[1]],
    target 1, squared loss, W_0 = [[x0]]. At a minimum x y = 1 the sharpness is x^2 + y^2, so a
    limit that GD can reach stably satisfies x^2 + y^2 <= 2/eta, i.e. (x - y)^2 <= 2/eta - 2: larger
    stepsizes force more balanced limits. Stepsizes from 0.02 up to 4/(x0^2 + y0^2 + 8) and beyond.
    """
    import lgd

    x0, y0 = 9.0, 1.0
    reference = 4.0 / (x0 * x0 + y0 * y0 + 8.0)
    stepsizes = np.round(np.linspace(0.02, 1.15 * reference, 6 if quick else 13), 5)
    net = lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[y0], train_outer=True)
    grid = _finished(lgd.sweep(np.array([[1.0]]), np.array([1.0]), net, "squared", stepsizes=stepsizes,
                               steps=1000 if quick else 3000, init=[[x0]],
                               compute=lgd.Compute(backend, progress=progress)))
    x, y = grid.weights.reshape(-1), grid.outer_weights.reshape(-1)
    converged = np.array([s == "completed" for s in grid.status]) & (np.abs(x * y - 1) < 1e-6)
    gap = np.where(converged, np.abs(x - y), np.nan)
    bound = np.sqrt(np.maximum(2.0 / stepsizes - 2.0, 0.0))
    below = stepsizes < 0.85 * reference
    summary = {"experiment": "balancing", "x0": x0, "y0": y0, "reference_stepsize": reference,
               "backend": grid.meta["backend"], "stepsizes": stepsizes.tolist(), "status": list(grid.status),
               "final_x": x.tolist(), "final_y": y.tolist(), "final_gap": gap.tolist(), "gap_bound": bound.tolist(),
               "gap_decreasing_below_0.85_reference": bool(np.all(np.diff(gap[below]) < 0)),
               "every_converged_gap_within_bound": bool(np.all(gap[converged] <= bound[converged] + 1e-9)),
               "initial_gap": abs(x0 - y0)}

    def draw():
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        ax.plot(stepsizes, gap, "o-", label="|x_T - y_T| (converged runs)")
        ax.plot(stepsizes, bound, "k--", lw=1, label="stability bound sqrt(2/eta - 2)")
        ax.axvline(reference, color="grey", ls=":", label="4 / (x0^2 + y0^2 + 8)")
        ax.set(xlabel="stepsize eta", ylabel="final imbalance |x - y|",
               title="Wang et al.: (1/2)(1 - xy)^2 from (9, 1)", ylim=(0, 10))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        return fig

    return Reproduction("balancing", summary, draw)


def _slope(x, y) -> float:
    """Least-squares slope of log y against log x (NaN without two positive points)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def regimes(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """The three regimes of the stepsize h on f(w) = w^2 / 2 (smoothness L = 1; science notes, section 6).

    ``lgd.Linear()`` on X = [[1]], y = 0, squared loss, w_0 = 1: GD is w_k = (1 - h)^k. h < 1/L moves
    monotonically, 1/L < h < 2/L flips sign and converges, h > 2/L diverges; the largest Lyapunov exponent
    (``Record(lyapunov=1)``) is log|1 - h|. Then the distance of GD to gradient flow and to the first-order
    modified flow (:func:`lgd.dynamics.compare_flows`) over the time t <= 1 (at least 4 steps), against h:
    O(h) and O(h^2) for small h.
    """
    import lgd
    from .dynamics import compare_flows, lyapunov_window

    X, y = np.array([[1.0]]), np.array([0.0])
    stepsizes = np.array([0.1, 0.5, 0.9, 1.1, 1.5, 1.9, 2.1, 2.5])
    steps = 40
    compute = lgd.Compute(backend, progress=progress)
    grid = _finished(lgd.sweep(X, y, lgd.Linear(), "squared", stepsizes=stepsizes, steps=steps, init=np.ones(1),
                               record=lgd.Record(every=1, weights=1, lyapunov=1), compute=compute,
                               divergence=float("inf")))
    w = grid.trajectory[:, :, 0]
    runs = []
    for i, h in enumerate(stepsizes):
        flips = int(np.sum(np.sign(w[i, 1:]) != np.sign(w[i, :-1])))
        shrinking = bool(np.all(np.abs(w[i, 1:]) < np.abs(w[i, :-1])))
        regime = "diverges" if not shrinking else ("oscillates" if flips else "smooth")
        theory = "smooth" if h < 1 else ("oscillates" if h < 2 else "diverges")
        runs.append({"stepsize": float(h), "regime": regime, "theory": theory, "sign_flips": flips,
                     "risk_decreasing": bool(np.all(np.diff(grid.risk[i]) < 0)),
                     "final_abs_w": float(abs(w[i, -1])), "lyapunov": float(lyapunov_window(grid[i], 0)[0]),
                     "log_abs_1_minus_h": float(np.log(abs(1 - h)))})
    flow_stepsizes = np.logspace(-2.5, np.log10(1.9), 10 if quick else 24)
    distances = []
    for h in flow_stepsizes:
        run = _finished(lgd.gd(X, y, lgd.Linear(), "squared", stepsize=float(h), steps=max(4, int(math.ceil(1 / h))),
                               init=np.ones(1), record=lgd.Record(weights=1), compute=compute))
        compared = compare_flows(run, X, y)
        distances.append({"stepsize": float(h), "steps": run.steps, "time": float(compared.time[-1]),
                          "gradient_flow": compared.largest_distance_gradient_flow,
                          "modified_flow": compared.largest_distance_modified_flow})
    small = [d for d in distances if d["stepsize"] <= 0.05]
    summary = {"experiment": "regimes", "function": "w^2 / 2 (Linear on X = [[1]], y = 0, squared loss)",
               "smoothness": 1.0, "w0": 1.0, "steps": steps, "backend": grid.meta["backend"], "runs": runs,
               "every_regime_as_theory": all(run["regime"] == run["theory"] for run in runs),
               "flow_distances": distances,
               "gradient_flow_order": _slope([d["stepsize"] for d in small], [d["gradient_flow"] for d in small]),
               "modified_flow_order": _slope([d["stepsize"] for d in small], [d["modified_flow"] for d in small]),
               "flow_tolerances": {"method": "DOP853", "rtol": 1e-10, "atol": 1e-12}}

    def draw():
        plt = _pyplot()
        fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(stepsizes)))
        for i, (h, color) in enumerate(zip(stepsizes, colors)):
            ax_w.plot(grid.trajectory_step, w[i], "o-", ms=2, lw=0.8, color=color,
                      label=f"h = {h:g}: {runs[i]['regime']}")
        ax_w.set(xlabel="step k", ylabel="w_k", title="GD on w^2/2 (L = 1)", ylim=(-3, 3))
        ax_w.legend(fontsize=7, ncol=2)
        h = [d["stepsize"] for d in distances]
        ax_d.loglog(h, [d["gradient_flow"] for d in distances], "o-", label="to gradient flow")
        ax_d.loglog(h, [d["modified_flow"] for d in distances], "s-", label="to the modified flow")
        ax_d.axvline(1.0, color="grey", ls=":", lw=1)
        ax_d.set(xlabel="stepsize h", ylabel="largest distance over t <= h max(4, ceil(1/h))",
                 title="GD against its reference flows")
        ax_d.legend(fontsize=8)
        for ax in (ax_w, ax_d):
            ax.grid(True, alpha=0.3)
        return fig

    return Reproduction("regimes", summary, draw)


def _miniature():
    import lgd

    return lgd.TwoLayerNet(1, activation="identity", scaling=1.0, outer=[1.0], train_outer=True)


def orbits(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """GD on (1 - x y)^2 / 2 (science notes, section 6): the bifurcation diagram over h in [0.5, 2] and basin
    maps at a few stepsizes, with periods read off the last 256 steps (:func:`lgd.dynamics.attractors`,
    relative tolerance 1e-6) and the largest Lyapunov exponent over them.

    The notes state that GD at h = 1.9 ends on orbits of period 2, 3 or 4 depending on where it starts; the
    summary reports what the basin grid measures there (counts of each outcome, example orbits), whether or
    not it agrees.
    """
    import lgd
    from .dynamics import BOUNDED, PERIODIC, basins, bifurcation, lyapunov_window

    X, y, net = np.array([[1.0]]), np.array([1.0]), _miniature()
    compute = lgd.Compute(backend, progress=progress)
    window = 256
    # the basin grid keeps every step of 4 x 101^2 runs (2 numbers each): fewer steps there than on the
    # bifurcation diagram
    steps, basin_steps = (1500, 1500) if quick else (6000, 3000)
    start = (0.6, 0.5)
    stepsizes = np.round(np.linspace(0.5, 2.0, 31 if quick else 301), 4)
    sweep = _finished(lgd.sweep(X, y, net, "squared", stepsizes=stepsizes, steps=steps, inits=[[[start[0]]]],
                                outer_inits=[[start[1]]],
                                record=lgd.Record(every=1, weights=1, lyapunov=1, neuron_margins=False),
                                compute=compute))
    diagram = bifurcation(sweep, of=0, window=window)
    windows = [{"stepsize": float(h), "period": int(p)}
                for h, p, k in zip(stepsizes, diagram.period, diagram.kind) if k == PERIODIC]
    axis = np.round(np.linspace(-2.5, 2.5, 17 if quick else 101), 6)
    basin_stepsizes = [1.1, 1.25, 1.83, 1.9]
    grid = _finished(lgd.sweep(X, y, net, "squared", stepsizes=basin_stepsizes, steps=basin_steps,
                               **lgd.init_grid(net, axis, axis),
                               record=lgd.Record(every=250, weights=1, lyapunov=1, neuron_margins=False),
                               compute=compute))
    maps = basins(grid, axis, axis, window=window)
    exponents = lyapunov_window(grid, basin_steps - 1000)[:, 0].reshape(maps.kind.shape)
    final = maps.final
    per_stepsize = []
    for s, h in enumerate(basin_stepsizes):
        kind, period = maps.kind[s], maps.period[s]
        bounded, periodic = kind == BOUNDED, kind == PERIODIC
        examples = {}
        for p in np.unique(period[periodic]):
            i, j = np.argwhere(periodic & (period == p))[0]
            config = (s * len(axis) + i) * len(axis) + j
            cycle = np.stack([grid.trajectory[config, -int(p):, 0, 0], grid.outer_trajectory[config, -int(p):, 0]], 1)
            examples[f"period {int(p)}"] = {"start": [float(axis[i]), float(axis[j])], "orbit": cycle.tolist()}
        balanced = np.abs(final[s, ..., 0] - final[s, ..., 1]) <= 1e-6 * (1 + np.abs(final[s, ..., 0]))
        per_stepsize.append({
            "stepsize": h, "counts": maps.counts(s), "example_orbits": examples,
            "bounded_without_period_balanced": int(np.sum(bounded & balanced)),
            "median_lyapunov_bounded_without_period": float(np.median(exponents[s][bounded])) if bounded.any()
            else math.nan,
            "median_lyapunov_periodic": float(np.median(exponents[s][periodic])) if periodic.any() else math.nan})
    at_19 = per_stepsize[-1]["counts"]
    summary = {"experiment": "orbits", "function": "(1 - x y)^2 / 2", "steps": steps, "basin_steps": basin_steps,
               "window": window,
               "tolerance": 1e-6, "max_period": 64, "backend": sweep.meta["backend"],
               "bifurcation": {"start": list(start), "stepsizes": stepsizes.tolist(),
                               "kind": diagram.attractors.names,
                               "period": diagram.period.tolist(), "lyapunov": diagram.lyapunov.tolist(),
                               "periodic_windows": windows,
                               "first_stepsize_without_fixed_point": float(stepsizes[np.argmax(diagram.period != 1)])},
               "basins": {"axis": [float(axis[0]), float(axis[-1]), len(axis)], "per_stepsize": per_stepsize},
               "claim_periods_2_3_4_at_1.9": all(f"period {p}" in at_19 for p in (2, 3, 4)),
               "periods_found_at_1.9": sorted(int(k.split()[1]) for k in at_19 if k.startswith("period"))}

    def draw():
        from .dynamics import plot_basins, plot_bifurcation

        plt = _pyplot()
        fig = plt.figure(figsize=(18, 11), constrained_layout=True)
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.3, 1])
        plot_bifurcation(diagram, figure=top)
        top.axes[0].set(ylabel="x (last 256 steps)", title=f"(1 - xy)^2 / 2 from (x0, y0) = {start}")
        plot_basins(maps, names=("x0", "y0"), figure=bottom)
        return fig

    return Reproduction("orbits", summary, draw)


def chaos(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """GD on XOR as a dynamical system: the two-layer net of ``xor`` (20 neurons, leaky softplus c = 0.5, 1/m,
    logistic loss) over many stepsizes, 5,000 steps: final risk, where each run ends (periods of its last 256
    steps, from the weights projected on 4 random directions, :func:`lgd.dynamics.attractors`) and the largest
    Lyapunov exponent (``Record(lyapunov=1)``) over the oscillating phase (steps up to the phase transition)
    and over the last 1,000 steps. A run counts as chaotic over a window where its exponent there exceeds
    0.01 per step.
    """
    import lgd
    from .dynamics import attractors, lyapunov_window

    X, y = lgd.data.xor(n=100)
    net = lgd.TwoLayerNet(20, activation="leaky_softplus(0.5)", scaling="mean_field")
    steps, window, threshold = 5000, 256, 0.01
    stepsizes = np.logspace(0, 4.5, 24 if quick else 2048)
    directions = np.random.default_rng(0).standard_normal((4, 20, 2))
    sweep = _finished(lgd.sweep(X, y, net, "logistic", stepsizes=stepsizes, steps=steps,
                                record=lgd.Record(every=10, weights=1, project_onto=directions, lyapunov=1,
                                                  neuron_margins=False),
                                compute=lgd.Compute(backend, progress=progress)))
    found = attractors(sweep, window)
    final_window = lyapunov_window(sweep, steps - 1000)[:, 0]
    transitions = [phase.transition_step for phase in sweep.phases]
    oscillating = np.array([lyapunov_window(sweep[i], 0, s)[0] if s else math.nan
                            for i, s in enumerate(transitions)])
    chaotic_final = final_window > threshold
    chaotic_oscillating = oscillating > threshold
    first_chaotic = stepsizes[np.argmax(chaotic_oscillating)] if chaotic_oscillating.any() else math.nan
    summary = {"experiment": "chaos", "data": "xor(n=100)", "model": net.describe(), "loss": "logistic",
               "steps": steps, "window": window, "chaos_threshold": threshold, "backend": sweep.meta["backend"],
               "stepsizes": stepsizes.tolist(), "status": list(sweep.status),
               "final_risk": sweep.risk[:, -1].tolist(), "kind": found.names, "period": found.period.tolist(),
               "counts": found.counts(), "transition_step": transitions,
               "lyapunov_oscillating_phase": oscillating.tolist(), "lyapunov_last_1000_steps": final_window.tolist(),
               "largest_lyapunov_last_1000_steps": float(np.nanmax(np.abs(final_window))),
               "chaotic_in_last_1000_steps": int(np.sum(chaotic_final)),
               "chaotic_oscillating_phase": int(np.sum(chaotic_oscillating)),
               "first_stepsize_chaotic_oscillating_phase": float(first_chaotic),
               "oscillating_phase_exponent_positive": int(np.sum(oscillating > 0)),
               "with_oscillating_phase": int(np.sum(np.isfinite(oscillating)))}

    def draw():
        plt = _pyplot()
        fig, (ax_risk, ax_lyap, ax_kind) = plt.subplots(3, 1, figsize=(9, 10), sharex=True, constrained_layout=True)
        ax_risk.loglog(stepsizes, sweep.risk[:, -1], ".", ms=3)
        ax_risk.set(ylabel=f"risk after {steps} steps", title="XOR, two-layer leaky softplus, logistic loss")
        ax_lyap.semilogx(stepsizes, oscillating, ".", ms=3, label="oscillating phase (until the transition)")
        ax_lyap.semilogx(stepsizes, final_window, ".", ms=3, label="last 1,000 steps")
        ax_lyap.axhline(threshold, color="r", ls=":", lw=1, label="chaos threshold 0.01")
        ax_lyap.axhline(0.0, color="k", lw=0.8)
        ax_lyap.set_yscale("symlog", linthresh=1e-3)
        ax_lyap.set(ylabel="largest Lyapunov exponent (per step)")
        ax_lyap.legend(fontsize=8)
        ax_kind.semilogx(stepsizes, found.kind + 0.0, ".", ms=3)
        ax_kind.set(yticks=[0, 1, 2, 3], yticklabels=["fixed point", "periodic", "bounded", "diverged"],
                    xlabel="stepsize eta", title="where the last 256 steps end (projected weights)")
        for ax in (ax_risk, ax_lyap, ax_kind):
            ax.grid(True, alpha=0.3)
        return fig

    return Reproduction("chaos", summary, draw)


def adaptive(quick: bool = False, backend: str = "auto", progress=None) -> Reproduction:
    """Zhang, Wu, Lin, Bartlett (2025): the risk-adaptive stepsize eta / L(w_t) against constant and Polyak steps.

    Logistic regression on the Wu et al. toy set and on a separable set of small margin, and the XOR net
    (m = 20, mean field), from zero (the net: seed 0); stepsizes log-spaced over 0.1 .. 10^3, T steps (quick:
    fewer stepsizes and steps). For each: the log-risk after T steps of constant eta, of eta / L(w_t), and of
    Polyak's step (L_min = 0, one run). The claim checked: after at most 1/gamma^2 burn-in steps the adaptive
    run's risk is at most exp(-Theta(eta)), so its final log-risk falls about linearly in eta: the slope of
    log L_T against eta over the stepsizes whose run ended below its start and above the float64 limit of
    eta / L (with the fit's R^2) and -log L_T / eta per stepsize are reported, beside constant steps, which
    reach only ~1/(eta T).
    """
    import lgd

    stepsizes = np.logspace(-1, 3, 7) if quick else np.logspace(-1, 3, 17)
    steps = 200 if quick else 2000
    problems = {"wu_toy": (*lgd.data.wu_toy(), lgd.Linear()),
                "separable": (*lgd.data.separable(n=100, d=5, margin=0.05, seed=0), lgd.Linear()),
                "xor_net": (*lgd.data.xor(n=100), lgd.TwoLayerNet(20))}
    compute = lgd.Compute(backend, progress=progress)
    results, summary = {}, {"experiment": "adaptive", "stepsizes": stepsizes.tolist(), "steps": steps, "problems": {}}
    for name, (X, y, model) in problems.items():
        init = "zeros" if isinstance(model, lgd.Linear) else "normal"
        rules = list(stepsizes) + [lgd.stepsize.adaptive(eta) for eta in stepsizes] + [lgd.stepsize.polyak(0.0)]
        grid = _finished(lgd.sweep(X, y, model, "logistic", stepsizes=rules, steps=steps, init=init,
                                   record=max(1, steps // 100), compute=compute, divergence=math.inf))
        k = stepsizes.size
        final = np.array([grid[i].final_log_risk for i in range(len(grid))])
        constant, adaptive_final, polyak = final[:k], final[k:2 * k], float(final[-1])
        # The claim's regime: the stepsizes whose adaptive run ended below its starting risk within T steps (a
        # run still in its burn-in at T does not test it) and above the float64 limit of eta / L (from
        # L < e^-709 the step is held at the largest float, and the risk stalls near e^-710); there, the slope
        # of log L_T against eta.
        reached = (np.isfinite(adaptive_final) & (adaptive_final < float(grid.log_risk[k, 0]))
                   & (adaptive_final > -700.0))
        slope = r2 = math.nan
        if reached.sum() >= 2:
            slope, intercept = np.polyfit(stepsizes[reached], adaptive_final[reached], 1)
            fitted = slope * stepsizes[reached] + intercept
            spread = np.sum((adaptive_final[reached] - adaptive_final[reached].mean()) ** 2)
            r2 = float(1 - np.sum((adaptive_final[reached] - fitted) ** 2) / spread) if spread > 0 else math.nan
        results[name] = (constant, adaptive_final, polyak, grid)
        summary["backend"] = grid.meta["backend"]
        summary["problems"][name] = {
            "constant_log_risk": constant.tolist(), "adaptive_log_risk": adaptive_final.tolist(),
            "polyak_log_risk": polyak, "adaptive_status": grid.status[k:2 * k],
            "adaptive_in_claims_regime": reached.tolist(), "adaptive_slope_in_eta": float(slope),
            "adaptive_fit_r2": r2,
            "adaptive_minus_log_risk_over_eta": (-adaptive_final / stepsizes).tolist(),
            "adaptive_beats_constant": [bool(a < c) for a, c in zip(adaptive_final, constant)]}

    def draw():
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), constrained_layout=True)
        for ax, (name, (constant, adaptive_final, polyak, _)) in zip(np.atleast_1d(axes), results.items()):
            ax.semilogx(stepsizes, constant / math.log(10), "o-", label="constant eta")
            ax.semilogx(stepsizes, adaptive_final / math.log(10), "s-", label="eta / L(w_t)")
            ax.axhline(polyak / math.log(10), color="gray", ls="--", label="Polyak (L_min = 0)")
            ax.set(xlabel="eta", ylabel=f"log10 L after {steps} steps", title=name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        return fig

    return Reproduction("adaptive", summary, draw)


_EXPERIMENTS = {"fig4": fig4, "xor": xor, "digits": digits, "acceleration": acceleration, "eos": eos,
                "balancing": balancing, "regimes": regimes, "orbits": orbits, "chaos": chaos, "adaptive": adaptive,
                "mnist": mnist, "cifar10": cifar10}
_NEEDS_DATA = ("mnist", "cifar10")


# ---------------------------------------------------------------------------------------------- command line


def configure(parser) -> None:
    """Arguments of ``lgd reproduce``."""
    parser.add_argument("name", choices=NAMES, help="which experiment")
    parser.add_argument("--out", default="lgd-reproduce", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a reduced version (seconds instead of minutes on numba)")
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "cupy"))
    parser.add_argument("--data-path", default=None, help="folder of the MNIST or CIFAR-10 files (mnist, cifar10)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--progress", action="store_true", default=None, help="progress bars")


def reproduce(name: str, quick: bool = False, backend: str = "auto", data_path=None, progress=None) -> Reproduction:
    """Run the experiment ``name`` (one of :data:`NAMES`)."""
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(NAMES)}")
    kwargs = {"quick": quick, "backend": backend, "progress": progress}
    if name in _NEEDS_DATA:
        if data_path is None:
            raise ValueError(f"{name} needs --data-path pointing at the local {name} files")
        return _EXPERIMENTS[name](data_path, **kwargs)
    if data_path is not None:
        raise ValueError(f"{name} reads no data files: --data-path is for {' and '.join(sorted(_NEEDS_DATA))}")
    return _EXPERIMENTS[name](**kwargs)


def main(args) -> int:
    """``lgd reproduce NAME``: run, write NAME.json (and NAME.png) into ``--out``, print what was written.

    The output folder is checked before the experiment runs; Ctrl-C is left to :func:`lgd.cli.main`
    (``lgd: interrupted``, exit code 130).
    """
    import lgd
    from ._json import to_json
    from .cli import output_folder
    from .driver import _HeldInterrupt

    tic = time.perf_counter()
    try:
        out = output_folder(args.out)
        result = reproduce(args.name, quick=args.quick, backend=args.backend, data_path=args.data_path,
                           progress=args.progress)
    except (ValueError, TypeError, ImportError, FileNotFoundError, lgd.BackendUnavailable) as exc:
        print(f"lgd reproduce: error: {exc}", file=sys.stderr)
        return 2
    result.summary["quick"] = bool(args.quick)
    result.summary["seconds"] = time.perf_counter() - tic
    written = [out / f"{result.name}.json"]
    figure_path = out / f"{result.name}.png"
    # A Ctrl-C while the files are written waits for them; an earlier run's figure does not stay beside this JSON.
    with _HeldInterrupt() as held:
        written[0].write_text(to_json(result.summary) + "\n")
        figure_path.unlink(missing_ok=True)
        if not args.no_plot:
            try:
                figure = result.draw()
            except ImportError as exc:
                print(f"lgd reproduce: no figure: {exc}", file=sys.stderr)
            else:
                figure.savefig(figure_path, dpi=110)
                _pyplot().close(figure)
                written.append(figure_path)
    print(f"{result.name}: {result.summary['seconds']:.1f} s; wrote " + ", ".join(str(p) for p in written))
    held.deliver()
    return 0
