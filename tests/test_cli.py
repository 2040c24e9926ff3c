"""The `lgd` command line end to end, and the promise that `import lgd` stays light."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lgd
from lgd.cli import DEFAULT_STEPSIZES, main


def test_lgd_run_defaults_show_both_phases(tmp_path, capsys):
    """The main job exactly as the README runs it (only the output folder differs)."""
    assert main(["run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "stepsize" in printed and "transition" in printed and "wrote" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["stepsize"] for r in runs] == list(DEFAULT_STEPSIZES)
    assert all(r["status"] == "completed" and r["accuracy"] == 1.0 for r in runs)
    small, *large = runs
    assert small["increases_before"] == 0  # the small stepsize is monotone from the start
    for r in large:  # the large ones oscillate (EoS), then enter the stable phase and stay monotone
        assert r["increases_before"] > 0 and r["peak_risk"] > 0.7
        assert r["transition_step"] is not None and r["increases_after"] == 0
    assert large[-1]["final_risk"] < large[0]["final_risk"] < small["final_risk"]
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    run = lgd.load(tmp_path / runs[-1]["traces"])
    assert run.risk.shape == (20001,) and run.stepsize == DEFAULT_STEPSIZES[-1]


def test_lgd_run_options(tmp_path, capsys):
    code = main(["run", "--dataset", "wu_toy", "--model", "linear", "--stepsizes", "0.5,200", "--steps", "300",
                 "--backend", "numpy", "--record-every", "10", "--out", str(tmp_path), "--no-plot",
                 "--dtype", "float32"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["stepsize"] for r in summary["runs"]] == [0.5, 200.0]
    assert "Linear()" in summary["header"] and "float32" in summary["header"]
    assert not (tmp_path / "figure.png").exists()
    assert [r["traces"] for r in summary["runs"]] == ["run0_eta0.5.npz", "run1_eta200.npz"]
    run = lgd.load(tmp_path / "run1_eta200.npz")
    assert run.step[-1] == 300 and run.step[1] == 10 and run.weights.dtype == np.float32


@pytest.mark.parametrize("args, message", [
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--activation", "sigmoid"], "unknown activation 'sigmoid'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
])
def test_lgd_run_reports_bad_options(tmp_path, capsys, args, message):
    assert main(["run", "--steps", "2", "--backend", "numpy", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_lgd_run_rejects_bad_stepsizes_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--stepsizes", "1,-2", "--out", str(tmp_path)])
    assert "stepsizes must be positive and finite, got [-2.0]" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_lgd_run_needs_a_path_for_local_datasets(tmp_path, capsys):
    assert main(["run", "--dataset", "mnist", "--out", str(tmp_path / "out")]) == 2
    assert "lgd run: error: --dataset mnist needs --data-path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # options are checked before the output folder is made


@pytest.mark.parametrize("args, message", [
    (["--dataset", "wu_toy", "--n", "10"], "dataset 'wu_toy' takes no n; its options: normalize"),
    (["--out", ""], "the output folder is named by an empty path"),
    (["--model", "linear", "--width", "5", "--activation", "tanh"],
     "--model linear has no hidden layer: --width, --activation apply to --model two_layer"),
])
def test_lgd_run_refuses_options_that_do_not_apply(tmp_path, capsys, args, message):
    assert main(["run", "--steps", "2", "--backend", "numpy", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--record-every", "0"], "--record-every must be >= 1, got 0"),
    (["--loss", "bogus"], "unknown loss 'bogus'"),
    (["--init", "zeros", "--init-scale", "2"], "init_scale scales the 'normal' init only"),
    (["--data-path", "/somewhere"], "--dataset xor is embedded: --data-path is for mnist and cifar10"),
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_options_are_refused_before_the_output_folder_or_the_header(tmp_path, capsys, command, args, message):
    if command == "sweep" and args[0] == "--data-path":
        pytest.skip("lgd sweep reads embedded datasets only: no --data-path")
    assert main([command, "--backend", "numpy", "--out", str(tmp_path / "out"), *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "" and not (tmp_path / "out").exists()


def test_a_second_ctrl_c_while_lgd_run_writes_its_files_waits_for_them(tmp_path, capsys, monkeypatch):
    """The old files are cleared and the new ones written whole (a Ctrl-C then left neither, and a trace cut
    short), and the command then ends interrupted."""
    import signal

    from lgd.results import Run

    assert main(["run", "--steps", "5", "--stepsizes", "1,2,3", "--backend", "numpy", "--no-plot",
                 "--out", str(tmp_path)]) == 0
    save, saved = Run.save, []

    def save_then_ctrl_c(self, path):
        saved.append(path)
        if len(saved) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return save(self, path)

    monkeypatch.setattr(Run, "save", save_then_ctrl_c)
    assert main(["run", "--steps", "5", "--stepsizes", "4,5", "--backend", "numpy", "--no-plot",
                 "--out", str(tmp_path)]) == 130
    assert "lgd: interrupted" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [run["stepsize"] for run in summary["runs"]] == [4.0, 5.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run0_eta4.npz", "run1_eta5.npz", "summary.json"]
    assert lgd.load(tmp_path / "run1_eta5.npz").stepsize == 5.0


def test_lgd_run_writes_its_files_before_the_table_and_ends_quietly_when_stdout_closes(tmp_path):
    """`lgd run | head -1`: the reader is gone before the table; the traces, summary and figure are written
    all the same, and the command ends with 141 (128 + SIGPIPE) and no traceback."""
    process = subprocess.Popen([_console_script(), "run", "--steps", "2000", "--backend", "numpy", "--no-plot",
                                "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # the header, printed before GD starts; then the reader goes
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and first.startswith("xor (n=100")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all((tmp_path / run["traces"]).exists() for run in summary["runs"])


def test_a_second_run_into_the_folder_replaces_the_first_runs_files(tmp_path, capsys):
    """What an earlier lgd run wrote (its summary's "files") goes; other files in the folder stay."""
    (tmp_path / "notes.txt").write_text("mine")
    common = ["run", "--steps", "20", "--backend", "numpy", "--out", str(tmp_path)]
    assert main([*common, "--stepsizes", "1,2,3"]) == 0
    first = json.loads((tmp_path / "summary.json").read_text())["files"]
    assert first[:4] == ["summary.json", "run0_eta1.npz", "run1_eta2.npz", "run2_eta3.npz"]
    assert main([*common, "--stepsizes", "5", "--no-plot"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "run0_eta5.npz", "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text())["files"] == ["summary.json", "run0_eta5.npz"]
    assert f"wrote {tmp_path / 'summary.json'}, {tmp_path / 'run0_eta5.npz'}" in capsys.readouterr().out


def test_a_run_whose_traces_do_not_fit_in_memory_is_told_what_to_record(monkeypatch):
    from lgd import driver

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.24 TiB")

    monkeypatch.setattr(driver.Trace, "empty", no_memory)
    X, y = lgd.data.xor(n=20)
    with pytest.raises(MemoryError, match=r"3 configuration\(s\) do not fit in memory \(Unable to allocate 2.24 "
                                          r"TiB\): the largest are their 1,000,001 recorded steps; record every k-th"):
        lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=[1.0, 2.0, 3.0], steps=10**6, compute="numpy")
    # Where the trajectory or the sharpness is what does not fit, the message names it and its own option.
    for options, what in ((dict(every=10**5, weights=1), r"1,000,001 recorded weights; record the weights every"),
                          (dict(every=10**5, sharpness_every=1), r"1,000,001 sharpness measurements; measure it")):
        with pytest.raises(MemoryError, match=what):
            lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=[1.0], steps=10**6, record=lgd.Record(**options),
                      compute="numpy")


def test_records_beyond_the_memory_available_are_refused_before_they_are_made(monkeypatch):
    """Where the system overcommits, numpy's allocations of them succeed and the process is killed as they are
    filled: their bytes are added up against the memory available first."""
    from lgd import driver

    monkeypatch.setattr(driver, "_available_memory", lambda: 50 * 2**20)
    monkeypatch.setattr(driver.Trace, "empty", lambda *args, **kwargs: pytest.fail("the records were made"))
    X, y = lgd.data.xor(n=20)
    # 9 scalar traces of 1,000,001 records for 1 configuration: 68.7 MiB
    with pytest.raises(MemoryError, match=r"1 configuration\(s\) do not fit in memory \(0.1 GiB of records, 0.0 GiB "
                                          r"of memory available\): the largest are their 1,000,001 recorded steps"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), steps=10**6, compute="numpy")


