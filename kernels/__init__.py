"""Compute kernels of lgd, installed as ``lgd.kernels``.

Only compute lives here: fused forward/backward passes and whole GD loops, specialised per
(activation, loss, dtype). No argument checking, no I/O, no printing: the Python side in
:mod:`lgd` validates inputs and owns the results. Submodules import their compiler (numba, cupy)
at their own import, so nothing here is loaded by ``import lgd``.
"""
