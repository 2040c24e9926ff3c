"""Checkpoint and resume (lgd.checkpoint): a run killed and resumed gives the bits of a run never stopped.

The problems are small (a few seconds of steps on 2 cores). The SIGKILL tests run the call in a subprocess
(this module's :func:`problem`, so both processes make the very same call), kill it once its first
checkpoint exists, and resume it here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lgd
from lgd import backends, checkpoint as _checkpoint, driver
from lgd.backends import _numba
from conftest import make_problem, register_host_cuda, run_backend

# The calls the tests make: (arguments of lgd.sweep, backend), sized to run a couple of seconds.
# The run at 1e4 diverges at its first steps. Trajectories, Lyapunov exponents and the sharpness (in the
# kernel) are recorded, but by "plain": a million cheap steps. No team of threads (n m < 2 TEAM_WORK), whose
# spinning barriers crawl on a loaded machine: test_the_numba_bits_do_not_depend_on_where_chunks_end has one.
PROBLEMS = {
    "numba": dict(data=dict(n=64), width=32, stepsizes=[2.0, 1e4], steps=40_000, compute="numba",
                  record=dict(every=50, weights=5000, lyapunov=1, sharpness_every=20_000)),
    "numba-plain": dict(data=dict(n=20), width=4, stepsizes=[2.0, 1e4], steps=1_000_000, compute="numba",
                        record=dict(every=1000)),
    "numpy": dict(data=dict(n=20), width=4, stepsizes=[2.0, 1e4], steps=10_000, compute="numpy",
                  record=dict(every=10, weights=1000, lyapunov=1, sharpness_every=2500)),
}


def problem(name: str, checkpoint=None, checkpoint_every=0.1, steps=None, **changes):
    """lgd.sweep on problem `name` of PROBLEMS (its steps replaced by `steps`, its arguments by `changes`)."""
    spec = PROBLEMS[name]
    X, y = lgd.data.xor(**spec["data"])
    arguments = dict(stepsizes=spec["stepsizes"], steps=steps or spec["steps"], seeds=(0,), X_test=X[:5],
                     y_test=y[:5], record=lgd.Record(**spec["record"]), compute=spec["compute"],
                     divergence=lgd.Divergence(risk=3.0))
    arguments.update(changes)
    return lgd.sweep(X, y, lgd.TwoLayerNet(spec["width"], train_outer=True), "logistic", **arguments,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def assert_same_bits(expected, actual):
    """Every field of two results is the same to the last bit (NaN where NaN), but the wall-clock figures
    and the metadata (which says where the checkpoint is)."""
    assert type(actual) is type(expected)
    for field in dataclasses.fields(expected):
        if field.name in ("seconds", "steps_per_second", "meta"):
            continue
        want, got = getattr(expected, field.name), getattr(actual, field.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), field.name
        else:
            assert got == want, field.name


def interrupt_once(monkeypatch, name: str, at: int, error=KeyboardInterrupt):
    """Make backend `name`'s runner behave as if Ctrl-C (or another `error`) came before its chunk at step
    `at`: after the first chunk (16 steps) every chunk is one step, so that one starts there (the driver
    would otherwise take the rest of a short run in one chunk)."""
    monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-9)
    runner = backends.resolve(name)._module().Runner
    advance, fired = runner.advance, []

    def interrupted(self, t_start, t_stop):
        if t_start >= at and not fired:
            fired.append(t_start)
            raise error
        advance(self, t_start, t_stop)

    monkeypatch.setattr(runner, "advance", interrupted)
    return fired


# ------------------------------------------------------------------ killed and resumed: the same bits


@pytest.mark.parametrize("name", ["numba", "numpy"])
def test_a_run_killed_and_resumed_gives_the_bits_of_a_run_never_stopped(name, tmp_path):
    if name == "numba" and not backends.availability("numba")[0]:
        pytest.skip("numba is not installed")
    path = tmp_path / "sweep.ckpt"
    problem(name, steps=1)  # compile (or load) the kernel before the clock starts
    tests = str(Path(__file__).resolve().parent)
    code = (f"import sys; sys.path.insert(0, {tests!r}); import test_checkpoint; "
            f"test_checkpoint.problem({name!r}, {str(path)!r})")
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()!r}"
        assert path.exists(), "no checkpoint after 60 s"
    finally:
        process.kill()  # SIGKILL: no handler, no last checkpoint
        process.wait()
    first = _checkpoint.read(path)
    assert first.status == "running" and 0 < first.header["reached"] < PROBLEMS[name]["steps"]
    resumed = problem(name, path)
    expected = problem(name)
    assert_same_bits(expected, resumed)
    assert resumed.status == ["completed", "diverged"] and resumed.meta["sittings"] == 2
    # Honest figures: the time of both sittings, the rate over all the steps taken.
    last = _checkpoint.read(path)
    assert last.status == "completed" and last.header["seconds"] == resumed.seconds > first.header["seconds"] > 0
    assert resumed.steps_per_second == pytest.approx(resumed.steps_taken.sum() / resumed.seconds)


def test_the_numba_bits_do_not_depend_on_where_chunks_end(monkeypatch):
    """Runner protocol in chunks of 7, 600 and all at once, a sweep of two whose second run diverges:
    from then on its survivor has a team of two threads (TEAM_WORK 1), taken at the same step however
    the chunks fall. Also through lgd.sweep with chunks of a step or two against the clock's chunks, with
    the tangent vectors and the sharpness's warm start carried from chunk to chunk."""
    if not backends.availability("numba")[0]:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_numba, "TEAM_WORK", 1)
    model = lgd.TwoLayerNet(8, train_outer=True)
    problem_ = make_problem(model, "exponential", np.float64)
    problem_.risk_bound = 10.0

    def two_threads(runner):
        runner._threads = 2

    runs = [run_backend(backends.resolve("numba"), model, problem_, [0.5, 300.0], 1500, every=3, chunk=chunk,
                        prepare=two_threads) for chunk in (None, 7, 600)]
    (state, trace), others = runs[0], runs[1:]
    assert state.diverged[0] < 0 <= state.diverged[1] < _numba.TEAM_PERIOD
    for other_state, other_trace in others:
        for name in trace._fields:
            assert np.array_equal(getattr(trace, name), getattr(other_trace, name), equal_nan=True), name
        assert np.array_equal(state.W, other_state.W) and np.array_equal(state.a, other_state.a)
    expected = problem("numba", steps=1500)
    monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-6)  # chunks of a step or two
    assert_same_bits(expected, problem("numba", steps=1500))