def test_lgd_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"lgd {lgd.__version__}"


def test_lgd_info_lists_backends(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "numpy  usable" in printed and "'auto' chooses:" in printed
    for name in ("numba", "cupy"):
        assert f"  {name}" in printed
    if lgd.backends.availability("numba")[0]:
        import numba

        assert f"numba threads: {numba.get_num_threads()} " in printed
    from lgd.benchmark.machine import blas_libraries

    for blas in blas_libraries():  # each loaded BLAS with the kernels it chose
        assert f"{blas['library']} {blas['version']} ({blas['architecture'] or '?'} kernels" in printed


def _console_script() -> str:
    beside_python = Path(sys.executable).parent / "lgd"
    script = str(beside_python) if beside_python.exists() else shutil.which("lgd")
    assert script is not None, "the `lgd` console script is missing: install the package as the README says"
    return script


def test_console_script_is_installed():
    result = subprocess.run([_console_script(), "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "backends:" in result.stdout


def test_import_lgd_imports_neither_numba_nor_cupy():
    # lgd.distributed, lgd.reproduce, lgd.plot and lgd.dynamics are reachable from `import lgd` and light too
    code = ("import sys, lgd; lgd.distributed.sweep, lgd.reproduce.reproduce, lgd.plot.plot_runs, lgd.dynamics.flow; "
            "heavy = [m for m in ('numba', 'cupy', 'matplotlib', 'sklearn', 'scipy', 'pandas', 'dask', 'xarray', "
            "'zarr') if m in sys.modules]; print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
