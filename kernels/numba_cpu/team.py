"""The team runner: whole chunks of GD steps of a batch of configurations, by a team of threads.

What lives here: :func:`run_team`, the one entry point called from Python, the named tuples it takes
(:class:`Data`, :class:`Batch`, :class:`Spec`, :class:`Schedule`, :class:`Team`, :class:`Buffers`;
the traces come as an :class:`lgd.backends.Trace`) and the barrier its threads meet at. What a step
computes lives in step; checking arguments and building the buffers is the Python glue's
(:mod:`lgd.backends._numba`).

The `team` threads (Python threads calling this nogil kernel with member = 0 .. team-1 and the same shared
buffers) each pass over their block of the samples into their own partial gradient and meet at a barrier.
Then either each member sums the blocks, checks divergence and updates a copy of the weights of its own,
member 0 alone recording (a replicated close: lgd.backends._numba.replicated_close says which runs), and
goes straight on to the next step; or member 0 alone does all that on the one copy, and a second barrier
releases the next step. The threads stay in compiled code for the whole chunk, waiting on a spinning
barrier: waking pooled threads at every step costs more than a small step's work. Or, where
lgd.backends._numba.split_team says so, a team splits the net's neurons rather than the samples
(run_split_steps): each member holds its columns of the net, and the members exchange their parts of the
outputs and of the norms at two barriers a step. A team of one is the serial driver; its barriers cost an
atomic add each. Member 0 takes the configurations one at a time from a queue that the teams of one call
share, so in a sweep a thread that runs faster takes more of them. Which thread runs a configuration does
not change its results.
"""

from typing import NamedTuple

import numpy as np
from numba import types

from lgd.backends import CACHE_LINE

from .compiler import kernel, subroutine
from .formulas import KNOWN, unknown_code
from .intrinsics import atomic_add, atomic_load, atomic_store, prefetch_for_write, sched_yield, spin_pause
from .step import (column_block, copy_into, partials_unscaled, record_slot, reduce_blocks, sample_block,
                   split_backward, split_forward, split_held_out, split_norms, split_total, step_end, store_weights,
                   sum_blocks, transpose_into, update, z_columns)
from .tangent import hessian_part, member_block, propagate
from .tiles import blas_backward, blas_forward, weights_as_rows


