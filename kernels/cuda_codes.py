"""The codes the CUDA kernels share with the catalogs, and the generator of cuda/codes.cuh.

:func:`header` writes the activation codes of :mod:`lgd.activations`, the loss codes and the margin
rule of :mod:`lgd.losses`, the stepsize rules of :mod:`lgd.stepsize`, the bits of the kernels' fault
flag (:data:`FAULTS`) and the float64 exp's and log1p's constants of :mod:`lgd.kernels.polynomials`
(:data:`CONSTANTS`, shared with the numba kernels) as the CUDA header that cuda/lgd.cu includes;
:func:`codes` reads a header's table back. The header is committed: after changing a catalog or a
constant, ``python -m lgd.kernels.cuda_codes`` rewrites it (a CPU test checks that it is current). No
cupy here, so that the header is generated and checked on any machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from lgd import activations, losses, stepsize
from lgd.kernels import polynomials

HEADER = Path(__file__).with_name("cuda") / "codes.cuh"
CATALOGS = {"activation": activations, "loss": losses}
PREFIX = {"activation": "ACT", "loss": "LOSS", "rule": "RULE"}
# lgd.stepsize's rules by name: its uppercase integer constants (a new rule there appears here).
RULES = {name.lower(): value for name, value in vars(stepsize).items()
         if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}
# Bits of the kernels' fault flag, by the kind of code a kernel met and has no formula for (it
# writes NaN there): the glue raises on any bit set.
FAULTS = {"activation": 1, "loss": 2}
# The constants of cuda/formulas.cuh's float64 exp and log1p, by their name in the header.
CONSTANTS = {"EXP_INV_LN2": polynomials.INV_LN2, "EXP_LN2_HI": polynomials.LN2_HI, "EXP_LN2_LO": polynomials.LN2_LO,
             "EXP_SHIFTER": polynomials.SHIFTER,
             **{f"EXP_P{i + 1}": c for i, c in enumerate(polynomials.EXP_P)},
             **{f"LOG1P_G{i}": c for i, c in enumerate(polynomials.LOG1P_G)}}

TEMPLATE = """\
// Codes of the activations and losses, the margin rule, the fault bits and exp's and log1p's constants of the
// CUDA kernels. Generated from lgd/activations.py, lgd/losses.py, lgd/stepsize.py and lgd/kernels/polynomials.py
// by lgd.kernels.cuda_codes: do not edit; after changing one of them, run `python -m lgd.kernels.cuda_codes`
// to rewrite it.
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

// lgd.kernels.polynomials: the float64 exp's and log1p's constants (formulas.cuh; numba_cpu/exp_log1p.py
// evaluates the same ones and says how they were fitted).
{constants}
constexpr long long EXP_SHIFTER_BITS = {shifter_bits:#x}LL;

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
    constants = "\n".join(f"constexpr double {name} = {float(value)!r};" for name, value in CONSTANTS.items())
    return TEMPLATE.format(**tables, faults=faults, margin_cases=margin_cases, constants=constants,
                           shifter_bits=polynomials.SHIFTER_BITS)


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
