"""The ``lgd bench`` command: its options, the installed suite run in a pytest subprocess, what it prints and writes.

The suite (lgd.benchmark.suite, with the options and fixtures of lgd.benchmark.plugin) runs as
``python -m pytest <installed suite.py> -p lgd.benchmark.plugin --benchmark-enable --benchmark-json=...`` in a
scratch folder that is its working directory, its rootdir and the home of an empty pytest configuration, so
that no pytest.ini or conftest.py of the user's or of a source checkout joins in. The command then

- prints a table: steps/s (configuration-steps/s for sweeps), ratio to the best peer, ratio to the roofline;
- writes JSON (records, skipped cases and why, the machine described) and a markdown table next to it,
  ``--out`` or by default ``lgd-bench-<mode>-<time>.json`` in the current folder, never inside the package;
- with ``--compare OLD.json`` prints the ratio of every record to the same record of an earlier run;
- with ``--plot PNG`` draws throughput per workload and implementation.

``--report RESULTS.json`` skips running and reports (table, compare, plot) an earlier JSON. Nothing heavy
is imported here: the parser is built on every ``lgd`` call.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from .machine import describe_machine, fp_sharing, usable_cores
from .report import build_report, format_compare, format_table, load, save_plot, skip_summary, write

SUITE = Path(__file__).with_name("suite.py")
PLUGIN = "lgd.benchmark.plugin"
QUICK = {"workloads": "S,M,L,SWEEP", "impls": "lgd-numpy,lgd-numba,numpy,torch-analytic,jax-scan",
         "dtypes": "float64", "steps_scale": 0.01, "round_budget": 0.5}
FULL = {"workloads": "S,M,L,SWEEP,SWEEP-1024,LARGE", "impls": None, "dtypes": "float64,float32", "steps_scale": 1.0,
        "round_budget": 6.0}


def configure(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short run (about five minutes on 2 cores): float64, 1%% of the steps, one peer of "
                             "each library")
    parser.add_argument("--workloads", help="comma-separated: S, M, L, SWEEP, SWEEP-1024, LARGE (default: all)")
    parser.add_argument("--impls", help="comma-separated: lgd-numpy, lgd-numba, lgd-cupy, numpy, torch-autograd, "
                                        "torch-analytic, torch-compile, jax-jit, jax-scan (default: all)")
    parser.add_argument("--dtypes", help="comma-separated: float64, float32 (default: both)")
    parser.add_argument("--steps-scale", type=float, help="scale every workload's steps (default 1, quick 0.01)")
    parser.add_argument("--round-budget", type=float, help="seconds of timed rounds per case (default 6, quick 0.5)")
    parser.add_argument("--out", help="JSON file to write (default lgd-bench-<mode>-<time>.json in the current "
                                      "folder); a markdown table is written next to it")
    parser.add_argument("--compare", metavar="OLD.json", help="print ratios to an earlier result file")
    parser.add_argument("--plot", metavar="PNG", help="draw steps/s per workload and implementation")
    parser.add_argument("--report", metavar="RESULTS.json", help="do not run: report an earlier result file")


def main(args) -> int:
    try:
        # Read before any run: a file that cannot be compared with would otherwise be found after the run.
        earlier = load(args.compare) if args.compare else None
        if args.plot:
            from ..cli import output_folder

            if Path(args.plot).is_dir():
                raise ValueError(f"--plot {args.plot} is a folder: name the figure's file")
            output_folder(Path(args.plot).parent)
        if args.report:
            ignored = [f"--{key.replace('_', '-')}" for key in (*RUN_OPTIONS, "out", "quick")
                       if getattr(args, key, None) not in (None, False)]
            if ignored:
                raise ValueError(f"--report reports an earlier file; {', '.join(ignored)} apply to a run")
            report = load(args.report)
            code = 0
        else:
            out = Path(args.out) if args.out else None
            if out is not None:
                _check_out(out)  # before the run, which a path that cannot be written would throw away
            report, code = run(args)
            out = out or Path(f"lgd-bench-{report['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json")
        print(format_table(report))
        if report["skipped"]:
            print(f"skipped {len(report['skipped'])} cases; " + "; ".join(sorted(skip_summary(report))))
        if report.get("failed"):
            print(f"FAILED {len(report['failed'])} cases (left out of the table and the ratios): "
                  + "; ".join(f"{case['case']}: {case['reason']}" for case in report["failed"]))
        if not args.report:
            write(report, out)
            print(f"wrote {out} and {out.with_suffix('.md')}")
        if earlier is not None:
            print(format_compare(report, earlier))
        if args.plot:
            save_plot(report, args.plot)
            print(f"wrote {args.plot}")
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        print(f"lgd bench: error: {exc}", file=sys.stderr)
        return 2
    return code


# The options that choose what a run times (and --report refuses).
RUN_OPTIONS = ("workloads", "impls", "dtypes", "steps_scale", "round_budget")


def _check_out(out: Path) -> None:
    """Refuse, before any work, an --out that would not be written or would lose the JSON."""
    from ..cli import output_folder

    if out.suffix == ".md":
        raise ValueError(f"--out {out} names the JSON file (the markdown table goes next to it, as .md): give a "
                         ".json name")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the JSON file to write")
    output_folder(out.parent)


def _settings(args, settings: dict) -> dict:
    """The run's settings with the options of ``args``, checked: names the suite has, numbers it can use."""
    from .peers import IMPLEMENTATIONS
    from .workloads import DTYPES, WORKLOADS

    valid = {"workloads": tuple(WORKLOADS), "impls": IMPLEMENTATIONS, "dtypes": DTYPES}
    for key in RUN_OPTIONS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in valid:
            names = [name for name in value.replace(" ", "").split(",") if name]
            unknown = [name for name in names if name not in valid[key]]
            if not names or unknown:
                raise ValueError(f"--{key} takes comma-separated names among {', '.join(valid[key])}, got {value!r}")
        elif not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive number, got {value}")
        settings[key] = value
    return settings


