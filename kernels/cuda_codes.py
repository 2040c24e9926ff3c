"""The codes the CUDA kernels share with the catalogs, and the generator of cuda/codes.cuh.

:func:`header` writes the activation codes of :mod:`lgd.activations`, the loss codes and the margin
rule of :mod:`lgd.losses`, the stepsize rules of :mod:`lgd.stepsize` and the bits of the kernels' fault
flag (:data:`FAULTS`) as the CUDA header
that cuda/lgd.cu includes; :func:`codes` reads a header's table back. The header is committed:
after changing a catalog, ``python -m lgd.kernels.cuda_codes`` rewrites it (a CPU test checks that
it is current). No cupy here, so that the header is generated and checked on any machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from lgd import activations, losses, stepsize

HEADER = Path(__file__).with_name("cuda") / "codes.cuh"
CATALOGS = {"activation": activations, "loss": losses}
PREFIX = {"activation": "ACT", "loss": "LOSS", "rule": "RULE"}
# lgd.stepsize's rules by name: its uppercase integer constants (a new rule there appears here).
RULES = {name.lower(): value for name, value in vars(stepsize).items()
         if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}
# Bits of the kernels' fault flag, by the kind of code a kernel met and has no formula for (it
# writes NaN there): the glue raises on any bit set.
FAULTS = {"activation": 1, "loss": 2}

TEMPLATE = """\
// Codes of the activations and losses, the margin rule and the fault bits of the CUDA kernels.
// Generated from lgd/activations.py and lgd/losses.py by lgd.kernels.cuda_codes: do not edit;
// after changing a catalog, run `python -m lgd.kernels.cuda_codes` to rewrite it.
#pragma once

namespace lgd {{

// lgd.activations.CODES
{activation}

// lgd.losses.CODES
{loss}

// lgd.stepsize's rules (the codes of lgd.stepsize.stepsize_at)
{rule}

// A kernel that meets a code it has no formula for sets its bit in the fault flag and writes NaN.
{faults}

// lgd.losses.MARGIN_CODES: these losses take the margin u = y f, the others the residual r = f - y.
__host__ __device__ constexpr bool is_margin_loss(int code) {{
    switch (code) {{
{margin_cases}
        return true;
    default:
        return false;
    }}
}}

}}  // namespace lgd
"""


def constant(kind: str, name: str) -> str:
    """The header's constant for catalog entry ``name`` of ``kind`` ('activation' or 'loss'): ACT_RELU."""
    return f"{PREFIX[kind]}_{name.upper()}"


def header() -> str:
    """The text of cuda/codes.cuh, built from the catalogs."""
    tables = {kind: "\n".join(f"constexpr int {constant(kind, name)} = {code};"
                              for name, code in catalog.CODES.items())
              for kind, catalog in CATALOGS.items()}
    tables["rule"] = "\n".join(f"constexpr int {constant('rule', name)} = {code};"
                                for name, code in sorted(RULES.items(), key=lambda item: item[1]))
    faults = "\n".join(f"constexpr int FAULT_UNKNOWN_{kind.upper()} = {bit};" for kind, bit in FAULTS.items())
    margin_cases = "\n".join(f"    case {constant('loss', name)}:" for name, code in losses.CODES.items()
                             if code in losses.MARGIN_CODES)
    return TEMPLATE.format(**tables, faults=faults, margin_cases=margin_cases)


def codes(text: str | None = None) -> dict[str, dict[str, int]]:
    """The codes a header defines (the committed cuda/codes.cuh by default), by kind and entry name."""
    text = HEADER.read_text() if text is None else text
    return {kind: {name.lower(): int(code)
                   for name, code in re.findall(rf"constexpr int {prefix}_(\w+) = (-?\d+);", text)}
            for kind, prefix in PREFIX.items()}


def main() -> None:
    HEADER.write_text(header())
    print(f"wrote {HEADER}")


if __name__ == "__main__":
    main()
