"""The ``lgd`` command line: ``lgd run`` (the main job) and ``lgd info``.

``lgd run`` with no arguments runs GD on the embedded XOR data (leaky softplus c = 0.5, mean-field
two-layer net, logistic loss) at one small and two large stepsizes, prints a table of the phases,
and writes the traces, a JSON summary and a figure into an output folder.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np

DEFAULT_STEPSIZES = (30.0, 1000.0, 3000.0)


def _stepsizes(text: str) -> list:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"stepsizes must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one stepsize")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"stepsizes must be positive and finite, got {bad}")
    return values


def _scaling(text: str):
    if text in ("mean_field", "ntk"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scaling must be 'mean_field', 'ntk' or a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgd", description="Large-stepsize gradient descent on two-layer networks.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run GD at several stepsizes: table, traces and figure",
                              description="Run GD at several stepsizes on one dataset and report both phases.")
    data = run.add_argument_group("data")
    data.add_argument("--dataset", default="xor", help="xor, fig4, wu_toy, separable, digits, mnist, cifar10")
    data.add_argument("--n", type=int, default=None, help="number of training points (dataset default if omitted)")
    data.add_argument("--data-path", default=None, help="folder holding the MNIST or CIFAR-10 files")
    model = run.add_argument_group("model")
    model.add_argument("--model", choices=("two_layer", "linear"), default="two_layer")
    model.add_argument("--width", type=int, default=20, help="hidden neurons m")
    model.add_argument("--activation", default="leaky_softplus(0.5)",
                       help="leaky_softplus(c), softplus, relu, leaky_relu(c), gelu, silu, tanh, identity")
    model.add_argument("--scaling", type=_scaling, default="mean_field", help="mean_field, ntk or a number")
    model.add_argument("--outer", choices=("alternating", "random"), default="alternating")
    model.add_argument("--train-outer", action="store_true", help="train the outer weights too")
    gd = run.add_argument_group("gradient descent")
    gd.add_argument("--loss", default="logistic",
                    help="logistic, exponential, flattened_exponential(a), flattened_polynomial(a), squared")
    gd.add_argument("--stepsizes", type=_stepsizes, default=list(DEFAULT_STEPSIZES),
                    help="comma-separated stepsizes (default: %(default)s)")
    gd.add_argument("--steps", type=int, default=20000)
    gd.add_argument("--seed", type=int, default=0)
    gd.add_argument("--init", choices=("normal", "zeros"), default="normal")
    gd.add_argument("--init-scale", type=float, default=1.0)
    gd.add_argument("--record-every", type=int, default=1)
    gd.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "cupy"))
    gd.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    out = run.add_argument_group("output")
    out.add_argument("--out", default="lgd-out", help="output folder (default: %(default)s)")
    out.add_argument("--no-plot", action="store_true", help="skip the figure")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")

    commands.add_parser("info", help="versions and which backends can run here")
    for name, (module, help_text) in PLUGGED_COMMANDS.items():
        importlib.import_module(module).configure(commands.add_parser(name, help=help_text, description=help_text))
    return parser


# Subcommands that live in their own modules: each has configure(parser) and main(args) -> int and
# imports nothing heavy at module level (the parser is built on every `lgd` call).
PLUGGED_COMMANDS: dict = {
    "bench": ("lgd.benchmark", "throughput benchmarks against NumPy, PyTorch and JAX"),
    "reproduce": ("lgd.reproduce",
                  "reproduce a figure of the literature: fig4, xor, digits, acceleration, eos, balancing"),
}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "info":
        print(info())
        return 0
    if args.command in PLUGGED_COMMANDS:
        return importlib.import_module(PLUGGED_COMMANDS[args.command][0]).main(args)
    parser.print_help()
    return 0


def _load_data(args):
    from . import data

    kwargs = {}
    if args.n is not None:
        kwargs["n"] = args.n
    if args.dataset in ("mnist", "cifar10"):
        if args.data_path is None:
            raise SystemExit(f"lgd run: --dataset {args.dataset} needs --data-path pointing at the local files")
        kwargs["path"] = args.data_path
    elif args.dataset == "xor" and "n" not in kwargs:
        kwargs["n"] = 100
    return data.load(args.dataset, **kwargs)


def _run(args) -> int:
    import lgd

    try:
        X, y = _load_data(args)
        model = lgd.Linear() if args.model == "linear" else lgd.TwoLayerNet(
            args.width, activation=args.activation, scaling=args.scaling, outer=args.outer,
            train_outer=args.train_outer)
        # One batched call for all stepsizes: the backend runs the configs side by side.
        runs = list(lgd.sweep(X, y, model, args.loss, stepsizes=args.stepsizes, steps=args.steps,
                              seeds=(args.seed,), init=args.init, init_scale=args.init_scale,
                              record=lgd.Record(every=args.record_every),
                              compute=lgd.Compute(backend=args.backend, dtype=args.dtype, progress=args.progress)))
    except (ValueError, TypeError, ImportError, FileNotFoundError, lgd.BackendUnavailable) as exc:
        print(f"lgd run: error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"{args.dataset} (n={X.shape[0]}, d={X.shape[1]}), {model.describe()}, {lgd.losses.get(args.loss).spec} "
              f"loss, {args.steps} steps, {runs[0].meta['backend']} backend, {args.dtype}")
    print(header)
    print(format_table(runs))
    print("(the stepsizes run side by side in one batched call: steps/s is per stepsize)")
    summary = {"header": header, "runs": []}
    for run in runs:
        name = f"run_eta{run.stepsize:g}.npz"
        run.save(out / name)
        phase = run.phase
        summary["runs"].append({
            "stepsize": run.stepsize, "status": run.status, "diverged_step": run.diverged_step,
            "final_risk": run.final_risk, "transition_step": phase.transition_step,
            "increases_before": phase.increases_before, "increases_after": phase.increases_after,
            "peak_risk": phase.peak_risk, "final_eta_t_risk": phase.final_rate,
            "normalized_margin": _last(run.normalized_margin), "accuracy": _last(run.accuracy),
            "steps_per_second": run.steps_per_second, "traces": name})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    written = [str(out / "summary.json")] + [str(out / r["traces"]) for r in summary["runs"]]
    if not args.no_plot:
        try:
            from .plot import save_runs_figure
            save_runs_figure(runs, out / "figure.png", title=header)
            written.append(str(out / "figure.png"))
        except ImportError as exc:
            print(f"lgd run: no figure: {exc}", file=sys.stderr)
    print("wrote " + ", ".join(written))
    return 0


def _last(array) -> float:
    return float(array[-1]) if len(array) else math.nan


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(runs) -> str:
    """Plain-text table of runs: stepsize, final risk, phase transition, risk increases, margin, speed, status."""
    columns = ("stepsize", "final risk", "transition", "rises before/after", "norm. margin", "accuracy",
               "steps/s", "status")
    rows = []
    for run in runs:
        phase = run.phase
        status = run.status if run.status != "diverged" else f"diverged@{run.diverged_step}"
        rows.append((f"{run.stepsize:g}", f"{run.final_risk:.3e}",
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
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
