"""Figures of GD runs (matplotlib, imported on first use; install with ``pip install "lgd[plot]"``).

:func:`plot_runs` draws the three panels researchers look at for large-stepsize GD: the risk on
log-log axes (EoS oscillation, then the monotone stable phase), the normalized margin, and
eta * t * risk, which levels off in the stable phase when risk = O(1/(eta t)).
"""

from __future__ import annotations

import numpy as np

from ._catalog import number_text

__all__ = ["plot_runs", "save_runs_figure"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "lgd[plot]"') from None
    return plt


def plot_runs(runs, title: str | None = None):
    """Figure with risk, normalized margin and eta * t * risk for each run (an lgd.Run, or a Sweep or a list of
    runs). Where some recorded risk underflowed to 0.0 (its log-risk finite), the risk and rate panels show
    log10 of them on a linear axis, so that no run drops out of them."""
    from .results import Run

    plt = _pyplot()
    runs = [runs] if isinstance(runs, Run) else list(runs)
    fig, (ax_risk, ax_margin, ax_rate) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(runs), 1)))
    underflowed = any(np.any((run.risk == 0.0) & np.isfinite(run.log_risk)) for run in runs)
    for run, color in zip(runs, colors):
        t = run.step.astype(np.float64)
        label = _label(run, runs)
        later = t > 0
        if underflowed:
            shown = later & np.isfinite(run.log_risk)
            log10_risk = run.log_risk[shown] / np.log(10.0)
            ax_risk.semilogx(t[shown], log10_risk, color=color, lw=1.2, label=label)
            ax_rate.semilogx(t[shown], np.log10(run.stepsize * t[shown]) + log10_risk, color=color, lw=1.2,
                             label=label)
        else:
            shown = later & (run.risk > 0)
            ax_risk.loglog(t[shown], run.risk[shown], color=color, lw=1.2, label=label)
            ax_rate.loglog(t[shown], run.stepsize * t[shown] * run.risk[shown], color=color, lw=1.2, label=label)
        s = run.phase.transition_step
        if s is not None and s > 0:
            ax_risk.axvline(s, color=color, ls=":", lw=0.8)
        ax_margin.semilogx(t[later], run.normalized_margin[later], color=color, lw=1.2, label=label)
    log10 = "log10 " if underflowed else ""
    ax_risk.set(xlabel="step t", ylabel=f"{log10}L(W_t)", title="risk (dotted: phase transition)")
    trained = any(run.meta.get("model", {}).get("train_outer") for run in runs)
    ax_margin.set(xlabel="step t", ylabel="min_i y_i f(x_i) / " + ("||(W, a)||^2" if trained else "||W||"),
                  title="normalized margin")
    rules = any(run.stepsize_rule is not None and not run.stepsize_rule.startswith("constant(") for run in runs)
    ax_rate.set(xlabel="step t", ylabel=f"{log10}eta t L(W_t)" + (" (eta: a rule's base stepsize)" if rules else ""),
                title="stable-phase rate: eta t L levels off")
    for ax in (ax_risk, ax_margin, ax_rate):
        ax.grid(True, which="major", alpha=0.3)
    ax_risk.legend(fontsize=8)
    if title:
        suptitle(fig, title)
    return fig


def _label(run, runs) -> str:
    """The run's stepsize (its rule's spec under a rule other than a constant one), with its seed and start
    where the runs drawn differ in them, and its status unless completed (a diverged run's with the step it
    diverged at)."""
    rule = run.stepsize_rule
    label = f"eta = {number_text(run.stepsize)}" if rule is None or rule.startswith("constant(") else rule
    if len({other.seed for other in runs}) > 1:
        label += f", seed {run.seed}"
    if len({other.init_index for other in runs}) > 1:
        label += f", start {run.init_index}"
    if run.status == "diverged":  # its curves end at the last record before that step
        return label + f" (diverged at step {run.diverged_step})"
    return label + ("" if run.status == "completed" else f" ({run.status})")


def suptitle(fig, title: str) -> None:
    """The figure's title, wrapped to its width (a run's or a grid's header is longer than one panel is wide)."""
    import textwrap

    fontsize = 10
    characters = int(fig.get_figwidth() * 72 / (0.55 * fontsize))  # about 0.55 em a character
    fig.suptitle(textwrap.fill(title, max(characters, 20)), fontsize=fontsize)


def save_runs_figure(runs, path, title: str | None = None) -> None:
    """Write :func:`plot_runs` to ``path`` (PNG, PDF or SVG by its suffix) and close the figure."""
    plt = _pyplot()
    fig = plot_runs(runs, title=title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