# ------------------------------------------------------------------ Ctrl-C, lgd.resume, finished checkpoints


def test_ctrl_c_writes_an_interrupted_checkpoint_that_resumes_to_the_end(tmp_path):
    """A real SIGINT (held to the end of its chunk): the run comes back 'interrupted', the checkpoint says
    so at the step the run stopped, and the same call then completes it, bit for bit."""
    if not backends.availability("numba")[0]:
        pytest.skip("numba is not installed")
    path = tmp_path / "run.ckpt"
    expected = problem("numba-plain")
    # A shell running the suite in the background ignores SIGINT: give the test Python's own handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        stopped = problem("numba-plain", path, checkpoint_every=math.inf)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert stopped.status == ["interrupted", "diverged"]
    saved = _checkpoint.read(path)
    assert saved.status == "interrupted" and saved.header["reached"] == stopped.steps_taken[0] > 0
    resumed = problem("numba-plain", path)
    assert_same_bits(expected, resumed)
    assert resumed.status == ["completed", "diverged"] and _checkpoint.read(path).status == "completed"


@pytest.mark.parametrize("name", ["numpy", "numba", "cuda-host", "cupy"])
def test_lgd_resume_continues_from_the_file_alone(name, tmp_path, monkeypatch):
    """lgd.resume(path) makes the call again from the checkpoint (data included): a gd call that crashed
    after a checkpoint between chunks comes back a Run, with the bits of a run never stopped; on the host
    build of the CUDA kernels too (its runner keeps the traces on its device: sync copies them for the
    checkpoint, and the resumed run's device trace starts from them), and on a GPU where there is one."""
    if name == "cuda-host":
        register_host_cuda(monkeypatch)
    if not backends.availability(name)[0]:
        pytest.skip(f"backend {name} cannot run here")
    X, y = lgd.data.xor(n=30)
    path = tmp_path / "gd.ckpt"
    arguments = dict(stepsize=lgd.stepsize.adaptive(0.5), steps=300, seed=3, init_scale=0.7,
                     record=lgd.Record(every=7, weights=50, lyapunov=2, sharpness_every=100, neuron_margins=True),
                     compute=name, X_test=X[:4], y_test=y[:4])
    net = lgd.TwoLayerNet(6, activation="leaky_softplus(0.30000000000000004)", outer="random", train_outer=True)
    expected = lgd.gd(X, y, net, "flattened_exponential(1.2345678912)", **arguments)
    fired = interrupt_once(monkeypatch, name, 60, error=MemoryError)
    with pytest.raises(MemoryError):
        lgd.gd(X, y, net, "flattened_exponential(1.2345678912)", **arguments, checkpoint=path,
               checkpoint_every=1e-9)
    saved = _checkpoint.read(path)
    assert saved.status == "running" and saved.header["reached"] == fired[0]
    resumed = lgd.resume(path)
    assert isinstance(resumed, lgd.Run) and resumed.status == "completed"
    assert_same_bits(expected, resumed)


