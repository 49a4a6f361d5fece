"""A pytest plugin (``-p tests._pure_python_redis``): run without hiredis.

redis-py uses hiredis, its compiled parser, whenever it can import it; the ``redis`` extra
installs it.  Where it cannot be installed, redis-py parses replies and packs commands in
Python.  This plugin hides hiredis before anything imports redis-py, so the store's tests
can run against that parser too.
"""

from __future__ import annotations

import sys

sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py: ImportError


def pytest_report_header() -> str:
    import redis.utils

    if redis.utils.HIREDIS_AVAILABLE:
        raise RuntimeError("hiredis was imported before this plugin could hide it")
    return "redis-py parser: pure Python (hiredis hidden)"
