"""``lgd sweep`` end to end: a tiny grid on a local Dask cluster of two workers, its dataset, strict JSON summary
and figure; the resumable store; the flags' errors."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

import lgd
import lgd.distributed as distributed
from lgd.cli import main

pytest.importorskip("numba")
pytest.importorskip("distributed")
xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

GRID = ["--dataset", "xor,wu_toy", "--widths", "4,8", "--stepsizes", "1e-1:1e3:5", "--seeds", "0:2", "--steps", "30",
        "--record-every", "3", "--backend", "numba"]


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_sweep_on_two_workers(tmp_path, capsys):
    lgd.sweep(*lgd.data.wu_toy(), lgd.TwoLayerNet(4), steps=2, compute="numba")  # the workers load the cached kernel
    out = tmp_path / "out"
    assert main(["sweep", *GRID, "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Dask scheduler" in printed and "wrote" in printed
    ds = xr.open_zarr(out / "grid.zarr")
    assert ds["risk"].dims == ("dataset", "width", "stepsize", "seed", "start", "step")
    np.testing.assert_array_equal(ds["stepsize"].values, np.geomspace(0.1, 1000.0, 5))
    assert ds["stepsize"].values[0] == 0.1 and ds["stepsize"].values[-1] == 1000.0  # A and B exactly
    X, y = lgd.data.xor(n=100)
    expected = lgd.sweep(X, y, lgd.TwoLayerNet(8, activation="leaky_softplus(0.5)"),
                         stepsizes=np.geomspace(0.1, 1000.0, 5),
                         steps=30, seeds=(0, 1), record=3, compute="numba")
    np.testing.assert_array_equal(ds["risk"].sel(dataset="xor", width=8).values.reshape(10, -1), expected.risk)
    summary = _strict((out / "summary.json").read_text())
    assert [(cell["dataset"], cell["width"], cell["configs"]) for cell in summary["cells"]] == [
        ("xor", 4, 10), ("xor", 8, 10), ("wu_toy", 4, 10), ("wu_toy", 8, 10)]
    if _has("matplotlib"):
        assert (out / "figure.png").stat().st_size > 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_sweep_resumes_from_its_store(tmp_path, capsys):
    store, out = tmp_path / "store.zarr", tmp_path / "out"
    arguments = ["sweep", *GRID, "--zarr", str(store), "--batch-size", "2", "--out", str(out), "--no-plot",
                 "--format", "netcdf"]
    assert main(arguments) == 0
    first = xr.open_dataset(out / "grid.nc").load()
    assert xr.open_zarr(store, group="xor/w4")["batch_finished"].values.all()
    (out / "grid.zarr").mkdir()  # a dataset of an earlier sweep of another --format, which the summary lists
    summary = _strict((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary | {"files": ["grid.zarr", *summary["files"]]}))
    assert main(arguments) == 0
    assert sorted(path.name for path in out.iterdir()) == ["grid.nc", "summary.json"]
    again = xr.open_dataset(out / "grid.nc").load()
    np.testing.assert_array_equal(again["risk"].values, first["risk"].values)
    # a grid of other stepsizes into the same store is refused, before any GD
    assert main(["sweep", *GRID[:4], "--stepsizes", "1,2", "--zarr", str(store), "--out", str(out)]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["zarr", "netcdf"])
def test_the_grid_it_writes_reads_back_as_its_sweeps(tmp_path, form):
    """Every cell of grid.zarr or grid.nc is the sweep lgd.sweep computes (the padding of the narrower widths and of
    the data with fewer features dropped, the integers int64 again); a call that cannot read the grid says what
    does."""
    if form == "netcdf":
        pytest.importorskip("scipy")
    out = tmp_path / "out"
    assert main(["sweep", "--backend", "numpy", "--dataset", "xor,fig4", "--widths", "2,4", "--stepsizes", "1,1e4",
                 "--loss", "exponential", "--steps", "20", "--record-every", "5", "--no-plot", "--format", form,
                 "--out", str(out)]) == 0
    path = out / ("grid.zarr" if form == "zarr" else "grid.nc")
    grid = distributed.open_grid(path)
    assert (grid.datasets, grid.widths) == (("xor", "fig4"), (2, 4))
    with (xr.open_zarr(path) if form == "zarr" else xr.open_dataset(path)) as ds:
        for (name, width), cell in grid:
            X, y = lgd.data.load(name, **({"n": 100} if name == "xor" else {}))
            expected = lgd.sweep(X, y, lgd.TwoLayerNet(width, activation="leaky_softplus(0.5)"), "exponential",
                                 stepsizes=[1.0, 1e4], steps=20, record=5, compute="numpy")
            assert dataclasses.replace(cell, seconds=expected.seconds,
                                       steps_per_second=expected.steps_per_second) == expected, (name, width)
            assert lgd.Sweep.from_xarray(ds.sel(dataset=name, width=width)) == cell
        with pytest.raises(ValueError, match=r"grid over datasets and widths .*open_grid.*sel\(dataset='xor', width=2"):
            lgd.Sweep.from_xarray(ds)
    with pytest.raises(ValueError, match="open_grid"):
        lgd.results.open_zarr(path)
    with pytest.raises(ValueError, match=f"is a {'zarr store' if form == 'zarr' else 'netCDF file'}, .*open_grid"):
        lgd.load(path)


@pytest.mark.parametrize("flags, message", [
    (["--stepsizes", "10:1:4"], "0 < A <= B"),
    (["--widths", "0,4"], "widths"),
    (["--seeds", "1,1"], "seeds"),
    (["--stepsizes", "1,10,1"], "stepsizes must be distinct, got 1 more than once"),
    (["--stepsizes", "2:2:3"], "stepsizes must be distinct, got 2 more than once"),
    (["--dataset", "mnist"], "--dataset"),
])
def test_sweep_flag_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", *flags, "--out", str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_log_spaced_stepsizes_are_the_values_written():
    """A:B:N has A and B exactly and its decades as written (geomspace gives 4.999999999999999 for 5)."""
    from lgd.cli import _grid_stepsizes

    assert _grid_stepsizes("0.5:500:4") == [0.5, 5.0, 50.0, 500.0]
    assert _grid_stepsizes("1e-3:1e3:7") == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    between = _grid_stepsizes("1:10:3")
    assert between[0] == 1.0 and between[2] == 10.0 and between[1] == pytest.approx(10 ** 0.5, rel=1e-15)
    assert _grid_stepsizes("2:2:1") == [2.0]
    with pytest.raises(argparse.ArgumentTypeError, match="N = 1 would hold A alone"):
        _grid_stepsizes("2:3:1")
    with pytest.raises(argparse.ArgumentTypeError, match="an empty entry"):
        _grid_stepsizes("1,,2")


def test_sweep_value_errors(tmp_path, capsys):
    assert main(["sweep", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["sweep", *GRID, "--zarr", str(tmp_path / "a-file" / "store.zarr"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a-file/store.zarr cannot be made" in err and "Traceback" not in err


def test_bad_options_are_refused_before_any_folder_store_or_cluster(tmp_path, capsys):
    """An option that cannot run is one error line before the output folder, the store or a cluster is made;
    the finished grid's path is not the store's; netCDF3's 32-bit integers are said before the run."""
    out, notes = tmp_path / "out", tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    for flags, message in ((["--activation", "bogus"], "unknown activation 'bogus'"),
                           (["--scaling", "-1"], "scaling"), (["--init-scale", "nan"], "init_scale"),
                           (["--backend", "cupy"], "cupy"), (["--seeds", "99999999999999999999999"], "seeds"),
                           (["--format", "netcdf", "--seeds", "4294967296"], "32 bits"),
                           (["--zarr", str(out / "grid.zarr")], "is where the finished grid is written"),
                           (["--zarr", str(notes)], "holds files and is not a zarr store")):
        assert main(["sweep", *GRID[:-2], "--backend", "numpy", *flags, "--workers", "2", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err, flags
        assert not out.exists() and not (out / "grid.zarr").exists()
    assert [path.name for path in notes.iterdir()] == ["keep.txt"]


def test_without_xarray_lgd_sweep_says_so_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "xarray" else
                        find_spec(name, *args))
    out = tmp_path / "out"
    assert main(["sweep", *GRID, "--out", str(out)]) == 2
    assert 'the grid\'s dataset needs xarray: pip install "lgd[distributed]"' in capsys.readouterr().err
    assert not out.exists()


def test_a_grid_that_cannot_be_written_keeps_the_previous_results(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    small = ["--dataset", "wu_toy", "--widths", "2", "--stepsizes", "1", "--steps", "3", "--backend", "numpy",
             "--no-plot", "--out", str(out)]
    assert main(["sweep", *small]) == 0
    before = xr.open_zarr(out / "grid.zarr")["risk"].values

    def failing(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_zarr", failing)
    assert main(["sweep", *small[:-2], "--steps", "4", "--out", str(out)]) == 1
    assert "could not be written" in capsys.readouterr().err
    monkeypatch.undo()
    np.testing.assert_array_equal(xr.open_zarr(out / "grid.zarr")["risk"].values, before)
    assert sorted(path.name for path in out.iterdir()) == ["grid.zarr", "summary.json"]


def test_ctrl_c_in_a_sweep_says_what_was_kept(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `lgd sweep`: exit 130, 'lgd: interrupted', and where (or that nothing) the batches were kept."""
    from lgd import distributed

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "_execute", ctrl_c)
    for store, kept in ((None, "nothing was kept"), (tmp_path / "store.zarr", "the same command continues")):
        flags = [] if store is None else ["--zarr", str(store)]
        assert main(["sweep", *GRID, *flags, "--out", str(tmp_path / "out"), "--no-plot"]) == 130
        err = capsys.readouterr().err
        assert "lgd sweep: interrupted" in err and kept in err and "lgd: interrupted" in err
