"""`lgd bench`: the report built from pytest-benchmark statistics, its table, JSON, markdown and comparison; the
command run from the checkout and from a plain install."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lgd
from lgd.benchmark.command import cases_not_timed
from lgd.benchmark.machine import describe_machine, fp_sharing
from lgd.benchmark.report import build_report, describe, format_compare, format_markdown, format_table, load, write
from lgd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _entry(workload, impl, dtype, seconds, kind="peer", config_steps=1000, roofline=4000.0):
    """One benchmark as pytest-benchmark's JSON holds it (extra_info as lgd.benchmark.suite fills it)."""
    info = {"workload": workload, "impl": impl, "kind": kind, "dtype": dtype, "n": 256, "d": 16, "m": 64,
            "configs": 1, "steps": config_steps, "config_steps": config_steps, "flops": 1e9, "check_rel_error": 0.0,
            "warmup_s": 2 * seconds + 1.0, "compile_s": seconds + 1.0, "roofline": {"steps_per_s": roofline}}
    stats = {"min": seconds, "median": seconds * 1.1, "mean": seconds * 1.2, "stddev": 0.01, "rounds": 3}
    return {"extra_info": info, "stats": stats}


MACHINE = {"cpu": "Test CPU", "cores": 2, "blas": [{"library": "openblas", "version": "0.3", "threads": 2}],
           "gpu": None, "versions": {"python": "3.11", "lgd": "0.1.0"}}
SKIPPED = [{"case": "S-torch-compile-float64", "reason": "PyTorch is not installed"}]


def _report(numba_seconds=0.5):
    entries = [_entry("S", "numpy", "float64", 1.0), _entry("S", "jax-scan", "float64", 0.8),
               _entry("S", "lgd-numba", "float64", numba_seconds, kind="lgd"),
               _entry("S", "lgd-numba", "float32", 0.25, kind="lgd")]
    return build_report(entries, SKIPPED, MACHINE, "full", {"steps_scale": 1.0})


def test_report_ratios_use_the_best_round_and_the_best_peer_of_the_same_workload_and_dtype():
    records = {(r["impl"], r["dtype"]): r for r in _report()["records"]}
    numba = records["lgd-numba", "float64"]
    assert numba["steps_per_s"] == pytest.approx(2000.0)
    assert numba["best_peer_steps_per_s"] == pytest.approx(1250.0)  # jax-scan: 1000 steps in 0.8 s
    assert numba["ratio_best_peer"] == pytest.approx(1.6)
    assert numba["ratio_roofline"] == pytest.approx(0.5)
    assert numba["gflops"] == pytest.approx(2.0)
    assert records["numpy", "float64"]["ratio_best_peer"] == pytest.approx(0.8)
    assert records["lgd-numba", "float32"]["ratio_best_peer"] is None  # no float32 peer ran


def test_report_takes_the_roofline_ratio_paired_round_by_round_when_the_bench_measured_it():
    entry = _entry("L", "lgd-numba", "float64", 0.5, kind="lgd")
    entry["extra_info"].update(roofline_fraction_paired=0.93, roofline_fraction_rounds=[0.95, 0.93, 0.9])
    record = build_report([entry], [], MACHINE, "full", {})["records"][0]
    assert record["ratio_roofline"] == pytest.approx(0.93)
    assert record["ratio_roofline_rounds"] == [0.95, 0.93, 0.9]
    assert record["ratio_roofline_apart"] == pytest.approx(0.5)  # 2000 steps/s against a roofline of 4000


def test_the_paired_roofline_does_the_work_of_a_whole_run(monkeypatch):
    # A run of T steps records the risks of t = 0..T: T + 1 forward products and activations, T backward.
    from lgd.benchmark import workloads

    calls = []
    monkeypatch.setattr(workloads, "_roofline_parts", lambda workload, dtype: tuple(
        (lambda name=name: calls.append(name)) for name in ("forward", "backward", "transcendentals")))
    sweep = workloads.WORKLOADS["SWEEP"].shrunk()
    workloads.roofline_run(sweep, "float64")(3)
    assert calls.count("forward") == 4 and calls.count("backward") == 3
    assert calls.count("transcendentals") == 4 * sweep.configs
    assert calls[-1] == "transcendentals" and calls.index("backward") > calls.index("forward")


