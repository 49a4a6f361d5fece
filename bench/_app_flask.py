"""Bench-only entry point: ``examples/flask_app.py``, with or without its SSOMiddleware.

``gunicorn bench._app_flask:app`` serves the example unchanged when ``BENCH_WRAPPED=1``
(the default) and, when ``BENCH_WRAPPED=0``, the same app with ``app.wsgi_app`` put back to
what the example wrapped (the middleware's store is never started then).  Used by
``bench/http_load.py``.
"""

from __future__ import annotations

import os

from examples.flask_app import app
from kc_sso_middleware.wsgi import SSOMiddleware

__all__ = ["app"]

if os.environ.get("BENCH_WRAPPED", "1") == "0":
    assert isinstance(app.wsgi_app, SSOMiddleware)
    app.wsgi_app = app.wsgi_app.app  # type: ignore[method-assign]
