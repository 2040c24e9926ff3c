"""The fault paths and the run record: runs that stop early, folders lgd cannot write, Ctrl-C, strict JSON.

Every run here is short and on the numpy backend.
"""

import dataclasses
import json
import math
import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest

import lgd
from lgd import driver, reproduce
from lgd._json import to_json
from lgd.backends import _numpy
from lgd.cli import main, output_folder, trace_names


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript, jq) do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def interrupt_at(monkeypatch):
    """Make the numpy runner behave as if Ctrl-C came before its first chunk at step >= t (once); after the
    first chunk (16 steps) every chunk is one step, so that one starts at t (the driver would otherwise take
    the rest of a short run in one chunk)."""
    def arm(t):
        monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-9)
        advance, fired = _numpy.Runner.advance, []

        def interrupted(self, t_start, t_stop):
            if t_start >= t and not fired:
                fired.append(t_start)
                raise KeyboardInterrupt
            advance(self, t_start, t_stop)

        monkeypatch.setattr(_numpy.Runner, "advance", interrupted)
        return fired

    return arm


# ------------------------------------------------------------------ steps per second of runs that stopped early


def test_a_diverged_run_counts_only_the_steps_it_took():
    X, y = lgd.data.xor(n=40)
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(8), "squared", stepsizes=[0.5, 1e6], steps=200, compute="numpy")
    small, large = grid
    assert small.status == "completed" and small.steps_taken == 200
    assert large.status == "diverged" and large.steps_taken == large.diverged_step < 10
    assert math.isnan(large.phase.final_rate) and math.isnan(lgd.analysis.stable_rate(large).final_rate)
    assert small.phase.final_rate > 0
    assert grid.steps_taken.tolist() == [200, large.diverged_step] and grid.steps_taken.dtype == np.int64
    # each run: its own steps over the batch's time; the batch: all of them
    assert large.seconds == small.seconds == grid.seconds
    assert large.steps_per_second == pytest.approx(large.diverged_step / grid.seconds)
    assert small.steps_per_second == pytest.approx(200 / grid.seconds)
    assert grid.steps_per_second == pytest.approx(small.steps_per_second + large.steps_per_second)


def test_an_interrupted_run_counts_only_the_steps_it_took(interrupt_at):
    X, y = lgd.data.wu_toy()
    fired = interrupt_at(40)
    run = lgd.gd(X, y, lgd.Linear(), stepsize=10.0, steps=100_000, init="zeros", compute="numpy")
    assert fired and run.status == "interrupted"
    assert run.steps_taken == fired[0] < 100_000
    assert run.steps_per_second == pytest.approx(run.steps_taken / run.seconds)


def test_a_keyboard_interrupt_from_a_handler_of_the_users_stops_the_run_between_steps(monkeypatch):
    """A SIGTERM handler that raises KeyboardInterrupt (how a job stops on a batch system's SIGTERM), its signal
    arriving in the middle of a chunk: the run ends at the chunk's end with its weights, step count and last
    record in agreement (it returned the chunk's first step with the weights of a later one)."""
    X, y = lgd.data.xor(n=20)
    advance, fired = _numpy.Runner.advance, []

    def signalled_within(self, t_start, t_stop):
        for t in range(t_start, t_stop):
            advance(self, t, t + 1)
            if t == 40 and not fired:
                fired.append(t)
                os.kill(os.getpid(), signal.SIGTERM)

    def stop(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(_numpy.Runner, "advance", signalled_within)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=5.0, steps=100_000, compute="numpy")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert fired and run.status == "interrupted" and run.steps_taken > 41
    assert signal.getsignal(signal.SIGTERM) is previous
    monkeypatch.setattr(_numpy.Runner, "advance", advance)
    whole = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=5.0, steps=run.steps_taken, compute="numpy")
    np.testing.assert_array_equal(run.weights, whole.weights)
    np.testing.assert_array_equal(run.risk, whole.risk)


