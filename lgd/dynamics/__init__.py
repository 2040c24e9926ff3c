"""GD as a dynamical system: periods and attractors, Lyapunov exponents over a window, reference flows and
the bifurcation and basin diagrams (science notes, section 6; Kong and Tao, NeurIPS 2020; Wang et al., ICLR 2022).

What lives here, one question per function, each taking a Run or Sweep (or a problem):

- :func:`attractors` (:mod:`.periods`): converged, periodic with period p, bounded or diverged, per
  configuration, from a final window of the trajectory or of a scalar trace (compiled with numba when
  installed, numpy otherwise);
- :func:`lyapunov_window` (:mod:`.lyapunov`): the Lyapunov exponents over a window of steps, from the
  cumulative log growth that ``lgd.Record(lyapunov=k)`` records;
- :func:`flow`, :func:`compare_flows` (:mod:`.flows`): gradient flow and the first-order modified flow
  (scipy's ``solve_ivp``), and their distances to the GD iterates;
- :func:`bifurcation`, :func:`basins`, :func:`plot_bifurcation`, :func:`plot_basins` (:mod:`.diagrams`).

What does not: running GD (:func:`lgd.sweep`) and the tangent propagation (in the GD kernels). Importing
this package loads numpy only: numba, scipy and matplotlib are imported by the functions that use them.
"""

from .diagrams import Basins, Bifurcation, basins, bifurcation, plot_basins, plot_bifurcation
from .flows import Flow, FlowComparison, compare_flows, flow
from .lyapunov import lyapunov_window
from .periods import BOUNDED, CONVERGED, DIVERGED, KINDS, MAX_PERIOD, PERIODIC, TOLERANCE, Attractors, attractors

__all__ = ["attractors", "Attractors", "lyapunov_window", "flow", "compare_flows", "Flow", "FlowComparison",
           "bifurcation", "basins", "Bifurcation", "Basins", "plot_bifurcation", "plot_basins", "CONVERGED",
           "PERIODIC", "BOUNDED", "DIVERGED", "KINDS", "MAX_PERIOD", "TOLERANCE"]
