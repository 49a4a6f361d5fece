"""Bench-only entry point: ``examples/fastapi_app.py`` plus one route saying who answered.

``uvicorn --workers 3 bench._app_pid:app`` serves the FastAPI example unchanged (the same
SessionMiddleware, SSOMiddleware and store, configured by ``KC_SSO_*``) with one extra
route, ``GET /bench/whoami``: the worker's pid, whether the request still had a session,
and the worker's clock when it answered.  Used by ``bench/propagation.py`` to tell, per
worker, when a revoked session starts being refused.
"""

from __future__ import annotations

import os
import time

from fastapi import Request

from examples.fastapi_app import app

__all__ = ["app"]


@app.get("/bench/whoami")
async def whoami(request: Request) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "session": bool(request.session.get("user")),
        "at": time.time(),
    }
