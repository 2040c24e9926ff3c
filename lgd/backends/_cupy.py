"""The cupy backend: GD on an NVIDIA GPU through the CUDA kernels of ``lgd.kernels.cupy_gpu``.

Data are moved to the device once per run (cupy inputs are used where they are); the iterates and
traces stay there between chunks and only the chunk's trace slots, the weights and the divergence
flags come back to the host at the end of each chunk.
"""

from __future__ import annotations

import importlib.util

from . import Problem, State, Trace, cast_stepsizes


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, "cupy is not installed"
    try:
        import cupy
    except Exception as exc:  # a broken CUDA install surfaces here
        return False, f"cupy fails to import: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return False, f"no usable CUDA device ({exc})"
    if count < 1:
        return False, "no CUDA device found"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return True, (f"{name} (compute capability {props['major']}.{props['minor']}), CUDA runtime "
                  f"{cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")


class Runner:
    """Runs configurations of one problem on the GPU; see :mod:`lgd.backends` for the protocol."""

    name = "cupy"

    def __init__(self, problem: Problem, steps: int, record_every: int, shape=None):
        import cupy

        from ..kernels import cupy_gpu

        self.cupy, self.kernels, self.problem = cupy, cupy_gpu, problem
        self.steps, self.record_every = steps, record_every
        cupy_gpu.module()  # build the module here, outside the timed loop
        self.X, self.y = cupy.asarray(problem.X), cupy.asarray(problem.y)
        self.X_test = None if problem.X_test is None else cupy.asarray(problem.X_test)
        self.y_test = None if problem.y_test is None else cupy.asarray(problem.y_test)
        self.state, self.trace, self.device = None, None, None

    def start(self, state: State, trace: Trace):
        """Copy the batch to the device, where it stays until :meth:`finish`."""
        cp = self.cupy
        self.state, self.trace = state, trace
        self.device = self.kernels.DeviceRun(
            self.X, self.y, self.X_test, self.y_test, cp.asarray(state.W), cp.asarray(state.a),
            cp.asarray(cast_stepsizes(state.stepsizes, self.problem.dtype), dtype=cp.float64),
            cp.asarray(state.diverged), trace.risk.shape[1], trace.neuron_margins.shape[1])

    def advance(self, t_start: int, t_stop: int):
        p, device = self.problem, self.device
        self.kernels.gd_steps(device, t_start, t_stop, self.steps, self.record_every, p.activation, p.loss,
                              p.scale, p.train_outer)
        # One synchronising copy per chunk: the divergence flags (the driver stops when all are set) and
        # the iterates (the driver may pause to measure them).
        self.state.diverged[...] = device.diverged.get()
        self.kernels.check_fault(device, p.activation, p.loss)
        self.state.W[...] = device.W.get()
        self.state.a[...] = device.a.get()

    def finish(self):
        """Copy the traces back to the host."""
        for name, values in self.device.trace.items():
            host = getattr(self.trace, name)
            if host.shape[1]:
                host[...] = values.get()
