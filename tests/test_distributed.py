"""lgd.distributed against lgd.sweep, bit for bit: batches in this process, on a real Dask LocalCluster of two
worker processes (one of them killed in the middle of a sweep), on an executor; the resumable zarr store; the
grid over datasets and widths; Sweep.to_xarray. Numba backend where it matters (its cache, warmed here first,
is shared by the workers)."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import lgd
import lgd.distributed as distributed

pytest.importorskip("numba")
pytest.importorskip("distributed")
pytest.importorskip("xarray")
pytest.importorskip("zarr")

X, Y = lgd.data.xor(n=60)
NET = lgd.TwoLayerNet(8)
# The exponential loss at the large stepsizes diverges: batches with diverged configurations in them.
SWEEP = dict(loss="exponential", stepsizes=np.logspace(0, 4, 8).tolist(), steps=150, seeds=(0, 1, 2),
             record=lgd.Record(every=7), compute=lgd.Compute("numba", progress=False))


def assert_same(result, expected):
    """Every field identical (NaN where NaN), but the timings."""
    for field in dataclasses.fields(expected):
        if field.name in ("seconds", "steps_per_second"):
            continue
        got, want = getattr(result, field.name), getattr(expected, field.name)
        if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape, field.name
            assert np.array_equal(got, want, equal_nan=True), field.name
        else:
            assert got == want, field.name


@pytest.fixture(scope="module")
def local():
    result = lgd.sweep(X, Y, NET, **SWEEP)  # also compiles or loads the kernel into the on-disk cache
    assert "diverged" in result.status and "completed" in result.status
    return result


@pytest.fixture(scope="module")
def client(local):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_configuration_does_not_depend_on_its_batch(backend):
    """The premise of batching: each configuration alone, or in batches of other sizes, gives the same bits."""
    kwargs = SWEEP | {"compute": lgd.Compute(backend, progress=False), "steps": 60}
    whole = lgd.sweep(X, Y, NET, **kwargs)
    for batch_size in (1, 3, 5):
        assert_same(distributed.sweep(X, Y, NET, batch_size=batch_size, **kwargs), whole)


LARGE = dict(steps=50, seeds=(0,), compute=lgd.Compute("numba", progress=False))  # n * width >= 2 TEAM_WORK


def _large():
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("one numba thread: no teams")
    return (*lgd.data.separable(n=256, d=16, margin=0.1, seed=0), lgd.TwoLayerNet(64))


@pytest.mark.xfail(strict=True, reason="numba runs a lone live configuration of a large problem (n * width >= "
                                       "2 TEAM_WORK) on a team of threads, whose partial sums round otherwise")
def test_a_large_configuration_alone_runs_on_a_team():
    X_large, y_large, net = _large()
    alone = lgd.sweep(X_large, y_large, net, stepsizes=[1.0], **LARGE)
    assert_same(distributed.sweep(X_large, y_large, net, stepsizes=[1.0], **LARGE), alone)


def test_batches_run_here_have_the_bits_of_batches_on_workers():
    """client=None runs each batch on one numba thread, as a worker does: a large problem's batches of one
    configuration form no team here either, so that a store begun here and finished on a cluster is one
    sweep's bits."""
    X_large, y_large, net = _large()
    here = distributed.sweep(X_large, y_large, net, stepsizes=[1.0, 4.0], batch_size=1, **LARGE)
    with ThreadPoolExecutor(1) as executor:
        there = distributed.sweep(X_large, y_large, net, stepsizes=[1.0, 4.0], batch_size=1, client=executor,
                                  **LARGE)
    assert_same(here, there)


def test_on_a_dask_cluster_as_in_one_process(client, local):
    assert_same(distributed.sweep(X, Y, NET, client=client, **SWEEP), local)
    assert_same(lgd.sweep(X, Y, NET, client=client, **SWEEP), local)  # lgd.sweep delegates
    assert_same(distributed.sweep(X, Y, NET, client=client, batch_size=5, **SWEEP), local)


