"""Numba CPU kernels: whole GD runs of a two-layer net (or a linear model) in compiled code.

One kernel, :func:`run_team`, runs chunks of GD steps of a batch of configurations by a team of threads;
it is compiled (and cached on disk) once per dtype and product mode (fused loops or BLAS). The activation
and loss are runtime integer codes from the catalogs, dispatched once per row of m neurons or once per
sample, never inside a vectorised loop, so a sweep over activations, losses, their parameters or
stepsizes never recompiles. The modules, from the bottom up:

- compiler:   the kernel decorator, its cache (which notices an edit in any module here) and
              `subroutine`, which compiles a helper into the kernel that calls it;
- intrinsics: LLVM instructions numba cannot say in Python (fma, bit casts, vector code at the host's
              width, 64 bytes with AVX-512 else 32: LGD_VECTOR_BYTES overrides it; atomics);
- exp_log1p:  exp and log1p as arithmetic that vectorises;
- formulas:   the activations and losses (the one file to edit when adding either);
- tiles:      the two products, as register tiles or BLAS calls;
- step:       one step: the pass over a block of samples, records, divergence, update;
- tangent:    exact Hessian-vector products and the tangent map (Lyapunov exponents);
- sharpness:  the top Hessian eigenvalues by Lanczos on those products;
- team:       run_team and the named tuples of its arguments.

Nothing here checks arguments or knows about lgd's classes: :mod:`lgd.backends._numba` does.
"""

from .compiler import cache_unwritable
from .formulas import ACTIVATIONS, KNOWN, LOSSES, UNKNOWN_ACTIVATION, UNKNOWN_LOSS, product_form
from .intrinsics import PRODUCT_LANES, VECTOR_BYTES, tile_columns
from .step import COLUMN_GROUP
from .tangent import BLOCK as HVP_BLOCK
from .team import Batch, Buffers, Data, Schedule, Spec, Team, run_team, spin_while
from .tiles import waiting_samples, z_rows

__all__ = ["run_team", "spin_while", "Data", "Batch", "Spec", "Schedule", "Team", "Buffers", "ACTIVATIONS", "LOSSES",
           "KNOWN", "UNKNOWN_ACTIVATION", "UNKNOWN_LOSS", "waiting_samples", "z_rows", "HVP_BLOCK", "tile_columns",
           "VECTOR_BYTES", "COLUMN_GROUP", "PRODUCT_LANES", "product_form", "cache_unwritable"]