def run(args) -> tuple:
    """Run the suite with the options of ``args``; (report, exit code of pytest: 0 or 1)."""
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise ImportError('`lgd bench` runs a pytest-benchmark suite: pip install "lgd[bench]" (pytest-benchmark; '
                          'torch and jax for their peers)')
    mode = "quick" if args.quick else "full"
    settings = _settings(args, dict(QUICK if args.quick else FULL))
    if any(getattr(args, key, None) is not None for key in RUN_OPTIONS):
        mode = "custom"
    with tempfile.TemporaryDirectory(prefix="lgd-bench-") as scratch:
        scratch = Path(scratch)
        stats_path, junit_path, config = scratch / "benchmark.json", scratch / "junit.xml", scratch / "pytest.ini"
        config.write_text("[pytest]\n")
        # --confcutdir: no conftest.py above the suite's own folder (site-packages, a checkout) is loaded.
        command = [sys.executable, "-m", "pytest", str(SUITE), "-c", str(config), f"--rootdir={scratch}",
                   f"--confcutdir={SUITE.parent}", "-p", PLUGIN, "-p", "no:cacheprovider",
                   "-q", "-rs", "--benchmark-enable", f"--benchmark-json={stats_path}", f"--junitxml={junit_path}",
                   "--benchmark-columns=min,median,rounds", "--benchmark-group-by=group",
                   f"--lgd-steps-scale={settings['steps_scale']}", f"--lgd-round-budget={settings['round_budget']}"]
        for key in ("workloads", "impls", "dtypes"):
            if settings[key]:
                command.append(f"--lgd-{key}={settings[key]}")
        print("running: " + " ".join(command[1:]), flush=True)
        started = time.perf_counter()
        sharing_before = fp_sharing(usable_cores())  # the host may move the vCPUs during the run
        # No bytecode: pytest would cache its assertion-rewritten suite inside the installed package.
        code = subprocess.call(command, cwd=scratch, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        if code == 0 and not stats_path.is_file() and junit_path.is_file():  # every case skipped: say why
            skipped, _ = cases_not_timed(junit_path.read_text())
            if skipped:
                reasons = sorted({case["reason"] for case in skipped})
                raise RuntimeError(f"no case could run here ({len(skipped)} skipped): {'; '.join(reasons)}")
        if code not in (0, 1) or not stats_path.is_file():
            raise RuntimeError(f"the benchmark suite did not run (pytest exit code {code})")
        raw = json.loads(stats_path.read_text())
        skipped, failed = cases_not_timed(junit_path.read_text()) if junit_path.is_file() else ([], [])
    machine = describe_machine()
    machine["fp_sharing_before"] = sharing_before
    # A case that failed after its rounds were timed (a paired peer, the breakdown) has a record: its numbers
    # did not pass the suite's checks, so it leaves the table and the ratios with the others that failed.
    failing = {case["case"] for case in failed}
    timed = [bench for bench in raw["benchmarks"] if _case_of(bench.get("name", "")) not in failing]
    report = build_report(timed, skipped, machine, mode, settings)
    report["failed"] = failed
    report["seconds"] = time.perf_counter() - started
    return report, code


def _case_of(name: str) -> str:
    """The case of a test's name: 'S-lgd-numba-float64' of 'test_throughput[S-lgd-numba-float64]'."""
    return name[name.find("[") + 1:-1] if "[" in name else name


def cases_not_timed(junit_xml: str) -> tuple:
    """([{case, reason}] skipped, [{case, reason}] failed) of the tests of a junit XML report."""
    skipped, failed = [], []
    for testcase in ElementTree.fromstring(junit_xml).iter("testcase"):
        case = _case_of(testcase.get("name", ""))
        skip = testcase.find("skipped")
        if skip is not None:
            skipped.append({"case": case, "reason": skip.get("message", "").removeprefix("Skipped: ")})
        for kind in ("failure", "error"):
            fault = testcase.find(kind)
            if fault is not None:
                failed.append({"case": case, "reason": (fault.get("message") or kind).splitlines()[0][:300]})
                break
    return skipped, failed