def test_an_interrupted_run_records_the_rules_stepsize_of_the_whole_run(interrupt_at):
    """The record of the step an interrupted run stopped at gives eta_t of the run it was, not of one ending
    there: cosine decay over the call's steps (a run ending at t would have decayed to 0)."""
    X, y = lgd.data.xor(n=20)
    fired = interrupt_at(40)
    rules = [lgd.stepsize.cosine(2.0), lgd.stepsize.warmup(2.0, 10), 3.0]
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(4), stepsizes=rules, steps=1000, record=100, compute="numpy")
    t = fired[0]
    assert grid.status == ["interrupted"] * 3 and grid.step[-1] == t
    np.testing.assert_array_equal(grid.eta[:, -1], [(1 + math.cos(math.pi * t / 1000)), 2.0, 3.0])
    assert grid.eta[0, -1] == lgd.stepsize.stepsize_at(lgd.stepsize.COSINE, 2.0, 0.0, 0.0, t, 1000, *[math.nan] * 4)


def test_an_interrupted_runs_last_record_takes_two_slots_not_a_second_trace(interrupt_at, monkeypatch):
    """The record of the step an interrupted run stopped at comes from a run that records its two ends: the
    traces made are the run's and one of two slots a field (records, weights, sharpness), where the records' own
    steps made a second trace as long as the run's (trajectories: gigabytes); its records are those of a run
    that ended there."""
    made, empty = [], lgd.backends.Trace.empty.__func__

    def recorded(cls, configs, records, width, neurons, **options):
        made.append((records, options["weight_records"], options["sharpness_records"]))
        return empty(cls, configs, records, width, neurons, **options)

    monkeypatch.setattr(lgd.backends.Trace, "empty", classmethod(recorded))
    X, y = lgd.data.xor(n=20)
    fired = interrupt_at(37)
    record = lgd.Record(every=1, weights=2, sharpness_every=5)
    run = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=1000, record=record, compute="numpy")
    t = fired[0]
    assert run.status == "interrupted" and made == [(1001, 501, 201), (2, 2, 2)]
    assert run.step[-1] == run.trajectory_step[-1] == run.sharpness_step[-1] == t
    monkeypatch.setattr(lgd.backends.Trace, "empty", classmethod(empty))
    whole = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=t, record=record, compute="numpy")
    np.testing.assert_array_equal(run.trajectory[-1], whole.weights)
    for name in ("risk", "margin", "grad_norm", "weight_norm"):
        np.testing.assert_array_equal(getattr(run, name), getattr(whole, name), err_msg=name)
    np.testing.assert_allclose(run.sharpness[-1], whole.sharpness[-1], rtol=1e-12)


def test_the_rate_of_a_sweep_config_uses_its_steps_taken():
    X, y = lgd.data.wu_toy()
    grid = lgd.sweep(X, y, lgd.Linear(), stepsizes=[1.0, 2.0], steps=10, init="zeros", compute="numpy")
    stopped = dataclasses.replace(grid, status=["interrupted", "interrupted"], steps_taken=np.array([7, 7]),
                                  seconds=2.0)
    assert [run.steps_per_second for run in stopped] == [3.5, 3.5]


def test_results_saved_without_steps_taken_or_log_risk_still_load(tmp_path):
    """Files written before these fields existed: steps_taken read off how each run ended, log_risk None."""
    X, y = lgd.data.xor(n=40)
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(8), "squared", stepsizes=[0.5, 1e6], steps=50, compute="numpy")
    path = grid.save(tmp_path / "sweep.npz")
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name not in ("steps_taken", "log_risk")}
    header = json.loads(str(arrays.pop("header")))
    header["none"] = [name for name in header.get("none", []) if name != "log_risk"]
    np.savez(tmp_path / "old.npz", header=np.array(json.dumps(header)), **arrays)
    old = lgd.load(tmp_path / "old.npz")
    assert old.log_risk is None and old.steps_taken.tolist() == grid.steps_taken.tolist()
    assert old[1].steps_taken == grid[1].diverged_step and math.isfinite(old[0].final_log_risk)
    np.testing.assert_array_equal(lgd.results.log_risk_trace(old[1]), np.log(grid[1].risk))  # from the risk


# ------------------------------------------------------------------ save and load accept the same names


