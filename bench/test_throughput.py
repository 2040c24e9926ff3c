"""lgd's throughput suite (lgd.benchmark.suite, installed with lgd) for ``python -m pytest bench``; ``lgd bench``
runs the installed module itself. Timed with ``--benchmark-enable``; shrunk checks only by default (pytest.ini)."""

from lgd.benchmark.suite import test_throughput  # noqa: F401  (pytest collects it from this module)
