"""The ``lgd`` command line: ``lgd run`` (the main job), ``lgd sweep`` (a grid, here or on a Dask cluster)
and ``lgd info``.

``lgd run`` with no arguments runs GD on the embedded XOR data (leaky softplus c = 0.5, mean-field
two-layer net, logistic loss) at one small and two large stepsizes, prints a table of the phases,
and writes the traces, a JSON summary and a figure into an output folder. The folder is checked
before any work; Ctrl-C ends any command with ``lgd: interrupted`` and exit code 130, and ``lgd run``
interrupted while GD runs first writes what it has.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._catalog import number_text
from .results import risk_text

DEFAULT_STEPSIZES = (30.0, 1000.0, 3000.0)
# The two-layer network's options and their defaults (`lgd run --model linear` refuses the others set).
NETWORK_DEFAULTS = {"width": 20, "activation": "leaky_softplus(0.5)", "scaling": "mean_field", "outer": "alternating",
                    "train_outer": False}
# The file `lgd sweep` writes its grid to, by --format; netCDF3 (scipy's engine) holds 32-bit integers only.
GRID_FILES = {"zarr": "grid.zarr", "netcdf": "grid.nc"}
NETCDF_LARGEST_INT = 2**31 - 1


def _stepsizes(text: str) -> list:
    parts = text.replace(" ", "").split(",")
    if "" in parts[:-1] or parts == [""]:
        raise argparse.ArgumentTypeError(f"stepsizes must be comma-separated numbers, got {text!r} (an empty entry)")
    try:
        values = [float(v) for v in parts if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"stepsizes must be comma-separated numbers (or A:B:N for lgd sweep), got "
                                         f"{text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one stepsize")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"stepsizes must be positive and finite, got {bad}")
    return values


def _grid_stepsizes(text: str) -> list:
    """``A:B:N`` (N stepsizes log-spaced from A to B) or a comma-separated list."""
    if text.count(":") == 2:
        low, high, count = text.split(":")
        try:
            low, high, count = float(low), float(high), int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"stepsizes A:B:N needs two numbers and a count, got {text!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high) or count < 1:
            raise argparse.ArgumentTypeError(f"stepsizes A:B:N needs 0 < A <= B (finite) and N >= 1, got {text!r}")
        if count == 1 and low != high:
            raise argparse.ArgumentTypeError(f"stepsizes A:B:N with N = 1 would hold A alone; give N >= 2, or A:A:1, "
                                             f"got {text!r}")
        # A and B exactly, and the values between at 15 significant digits, so that the decades of 0.5:500:4
        # are 5 and 50 as written, where geomspace gives 4.999999999999999 and 49.99999999999999.
        values = [low, *(float(f"{v:.15g}") for v in np.geomspace(low, high, count)[1:-1].tolist()), high][:count]
    else:
        values = _stepsizes(text)
    twice = sorted({value for value in values if values.count(value) > 1})
    if twice:  # the grid's stepsize axis: each value once
        raise argparse.ArgumentTypeError(f"stepsizes must be distinct, got {', '.join(f'{v:g}' for v in twice)} "
                                         "more than once")
    return values


def _integers(text: str, name: str, low: int) -> list:
    """A comma-separated list of integers >= low, or a range A:B (A, A + 1, ..., B - 1)."""
    try:
        if ":" in text:
            first, stop = (int(v) for v in text.split(":"))
            values = list(range(first, stop))
        else:
            values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers or a range A:B, got {text!r}") \
            from None
    if not values or min(values) < low or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{name} must be distinct integers >= {low}, at least one, got {text!r}")
    return values


def _seeds_text(seeds: list) -> str:
    """Seeds for a header: a long run of consecutive ones as its range A:B."""
    if len(seeds) > 6 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}:{seeds[0] + len(seeds)}"
    return str(seeds)


def _names(text: str) -> list:
    from .data import NAMES

    names = [v for v in text.replace(" ", "").split(",") if v]
    embedded = [name for name in NAMES if name not in ("mnist", "cifar10")]
    bad = [name for name in names if name not in embedded]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--dataset takes distinct names among {', '.join(embedded)}, got {text!r}")
    return names


def _scaling(text: str):
    if text in ("mean_field", "ntk"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scaling must be 'mean_field', 'ntk' or a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lgd", description="Large-stepsize gradient descent on two-layer networks.")
    parser.add_argument("--version", action="version", version=f"lgd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run GD at several stepsizes: table, traces and figure",
                              description="Run GD at several stepsizes on one dataset and report both phases.")
    data = run.add_argument_group("data")
    data.add_argument("--dataset", default="xor", help="xor, fig4, wu_toy, separable, digits, mnist, cifar10")
    data.add_argument("--n", type=int, default=None,
                      help="number of training points (100 for xor if omitted; the others' own size)")
    data.add_argument("--data-path", default=None, help="folder holding the MNIST or CIFAR-10 files")
    model = run.add_argument_group("model")
    model.add_argument("--model", choices=("two_layer", "linear"), default="two_layer",
                       help="a two-layer network or logistic regression (default: %(default)s)")
    model.add_argument("--width", type=int, default=NETWORK_DEFAULTS["width"],
                       help="hidden neurons m (default: %(default)s)")
    _network_options(model)
    gd = run.add_argument_group("gradient descent")
    gd.add_argument("--loss", default="logistic",
                    help="logistic, exponential, flattened_exponential(a), flattened_polynomial(a), squared "
                         "(default: %(default)s)")
    gd.add_argument("--stepsizes", type=_stepsizes, default=list(DEFAULT_STEPSIZES),
                    help="comma-separated stepsizes (default: 30,1000,3000)")
    gd.add_argument("--steps", type=int, default=20000, help="GD steps of each run (default: %(default)s)")
    gd.add_argument("--seed", type=int, default=0, help="the seed of the initial weights (default: %(default)s)")
    _start_and_compute_options(gd, record_every=1)
    out = run.add_argument_group("output")
    out.add_argument("--out", default="lgd-out", help="output folder (default: %(default)s)")
    out.add_argument("--no-plot", action="store_true", help="skip the figure")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")

    _configure_sweep(commands.add_parser(
        "sweep", help="a grid of stepsizes, seeds, widths and datasets, here or on a Dask cluster",
        description="Run GD over a grid (stepsizes x seeds for every dataset and width), in this process, on a "
                    "local Dask cluster (--workers) or an existing one (--scheduler); write the dataset, a JSON "
                    "summary and a figure of the final risk against the stepsize."))
    commands.add_parser("info", help="versions and which backends can run here")
    for name, (module, help_text) in PLUGGED_COMMANDS.items():
        importlib.import_module(module).configure(commands.add_parser(name, help=help_text, description=help_text))
    return parser


def _network_options(model) -> None:
    """The options of the network that `lgd run` and `lgd sweep` share, into the argument group `model`."""
    model.add_argument("--activation", default=NETWORK_DEFAULTS["activation"],
                       help="leaky_softplus(c), softplus, relu, leaky_relu(c), gelu, silu, tanh, identity "
                            "(default: %(default)s)")
    model.add_argument("--scaling", type=_scaling, default=NETWORK_DEFAULTS["scaling"],
                       help="mean_field (1/m), ntk (1/sqrt(m)) or a number (default: %(default)s)")
    model.add_argument("--outer", choices=("alternating", "random"), default=NETWORK_DEFAULTS["outer"],
                       help="the outer weights a_j: +1, -1, +1, ... or random signs (default: %(default)s)")
    model.add_argument("--train-outer", action="store_true", help="train the outer weights too")


def _start_and_compute_options(gd, record_every: int) -> None:
    """The starting point, recording and compute options that `lgd run` and `lgd sweep` share, into `gd`."""
    gd.add_argument("--init", choices=("normal", "zeros"), default="normal",
                    help="W_0 ~ N(0, init-scale^2) or zero (default: %(default)s)")
    gd.add_argument("--init-scale", type=float, default=1.0,
                    help="the standard deviation of a normal W_0 (default: %(default)s)")
    gd.add_argument("--record-every", type=int, default=record_every,
                    help="record the traces every this many steps (and the last) (default: %(default)s)")
    gd.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "cupy"),
                    help="where the steps run; auto: numba when installed (default: %(default)s)")
    gd.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="(default: %(default)s)")


def _configure_sweep(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("grid")
    data.add_argument("--dataset", type=_names, default=["xor"],
                      help="comma-separated embedded datasets: xor, fig4, wu_toy, separable, digits (default: xor)")
    data.add_argument("--n", type=int, default=None,
                      help="training points per dataset (100 for xor if omitted, as lgd run; the others' own size)")
    data.add_argument("--widths", type=lambda text: _integers(text, "widths", 1), default=[20],
                      help="comma-separated widths (default: 20)")
    data.add_argument("--stepsizes", type=_grid_stepsizes, default=_grid_stepsizes("1e-1:1e3:16"),
                      help="A:B:N for N log-spaced stepsizes from A to B, or a comma-separated list "
                           "(default: 1e-1:1e3:16)")
    data.add_argument("--seeds", type=lambda text: _integers(text, "seeds", 0), default=[0],
                      help="comma-separated seeds or a range A:B (default: 0)")
    model = parser.add_argument_group("model")
    _network_options(model)
    gd = parser.add_argument_group("gradient descent")
    gd.add_argument("--loss", default="logistic",
                    help="logistic, exponential, flattened_exponential(a), flattened_polynomial(a), squared")
    gd.add_argument("--steps", type=int, default=2000)
    _start_and_compute_options(gd, record_every=10)
    where = parser.add_argument_group("where it runs (default: in this process)")
    cluster = where.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None,
                         help="start a local Dask cluster of N worker processes (one thread each)")
    cluster.add_argument("--scheduler", default=None, help="the address of a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--batch-size", type=int, default=None, help="configurations per batch (default: about 4 "
                                                                      "batches per worker thread)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="lgd-sweep", help="output folder (default: %(default)s)")
    out.add_argument("--zarr", "--checkpoint", dest="store", default=None,
                     help="a zarr store each batch is written into as it finishes; run the command again with it to "
                          "skip the batches that finished")
    out.add_argument("--format", choices=("zarr", "netcdf"), default="zarr",
                     help="the dataset in the output folder: grid.zarr or grid.nc (default: zarr)")
    out.add_argument("--no-plot", action="store_true", help="skip the figure")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")


def _refused_early(args, lgd):
    """The options `lgd run` and `lgd sweep` share, checked before any folder, store or cluster is made: counts,
    the loss, the initial scale, the backend (here), dtype and a progress bar that needs tqdm. Returns the
    Compute."""
    from .driver import check_init_scale

    for name in ("steps", "record_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    lgd.losses.get(args.loss)
    check_init_scale(args.init_scale, args.init, None)
    compute = lgd.Compute(backend=args.backend, dtype=args.dtype, progress=args.progress)
    lgd.backends.resolve(compute.backend)
    if args.progress and importlib.util.find_spec("tqdm") is None:
        raise ImportError('--progress needs tqdm: pip install tqdm (or "lgd[progress]")')
    return compute


def _sweep(args) -> int:
    import lgd
    from ._json import to_json
    from . import distributed
    from .driver import _check_seeds
    from .results import SweepStore

    try:
        compute = _refused_early(args, lgd)
        for name in ("workers", "batch_size", "n"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        # Everything that can be refused is, before the output folder, the store or a cluster is made.
        needs = {"xarray": ("the grid's dataset", "lgd[distributed]")}
        if args.format == "zarr" or args.store:
            needs["zarr"] = ("a zarr store", "lgd[distributed]")
        if args.format == "netcdf":
            needs["scipy"] = ("--format netcdf (scipy's netCDF3 writer)", "lgd[analysis]")
        for module, (need, extra) in needs.items():
            if importlib.util.find_spec(module) is None:
                raise ImportError(f"{need} needs {module}: pip install \"{extra}\"")
        datasets = {}
        for name in args.dataset:
            kwargs = {} if args.n is None else {"n": args.n}
            if name == "xor" and args.n is None:
                kwargs["n"] = 100  # as lgd run
            datasets[name] = lgd.data.load(name, **kwargs)
        for width in args.widths:
            lgd.TwoLayerNet(width, activation=args.activation, scaling=args.scaling, outer=args.outer,
                            train_outer=args.train_outer)
        _check_seeds(args.seeds)
        if args.format == "netcdf" and max(args.seeds) > NETCDF_LARGEST_INT:
            raise ValueError(f"--format netcdf writes netCDF3, whose integers have 32 bits: seeds up to "
                             f"{NETCDF_LARGEST_INT} (or --format zarr)")
        store = None if args.store is None else Path(args.store).resolve()
        if store is not None and store in {(Path(args.out) / name).resolve() for name in GRID_FILES.values()}:
            raise ValueError(f"--zarr {args.store} is where the finished grid is written (--out): give the store "
                             "a path of its own")
        if store is not None:
            SweepStore(args.store).prepare()
        header = (f"{', '.join(args.dataset)}; widths {args.widths}; {len(args.stepsizes)} stepsizes "
                  f"{min(args.stepsizes):g}..{max(args.stepsizes):g}; seeds {_seeds_text(args.seeds)}; "
                  f"{lgd.losses.get(args.loss).spec} loss; {args.steps} steps")
        out = output_folder(args.out)
        with _cluster(args) as client:
            where = "this process" if client is None else f"Dask scheduler {client.scheduler.address}"
            print(f"{header}; on {where}", flush=True)
            result = distributed.grid(datasets, args.widths, args.stepsizes, args.steps, args.seeds, loss=args.loss,
                                      activation=args.activation, scaling=args.scaling, outer=args.outer,
                                      train_outer=args.train_outer, init=args.init, init_scale=args.init_scale,
                                      record=lgd.Record(every=args.record_every), compute=compute, client=client,
                                      batch_size=args.batch_size, store=args.store)
    except KeyboardInterrupt:
        kept = (f"the batches that had finished are in {args.store} (if any had), and the same command continues "
                "from them" if args.store else "nothing was kept (--zarr STORE keeps each batch as it finishes, for "
                "a rerun to continue from)")
        print(f"lgd sweep: interrupted; {kept}", file=sys.stderr)
        raise
    except (ValueError, TypeError, ImportError, FileNotFoundError, OSError, MemoryError,
            lgd.BackendUnavailable) as exc:
        print(f"lgd sweep: error: {exc}", file=sys.stderr)
        return 2
    dataset = result.to_xarray()
    # Written beside the earlier results first, which go only once the new grid is whole.
    path = out / GRID_FILES[args.format]
    partial = out / f".{path.name}.partial"
    _remove(partial)
    try:
        if args.format == "zarr":
            dataset.to_zarr(partial, mode="w", zarr_format=2, consolidated=True)
        else:
            dataset.to_netcdf(partial)
    except (ValueError, TypeError, OSError) as exc:
        _remove(partial)
        print(f"lgd sweep: error: the grid could not be written to {path}: {exc}", file=sys.stderr)
        return 1
    clear_previous(out)
    _remove(path)
    os.replace(partial, path)
    summary = {"header": header, "datasets": list(result.datasets), "widths": list(result.widths),
               "stepsizes": args.stepsizes, "seeds": args.seeds, "steps": args.steps, "store": args.store,
               "dataset": str(path), "activation": args.activation, "scaling": args.scaling, "outer": args.outer,
               "train_outer": args.train_outer, "loss": args.loss, "init": args.init, "init_scale": args.init_scale,
               "dtype": args.dtype, "cells": []}
    print(f"{'dataset':>10} {'width':>6} {'configs':>8} {'diverged':>9} {'best log10 risk':>16} {'at stepsize':>12}")
    for (name, width), cell in result:
        log10_risk = distributed.final_log10_risk(cell)
        best = int(np.nanargmin(log10_risk)) if np.isfinite(log10_risk).any() else None
        diverged = int(np.sum(cell.diverged_step >= 0))
        summary["cells"].append({
            "dataset": name, "width": width, "configs": len(cell), "diverged": diverged, "seconds": cell.seconds,
            "steps_per_second": cell.steps_per_second, "backend": cell.meta["backend"],
            "configurations": [{"stepsize": float(eta), "seed": int(seed), "status": status,
                                "steps_taken": int(taken), "final_log10_risk": float(risk)}
                               for eta, seed, status, taken, risk in zip(cell.stepsize, cell.seed, cell.status,
                                                                         cell.steps_taken, log10_risk)]})
        print(f"{name:>10} {width:>6} {len(cell):>8} {diverged:>9} "
              f"{'-' if best is None else f'{log10_risk[best]:.3f}':>16} "
              f"{'-' if best is None else f'{cell.stepsize[best]:g}':>12}")
    written = [path]
    if not args.no_plot:
        try:
            distributed.save_grid_figure(result, out / "figure.png", title=header)
            written.append(out / "figure.png")
        except ImportError as exc:
            print(f"lgd sweep: no figure: {exc}", file=sys.stderr)
    summary["files"] = [file.name for file in written] + ["summary.json"]
    (out / "summary.json").write_text(to_json(summary) + "\n")
    print("wrote " + ", ".join(str(out / name) for name in summary["files"]))
    return 0


@contextlib.contextmanager
def _cluster(args):
    """The Dask client of --workers (a LocalCluster of processes, closed afterwards) or --scheduler; None."""
    if args.workers is None and args.scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError('--workers and --scheduler need dask.distributed: pip install "lgd[distributed]"') from None
    if args.scheduler is not None:
        with Client(args.scheduler, timeout="30s") as client:
            yield client
        return
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) \
            as cluster, Client(cluster) as client:
        yield client


# Subcommands that live in their own modules: each has configure(parser) and main(args) -> int and
# imports nothing heavy at module level (the parser is built on every `lgd` call).
PLUGGED_COMMANDS: dict = {
    "bench": ("lgd.benchmark", "throughput benchmarks against NumPy, PyTorch and JAX"),
    "reproduce": ("lgd.reproduce",
                  "reproduce a figure of the literature: fig4, xor, digits, acceleration, eos, balancing, regimes, "
                  "orbits, chaos, adaptive; mnist, cifar10 from local files (--data-path)"),
}


def main(argv=None) -> int:
    """Run the ``lgd`` command line; returns the exit code (130 after Ctrl-C, wherever it came)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("lgd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout stopped reading (`lgd run | head`): what the command writes to files is written
        # by then; stdout goes to /dev/null so that Python's flush at exit does not fail again. 128 + SIGPIPE.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "info":
        print(info())
        return 0
    if args.command in PLUGGED_COMMANDS:
        return importlib.import_module(PLUGGED_COMMANDS[args.command][0]).main(args)
    parser.print_help()
    return 0


def output_folder(path) -> Path:
    """Create the output folder ``path`` (with its parents) and check that files can be written into it
    (a probe file, removed again), so that a folder lgd cannot write fails before any work.

    Raises ValueError naming the problem: a path that is a file, a parent that is a file, or a folder
    that cannot be created or written (the system's reason, e.g. permission denied).
    """
    if not os.fspath(path):
        raise ValueError("the output folder is named by an empty path; name a folder (--out FOLDER)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is a file, not a folder")
    blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"output folder {out} cannot be created: {blocking} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lgd-write-check-", dir=out)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write into the output folder {out}: {exc.strerror or exc}") from None
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _remove(path: Path) -> None:
    """Remove the file or folder `path`, if there is one."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clear_previous(out: Path) -> None:
    """Remove what an earlier ``lgd run`` or ``lgd sweep`` wrote into the folder ``out``: the files its
    summary.json lists under "files" (names in the folder, nothing else), so that the folder holds one
    command's results, not traces or a figure of an earlier run with other options beside them."""
    import json

    try:
        files = json.loads((out / "summary.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            continue
        _remove(out / name)


def _load_data(args):
    from . import data

    kwargs = {}
    if args.n is not None:
        kwargs["n"] = args.n
    if args.dataset in ("mnist", "cifar10"):
        if args.data_path is None:
            raise ValueError(f"--dataset {args.dataset} needs --data-path pointing at the local files")
        kwargs["path"] = args.data_path
    elif args.data_path is not None:
        raise ValueError(f"--dataset {args.dataset} is embedded: --data-path is for mnist and cifar10")
    if args.dataset == "xor" and "n" not in kwargs:
        kwargs["n"] = 100
    return data.load(args.dataset, **kwargs)


def _run(args) -> int:
    import lgd
    from ._json import to_json
    from .driver import _LARGEST_SEED as LARGEST_SEED
    from .driver import _HeldInterrupt

    try:
        compute = _refused_early(args, lgd)
        X, y = _load_data(args)
        unused = [name for name, default in NETWORK_DEFAULTS.items() if getattr(args, name) != default]
        if args.model == "linear" and unused:
            raise ValueError(f"--model linear has no hidden layer: {', '.join(_flag(name) for name in unused)} "
                             "apply to --model two_layer")
        model = lgd.Linear() if args.model == "linear" else lgd.TwoLayerNet(
            args.width, activation=args.activation, scaling=args.scaling, outer=args.outer,
            train_outer=args.train_outer)
        if not 0 <= args.seed <= LARGEST_SEED:
            raise ValueError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
        out = output_folder(args.out)
        header = (f"{args.dataset} (n={X.shape[0]}, d={X.shape[1]}), {model.describe()}, "
                  f"{lgd.losses.get(args.loss).spec} loss, {args.steps} steps, seed {args.seed}, "
                  f"{lgd.backends.resolve(args.backend, X).name} backend, {args.dtype}")
        print(header, flush=True)
        # One batched call for all stepsizes: the backend runs the configs side by side.
        grid = lgd.sweep(X, y, model, args.loss, stepsizes=args.stepsizes, steps=args.steps, seeds=(args.seed,),
                         init=args.init, init_scale=args.init_scale, record=lgd.Record(every=args.record_every),
                         compute=compute)
    except (ValueError, TypeError, ImportError, FileNotFoundError, MemoryError, lgd.BackendUnavailable) as exc:
        print(f"lgd run: error: {exc}", file=sys.stderr)
        return 2

    # The files first, then the table: a reader that stops reading early (`lgd run | head`) loses no result.
    runs = list(grid)
    # A Ctrl-C while the files are written waits for them (else the old ones gone, a new one cut short).
    with _HeldInterrupt() as held:
        clear_previous(out)
        summary = {"header": header, "steps": args.steps, "seed": args.seed, "init": args.init,
                   "init_scale": args.init_scale, "record_every": args.record_every, "seconds": grid.seconds,
                   "steps_per_second": grid.steps_per_second, "runs": []}
        for run, name in zip(runs, trace_names(grid.stepsize)):
            run.save(out / name)
            phase = run.phase
            summary["runs"].append({
                "stepsize": run.stepsize, "status": run.status, "diverged_step": run.diverged_step,
                "steps_taken": run.steps_taken, "final_risk": run.final_risk, "final_log_risk": run.final_log_risk,
                "transition_step": phase.transition_step,
                "increases_before": phase.increases_before, "increases_after": phase.increases_after,
                "peak_risk": phase.peak_risk, "final_eta_t_risk": phase.final_rate,
                "normalized_margin": _last(run.normalized_margin), "accuracy": _last(run.accuracy),
                "steps_per_second": run.steps_per_second, "traces": name})
        written = [r["traces"] for r in summary["runs"]]
        if not args.no_plot:
            try:
                from .plot import save_runs_figure
                save_runs_figure(runs, out / "figure.png", title=header)
                written.append("figure.png")
            except ImportError as exc:
                print(f"lgd run: no figure: {exc}", file=sys.stderr)
        summary["files"] = ["summary.json"] + written
        (out / "summary.json").write_text(to_json(summary) + "\n")
    held.deliver()
    print(format_table(runs))
    print(f"(the stepsizes run side by side in one batched call, {grid.steps_per_second:,.0f} steps/s in all; "
          "steps/s of a stepsize: the steps it took over the batch's time)")
    if any(run.status == "diverged" for run in runs):
        print("(a diverged stepsize: no final risk; its other columns are read off its records up to the step it "
              "diverged at)")
    print("wrote " + ", ".join(str(out / name) for name in summary["files"]))
    interrupted = [run for run in runs if run.status == "interrupted"]
    if interrupted:
        print(f"lgd run: interrupted after {max(run.steps_taken for run in interrupted)} of {args.steps} steps; "
              "wrote what it had (status 'interrupted' in summary.json)", file=sys.stderr)
        return 130
    return 0


def trace_names(stepsizes) -> list:
    """File names of the traces of ``lgd run``, one per configuration and never two alike: the index,
    then the stepsize in full (``run0_eta30.npz``, ``run1_eta1234567.0.npz``)."""
    width = len(str(len(stepsizes) - 1))
    return [f"run{i:0{width}d}_eta{number_text(eta)}.npz" for i, eta in enumerate(stepsizes)]


def _last(array) -> float:
    return float(array[-1]) if len(array) else math.nan


def format_table(runs) -> str:
    """Plain-text table of runs: stepsize, final risk, phase transition, risk increases, margin, speed, status."""
    columns = ("stepsize", "final risk", "transition", "rises before/after", "norm. margin", "accuracy",
               "steps/s", "status")
    rows = []
    for run in runs:
        phase = run.phase
        status = {"diverged": f"diverged at step {run.diverged_step}",
                  "interrupted": f"interrupted at step {run.steps_taken}"}.get(run.status, run.status)
        rows.append((number_text(run.stepsize), risk_text(run.final_risk, run.final_log_risk),
                     "-" if phase.transition_step is None else str(phase.transition_step),
                     f"{phase.increases_before}/{phase.increases_after}", f"{_last(run.normalized_margin):+.4f}",
                     f"{_last(run.accuracy):.3f}", f"{run.steps_per_second:,.0f}", status))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def info() -> str:
    """Versions of lgd and its optional dependencies, and which backends can run here (and why not)."""
    import lgd
    from . import backends

    lines = [f"lgd {lgd.__version__} (python {platform.python_version()}, {platform.machine()}, "
             f"{platform.system()})", f"numpy {np.__version__}"]
    for module in ("numba", "scipy", "threadpoolctl", "cupy", "matplotlib", "sklearn", "tqdm"):
        spec = importlib.util.find_spec(module)
        if spec is None:
            lines.append(f"{module}: not installed")
            continue
        try:
            version = importlib.import_module(module).__version__
        except Exception as exc:  # a broken optional install must not hide the rest of the report
            version = f"installed but fails to import ({exc})"
        lines.append(f"{module} {version}")
    lines.append("backends:")
    for name in backends.NAMES:
        usable, reason = backends.availability(name)
        lines.append(f"  {name:6s} {'usable' if usable else 'not usable'}: {reason}")
    lines.append(f"  'auto' chooses: {backends.resolve('auto').name} (for numpy input; cupy input goes to cupy)")
    if backends.availability("numba")[0]:
        import numba

        lines.append(f"numba threads: {numba.get_num_threads()} (NUMBA_NUM_THREADS; a single run splits its steps "
                     "over them, a sweep its configurations)")
    from .benchmark.machine import blas_libraries, blas_note, vector_features

    blas = blas_libraries()
    if blas:
        lines.append("BLAS: " + ", ".join(f"{b['library']} {b['version']} ({b['architecture'] or '?'} kernels, "
                                          f"{b['threads']} threads, {b['file']})" for b in blas))
        note = blas_note(blas, vector_features())
        if note:
            lines.append(f"  note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
