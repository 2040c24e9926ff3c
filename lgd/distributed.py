"""Sweeps beyond one process: :func:`sweep` on a Dask cluster (or a concurrent.futures executor, or here),
:func:`grid` over datasets and widths with its result :class:`Grid` (:func:`open_grid` reads one back from the
file ``lgd sweep`` writes), and the grid's figure.

What lives here: splitting a sweep's configurations into batches (blocks of its stepsize x seed x start
product, each one :func:`lgd.sweep` call on a worker), submitting them (Dask's scheduler reruns the batch of
a lost worker, ``retries`` one that raised; a batch whose data were lost with a worker runs again on data
sent again), joining them as they finish into one :class:`lgd.Sweep` (the
local call's configurations, order and traces), streaming them into a resumable zarr store (the store itself
is :class:`lgd.results.SweepStore`), and the progress bar over the whole grid.

What does not: GD (:func:`lgd.sweep` runs every batch), the checks of its arguments (:mod:`lgd.driver` and
:mod:`lgd.options`, called here before any batch is submitted), the result objects and their xarray and
zarr forms (:mod:`lgd.results`). dask, distributed, xarray and zarr are imported on first use
(``pip install "lgd[distributed]"``): importing this module loads numpy and lgd only.

Bits: a configuration's trace does not depend on the other configurations of its call as long as the
numba backend runs each configuration on one thread (a "team of one"). It runs a single configuration on a
team of several threads, whose partial sums round differently, when a call has fewer live configurations
than numba threads and the problem is large (n * width >= 2 * lgd.backends._numba.TEAM_WORK). Batches
on workers run with one numba thread per task (Dask's convention: a worker's parallelism is its task
threads), so they never form such teams; a local :func:`lgd.sweep` that does (one with few survivors on a
large problem) differs from the distributed one in the last bits of those configurations.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from . import backends as _backends
from . import driver as _driver
from . import options as _options
from .backends import record_steps
from .models import TwoLayerNet
from .results import CONFIG_FIELDS, GRID_CELL_DIMS, Sweep, SweepStore, cell_key, grid_shape

__all__ = ["sweep", "grid", "Grid", "open_grid", "plot_grid", "save_grid_figure"]

# Batches per worker thread when batch_size is not given: enough that the workers finish close together and
# that a lost worker costs a fraction of its share, few enough that each batch's fixed cost (its task, its
# transfers, the numba kernel's cache load in a fresh worker) stays small against its steps.
BATCHES_PER_WORKER = 4
# Reruns of a batch that raised on a worker (a worker that dies is Dask's business: the scheduler reassigns
# its tasks, up to its distributed.scheduler.allowed-failures).
RETRIES = 2
# Runs of a batch on a Dask cluster whose data were lost with a worker, at most, and tries of sending the data
# to the workers, seconds apart (_finished).
LOST_DATA_ATTEMPTS = 3
SCATTER_ATTEMPTS = 5
SCATTER_WAIT_S = 0.5


def _missing_extra(exc: ImportError):
    return ImportError(f'distributed sweeps need dask.distributed, xarray and zarr ({exc.name} is missing): '
                       'pip install "lgd[distributed]"')


def sweep(X, y, model, loss="logistic", stepsizes=(1.0,), steps=1000, seeds=(0,), *, init="normal",
          init_scale=1.0, inits=None, outer_inits=None, X_test=None, y_test=None, record=1, compute="auto",
          divergence=1e10, client=None, batch_size=None, store=None, retries=RETRIES, **deprecated) -> Sweep:
    """:func:`lgd.sweep` in batches on a cluster: the same arguments and the same :class:`lgd.Sweep`, and:

    client : dask.distributed.Client | concurrent.futures.Executor | None
        Where the batches run: on the Dask cluster of the client (each batch a task, the data sent to every
        worker once; a worker lost mid-batch has its batch rerun elsewhere by the scheduler), on an
        executor's workers, or, with None, here one after the other (for a resumable sweep without a
        cluster). Workers need lgd installed; each task runs numba on one thread (give a worker as many
        threads, ``--nthreads``, as it should run batches at once), or what ``compute`` names (cupy on GPU
        workers: ``compute="cupy"``).
    batch_size : None | int >= 1
        Configurations per batch, at most. A batch is a block of the stepsize x seed x start product: whole
        groups of stepsizes (all seeds and starts), else one stepsize and a divisor of the seeds, else one
        stepsize and seed and a divisor of the starting points, so every batch has the same shape.
        None: about 4 batches per worker thread (all configurations in one batch with ``client=None`` and
        no store, 4 batches with a store).
    store : None | path
        A zarr store (:class:`lgd.results.SweepStore`) that each batch writes into as it finishes
        (``xarray.open_zarr(store)`` reads it); run again with the same store, the sweep skips the
        batches that finished and reads them back from it; a store holding another sweep is refused.
        A restarted sweep keeps the store's batches, whatever ``batch_size`` says.
    retries : int >= 0
        Reruns of a batch that raised (Dask only).

    Returns the :class:`lgd.Sweep` that ``lgd.sweep`` returns for the same arguments: configurations
    stepsize-major, then seed, then starting point, each with the same trace, weights, status and steps
    taken (bit for bit; see the module's note on numba teams), the same ``meta``. ``seconds`` is the sum
    of the batches' GD seconds (each timed on its worker, as lgd.sweep times its call), so
    ``steps_per_second`` is a rate per worker thread, not the cluster's. ``compute.progress`` draws one
    bar over the configurations of the whole sweep, advanced as batches finish. Arguments are checked
    here, before any batch is submitted, and the store's folder is made (or refused) then too. Ctrl-C stops
    the sweep with KeyboardInterrupt: the batches that finished are in the store, the one it cut short is
    not, and the same call on the same store continues from them.

    >>> import lgd, lgd.distributed
    >>> X, y = lgd.data.xor(n=40)
    >>> result = lgd.distributed.sweep(X, y, lgd.TwoLayerNet(8), stepsizes=[0.5, 4.0], steps=50, seeds=(0, 1),
    ...                                compute="numpy", batch_size=2)
    >>> result.risk.shape, result.seed.tolist()
    ((4, 51), [0, 1, 0, 1])
    """
    plan = _plan(X, y, model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale, inits=inits,
                 outer_inits=outer_inits, X_test=X_test, y_test=y_test, record=record, compute=compute,
                 divergence=divergence, deprecated=deprecated)
    retries = _check_retries(retries)
    plan = _with_batches(plan, _check_batch_size(batch_size), _default_batch_size(plan.configs, client, store),
                         None if store is None else SweepStore(store))
    return _combine(plan, _execute([plan], client, retries, plan.progress)[0])


@dataclass(frozen=True)
class _Plan:
    """One sweep, checked: lgd.sweep's arguments common to its batches, its axes, and its batches."""

    data: tuple  # (X, y, X_test, y_test) as given (host arrays), the first argument of every batch
    arguments: dict  # the other keywords of lgd.sweep shared by every batch
    rules: list
    seeds: list
    inits: np.ndarray | None
    outer_inits: np.ndarray | None
    starts: int
    progress: bool | None
    fingerprint: str
    batches: tuple = ()  # (e0, e1, s0, s1, k0, k1): stepsizes [e0, e1) x seeds [s0, s1) x starts [k0, k1)
    store: SweepStore | None = None

    @property
    def configs(self) -> int:
        return len(self.rules) * len(self.seeds) * self.starts

    def batch_arguments(self, index: int) -> dict:
        e0, e1, s0, s1, k0, k1 = self.batches[index]
        return self.arguments | {
            "stepsizes": self.rules[e0:e1], "seeds": self.seeds[s0:s1],
            "inits": None if self.inits is None else self.inits[k0:k1],
            "outer_inits": None if self.outer_inits is None else self.outer_inits[k0:k1]}

    def batch_configs(self, index: int) -> int:
        e0, e1, s0, s1, k0, k1 = self.batches[index]
        return (e1 - e0) * (s1 - s0) * (k1 - k0)

    def coords(self) -> dict:
        """The grid's coordinates, as :meth:`lgd.Sweep.to_xarray` names them."""
        return {"stepsize": np.array([rule.eta for rule in self.rules]), "seed": np.array(self.seeds, np.int64),
                "start": np.arange(self.starts, dtype=np.int64),
                "stepsize_rule": [rule.spec for rule in self.rules]}


def _plan(X, y, model, loss, stepsizes, steps, seeds, *, init, init_scale, inits, outer_inits, X_test, y_test,
          record, compute, divergence, deprecated) -> _Plan:
    """Every check of lgd.sweep, here before any batch runs: its checks of the arguments (lgd.driver.check_call),
    then of the initial weights and tangents, on the first seed."""
    record, compute = _options.resolve(record, compute, deprecated, "sweep")
    divergence = _options.as_divergence(divergence)
    if any(_backends.on_device(array) for array in (X, y, X_test, y_test) if array is not None):
        raise ValueError("a distributed sweep takes host (numpy) arrays: the workers move them to their device "
                         "themselves (compute='cupy')")
    data = tuple(None if array is None else np.asarray(array) for array in (X, y, X_test, y_test))
    checked = _driver.check_call(*data[:2], model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale,
                                 inits=inits, outer_inits=outer_inits, X_test=data[2], y_test=data[3], record=record,
                                 dtype=compute.dtype)
    checked_loss, dtype, rules, seeds, steps = checked.loss, checked.dtype, checked.rules, checked.seeds, checked.steps
    init_scale, starts, d = checked.init_scale, checked.starts, checked.X.shape[1]
    _driver._initial_weights(model, d, init, init_scale, seeds[:1], starts, dtype)  # checks init
    if record.lyapunov:
        _driver._initial_tangents(model, d, record.lyapunov, seeds[:1], [(0, 0, 0)])  # checks the count
    configs = len(rules) * len(seeds) * starts.count
    if record.neuron_margins is None:
        # lgd.sweep decides from its own configurations; a batch has fewer: decide once, for the whole sweep.
        record = dataclasses.replace(record, neuron_margins=configs * record_steps(steps, record.every).size
                                     * model.width <= _driver.NEURON_BUDGET)
    arguments = {"model": model, "loss": checked_loss.spec, "steps": steps, "init": init, "init_scale": init_scale,
                 "record": record, "compute": dataclasses.replace(compute, progress=False),
                 "divergence": divergence}
    return _Plan(data=data, arguments=arguments, rules=rules, seeds=seeds, inits=inits, outer_inits=outer_inits,
                 starts=starts.count, progress=compute.progress,
                 fingerprint=_fingerprint(data, arguments, rules, seeds, inits, outer_inits))


def _fingerprint(data, arguments, rules, seeds, inits, outer_inits) -> str:
    """A hash of everything that decides a sweep's results (not where or in what batches it runs), so that
    a store is resumed only by the sweep that wrote it."""
    digest = hashlib.sha256()
    record, compute, init = arguments["record"], arguments["compute"], arguments["init"]
    arrays = (*data, inits, outer_inits, None if isinstance(init, str) else init, record.project_onto)
    for array in arrays:
        if array is None:
            digest.update(b"none")
        else:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    description = {"model": arguments["model"].config(), "loss": arguments["loss"], "steps": arguments["steps"],
                   "init": init if isinstance(init, str) else "array", "init_scale": arguments["init_scale"],
                   "record": {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
                              if f.name != "project_onto"},
                   "backend": compute.backend, "dtype": compute.dtype,
                   "divergence": [arguments["divergence"].risk, arguments["divergence"].weight_norm],
                   "rules": [[rule.code, list(rule.params), rule.eta, rule.spec] for rule in rules], "seeds": seeds}
    digest.update(json.dumps(description, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _check_batch_size(batch_size):
    return None if batch_size is None else _options.check_count(batch_size, "batch_size")


def _check_retries(retries) -> int:
    if isinstance(retries, bool) or not isinstance(retries, Integral) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    return int(retries)


def _kind(client) -> str:
    """'local' (None), 'dask' (a dask.distributed.Client) or 'executor' (anything with submit); else TypeError."""
    if client is None:
        return "local"
    if type(client).__module__.split(".")[0] == "distributed" and hasattr(client, "scatter"):
        return "dask"
    if callable(getattr(client, "submit", None)):
        return "executor"
    raise TypeError(f"client must be a dask.distributed.Client, a concurrent.futures executor or None, "
                    f"got {type(client).__name__}")


def _default_batch_size(configs: int, client, store) -> int:
    kind = _kind(client)
    if kind == "local":
        return configs if store is None else math.ceil(configs / BATCHES_PER_WORKER)
    if kind == "dask":
        threads = sum(client.nthreads().values()) or 1
    else:
        threads = getattr(client, "_max_workers", None) or os.cpu_count() or 1
    return max(1, math.ceil(configs / (BATCHES_PER_WORKER * threads)))


def _largest_divisor(count: int, at_most: int) -> int:
    return max(k for k in range(1, min(count, at_most) + 1) if count % k == 0)


def batches(stepsizes: int, seeds: int, starts: int, batch_size: int) -> list:
    """The batches of a sweep of stepsizes x seeds x starts configurations, at most ``batch_size`` each, in
    configuration order: (e0, e1, s0, s1, k0, k1), stepsizes [e0, e1) x seeds [s0, s1) x starts [k0, k1).
    Whole groups of stepsizes when a stepsize's configurations fit, else one stepsize and a divisor of the
    seeds, else one stepsize and seed and a divisor of the starts: blocks of one shape (the last group of
    stepsizes may be shorter), which tile the store's chunks.

    >>> batches(5, 2, 1, 4)
    [(0, 2, 0, 2, 0, 1), (2, 4, 0, 2, 0, 1), (4, 5, 0, 2, 0, 1)]
    >>> batches(2, 6, 1, 4)
    [(0, 1, 0, 3, 0, 1), (0, 1, 3, 6, 0, 1), (1, 2, 0, 3, 0, 1), (1, 2, 3, 6, 0, 1)]
    """
    per_stepsize = seeds * starts
    if batch_size >= per_stepsize:
        group = min(stepsizes, batch_size // per_stepsize)
        return [(e, min(e + group, stepsizes), 0, seeds, 0, starts) for e in range(0, stepsizes, group)]
    if batch_size >= starts:
        group = _largest_divisor(seeds, batch_size // starts)
        return [(e, e + 1, s, s + group, 0, starts) for e in range(stepsizes) for s in range(0, seeds, group)]
    group = _largest_divisor(starts, batch_size)
    return [(e, e + 1, s, s + 1, k, k + group) for e in range(stepsizes) for s in range(seeds)
            for k in range(0, starts, group)]


def _with_batches(plan: _Plan, batch_size, default: int, store: SweepStore | None) -> _Plan:
    """The plan with its batches: those of its store when it holds this sweep already, else of batch_size."""
    if store is not None:
        store.prepare()
    layout = None if store is None else store.layout()
    if layout is not None:
        if layout["fingerprint"] != plan.fingerprint:
            raise ValueError(f"the store {store.path}{'' if store.group is None else ' (group ' + store.group + ')'} "
                             "holds another sweep (other data, model, stepsizes, seeds or options); give a new "
                             "path, or remove it to start over")
        blocks = tuple(tuple(block) for block in layout["batches"])
    else:
        blocks = tuple(batches(len(plan.rules), len(plan.seeds), plan.starts, batch_size or default))
    return dataclasses.replace(plan, batches=blocks, store=store)


def _run_batch(data: tuple, arguments: dict, threads: int | None) -> Sweep:
    """One batch: lgd.sweep on a worker, numba held to `threads` threads of this task (None: as set)."""
    X, y, X_test, y_test = data
    with _numba_threads(threads, arguments["compute"], X):
        return _driver.sweep(X, y, X_test=X_test, y_test=y_test, **arguments)


@contextlib.contextmanager
def _numba_threads(threads: int | None, compute, X):
    if threads is None or _backends.resolve(compute.backend, X).name != "numba":
        yield
        return
    import numba

    previous = numba.get_num_threads()  # numba's thread count is per calling thread: the task's own
    numba.set_num_threads(min(threads, previous))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _execute(plans: list, client, retries: int, progress) -> list:
    """Run the batches of every plan not finished in its store, writing each into its store as it finishes;
    return each plan's batches (Sweeps) in order, those finished before read back from the store."""
    parts = [[None] * len(plan.batches) for plan in plans]
    pending = []
    for i, plan in enumerate(plans):
        finished = plan.store.finished() if plan.store is not None and plan.store.layout() is not None else ()
        for b in range(len(plan.batches)):
            if len(finished) and finished[b]:
                parts[i][b] = plan.store.read(b)
            else:
                pending.append((i, b))
    bar = _driver._progress_bar(progress, sum(plan.configs for plan in plans), unit="config")
    if bar is not None:
        bar.update(sum(plans[i].batch_configs(b) for i, plan in enumerate(plans) for b in range(len(plan.batches))
                       if parts[i][b] is not None))
    try:
        for (i, b), part in _finished(plans, pending, client, retries):
            plan = plans[i]
            if parts[i][b] is not None or len(part) != plan.batch_configs(b):
                raise RuntimeError(f"batch {b} came back {'twice' if parts[i][b] is not None else 'incomplete'}")
            if "interrupted" in part.status:
                # Ctrl-C during a batch run here (lgd.sweep returns it cut short): the sweep stops, that batch
                # is not stored (it would be read back as finished), and a rerun on the store computes it again.
                raise KeyboardInterrupt
            if plan.store is not None:
                if plan.store.layout() is None:
                    plan.store.create(part, {"fingerprint": plan.fingerprint, "batches": plan.batches},
                                      plan.coords())
                plan.store.write(b, part)
            parts[i][b] = part
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return parts


def _finished(plans: list, pending: list, client, retries: int):
    """Yield ((plan index, batch index), Sweep) for each pending batch as it finishes (here: one at a time)."""
    kind = _kind(client)
    if kind == "local":
        # One numba thread, as a worker's task: a batch smaller than the thread count would otherwise run on a
        # team, whose bits differ from the workers' (a store begun here and finished on a cluster would mix them).
        for i, b in pending:
            yield (i, b), _run_batch(plans[i].data, plans[i].batch_arguments(b), 1)
        return
    if kind == "dask":
        try:
            from distributed import as_completed
        except ImportError as exc:
            raise _missing_extra(exc) from None
        # Keys of this call's own (a call that stopped early cancels its batches; it must not cancel another's),
        # naming the sweep and the block, so that the dashboard and the logs say what runs.
        call = uuid.uuid4().hex[:8]
        data, attempts, futures = {}, {}, {}

        def scatter(i):
            # The data go to every worker (broadcast); the batches name them. Under a key of this call's own
            # (hash=False): with the content's hash as key, two calls on the same data share it, and the first
            # call's release can drop it under the second's batches ("lost dependencies":
            # dask/distributed#8576, seen here in CI). A worker that has just died can still be on the
            # scheduler's list, and the broadcast then fails on its closed connection: tried again.
            for attempt in range(SCATTER_ATTEMPTS):
                try:
                    data[i] = client.scatter([plans[i].data], broadcast=True, hash=False)[0]
                    return
                except OSError:
                    if attempt + 1 == SCATTER_ATTEMPTS:
                        raise
                    time.sleep(SCATTER_WAIT_S)

        def submit(i, b):
            attempts[i, b] = attempts.get((i, b), -1) + 1
            again = f"-{attempts[i, b]}" if attempts[i, b] else ""
            block = "-".join(map(str, plans[i].batches[b]))
            future = client.submit(_run_batch, data[i], plans[i].batch_arguments(b), 1, retries=retries,
                                   key=f"lgd-batch-{plans[i].fingerprint[:12]}-{block}-{call}{again}")
            futures[future] = (i, b, data[i])
            return future

        for i in sorted({i for i, _ in pending}):
            scatter(i)
        waiting = as_completed([submit(i, b) for i, b in pending])
    else:
        futures = {client.submit(_run_batch, plans[i].data, plans[i].batch_arguments(b), 1): (i, b, None)
                   for i, b in pending}
        waiting = concurrent.futures.as_completed(futures)
    try:
        for future in waiting:
            i, b, used = futures[future]
            try:
                part = future.result()
            except concurrent.futures.CancelledError:
                # Not by this call (it cancels only on its way out, below): the scheduler cancels a batch whose
                # data were lost with a worker, which its replica-reducing memory manager can leave as the only
                # one holding them. Send the data again (once for all the batches that read the lost copy) and
                # run the batch again, a few times at most.
                if kind != "dask" or attempts[i, b] + 1 >= LOST_DATA_ATTEMPTS:
                    raise
                if used is data[i]:
                    scatter(i)
                waiting.add(submit(i, b))
                continue
            yield (i, b), part
    except BaseException:  # an error, Ctrl-C, or the caller stopped: nothing runs on for a result nobody reads
        for future in futures:
            future.cancel()
        raise


def _combine(plan: _Plan, parts: list) -> Sweep:
    """The batches of a plan (Sweeps, in configuration order) as one Sweep."""
    first = parts[0]
    values = {}
    for name in CONFIG_FIELDS:
        if getattr(first, name) is None:
            values[name] = None
        elif isinstance(getattr(first, name), list):
            values[name] = [entry for part in parts for entry in getattr(part, name)]
        else:
            values[name] = np.concatenate([np.asarray(getattr(part, name)) for part in parts])
    values["diverged_step"] = np.concatenate([part.diverged_step for part in parts])
    values["steps_taken"] = np.concatenate([part.steps_taken for part in parts])
    if values["init_index"] is not None:  # a batch numbers its starting points from its own first
        values["init_index"] = np.concatenate([part.init_index + block[4] for part, block in zip(parts, plan.batches)])
    meta = dict(first.meta)
    backends = sorted({part.meta["backend"] for part in parts})
    meta["backend"] = ",".join(backends)  # one name unless 'auto' chose differently on different workers
    if meta.get("sharpness_seconds") is not None:
        meta["sharpness_seconds"] = sum(part.meta["sharpness_seconds"] for part in parts)
    seconds = float(sum(part.seconds for part in parts))
    return Sweep(**values, step=first.step, trajectory_step=first.trajectory_step, sharpness_step=first.sharpness_step,
                 steps=first.steps, seconds=seconds,
                 steps_per_second=float(np.sum(values["steps_taken"])) / seconds if seconds > 0 else math.inf,
                 meta=meta)


# --- grids over datasets and widths ---------------------------------------------------------------------------

@dataclass
class Grid:
    """The result of :func:`grid`: one :class:`lgd.Sweep` per (dataset, width).

    ``grid[name, width]`` is that cell's sweep (configurations stepsize-major, then seed, then start);
    :meth:`to_xarray` joins them into one dataset with the dimensions ``dataset``, ``width``, ``stepsize``,
    ``seed``, ``start`` and ``step``, which :meth:`from_xarray` (and :func:`open_grid`, from a file) reads back.
    """

    datasets: tuple
    widths: tuple
    sweeps: dict

    def __getitem__(self, key) -> Sweep:
        name, width = key
        return self.sweeps[(name, int(width))]

    def __iter__(self):
        return iter(self.sweeps.items())

    def __repr__(self) -> str:
        configs = sum(len(result) for result in self.sweeps.values())
        return f"Grid(datasets={list(self.datasets)}, widths={list(self.widths)}, {configs} configs)"

    def to_xarray(self):
        """One ``xarray.Dataset`` of every cell (each :meth:`lgd.Sweep.to_xarray`), joined along ``width`` and
        ``dataset``. Fields whose shape follows the width or the data (weights, neuron margins) are padded
        with NaN to the largest (``neuron`` and ``feature`` have coordinates 0, 1, ...); the attribute
        ``lgd`` holds each cell's header (steps, seconds, meta) under "dataset/width"."""
        from .results import _xarray

        xr = _xarray()
        headers, rows = {}, []
        for name in self.datasets:
            cells = []
            for width in self.widths:
                cell = self.sweeps[(name, width)].to_xarray()
                headers[cell_key(name, width)] = json.loads(cell.attrs["lgd"])
                cell = cell.assign_coords({dim: np.arange(cell.sizes[dim]) for dim in ("neuron", "feature")
                                           if dim in cell.dims}).drop_attrs()
                cells.append(cell)
            rows.append(xr.concat(cells, dim="width", join="outer", data_vars="all", coords="minimal"))
        joined = xr.concat(rows, dim="dataset", join="outer", data_vars="all", coords="minimal")
        joined = joined.assign_coords(dataset=list(self.datasets), width=np.array(self.widths, np.int64))
        joined.attrs["lgd"] = json.dumps(headers)
        return joined

    @classmethod
    def from_xarray(cls, dataset) -> "Grid":
        """The grid of a dataset written by :meth:`to_xarray` (``lgd sweep``'s grid.zarr or grid.nc opened by
        xarray): every cell the :class:`lgd.Sweep` it was, bit for bit, without the padding (as
        ``lgd.Sweep.from_xarray(dataset.sel(dataset=name, width=width))`` reads one cell)."""
        if any(dim not in dataset.dims for dim in GRID_CELL_DIMS):
            raise ValueError(f"the dataset has no dimensions {' and '.join(GRID_CELL_DIMS)}: it is no grid of "
                             "Grid.to_xarray (lgd.Sweep.from_xarray reads a sweep's)")
        dataset = dataset.load()
        names = [str(name) for name in dataset["dataset"].values]
        widths = [int(width) for width in dataset["width"].values]
        return cls(datasets=tuple(names), widths=tuple(widths),
                   sweeps={(name, width): Sweep.from_xarray(dataset.sel(dataset=name, width=width))
                           for name in names for width in widths})


def open_grid(path) -> Grid:
    """The :class:`Grid` in the file ``lgd sweep`` writes, ``grid.zarr`` (a zarr store) or ``grid.nc`` (netCDF),
    or any :meth:`Grid.to_xarray` written to one; ``grid[name, width]`` is a cell's :class:`lgd.Sweep`."""
    from .results import _xarray

    xr = _xarray()
    path = os.fspath(path)
    with (xr.open_zarr(path) if os.path.isdir(path) else xr.open_dataset(path)) as dataset:
        return Grid.from_xarray(dataset)


def grid(datasets, widths, stepsizes, steps=1000, seeds=(0,), *, loss="logistic", activation="leaky_softplus",
         scaling="mean_field", outer="alternating", train_outer=False, init="normal", init_scale=1.0, record=1,
         compute="auto", divergence=1e10, client=None, batch_size=None, store=None, retries=RETRIES) -> Grid:
    """Sweeps of the same stepsizes and seeds over several datasets and widths, in one call: a :class:`Grid`.

    datasets : dict name -> (X, y) or (X, y, X_test, y_test), or names of lgd.data's datasets
        (``("xor", "fig4")``, each with its defaults); names are strings.
    widths : sequence of int >= 1
        A ``lgd.TwoLayerNet(width, activation, scaling, outer, train_outer)`` per width.
    stepsizes, steps, seeds, loss, init, init_scale, record, compute, divergence
        As in :func:`lgd.sweep`, the same for every cell.
    client, batch_size, retries
        As in :func:`sweep`; batch_size is per cell (a batch never mixes datasets or widths: each is one
        lgd.sweep call of one shape), and the batches of every cell are submitted together, so the cluster
        runs cells side by side. ``client=None`` runs them here.
    store : None | path
        One zarr store for the grid: cell (name, width) in the group ``"{name}/w{width}"``
        (``xarray.open_zarr(store, group="xor/w20")``; ``xarray.open_datatree(store, engine="zarr")`` reads
        them all), resumed as in :func:`sweep`.

    Every cell is checked before any batch runs.

    >>> import lgd, lgd.distributed
    >>> result = lgd.distributed.grid({"xor": lgd.data.xor(n=20)}, widths=[2, 4], stepsizes=[1.0, 8.0], steps=20,
    ...                               seeds=(0, 1), compute="numpy")
    >>> result["xor", 4].risk.shape
    (4, 21)
    """
    named = _datasets(datasets)
    widths = _widths(widths)
    retries = _check_retries(retries)
    batch_size = _check_batch_size(batch_size)
    _kind(client)
    plans, keys = [], []
    for name, arrays in named.items():
        for width in widths:
            model = TwoLayerNet(width, activation=activation, scaling=scaling, outer=outer, train_outer=train_outer)
            X, y, X_test, y_test = arrays
            plans.append(_plan(X, y, model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale,
                               inits=None, outer_inits=None, X_test=X_test, y_test=y_test, record=record,
                               compute=compute, divergence=divergence, deprecated={}))
            keys.append((name, width))
    total = sum(plan.configs for plan in plans)
    default = _default_batch_size(total, client, store)
    plans = [_with_batches(plan, batch_size, default, None if store is None else SweepStore(store, f"{name}/w{width}"))
             for plan, (name, width) in zip(plans, keys)]
    parts = _execute(plans, client, retries, plans[0].progress)
    return Grid(datasets=tuple(named), widths=tuple(widths),
                sweeps={key: _combine(plan, cell) for key, plan, cell in zip(keys, plans, parts)})


def _datasets(datasets) -> dict:
    """name -> (X, y, X_test, y_test) from a dict of arrays or a sequence of lgd.data names."""
    from . import data

    if isinstance(datasets, str):
        datasets = (datasets,)
    if not isinstance(datasets, dict):
        given = list(datasets)
        other = next((name for name in given if not isinstance(name, str)), None)
        if other is not None:
            raise ValueError("datasets must be a dict name -> (X, y) or (X, y, X_test, y_test), or names of lgd.data's "
                             f"datasets; got a sequence holding {type(other).__name__}")
        datasets = {name: data.load(name) for name in given}
    if not datasets:
        raise ValueError("datasets must name at least one dataset")
    named = {}
    for name, arrays in datasets.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"dataset names must be non-empty strings without '/', got {name!r}")
        if not isinstance(arrays, (tuple, list)) or len(arrays) not in (2, 4):
            raise ValueError(f"dataset {name!r} must be (X, y) or (X, y, X_test, y_test)")
        named[name] = tuple(arrays) + (None, None) * (len(arrays) == 2)
    return named


def _widths(widths) -> list:
    return _driver.distinct_integers(widths, "widths", 1)


# --- the grid's figure ------------------------------------------------------------------------------------------

def final_log10_risk(result: Sweep) -> np.ndarray:
    """log10 of each configuration's final risk (from its log-risk: finite where the risk underflowed), NaN
    where the configuration did not complete."""
    from .results import log_risk_trace

    last = log_risk_trace(result)[:, -1] / math.log(10)
    return np.where(np.asarray(result.status) == "completed", last, np.nan)


def plot_grid(result: Grid, title: str | None = None):
    """Final risk against stepsize, one line per width (the median over seeds and starts of the configurations
    that completed; a stepsize where none did is left out), one panel per dataset."""
    from .plot import _pyplot, suptitle

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(result.datasets), figsize=(5.5 * len(result.datasets), 4.2), squeeze=False,
                             constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(result.widths)))
    for ax, name in zip(axes[0], result.datasets):
        for width, color in zip(result.widths, colors):
            cell = result[name, width]
            _, seeds, starts = grid_shape(cell)
            per_stepsize = seeds * starts
            risk = final_log10_risk(cell).reshape(-1, per_stepsize)
            stepsize = np.asarray(cell.stepsize).reshape(-1, per_stepsize)[:, 0]
            completed = np.isfinite(risk).any(axis=1)
            median = np.full(len(stepsize), np.nan)
            median[completed] = np.nanmedian(risk[completed], axis=1)
            order = np.argsort(stepsize)  # the line in stepsize order, whatever order the sweep had
            ax.semilogx(stepsize[order], median[order], "o-", ms=3, color=color, lw=1.2, label=f"width {width}")
        ax.set(xlabel="stepsize eta", ylabel="log10 final risk (median over seeds)", title=name)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        suptitle(fig, title)
    return fig


def save_grid_figure(result: Grid, path, title: str | None = None) -> None:
    """Write :func:`plot_grid` to ``path`` (PNG, PDF or SVG by its suffix) and close the figure."""
    from .plot import _pyplot

    fig = plot_grid(result, title=title)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
