"""The cupy backend: whole GD runs on an NVIDIA GPU, one launch of ``lgd_run`` (kernels/cuda/lgd.cu) per chunk, or
for large problems cuBLAS products and four kernels per step replayed from CUDA graphs (kernels/cuda/products.cuh,
lgd.kernels.cuda_products).

Data and the batch are copied to the device once, in :meth:`Runner.start` (cupy inputs are used where they
are); the traces stay there until :meth:`Runner.finish` (or :meth:`Runner.sync`, which copies them for a
checkpoint). After each chunk the host reads back the divergence
flags and the fault flag, and the weights (the protocol of :mod:`lgd.backends`: the driver may pause
between chunks and measure W_t); before each chunk it copies to the device each configuration's latest
sharpness, which the driver measures at those pauses (``State.sharpness_last``), for the rule c / lambda_max.
:class:`Runner` is written against an engine (``lgd.kernels.cuda_run``): the same class runs the host build
of the kernel in CI (``lgd.backends._cuda_host``).

:func:`available` says exactly why CUDA cannot run: cupy missing, no NVIDIA driver, a driver of an older
major CUDA version than cupy's runtime, or no device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util

import numpy as np

from . import Problem, State, Trace, record_steps


def _driver_library() -> bool:
    """True when the NVIDIA driver's libcuda can be loaded."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _version(code: int) -> str:
    """A CUDA version code (13000) as '13.0'."""
    return f"{code // 1000}.{code % 1000 // 10}"


def available() -> tuple[bool, str]:
    """(usable, reason): cupy installed, an NVIDIA driver of at least the major CUDA version of cupy's runtime,
    a device."""
    if importlib.util.find_spec("cupy") is None:
        return False, "cupy is not installed"
    try:
        import cupy
    except Exception as exc:  # a broken CUDA install surfaces here
        return False, f"cupy fails to import: {exc}"
    runtime = cupy.cuda.runtime
    if not _driver_library():
        return False, "no NVIDIA driver (libcuda.so.1 cannot be loaded): this machine cannot run CUDA"
    try:
        driver, built_for = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except runtime.CUDARuntimeError as exc:
        return False, f"the NVIDIA driver does not answer ({exc})"
    if driver == 0:
        return False, "no NVIDIA driver (libcuda loads but reports no driver version): this machine cannot run CUDA"
    # CUDA's minor version compatibility: a runtime of major version N runs on any driver of major version N
    # (cupy's 13.2 runtime on a 13.0 driver), so only an older major version is too old.
    if driver // 1000 < built_for // 1000:
        return False, (f"the NVIDIA driver supports CUDA {_version(driver)} but this cupy needs CUDA "
                       f"{built_for // 1000}.x: update the driver, or install the cupy package for "
                       f"CUDA {driver // 1000} (cupy-cuda{driver // 1000}x)")
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as exc:
        return False, f"no usable CUDA device ({exc})"
    if count < 1:
        return False, "no CUDA device found (the NVIDIA driver is installed)"
    props = runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return True, (f"{name} (compute capability {props['major']}.{props['minor']}), CUDA runtime "
                  f"{_version(built_for)}, driver {_version(driver)}")