def test_table_markdown_and_json_round_trip(tmp_path):
    report = _report()
    table = format_table(report).splitlines()
    assert table[0].split()[:3] == ["workload", "backend/peer", "dtype"]
    assert table[2].split()[:4] == ["S", "lgd-numba", "float64", "2,000"]  # lgd first, then the peers
    assert "1.60" in table[2] and "0.50" in table[2]
    path = tmp_path / "results.json"
    write(report, path)
    assert load(path) == json.loads(json.dumps(report))
    markdown = path.with_suffix(".md").read_text()
    assert "Test CPU, 2 cores" in markdown and "| S | lgd-numba | float64 | 2,000 |" in markdown
    assert "PyTorch is not installed (1)" in markdown
    assert "Where lgd's time goes" not in markdown  # no breakdown was measured
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an `lgd bench` result file"):
        load(tmp_path / "other.json")


def test_compare_prints_new_over_old_and_what_is_missing():
    old = _report(numba_seconds=1.0)
    old["records"] = [r for r in old["records"] if r["impl"] != "jax-scan"]
    lines = format_compare(_report(numba_seconds=0.5), old).splitlines()
    numba = next(line for line in lines if "lgd-numba" in line and "float64" in line)
    assert numba.split()[-3:] == ["1,000", "2,000", "2.00"]
    assert lines[-1] == "not in the old file: S-jax-scan-float64"


def test_skipped_and_failed_cases_from_junit():
    xml = ('<testsuites><testsuite><testcase name="test_throughput[L-jax-jit-float32]">'
           '<skipped message="JAX is not installed (pip install jax jaxlib)"/></testcase>'
           '<testcase name="test_throughput[S-numpy-float64]"/>'
           '<testcase name="test_throughput[M-numpy-float64]"><failure message="AssertionError: numpy final risk '
           'after 20 steps is off by 9.5e-02&#10;assert ..."/></testcase></testsuite></testsuites>')
    skipped, failed = cases_not_timed(xml)
    assert skipped == [{"case": "L-jax-jit-float32", "reason": "JAX is not installed (pip install jax jaxlib)"}]
    assert failed == [{"case": "M-numpy-float64",
                       "reason": "AssertionError: numpy final risk after 20 steps is off by 9.5e-02"}]


