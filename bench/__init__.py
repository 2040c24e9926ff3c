"""Throughput benchmarks of lgd against NumPy, PyTorch and JAX for developers: pytest-benchmark's entry to the suite
of lgd.benchmark, and the recorded results (see docs/performance.md)."""
