"""Bench-only entry points: hello-world apps, the lightest request a middleware can slow.

``uvicorn bench._app_plain:starlette_app`` (plain Starlette) and ``gunicorn
bench._app_plain:flask_app`` (plain Flask): ``GET /`` answers ``hello``, with
``SSOMiddleware`` around the app when ``BENCH_WRAPPED=1`` (the default; configured from the
``KC_SSO_*`` variables as any app is) and without it when ``BENCH_WRAPPED=0``.  No session
handling of their own: a request carries no session, so what is measured is the cost of
every request that is not logged in.  Used by ``bench/http_load.py`` (``--apps
starlette-plain flask-plain``).
"""

from __future__ import annotations

import os

from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kc_sso_middleware.asgi import SSOMiddleware as ASGIMiddleware
from kc_sso_middleware.wsgi import SSOMiddleware as WSGIMiddleware

__all__ = ["flask_app", "starlette_app"]

WRAPPED = os.environ.get("BENCH_WRAPPED", "1") != "0"


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


starlette_app = Starlette(routes=[Route("/", _hello)])
if WRAPPED:
    starlette_app.add_middleware(ASGIMiddleware)

flask_app = Flask(__name__)


@flask_app.get("/")
def _flask_hello() -> str:
    return "hello"


if WRAPPED:
    flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
