"""Name parsing shared by the activation and loss catalogs.

A catalog entry is chosen by an object, a bare name (``'logistic'``) or a name with its
one parameter (``'leaky_softplus(0.3)'``, ``'flattened_exponential(2)'``). Only the parsing
lives here; the formulas live in :mod:`lgd.activations` and :mod:`lgd.losses`.
"""

from __future__ import annotations

import math
import re

_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def number_text(value: float) -> str:
    """A number short where that is exact (30, 0.5, 1e-05), else in full (0.1234567, 1234567.0, not
    1.23457e+06): labels that name a parameter (an entry's spec, a stepsize rule's, a file name) tell
    apart every two values that differ."""
    value = float(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def param_spec(name: str, param: float) -> str:
    """``name(param)`` with the parameter in :func:`number_text`, so that a spec read back (a result's
    metadata, a distributed sweep's batches) is the entry that was used."""
    return f"{name}({number_text(param)})"


def entry_of(spec, kind: str, base: type, factories: dict, own: dict):
    """The entry ``spec`` names (an instance of ``base``, 'name' or 'name(param)') in a catalog of
    ``factories``. An entry of the user's own (an instance whose name the catalog does not have) is kept in
    ``own`` by its spec when it is passed, so that the name it leaves in a result's metadata rebuilds it in
    this process (``run.model``, ``run.phase``, ``lgd.resume``)."""
    if isinstance(spec, base):
        if spec.name not in factories:
            own[spec.spec] = spec
        elif type(spec) is not factories[spec.name]:
            # Results name their entries: under the catalog's name, another formula would be rebuilt as the
            # catalog's (run.model, lgd.resume, a distributed batch) and be recorded as it.
            raise ValueError(f"{kind} {spec.name!r} is a {type(spec).__name__}, not the catalog's "
                             f"{factories[spec.name].__name__}: give an entry of your own a name of its own "
                             f"(the class attribute name = '...')")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{kind} must be a name or an {base.__module__}.{base.__name__}, got {type(spec).__name__}")
    if spec.strip() in own:
        return own[spec.strip()]
    return parse_spec(spec, kind, factories)


def parse_spec(spec: str, kind: str, factories: dict):
    """Build the catalog entry named by ``spec`` (``'name'`` or ``'name(param)'``)."""
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"cannot parse {kind} {spec!r}; expected 'name' or 'name(param)', "
                         f"one of {sorted(factories)}")
    name, arg = match.group(1), match.group(2)
    if name not in factories:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(factories))} ({article} {kind} of your "
                         f"own is known by name in a process once it has been passed as an object)")
    if arg is None or arg == "":
        return factories[name]()
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"{kind} {name!r}: parameter {arg!r} is not a number") from None
    try:
        return factories[name](value)
    except TypeError:
        raise ValueError(f"{kind} {name!r} takes no parameter, got {spec!r}") from None


def check_param(value: float, kind: str, name: str, *, low: float, high: float = math.inf,
                low_open: bool = True) -> float:
    """Return ``value`` as a float after checking it lies in the entry's valid range."""
    value = float(value)
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        opening, closing = "(" if low_open else "[", ")" if math.isinf(high) else "]"
        raise ValueError(f"{kind} {name}: parameter must lie in {opening}{low}, {high}{closing}, got {value}")
    return value
