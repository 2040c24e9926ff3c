"""The compile machinery of the numba kernels: the kernel decorator, its on-disk cache and `subroutine`.

What lives here: :data:`kernel` (numba's njit as every entry point of this folder uses it, with a cache
that notices edits anywhere in the folder and keeps one index per vector width), :func:`subroutine` (a
helper compiled into the code library of the kernel that calls it), :data:`VECTOR_BYTES` (the width of
the register tiles' vectors, decided once per process from the CPU numba compiles for or from
``LGD_VECTOR_BYTES``) and the numba internals all of it needs, imported in one place so that a numba
without them fails with a message naming what is missing. Nothing here computes anything.
"""

import hashlib
import inspect
import os
import sys
import weakref
from pathlib import Path

import numba
from numba import njit, types
from numba.extending import intrinsic

# The kernels lean on numba internals (compile_internal, Flags, code-library linkage, the cache's index
# file). setup.py bounds numba to the versions they were tested with; a numba outside those bounds that
# lacks one of them should say which, not fail somewhere in a compile.
TESTED_NUMBA = "0.68"


def _internal(module: str, name: str):
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        raise ImportError(f"lgd's numba kernels need {module}.{name}, which numba {numba.__version__} does not "
                          f"have; lgd is tested with numba {TESTED_NUMBA}.x (pip install 'numba=={TESTED_NUMBA}.*')"
                          ) from None


Flags = _internal("numba.core.compiler", "Flags")
compile_internal = _internal("numba.core.compiler", "compile_internal")
FunctionCache = _internal("numba.core.caching", "FunctionCache")
IndexDataCacheFile = _internal("numba.core.caching", "IndexDataCacheFile")
impl_ret_borrowed = _internal("numba.core.imputils", "impl_ret_borrowed")

CACHE = True
FOLDER = Path(__file__).resolve().parent

# The register tiles' vector width in bytes: AVX2's 32, or AVX-512's 64 where numba's target has avx512f
# (LLVM splits 64-byte vectors into two on AVX2, so either width runs anywhere, correctly). The variable
# overrides the choice, for tests and measurements; it is read when this module is imported, that is
# before anything compiles, and holds for the whole process (compiled code cannot change width).
VECTOR_BYTES_VARIABLE = "LGD_VECTOR_BYTES"
VECTOR_WIDTHS = (32, 64)


def target_avx512() -> bool:
    """Whether the CPU numba compiles for has AVX-512 (avx512f). numba targets the host unless NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES say otherwise (portable caches): the same features decide here, and numba's cache keys
    its entries on them."""
    from numba.core import codegen, config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return "+avx512f" in features.split(",")


def target_vector_bytes() -> int:
    """64 where the CPU numba compiles for has AVX-512 (:func:`target_avx512`), else 32."""
    return 64 if target_avx512() else 32


def target_cpu_name() -> str:
    """The CPU numba compiles for, as LLVM names it: NUMBA_CPU_NAME where set, else the host's."""
    from llvmlite import binding
    from numba.core import config

    return config.CPU_NAME or binding.get_host_cpu_name()


def amd_zen(cpu: str) -> bool:
    """Whether `cpu` (an LLVM CPU name) is one of AMD's Zen cores (znver*)."""
    return cpu.startswith("znver")


def amd_zen_target() -> bool:
    """Whether numba compiles for one of AMD's Zen cores. The choices measured on Intel's AVX-512 cores and
    not on every Zen core take it from here: exp_log1p.ONE_DIVISION, and lgd.backends._numba's bound on d
    for the BLAS mode of large inputs (blas_bound_d, per Zen core where measured)."""
    return amd_zen(target_cpu_name())


def vector_bytes(environ=os.environ) -> int:
    """The vector width of this process: LGD_VECTOR_BYTES (32 or 64) if set, else :func:`target_vector_bytes`."""
    chosen = environ.get(VECTOR_BYTES_VARIABLE, "").strip()
    if not chosen:
        return target_vector_bytes()
    if chosen not in {str(width) for width in VECTOR_WIDTHS}:
        raise ValueError(f"{VECTOR_BYTES_VARIABLE}={chosen!r}: the vector width in bytes must be one of "
                         f"{', '.join(map(str, VECTOR_WIDTHS))} (or unset: from the CPU)")
    return int(chosen)


