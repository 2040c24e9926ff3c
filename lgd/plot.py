"""Figures of GD runs (matplotlib, imported on first use; install with ``pip install "lgd[plot]"``).

:func:`plot_runs` draws the three panels researchers look at for large-stepsize GD: the risk on
log-log axes (EoS oscillation, then the monotone stable phase), the normalized margin, and
eta * t * risk, which levels off in the stable phase when risk = O(1/(eta t)).
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_runs", "save_runs_figure"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "lgd[plot]"') from None
    return plt


def plot_runs(runs, title: str | None = None):
    """Figure with risk, normalized margin and eta * t * risk for each run (an lgd.Run or a Sweep)."""
    plt = _pyplot()
    runs = list(runs)
    fig, (ax_risk, ax_margin, ax_rate) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(runs), 1)))
    for run, color in zip(runs, colors):
        t = run.step.astype(np.float64)
        label = f"eta = {run.stepsize:g}" + ("" if run.status == "completed" else f" ({run.status})")
        positive = (t > 0) & (run.risk > 0)
        ax_risk.loglog(t[positive], run.risk[positive], color=color, lw=1.2, label=label)
        s = run.phase.transition_step
        if s is not None and s > 0:
            ax_risk.axvline(s, color=color, ls=":", lw=0.8)
        ax_margin.semilogx(t[t > 0], run.normalized_margin[t > 0], color=color, lw=1.2, label=label)
        rate = run.stepsize * t * run.risk
        ax_rate.loglog(t[positive], rate[positive], color=color, lw=1.2, label=label)
    ax_risk.set(xlabel="step t", ylabel="risk L(W_t)", title="risk (dotted: phase transition)")
    ax_margin.set(xlabel="step t", ylabel="min_i y_i f(x_i) / ||W||", title="normalized margin")
    ax_rate.set(xlabel="step t", ylabel="eta * t * L(W_t)", title="stable-phase rate: eta t L levels off")
    for ax in (ax_risk, ax_margin, ax_rate):
        ax.grid(True, which="major", alpha=0.3)
    ax_risk.legend(fontsize=8)
    if title:
        suptitle(fig, title)
    return fig


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
