"""``lgd bench``: throughput of lgd's backends against NumPy, PyTorch and JAX, with the machine's roofline.

The numbers come from the pytest-benchmark suite in the repository's ``bench/`` folder (workloads, peers
and the roofline model are documented there and in docs/performance.md). This module runs that suite in
a subprocess (``python -m pytest bench/test_throughput.py --benchmark-enable --benchmark-json=...``),
turns pytest-benchmark's statistics into one record per (workload, implementation, dtype), and

- prints a table: steps/s (configuration-steps/s for sweeps), ratio to the best peer, ratio to the roofline;
- writes JSON (records, skipped cases and why, the machine described) and a markdown table next to it,
  by default under ``bench/results/``;
- with ``--compare OLD.json`` prints the ratio of every record to the same record of an earlier run;
- with ``--plot PNG`` draws throughput per workload and implementation.

``--report RESULTS.json`` skips running and reports (table, compare, plot) an earlier JSON. Nothing heavy
is imported at module level: the parser is built on every ``lgd`` call.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

FORMAT = "lgd-bench/1"
QUICK = {"workloads": "S,M,L,SWEEP", "impls": "lgd-numpy,lgd-numba,numpy,torch-analytic,jax-scan",
         "dtypes": "float64", "steps_scale": 0.01, "round_budget": 0.5}
FULL = {"workloads": "S,M,L,SWEEP,SWEEP-1024,LARGE", "impls": None, "dtypes": "float64,float32", "steps_scale": 1.0,
        "round_budget": 6.0}
VERSIONS = ("lgd", "numpy", "scipy", "numba", "llvmlite", "torch", "jax", "jaxlib", "cupy-cuda12x", "cupy-cuda13x",
            "pytest", "pytest-benchmark", "threadpoolctl")


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
    parser.add_argument("--out", help="JSON file to write (default bench/results/bench-<mode>-<time>.json); "
                                      "a markdown table is written next to it")
    parser.add_argument("--compare", metavar="OLD.json", help="print ratios to an earlier result file")
    parser.add_argument("--plot", metavar="PNG", help="draw steps/s per workload and implementation")
    parser.add_argument("--report", metavar="RESULTS.json", help="do not run: report an earlier result file")


def main(args) -> int:
    try:
        if args.report:
            report = load(args.report)
            code = 0
        else:
            report, code = run(args)
            out = Path(args.out) if args.out else _default_out(report["mode"])
            write(report, out)
            print(f"wrote {out} and {out.with_suffix('.md')}")
        print(format_table(report))
        if report["skipped"]:
            print(f"skipped {len(report['skipped'])} cases; " + "; ".join(sorted(_skip_summary(report))))
        if args.compare:
            print(format_compare(report, load(args.compare)))
        if args.plot:
            save_plot(report, args.plot)
            print(f"wrote {args.plot}")
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"lgd bench: error: {exc}", file=sys.stderr)
        return 2
    return code


def bench_folder() -> Path:
    """The repository's bench/ folder (lgd is installed editable from the repository)."""
    import lgd

    folder = Path(lgd.__file__).resolve().parents[1] / "bench"
    if not (folder / "test_throughput.py").is_file():
        raise FileNotFoundError(f"no benchmark suite at {folder}: `lgd bench` runs from a source checkout of lgd "
                                f"installed in editable mode (git clone ...; pip install -e '.[bench]')")
    return folder