def test_save_and_load_accept_the_same_names(tmp_path):
    X, y = lgd.data.wu_toy()
    run = lgd.gd(X, y, lgd.Linear(), stepsize=10.0, steps=20, init="zeros", compute="numpy")
    written = run.save(tmp_path / "noext")
    assert written == tmp_path / "noext.npz" and written.exists()
    for name in (tmp_path / "noext", str(tmp_path / "noext"), written):
        again = lgd.load(name)
        assert (again.risk == run.risk).all() and again.steps_taken == run.steps_taken == 20
    assert run.save(str(tmp_path / "with.npz")) == tmp_path / "with.npz"
    with pytest.raises(FileNotFoundError):
        lgd.load(tmp_path / "missing")
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))
    np.save(tmp_path / "array.npy", np.arange(3))
    (tmp_path / "text.npz").write_text("not an archive")
    lgd.gd(X, y, lgd.Linear(), stepsize=10.0, steps=5, compute="numpy", checkpoint=tmp_path / "run.ckpt")
    for name, why in (("foreign.npz", "KeyError"), ("array.npy", "one array"), ("text.npz", ""),
                      ("run.ckpt", "an lgd checkpoint: lgd.resume reads it")):
        with pytest.raises(ValueError, match=f"is not a result lgd saved, or it is damaged .*{why}"):
            lgd.load(tmp_path / name)


def test_the_run_record_round_trips(tmp_path):
    X, y = lgd.data.xor(n=40)
    grid = lgd.sweep(X, y, lgd.TwoLayerNet(8), "squared", stepsizes=[0.5, 1e6], steps=30, compute="numpy")
    again = lgd.load(grid.save(tmp_path / "sweep"))
    for name in ("log_risk", "steps_taken", "initial_weights", "initial_outer_weights"):
        np.testing.assert_array_equal(getattr(again, name), getattr(grid, name))
    run = again[1]
    assert run.log_risk.shape == run.risk.shape and run.steps_taken == run.diverged_step
    assert lgd.load(run.save(tmp_path / "run")).steps_taken == run.steps_taken


# ------------------------------------------------------------------ output folders lgd cannot write


def _no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the run started although its output folder cannot be written")

    monkeypatch.setattr(lgd, "sweep", refuse)
    monkeypatch.setattr(reproduce, "reproduce", refuse)