VECTOR_BYTES = vector_bytes()

# The same width for the loops LLVM vectorises itself (the activations' and losses' elementwise loops): its
# tuning for Intel's AVX-512 parts (skylake-avx512 to graniterapids, and rocketlake, which is what LLVM
# names a Xeon whose model number a hypervisor masks) prefers 32-byte vectors, and would build those loops
# at half the register's width (exp 1.5x slower on such a host, docs/performance.md). A function attribute
# overrides the tuning for lgd's kernels only, not for other numba code in the process.
PREFER_VECTOR_WIDTH = f'"prefer-vector-width"="{VECTOR_BYTES * 8}"'


def prefer_vector_width(function) -> None:
    """Give an llvmlite.ir function PREFER_VECTOR_WIDTH. llvmlite's attribute set admits only the enum
    attributes it knows; a string attribute is written into the IR as given, so it is added to the set
    directly."""
    set.add(function.attributes, PREFER_VECTOR_WIDTH)


def _sources() -> list:
    """The files a kernel's machine code depends on: this folder's modules and the lgd modules they import
    (the catalogs' codes, the record rule, the log-risk rule, the stepsize rules, exp's and log1p's
    constants)."""
    import lgd.activations
    import lgd.backends
    import lgd.losses
    import lgd.models
    import lgd.stepsize

    upstream = [Path(module.__file__) for module in (lgd.activations, lgd.losses, lgd.backends, lgd.models,
                                                     lgd.stepsize)]
    return sorted(FOLDER.glob("*.py")) + upstream + [FOLDER.parent / "polynomials.py"]


