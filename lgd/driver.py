"""The GD driver: :func:`gd` (one run) and :func:`sweep` (a grid of stepsizes and seeds).

This is where inputs are checked, initial weights drawn, the backend chosen and the run advanced
in chunks (for the progress bar, for Ctrl-C and so that a diverging run stops early), and where a
run's checkpoints are written (between chunks and at its end) and read back to resume it. The
per-step work is entirely the backend's; see :mod:`lgd.backends` for that contract. The option
objects (what to record, where to compute) and their checks live in :mod:`lgd.options`; the
checkpoint files, their fingerprint and :func:`lgd.resume` in :mod:`lgd.checkpoint`.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np

from . import backends as _backends
from . import checkpoint as _checkpoint
from . import losses as _losses
from . import options as _options
from . import stepsize as _stepsize
from .backends import Problem, State, Trace, record_count, record_steps, stepsize_of
from .models import Linear, TwoLayerNet
from .options import check_count as _check_count
from .options import real_array
from .results import Run, Sweep

__all__ = ["gd", "sweep"]

# Entries of neuron margins (configs x records x width) recorded without being asked for.
NEURON_BUDGET = 1 << 24
# Wall time one chunk aims at: short enough for a live progress bar and a prompt Ctrl-C.
CHUNK_SECONDS = 0.25
# The first chunk's steps, before a chunk's pace is known: 16, or 1 for a batch whose step may take long (its
# multiply-adds C n d m past FIRST_CHUNK_WORK, or the sharpness or Lyapunov exponents recorded): 16 such steps
# (2.5 s each for n = 2000, d = 600, m = 256 with both every step) kept a Ctrl-C waiting 33 s.
FIRST_CHUNK_STEPS = 16
FIRST_CHUNK_WORK = 1 << 26


def gd(X, y, model, loss="logistic", stepsize=1.0, steps=1000, *, init="normal", init_scale=1.0, seed=0,
       X_test=None, y_test=None, record=1, compute="auto", divergence=1e10, checkpoint=None,
       checkpoint_every=_checkpoint.CHECKPOINT_EVERY, **deprecated) -> Run:
    """Full-batch gradient descent W_{t+1} = W_t - stepsize * grad L(W_t) for ``steps`` steps.

    Parameters
    ----------
    X, y : arrays (n, d) and (n,)
        Training data; labels in {+1, -1} for the margin losses, real targets for ``'squared'``.
    model : lgd.TwoLayerNet or lgd.Linear
    loss : str or lgd.losses.Loss
        ``'logistic'``, ``'exponential'``, ``'flattened_exponential(a)'``, ``'flattened_polynomial(a)'``
        or ``'squared'``.
    stepsize : float > 0 or an lgd.stepsize rule
        The constant stepsize eta, or a rule giving eta_t at every step: ``lgd.stepsize.warmup``,
        ``step_decay``, ``cosine``, ``adaptive`` (eta / L(W_t)), ``polyak``, ``normalized``. Runtime data:
        any value or rule, no recompilation; eta_t is recorded as ``run.eta``.
    steps : int >= 1
        Number of GD steps T; metrics are recorded at steps 0, k, 2k, ... and T (k = ``record.every``).
    init : 'normal' | 'zeros' | array
        W_0 ~ N(0, init_scale^2) elementwise, zero, or the array given (shape (width, d), or (d,) for
        lgd.Linear). The draw: ``rng = numpy.random.default_rng(seed)``, then
        ``W_0 = init_scale * rng.standard_normal((width, d))`` in float64 (cast to the run's dtype),
        then, for ``outer='random'``, the outer weights ``rng.choice([1.0, -1.0], size=width)`` from the
        same generator. ``run.initial_weights`` holds W_0 whatever the init.
    X_test, y_test : arrays, optional
        Held-out data: ``test_risk`` and ``test_accuracy`` are recorded with the other metrics.
    record : lgd.Record or int
        What to record: the record interval k, per-neuron margins, the sharpness; an int k is short
        for ``lgd.Record(every=k)``. See :class:`lgd.Record`.
    compute : lgd.Compute or str
        Where and how to compute: backend, dtype, progress bar; a backend name is short for
        ``lgd.Compute(backend=name)``. See :class:`lgd.Compute`.
    divergence : lgd.Divergence or float
        When the run counts as diverged and stops (besides a risk or gradient that is not finite): a
        risk above this factor times max(1, risk of the zero predictor), or a weight norm above a bound.
        See :class:`lgd.Divergence`.
    checkpoint : None | path
        A file the run's state and records are saved to, atomically, every ``checkpoint_every`` seconds
        (between chunks) and at its end (also after a Ctrl-C). When the file exists, the call continues
        from it instead of starting over: the same call (a ValueError names the arguments that differ)
        gives traces bit-identical to a run never stopped, and ``seconds`` counts every sitting; a
        finished checkpoint gives its result without running. :func:`lgd.resume` continues it from the
        file alone. See :mod:`lgd.checkpoint`.
    checkpoint_every : float > 0
        Seconds between two checkpoints (60 by default).
    **deprecated
        The keywords these objects replace still work, with a DeprecationWarning: ``record_every``,
        ``neuron_margins``, ``sharpness_every``, ``sharpness_k``, ``sharpness_points`` (fields of
        :class:`lgd.Record`) and ``backend``, ``dtype``, ``progress`` (fields of :class:`lgd.Compute`).

    Returns
    -------
    lgd.Run
        Host numpy traces, initial and final weights, ``status`` ('completed', 'diverged' or
        'interrupted'), timing and :attr:`lgd.Run.phase`. Ctrl-C stops the run at the end of the
        chunk it arrives in and returns it 'interrupted', its last record at the step its weights are.

    Examples
    --------
    >>> import lgd
    >>> X, y = lgd.data.xor(n=40)
    >>> run = lgd.gd(X, y, lgd.TwoLayerNet(16), stepsize=2.0, steps=200, compute="numpy")
    >>> run.status, bool(run.risk[-1] < run.risk[0])
    ('completed', True)
    """
    record, compute = _options.resolve(record, compute, deprecated, "gd")
    stepsize = _stepsize.as_rule(stepsize, "stepsize")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, Integral) or not 0 <= seed <= _LARGEST_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    result = _sweep(X, y, model, loss, [stepsize], steps, (seed,), init=init, init_scale=init_scale, inits=None,
                    outer_inits=None, X_test=X_test, y_test=y_test, record=record, compute=compute,
                    divergence=divergence, checkpoint=checkpoint, checkpoint_every=checkpoint_every, caller="gd")
    return result[0]


def sweep(X, y, model, loss="logistic", stepsizes=(1.0,), steps=1000, seeds=(0,), *, init="normal",
          init_scale=1.0, inits=None, outer_inits=None, X_test=None, y_test=None, record=1, compute="auto",
          divergence=1e10, checkpoint=None, checkpoint_every=_checkpoint.CHECKPOINT_EVERY, client=None,
          **deprecated) -> Sweep:
    """GD for every (stepsize, seed, starting point) on the same data, in one batched backend call.

    Configurations are ordered stepsize-major, then seed, then starting point: with K starting points,
    configuration i has ``stepsizes[i // (len(seeds) K)]``, ``seeds[(i // K) % len(seeds)]`` and starting
    point ``i % K`` (``result.stepsize``, ``result.seed``, ``result.init_index`` say it). Arguments are
    those of :func:`gd`, and:

    inits : None | array (K, width, d), or (K, d) for lgd.Linear
        K starting points W_0 as a sweep axis (instead of ``init`` and ``init_scale``, which must stay at
        their defaults), run in the same batched call; :func:`lgd.init_grid` builds a grid of them for
        two-parameter models.
    outer_inits : None | array (K, width)
        The outer weights of each starting point (instead of the model's ``outer``; a TwoLayerNet's only).

    Every trace of the result has a leading configuration axis. ``checkpoint`` and ``checkpoint_every``: as
    in :func:`gd`, for the whole sweep.

    >>> import lgd
    >>> X, y = lgd.data.xor(n=40)
    >>> result = lgd.sweep(X, y, lgd.TwoLayerNet(8), "logistic", stepsizes=[0.5, 4.0], steps=50,
    ...                    seeds=(0, 1), compute="numpy")
    >>> result.risk.shape
    (4, 51)
    """
    if client is not None:  # batches on a cluster (a dask.distributed.Client): docs/scale-out.md
        if checkpoint is not None:
            raise ValueError("checkpoint= is for a sweep in one process; a distributed sweep resumes from its "
                             "store: lgd.distributed.sweep(..., client=client, store=path)")
        from . import distributed

        return distributed.sweep(X, y, model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale,
                                 inits=inits, outer_inits=outer_inits, X_test=X_test, y_test=y_test, record=record,
                                 compute=compute, divergence=divergence, client=client, **deprecated)
    record, compute = _options.resolve(record, compute, deprecated, "sweep")
    return _sweep(X, y, model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale, inits=inits,
                  outer_inits=outer_inits, X_test=X_test, y_test=y_test, record=record, compute=compute,
                  divergence=divergence, checkpoint=checkpoint, checkpoint_every=checkpoint_every, caller="sweep")


@dataclass(frozen=True)
class Checked:
    """lgd.sweep's arguments as :func:`check_call` leaves them: the loss from its catalog, the run's dtype, the
    data in it, the stepsize rules, seeds, steps, init_scale, the starting points and the projection directions
    (or None)."""

    loss: object
    dtype: object
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    rules: list
    seeds: list
    steps: int
    init_scale: object
    starts: object
    directions: np.ndarray | None


def check_call(X, y, model, loss, stepsizes, steps, seeds, *, init, init_scale, inits, outer_inits, X_test, y_test,
               record, dtype) -> Checked:
    """Every check of lgd.sweep's arguments that needs no backend, in one order, before any work: the model, the
    loss, the data and held-out data, the stepsize rules (and the sharpness an inverse_sharpness rule needs), seeds,
    steps, init_scale, the stepsizes' range in the dtype, the model's scale, sharpness_k against the parameters,
    the starting points and the projection directions. lgd.distributed.sweep runs it too, before any batch."""
    if not isinstance(model, TwoLayerNet):
        raise TypeError(f"model must be an lgd.TwoLayerNet or lgd.Linear, got {type(model).__name__}")
    loss = _losses.get(loss)
    dtype = _run_dtype(dtype, X)
    X, y = check_data(X, y, loss, dtype, "X", "y")
    if (X_test is None) != (y_test is None):
        raise ValueError("give both X_test and y_test, or neither")
    if X_test is not None:
        X_test, y_test = check_data(X_test, y_test, loss, dtype, "X_test", "y_test")
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test has {X_test.shape[1]} features but X has {X.shape[1]}")
    rules = _stepsize_rules(stepsizes)
    if record.sharpness_every is None and any(rule.code == _stepsize.INVERSE_SHARPNESS for rule in rules):
        raise ValueError("lgd.stepsize.inverse_sharpness needs the sharpness measured: "
                         "record=lgd.Record(sharpness_every=s)")
    seeds = _check_seeds(seeds)
    steps = check_steps(steps)
    init_scale = check_init_scale(init_scale, init, inits)
    _check_stepsize_range(np.array([rule.eta for rule in rules]), dtype)
    check_scale(model, dtype)
    d = X.shape[1]
    if record.sharpness_every is not None and record.sharpness_k > _trained_parameters(model, d):
        raise ValueError(f"Record.sharpness_k asks for {record.sharpness_k} eigenvalues but the model has "
                         f"{_trained_parameters(model, d)} trained parameters")
    return Checked(loss=loss, dtype=dtype, X=X, y=y, X_test=X_test, y_test=y_test, rules=rules, seeds=seeds,
                   steps=steps, init_scale=init_scale, starts=_starting_points(model, d, inits, outer_inits),
                   directions=_directions(record, model, d, dtype))


def _sweep(X, y, model, loss, stepsizes, steps, seeds, *, init, init_scale, inits, outer_inits, X_test, y_test,
           record, compute, divergence, checkpoint, checkpoint_every, caller: str) -> Sweep:
    """The body of :func:`sweep` (and :func:`gd`, its `caller`, which a checkpoint records for
    :func:`lgd.resume`), with ``record`` and ``compute`` resolved."""
    divergence = _options.as_divergence(divergence)
    record_every, neuron_margins = record.every, record.neuron_margins
    sharpness_every, sharpness_k, sharpness_points = record.sharpness_every, record.sharpness_k, record.sharpness_points
    backend, progress = compute.backend, compute.progress
    checked = check_call(X, y, model, loss, stepsizes, steps, seeds, init=init, init_scale=init_scale, inits=inits,
                         outer_inits=outer_inits, X_test=X_test, y_test=y_test, record=record, dtype=compute.dtype)
    loss, dtype, X, y = checked.loss, checked.dtype, checked.X, checked.y
    X_test, y_test, rules, seeds, steps = checked.X_test, checked.y_test, checked.rules, checked.seeds, checked.steps
    init_scale, starts, directions = checked.init_scale, checked.starts, checked.directions
    checkpoint, checkpoint_every = _checkpoint.check_target(checkpoint, checkpoint_every)
    n, d = X.shape
    risk_bound = divergence.risk * max(1.0, _zero_predictor_risk(y, loss))
    device_input = _backends.on_device(X)
    backend = _backends.resolve(backend, X, (model.activation, loss))
    X, y, X_test, y_test = backend.inputs(X, y, X_test, y_test)

    # Configurations stepsize-major, then seed, then starting point.
    configs = list(itertools.product(range(len(rules)), range(len(seeds)), range(starts.count)))
    W0, a0 = _initial_weights(model, d, init, init_scale, seeds, starts, dtype)
    state = State(W=np.ascontiguousarray([W0[s, k] for _, s, k in configs]),
                  a=np.ascontiguousarray([a0[s, k] for _, s, k in configs]),
                  stepsizes=np.array([rules[e].eta for e, _, _ in configs]),
                  rules=np.array([rules[e].code for e, _, _ in configs], dtype=np.int64),
                  rule_params=np.array([rules[e].params for e, _, _ in configs], dtype=np.float64).reshape(-1, 3))
    initial_W, initial_a = state.W.copy(), state.a.copy()
    if record.lyapunov:
        state.tangents, state.tangents_a = _initial_tangents(model, d, record.lyapunov, seeds, configs)
        state.log_growth = np.zeros((len(configs), record.lyapunov))
    if neuron_margins is None:
        neuron_margins = len(configs) * record_count(steps, record_every) * model.width <= NEURON_BUDGET
    problem = Problem(X=X, y=y, activation=model.activation, loss=loss, scale=model.scale,
                      train_outer=model.train_outer, linear=model.__class__.__name__ == "Linear",
                      X_test=X_test, y_test=y_test, risk_bound=risk_bound, weight_bound=divergence.weight_norm,
                      weights_every=record.weights or 0,
                      log_risk_every_step=any(rule.code == _stepsize.ADAPTIVE for rule in rules),
                      directions=None if directions is None else directions.astype(dtype),
                      sharpness_every=sharpness_every or 0, sharpness_k=sharpness_k, sharpness_points=sharpness_points,
                      lyapunov=record.lyapunov or 0)

    def empty_trace(until: int, check_memory: bool = False, every: int = 0) -> Trace:
        """The records of a run of `until` steps (trajectories included when asked for); with `every`, each kind
        of record (metrics, weights, sharpness) at record_steps(until, every) instead of its own steps. With
        `check_memory`, MemoryError before any is made where they would not fit in the memory available: numpy's
        allocations succeed beyond it where the system overcommits, and the process is killed as they are
        filled."""
        def count(own):
            return record_count(until, every or own)
        shape = (len(configs), count(record_every), model.width, bool(neuron_margins))
        options = dict(weight_records=count(record.weights) if record.weights else 0, dim=d,
                       dtype=dtype, outer=model.train_outer,
                       directions=0 if directions is None else directions.shape[0], tangents=record.lyapunov or 0,
                       sharpness_records=count(sharpness_every) if in_runner else 0,
                       sharpness_k=sharpness_k if in_runner else 0)
        available = _available_memory() if check_memory else None
        if available is not None:
            needed = sum(math.prod(size) * np.dtype(kind).itemsize
                         for size, kind in Trace.layout(*shape, **options).values())
            if needed > available:
                raise MemoryError(f"{needed / 2**30:,.1f} GiB of records, {available / 2**30:,.1f} GiB of memory "
                                  f"available")
        return Trace.empty(*shape, **options)

    call = saved = None
    if checkpoint is not None:  # a checkpoint of another call is refused here, before any work
        call = _checkpoint.Call.of(X=X, y=y, X_test=X_test, y_test=y_test, model=model, loss=loss, rules=rules,
                                   steps=steps, seeds=seeds, init=init, init_scale=init_scale, inits=inits,
                                   outer_inits=outer_inits, record=record, neuron_margins=neuron_margins,
                                   dtype=dtype, backend=backend.name, divergence=divergence, progress=progress,
                                   caller=caller)
        if checkpoint.exists():
            saved = _checkpoint.read(checkpoint)
            saved.check(call)
    finished = saved is not None and saved.finished
    # Compiles here, not in the timed loop (nothing to run for a finished checkpoint).
    runner = None if finished else backend.runner(problem, steps, record_every, state.W.shape)
    # The sharpness is measured inside the runner's steps where it can (numpy, numba), else here between chunks.
    in_runner = sharpness_every is not None and (saved.header["in_runner"] if finished
                                                 else getattr(runner, "measures_sharpness", False))
    try:
        trace = empty_trace(steps, check_memory=True)
    except MemoryError as exc:
        raise MemoryError(_too_large(exc, len(configs), steps, record, record_every, sharpness_every, sharpness_k,
                                     model.width, d, bool(neuron_margins))) from None
    sharpness_steps = sharpness = None
    if sharpness_every is not None:
        sharpness_steps = record_steps(steps, sharpness_every)
        sharpness = trace.sharpness if in_runner else np.full((len(configs), sharpness_steps.size, sharpness_k),
                                                              np.nan)

        def measure_sharpness(t):
            slot = int(np.searchsorted(sharpness_steps, t))
            for c in np.flatnonzero(state.diverged < 0):
                sharpness[c, slot] = _sharpness(problem, state, c, sharpness_k, sharpness_points)
                state.sharpness_last[c] = sharpness[c, slot, 0]

    between_chunks = sharpness if sharpness_every is not None and not in_runner else None
    if between_chunks is not None:
        # Each configuration's top eigenvalue at the latest pause, which the runner's next steps take
        # (lgd.stepsize.inverse_sharpness), as a runner measuring it itself keeps it. It is part of the state a
        # checkpoint saves (lgd.checkpoint.STATE_FIELDS): a resumed run takes the one measured before it stopped.
        state.sharpness_last = np.full(len(configs), np.nan)
    start, seconds_before, paused_before, sittings = 0, 0.0, 0.0, 0
    if saved is not None:
        saved.restore(state, trace, between_chunks)
        start, sittings = saved.header["reached"], saved.header["sittings"]
        seconds_before, paused_before = saved.header["seconds"], saved.header["paused_seconds"]
    if finished:
        reached, seconds, interrupted, paused_seconds = start, 0.0, False, 0.0
    else:
        writer = None if checkpoint is None else _checkpoint.Writer(
            checkpoint, checkpoint_every, call, state, trace, between_chunks, in_runner=in_runner,
            seconds=seconds_before, paused_seconds=paused_before, sittings=sittings)
        reached, seconds, interrupted, paused_seconds = _advance(
            runner, state, trace, steps, progress,
            pauses=() if between_chunks is None else [t for t in sharpness_steps.tolist() if t >= start],
            at_pause=None if between_chunks is None else measure_sharpness, start=start, checkpoint=writer,
            first_chunk=1 if (len(configs) * n * d * model.width > FIRST_CHUNK_WORK or sharpness_every is not None
                              or record.lyapunov) else FIRST_CHUNK_STEPS)
        if writer is not None:  # before the stop step's record below, which changes no state a resume needs
            status = (_checkpoint.INTERRUPTED if interrupted else _checkpoint.COMPLETED
                      if np.any(state.diverged < 0) else _checkpoint.DIVERGED)
            writer.write(status, reached, seconds, paused_seconds)
            sittings = writer.sittings
    seconds, paused_seconds = seconds_before + seconds, paused_before + paused_seconds
    final = None
    if interrupted:
        # The weights are W_reached: record that step too, so that the last record and the weights agree. As a
        # run of `reached` steps that records its two ends only (of which the last is kept): two slots a field,
        # where the records' own steps would allocate a second trace of the run (trajectories: gigabytes).
        ends = max(1, reached)
        final = empty_trace(reached, every=ends)
        last = backend.runner(replace(problem, weights_every=ends if problem.weights_every else 0,
                                      sharpness_every=ends if problem.sharpness_every else 0),
                              reached, ends, state.W.shape)
        last.start(state, final)
        try:
            last.advance(reached, reached + 1)
        finally:
            last.finish()
        # That runner's run ends at `reached`; a rule whose eta_t depends on the run's length takes the call's.
        for c in range(len(configs)):
            if int(state.rules[c]) in _stepsize.LENGTH_RULES and state.diverged[c] < 0:
                final.eta[c, -1] = stepsize_of(state, c, reached, steps, math.nan, math.nan, math.nan, problem.dtype)

    def kept(field: str, every: int):
        """A trace field over the steps the run took (and, when interrupted, the step it stopped at): a view
        of the records, not a copy (trajectories can take gigabytes), unless the stop step is appended."""
        values = getattr(trace, field)[:, :np.count_nonzero(record_steps(steps, every) < reached)]
        if final is None:
            return values
        return np.concatenate([values, getattr(final, field)[:, -1:]], axis=1)

    def kept_steps(every: int) -> np.ndarray:
        taken = record_steps(steps, every)
        taken = taken[taken < reached]
        return taken if final is None else np.append(taken, reached)

    status = ["interrupted" if interrupted and dv < 0 else "diverged" if dv >= 0 else "completed"
              for dv in state.diverged]
    steps_taken = np.where(state.diverged >= 0, state.diverged, min(reached, steps)).astype(np.int64)
    weight_norm = kept("weight_norm", record_every)
    # margin / ||theta||^L over the L trained layers (science.md, Cai et al.): scale-free for a homogeneous net,
    # whose margin grows as c^L when its trained weights grow as c.
    layers = 2 if model.train_outer else 1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        normalized = np.where(weight_norm > 0, kept("margin", record_every) / weight_norm ** layers, np.nan)
    meta = {"model": model.config(), "loss": loss.spec, "n": n, "d": d, "dtype": np.dtype(dtype).name,
            "backend": backend.name, "record_every": record_every,
            "init": "inits" if inits is not None else init if isinstance(init, str) else "array",
            "init_scale": init_scale, "divergence": {"risk": divergence.risk, "weight_norm": divergence.weight_norm},
            "risk_bound": risk_bound, "made_by": _made_by(backend.name)}
    if checkpoint is not None:
        meta.update(checkpoint=str(checkpoint), sittings=sittings)
    if getattr(runner, "path", None):  # the cupy backend's: the fused kernel or the products path
        meta.update(cuda_path=runner.path)
    if sharpness_every is not None:
        meta.update(sharpness_every=sharpness_every, sharpness_k=sharpness_k, sharpness_points=sharpness_points,
                    sharpness_seconds=None if in_runner else paused_seconds)
        if in_runner:
            sharpness, sharpness_steps = kept("sharpness", sharpness_every), kept_steps(sharpness_every)
        else:
            taken = sharpness_steps < reached
            sharpness_steps, sharpness = sharpness_steps[taken], sharpness[:, taken]
    trajectory = outer_trajectory = projections = trajectory_step = None
    if record.weights:
        trajectory_step = kept_steps(record.weights)
        for field in ("weights", "outer"):  # slots a diverged run never reached were left empty
            values = getattr(trace, field)
            if values.shape[1] == 0:
                continue
            for c in np.flatnonzero(state.diverged >= 0):
                values[c, record_steps(steps, record.weights) > state.diverged[c]] = np.nan
            if final is not None and getattr(final, field).shape[1]:
                getattr(final, field)[(state.diverged >= 0) & (state.diverged < reached), -1] = np.nan
        if directions is not None:
            projections = kept("projections", record.weights)
        else:
            trajectory = model.to_user(kept("weights", record.weights))
            outer_trajectory = kept("outer", record.weights) if model.train_outer else None
    lyapunov_sum = lyapunov = None
    if record.lyapunov:
        lyapunov_sum = kept("lyapunov_sum", record_every)
        with np.errstate(divide="ignore", invalid="ignore"):
            lyapunov = state.log_growth / steps_taken[:, None]
    scalar = {name: kept(name, record_every) for name in ("risk", "log_risk", "accuracy", "grad_norm", "margin",
                                                          "eta")}
    return Sweep(step=kept_steps(record_every), **scalar, weight_norm=weight_norm, normalized_margin=normalized,
                 test_risk=kept("test_risk", record_every) if X_test is not None else None,
                 test_accuracy=kept("test_accuracy", record_every) if X_test is not None else None,
                 neuron_margins=kept("neuron_margins", record_every) if neuron_margins else None,
                 weights=backend.outputs(model.to_user(state.W), device_input),
                 outer_weights=backend.outputs(state.a, device_input),
                 initial_weights=model.to_user(initial_W), initial_outer_weights=initial_a,
                 trajectory=trajectory, outer_trajectory=outer_trajectory, projections=projections,
                 trajectory_step=trajectory_step, lyapunov=lyapunov, lyapunov_sum=lyapunov_sum,
                 stepsize=state.stepsizes.copy(), stepsize_rule=[rules[e].spec for e, _, _ in configs],
                 seed=np.array([seeds[s] for _, s, _ in configs], dtype=np.int64),
                 init_index=(None if inits is None and outer_inits is None
                             else np.array([k for _, _, k in configs], dtype=np.int64)),
                 steps=steps, status=status, diverged_step=state.diverged.copy(), steps_taken=steps_taken,
                 seconds=seconds,
                 steps_per_second=float(np.sum(steps_taken)) / seconds if seconds > 0 else math.inf,
                 meta=meta, sharpness=sharpness, sharpness_step=sharpness_steps)


@functools.cache
def _made_by(backend: str) -> dict:
    """What a result was computed with: the versions of lgd, Python, numpy and the backend's library, and the
    CPU (hosts of one kind differ in vector width, and the numba kernels' bits with it)."""
    from . import __version__
    from .benchmark.machine import cpu_name

    made_by = {"lgd": __version__, "python": platform.python_version(), "numpy": np.__version__, "cpu": cpu_name()}
    library = {"numba": "numba", "cupy": "cupy"}.get(backend)
    if library in sys.modules:
        made_by[library] = getattr(sys.modules[library], "__version__", None)
    return made_by


class _HeldInterrupt:
    """Holds the signals that stop a run (SIGINT, SIGTERM) where Python handles them (its Ctrl-C handler, or one
    of the user's: a handler that raises KeyboardInterrupt on a batch system's SIGTERM) while a chunk runs and
    its bookkeeping is done, and :meth:`deliver` hands them to those handlers afterwards, so that a run stops
    between two steps with its state, its step count and its trace in agreement. Only in the main thread (where
    Python delivers signals); elsewhere nothing is held."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))

    def __enter__(self):
        self.pending, self.previous = [], {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if callable(signal.getsignal(signum)):  # not SIG_DFL, SIG_IGN or a handler set outside Python
                    self.previous[signum] = signal.signal(signum, self._hold)
        return self

    def _hold(self, signum, frame):
        self.pending.append((signum, frame))

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def deliver(self) -> None:
        """Call the held signals' handlers in the order the signals came (Python's Ctrl-C handler raises
        KeyboardInterrupt)."""
        pending, self.pending = self.pending, []
        for signum, frame in pending:
            self.previous.get(signum, signal.default_int_handler)(signum, frame)


def _advance(runner, state: State, trace: Trace, steps: int, progress, pauses=(), at_pause=None, start: int = 0,
             checkpoint=None, first_chunk: int = FIRST_CHUNK_STEPS):
    """Run evaluations start..steps in chunks (the runner protocol of :mod:`lgd.backends`); the state
    holds W_start (0, or where a resumed run stopped) and the trace the records before it.

    Chunks end at every step t of the sorted ``pauses``, where ``at_pause(t)`` is called before
    evaluation t, so the state then holds W_t; that call is timed apart from the GD steps. A Ctrl-C (or a
    KeyboardInterrupt that a handler of SIGINT or SIGTERM raises) ends the run at the end of the chunk it
    arrives in (:class:`_HeldInterrupt`), or where it arrives outside a chunk: either way the state then holds
    W_t for the first evaluation t not run. Between
    chunks, when ``checkpoint`` (an lgd.checkpoint.Writer) is due, the records are synced to the host
    and it is written (its time counted in neither figure). Where chunks end changes no bit of the
    results (the backends' arithmetic does not depend on them). The first chunk has ``first_chunk`` steps,
    the next ones grow or shrink toward CHUNK_SECONDS. Returns (that t, GD seconds of this call, interrupted,
    seconds spent in ``at_pause``).
    """
    total = steps + 1
    # The bar counts GD steps: evaluations t .. stop - 1 take the run to step min(stop, steps) (the last
    # evaluation, at t = steps, takes no step).
    bar = _progress_bar(progress, steps)
    if bar is not None and start:
        bar.update(min(start, steps))
    t, chunk, seconds, paused_seconds = start, min(total, first_chunk), 0.0, 0.0
    pauses = list(pauses)
    runner.start(state, trace, start)
    try:
        while t < total and np.any(state.diverged < 0):
            if pauses and pauses[0] == t:
                tic = time.perf_counter()
                at_pause(pauses.pop(0))
                paused_seconds += time.perf_counter() - tic
            stop = min(total, t + chunk, pauses[0] if pauses else total)
            tic = time.perf_counter()
            with _HeldInterrupt() as held:  # until t is the step the state holds
                runner.advance(t, stop)
                elapsed = time.perf_counter() - tic
                seconds += elapsed
                if bar is not None:
                    bar.update(min(stop, steps) - min(t, steps))
                # Grow or shrink the chunk toward CHUNK_SECONDS of work, at most 8x per chunk; the rest of the
                # run in one chunk where it fits in that much at this chunk's pace: each chunk costs a runner call
                # (on the numba backend about 0.1 ms besides its steps; S's 1,000-step call 1.8% faster in two
                # chunks than in three, docs/performance.md).
                rest = total - stop
                if rest * elapsed <= CHUNK_SECONDS * (stop - t):
                    chunk = max(1, rest)
                else:
                    chunk = max(1, int(min(8.0 * chunk, (stop - t) * CHUNK_SECONDS / max(elapsed, 1e-6))))
                t = stop
            held.deliver()
            if checkpoint is not None and t < total and checkpoint.due():  # the last one is the caller's
                runner.sync()
                checkpoint.write(_checkpoint.RUNNING, t, seconds, paused_seconds)
    except KeyboardInterrupt:
        return t, seconds, True, paused_seconds
    finally:
        runner.finish()
        if bar is not None:
            bar.close()
    return total, seconds, False, paused_seconds


def _sharpness(problem: Problem, state: State, c: int, k: int, points):
    """Top-k Hessian eigenvalues of configuration c at its current weights (NaN where the risk is not finite)."""
    from .hessian import sharpness

    with np.errstate(over="ignore", invalid="ignore"):
        return sharpness(np.asarray(state.W[c]), np.asarray(state.a[c]), problem.X, problem.y, problem.activation,
                         problem.loss, problem.scale, train_outer=problem.train_outer, k=k, points=points)


def _progress_bar(progress, total: int, unit: str = "step"):
    """A tqdm bar of ``total`` ``unit`` where ``progress`` asks for one (None: where stderr is a terminal and
    tqdm is installed; True without tqdm is an ImportError), else None."""
    asked = progress is True
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if asked:
            raise ImportError('progress=True needs tqdm: pip install tqdm (or "lgd[progress]")') from None
        return None
    return tqdm(total=total, unit=unit, leave=False)


def _run_dtype(dtype, X):
    """The run's dtype: the one asked for (checked by lgd.Compute), else float32 for float32 input, else float64."""
    if dtype is None:
        given = getattr(X, "dtype", None)
        given = np.asarray(X).dtype if not isinstance(given, np.dtype) else given  # a DataFrame, a list of rows
        return np.dtype(np.float32) if given.kind == "f" and given.itemsize == 4 else np.dtype(np.float64)
    return np.dtype(dtype)


def _namespace(array):
    """numpy, or cupy for a cupy array (whose data then stay on the device)."""
    if _backends.on_device(array):
        import cupy

        return cupy
    return np


def check_data(X, y, loss, dtype, xname: str, yname: str):
    """(X, y) as contiguous arrays of ``dtype`` (cupy stays cupy), or ValueError naming what is wrong: shapes,
    kinds, NaN or Inf, labels other than +-1 for a margin loss, values past the dtype's range. Every entry point
    that takes data (lgd.gd, lgd.sweep, lgd.distributed, lgd.hessian, lgd.dynamics.flow) checks it here."""
    xp = _namespace(X)
    X = xp.asarray(X)
    y = xp.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"{xname} must be a 2-D array (n, d), got shape {X.shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{xname} must have at least one row and one column, got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{yname} must be a 1-D array of length {X.shape[0]} (rows of {xname}), got shape {y.shape}")
    for name, array in ((xname, X), (yname, y)):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.complexfloating):
            raise ValueError(f"{name} must be real, got dtype {array.dtype}")
        if not bool(xp.all(xp.isfinite(array))):
            raise ValueError(f"{name} contains NaN or Inf")
    if loss.margin and not bool(xp.all((y == 1) | (y == -1))):
        bad = xp.unique(y[(y != 1) & (y != -1)])[:5]
        raise ValueError(f"{yname} must hold labels +1 or -1 for the {loss.spec} loss; found {bad.tolist()}")
    largest = float(np.finfo(dtype).max)
    for name, array in ((xname, X), (yname, y)):
        if array.dtype.kind == "f" and array.dtype.itemsize > np.dtype(dtype).itemsize and array.size \
                and float(xp.max(xp.abs(array))) > largest:
            raise ValueError(f"{name} holds {float(xp.max(xp.abs(array))):g}, which does not fit in "
                             f"{np.dtype(dtype).name} (largest {largest:g}); rescale it or use dtype float64")
    return xp.ascontiguousarray(X, dtype=dtype), xp.ascontiguousarray(y, dtype=dtype)


# Steps are counted in int64 (with room for a step past the last).
_MOST_STEPS = 2**62


def check_scale(model: TwoLayerNet, dtype) -> None:
    """A scaling s(m) that a run of ``dtype`` cannot hold (rounding to 0 or to inf) is refused before any work."""
    with np.errstate(over="ignore"):
        held = np.asarray(model.scale, dtype=dtype)
    if held == 0 or not np.isfinite(held):
        raise ValueError(f"the model's scaling {model.scale:g} rounds to {float(held):g} in {np.dtype(dtype).name}; "
                         f"use dtype float64")


def check_steps(steps) -> int:
    """``steps`` as an int, or ValueError: an integer from 1 to 2**62."""
    steps = _check_count(steps, "steps")
    if steps > _MOST_STEPS:
        raise ValueError(f"steps must be at most 2**62 (the kernels count steps in int64), got {steps}")
    return steps


def _check_stepsize_range(stepsizes: np.ndarray, dtype):
    """A stepsize a run of `dtype` cannot hold (it would round to inf, or to 0) is refused before any work."""
    largest = float(np.finfo(dtype).max)
    if np.any(stepsizes > largest):
        raise ValueError(f"stepsize {float(stepsizes.max()):g} does not fit in {np.dtype(dtype).name} (largest "
                         f"{largest:g}); use dtype float64")
    if np.any(stepsizes.astype(dtype) == 0):
        raise ValueError(f"stepsize {float(stepsizes.min()):g} rounds to 0 in {np.dtype(dtype).name}; use dtype "
                         f"float64")


def _stepsize_rules(stepsizes) -> list:
    """The rules of a sweep's ``stepsizes``: numbers (constant rules) and lgd.stepsize rules, 1-D, non-empty."""
    if isinstance(stepsizes, (_stepsize.Rule, Real, np.floating, np.integer)):
        stepsizes = [stepsizes]
    if isinstance(stepsizes, np.ndarray) and stepsizes.ndim == 0:
        stepsizes = [stepsizes[()]]
    unordered = isinstance(stepsizes, (set, frozenset, dict, str))
    if unordered or (isinstance(stepsizes, np.ndarray) and stepsizes.ndim != 1):
        raise ValueError("stepsizes must be a non-empty 1-D sequence of numbers or lgd.stepsize rules (in the order "
                         f"of the sweep's configurations), got {type(stepsizes).__name__}")
    stepsizes = list(stepsizes)
    if not stepsizes:
        raise ValueError("stepsizes must be a non-empty 1-D sequence of numbers or lgd.stepsize rules")
    return [_stepsize.as_rule(value, "stepsizes") for value in stepsizes]


def check_init_scale(init_scale, init, inits) -> float:
    """``init_scale`` as a float, or ValueError: a finite number >= 0, and with ``inits`` (which give the
    starting points) ``init`` and ``init_scale`` at their defaults, which they would be ignored for."""
    if isinstance(init_scale, (bool, np.bool_)) or not isinstance(init_scale, (Real, np.floating, np.integer)) \
            or not (math.isfinite(float(init_scale)) and init_scale >= 0):
        raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
    if inits is not None and not (isinstance(init, str) and init == "normal" and init_scale == 1.0):
        raise ValueError("inits gives the starting points: init and init_scale do not apply with it (leave them "
                         "at their defaults)")
    if init_scale != 1.0 and not (isinstance(init, str) and init == "normal"):
        given = repr(init) if isinstance(init, str) else "an array"
        raise ValueError(f"init_scale scales the 'normal' init only; init is {given} (scale the array yourself)")
    return float(init_scale)


# A result keeps its seeds as int64.
_LARGEST_SEED = 2**63 - 1


def _check_seeds(seeds) -> list:
    return distinct_integers(seeds, "seeds", 0, high=_LARGEST_SEED)


def distinct_integers(values, name: str, low: int, high: int | None = None) -> list:
    """`values` (one integer, or a sequence of them) as a list of distinct ints >= `low` (and <= `high`), or
    ValueError naming `name`: a sweep axis of seeds, widths, ..."""
    if isinstance(values, Integral):
        values = (values,)
    if isinstance(values, (str, bytes, set, frozenset)) or (isinstance(values, np.ndarray) and values.ndim != 1) \
            or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be an integer or a sequence of integers, got {values!r}")
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, Integral) or v < low
                         or (high is not None and v > high) for v in values):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a non-empty sequence of integers {bound}, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct, got {values!r}")
    return [int(v) for v in values]


