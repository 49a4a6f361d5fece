"""A stand-in OpenID Provider on a loopback port, for fast tests.

:class:`StandInOP` serves discovery, JWKS, authorize (automatic login, SSO by cookie),
token (authorization code, password, refresh), introspection and end-session with
back-channel fan-out, and signs real tokens with joserfc.  It is **not** Keycloak:
end-to-end tests belong against the real one.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jws
from joserfc.jwk import OctKey, RSAKey

from .tokens import mint_jwt, mint_logout_token

__all__ = ["Delivery", "StandInOP"]


@dataclass
class _Client:
    client_id: str
    secret: str | None
    backchannel_url: str | None


@dataclass
class _Session:
    sid: str
    sub: str
    username: str
    auth_time: int
    clients: set[str] = field(default_factory=set)


@dataclass
class Delivery:
    """One back-channel request the stand-in OP sent."""

    url: str
    status: int | None
    error: str | None = None


class StandInOP:
    """An OpenID Provider on ``127.0.0.1`` for tests (a context manager).

    Login is automatic (no form): ``/auth`` logs in :attr:`username` and remembers the OP
    session in a cookie, so a second app gets SSO like with Keycloak.  End-session (browser
    with ``id_token_hint`` or API with ``refresh_token``) back-channels every client of the
    session, as Keycloak does.
    """

    realm_path = "/realms/test"

    def __init__(self, username: str = "alice") -> None:
        self.key = RSAKey.generate_key(2048, parameters={"use": "sig"})
        self.key.ensure_kid()
        # Keycloak signs refresh tokens with a realm HMAC key nobody else can verify.
        self._refresh_key = OctKey.generate_key(512)
        self.username = username
        self.clients: dict[str, _Client] = {}
        self.sessions: dict[str, _Session] = {}
        self.deliveries: list[Delivery] = []
        self.end_session_requests: list[dict[str, str]] = []
        #: a query the discovery document's end_session_endpoint carries (e.g. "kc_locale=de")
        self.end_session_query = ""
        #: seconds a refresh-token logout takes after the session ended (a Keycloak waiting
        #: on a client's slow back-channel URL)
        self.logout_delay = 0.0
        #: how many times the JWKS was fetched; set ``jwks_status`` to make it fail and
        #: ``jwks_delay`` (seconds) to make it slow
        self.jwks_requests = 0
        self.jwks_status = 200
        self.jwks_delay = 0.0
        #: JWKs published before the signing key, as they are (malformed ones too)
        self.extra_jwks: list[dict[str, Any]] = []
        #: how many introspection requests came; set ``introspection_status`` to fail them
        self.introspections = 0
        #: how many of them were answered ``active`` true or false (the token looked up)
        self.introspections_answered = 0
        self.introspection_status = 200
        #: seconds each introspection answer takes (a Keycloak that is slow or hanging)
        self.introspection_delay = 0.0
        #: seconds a refresh token lives (Keycloak: the client session's idle timeout)
        self.refresh_lifetime = 1800
        #: Keycloak's realm setting "Revoke Refresh Token" (max reuse 0): a refresh token
        #: used once is refused afterwards, and introspects as ``active: false`` while
        #: the session lives on ("Maximum allowed refresh token reuse exceeded", "Stale
        #: token"); off (Keycloak's default) it stays valid until its ``exp``
        self.revoke_refresh_token = False
        self._codes: dict[str, dict[str, str]] = {}
        self._refresh: dict[str, tuple[str, str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}{self.realm_path}"

    def __enter__(self) -> StandInOP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def register_client(
        self, client_id: str, secret: str | None = None, backchannel_url: str | None = None
    ) -> None:
        self.clients[client_id] = _Client(client_id, secret, backchannel_url)

    def logout_token(self, client_id: str, **kwargs: Any) -> str:
        """A logout token for ``client_id`` signed with this OP's key."""
        return mint_logout_token(self.key, issuer=self.issuer, audience=client_id, **kwargs)

    def send_backchannel_logout(self, url: str, token: str) -> httpx.Response:
        return httpx.post(url, data={"logout_token": token}, timeout=10)

    def forget_session(self, sid: str) -> None:
        """End an OP session without telling anybody, like an idle expiry in Keycloak."""
        self.sessions.pop(sid, None)

    def end_session(self, sid: str) -> None:
        """End an OP session and back-channel its clients, as Keycloak does (one try each)."""
        op_session = self.sessions.pop(sid, None)
        if op_session is None:
            return
        for client_id in sorted(op_session.clients):
            client = self.clients.get(client_id)
            if client is None or client.backchannel_url is None:
                continue
            token = self.logout_token(client_id, sub=op_session.sub, sid=sid)
            try:
                response = self.send_backchannel_logout(client.backchannel_url, token)
                self.deliveries.append(Delivery(client.backchannel_url, response.status_code))
            except httpx.HTTPError as exc:
                self.deliveries.append(Delivery(client.backchannel_url, None, str(exc)))

    # ------------------------------------------------------------------ tokens

    def _tokens(self, op_session: _Session, client_id: str, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        op_session.clients.add(client_id)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "azp": client_id,
            "sub": op_session.sub,
            "sid": op_session.sid,
            "iat": now,
            "exp": now + 300,
            "auth_time": op_session.auth_time,
            "preferred_username": op_session.username,
            "typ": "ID",
        }
        if nonce:
            claims["nonce"] = nonce
        refresh = mint_jwt(
            self._refresh_key,
            {
                "iss": self.issuer,
                "aud": self.issuer,
                "azp": client_id,
                "sub": op_session.sub,
                "sid": op_session.sid,
                "iat": now,
                "exp": now + self.refresh_lifetime,
                "jti": str(uuid.uuid4()),
                "typ": "Refresh",
            },
            {"alg": "HS512", "typ": "JWT", "kid": None},
        )
        self._refresh[refresh] = (op_session.sid, client_id)
        return {
            "access_token": mint_jwt(self.key, {**claims, "typ": "Bearer"}, {"typ": "JWT"}),
            "id_token": mint_jwt(self.key, claims, {"typ": "JWT"}),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": 300,
        }

    def _client_ok(self, form: Mapping[str, str], auth_header: str | None) -> str | None:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if auth_header and auth_header.lower().startswith("basic "):
            decoded = base64.b64decode(auth_header[6:]).decode()
            client_id, _, secret = decoded.partition(":")
        client = self.clients.get(client_id or "")
        if client is None or (client.secret is not None and client.secret != secret):
            return None
        return client.client_id

    # ------------------------------------------------------------------ HTTP

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: Iterable[tuple[str, str]] = (),
                content_type: str = "application/json",
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: Any) -> None:
                self._send(status, json.dumps(payload).encode())

            def _params(self) -> dict[str, str]:
                query = urlsplit(self.path).query
                params = {k: v[0] for k, v in parse_qs(query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    body = self.rfile.read(length).decode()
                    params.update({k: v[0] for k, v in parse_qs(body).items()})
                return params

            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                path = urlsplit(self.path).path
                base = op.realm_path
                oidc = f"{base}/protocol/openid-connect"
                routes = {
                    f"{base}/.well-known/openid-configuration": self._discovery,
                    f"{oidc}/certs": self._certs,
                    f"{oidc}/auth": self._authorize,
                    f"{oidc}/token": self._token,
                    f"{oidc}/logout": self._logout,
                    f"{oidc}/token/introspect": self._introspect,
                }
                handler = routes.get(path)
                if handler is None:
                    self._json(404, {"error": "not_found"})
                else:
                    handler(self._params())

            def _discovery(self, _params: dict[str, str]) -> None:
                oidc = f"{op.issuer}/protocol/openid-connect"
                self._json(
                    200,
                    {
                        "issuer": op.issuer,
                        "authorization_endpoint": f"{oidc}/auth",
                        "token_endpoint": f"{oidc}/token",
                        "jwks_uri": f"{oidc}/certs",
                        "end_session_endpoint": f"{oidc}/logout"
                        + (f"?{op.end_session_query}" if op.end_session_query else ""),
                        "introspection_endpoint": f"{oidc}/token/introspect",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "backchannel_logout_supported": True,
                        "backchannel_logout_session_supported": True,
                    },
                )

            def _certs(self, _params: dict[str, str]) -> None:
                op.jwks_requests += 1
                if op.jwks_delay:
                    time.sleep(op.jwks_delay)
                if op.jwks_status != 200:
                    self._json(op.jwks_status, {"error": "server_error"})
                    return
                self._json(200, {"keys": [*op.extra_jwks, op.key.as_dict(private=False)]})

            def _op_session(self) -> _Session | None:
                cookie = self.headers.get("Cookie", "")
                for part in cookie.split(";"):
                    name, _, value = part.strip().partition("=")
                    if name == "STANDIN_SESSION" and value in op.sessions:
                        return op.sessions[value]
                return None

            def _authorize(self, params: dict[str, str]) -> None:
                if params.get("client_id") not in op.clients:
                    self._json(400, {"error": "unauthorized_client"})
                    return
                op_session = self._op_session()
                if op_session is None:
                    sid = str(uuid.uuid4())
                    op_session = _Session(sid, f"sub-{op.username}", op.username, int(time.time()))
                    op.sessions[sid] = op_session
                code = secrets.token_urlsafe(16)
                op._codes[code] = {
                    "sid": op_session.sid,
                    "client_id": params["client_id"],
                    "nonce": params.get("nonce", ""),
                }
                query = urlencode({"code": code, "state": params.get("state", "")})
                self._send(
                    302,
                    headers=[
                        ("Location", f"{params['redirect_uri']}?{query}"),
                        ("Set-Cookie", f"STANDIN_SESSION={op_session.sid}; Path=/; HttpOnly"),
                    ],
                )

            def _token(self, params: dict[str, str]) -> None:
                client_id = op._client_ok(params, self.headers.get("Authorization"))
                if client_id is None:
                    self._json(401, {"error": "unauthorized_client"})
                    return
                grant = params.get("grant_type")
                if grant == "authorization_code":
                    data = op._codes.pop(params.get("code", ""), None)
                    op_session = op.sessions.get(data["sid"]) if data else None
                    if data is None or op_session is None or data["client_id"] != client_id:
                        self._json(400, {"error": "invalid_grant"})
                        return
                    self._json(200, op._tokens(op_session, client_id, data["nonce"] or None))
                elif grant == "password":
                    sid = str(uuid.uuid4())
                    username = params.get("username", op.username)
                    op_session = _Session(sid, f"sub-{username}", username, int(time.time()))
                    op.sessions[sid] = op_session
                    self._json(200, op._tokens(op_session, client_id, None))
                elif grant == "refresh_token":
                    token = params.get("refresh_token", "")
                    found = op._refresh.get(token)
                    claims = (
                        json.loads(jws.extract_compact(token.encode()).payload) if found else {}
                    )
                    op_session = op.sessions.get(found[0]) if found else None
                    if (
                        found is None
                        or op_session is None
                        or found[1] != client_id
                        or claims.get("exp", 0) < time.time()
                    ):
                        self._json(
                            400,
                            {"error": "invalid_grant", "error_description": "Token is not active"},
                        )
                        return
                    if op.revoke_refresh_token:
                        op._refresh.pop(token, None)
                    self._json(200, op._tokens(op_session, client_id, None))
                else:
                    self._json(400, {"error": "unsupported_grant_type"})

            def _introspect(self, params: dict[str, str]) -> None:
                """Token introspection of a refresh token, as Keycloak answers it."""
                op.introspections += 1
                if op.introspection_delay:
                    time.sleep(op.introspection_delay)
                if op.introspection_status != 200:
                    self._json(op.introspection_status, {"error": "server_error"})
                    return
                client_id = op._client_ok(params, self.headers.get("Authorization"))
                if client_id is None:
                    self._json(401, {"error": "invalid_client"})
                    return
                token = params.get("token", "")
                found = op._refresh.get(token)
                claims = json.loads(jws.extract_compact(token.encode()).payload) if found else {}
                alive = (
                    found is not None
                    and found[0] in op.sessions
                    and claims.get("exp", 0) >= time.time()
                    and found[1] == client_id
                )
                op.introspections_answered += 1
                if not alive or found is None:
                    self._json(200, {"active": False})
                    return
                self._json(200, {"active": True, "sid": found[0], "client_id": client_id})

            def _logout(self, params: dict[str, str]) -> None:
                op.end_session_requests.append(dict(params))
                if "refresh_token" in params:
                    client_id = op._client_ok(params, self.headers.get("Authorization"))
                    if client_id is None:
                        self._json(
                            400,
                            {
                                "error": "unauthorized_client",
                                "error_description": "UNKNOWN_CLIENT: Client was not "
                                "identified by any client authenticator",
                            },
                        )
                        return
                    found = op._refresh.pop(params["refresh_token"], None)
                    if found is None:
                        self._json(400, {"error": "invalid_grant"})
                        return
                    op.end_session(found[0])
                    if op.logout_delay:
                        time.sleep(op.logout_delay)
                    self._send(204)
                    return
                op_session = self._op_session()
                hint = params.get("id_token_hint")
                if hint:
                    claims = json.loads(jws.extract_compact(hint.encode()).payload)
                    op_session = op.sessions.get(claims.get("sid", "")) or op_session
                if op_session is not None:
                    op.end_session(op_session.sid)
                target = params.get("post_logout_redirect_uri") or params.get("redirect_uri")
                if not target:
                    self._send(200, b"<p>You are logged out.</p>", content_type="text/html")
                    return
                if "state" in params:
                    target += ("&" if "?" in target else "?") + urlencode(
                        {"state": params["state"]}
                    )
                self._send(
                    302,
                    headers=[
                        ("Location", target),
                        ("Set-Cookie", "STANDIN_SESSION=; Path=/; Max-Age=0"),
                    ],
                )

        return Handler
