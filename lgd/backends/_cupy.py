"""The cupy backend: GD on an NVIDIA GPU through the CUDA kernels of ``lgd.kernels.cupy_gpu``.

Data are moved to the device once per run (cupy inputs are used where they are); the iterates and
traces stay there between chunks and only the chunk's trace slots, the weights and the divergence
flags come back to the host at the end of each chunk.
"""

from __future__ import annotations

import importlib.util

from . import Problem, State, Trace, record_slot


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
    """Runs configurations of one problem on the GPU; see :mod:`lgd.backends` for the contract."""

    name = "cupy"

    def __init__(self, problem: Problem):
        import cupy

        from ..kernels import cupy_gpu

        self.cupy, self.kernels, self.problem = cupy, cupy_gpu, problem
        cupy_gpu.module()  # build the module here, outside the timed loop
        self.X, self.y = cupy.asarray(problem.X), cupy.asarray(problem.y)
        self.X_test = None if problem.X_test is None else cupy.asarray(problem.X_test)
        self.y_test = None if problem.y_test is None else cupy.asarray(problem.y_test)
        self.device = None  # DeviceRun, created on the first chunk of a state
        self.state_id = None

    def run(self, state: State, trace: Trace, t_start: int, t_stop: int, steps: int, record_every: int):
        cp, p = self.cupy, self.problem
        if self.state_id != id(state):
            self.device = self.kernels.DeviceRun(
                self.X, self.y, self.X_test, self.y_test, cp.asarray(state.W), cp.asarray(state.a),
                cp.asarray(state.stepsizes, dtype=cp.float64), cp.asarray(state.diverged),
                trace.risk.shape[1], trace.neuron_margins.shape[1])
            self.state_id = id(state)
        device = self.device
        self.kernels.gd_steps(device, t_start, t_stop, steps, record_every, p.activation, p.loss, p.scale,
                              p.train_outer)
        # One synchronising copy per chunk: the recorded slots, the iterates and the divergence flags.
        slots = [s for s in (record_slot(t, steps, record_every) for t in range(t_start, t_stop)) if s >= 0]
        if slots:
            first, last = min(slots), max(slots) + 1
            for name, values in device.trace.items():
                host = getattr(trace, name)
                if host.shape[1]:
                    host[:, first:last] = values[:, first:last].get()
        state.W[...] = device.W.get()
        state.a[...] = device.a.get()
        state.diverged[...] = device.diverged.get()


def runner(problem: Problem, shape=None) -> Runner:
    return Runner(problem)

