"""The results of ``lgd bench``: one record per (workload, implementation, dtype) built from pytest-benchmark's
statistics, with its ratios to the best peer and to the roofline; the JSON file (format ``lgd-bench/1``), the
text and markdown tables, the comparison with an earlier file and the plot. Running the suite is
lgd.benchmark.command's; describing the machine, lgd.benchmark.machine's."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .._json import to_json

FORMAT = "lgd-bench/1"


def build_report(benchmarks: list, skipped: list, machine: dict, mode: str, settings: dict) -> dict:
    """One record per pytest-benchmark entry, with the ratios to the best peer and to the roofline.

    Throughput is the best round (pytest-benchmark's ``min``): on a shared machine the other rounds
    measure the neighbours as well. The roofline ratio is the median over the rounds of each round against
    the roofline timed just before it (``roofline_fraction_paired``; older files: the best round against
    the roofline timed once). ``ratio_best_peer`` compares best rounds of cases timed apart;
    ``ratio_best_peer_paired`` (lgd-numba's cases) is the smallest of the peers' paired ratios, each peer run
    back to back with lgd (suite.paired_peers), None where none was timed so.
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
            "paired_peers": info.get("paired_peers"),
            "stats": {key: stats[key] for key in ("min", "median", "mean", "stddev", "rounds")}})
    for record in records:
        peers = [r["steps_per_s"] for r in records if r["kind"] == "peer" and _same_problem(r, record)]
        best = max(peers) if peers else None  # None, not NaN: the file stays strict JSON
        record["best_peer_steps_per_s"] = best
        record["ratio_best_peer"] = record["steps_per_s"] / best if peers else None
        paired = record.get("paired_peers") or {}
        record["ratio_best_peer_paired"] = min((p["ratio"] for p in paired.values()), default=None)
    return {"format": FORMAT, "mode": mode, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine, "records": records, "skipped": skipped}


def _same_problem(a: dict, b: dict) -> bool:
    return a["workload"] == b["workload"] and a["dtype"] == b["dtype"]


def _key(record: dict) -> tuple:
    return record["workload"], record["impl"], record["dtype"]


def write(report: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(format_markdown(report))


def load(path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not an `lgd bench` result file (not JSON)") from None
    if report.get("format") != FORMAT:
        raise ValueError(f"{path} is not an `lgd bench` result file (format {report.get('format')!r})")
    return report


def _rows(report: dict) -> list:
    workloads = list(dict.fromkeys(r["workload"] for r in report["records"]))
    order = {"lgd": 0, "peer": 1}
    records = sorted(report["records"], key=lambda r: (workloads.index(r["workload"]), r["dtype"] != "float64",
                                                       order[r["kind"]], -r["steps_per_s"]))
    return [(r["workload"], r["impl"], r["dtype"], f"{r['steps_per_s']:,.0f}", f"{r['gflops']:.2f}",
             _ratio(r["ratio_best_peer"]), _ratio(r.get("ratio_best_peer_paired")), _ratio(r["ratio_roofline"]),
             f"{r['compile_s']:.1f}")
            for r in records]


COLUMNS = ("workload", "backend/peer", "dtype", "steps/s", "GFLOP/s", "vs best peer", "paired", "vs roofline",
           "compile s")


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


def _kernels(blas: dict) -> str:
    """'<core> kernels, ' of an OpenBLAS entry that names its core (files of older runs do not)."""
    return f"{blas['architecture']} kernels, " if blas.get("architecture") else ""


def describe(machine: dict) -> str:
    """One paragraph on the machine of a report."""
    blas = ", ".join(f"{b['library']} {b['version']} ({_kernels(b)}{b['threads']} threads)"
                     for b in machine.get("blas", []))
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
    sharing, before = machine.get("fp_sharing"), machine.get("fp_sharing_before")
    fp = ""
    if sharing:
        fp = (f" (all {machine.get('usable_cores')} threads at once: {sharing['throughput_speedup']:.2f}x one "
              f"thread's fma throughput, {sharing['latency_speedup']:.2f}x on a latency-bound chain"
              + (f"; {before['throughput_speedup']:.2f}x and {before['latency_speedup']:.2f}x when the run began"
                 if before else "") + ")")
    target = f" [{machine['cpu_id']}]" if machine.get("cpu_id") else ""
    if machine.get("caches"):
        target += " (caches " + ", ".join(
            f"{level} {cache['size']}" + (f" shared by {cache['shared_by']}" if cache["shared_by"] > 1 else "")
            for level, cache in machine["caches"].items()) + ")"
    if machine.get("vector_features"):
        target += f" ({' '.join(machine['vector_features'])})"
    if machine.get("tile_bytes"):
        target += f", numba target {machine.get('llvm_cpu', '?')} with {machine['tile_bytes']}-byte tiles"
    return (f"{machine.get('cpu', '?')}{target}, {machine.get('cores', '?')} cores{fp}, "
            f"GPU: {machine.get('gpu') or 'none'}; BLAS: {blas or 'unknown'}; {versions}")


def format_markdown(report: dict) -> str:
    lines = [f"# lgd bench ({report['mode']}, {report['created']})", "",
             f"Machine: {describe(report['machine'])}.", ""] + _markdown_table(COLUMNS, _rows(report))
    paired = sorted({peer for r in report["records"] for peer in (r.get("paired_peers") or {})})
    if paired:
        lines += ["", "\"vs best peer\" compares the best rounds of cases timed minutes apart; \"paired\" is "
                  f"lgd-numba's speed over {paired[0] if len(paired) == 1 else 'the faster of ' + ' and '.join(paired)}"
                  ", each run back to back with "
                  "lgd in turns (the median of its pairs), so that both see the same machine."]
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(sorted(skip_summary(report))) + "."]
    if report.get("failed"):
        lines += ["", "**Failed** (left out of the table and the ratios): "
                  + "; ".join(f"{case['case']}: {case['reason']}" for case in report["failed"]) + "."]
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
                  "is timed apart, before. S compiles the fused kernel; L the BLAS one where large inputs' products "
                  "go through BLAS (without AVX-512; with it on Intel's cores and AMD's Zen 4), else the fused one too; "
                  "one kernel serves every activation and loss of a dtype.", ""]
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


def skip_summary(report: dict) -> set:
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
    from ..plot import _pyplot

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
            if not values:  # a dtype not run: no bars, and no legend entry
                continue
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
