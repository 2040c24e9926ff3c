"""Norms exact over float64's whole range: a sum of squares, and a second pass only where it under- or overflows.

A norm of entries below about 1.5e-154 has squares that underflow (a gradient of 1e-170 summed to 0) and one above
1.3e154 squares that overflow; each is a normal float64 all the same. :func:`exact_norm` takes the root of the
sum of squares the caller has already formed where that is exact (:func:`rooted`: the common case costs nothing
more) and otherwise goes over the entries again, scaled by the largest |x|. The numpy oracle's rule is
lgd.backends._numpy._norm, with the same threshold (lgd.backends.SQUARES_EXACT_FROM).
"""

import math

import numpy as np
from numba import types

from lgd.backends import SQUARES_EXACT_FROM

from .compiler import subroutine


@subroutine(types.boolean)
def rooted(squares):
    """Whether a float64 sum of squares gives its norm as its root (lgd.backends.SQUARES_EXACT_FROM): at least
    SQUARES_EXACT_FROM and finite, or NaN (which stays NaN). Else (0 with entries not all 0, subnormal, inf: a
    gradient of 1e-170, weights of 1e200) the norm takes exact_norm's second pass."""
    return (squares >= SQUARES_EXACT_FROM and squares < math.inf) or squares != squares


@subroutine(types.float64)
def largest_abs(flat):
    """max |x| of a 1-d array, in float64 (0 for none)."""
    top = 0.0
    for k in range(flat.size):
        top = max(top, abs(np.float64(flat[k])))
    return top


@subroutine(types.float64)
def squares_over(flat, top):
    """sum (x / top)^2 of a 1-d array, in float64."""
    total = 0.0
    for k in range(flat.size):
        v = np.float64(flat[k]) / top
        total += v * v
    return total


@subroutine(types.float64)
def exact_norm(squares, flat, extra, with_extra):
    """The norm of flat's entries (and extra's where with_extra) from their float64 sum of squares: its root
    where that is exact (rooted), else the largest |x| times the root of the sum of (x / largest)^2, a second
    pass over the entries that only a norm beyond about 1e+-154 takes (the oracle's lgd.backends._numpy._norm)."""
    if rooted(squares):
        return math.sqrt(squares)
    top = largest_abs(flat)
    if with_extra:
        top = max(top, largest_abs(extra))
    if top == 0.0 or top == math.inf:
        return top
    total = squares_over(flat, top)
    if with_extra:
        total += squares_over(extra, top)
    return top * math.sqrt(total)