def test_on_an_executor_as_in_one_process(local):
    with ThreadPoolExecutor(2) as executor:
        assert_same(distributed.sweep(X, Y, NET, client=executor, **SWEEP), local)


def test_a_batch_whose_data_were_lost_runs_again(client, local, monkeypatch):
    """The scheduler cancels a batch whose scattered data were lost with a worker (the replica-reducing memory
    manager can leave a single worker holding them): the call sends the data again and runs the batch again,
    under a key of its own, and the result is the one-process sweep's."""
    submit, scatter, keys, scattered = client.submit, client.scatter, [], []

    def cancelling_the_first(*args, key=None, **kwargs):
        future = submit(*args, key=key, **kwargs)
        keys.append(key)
        if len(keys) == 1:
            future.cancel()
        return future

    def counting(*args, **kwargs):
        scattered.append(1)
        return scatter(*args, **kwargs)

    monkeypatch.setattr(client, "submit", cancelling_the_first)
    monkeypatch.setattr(client, "scatter", counting)
    result = distributed.sweep(X, Y, NET, client=client, batch_size=5, **SWEEP)
    assert_same(result, local)
    assert keys[-1] == keys[0] + "-1" and len(keys) == len(set(keys)) and len(scattered) == 2


def test_a_lost_worker_loses_nothing(client):
    steps = 3000  # batches of about a quarter of a second: long enough to be killed in the middle of one
    kwargs = SWEEP | {"steps": steps, "stepsizes": SWEEP["stepsizes"][:4]}
    expected = lgd.sweep(X, Y, NET, **kwargs)
    with ThreadPoolExecutor(1) as caller:
        running = caller.submit(distributed.sweep, X, Y, NET, client=client, batch_size=3, **kwargs)
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            busy = [worker for worker, keys in client.processing().items()
                    if any(str(key).startswith("lgd-batch") for key in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.02)
        assert victim is not None, "no batch started"
        time.sleep(0.05)
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        result = running.result(timeout=120)
    assert not _alive(pid)
    assert len(result) == len(expected)
    assert_same(result, expected)


def _alive(pid: int, wait: float = 10.0) -> bool:
    """Whether process `pid` still runs after up to `wait` seconds. A killed process stays a zombie until
    its parent (the worker's nanny) reaps it, which os.kill(pid, 0) cannot tell from a live one: read its
    state where /proc has it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except (OSError, IndexError):
            return False  # it went away while we looked
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def _batches_failing_at(number: int, calls: list):
    """distributed._run_batch as it is, but the `number`-th call (counted in `calls`, its stepsizes) raises as a
    worker that went away."""
    run_batch = distributed._run_batch

    def failing(data, arguments, threads):
        calls.append(arguments["stepsizes"])
        if len(calls) == number:
            raise RuntimeError("the machine went away")
        return run_batch(data, arguments, threads)
    return failing


def test_a_restarted_sweep_skips_the_finished_batches(tmp_path, monkeypatch, local):
    import xarray as xr

    store = tmp_path / "sweep.zarr"
    calls = []
    monkeypatch.setattr(distributed, "_run_batch", _batches_failing_at(3, calls))
    with pytest.raises(RuntimeError, match="went away"):
        distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP)  # 4 batches of 2 stepsizes
    assert xr.open_zarr(store)["batch_finished"].values.tolist() == [True, True, False, False]
    calls.clear()
    result = distributed.sweep(X, Y, NET, store=store, batch_size=3, **SWEEP)  # the store's batches win
    assert len(calls) == 2
    assert_same(result, local)
    assert_same(lgd.results.open_zarr(store), local)
    assert xr.open_zarr(store)["risk"].dims == ("stepsize", "seed", "start", "step")
    with pytest.raises(ValueError, match="holds another sweep"):
        distributed.sweep(X, Y, NET, store=store, **SWEEP | {"steps": 10})


def test_a_resumed_store_numbers_the_starting_points_once(tmp_path, monkeypatch):
    """A batch read back from the store numbers its starting points as the batch computed them, so that the sweep's
    init_index is 0, 1, 2 whether its batches were read back (some of them, or all) or computed."""
    inits = np.random.default_rng(0).standard_normal((3, 8, 2))
    arguments = dict(stepsizes=[1.0, 4.0], steps=5, seeds=(0, 1), inits=inits, compute="numpy")
    expected = lgd.sweep(X, Y, NET, **arguments)
    store = tmp_path / "sweep.zarr"
    run_batch = distributed._run_batch
    monkeypatch.setattr(distributed, "_run_batch", _batches_failing_at(5, []))
    with pytest.raises(RuntimeError, match="went away"):
        distributed.sweep(X, Y, NET, store=store, batch_size=1, **arguments)  # 12 batches of one start each
    monkeypatch.setattr(distributed, "_run_batch", run_batch)
    assert distributed.SweepStore(store).read(2).init_index.tolist() == [0]  # the third start, alone in its batch
    partly = distributed.sweep(X, Y, NET, store=store, **arguments)  # 4 batches read back, 8 computed
    again = distributed.sweep(X, Y, NET, store=store, **arguments)  # every batch read back
    for result in (partly, again, lgd.results.open_zarr(store)):
        assert result.init_index.tolist() == [0, 1, 2] * 4
        assert_same(result, expected)


def test_a_store_half_made_is_made_afresh_and_a_folder_of_other_files_refused(tmp_path, monkeypatch, local):
    """A process killed while the store's layout is written (after the first batch) leaves a half-made store,
    which the rerun makes afresh; an unfinished batch reads as NaN and status ''; a folder holding files that
    are not a zarr store is refused, its files kept."""
    import xarray as xr

    store = tmp_path / "sweep.zarr"
    to_zarr = xr.Dataset.to_zarr

    def killed(self, *args, **kwargs):  # the store's arrays half written, then the process is gone
        to_zarr(self.isel(batch=slice(0, 0)).drop_vars(["batch_finished", "batch_seconds"]), *args, **kwargs)
        raise SystemExit("killed")

    with monkeypatch.context() as patch:
        patch.setattr(xr.Dataset, "to_zarr", killed)
        with pytest.raises(SystemExit):
            distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP)
    assert os.path.exists(str(store) + ".lgd-creating")
    run_batch = distributed._run_batch
    monkeypatch.setattr(distributed, "_run_batch", _batches_failing_at(2, []))
    with pytest.raises(RuntimeError, match="went away"):
        distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP)
    partial = xr.open_zarr(store)
    assert not os.path.exists(str(store) + ".lgd-creating")
    assert partial["batch_finished"].values.tolist() == [True, False, False, False]
    unfinished = partial.isel(stepsize=slice(2, None))
    assert (unfinished["status"] == "").all() and np.isnan(unfinished["risk"]).all()
    monkeypatch.setattr(distributed, "_run_batch", run_batch)
    assert_same(distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP), local)

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "draft.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files and is not a zarr store"):
        distributed.sweep(X, Y, NET, store=notes, **SWEEP)
    assert (notes / "draft.txt").read_text() == "mine"


@pytest.mark.parametrize("cut", [0, 1])
def test_a_batch_cut_short_by_ctrl_c_is_not_stored(tmp_path, monkeypatch, local, cut):
    """Ctrl-C during batch `cut` of four run here (lgd.sweep returns it 'interrupted'): the sweep stops with
    KeyboardInterrupt and the store keeps only the batches before it, not the one cut short (which would read
    back as finished, or give the store its shorter step axis); the same call then ends with the bits of a
    sweep never stopped."""
    import xarray as xr
    from lgd import driver

    class CtrlC(driver._HeldInterrupt):  # a SIGINT that arrives during the batch's first chunk
        def __enter__(self):
            super().__enter__()
            self.pending.append((signal.SIGINT, None))
            return self

    store = tmp_path / "sweep.zarr"
    calls = []
    run_batch = distributed._run_batch

    def interrupted_at_cut(data, arguments, threads):
        calls.append(arguments["stepsizes"])
        if len(calls) - 1 != cut or armed is False:
            return run_batch(data, arguments, threads)
        with monkeypatch.context() as patch:
            patch.setattr(driver, "_HeldInterrupt", CtrlC)
            part = run_batch(data, arguments, threads)
        assert set(part.status) == {"interrupted"}
        return part

    monkeypatch.setattr(distributed, "_run_batch", interrupted_at_cut)
    armed = True
    with pytest.raises(KeyboardInterrupt):
        distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP)
    assert len(calls) == cut + 1
    if cut == 0:
        assert lgd.results.SweepStore(store).layout() is None
    else:
        assert xr.open_zarr(store)["batch_finished"].values.tolist() == [True, False, False, False]
    calls.clear()
    armed = False
    result = distributed.sweep(X, Y, NET, store=store, batch_size=6, **SWEEP)
    assert len(calls) == 4 - cut
    assert_same(result, local)
    assert_same(lgd.results.open_zarr(store), local)


def test_the_store_on_a_cluster(tmp_path, client, local):
    store = tmp_path / "sweep.zarr"
    assert_same(distributed.sweep(X, Y, NET, client=client, store=store, **SWEEP), local)
    assert_same(lgd.results.open_zarr(store), local)


def test_grid_over_datasets_and_widths(client):
    datasets = {"xor": (X, Y), "wu_toy": lgd.data.wu_toy()}
    kwargs = dict(widths=[4, 8], stepsizes=[1.0, 100.0, 1e4], steps=40, seeds=(0, 1), loss="exponential",
                  compute=lgd.Compute("numba", progress=False))
    here = distributed.grid(datasets, **kwargs)
    there = distributed.grid(datasets, client=client, batch_size=2, **kwargs)
    for name, (X_data, y_data) in datasets.items():
        for width in (4, 8):
            expected = lgd.sweep(X_data, y_data, lgd.TwoLayerNet(width), "exponential", stepsizes=[1.0, 100.0, 1e4],
                                 steps=40, seeds=(0, 1), compute=lgd.Compute("numba", progress=False))
            assert_same(here[name, width], expected)
            assert_same(there[name, width], expected)
    ds = here.to_xarray()
    assert ds["risk"].dims == ("dataset", "width", "stepsize", "seed", "start", "step")
    assert ds["dataset"].values.tolist() == ["xor", "wu_toy"] and ds["width"].values.tolist() == [4, 8]
    np.testing.assert_array_equal(ds["risk"].sel(dataset="wu_toy", width=8).values.reshape(6, -1),
                                  here["wu_toy", 8].risk)
    # the width-4 cells' weights are padded with NaN to width 8
    assert np.isnan(ds["weights"].sel(width=4).values[..., 4:, :]).all()


def test_to_xarray_coordinates_and_back():
    inits = np.random.default_rng(0).standard_normal((3, 8, 2))
    result = lgd.sweep(X, Y, NET, stepsizes=[1.0, lgd.stepsize.adaptive(2.0)], steps=20, seeds=(5, 1), inits=inits,
                       record=lgd.Record(every=5, weights=10), compute="numpy")
    ds = result.to_xarray()
    assert dict(ds.sizes) == {"stepsize": 2, "seed": 2, "start": 3, "step": 5, "neuron": 8, "feature": 2,
                                   "trajectory_step": 3}
    assert ds["seed"].values.tolist() == [5, 1] and ds["start"].values.tolist() == [0, 1, 2]
    assert ds["stepsize_rule"].values.tolist() == ["constant(1)", "adaptive(2)"]
    assert ds["status"].dims == ("stepsize", "seed", "start")
    # configuration i is at (i // 6, i // 3 % 2, i % 3)
    np.testing.assert_array_equal(ds["risk"].values[1, 0, 2], result.risk[8])
    assert_same(lgd.Sweep.from_xarray(ds), result)
    flat = result.to_xarray(grid=False)
    assert flat["risk"].dims == ("config", "step") and flat["seed"].values.tolist() == result.seed.tolist()
    assert_same(lgd.Sweep.from_xarray(flat), result)


def test_a_sweep_through_netcdf_comes_back_with_its_integer_dtypes(tmp_path):
    """netCDF3 holds 32-bit integers: every integer field of the Sweep read back is int64 again."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("scipy")
    inits = np.random.default_rng(0).standard_normal((2, 8, 2))
    result = lgd.sweep(X, Y, NET, "exponential", stepsizes=[1.0, 1e5], steps=20, inits=inits, compute="numpy",
                       record=lgd.Record(every=5, weights=10, sharpness_every=10))
    assert "diverged" in result.status
    for grid in (True, False):
        result.to_xarray(grid=grid).to_netcdf(tmp_path / f"{grid}.nc")
        with xr.open_dataset(tmp_path / f"{grid}.nc") as ds:
            assert ds["step"].dtype == np.int32  # what the file holds
            again = lgd.Sweep.from_xarray(ds)
        assert_same(again, result)
        assert again == result


def test_bad_input_fails_before_any_batch(tmp_path):
    class Recorder:
        submitted = 0

        def submit(self, *args, **kwargs):
            self.submitted += 1

    recorder = Recorder()
    with pytest.raises(ValueError, match="labels"):
        distributed.sweep(X, np.zeros(len(Y)), NET, client=recorder, stepsizes=[1.0], steps=5)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.sweep(X, Y, NET, client=recorder, stepsizes=[1.0], steps=5, batch_size=0)
    with pytest.raises(ValueError, match="sharpness_k asks for 1000 eigenvalues"):  # lgd.sweep's own check
        distributed.sweep(X, Y, NET, client=recorder, stepsizes=[1.0], steps=5,
                          record=lgd.Record(sharpness_every=1, sharpness_k=1000))
    with pytest.raises(ValueError, match="seeds"):
        distributed.grid({"xor": (X, Y)}, widths=[2], stepsizes=[1.0], seeds=(1, 1), client=recorder)
    with pytest.raises(ValueError, match="widths"):
        distributed.grid({"xor": (X, Y)}, widths=[2, 2], stepsizes=[1.0], client=recorder)
    with pytest.raises(ValueError, match="datasets must be a dict name -> .* got a sequence holding tuple"):
        distributed.grid([(X, Y)], widths=[2], stepsizes=[1.0], client=recorder)
    with pytest.raises(ValueError, match="checkpoint"):
        lgd.sweep(X, Y, NET, client=recorder, checkpoint=tmp_path / "c")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="a-file is a file, not a zarr store"):
        distributed.sweep(X, Y, NET, client=recorder, stepsizes=[1.0], steps=5, store=tmp_path / "a-file")
    with pytest.raises(ValueError, match="a-file/sweep.zarr cannot be made"):
        distributed.sweep(X, Y, NET, client=recorder, stepsizes=[1.0], steps=5, store=tmp_path / "a-file/sweep.zarr")
    assert recorder.submitted == 0
    with pytest.raises(TypeError, match="client"):
        distributed.sweep(X, Y, NET, client=object(), stepsizes=[1.0], steps=5)


def test_import_lgd_stays_light():
    code = ("import sys, lgd, lgd.distributed; heavy = [m for m in ('dask', 'distributed', 'xarray', 'zarr') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_counts_every_configuration_once(monkeypatch):
    counted = []

    class Bar:
        def update(self, n):
            counted.append(n)

        def close(self):
            pass

    def progress_bar(progress, total, unit="step"):  # the batches' own (progress=False) draw none
        return counted.append(("total", total, unit)) or Bar() if progress else None

    monkeypatch.setattr(lgd.driver, "_progress_bar", progress_bar)
    distributed.sweep(X, Y, NET, batch_size=5, **SWEEP | {"steps": 10, "compute": lgd.Compute("numba", progress=True)})
    assert counted[0] == ("total", 24, "config") and sum(counted[1:]) == 24