def test_a_finished_checkpoint_returns_its_result_without_running(tmp_path, monkeypatch):
    X, y = lgd.data.xor(n=20)
    path = tmp_path / "done.ckpt"
    arguments = dict(stepsizes=[1.0, 3.0], steps=50, seeds=(0, 1), compute="numpy")
    first = lgd.sweep(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    written = path.stat().st_mtime_ns

    def no_runs(*args, **kwargs):
        raise AssertionError("a finished checkpoint ran its backend")

    monkeypatch.setattr(backends.Backend, "runner", no_runs)
    again = lgd.sweep(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    assert_same_bits(first, again)
    assert again.seconds == first.seconds and again.meta["sittings"] == 1
    assert isinstance(lgd.resume(path), lgd.Sweep) and path.stat().st_mtime_ns == written


# ------------------------------------------------------------------ refusals


def test_a_checkpoint_of_another_call_is_refused_naming_what_differs(tmp_path, monkeypatch):
    X, y = lgd.data.xor(n=20)
    path = tmp_path / "sweep.ckpt"
    arguments = dict(stepsizes=[1.0, 3.0], steps=30, seeds=(0, 1), compute="numpy")
    lgd.sweep(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    content = path.read_bytes()
    calls = {
        r"stepsizes \(checkpoint: \[\['constant\(1\)'.*this call: .*'constant\(2\)'": dict(stepsizes=[1.0, 2.0]),
        r"seeds \(checkpoint: \[0, 1\], this call: \[0, 2\]\)": dict(seeds=(0, 2)),
        r"steps \(checkpoint: 30, this call: 31\)": dict(steps=31),
        r"record.every \(checkpoint: 1, this call: 5\)": dict(record=5),
        r"dtype \(checkpoint: 'float64', this call: 'float32'\)": dict(compute=lgd.Compute("numpy", dtype="float32")),
    }
    for message, change in calls.items():
        with pytest.raises(ValueError, match=rf"written by another call; these differ: .*{message}"):
            lgd.sweep(X, y, lgd.TwoLayerNet(4), **{**arguments, **change}, checkpoint=path)
    with pytest.raises(ValueError, match=r"these differ: data \(another array\)"):
        lgd.sweep(X, -y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    with pytest.raises(ValueError, match=r"model.width \(checkpoint: 4, this call: 5\)"):
        lgd.sweep(X, y, lgd.TwoLayerNet(5), **arguments, checkpoint=path)
    if backends.availability("numba")[0]:
        # refused before the kernel is built
        monkeypatch.setattr(_numba, "Runner", None)
        with pytest.raises(ValueError, match=r"backend \(checkpoint: 'numpy', this call: 'numba'\)"):
            lgd.sweep(X, y, lgd.TwoLayerNet(4), **{**arguments, "compute": "numba"}, checkpoint=path)
    assert path.read_bytes() == content


def test_bad_checkpoint_arguments_are_refused_before_any_work(tmp_path):
    X, y = lgd.data.xor(n=20)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive number of seconds, got 0"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), compute="numpy", checkpoint=tmp_path / "a", checkpoint_every=0)
    with pytest.raises(ValueError, match="the folder of checkpoint .* does not exist"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), compute="numpy", checkpoint=tmp_path / "missing" / "a")
    with pytest.raises(ValueError, match="is a folder"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), compute="numpy", checkpoint=tmp_path)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), compute="numpy", checkpoint=3)


