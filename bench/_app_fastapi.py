"""Bench-only entry point: ``examples/fastapi_app.py``, with or without its SSOMiddleware.

``uvicorn bench._app_fastapi:app`` serves the example unchanged when ``BENCH_WRAPPED=1``
(the default) and the same app minus ``SSOMiddleware`` when ``BENCH_WRAPPED=0``: Starlette
builds its middleware stack on the first request, so dropping the entry from
``user_middleware`` at import time leaves everything else (routes, SessionMiddleware,
Authlib) exactly as in the example.  Used by ``bench/http_load.py``.
"""

from __future__ import annotations

import os

from examples.fastapi_app import app
from kc_sso_middleware.asgi import SSOMiddleware

__all__ = ["app"]

if os.environ.get("BENCH_WRAPPED", "1") == "0":
    app.user_middleware = [m for m in app.user_middleware if m.cls is not SSOMiddleware]