@pytest.mark.parametrize("flags, message", [
    (["--workloads", ""], "--workloads takes comma-separated names among S, M"),
    (["--impls", "numpy,torch"], "--impls takes comma-separated names"),
    (["--dtypes", " "], "--dtypes takes"),
    (["--steps-scale", "nan"], "--steps-scale must be a positive number, got nan"),
    (["--round-budget", "-3"], "--round-budget must be a positive number"),
    (["--quick", "--out", "results.md"], "names the JSON file"),
    (["--quick", "--compare", "missing.json"], "missing.json"),
    (["--quick", "--plot", "."], "--plot . is a folder"),
])
def test_lgd_bench_refuses_bad_options_before_running(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "call", lambda *args, **kwargs: pytest.fail("the suite ran"))
    assert main(["bench", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_case_leaves_the_table_and_the_ratios_and_is_reported(tmp_path, capsys, monkeypatch):
    """The fastest peer fails after its rounds were timed (its record is in pytest-benchmark's file): it is
    not the best peer lgd's ratio is taken against, and the printed table, the JSON and the markdown say it
    failed, and why."""
    def suite(command, cwd, env):
        stats = next(arg for arg in command if arg.startswith("--benchmark-json=")).split("=", 1)[1]
        junit = next(arg for arg in command if arg.startswith("--junitxml=")).split("=", 1)[1]
        entries = [_entry("S", "numpy", "float64", 0.1), _entry("S", "jax-scan", "float64", 1.0),
                   _entry("S", "lgd-numba", "float64", 0.5, kind="lgd")]
        for entry in entries:
            entry["name"] = f"test_throughput[S-{entry['extra_info']['impl']}-float64]"
        Path(stats).write_text(json.dumps({"benchmarks": entries}))
        Path(junit).write_text('<testsuites><testsuite><testcase name="test_throughput[S-numpy-float64]">'
                               '<failure message="AssertionError: numpy\'s timed run is off the oracle"/></testcase>'
                               '</testsuite></testsuites>')
        return 1

    monkeypatch.setattr(subprocess, "call", suite)
    out = tmp_path / "r.json"
    assert main(["bench", "--workloads", "S", "--dtypes", "float64", "--out", str(out)]) == 1
    report = load(out)
    assert [r["impl"] for r in report["records"]] == ["jax-scan", "lgd-numba"]
    assert [r for r in report["records"] if r["impl"] == "lgd-numba"][0]["ratio_best_peer"] == pytest.approx(2.0)
    assert report["failed"] == [{"case": "S-numpy-float64", "reason": "AssertionError: numpy's timed run is off "
                                                                      "the oracle"}]
    assert "FAILED 1 cases" in capsys.readouterr().out
    assert "**Failed**" in out.with_suffix(".md").read_text()


def test_a_run_whose_every_case_is_skipped_says_why(tmp_path, capsys, monkeypatch):
    """No case can run here (lgd-cupy without a GPU): the reasons, not 'the suite did not run (exit code 0)'."""
    def suite(command, cwd, env):
        junit = next(arg for arg in command if arg.startswith("--junitxml=")).split("=", 1)[1]
        Path(junit).write_text('<testsuites><testsuite><testcase name="test_throughput[S-lgd-cupy-float64]">'
                               '<skipped message="lgd\'s cupy backend is not a CPU backend"/></testcase>'
                               '</testsuite></testsuites>')
        return 0

    monkeypatch.setattr(subprocess, "call", suite)
    assert main(["bench", "--workloads", "S", "--impls", "lgd-cupy", "--out", str(tmp_path / "r.json")]) == 2
    assert "no case could run here (1 skipped): lgd's cupy backend is not a CPU backend" in capsys.readouterr().err


def test_lgd_bench_refuses_an_out_it_cannot_write_and_run_options_with_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda *args, **kwargs: pytest.fail("the suite ran"))
    (tmp_path / "a-file").write_text("")
    assert main(["bench", "--quick", "--out", str(tmp_path / "a-file" / "x.json")]) == 2
    assert "a-file exists and is a file" in capsys.readouterr().err
    assert main(["bench", "--report", "x.json", "--workloads", "S"]) == 2
    assert "--workloads apply to a run" in capsys.readouterr().err


def test_machine_is_described():
    machine = describe_machine()
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["versions"]["numpy"] and machine["versions"]["lgd"] == lgd.__version__
    sharing = machine["fp_sharing"]  # measured where numba and two usable cores are
    if sharing is not None:
        assert sharing["fma_per_ns_one_thread"] > 0
        assert 0 < sharing["throughput_speedup"] and 0 < sharing["latency_speedup"]
        assert "fma throughput" in describe(machine)
        machine["fp_sharing_before"] = dict(sharing, throughput_speedup=1.0)
        assert "1.00x and" in describe(machine) and "when the run began" in describe(machine)


def test_the_machine_names_its_caches_and_cpu_id(tmp_path):
    """The data caches as sysfs lists them (instruction caches left out, the CPUs sharing each counted), and
    the CPU's family, model and stepping: hosts of one machine kind, whose model names can read alike, differ
    in them."""
    from lgd.benchmark.machine import caches, cpu_id

    for index, (level, kind, size, shared) in enumerate([(1, "Data", "48K", "0"), (1, "Instruction", "64K", "0"),
                                                         (2, "Unified", "2048K", "0"),
                                                         (3, "Unified", "491520K", "0-3,8,10-11")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (folder / name).write_text(f"{value}\n")
    found = caches(tmp_path)
    assert found == {"L1d": {"size": "48K", "shared_by": 1}, "L2": {"size": "2048K", "shared_by": 1},
                     "L3": {"size": "491520K", "shared_by": 7}}
    assert caches(tmp_path / "missing") == {}
    machine = dict(describe_machine(), caches=found, cpu_id="family 6 model 167 stepping 1")
    assert "[family 6 model 167 stepping 1] (caches L1d 48K, L2 2048K, L3 491520K shared by 7)" in describe(machine)
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert cpu_id().startswith("family ")


def test_the_machine_names_its_vector_features_and_the_tiles_width(monkeypatch):
    machine = describe_machine()
    features = machine["vector_features"]
    assert features == sorted(features) and all(f.startswith(("avx", "fma", "amx", "sse4")) for f in features)
    if Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in features
    if machine.get("tile_bytes"):  # numba is installed
        from lgd.kernels.numba_cpu import compiler

        assert machine["tile_bytes"] == compiler.VECTOR_BYTES and machine["llvm_cpu"]
        assert f"{machine['tile_bytes']}-byte tiles" in describe(machine)
    assert " ".join(features) in describe(machine)


def test_report_takes_the_smallest_paired_peer_ratio():
    """lgd-numba's cases time the fastest peers back to back with lgd (suite.paired_peers): the report's
    paired ratio is against the fastest of them, and the tables show it beside the ratio of cases timed apart."""
    numba = _entry("S", "lgd-numba", "float64", 0.5, kind="lgd")
    numba["extra_info"]["paired_peers"] = {"torch-compile": {"ratio": 4.26, "ratios": [4.2, 4.26, 4.3]},
                                           "jax-scan": {"ratio": 6.5, "ratios": [6.4, 6.5, 6.6]}}
    report = build_report([numba, _entry("S", "jax-scan", "float64", 0.8)], [], MACHINE, "full", {})
    records = {r["impl"]: r for r in report["records"]}
    assert records["lgd-numba"]["ratio_best_peer_paired"] == pytest.approx(4.26)
    assert records["jax-scan"]["ratio_best_peer_paired"] is None
    markdown = format_markdown(report)
    assert "| S | lgd-numba | float64 | 2,000 | 2.00 | 1.60 | 4.26 | 0.50 |" in markdown
    assert '"paired" is lgd-numba\'s speed over the faster of jax-scan and torch-compile' in markdown
    del numba["extra_info"]["paired_peers"]["torch-compile"]  # quick runs pair jax-scan alone: the note says so
    alone = format_markdown(build_report([numba], [], MACHINE, "quick", {}))
    assert "speed over jax-scan, each" in alone and "torch-compile" not in alone
    assert "\"paired\" is" not in format_markdown(_report())  # no paired timings: no note


def test_paired_peers_time_each_selected_peer_back_to_back(monkeypatch):
    """suite.paired_peers: the selected, available peers that agree with the oracle, each timed in turns with
    lgd's run of the same steps (each timed run after a rest and an untimed run); an unavailable or
    disagreeing one is left out."""
    from lgd.benchmark import suite
    from lgd.benchmark.peers import Unavailable
    from lgd.benchmark.workloads import WORKLOADS

    workload = WORKLOADS["S"].shrunk()
    monkeypatch.setattr(suite, "ROOFLINE_REST_S", 0.0)
    calls = []

    def fake(name, risk, seconds):
        def run(steps):
            calls.append((name, steps))
            time.sleep(seconds if steps > suite.CHECK_STEPS else 0)
            return np.full((1, steps + 1), risk)
        return run

    def prepared(impl, workload, dtype, keep=False):
        assert keep  # the peer's own case reuses it
        if impl == "jax-scan":
            raise Unavailable("JAX is not installed")
        return fake(impl, 1.0, 0.004)

    ours = fake("lgd-numba", 1.0, 0.001)
    result = suite.paired_peers(ours, 50, workload, "float64", {"lgd-numba", "torch-compile", "jax-scan"},
                                prepared, np.ones(1))
    assert set(result) == {"torch-compile"} and len(result["torch-compile"]["ratios"]) == suite.PAIRED_ROUNDS
    assert result["torch-compile"]["ratio"] > 1.5  # the peer sleeps four times as long
    timed = [name for name, steps in calls if steps == 50]  # each timed run after an untimed one
    assert timed == ["lgd-numba", "lgd-numba", "torch-compile", "torch-compile"] * suite.PAIRED_ROUNDS
    assert suite.paired_peers(ours, 50, workload, "float64", {"torch-compile"}, prepared, np.full(1, 2.0)) == {}

    def broken(impl, workload, dtype, keep=False):  # a peer whose risks are NaN disagrees with the oracle too
        return fake(impl, np.nan, 0.0)

    assert suite.paired_peers(ours, 50, workload, "float64", {"torch-compile"}, broken, np.ones(1)) == {}


AVX512 = ["avx2", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl", "fma"]


@pytest.mark.parametrize("core, features, forced, noted", [
    ("Haswell", AVX512, "Haswell", "OPENBLAS_CORETYPE=Haswell in the environment"),
    ("Haswell", AVX512, None, "OpenBLAS chose them"),
    ("SkylakeX", AVX512, None, None),
    ("Haswell", ["avx2", "fma"], None, None),
    (None, AVX512, None, None),
], ids=["forced", "chosen", "avx512_kernels", "avx2_cpu", "core_unknown"])
def test_blas_note_names_avx2_kernels_on_an_avx512_cpu(core, features, forced, noted, monkeypatch):
    """lgd info's note on an OpenBLAS that runs AVX2 kernels where the CPU has AVX-512, and why; nothing
    where its kernels fit the CPU or are not known."""
    from lgd.benchmark.machine import blas_note

    if forced:
        monkeypatch.setenv("OPENBLAS_CORETYPE", forced)
    else:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    blas = [{"library": "openblas", "version": "0.3.30", "threads": 2, "architecture": core, "file": "x.so"},
            {"library": "mkl", "version": "2024", "threads": 2, "architecture": None, "file": "y.so"}]
    note = blas_note(blas, features)
    if noted is None:
        assert note is None
    else:
        assert note.startswith("openblas 0.3.30 run AVX2 kernels") and noted in note and "mkl" not in note


def test_describe_names_the_blas_kernels():
    machine = dict(MACHINE, blas=[{"library": "openblas", "version": "0.3.30", "threads": 2,
                                   "architecture": "SkylakeX"}])
    assert "openblas 0.3.30 (SkylakeX kernels, 2 threads)" in describe(machine)
    assert "openblas 0.3 (2 threads)" in describe(MACHINE)  # a record from before the kernels were recorded


def test_prepared_keeps_only_what_is_asked_for_and_hands_it_over_once(monkeypatch):
    """The plugin's `prepared`: an implementation kept for a later request is prepared once and handed over
    to it; one not kept is prepared at each request; a failure is raised at each request."""
    from lgd.benchmark import plugin
    from lgd.benchmark.peers import Unavailable
    from lgd.benchmark.workloads import WORKLOADS

    made = []

    def fake_prepare(impl, workload, dtype, device=False):
        made.append(impl)
        if impl == "jax-scan":
            raise Unavailable("JAX is not installed")
        return object()

    monkeypatch.setattr(plugin, "prepare", fake_prepare)
    get = plugin.prepared.__wrapped__()
    workload = WORKLOADS["S"].shrunk()
    first = get("torch-compile", workload, "float64", keep=True)
    assert get("torch-compile", workload, "float64", keep=True) is first
    assert get("torch-compile", workload, "float64") is first  # handed over, then forgotten
    assert get("torch-compile", workload, "float64") is not first
    get("lgd-numba", workload, "float64")
    for keep in (True, True, False):
        with pytest.raises(Unavailable):
            get("jax-scan", workload, "float64", keep=keep)
    assert made == ["torch-compile", "torch-compile", "lgd-numba", "jax-scan"]


def test_fp_sharing_needs_two_threads():
    assert fp_sharing(1) is None


def test_lgd_bench_tiny_run_writes_reports_and_compares(tmp_path, capsys):
    """A real run of the suite, as small as it gets: 20 steps of S, the NumPy peer and lgd's numpy backend."""
    out = tmp_path / "tiny.json"
    code = main(["bench", "--workloads", "S", "--impls", "numpy,lgd-numpy,lgd-cupy", "--dtypes", "float64",
                 "--steps-scale", "0.001", "--round-budget", "0.01", "--out", str(out)])
    assert code == 0
    report = load(out)
    assert {r["impl"] for r in report["records"]} == {"numpy", "lgd-numpy"}
    assert all(r["steps"] == 20 and r["steps_per_s"] > 0 and r["roofline_steps_per_s"] > 0
               for r in report["records"])
    assert report["skipped"][0]["case"] == "S-lgd-cupy-float64"
    assert "fp_sharing_before" in report["machine"]  # probed before the run, and again after it
    printed = capsys.readouterr().out
    assert "lgd-numpy" in printed and "vs roofline" in printed
    assert main(["bench", "--report", str(out), "--compare", str(out)]) == 0
    compared = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(" 1.00") for line in compared) == 2


def test_lgd_bench_without_pytest_benchmark_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # importlib finds no such module then
    assert main(["bench", "--quick"]) == 2
    assert 'pip install "lgd[bench]"' in capsys.readouterr().err


def _install(site: Path) -> None:
    """lgd laid out as a wheel installs it: setup.py's build_py (its packages, package_dir and package_data) run
    on a copy of the sources, so that the build writes nothing into the checkout."""
    source = site.parent / "source"
    for name in ("lgd", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", f"--build-lib={site}"], cwd=source, check=True,
                   capture_output=True)


def test_an_install_holds_every_module_and_cuda_source(tmp_path):
    """What setup.py installs (build_py, as a wheel): every Python module of lgd/ and kernels/, and the CUDA
    sources, under lgd/ and lgd/kernels/."""
    site = tmp_path / "site-packages"
    _install(site)
    installed = {path.relative_to(site / "lgd").as_posix() for path in (site / "lgd").rglob("*") if path.is_file()}
    sources = {path.relative_to(ROOT / "lgd").as_posix() for path in (ROOT / "lgd").rglob("*.py")}
    sources |= {"kernels/" + path.relative_to(ROOT / "kernels").as_posix() for path in (ROOT / "kernels").rglob("*")
                if path.is_file() and path.suffix in (".py", ".cu", ".cuh", ".h", ".cpp")}
    assert not sources - installed, sorted(sources - installed)


def test_lgd_bench_runs_from_a_plain_install(tmp_path):
    """`lgd bench` from an installed lgd, run from another folder: it runs the installed suite and writes its
    results into the current folder, nothing into the package. The smallest run: 20 steps of S, two cases."""
    site, work = tmp_path / "site-packages", tmp_path / "work"
    _install(site)
    work.mkdir()
    installed = sorted(path for path in site.rglob("*") if path.is_file())
    # No bytecode caches: the package's files before and after must match. (Numba's kernel cache may make its
    # folder, lgd/kernels/__pycache__, as any import of lgd's numba kernels does in a writable install.)
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", "lgd.cli", "bench", "--workloads", "S", "--impls", "lgd-numpy,numpy",
                           "--dtypes", "float64", "--steps-scale", "0.001", "--round-budget", "0.05"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pytest {site / 'lgd' / 'benchmark' / 'suite.py'} " in done.stdout
    results = sorted(work.iterdir())
    assert [path.suffix for path in results] == [".json", ".md"]
    assert all(path.stem.startswith("lgd-bench-custom-") for path in results)
    assert {r["impl"] for r in load(results[0])["records"]} == {"lgd-numpy", "numpy"}
    assert sorted(path for path in site.rglob("*") if path.is_file()) == installed


def test_breakdown_of_lgd_steps_is_reported():
    """Where the time goes: lgd-numba's step against the same step with a cheap activation, per entry, next to
    the roofline's numpy transcendentals and products."""
    numba = _entry("S", "lgd-numba", "float64", 0.5, kind="lgd")
    numba["extra_info"]["roofline"].update({"transcendental_ns_per_entry": 7.5, "product_s": 40e-6,
                                            "product_at_peak_s": 12.5e-6})
    numba["extra_info"]["breakdown"] = {"step_us": 500.0, "rest_us": 200.0, "activation_us": 300.0,
                                        "activation_ns_per_entry": 300e3 / (256 * 64)}
    report = build_report([numba, _entry("S", "numpy", "float64", 1.0)], [], MACHINE, "full", {})
    markdown = format_markdown(report)
    assert "Where lgd's time goes" in markdown
    assert "| S | lgd-numba | float64 | 500.0 | 300.0 | 18.31 | 200.0 | 7.50 | 40.0 | 12.5 |" in markdown
    table = format_table(report)
    assert "where lgd's time goes" in table and "18.31" in table


def test_first_call_times_are_reported():
    """The first call of lgd-numba in a new process, with an empty kernel cache and from the cache."""
    numba = _entry("M", "lgd-numba", "float32", 0.5, kind="lgd")
    numba["extra_info"]["first_call"] = {"numba_startup_s": 1.234, "cold_s": 9.87, "cached_s": 0.456}
    report = build_report([numba, _entry("M", "numpy", "float32", 1.0)], [], MACHINE, "full", {})
    markdown = format_markdown(report)
    assert "| M | lgd-numba | float32 | 1.23 | 9.9 | 0.46 |" in markdown
    assert "first call in a new process" in format_table(report)
    plain = build_report([_entry("M", "numpy", "float32", 1.0)], [], MACHINE, "full", {})
    assert "First call" not in format_markdown(plain)


def test_the_plugin_selects_only_the_suites_cases():
    """--lgd-workloads and the rest select test_throughput's cases; another test's parameter named `case`
    is left alone."""
    from types import SimpleNamespace

    from lgd.benchmark import plugin

    options = {"--lgd-workloads": "S", "--lgd-impls": "numpy", "--lgd-dtypes": "float64"}
    dropped = []
    config = SimpleNamespace(getoption=options.get,
                             hook=SimpleNamespace(pytest_deselected=lambda items: dropped.extend(items)))

    def item(name, case):
        return SimpleNamespace(originalname=name, callspec=SimpleNamespace(params={"case": case}))

    kept_case, other_case, other_test = (item("test_throughput", ("S", "numpy", "float64")),
                                         item("test_throughput", ("L", "numpy", "float64")),
                                         item("test_replays", "held_out"))
    items = [kept_case, other_case, other_test]
    plugin.pytest_collection_modifyitems(config, items)
    assert items == [kept_case, other_test] and dropped == [other_case]