def _default_out(mode: str) -> Path:
    return bench_folder() / "results" / f"bench-{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def run(args) -> tuple:
    """Run the suite with the options of ``args``; (report, exit code of pytest: 0 or 1)."""
    folder = bench_folder()
    mode = "quick" if args.quick else "full"
    settings = dict(QUICK if args.quick else FULL)
    for key in ("workloads", "impls", "dtypes", "steps_scale", "round_budget"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
            mode = "custom"
    with tempfile.TemporaryDirectory(prefix="lgd-bench-") as scratch:
        stats_path, junit_path = Path(scratch) / "benchmark.json", Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", str(folder / "test_throughput.py"), "-p", "no:cacheprovider",
                   "-q", "-rs", "--benchmark-enable", f"--benchmark-json={stats_path}", f"--junitxml={junit_path}",
                   "--benchmark-columns=min,median,rounds", "--benchmark-group-by=group",
                   f"--lgd-steps-scale={settings['steps_scale']}", f"--lgd-round-budget={settings['round_budget']}"]
        for key in ("workloads", "impls", "dtypes"):
            if settings[key]:
                command.append(f"--lgd-{key}={settings[key]}")
        print("running: " + " ".join(command[1:]), flush=True)
        started = time.perf_counter()
        sharing_before = fp_sharing(_usable_cores())  # the host may move the vCPUs during the run
        code = subprocess.call(command, cwd=folder.parent)
        if code not in (0, 1) or not stats_path.is_file():
            raise RuntimeError(f"the benchmark suite did not run (pytest exit code {code})")
        raw = json.loads(stats_path.read_text())
        skipped = skipped_cases(junit_path.read_text()) if junit_path.is_file() else []
    machine = describe_machine()
    machine["fp_sharing_before"] = sharing_before
    report = build_report(raw["benchmarks"], skipped, machine, mode, settings)
    report["seconds"] = time.perf_counter() - started
    return report, code


def skipped_cases(junit_xml: str) -> list:
    """[{case, reason}] of the skipped tests of a junit XML report."""
    skipped = []
    for testcase in ElementTree.fromstring(junit_xml).iter("testcase"):
        skip = testcase.find("skipped")
        if skip is not None:
            name = testcase.get("name", "")
            case = name[name.find("[") + 1:-1] if "[" in name else name
            skipped.append({"case": case, "reason": skip.get("message", "").removeprefix("Skipped: ")})
    return skipped


def build_report(benchmarks: list, skipped: list, machine: dict, mode: str, settings: dict) -> dict:
    """One record per pytest-benchmark entry, with the ratios to the best peer and to the roofline.

    Throughput is the best round (pytest-benchmark's ``min``): on a shared machine the other rounds
    measure the neighbours as well. The roofline ratio is the median over the rounds of each round against
    the roofline timed just before it (``roofline_fraction_paired``; older files: the best round against
    the roofline timed once).
    """
    records = []
    for bench in benchmarks:
        info, stats = bench["extra_info"], bench["stats"]
        steps_per_s = info["config_steps"] / stats["min"]
        roof = info["roofline"]["steps_per_s"]
        records.append({
            "workload": info["workload"], "impl": info["impl"], "kind": info["kind"], "dtype": info["dtype"],
            "n": info["n"], "d": info["d"], "m": info["m"], "configs": info["configs"], "steps": info["steps"],
            "steps_per_s": steps_per_s, "gflops": info["flops"] / stats["min"] / 1e9,
            "roofline_steps_per_s": roof,
            "ratio_roofline": info.get("roofline_fraction_paired", steps_per_s / roof),
            "ratio_roofline_rounds": info.get("roofline_fraction_rounds"), "ratio_roofline_apart": steps_per_s / roof,
            "compile_s": info["compile_s"], "warmup_s": info["warmup_s"], "check_rel_error": info["check_rel_error"],
            "roofline": info["roofline"], "breakdown": info.get("breakdown"), "first_call": info.get("first_call"),
            "stats": {key: stats[key] for key in ("min", "median", "mean", "stddev", "rounds")}})
    for record in records:
        peers = [r["steps_per_s"] for r in records if r["kind"] == "peer" and _same_problem(r, record)]
        best = max(peers) if peers else None  # None, not NaN: the file stays strict JSON
        record["best_peer_steps_per_s"] = best
        record["ratio_best_peer"] = record["steps_per_s"] / best if peers else None
    return {"format": FORMAT, "mode": mode, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine, "records": records, "skipped": skipped}


def _same_problem(a: dict, b: dict) -> bool:
    return a["workload"] == b["workload"] and a["dtype"] == b["dtype"]


def _key(record: dict) -> tuple:
    return record["workload"], record["impl"], record["dtype"]


