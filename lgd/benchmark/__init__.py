"""``lgd bench``: throughput of lgd's backends against NumPy, PyTorch and JAX, with the machine's roofline.

The whole benchmark installs with lgd, so that ``lgd bench`` needs no source checkout:

- command: the ``lgd bench`` command (options, the suite run in a pytest subprocess, what it writes);
- report: records, ratios, the JSON file, tables, comparison and plot of a run;
- machine: the machine described (CPU, cores, BLAS, GPU, versions);
- workloads: the benchmark problems and the roofline model (see docs/performance.md);
- peers: NumPy, PyTorch and JAX doing exactly lgd's work, and lgd's own backends, behind one ``prepare``;
- plugin: the suite's pytest options and fixtures (``-p lgd.benchmark.plugin``);
- suite: the throughput test itself (pytest-benchmark).

Only plugin and suite import pytest, and only pytest loads them; torch, jax and numba are imported inside
the functions that use them. The repository's bench/ folder exposes the same suite to ``python -m pytest bench``.
"""

from .command import configure, main

__all__ = ["configure", "main"]
