"""The options and fixtures of lgd's throughput suite (lgd.benchmark.plugin) for ``python -m pytest bench``.

A conftest that is not the rootdir's may not name ``pytest_plugins``: the plugin's hooks and fixtures are
imported instead, and pytest finds them here by name.
"""

from lgd.benchmark.plugin import (  # noqa: F401
    bench_options, oracle_risk, prepared, pytest_addoption, pytest_collection_modifyitems, roofline)
