"""Lyapunov exponents over a window of a run, from the cumulative log growth the kernels record.

What lives here: :func:`lyapunov_window`, the difference quotient of ``run.lyapunov_sum`` (recorded by
``lgd.Record(lyapunov=k)``) between two steps. What does not: the tangent propagation itself (the GD
kernels propagate k tangent vectors through I - eta H(W_t), one exact Hessian-vector product per step and
vector, with QR: see ``lgd.Record``).

If S_t is the cumulative log growth of the i-th orthonormalised tangent vector up to step t, the i-th
exponent over the steps (s, e] is (S_e - S_s) / (e - s): the average of log ||(I - eta H(W_t)) v_t|| per step
there. On a quadratic with curvature lambda it is log|1 - eta lambda| over any window.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lyapunov_window"]


def lyapunov_window(result, start: int = 0, end: int | None = None) -> np.ndarray:
    """The top-k Lyapunov exponents over the steps (start, end] of a Run (k,) or a Sweep (C, k).

    ``start`` and ``end`` are GD steps; each is moved to the first recorded step at or after it (``end``
    defaults to each configuration's last record, where it stopped: its divergence or the last step).
    The result is (S_end - S_start) / (end - start) from ``result.lyapunov_sum``; -inf for an exponent whose
    tangent vector the map sent to zero (a singular tangent map: eta = 1/lambda gives log 0), from then on;
    NaN for a configuration with no record in the window or with a sum there that is NaN or +inf (a diverged
    run's tangents are).

    Needs ``record=lgd.Record(lyapunov=k)``; a ValueError otherwise.
    """
    sums = getattr(result, "lyapunov_sum", None)
    if sums is None:
        raise ValueError("no Lyapunov exponents recorded: run with record=lgd.Record(lyapunov=k)")
    if isinstance(start, bool) or int(start) != start or start < 0:
        raise ValueError(f"start must be a step >= 0, got {start!r}")
    if end is not None and (isinstance(end, bool) or int(end) != end or end <= start):
        raise ValueError(f"end must be a step after start = {start}, got {end!r}")
    single = isinstance(result.status, str)
    sums = np.asarray(sums, dtype=np.float64)
    if single:
        sums = sums[None]
    steps = np.asarray(result.step, dtype=np.int64)
    exponents = np.full(sums.shape[::2], np.nan)
    first = int(np.searchsorted(steps, start))
    for c in range(sums.shape[0]):
        usable = (sums[c] < np.inf).all(axis=1)  # -inf is a vanished tangent vector; NaN and +inf are not sums
        last = len(steps) - 1 if end is None else int(np.searchsorted(steps, end))
        if end is None:
            while last >= 0 and not usable[last]:
                last -= 1
        if first >= len(steps) or last >= len(steps) or last <= first or not (usable[first] and usable[last]):
            continue
        with np.errstate(invalid="ignore"):
            growth = np.where(sums[c, first] == -np.inf, -np.inf, sums[c, last] - sums[c, first])
        exponents[c] = growth / (steps[last] - steps[first])
    return exponents[0] if single else exponents
