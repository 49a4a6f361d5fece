"""The adapters as protocol translators, the same request through both."""

from __future__ import annotations

import asyncio
from typing import Any

from werkzeug.test import Client

from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware._http import RequestHead, SignOut, Verdict
from kc_sso_middleware.sources.base import Finding, IdentitySource
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import HarnessFactory, make_settings


def test_an_own_path_beyond_ascii_is_served_by_both_adapters(make_harness: HarnessFactory) -> None:
    """PEP 3333: PATH_INFO holds the path's bytes as latin-1 text (Werkzeug routes on them
    decoded as UTF-8); ASGI's ``path`` is already UTF-8 text.  KC_SSO_HEALTH_PATH="/santé"
    (check_path accepts it) must be served under both adapters, not fall through to the app."""
    harness = make_harness(health_path="/santé")
    if harness.kind == "asgi":
        response = harness.client.get("/santé")
        status, body = response.status_code, response.content
    else:
        # Werkzeug's test client builds the environ as a PEP 3333 server does
        # (httpx's WSGITransport hands PATH_INFO over as decoded text, which no server does).
        response = Client(harness.app).get("/santé")
        status, body = response.status_code, response.data
    assert status == 200, body[:200]
    assert b'"status":"ok"' in body


class _Marking(IdentitySource):
    """A source whose verdict only adds a Set-Cookie and the marker: ``cookie=None``,
    which Verdict documents as "keeps them" (every Cookie header)."""

    name = "marking"

    def find(self, head: RequestHead, now: float) -> Finding | None:
        if not head.cookies:
            return None
        verdict = Verdict(set_cookies=("hint=1; Path=/",), signed_out=SignOut("backchannel"))
        return Finding(self, (), clean=verdict)

    def refuse(self, finding: Finding, head: RequestHead, signed_out: SignOut) -> Verdict:
        raise AssertionError("not revoked")


def test_a_verdict_keeping_the_cookies_keeps_them_under_asgi(op: StandInOP) -> None:
    """_http.Verdict: ``cookie`` None keeps every Cookie header (the WSGI adapter does);
    the ASGI adapter must not drop them all."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["headers"] = [(n, v) for n, v in scope["headers"] if n == b"cookie"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings = make_settings(op)
    middleware = asgi_adapter.SSOMiddleware(
        app, settings, store=MemoryStore(), sources=[_Marking()]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"app.test"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    }
    asyncio.run(middleware(scope, receive, send))
    assert seen["headers"] == [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
    assert (b"set-cookie", b"hint=1; Path=/") in sent[0]["headers"]
