"""lgd: large-stepsize gradient descent on two-layer networks, fast and exact.

>>> import lgd
>>> X, y = lgd.data.xor()
>>> run = lgd.gd(X, y, lgd.TwoLayerNet(32), "logistic", stepsize=20.0, steps=2000)   # doctest: +SKIP
>>> run.phase.transition_step                                                        # doctest: +SKIP
>>> grid = lgd.sweep(X, y, lgd.TwoLayerNet(32), stepsizes=[1.0, 20.0], steps=100, record=10, compute="numpy")
>>> grid.risk.shape
(2, 11)

Importing lgd loads numpy only: numba and cupy are imported when a backend first needs them.
"""

from . import activations, analysis, data, hessian, losses, stepsize
from .backends import BackendUnavailable
from .checkpoint import resume
from .driver import gd, sweep
from .models import Linear, TwoLayerNet, init_grid
from .options import Compute, Divergence, Record
from .results import Phase, Run, Sweep, load

__version__ = "0.1.0"


# Imported on first use (lgd.dynamics, lgd.distributed, ...): nothing of them is needed to run GD, and each
# imports its heavy packages (dask, matplotlib) only inside the functions that use them.
_ON_FIRST_USE = ("dynamics", "distributed", "reproduce", "plot")


def __getattr__(name):
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lgd' has no attribute {name!r}")


__all__ = ["gd", "sweep", "resume", "Record", "Compute", "Divergence", "init_grid", "TwoLayerNet", "Linear", "Run",
           "Sweep", "Phase", "load", "BackendUnavailable", "activations", "losses", "data", "analysis", "hessian",
           "stepsize", "dynamics", "__version__"]