def test_lgd_run_refuses_an_output_folder_under_a_file_before_any_work(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["run", "--backend", "numpy", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "Traceback" not in err
    assert main(["run", "--backend", "numpy", "--out", str(blocker)]) == 2
    assert "exists and is a file, not a folder" in capsys.readouterr().err
    assert main(["reproduce", "balancing", "--quick", "--out", str(blocker / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders; the simulated test below covers the message")
def test_lgd_run_refuses_a_read_only_folder(tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["run", "--backend", "numpy", "--out", str(folder)]) == 2
    finally:
        folder.chmod(0o700)
    assert "cannot write into the output folder" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_an_unwritable_folder_is_reported_in_one_line(tmp_path, capsys, monkeypatch):
    """Simulated (the tests may run as root, who can write anywhere): the probe file cannot be created."""
    _no_work(monkeypatch)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("lgd.cli.tempfile.mkstemp", denied)
    assert main(["run", "--backend", "numpy", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"lgd run: error: cannot write into the output folder {tmp_path / 'out'}: Permission denied"


def test_output_folder_creates_the_folder_and_leaves_no_probe(tmp_path):
    out = output_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert output_folder(out) == out


# ------------------------------------------------------------------ trace files: one per configuration


def test_stepsizes_that_print_alike_get_their_own_trace_files(tmp_path, capsys):
    stepsizes = [1234567.0, 1234568.0, 1234567.0]
    assert len(set(trace_names(stepsizes))) == 3
    assert main(["run", "--dataset", "wu_toy", "--model", "linear", "--init", "zeros", "--steps", "3",
                 "--stepsizes", "1234567,1234568,1234567", "--backend", "numpy", "--no-plot",
                 "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert len({r["traces"] for r in runs}) == 3
    for r in runs:
        assert lgd.load(tmp_path / r["traces"]).stepsize == r["stepsize"]
    assert "1234568.0" in capsys.readouterr().out  # the table tells them apart too


# ------------------------------------------------------------------ strict JSON


def test_to_json_writes_non_finite_numbers_as_null():
    value = {"nan": math.nan, "inf": np.float32(np.inf), "array": np.array([1.0, -np.inf, np.nan]),
             "nested": [{"x": (np.int64(3), np.bool_(True))}], "none": None}
    assert strict_json(to_json(value)) == {"nan": None, "inf": None, "array": [1.0, None, None],
                                           "nested": [{"x": [3, True]}], "none": None}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        to_json({"object": object()})


def test_lgd_run_summary_is_strict_json(tmp_path, monkeypatch):
    """A diverged run, and NaN in the numbers (forced here), still give a summary strict parsers read."""
    monkeypatch.setattr("lgd.cli._last", lambda array: math.nan)
    assert main(["run", "--loss", "squared", "--stepsizes", "0.5,1e6", "--steps", "50", "--backend", "numpy",
                 "--no-plot", "--out", str(tmp_path)]) == 0
    runs = strict_json((tmp_path / "summary.json").read_text())["runs"]
    assert runs[1]["status"] == "diverged" and runs[1]["accuracy"] is None


@pytest.mark.parametrize("name", ["eos", "balancing"])
def test_lgd_reproduce_summary_is_strict_json(tmp_path, name):
    """Numbers that are NaN (eos: the sharpness of eta = 2 never reaches 2/eta; balancing: the gap of a run
    that did not converge) are written as null."""
    assert main(["reproduce", name, "--quick", "--backend", "numpy", "--no-plot", "--out", str(tmp_path)]) == 0
    summary = strict_json((tmp_path / f"{name}.json").read_text())
    if name == "eos":
        assert summary["runs"][0]["sharpness"]["median_over_limit_after"] is None
    else:
        assert None in summary["final_gap"]


# ------------------------------------------------------------------ Ctrl-C


def test_lgd_run_shows_a_diverged_run_as_diverged(tmp_path, capsys):
    assert main(["run", "--loss", "squared", "--stepsizes", "0.5,1e6", "--steps", "50", "--backend", "numpy",
                 "--no-plot", "--out", str(tmp_path)]) == 0
    diverged = json.loads((tmp_path / "summary.json").read_text())["runs"][1]
    printed = capsys.readouterr().out
    assert f"diverged at step {diverged['diverged_step']}" in printed
    # no final risk for it (null, '-'), rather than a last record that may look healthy
    assert diverged["final_risk"] is None and diverged["final_log_risk"] is None
    assert diverged["final_eta_t_risk"] is None  # no final rate either (it read 0.0, a perfect rate)
    assert next(line for line in printed.splitlines() if line.strip().startswith("1e+06")).split()[1] == "-"


def test_ctrl_c_during_setup_is_one_line_and_exit_code_130(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("lgd.cli._load_data", interrupted)
    assert main(["run", "--backend", "numpy", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "lgd: interrupted\n"
    assert not (tmp_path / "summary.json").exists()


def test_lgd_run_interrupted_writes_what_it_has(tmp_path, capsys, interrupt_at):
    interrupt_at(30)
    assert main(["run", "--dataset", "wu_toy", "--model", "linear", "--init", "zeros", "--stepsizes", "1,10",
                 "--steps", "1000000", "--backend", "numpy", "--no-plot", "--out", str(tmp_path)]) == 130
    printed = capsys.readouterr()
    assert "interrupted at step" in printed.out and "wrote what it had" in printed.err
    summary = json.loads((tmp_path / "summary.json").read_text())
    for r in summary["runs"]:
        assert r["status"] == "interrupted" and 30 <= r["steps_taken"] < 1000000
        assert r["steps_per_second"] == pytest.approx(r["steps_taken"] / summary["seconds"])
        assert lgd.load(tmp_path / r["traces"]).step[-1] == r["steps_taken"]


def test_lgd_reproduce_interrupted_exits_130(tmp_path, capsys, interrupt_at):
    interrupt_at(20)
    assert main(["reproduce", "balancing", "--quick", "--backend", "numpy", "--no-plot", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "lgd: interrupted\n"
    assert not (tmp_path / "balancing.json").exists()


def test_sigint_to_lgd_run_ends_it_cleanly(tmp_path):
    """A real Ctrl-C (SIGINT) to `python -m lgd.cli run`, a moment after it started: exit code 130, no traceback."""
    command = [sys.executable, "-m", "lgd.cli", "run", "--backend", "numpy", "--steps", "10000000",
               "--record-every", "1000", "--no-plot", "--out", str(tmp_path / "out")]
    # A shell running the suite in the background ignores SIGINT, and a child inherits that: give it the default.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        select.select([process.stdout], [], [], 5.0)  # the header line, printed before the run starts
        header = process.stdout.readline() if process.poll() is None else ""
        select.select([], [], [], 0.5)                  # let GD run for a moment
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in err, err
    assert process.returncode == 130, (out, err)
    assert "interrupted" in header + out + err
    if "wrote what it had" in err:  # the signal reached GD (the usual case): what it had is written
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert {r["status"] for r in summary["runs"]} == {"interrupted"}
