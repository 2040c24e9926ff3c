"""Throughput benchmarks of lgd against NumPy, PyTorch and JAX (pytest-benchmark suites; see docs/performance.md)."""
