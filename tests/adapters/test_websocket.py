"""Websocket handshakes are checked as requests are (ASGI): Starlette's SessionMiddleware
reads the session cookie for websockets too, so a revoked session must not reach one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from kc_sso_middleware import Revocation
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP, make_session_cookie, mint_jwt
from tests.conftest import CLIENT_ID, SESSION_SECRET, make_settings


def _cookie(op: StandInOP, sid: str) -> str:
    now = int(time.time())
    claims = {"iss": op.issuer, "aud": CLIENT_ID, "sub": "u-ws", "sid": sid, "iat": now}
    id_token = mint_jwt(op.key, {**claims, "exp": now + 300, "auth_time": now})
    return make_session_cookie(SESSION_SECRET, {"id_token": id_token}, format="starlette")


def _app(op: StandInOP, store: MemoryStore, **overrides: Any) -> Any:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        marker = websocket.scope.get("kc_sso.signed_out")
        await websocket.send_json({"session": dict(websocket.session), "signed_out": marker})
        await websocket.close()

    app = Starlette(
        routes=[WebSocketRoute("/ws", ws)],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
    )
    settings = make_settings(op, **overrides)
    app.add_middleware(asgi_adapter.SSOMiddleware, settings=settings, store=store)
    return app


def _handshake(app: Any, cookie: str, *, http_response: bool = False) -> list[dict[str, Any]]:
    """What the app sends for one websocket handshake carrying ``cookie``."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"app.test"), (b"cookie", f"session={cookie}".encode())],
        "server": ("app.test", 80),
        "client": ("127.0.0.1", 1),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if http_response else {},
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    return sent


def _seen(sent: list[dict[str, Any]]) -> dict[str, Any]:
    text = next(m for m in sent if m["type"] == "websocket.send")["text"]
    seen: dict[str, Any] = json.loads(text)
    return seen


def test_a_live_session_reaches_the_websocket(op: StandInOP) -> None:
    app = _app(op, MemoryStore())
    assert "id_token" in _seen(_handshake(app, _cookie(op, "ws-live")))["session"]


def test_a_revoked_session_is_taken_out_of_the_handshake(op: StandInOP) -> None:
    """The app accepts the websocket without the session, is told why, and the accept
    carries the cookie's expiry."""
    store = MemoryStore()
    app = _app(op, store)
    assert store.record(
        [Revocation.session(op.issuer, "ws-gone", client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    sent = _handshake(app, _cookie(op, "ws-gone"))
    seen = _seen(sent)
    assert seen["session"] == {}
    assert seen["signed_out"]["sid"] == "ws-gone"
    (accept,) = (m for m in sent if m["type"] == "websocket.accept")
    cookies = [v.decode() for n, v in accept.get("headers", []) if n == b"set-cookie"]
    assert any(c.startswith("session=") and "Max-Age=0" in c for c in cookies), cookies


@pytest.mark.parametrize("http_response", [True, False], ids=["http-response", "close"])
def test_a_revoked_session_under_401_is_refused_at_the_handshake(
    http_response: bool, op: StandInOP
) -> None:
    """KC_SSO_REVOKED_ACTION=401: the handshake gets the 401 where the server speaks the
    websocket.http.response extension, else it is closed before it is accepted."""
    store = MemoryStore()
    app = _app(op, store, revoked_action="401")
    assert store.record(
        [Revocation.session(op.issuer, "ws-401", client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    sent = _handshake(app, _cookie(op, "ws-401"), http_response=http_response)
    assert not any(m["type"] in ("websocket.accept", "websocket.send") for m in sent)
    if http_response:
        assert sent[0]["type"] == "websocket.http.response.start"
        assert sent[0]["status"] == 401
    else:
        assert sent == [{"type": "websocket.close", "code": 1008}]
