"""Strict JSON for every file lgd writes: :func:`to_json`.

Python's ``json`` writes NaN and Infinity as bare tokens that strict parsers (JavaScript, jq, most
other languages) reject. lgd's summaries hold such numbers (the risk of a diverged run, a rate over
zero seconds), so every writer goes through :func:`to_json`, which writes them as ``null`` and turns
numpy scalars and arrays into plain JSON values. What does not live here: the ``.npz`` header of
:mod:`lgd.results`, which only :func:`lgd.load` reads and which keeps NaN to read it back exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import PurePath

import numpy as np

__all__ = ["to_json", "plain"]


def plain(value):
    """``value`` with numpy scalars and arrays as Python values, tuples as lists, Paths as strings,
    and every float that is NaN or infinite as None; TypeError for anything JSON cannot hold."""
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (see :func:`plain`): NaN and +-Inf are written as ``null``.

    >>> to_json({"risk": float("nan"), "rates": np.array([1.5, np.inf])}, indent=None)
    '{"risk": null, "rates": [1.5, null]}'
    """
    return json.dumps(plain(value), indent=indent, allow_nan=False)
