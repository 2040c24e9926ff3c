"""The GPU benchmark of bench/gpu_check.sh (lgd.benchmark.gpu), as far as it can be checked without a GPU: the
arguments, the order of the cases, the ratios and the table, and that the module imports without cupy,
torch or jax."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lgd.benchmark import gpu


def test_the_module_imports_without_the_gpu_libraries():
    code = ("import sys, lgd.benchmark.gpu; "
            "print(sorted(m for m in ('cupy', 'torch', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_arguments_are_checked_against_the_valid_names():
    args = gpu.parse(["--workloads", "S,L", "--dtypes", "float32", "--seconds", "30"])
    assert args.workloads == ["S", "L"] and args.dtypes == ["float32"] and args.seconds == 30.0
    assert args.impls == list(gpu.IMPLS)
    with pytest.raises(SystemExit):
        gpu.parse(["--impls", "lgd-cupy,torch-eager"])


def test_the_plan_runs_lgd_and_the_jax_loop_first_then_lgds_other_paths_and_shapes_and_torch_compile_last():
    cases = gpu.plan()
    assert cases[0] == ("S", "lgd-cupy", "float64", None)
    assert {(impl, launch) for _, impl, _, launch in cases[:10]} == {("lgd-cupy", None)}
    assert {impl for _, impl, _, _ in cases[10:20]} == {"jax-scan"}
    paths = len(gpu.OTHER_PATHS) * len(gpu.DTYPES)
    assert {(name, impl, launch) for name, impl, _, launch in cases[20:20 + paths]} == {
        (name, "lgd-cupy", f"path:{path}") for name, path in gpu.OTHER_PATHS.items()}
    shapes = len(gpu.LAUNCHES) * (len(gpu.WORKLOAD_NAMES) - 1) * len(gpu.DTYPES)
    assert {(impl, launch) for _, impl, _, launch in cases[20 + paths:20 + paths + shapes]} == {
        ("lgd-cupy", launch) for launch in gpu.LAUNCHES}
    assert "L" not in {name for name, _, _, _ in cases[20:20 + paths + shapes]}
    assert cases[-1][1] == "torch-compile"
    assert len(cases) == len(gpu.WORKLOAD_NAMES) * len(gpu.IMPLS) * len(gpu.DTYPES) + paths + shapes
    assert gpu.plan(launches=(), paths=False) == [case for case in cases if case[3] is None]
    with pytest.raises(SystemExit):
        gpu.parse(["--launches", "512"])
    assert gpu.workload("SWEEP-64").configs == 64 and gpu.workload("SWEEP-1024").configs == 1024


def test_ratios_and_the_table_from_a_fake_report():
    records = [
        {"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "steps_per_s": 5e5, "gflops": 2100.0,
         "first_call_s": 3.1, "check_rel_error": 2e-15},
        {"workload": "S", "impl": "jax-scan", "dtype": "float64", "steps_per_s": 5e4, "gflops": 210.0,
         "first_call_s": 4.0, "check_rel_error": 1e-14},
    ]
    peaks = {"fma_float64_tflops": 33.5, "fma_float32_tflops": 60.0}
    gpu.ratios(records, peaks, {("S", "float64"): {"steps_per_s": 1e6}})
    assert records[0]["vs_jax_scan"] == pytest.approx(10.0)
    assert records[0]["fraction_of_fma_peak"] == pytest.approx(2100.0 / 33500.0)
    assert records[0]["vs_product_roofline"] == pytest.approx(0.5)
    table = gpu.markdown({"created": "now", "device": "NVIDIA H200", "peaks": peaks, "records": records,
                          "failed": ["L torch-compile float64: RuntimeError: x"],
                          "skipped": ["M jax-jit: out of time"]})
    assert "| S | float64 | lgd-cupy | - | - | 5e+05 | 2.1e+03 | 10 |" in table
    assert "fma_float64_tflops 33.5" in table and "Failed:" in table and "- M jax-jit: out of time" in table


def test_the_gpu_check_script_parses():
    script = Path(__file__).parent.parent / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_profile_runs_a_chunk_of_each_case(monkeypatch, capsys):
    """--profile (Nsight Compute's runs in bench/gpu_check.sh): lgd-cupy on each case, on the device, one
    chunk of PROFILE_EVALUATIONS evaluations (the fake stands for the device)."""
    from lgd.benchmark import peers

    calls = []

    def fake_prepare(impl, workload, dtype, device=False):
        def run(steps):
            calls.append((impl, workload.name, dtype, device, steps))
            return np.ones((workload.configs, steps + 1))
        return run

    monkeypatch.setattr(peers, "prepare", fake_prepare)
    assert gpu.main(["--profile"]) == 0
    assert calls == [("lgd-cupy", gpu.workload(name).name, dtype, True, gpu.PROFILE_EVALUATIONS - 1)
                     for name, dtype in gpu.PROFILE_CASES]
    assert capsys.readouterr().out.count("profile run ") == len(gpu.PROFILE_CASES)


def test_lgd_cupys_fused_cases_are_compared_with_the_recorded_run(tmp_path):
    """vs_recorded: lgd-cupy on the fused kernel against an earlier report's same case and launch shape (the
    'benchmark' section at the default shape, 'launch_shapes' under the shapes they name); nothing for the
    peers or for the products path."""
    import json

    saved = {"date": "2026-12-04", "benchmark": {"records": [
                 {"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "steps_per_s": 1e4},
                 {"workload": "S", "impl": "jax-scan", "dtype": "float64", "steps_per_s": 8e4}]},
             "launch_shapes": {"records": [
                 {"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "launch": "256x1", "steps_per_s": 9e3},
                 {"workload": "M", "impl": "lgd-cupy", "dtype": "float64", "launch": "256x1", "steps_per_s": 600.0},
                 {"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "launch": "512x1", "steps_per_s": 1.2e4}]}}
    (tmp_path / "gpu.json").write_text(json.dumps(saved))
    date, rates = gpu.recorded_rates(tmp_path / "gpu.json")
    assert date == "2026-12-04"
    assert rates == {("S", "float64", "default"): 1e4, ("S", "float64", "256x1"): 9e3,
                     ("M", "float64", "256x1"): 600.0, ("S", "float64", "512x1"): 1.2e4}
    records = [{"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "path": "fused", "steps_per_s": 3e4,
                "gflops": 1.0},
               {"workload": "S", "impl": "lgd-cupy", "dtype": "float64", "launch": "512x1", "path": "fused",
                "steps_per_s": 3e4, "gflops": 1.0},
               {"workload": "M", "impl": "lgd-cupy", "dtype": "float64", "path": "products", "steps_per_s": 9e3,
                "gflops": 1.0},
               {"workload": "S", "impl": "jax-scan", "dtype": "float64", "steps_per_s": 9e4, "gflops": 1.0}]
    gpu.ratios(records, {}, {}, rates)
    assert [r["vs_recorded"] for r in records] == [pytest.approx(3.0), pytest.approx(2.5), None, None]
    assert gpu.recorded_rates(tmp_path / "missing.json") == (None, {})
    table = gpu.markdown({"created": "now", "recorded_date": date, "records": records})
    assert "against the run of 2026-12-04" in table and "| 3 |" in table


def test_the_committed_gpu_report_gives_recorded_rates():
    date, rates = gpu.recorded_rates(Path(__file__).parent.parent / gpu.RECORDED)
    assert date and {("S", "float64", "default"), ("SWEEP-1024", "float64", "default")} <= set(rates)