@dataclass(frozen=True)
class _Starts:
    """The starting points of a sweep: W_0 (K, m, d) and a_0 (K, m) given by the user (None: drawn per seed)."""

    W: np.ndarray | None
    a: np.ndarray | None

    @property
    def count(self) -> int:
        for given in (self.W, self.a):
            if given is not None:
                return given.shape[0]
        return 1


def _starting_points(model: TwoLayerNet, d: int, inits, outer_inits) -> _Starts:
    """Check ``inits`` (K, *model.weight_shape(d)) and ``outer_inits`` (K, m): float64 arrays, or None."""
    W = a = None
    if inits is not None:
        W = real_array(inits, "inits")
        if W.ndim < 1 or W.shape[1:] != model.weight_shape(d) or W.shape[0] < 1:
            raise ValueError(f"inits must have shape (K, {', '.join(map(str, model.weight_shape(d)))}) with K >= 1, "
                             f"got {W.shape}")
        if not np.all(np.isfinite(W)):
            raise ValueError("inits contains NaN or Inf")
        W = W.reshape(W.shape[0], model.width, d)
    if outer_inits is not None:
        if isinstance(model, Linear):
            raise ValueError("outer_inits is for a TwoLayerNet: lgd.Linear has no outer layer (its a is 1)")
        a = real_array(outer_inits, "outer_inits")
        if a.ndim != 2 or a.shape[1] != model.width or a.shape[0] < 1:
            raise ValueError(f"outer_inits must have shape (K, {model.width}) with K >= 1, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("outer_inits contains NaN or Inf")
        if W is not None and a.shape[0] != W.shape[0]:
            raise ValueError(f"inits and outer_inits must hold as many starting points, got {W.shape[0]} and "
                             f"{a.shape[0]}")
    return _Starts(W, a)


def _directions(record, model: TwoLayerNet, d: int, dtype):
    """Record.project_onto checked against the model's shape and the run's dtype: (P, m, d) float64, or None."""
    if record.project_onto is None:
        return None
    directions = record.project_onto
    if directions.shape[1:] != (model.width, d) and directions.shape[1:] != model.weight_shape(d):
        shape = ", ".join(map(str, model.weight_shape(d)))
        raise ValueError(f"Record.project_onto must have shape (P, {shape}) for this model and data, got "
                         f"{directions.shape}")
    largest = float(np.finfo(dtype).max)
    if directions.size and float(np.max(np.abs(directions))) > largest:
        raise ValueError(f"Record.project_onto holds {float(np.max(np.abs(directions))):g}, which does not fit in "
                         f"{np.dtype(dtype).name} (largest {largest:g}); rescale it or use dtype float64")
    return directions.reshape(directions.shape[0], model.width, d)


def _zero_predictor_risk(y, loss) -> float:
    """The risk of the predictor f = 0 on the training labels (the scale of lgd.Divergence's risk bound)."""
    y = np.asarray(y.get() if _backends.on_device(y) else y, dtype=np.float64)
    u = np.zeros_like(y) if loss.margin else -y
    return float(np.mean(loss.value(u)))


def _too_large(exc, configs: int, steps: int, record, every: int, sharpness_every, sharpness_k: int, m: int, d: int,
               neurons: bool) -> str:
    """What to say when a run's records do not fit in memory: the record that takes the most (the traces, the
    trajectory or the sharpness), how many, and the option that records it less often."""
    count = record_count(steps, every)
    sizes = [(count * (len(_backends.TRACE_FIELDS) + (m if neurons else 0)), count, "recorded steps",
              "record every k-th step: record=k (lgd run --record-every K)")]
    if record.weights:
        count = record_count(steps, record.weights)
        sizes.append((count * m * d, count, "recorded weights", "record the weights every k-th step: "
                      "Record(weights=k), or their projections (Record(project_onto=V))"))
    if sharpness_every is not None:
        count = record_count(steps, sharpness_every)
        sizes.append((count * sharpness_k, count, "sharpness measurements", "measure it less often: "
                      "Record(sharpness_every=s)"))
    _, count, what, advice = max(sizes, key=lambda size: size[0])
    return (f"the records of {configs} configuration(s) do not fit in memory ({exc}): the largest are their "
            f"{count:,} {what}; {advice}")


def _available_memory() -> int | None:
    """Bytes of memory the system says it can give without swapping (Linux's MemAvailable), else its physical
    memory; None where neither is known."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _trained_parameters(model: TwoLayerNet, d: int) -> int:
    """How many parameters GD trains: W's m d, and a's m when the outer layer is trained."""
    return model.width * d + (model.width if model.train_outer else 0)


def _initial_tangents(model: TwoLayerNet, d: int, k: int, seeds: list, configs: list):
    """k orthonormal tangent vectors per configuration, (C, k, m, d) and (C, k, m) float64: the Q of a QR of
    a standard normal (N, k) matrix from default_rng([2, seed]), N the number of trained parameters
    (W, then a when trained), so that every backend and stepsize starts from the same vectors."""
    m, size = model.width, _trained_parameters(model, d)
    if k > size:
        raise ValueError(f"Record.lyapunov asks for {k} exponents but the model has {size} trained parameters")
    tangents, tangents_a = np.zeros((len(configs), k, m, d)), np.zeros((len(configs), k, m))
    for c, (_, s, _) in enumerate(configs):
        q, _ = np.linalg.qr(np.random.default_rng([2, seeds[s]]).standard_normal((size, k)))
        tangents[c] = q[:m * d].T.reshape(k, m, d)
        if model.train_outer:
            tangents_a[c] = q[m * d:].T
    return tangents, tangents_a


def _initial_weights(model: TwoLayerNet, d: int, init, init_scale: float, seeds: list, starts: _Starts, dtype):
    """W_0 (S, K, m, d) and a_0 (S, K, m) for each seed and starting point, drawn (or given) in float64 so
    that both precisions start alike: per seed, rng = default_rng(seed), W_0 = init_scale *
    rng.standard_normal((m, d)), then a_0 from the same rng when the outer weights are random."""
    m = model.width
    W0 = np.empty((len(seeds), starts.count, m, d))
    a0 = np.empty((len(seeds), starts.count, m))
    given = None
    if isinstance(init, str):
        if init not in ("normal", "zeros"):
            raise ValueError(f"unknown init {init!r}; valid: 'normal', 'zeros' or an array of shape "
                             f"{model.weight_shape(d)}")
    else:
        given = real_array(init, "init array")
        if given.shape != model.weight_shape(d):
            raise ValueError(f"init array must have shape {model.weight_shape(d)}, got {given.shape}")
        if not np.all(np.isfinite(given)):
            raise ValueError("init array contains NaN or Inf")
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        if starts.W is not None:
            W0[i] = starts.W
        elif given is not None:
            W0[i] = given.reshape(m, d)
        elif init == "normal":
            W0[i] = init_scale * rng.standard_normal((m, d))
        else:
            W0[i] = 0.0
        a0[i] = model.outer_weights(rng) if starts.a is None else starts.a
    largest = float(np.finfo(dtype).max)
    for name, array in (("the initial weights (init, inits or init_scale)", W0),
                        ("the initial outer weights (outer or outer_inits)", a0)):
        if array.size and float(np.max(np.abs(array))) > largest:
            raise ValueError(f"{name} reach {float(np.max(np.abs(array))):g}, which does not fit in "
                             f"{np.dtype(dtype).name} (largest {largest:g}); rescale them or use dtype float64")
    return W0.astype(dtype), a0.astype(dtype)
