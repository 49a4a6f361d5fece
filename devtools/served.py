"""The example apps, unchanged, each wrapped to say which worker process answered.

Serve ``devtools.served:flask_app`` or ``devtools.served:django_wsgi_app`` with gunicorn,
``devtools.served:fastapi_app`` or ``devtools.served:django_asgi_app`` with uvicorn.  The
wrapper is the outermost layer, so every answer carries an ``X-Worker-Pid`` header, the
single sign-out middleware's own answers (401, 503, the back-channel endpoint) included.
Each app is imported on first access only (PEP 562), so a worker serving one example never
builds the others.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

# ``flask_app``, ``fastapi_app``, ``django_wsgi_app`` and ``django_asgi_app`` come from
# __getattr__ below.
__all__ = ["PID_HEADER", "WorkerPidASGI", "WorkerPidWSGI"]

PID_HEADER = "X-Worker-Pid"

StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class WorkerPidWSGI:
    """WSGI middleware adding ``X-Worker-Pid`` to every response."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start_with_pid(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            return start_response(status, [*headers, (PID_HEADER, str(os.getpid()))], exc_info)

        return self.app(environ, start_with_pid)


class WorkerPidASGI:
    """ASGI middleware adding ``x-worker-pid`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-worker-pid", b"%d" % os.getpid())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def __getattr__(name: str) -> Any:
    """The wrapped example apps, each built on first access and then kept."""
    if name == "flask_app":
        from examples.flask_app import app as flask

        wrapped: Any = WorkerPidWSGI(flask)
    elif name == "fastapi_app":
        from examples.fastapi_app import app as fastapi

        wrapped = WorkerPidASGI(fastapi)
    elif name == "django_wsgi_app":
        from examples.django_app.wsgi import application as django_wsgi

        wrapped = WorkerPidWSGI(django_wsgi)
    elif name == "django_asgi_app":
        from examples.django_app.asgi import application as django_asgi

        wrapped = WorkerPidASGI(django_asgi)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = wrapped
    return wrapped