def write(report: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(format_markdown(report))


def load(path) -> dict:
    report = json.loads(Path(path).read_text())
    if report.get("format") != FORMAT:
        raise ValueError(f"{path} is not an `lgd bench` result file (format {report.get('format')!r})")
    return report


def _rows(report: dict) -> list:
    workloads = list(dict.fromkeys(r["workload"] for r in report["records"]))
    order = {"lgd": 0, "peer": 1}
    records = sorted(report["records"], key=lambda r: (workloads.index(r["workload"]), r["dtype"] != "float64",
                                                       order[r["kind"]], -r["steps_per_s"]))
    return [(r["workload"], r["impl"], r["dtype"], f"{r['steps_per_s']:,.0f}", f"{r['gflops']:.2f}",
             _ratio(r["ratio_best_peer"]), _ratio(r["ratio_roofline"]), f"{r['compile_s']:.1f}")
            for r in records]


COLUMNS = ("workload", "backend/peer", "dtype", "steps/s", "GFLOP/s", "vs best peer", "vs roofline", "compile s")


def _ratio(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def format_table(report: dict) -> str:
    """Plain-text table of a report: one line per (workload, implementation, dtype), then the breakdown of
    lgd's steps when the report has one."""
    text = _text_table(COLUMNS, _rows(report))
    broken_down = [r for r in report["records"] if r.get("breakdown")]
    if broken_down:
        text += "\n\nwhere lgd's time goes (per configuration-step)\n"
        text += _text_table(BREAKDOWN_COLUMNS, _breakdown_rows(broken_down))
    first_calls = [r for r in report["records"] if r.get("first_call")]
    if first_calls:
        text += "\n\nfirst call in a new process (compile or cache load)\n"
        text += _text_table(FIRST_CALL_COLUMNS, _first_call_rows(first_calls))
    return text


def _text_table(columns, rows) -> str:
    """Columns aligned; the first three (the names) to the left, the numbers to the right."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(columns), "  ".join("-" * w for w in widths)] + [line(row) for row in rows])


def describe(machine: dict) -> str:
    """One paragraph on the machine of a report."""
    blas = ", ".join(f"{b['library']} {b['version']} ({b['threads']} threads)" for b in machine.get("blas", []))
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
    sharing, before = machine.get("fp_sharing"), machine.get("fp_sharing_before")
    fp = ""
    if sharing:
        fp = (f" (all {machine.get('usable_cores')} threads at once: {sharing['throughput_speedup']:.2f}x one "
              f"thread's fma throughput, {sharing['latency_speedup']:.2f}x on a latency-bound chain"
              + (f"; {before['throughput_speedup']:.2f}x and {before['latency_speedup']:.2f}x when the run began"
                 if before else "") + ")")
    return (f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores{fp}, GPU: {machine.get('gpu') or 'none'}; "
            f"BLAS: {blas or 'unknown'}; {versions}")


def format_markdown(report: dict) -> str:
    lines = [f"# lgd bench ({report['mode']}, {report['created']})", "",
             f"Machine: {describe(report['machine'])}.", ""] + _markdown_table(COLUMNS, _rows(report))
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(sorted(_skip_summary(report))) + "."]
    broken_down = [r for r in report["records"] if r.get("breakdown")]
    if broken_down:
        lines += ["", "Where lgd's time goes, per configuration-step: the activation's transcendentals (the "
                  "difference to the same run with leaky_relu) and the rest (the two products, loss, records, "
                  "update); against the roofline's numpy exp + log1p per entry and numpy/BLAS products, and the "
                  "least time the two products could take at this machine's GEMM peak (a large square matmul).", ""]
        lines += _markdown_table(BREAKDOWN_COLUMNS, _breakdown_rows(broken_down))
    first_calls = [r for r in report["records"] if r.get("first_call")]
    if first_calls:
        lines += ["", "First call: seconds of a one-step `lgd.gd` in a new process (the kernel's compile or its load "
                  "from the cache, and the step), with an empty kernel cache and then from the cache that run left; "
                  "numba's own start-up (its import and the registries that its first compile or cache load reads) "
                  "is timed apart, before. S compiles the fused kernel, L the BLAS one; one kernel serves every "
                  "activation and loss of a dtype.", ""]
        lines += _markdown_table(FIRST_CALL_COLUMNS, _first_call_rows(first_calls))
    return "\n".join(lines) + "\n"


def _markdown_table(columns, rows) -> list:
    """Lines of a markdown table; the first three columns (the names) aligned left, the numbers right."""
    rule = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(columns))) + "|"
    return ["| " + " | ".join(columns) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows]


BREAKDOWN_COLUMNS = ("workload", "backend", "dtype", "step us", "activation us", "activation ns/entry",
                     "rest us", "numpy exp+log1p ns/entry", "BLAS products us", "products at GEMM peak us")


def _breakdown_rows(records: list) -> list:
    rows = []
    for r in records:
        b, roof = r["breakdown"], r["roofline"]
        rows.append((r["workload"], r["impl"], r["dtype"], f"{b['step_us']:,.1f}", f"{b['activation_us']:,.1f}",
                     f"{b['activation_ns_per_entry']:.2f}", f"{b['rest_us']:,.1f}",
                     f"{roof['transcendental_ns_per_entry']:.2f}", f"{roof['product_s'] * 1e6:,.1f}",
                     f"{roof['product_at_peak_s'] * 1e6:,.1f}" if "product_at_peak_s" in roof else "-"))
    return rows


FIRST_CALL_COLUMNS = ("workload", "backend", "dtype", "numba start-up s", "empty cache s", "from cache s")


def _first_call_rows(records: list) -> list:
    return [(r["workload"], r["impl"], r["dtype"], f"{r['first_call']['numba_startup_s']:.2f}",
             f"{r['first_call']['cold_s']:.1f}", f"{r['first_call']['cached_s']:.2f}") for r in records]


def _skip_summary(report: dict) -> set:
    """Distinct skip reasons with how many cases each skipped."""
    reasons = {}
    for skip in report["skipped"]:
        reasons[skip["reason"]] = reasons.get(skip["reason"], 0) + 1
    return {f"{reason} ({count})" for reason, count in reasons.items()}


def format_compare(new: dict, old: dict) -> str:
    """steps/s of every record of ``new`` next to the same record of ``old``, and their ratio new/old."""
    before = {_key(r): r for r in old["records"]}
    columns = ("workload", "backend/peer", "dtype", "old steps/s", "new steps/s", "new/old")
    rows, missing = [], []
    for record in new["records"]:
        previous = before.get(_key(record))
        if previous is None:
            missing.append("-".join(_key(record)))
            continue
        rows.append((*_key(record), f"{previous['steps_per_s']:,.0f}", f"{record['steps_per_s']:,.0f}",
                     f"{record['steps_per_s'] / previous['steps_per_s']:.2f}"))
    lines = [f"compared with {old['created']} ({old['mode']}): {describe(old['machine'])}", _text_table(columns, rows)]
    if missing:
        lines.append("not in the old file: " + ", ".join(missing))
    return "\n".join(lines)


def save_plot(report: dict, path) -> None:
    """Bars of steps/s per implementation, one panel per workload, float64 and float32 side by side; dashed
    lines mark the roofline of each dtype (the one timed once per workload and dtype)."""
    from .plot import _pyplot

    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    records = report["records"]
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 4.2), squeeze=False)
    colors = {"float64": "tab:blue", "float32": "tab:orange"}
    for ax, workload in zip(axes[0], workloads):
        mine = [r for r in records if r["workload"] == workload]
        impls = list(dict.fromkeys(r["impl"] for r in sorted(mine, key=lambda r: (r["kind"] != "lgd", r["impl"]))))
        for offset, dtype in ((-0.2, "float64"), (0.2, "float32")):
            values = {r["impl"]: r["steps_per_s"] for r in mine if r["dtype"] == dtype}
            ax.barh([i + offset for i, impl in enumerate(impls) if impl in values],
                    [values[impl] for impl in impls if impl in values], height=0.4, color=colors[dtype], label=dtype)
            roofs = [r["roofline_steps_per_s"] for r in mine if r["dtype"] == dtype]
            if roofs:
                ax.axvline(roofs[0], color=colors[dtype], linestyle="--", linewidth=1)
        ax.set_yticks(range(len(impls)), impls)
        ax.invert_yaxis()
        ax.set_xscale("log")
        # A log axis spanning less than a decade: label 1, 2, 5 x 10^k, leave the minor ticks bare.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        sweep = mine[0]["configs"] > 1
        ax.set_xlabel("config-steps/s" if sweep else "steps/s")
        first = mine[0]
        ax.set_title(f"{workload}: n={first['n']}, d={first['d']}, m={first['m']}"
                     + (f", {first['configs']} stepsizes" if sweep else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8, title="dashed: roofline (timed once)", title_fontsize=7)
    fig.suptitle(f"lgd bench ({report['mode']}): {report['machine'].get('cpu', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_machine() -> dict:
    """CPU model, cores, BLAS libraries and threads, GPU, OS and library versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    usable = _usable_cores()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "fp_sharing": fp_sharing(usable),
            "blas": _blas(), "gpu": _gpu(), "os": platform.platform(), "versions": versions}


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fp_sharing(threads: int, seconds: float = 0.2):
    """How `threads` threads share the floating-point units, measured (numba; None without it or with one thread).

    Each thread runs the same two loops: twelve independent scalar fma chains (bound by the FP pipes'
    throughput) and one dependent multiply-add chain (bound by latency). Returned: one thread's fma per ns
    and each loop's speedup with all threads at once over one thread. A throughput speedup near 1 with a
    latency speedup near `threads` means the threads share one core's pipes (SMT siblings, or vCPUs
    placed so): parallel threads then gain only where one thread leaves the pipes idle.
    """
    if threads < 2 or importlib.util.find_spec("numba") is None:
        return None
    import threading

    chains, chain = _fp_kernels()

    def timed(kernel, reps, count):
        workers = [threading.Thread(target=kernel, args=(reps, 0.999, 0.001)) for _ in range(count)]
        tic = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - tic

    result = {}
    for name, kernel in (("throughput", chains), ("latency", chain)):
        reps = 1 << 16
        while timed(kernel, reps, 1) < seconds / 4:
            reps *= 2
        one = min(timed(kernel, reps, 1) for _ in range(3))
        together = min(timed(kernel, reps, threads) for _ in range(3))
        result[f"{name}_speedup"] = threads * one / together
        if name == "throughput":
            result["fma_per_ns_one_thread"] = 12 * reps / one / 1e9
    return result


_FP_KERNELS = []


def _fp_kernels() -> tuple:
    """fp_sharing's two loops, compiled once per process (numba is imported here, not with the module)."""
    if not _FP_KERNELS:
        from numba import njit

        from .kernels.numba_cpu import fma

        @njit(nogil=True)
        def chains(reps, b, c):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = 1.0
            for _ in range(reps):
                a0, a1, a2, a3 = fma(a0, b, c), fma(a1, b, c), fma(a2, b, c), fma(a3, b, c)
                a4, a5, a6, a7 = fma(a4, b, c), fma(a5, b, c), fma(a6, b, c), fma(a7, b, c)
                a8, a9, a10, a11 = fma(a8, b, c), fma(a9, b, c), fma(a10, b, c), fma(a11, b, c)
            return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11

        @njit(nogil=True)
        def chain(reps, b, c):
            a = 1.0
            for _ in range(reps):
                a = a * b + c
            return a

        for kernel in (chains, chain):
            kernel(10, 0.999, 0.001)  # compile before anything is timed
        _FP_KERNELS.extend((chains, chain))
    return tuple(_FP_KERNELS)


def _blas() -> list:
    try:
        import numpy  # noqa: F401  (loads numpy's BLAS so that threadpoolctl sees it)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"library": info.get("internal_api"), "version": info.get("version"), "threads": info.get("num_threads"),
             "file": Path(info.get("filepath", "")).name}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def _gpu():
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None