def sources_hash() -> str:
    """SHA-256 of every source a kernel is compiled from (see :func:`_sources`)."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class FolderCache(FunctionCache):
    """numba's on-disk cache of one kernel, its index stamped with :func:`sources_hash` and the vector width,
    one index (and data files) per vector width.

    numba stamps a cached kernel with its own module's source only: an edit in another module (a formula,
    a tile) would load the stale machine code. With the hash of every source in the stamp, any edit
    invalidates the index, and the next call compiles afresh. numba keys the entries of an index on the
    CPU's name and features, not on LGD_VECTOR_BYTES: the width in the stamp keeps a kernel of one width
    from ever loading as the other's, and in the file name it keeps the two widths from overwriting each
    other's index (a stamp that differs empties the index on the next save), so processes of either width
    share one cache folder and both load.
    """

    def __init__(self, py_func, width=None):
        super().__init__(py_func)
        width = VECTOR_BYTES if width is None else width
        stamp = (self._impl.locator.get_source_stamp(), sources_hash(), f"vector_bytes={width}")
        self._cache_file = IndexDataCacheFile(cache_path=self._cache_path,
                                              filename_base=f"{self._impl.filename_base}-v{width}",
                                              source_stamp=stamp)


def kernel(func):
    """An entry point called from Python: njit, nogil, numpy's error model, cached by :class:`FolderCache`
    (uncached where no folder for the cache can be written: see :func:`uncached`)."""
    dispatcher = njit(error_model="numpy", nogil=True)(func)
    if CACHE:
        try:
            dispatcher._cache = FolderCache(dispatcher.py_func)
        except RuntimeError as exc:
            if not no_cache_folder(exc):
                raise
            uncached()
    return dispatcher


_UNCACHED = []


def no_cache_folder(exc: RuntimeError) -> bool:
    """Whether numba raised `exc` because it found no folder it can write a cache to ("no locator available")."""
    return "no locator available" in str(exc)


def cache_unwritable() -> bool:
    """Whether the kernels compile uncached in this process (:func:`uncached`)."""
    return bool(_UNCACHED)


def uncached() -> None:
    """Say once on stderr that the kernels compile in every process: numba found no folder to cache them in
    that it can write (the package's __pycache__, ~/.cache/numba, NUMBA_CACHE_DIR); as a read-only install run
    by a user whose home cannot be written. They still compile and run."""
    if not _UNCACHED:
        _UNCACHED.append(True)
        print("lgd: numba finds no folder it can write its cache to (the package's __pycache__, ~/.cache/numba): "
              "the kernels compile in every process; set NUMBA_CACHE_DIR to a writable folder to keep them",
              file=sys.stderr, flush=True)


# Code libraries (one per compiled kernel) -> {(function, (signature, counted)): compile result} of the
# subroutines lowered into them.
_SUBROUTINES = weakref.WeakKeyDictionary()


def subroutine(returns, pick=None, counted=True):
    """Decorator: a helper compiled into the code library of the kernel that calls it.

    An njit helper is a library of its own: numba optimises it and generates its machine code, then
    links it into each caller and does both again there, so a chain of helpers is compiled once per
    level. A subroutine is typed and lowered once per signature straight into the calling kernel's
    library (where LLVM inlines it as usual) and compiled to machine code once, with the kernel.
    `returns` is the return type, or a function of the argument types that gives it; `pick`, if given,
    a function of the argument types that gives the Python function to compile instead of the
    decorated one (one name for per-dtype implementations). Callable from compiled code only; the
    Python function stays reachable as `.implementation`. Error model numpy, as the kernels:
    divisions carry no zero checks. A branch on an argument that is None is pruned at compile time,
    which is how one kernel leaves out the product mode it does not run. `counted` False compiles it,
    and every subroutine it calls, without NRT reference counts (numba increfs an array argument at
    a helper's entry and decrefs it at its exits, and its pruning pass removes that pair only in simple
    control flow: atomics at every call, on cache lines a team's threads share): only for a void helper
    that allocates nothing (a compile error otherwise) and keeps no array beyond the call, whose
    arrays its caller holds for the whole call. Each subroutine is compiled once per signature and
    per counting mode.
    """
    def decorate(func):
        def signature(args):
            result = returns if isinstance(returns, types.Type) else returns(*args)
            if result is None:
                return None

            def codegen(context, builder, signature, values):
                library = context.active_code_library
                compiled = _SUBROUTINES.setdefault(library, {})
                implementation = func if pick is None else pick(*signature.args)
                if not counted and context.enable_nrt:
                    context = context.subtarget(enable_nrt=False)
                key = (implementation, (signature, context.enable_nrt))
                if key not in compiled:
                    flags = Flags()
                    flags.error_model = "numpy"
                    flags.nrt = context.enable_nrt
                    flags.no_compile = True
                    flags.no_cpython_wrapper = True
                    flags.no_cfunc_wrapper = True
                    compiled[key] = compile_internal(context.typing_context, context, library, implementation,
                                                     signature.args, signature.return_type, flags, locals={})
                    # linkonce_odr, as numba makes a linked njit function: LLVM inlines it where it pays
                    # (the loops that call exp must, to vectorise) and drops the rest.
                    library.get_function(compiled[key].fndesc.llvm_func_name).linkage = "linkonce_odr"
                # Every function that calls a subroutine (and so every kernel, and every loop that calls
                # exp or log1p, once inlined) is vectorised at the process's width.
                prefer_vector_width(builder.function)
                return context.call_internal(builder, compiled[key].fndesc, signature, values)
            return result(*args), codegen
        # The typer takes func's parameters by name (numba reads them to fold a call's arguments).
        params = ", ".join(inspect.signature(func).parameters)
        namespace = {"signature": signature}
        exec(f"def {func.__name__}(typingctx, {params}):\n    return signature(({params},))\n", namespace)
        typer = namespace[func.__name__]
        typer.__doc__ = func.__doc__
        compiled_helper = intrinsic(typer)
        compiled_helper.implementation = func
        return compiled_helper
    return decorate