class Data(NamedTuple):
    """The training and held-out data, C-contiguous in the run's dtype (X_test (0, d) when there is none), and
    the directions (P, m, d) the trajectories are projected onto ((0, m, d) when they are not), and the
    training points the sharpness is measured on (the first sharpness_points rows of X and y)."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    directions: np.ndarray
    X_curvature: np.ndarray
    y_curvature: np.ndarray


class Batch(NamedTuple):
    """The configurations' iterates: W (C, m, d) and A (C, m) in the run's dtype, diverged (C,) int64 (-1
    while running, else the step where the run stopped); the k tangent vectors of each (C, k, m, d) and
    (C, k, m) and their log growth so far (C, k), float64 (k = 0 without Lyapunov exponents); each one's
    stepsize rule, codes (C,) int64 and parameters (C, 3) float64 (lgd.stepsize); its latest sharpness (C,)
    and that measurement's top eigenvector, the next one's warm start, (C, m, d) and (C, m), float64."""

    W: np.ndarray
    A: np.ndarray
    diverged: np.ndarray
    tangents: np.ndarray
    tangents_a: np.ndarray
    log_growth: np.ndarray
    rules: np.ndarray
    rule_params: np.ndarray
    sharpness_last: np.ndarray
    sharpness_start: np.ndarray
    sharpness_start_a: np.ndarray


class Spec(NamedTuple):
    """What is computed: codes and parameters of the catalogs' activation and loss, the margin rule
    (u = y f, else r = f - y), the output scale s, whether a is trained, the linear model's fast path,
    whether the run is float32 (rounded as the oracle rounds), and the bounds on the risk and on the weight
    norm above which a run stops as diverged (inf: none), whether a stepsize rule needs the log-risk at
    every step, and whether the outputs take the product form (formulas.product_form, decided by the host from
    every configuration's outer weights)."""

    activation: int
    activation_param: float
    loss: int
    loss_param: float
    margin_loss: bool
    scale: float
    train_outer: bool
    linear: bool
    f32: bool
    risk_bound: float
    weight_bound: float
    log_risk_every_step: bool
    product: bool = False


class Schedule(NamedTuple):
    """Evaluations t in [t_start, t_stop) of a run of `steps` steps recording every `record_every`, and the
    trajectories and the sharpness (when the trace has room for them) every `weights_every` and
    `sharpness_every`."""

    t_start: int
    t_stop: int
    steps: int
    record_every: int
    weights_every: int
    sharpness_every: int


class Team(NamedTuple):
    """One thread's place in a team: its member index, the team's size, the barrier's counters (sync, 2
    int64), the step's verdict and configuration index (go, 2 int64), the configurations taken so far
    from the shared queue (queue, 1 int64) and the configurations to run (configs, intp); the counts of a pool's
    threads (bell, int64) and those that member 0 adds one to as it starts (rings, intp): the threads that run the
    other members spin on them (lgd.backends._numba.MemberPool), so they take the GIL once this member has let
    it go."""

    member: int
    size: int
    sync: np.ndarray
    go: np.ndarray
    queue: np.ndarray
    configs: np.ndarray
    bell: np.ndarray
    rings: np.ndarray


class Buffers(NamedTuple):
    """Scratch of one call, shared by the team (built by :func:`lgd.backends._numba.buffers`).

    Copies of the weights, one per member with a replicated close, else one (each copy [r, 0] of an array (copies,
    spare, ...) whose spare entries keep the copies a page apart): in the run's dtype Wt (d, m) and a (m,),
    the weights being stepped, and a_step (m,), the outer weights the step reads; float64 grad (d, m), grad_a (m,),
    neuron (m,) and total (2, 3), the sums of the members' partials below. Sets of the members' partials, two that a
    replicated close alternates between steps, else one (a leading axis of sets): grads (team, d, m) and grads_a
    (team, m) in the run's dtype, neurons_part (team, m) and stats (2 team, 3) float64 (each member's training and
    held-out blocks), us (n,) float64 the samples' loss arguments at record steps. Per member (a leading axis of
    `team`): zs (WIDE_ROWS, m) tile rows (from tiles.BLOCKED_MIN_D, a waiting group's), ps and qs (m,) rows of phi
    and phi', pending_q (waiting, m) and pending_rows (waiting,) int64 the samples waiting for the gradient
    (waiting: tiles.waiting_samples), group (per member: phi of the waiting samples (waiting, m) in the run's dtype
    and their losses' outputs (4, waiting) float64; then their rows of X scaled by their gradient factors (team,
    waiting, d) in the run's dtype, None where d > m and in BLAS mode: step.fused_block; the rows of zs, pending_q
    and group[0] at least these many, and without gaps between them up to lgd.backends._numba.SPAN_ROW_BYTES a row);
    tangent, the scratch of the tangent map (HV (k, m, d), HB (k, m), per member Vt, HVt (team, k, d, m) and HB
    (team, k, m), and eta (1,): the step's stepsize, float64); kept, what the step's pass keeps of each training
    sample for the tangent map (step.sample_block: P, Q (n, m) in the run's dtype, AQ, AR (n, m) and coef (n, 2)
    float64, with 0 rows where none are kept, and per member a row of phi'' (team, m) in the run's dtype), None
    without tangents; curvature, that of the sharpness's Lanczos (sharpness.top_eigenvalues: Q (J + 1, m, d), QA (J
    + 1, m), one-row HV, HB, Vt, HVt, alpha, beta (J + 1,), ritz (k,), work (2, J + 1), and the curvature of the
    samples it is measured on: P, Q (rows, m) in the run's dtype, AQ, AR (rows, m) and coef (rows, 2) float64);
    rows, per member the scratch of a block of samples of the Hessian-vector products (tangent.hessian_part's
    `block`, each array with a leading axis of members). BLAS mode: Z (n, m), Z_test and grads_blas (team, d, m)
    (unused by a float64 team of one, whose BLAS writes grad itself: tiles.blas_writes_grad), or (team, m, d), the
    parts transposed, where gemm[1] is not 0 (tiles.blas_backward); Z held transposed, (m, n), where gemm[2] is not
    0 too, and then step.column_block makes the pass over the training block with columns: per member P and Q (m,
    step.COLUMN_GROUP) and F (8, COLUMN_GROUP) in the run's dtype and the losses' outputs (4, COLUMN_GROUP) float64
    (each (team, 0, 0) where gemm[2] is 0); Wt and grad are W (m, d) and its gradient, the weights as rows, where
    gemm[3] is not 0 too (tiles.weights_as_rows; grads_blas unused by a float64 team of one again); and gemm (4,)
    int64, the address of the ILP64 ?gemm_ the products call (0: scipy's, tiles.blas_forward) and those three
    choices. The fused loops' zs is None with BLAS, and Z, Z_test, grads_blas, gemm and columns None without: a
    branch on None is pruned at compile time, so each product mode is a kernel of its own without the other's
    code. split is None but in a team split by neurons (run_split_steps), whose buffers are per member at its
    width w = m / team (lgd.backends._numba._split_buffers says which hold what there): split = (the members'
    parts of the outputs, of the norms, the whole net's neuron margins, the parts of the held-out outputs, a
    tile's rows of their phi and phi').
    """

    Wt: np.ndarray
    a: np.ndarray
    a_step: np.ndarray
    zs: object
    ps: np.ndarray
    qs: np.ndarray
    pending_q: np.ndarray
    pending_rows: np.ndarray
    group: tuple
    grads: np.ndarray
    grads_a: np.ndarray
    neurons_part: np.ndarray
    stats: np.ndarray
    grad: np.ndarray
    grad_a: np.ndarray
    neuron: np.ndarray
    total: np.ndarray
    us: np.ndarray
    tangent: tuple
    kept: tuple
    curvature: tuple
    rows: tuple
    Z: object
    Z_test: object
    grads_blas: object
    gemm: object
    columns: object
    split: object


# Spins of a waiting thread before it starts yielding its core: 0.1-1 ms (the length of a pause
# differs between CPUs), longer than the imbalance of a small step, so that on an idle machine
# nobody sleeps; on a busy one a waiter gives way.
SPINS = 1 << 14


@subroutine(types.void)
def barrier(sync, team):
    """Wait until all `team` threads arrive. sync[0] counts arrivals, sync[1] is the generation."""
    generation = atomic_load(sync, 1)
    if atomic_add(sync, 0, 1) == team - 1:
        atomic_store(sync, 0, 0)
        atomic_store(sync, 1, generation + 1)
        return
    spins = 0
    while atomic_load(sync, 1) == generation:
        if spins < SPINS:
            spin_pause()
            spins += 1
        else:
            sched_yield()


@kernel
def spin_while(counts, index, value, spins):
    """Spin (pause after pause, the GIL released) while counts[index] == value, for at most `spins` pauses;
    returns whether it changed. The threads of lgd.backends._numba's member pools wait so for their next task,
    and a caller for its task's end, before they block."""
    for _ in range(spins):
        if atomic_load(counts, index) != value:
            return True
        spin_pause()
    return atomic_load(counts, index) != value


# The most bytes of partial gradient (d x m in the run's dtype) a member claims before its pass (claim): what
# an L1 cache holds beside the pass's own rows. S's 8 KB gained 6% a step on the Intel AVX-512 host of
# docs/performance.md; M's 128 KB, claimed whole, neither gained nor lost: lines fetched that far ahead
# leave L1 before the pass writes them.
CLAIM_BYTES = 32 << 10


@subroutine(types.void)
def claim(part):
    """Ask for every cache line of `part` (C-contiguous) in a writable state, all at once.

    A member's partials were read at the other members' last close, so their lines sit shared in the
    other cores' caches; the pass's first stores to them (zeroing the gradient) would then wait for each
    line's ownership in turn, where prefetches for writing ask for many at once."""
    for offset in range(0, part.size * part.itemsize, CACHE_LINE):
        prefetch_for_write(part, offset)


@subroutine(types.void, counted=False)
def tangent_map(team, c, X, y, spec, batch, Wt, a, a_step, grad, grad_a, i0, i1, tangent_scratch, kept, rows):
    """The tangent map of configuration c (Lyapunov exponents) at W_t, the step's update held back for it
    (step_end left eta in tangent_scratch): each member adds its samples' part (i0 .. i1 - 1) of the
    Hessian-vector products, from the curvature rows its pass over those samples kept (`kept`), member 0
    sums the parts, moves the tangent vectors and steps. Nothing when tangent_scratch is None (pruned at
    compile time: a run without tangents has none of this code). Compiled without reference counts
    (counted=False), with everything it calls: numba would count references to each array passed at
    every call of the helpers below, a few hundred atomics a step on cache lines the team's threads share,
    which cost about as much as the products' arithmetic on S; nothing here allocates or keeps an array."""
    if tangent_scratch is not None:
        member, size, sync = team[0], team[1], team[2]
        HV, HB, Vts, HVts, HBs, eta = tangent_scratch
        hessian_part(X, y, Wt, a_step, spec, kept, batch.tangents[c], batch.tangents_a[c], i0, i1, Vts[member],
                     HVts[member], HBs[member], member_block(rows, member))
        barrier(sync, size)
        if member == 0:
            propagate(c, spec, eta[0], batch.tangents, batch.tangents_a, batch.log_growth, HV, HB, HVts, HBs, size)
            update(Wt, a, grad, grad_a, eta[0], spec.train_outer, spec.f32)
            for j in range(a.size):
                a_step[j] = a[j]
        barrier(sync, size)


@subroutine(types.void)
def load_weights(batch, c, b, r):
    """Copy r of the weights being stepped (Wt, a, a_step) = configuration c's: Wt = W^T, or W itself where the
    BLAS mode holds the weights as rows (weights_as_rows)."""
    if weights_as_rows(b.gemm):
        copy_into(batch.W[c], b.Wt[r, 0])
    else:
        transpose_into(batch.W[c], b.Wt[r, 0])
    for j in range(batch.A.shape[1]):
        b.a[r, 0, j] = batch.A[c, j]
        b.a_step[r, 0, j] = batch.A[c, j]


@subroutine(types.void, counted=False)
def run_steps(team, c, data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons):
    """Evaluations [t_start, t_stop) of `schedule` of configuration c by this member of the team (see
    run_team), until the run stops. Compiled without reference counts (counted=False), with everything
    it calls: numba would count references at every step to each array passed to sample_block, step_end
    and the rest, and to each member's row of the buffers taken here (b.ps[member], ...), dozens of
    atomics a step on cache lines the team's threads share, which cost a few microseconds of a small
    step (S); nothing here allocates or keeps an array, and run_team holds every array for the call."""
    member, size, sync, go = team[0], team[1], team[2], team[3]
    X, y, X_test, y_test, directions, X_curvature, y_curvature = data
    m = batch.W.shape[1]
    n = X.shape[0]
    n_test = X_test.shape[0]
    replicated = b.Wt.shape[0] > 1
    r = member if replicated else 0  # the copy of the weights this member steps and reads
    closes = replicated or member == 0
    Wt, a, a_step, grad, grad_a, neuron, total = (b.Wt[r, 0], b.a[r, 0], b.a_step[r, 0], b.grad[r, 0], b.grad_a[r, 0],
                                                 b.neuron[r, 0], b.total[r, 0])
    # The fused pass writes its partials itself (BLAS writes grads_blas); see CLAIM_BYTES.
    claims = b.zs is not None and size > 1 and Wt.size * Wt.itemsize <= CLAIM_BYTES
    unscaled = partials_unscaled(b.zs, b.kept, spec)
    for t in range(schedule.t_start, schedule.t_stop):
        p = t & 1 if replicated else 0  # the step's partials; a replicated team alternates two sets
        grads, grads_a, neurons_part, stats, us = b.grads[p], b.grads_a[p], b.neurons_part[p], b.stats[p], b.us[p]
        if claims:  # the entries the pass writes, not the rows' padding: that can share a line with the next row
            claim(grads[member])
            claim(grads_a[member][:m])
            claim(neurons_part[member][:m])
            claim(stats[member][:3])
        record = record_slot(t, schedule.steps, schedule.record_every) >= 0
        test = record and n_test > 0
        blas_forward(X, i0, i1, Wt, b.Z, b.gemm, True)
        if test:
            blas_forward(X_test, k0, k1, Wt, b.Z_test, b.gemm, False)
        # The training block, then at record steps the test block: one call site, so one compiled
        # sample_block (a literal True / False would type, and compile, twice).
        for part in range(2 if test else 1):
            train = part == 0
            if train and z_columns(b.gemm):
                column_block(b.Z, y, a_step, spec, inv_n, record, neurons, i0, i1, b.columns, member,
                             grads_a[member], neurons_part[member], stats[member], us)
                continue
            sample_block(X if train else X_test, b.Z if train else b.Z_test, y if train else y_test, Wt,
                         a_step, spec, inv_n, record, neurons, i0 if train else k0, i1 if train else k1, b.zs,
                         member, b.ps[member], b.qs[member], b.pending_q[member], b.pending_rows[member],
                         grads[member], grads_a[member], neurons_part[member],
                         stats[member if train else size + member], train, us, b.kept,
                         b.group[0][member], b.group[1][member], b.group[2])
        blas_backward(X, i0, i1, b.Z, b.grads_blas, member, size, grad, b.gemm)
        barrier(sync, size)
        going = True
        if closes:
            reduce_blocks(size, test, grads, grads_a, neurons_part, stats, grad, grad_a, neuron, total, b.grads_blas,
                          b.gemm, a_step, unscaled)
            going = step_end(c, t, schedule, spec, n, total[0], grad, grad_a, Wt, a, a_step, trace, neuron, n_test,
                             total[1], batch, us, directions, b.tangent, X_curvature, y_curvature, b.curvature,
                             b.rows, member == 0, None)
            if b.tangent is None:  # else a_step is still the step's: the tangent map below reads it
                for j in range(m):
                    a_step[j] = a[j]
        if not replicated:  # the others wait for member 0's update of the one copy, and its verdict
            if member == 0:
                go[0] = going
            barrier(sync, size)
            going = go[0] != 0
        if not going:
            break
        if t < schedule.steps:
            tangent_map(team, c, X, y, spec, batch, Wt, a, a_step, grad, grad_a, i0, i1, b.tangent, b.kept, b.rows)


@subroutine(types.void)
def load_columns(batch, c, b, r):
    """Member r's copy of its columns of the net (Wt (d, w), a and a_step (w,): neurons r w .. (r + 1) w - 1)
    = configuration c's, in a team split by neurons."""
    Wt = b.Wt[r, 0]
    w = Wt.shape[1]
    transpose_into(batch.W[c][r * w:(r + 1) * w], Wt)
    for j in range(w):
        b.a[r, 0, j] = batch.A[c, r * w + j]
        b.a_step[r, 0, j] = batch.A[c, r * w + j]


@subroutine(types.void)
def store_columns(batch, c, b, r):
    """Configuration c's weights = member r's columns of the net, in a team split by neurons."""
    Wt = b.Wt[r, 0]
    w = Wt.shape[1]
    transpose_into(Wt, batch.W[c][r * w:(r + 1) * w])
    for j in range(w):
        batch.A[c, r * w + j] = b.a[r, 0, j]


@subroutine(types.void, counted=False)
def run_split_steps(team, c, data, batch, trace, spec, schedule, b, inv_n, neurons):
    """run_steps for a team split by neurons rather than samples (b.split not None: lgd.backends._numba's
    split_team). Member r holds the columns r w .. (r + 1) w - 1 of the net (its own copy: no other member
    reads them) and, at each step, computes z, phi and phi' of every sample for those neurons and its part of
    each output (split_forward); after a barrier every member adds the parts in the same order, forms the
    losses and its columns of the gradient (split_backward) and its part of the norms; after a second barrier
    every member adds those, takes the same verdict and updates its columns, member 0 alone recording. A
    member exchanges n outputs and a few sums a step, where a team split by samples sums the d x m partial
    gradients of the others (M's 128 KB from the other core: 12 us of its step on an Intel AVX-512 host,
    docs/performance.md). At record steps each member also computes its part of the held-out samples'
    outputs, which member 0 adds up after the first barrier. Runs with trajectories, tangent vectors or the
    sharpness are not split so (their measurements need the whole net on one member)."""
    member, size, sync = team[0], team[1], team[2]
    X, y, X_test, y_test, directions, X_curvature, y_curvature = data
    n, n_test = X.shape[0], X_test.shape[0]
    fparts, sums, neuron_all, fparts_test, rows_test = b.split
    Wt, a, a_step, grad, grad_a, total = (b.Wt[member, 0], b.a[member, 0], b.a_step[member, 0], b.grad[member, 0],
                                          b.grad_a[member, 0], b.total[member, 0])
    w = Wt.shape[1]
    zt, P, Q = b.zs[member], b.group[0][member], b.pending_q[member]
    outs, rows = b.group[1][member], b.pending_rows[member]
    parts, part_a, neuron = b.grads[0][member:member + 1], b.grads_a[0, member], b.neurons_part[0, member]
    fpart, us = fparts[member], b.us[0]
    for t in range(schedule.t_start, schedule.t_stop):
        record = record_slot(t, schedule.steps, schedule.record_every) >= 0
        split_forward(X, Wt, a_step, spec, zt, P, Q, fpart, True, record and neurons)
        test = record and n_test > 0
        if test:
            split_forward(X_test, Wt, a_step, spec, zt, rows_test[0][member], rows_test[1][member],
                          fparts_test[member], False, False)
        barrier(sync, size)
        if test and member == 0:  # the one that records
            split_held_out(y_test, spec, fparts_test, outs, total[1])
        split_backward(X, y, a_step, spec, inv_n, record, neurons, fparts, P, Q, outs, b.group[2], member, rows,
                       parts[0], part_a, neuron, total[0], us)
        sum_blocks(parts, 1, grad, a_step, True)
        for j in range(w):
            grad_a[j] = part_a[j]
        split_norms(spec, n, total[0], grad, grad_a, Wt, a_step, sums, member)
        if record and neurons:
            for j in range(w):
                neuron_all[member * w + j] = neuron[j]
        barrier(sync, size)
        going = step_end(c, t, schedule, spec, n, total[0], grad, grad_a, Wt, a, a_step, trace, neuron_all, n_test,
                         total[1], batch, us, directions, None, X_curvature, y_curvature, None, b.rows, member == 0,
                         split_total(spec, n, total[0], sums))
        for j in range(w):
            a_step[j] = a[j]
        if not going:
            break


def _config_by_samples(team, c, data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons, split):
    member = team[0]
    if b.Wt.shape[0] > 1:  # a replicated close: each its own copy, which nobody else reads
        load_weights(batch, c, b, member)
    run_steps(team, c, data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons)
    if member == 0:
        store_weights(batch.W, batch.A, c, b.Wt[0, 0], b.a[0, 0], weights_as_rows(b.gemm))


def _config_by_neurons(team, c, data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons, split):
    load_columns(batch, c, b, team[0])
    run_split_steps(team, c, data, batch, trace, spec, schedule, b, inv_n, neurons)
    store_columns(batch, c, b, team[0])


@subroutine(types.void, pick=lambda *args: (
    _config_by_samples if isinstance(args[-1], types.NoneType) else _config_by_neurons))
def run_config(team, c, data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons, split):
    """Configuration c's evaluations by this member: its copy of the weights loaded, run_steps (a team split by
    samples) or run_split_steps (by neurons: split, the buffers' b.split, is not None), the weights stored.
    The kernel holds one of the two, picked by split's type."""


@kernel
def run_team(team, data, batch, trace, spec, schedule, buffers):
    """Evaluations [t_start, t_stop) of `schedule` for the configurations of `team.configs`, one after the
    other, by this member of a team (see the module's docstring).

    At each evaluation t of a configuration it computes the risk, the gradient and, at record steps
    (:func:`lgd.backends.record_slot`), the recorded metrics of W_t into `trace` (and at the trajectory's
    steps W_t or its projections); then, when t < steps, W_{t+1} = W_t - eta grad. A configuration whose
    risk or squared gradient norm is not finite, or whose risk or weight norm passes the spec's bounds,
    stops: batch.diverged[c] = t, and its weights stay W_t. Returns formulas.KNOWN, or the code of
    formulas.unknown_code when the spec names an activation or loss the formulas do not have (then
    nothing runs).

    With BLAS buffers, each member forms its block's products through BLAS (gemm calls: the caller limits
    BLAS to one thread when the team is the parallelism): Z_b = X_b W^T into its rows of Z, which the
    pass over the samples overwrites with G_b, then X_b^T G_b into grads_blas[member]. Otherwise the
    fused loops of sample_block do both products without leaving L1.
    """
    member, size, sync, go, queue, configs, bell, rings = team
    for r in rings:
        atomic_add(bell, r, 1)
    verdict = unknown_code(spec.activation, spec.loss)
    if verdict != KNOWN or schedule.t_start >= schedule.t_stop:
        return verdict
    X, y, X_test, y_test, directions, X_curvature, y_curvature = data
    b = buffers
    n = X.shape[0]
    n_test = X_test.shape[0]
    inv_n = 1.0 / n
    neurons = trace.neuron_margins.shape[1] > 0
    replicated = b.Wt.shape[0] > 1
    i0, i1 = (member * n) // size, ((member + 1) * n) // size
    k0, k1 = (member * n_test) // size, ((member + 1) * n_test) // size
    while True:
        if member == 0:  # the team's next configuration, from the queue the teams of a call share
            go[1] = atomic_add(queue, 0, 1)
            if go[1] < len(configs) and not replicated:
                load_weights(batch, configs[go[1]], b, 0)
        barrier(sync, size)
        if go[1] >= len(configs):
            return verdict
        run_config(team, configs[go[1]], data, batch, trace, spec, schedule, b, i0, i1, k0, k1, inv_n, neurons,
                   b.split)
