"""Bifurcation and basin diagrams of GD: arrays read off a sweep (:func:`bifurcation`, :func:`basins`) and
their figures (:func:`plot_bifurcation`, :func:`plot_basins`; matplotlib imported inside them only).

What lives here: the diagrams as small result objects. What does not: running the sweep (:func:`lgd.sweep`
with ``stepsizes=`` for a bifurcation diagram, ``**lgd.init_grid(...)`` for a basin diagram, and
``record=lgd.Record(every=1, weights=1)`` for the windows), the classification rule (:mod:`.periods`) and the
Lyapunov exponents (:mod:`.lyapunov`, recorded with ``Record(lyapunov=k)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lyapunov import lyapunov_window
from .periods import BOUNDED, DIVERGED, MAX_PERIOD, SCALARS, TOLERANCE, Attractors, attractors, on_the_grid

__all__ = ["bifurcation", "basins", "Bifurcation", "Basins", "plot_bifurcation", "plot_basins"]


@dataclass(frozen=True)
class Bifurcation:
    """A bifurcation diagram: for each configuration (C,) its ``stepsize`` and the last ``window`` values
    ``values`` (C, N) of ``of`` at ``step`` (N,); ``attractors`` (:class:`Attractors`: ``kind``, ``period``,
    ``spread`` per configuration, from ``period_of``), and ``lyapunov`` (C,) the largest Lyapunov exponent
    over the window when the sweep recorded them (``Record(lyapunov=k)``), else None."""

    stepsize: np.ndarray
    step: np.ndarray
    values: np.ndarray
    of: str
    attractors: Attractors
    period_of: str
    lyapunov: np.ndarray | None

    @property
    def period(self) -> np.ndarray:
        return self.attractors.period

    @property
    def kind(self) -> np.ndarray:
        return self.attractors.kind


@dataclass(frozen=True)
class Basins:
    """A basin diagram: ``stepsize`` (S,), the starting grid ``first`` (F,) x ``second`` (G,), and per
    starting point the ``kind`` and ``period`` (S, F, G) of :mod:`.periods` (``attractors`` holds the flat
    classification) and the ``final`` parameters (S, F, G, P) of each run."""

    stepsize: np.ndarray
    first: np.ndarray
    second: np.ndarray
    kind: np.ndarray
    period: np.ndarray
    final: np.ndarray
    attractors: Attractors

    def counts(self, index: int = 0) -> dict:
        """The outcomes at ``stepsize[index]``: {'converged': n, 'period 2': n, ..., 'bounded': n, 'diverged': n}."""
        per = len(self.first) * len(self.second)
        chosen = slice(index * per, (index + 1) * per)
        part = Attractors(kind=self.attractors.kind[chosen], period=self.attractors.period[chosen],
                          spread=self.attractors.spread[chosen], window=self.attractors.window,
                          tol=self.attractors.tol, max_period=self.attractors.max_period, of=self.attractors.of)
        return part.counts()


def _scalar_window(sweep, of, window):
    """(C, N) values of ``of`` (a scalar trace name or the index of a parameter) over the last ``window``
    records on the grid of records (as :func:`attractors` reads them), and their steps."""
    if isinstance(of, (int, np.integer)) and not isinstance(of, bool):
        if sweep.trajectory is None:
            raise ValueError("a weight coordinate needs the trajectory: record=lgd.Record(weights=1)")
        flat = sweep.trajectory.reshape(len(sweep), sweep.trajectory.shape[1], -1)
        if sweep.outer_trajectory is not None:
            flat = np.concatenate([flat, sweep.outer_trajectory], axis=2)
        if not -flat.shape[2] <= of < flat.shape[2]:
            raise ValueError(f"parameter index {of} out of range for {flat.shape[2]} parameters")
        trace, steps, name = np.asarray(flat[:, :, of], dtype=np.float64), sweep.trajectory_step, f"parameter {of}"
    elif of not in SCALARS:
        raise ValueError(f"unknown of={of!r}; valid: a parameter index or " + ", ".join(repr(s) for s in SCALARS))
    elif of == "log_risk":
        from ..results import log_risk_trace

        trace, steps, name = np.asarray(log_risk_trace(sweep), dtype=np.float64), sweep.step, of
    else:
        trace, steps, name = np.asarray(getattr(sweep, of), dtype=np.float64), sweep.step, of
    kept = on_the_grid(steps)
    return trace[:, :kept][:, -window:], np.asarray(steps)[:kept][-window:], name


def bifurcation(sweep, of="log_risk", window: int | None = None, *, period_of: str | None = None,
                tol: float = TOLERANCE, max_period: int = MAX_PERIOD, backend: str = "auto") -> Bifurcation:
    """The bifurcation diagram of a sweep over stepsizes: the last ``window`` values of ``of`` per configuration.

    ``of``: ``'risk'``, ``'log_risk'``, ``'margin'`` (or another scalar trace) or the index of a parameter in
    (W.ravel(), a). ``window``: records (default 4 * ``max_period``). The period per configuration comes from
    ``period_of`` (``'weights'``, default when the sweep recorded its trajectory, else the scalar ``of``) by
    :func:`attractors` with ``tol`` and ``max_period``; the largest Lyapunov exponent over the window from
    ``sweep.lyapunov_sum`` when recorded. Record every step (``record=lgd.Record(every=1, weights=1)``) for
    the periods to be those of the GD map.
    """
    window = 4 * int(max_period) if window is None else int(window)
    from ..results import Sweep

    if not isinstance(sweep, Sweep):
        raise TypeError(f"bifurcation reads a Sweep (lgd.sweep's result over stepsizes), got {type(sweep).__name__}")
    values, step, name = _scalar_window(sweep, of, window)
    if period_of is None:
        period_of = "weights" if (sweep.trajectory is not None or sweep.projections is not None) else name
    found = attractors(sweep, window, of=period_of, tol=tol, max_period=max_period, backend=backend)
    lyapunov = None
    if getattr(sweep, "lyapunov_sum", None) is not None:
        # Over the window's steps from the record before its first: with every step recorded, `window` steps,
        # a whole number of periods of an even period (from its first record, one step short).
        recorded = np.asarray(sweep.step)
        before = recorded[recorded < step[0]]
        lyapunov = lyapunov_window(sweep, int(before[-1] if before.size else step[0]))[:, 0]
    return Bifurcation(stepsize=np.asarray(sweep.stepsize, dtype=np.float64), step=np.asarray(step), values=values,
                       of=name, attractors=found, period_of=period_of, lyapunov=lyapunov)


def basins(sweep, first, second, window: int | None = None, *, tol: float = TOLERANCE,
           max_period: int = MAX_PERIOD, backend: str = "auto") -> Basins:
    """The basin diagram of a sweep over the starting grid ``lgd.init_grid(model, first, second)`` (and one or
    more stepsizes, one seed): per starting point, converged, period p, bounded or diverged, from the last
    ``window`` records of its trajectory (``record=lgd.Record(weights=1)``)."""
    first = np.asarray(first, dtype=np.float64).ravel()
    second = np.asarray(second, dtype=np.float64).ravel()
    per = len(first) * len(second)
    if per == 0 or len(sweep) % per:
        raise ValueError(f"the sweep has {len(sweep)} configurations, not a whole number of stepsizes x "
                         f"{len(first)} x {len(second)} starting points (one seed)")
    # Configurations are stepsize-major: the stepsizes in the sweep's order, each over a block of `per` starts.
    blocks = np.asarray(sweep.stepsize, dtype=np.float64).reshape(-1, per)
    if np.any(blocks != blocks[:, :1]):
        raise ValueError(f"the sweep's configurations are not {len(blocks)} stepsizes x {len(first)} x "
                         f"{len(second)} starting points (one seed)")
    stepsizes = blocks[:, 0]
    shape = (len(stepsizes), len(first), len(second))
    found = attractors(sweep, window, tol=tol, max_period=max_period, backend=backend)
    final = sweep.weights.reshape(len(sweep), -1)
    if sweep.meta["model"].get("train_outer"):
        final = np.concatenate([final, sweep.outer_weights.reshape(len(sweep), -1)], axis=1)
    return Basins(stepsize=stepsizes, first=first, second=second, kind=found.kind.reshape(shape),
                  period=found.period.reshape(shape), final=final.reshape(shape + (-1,)), attractors=found)


# The labels of the outcomes that have no period, above any period attractors tests.
BOUNDED_LABEL, DIVERGED_LABEL = 1 << 40, (1 << 40) + 1


def _labels(kind, period):
    """One integer per outcome for colouring: the period (1 = converged), BOUNDED_LABEL, DIVERGED_LABEL."""
    return np.where(kind == DIVERGED, DIVERGED_LABEL, np.where(kind == BOUNDED, BOUNDED_LABEL, period))


# One colour per outcome, the same in every figure: periods 2, 3, ... cycle through _PERIOD_COLORS.
_PERIOD_COLORS = ("tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "black",
                  "navy", "lime")


def _label_color(label):
    if label == DIVERGED_LABEL:
        return "tab:purple"
    if label == BOUNDED_LABEL:
        return "tab:red"
    return "tab:blue" if label == 1 else _PERIOD_COLORS[(label - 2) % len(_PERIOD_COLORS)]


def _label_name(label):
    if label == DIVERGED_LABEL:
        return "diverged"
    if label == BOUNDED_LABEL:
        return "bounded, no period"
    return "fixed point" if label == 1 else f"period {label}"


def plot_bifurcation(diagram: Bifurcation, figure=None):
    """The window's values against the stepsize (coloured by period), with the largest Lyapunov exponent
    below when recorded, into ``figure`` (a matplotlib Figure or SubFigure; a new one when None).
    Returns the figure."""
    from ..plot import _pyplot

    plt = _pyplot()
    panels = 2 if diagram.lyapunov is not None else 1
    fig = figure if figure is not None else plt.figure(figsize=(8, 3.5 * panels), constrained_layout=True)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    labels = _labels(diagram.kind, diagram.period)
    for label in np.unique(labels):
        chosen = labels == label
        x = np.repeat(diagram.stepsize[chosen], diagram.values.shape[1])
        axes[0].plot(x, diagram.values[chosen].ravel(), ".", ms=1.5, mew=0, color=_label_color(label))
        axes[0].plot([], [], "o", ms=4, color=_label_color(label), label=_label_name(label))
    axes[0].set(ylabel=diagram.of, title=f"bifurcation diagram: last {diagram.values.shape[1]} records")
    axes[0].legend(fontsize=7, markerscale=1, loc="best")
    if diagram.lyapunov is not None:
        axes[1].plot(diagram.stepsize, diagram.lyapunov, ".", ms=2)
        axes[1].axhline(0.0, color="k", lw=0.8)
        axes[1].set(ylabel="largest Lyapunov exponent")
    axes[-1].set(xlabel="stepsize eta")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig


def plot_basins(diagram: Basins, names=("first", "second"), figure=None):
    """One panel per stepsize: each starting point coloured by where GD ends, into ``figure`` (a Figure or
    SubFigure; a new one when None). ``names``: the axes' labels. Returns the figure."""
    from ..plot import _pyplot

    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    labels = _labels(diagram.kind, diagram.period)
    present = np.unique(labels)
    index = np.searchsorted(present, labels)
    cmap = ListedColormap([_label_color(label) for label in present])
    norm = BoundaryNorm(np.arange(len(present) + 1) - 0.5, len(present))
    count = len(diagram.stepsize)
    fig = figure if figure is not None else plt.figure(figsize=(4.2 * count + 1.5, 4), constrained_layout=True)
    axes = fig.subplots(1, count, squeeze=False)
    extent = (diagram.second[0], diagram.second[-1], diagram.first[0], diagram.first[-1])
    for ax, stepsize, panel in zip(axes[0], diagram.stepsize, index):
        image = ax.imshow(panel, origin="lower", extent=extent, cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        ax.set(title=f"eta = {stepsize:g}", xlabel=names[1], ylabel=names[0])
    bar = fig.colorbar(image, ax=axes[0].tolist(), ticks=np.arange(len(present)))
    bar.ax.set_yticklabels([_label_name(label) for label in present], fontsize=8)
    return fig