class Runner:
    """Runs configurations of one problem through the fused lgd_run kernel or the products path (chosen per
    batch in :meth:`start`, recorded in ``path``); see :mod:`lgd.backends` for the protocol."""

    name = "cupy"
    # The path a batch runs on: one of lgd.kernels.cuda_products.PATHS, None for LGD_CUDA_PATH (else 'auto').
    requested_path = None

    def __init__(self, problem: Problem, steps: int, record_every: int, shape=None):
        from ..kernels import cuda_run

        cuda_run.check_codes(problem.activation, problem.loss)  # before anything is built or copied
        self.glue, self.problem = cuda_run, problem
        self.steps, self.record_every = steps, record_every
        self.engine = self._engine()
        xp = self.engine.xp
        dtype = problem.dtype

        def device(array):  # one copy per run, where the kernel runs
            return None if array is None else xp.array(array, dtype=dtype, order="C")

        if shape is not None:  # refuse here, before any copy, a width whose one sample fits neither path's block
            from ..kernels import cuda_products

            _, m, d = shape
            n, itemsize = problem.X.shape[0], np.dtype(dtype).itemsize
            try:
                path = cuda_products.choose(self.requested_path, n, d, m, itemsize, self.engine.threads,
                                            self.engine.shared_budget, trajectories=problem.weights_every > 0,
                                            tangents=problem.lyapunov > 0)
                if path == "fused":
                    cuda_run.layout(n, d, m, itemsize, self.engine.threads, self.engine.shared_budget)
            except ValueError as exc:
                raise ValueError(f"{exc}; the numba backend (compute='numba') has no such limit") from None
        self.X, self.y = device(problem.X), device(problem.y)
        self.X_test, self.y_test = device(problem.X_test), device(problem.y_test)
        self.directions = device(problem.directions)
        self.state, self.trace, self.run, self.path = None, None, None, None

    def _engine(self):
        from ..kernels import cupy_gpu

        return cupy_gpu.GpuEngine()

    def start(self, state: State, trace: Trace, t_start: int = 0):
        """Copy the batch to the device, where it stays until :meth:`finish`; a resumed run (t_start > 0) also
        its records of the steps before t_start. The batch runs on the fused kernel or on the products path
        (:func:`lgd.kernels.cuda_products.choose`)."""
        from ..kernels import cuda_products

        xp, dtype, p = self.engine.xp, self.problem.dtype, self.problem
        self.glue.check_rules(state.rules)
        self.state, self.trace = state, trace
        shapes = {name: getattr(trace, name).shape for name in (*self.glue.TRAJECTORY_FIELDS,
                                                                self.glue.LYAPUNOV_FIELD)}
        tangents = tuple(xp.array(array, dtype=np.float64, order="C") for array in state.tangent_arrays())
        C, m, d = state.W.shape
        self.path = cuda_products.choose(
            self.requested_path, p.X.shape[0], d, m, np.dtype(dtype).itemsize, self.engine.threads,
            self.engine.shared_budget, n_test=0 if p.X_test is None else p.X_test.shape[0], configs=C,
            memory_budget=self.engine.memory_budget,
            trajectories=any(shapes[name][1] for name in self.glue.TRAJECTORY_FIELDS),
            tangents=bool(tangents and tangents[0].shape[1]))
        arrays = (self.engine, self.X, self.y, self.X_test, self.y_test,
                  xp.array(state.W, dtype=dtype, order="C"), xp.array(state.a, dtype=dtype, order="C"),
                  xp.array(state.rules, dtype=np.int64), xp.array(state.rule_params, dtype=np.float64, order="C"),
                  xp.array(state.diverged, dtype=np.int64), trace.risk.shape[1], trace.neuron_margins.shape[1])
        if self.path == "products":
            self.run, self._advance = cuda_products.ProductRun(*arrays), cuda_products.advance
        else:
            self.run = self.glue.ChunkRun(*arrays, shapes=shapes, directions=self.directions, tangents=tangents)
            self._advance = self.glue.advance
        if t_start > 0:
            self._trace_to_device(t_start)

    def advance(self, t_start: int, t_stop: int):
        p, run, to_host = self.problem, self.run, self.glue.to_host
        if self.state.sharpness_last is not None:  # measured by the driver at its pauses between chunks
            # In place: the products path's captured graphs hold the array's address, not its values.
            run.sharpness_last[...] = self.engine.xp.asarray(self.state.sharpness_last)
        self._advance(run, t_start, t_stop, self.steps, self.record_every, p.activation, p.loss, p.scale,
                      p.train_outer, bounds=(p.risk_bound, p.weight_bound), weights_every=p.weights_every,
                      log_risk_every_step=p.log_risk_every_step)
        self.state.diverged[...] = to_host(run.diverged)  # waits for the chunk
        self.glue.check_fault(run, p.activation, p.loss)
        self._iterates_to_host()

    def _iterates_to_host(self):
        run, state, to_host = self.run, self.state, self.glue.to_host
        state.W[...] = to_host(run.W)
        state.a[...] = to_host(run.a)
        if state.tangents is not None and run.tangents.shape[1]:
            state.tangents[...] = to_host(run.tangents)
            state.tangents_a[...] = to_host(run.tangents_a)
            state.log_growth[...] = to_host(run.log_growth)

    def _device_traces(self):
        """(host field, device array, recording period) of every record the kernel writes, by name: its
        second axis holds the records at record_steps(steps, period)."""
        run, every, weights_every = self.run, self.record_every, max(1, self.problem.weights_every)
        triples = [(getattr(self.trace, name), run.trace[index], every)
                   for index, name in enumerate(self.glue.KERNEL_FIELDS)]
        triples.append((self.trace.neuron_margins, run.trace_neuron, every))
        triples += [(getattr(self.trace, name), values, weights_every) for name, values in run.trajectories.items()]
        triples.append((getattr(self.trace, self.glue.LYAPUNOV_FIELD), run.lyapunov, every))
        return [triple for triple in triples if triple[1].size]

    def _trace_to_device(self, t_start: int):
        """The host's records of the steps before t_start onto the device, so that a resumed run's earlier
        records come back from :meth:`finish` as they were (the kernel writes only the steps it runs)."""
        for host, device, every in self._device_traces():
            done = int(np.count_nonzero(record_steps(self.steps, every) < t_start))
            device[:, :done] = self.engine.xp.asarray(host[:, :done])

    def sync(self):
        """Copy the records written so far to the host trace (a checkpoint saves them between chunks)."""
        if self.run is None:
            return
        for host, device, _ in self._device_traces():
            host[...] = self.glue.to_host(device)

    def finish(self):
        """Copy the traces (the fields the kernel writes, by name) and the iterates back to the host."""
        if self.run is None:
            return
        self.sync()
        self._iterates_to_host()
        self.state.diverged[...] = self.glue.to_host(self.run.diverged)