# ------------------------------------------------------------------ the file: atomic, and read with care


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """Checkpoints are written beside the path and renamed over it: no temporary file stays (nor one that a
    process killed while writing left), the file has the folder's usual mode (not mkstemp's 0o600), and a write
    that fails midway (here: the disk full after a few bytes) leaves the last checkpoint as it was."""
    X, y = lgd.data.xor(n=20)
    path = tmp_path / "sweep.ckpt"
    arguments = dict(stepsizes=[1.0], steps=2000, compute="numpy")
    lgd.sweep(X, y, lgd.TwoLayerNet(4), **{**arguments, "steps": 20}, checkpoint=tmp_path / "other.ckpt")
    (tmp_path / ".sweep.ckpt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half of an earlier write")
    fired = interrupt_once(monkeypatch, "numpy", 100)
    lgd.sweep(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path, checkpoint_every=1e-9)
    assert fired and sorted(p.name for p in tmp_path.iterdir()) == ["other.ckpt", "sweep.ckpt"]
    (tmp_path / "usual").write_bytes(b"")
    assert path.stat().st_mode & 0o777 == (tmp_path / "usual").stat().st_mode & 0o777
    (tmp_path / "usual").unlink()
    content = path.read_bytes()

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 part of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_checkpoint.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        lgd.sweep(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["other.ckpt",
                                                                                        "sweep.ckpt"]
    assert _checkpoint.read(path).status == "interrupted"


def test_a_finished_checkpoint_is_read_from_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """Its result comes without running, so nothing is written; a new checkpoint there is refused before work."""
    X, y = lgd.data.xor(n=20)
    arguments = dict(steps=20, compute="numpy")
    run = lgd.gd(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=tmp_path / "done.ckpt")
    monkeypatch.setattr(_checkpoint.os, "access", lambda path, mode: False)  # a read-only folder, even for root
    np.testing.assert_array_equal(lgd.resume(tmp_path / "done.ckpt").risk, run.risk)
    np.testing.assert_array_equal(lgd.gd(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=tmp_path / "done.ckpt").risk,
                                  run.risk)
    with pytest.raises(ValueError, match="new.ckpt' cannot be written"):
        lgd.gd(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=tmp_path / "new.ckpt")


UNREADABLE = "cannot be read: it is not an lgd checkpoint, or it is damaged"


@pytest.mark.parametrize("damage, message", [
    ("truncated", UNREADABLE), ("garbage", UNREADABLE + r" \(ValueError: it is no npz archive\)"),
    ("a saved result", r"is a saved lgd run \(lgd.load reads it\), not a checkpoint"), ("one array", UNREADABLE),
    ("a header without its keys", UNREADABLE + r" \(ValueError: its header lacks status, reached"),
    ("a header edited", UNREADABLE + r" \(ValueError: its header's status, reached, sittings cannot be a checkpoint's"),
    ("no weights", "is damaged: it holds no state.W"),
    ("no divergence steps", "is damaged: it holds no state.diverged"),
])
def test_a_damaged_checkpoint_is_a_clear_error(damage, message, tmp_path):
    """Never a silent restart: a checkpoint that lost its weights would go on from the initial ones."""
    X, y = lgd.data.xor(n=20)
    path = tmp_path / "sweep.ckpt"
    arguments = dict(steps=20, compute="numpy")
    run = lgd.gd(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "a saved result":
        run.save(tmp_path / "result.npz")
        os.replace(tmp_path / "result.npz", path)
    elif damage == "one array":
        with open(path, "wb") as file:
            np.save(file, np.arange(5))
    else:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if damage == "a header without its keys":
            arrays["header"] = np.array(json.dumps({"lgd_checkpoint": _checkpoint.FORMAT}))
        elif damage == "a header edited":
            header = json.loads(str(arrays["header"]))
            header.update(status="bogus", reached=10**6, sittings="2")
            arrays["header"] = np.array(json.dumps(header))
        else:
            del arrays["state.W" if damage == "no weights" else "state.diverged"]
        with open(path, "wb") as file:
            np.savez(file, **arrays)
    with pytest.raises(ValueError, match=message):
        lgd.gd(X, y, lgd.TwoLayerNet(4), **arguments, checkpoint=path)
    with pytest.raises(ValueError, match=message):
        lgd.resume(path)
