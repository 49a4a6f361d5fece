"""FastAPI example: Keycloak login with Authlib, single sign-out with kc_sso_middleware.

Run with ``uvicorn examples.fastapi_app:app`` or ``uvicorn --workers 3 …``; configured only
by ``KC_SSO_*`` variables, and ``EXAMPLE_SESSION_STORE``: unset, sessions live in
Starlette's signed cookie; a ``redis://host:port/db`` URL keeps them server-side in that
Redis with starsessions.  Either way the login callback is the same, and so is the
middleware's one line.
"""

from __future__ import annotations

import logging
import os

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.starlette_client import OAuth
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc.errors import JoseError
from starlette.middleware.sessions import SessionMiddleware

from examples._bearer import BearerValidator
from examples._logging import log_events
from examples._page import index_page, login_failed_page
from kc_sso_middleware import Settings
from kc_sso_middleware.asgi import SSOMiddleware

settings = Settings.from_env()
log = logging.getLogger(__name__)
log_events("FastAPI app")  # the demo's live lines (EXAMPLE_EVENT_LOG=1)

app = FastAPI(title="FastAPI app")
session_store = os.environ.get("EXAMPLE_SESSION_STORE")
if session_store:
    # Server-side sessions (starsessions' RedisStore): the browser holds only the id.  The
    # middleware finds starsessions on its own, reads and deletes sessions through it.
    from redis.asyncio import Redis
    from starsessions import SessionAutoloadMiddleware, regenerate_session_id
    from starsessions import SessionMiddleware as ServerSessionMiddleware
    from starsessions.stores.redis import RedisStore

    session_redis = Redis.from_url(session_store)
    app.add_middleware(SessionAutoloadMiddleware)
    app.add_middleware(
        ServerSessionMiddleware,
        store=RedisStore(connection=session_redis),
        lifetime=14 * 24 * 3600,
        cookie_name=settings.session_cookie,
        cookie_same_site="lax",
        cookie_https_only=settings.session_cookie_secure,
    )
else:
    # HttpOnly is Starlette's default.  Secure off keeps the http://127.0.0.1 demo working;
    # an https deployment sets KC_SSO_SESSION_COOKIE_SECURE=true.
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret or "",
        session_cookie=settings.session_cookie,
        same_site="lax",
        https_only=settings.session_cookie_secure,
    )
# Added last, so it is the outermost: it sees the session cookie before either session
# middleware.
app.add_middleware(SSOMiddleware, settings=settings)

oauth = OAuth()
oauth.register(
    "keycloak",
    client_id=settings.client_id,
    client_secret=settings.client_secret,
    server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
    # PKCE (RFC 9700 §2.1.1) besides state and nonce, which Authlib adds on its own.
    client_kwargs={"scope": "openid", "code_challenge_method": "S256"},
)


bearer = BearerValidator(settings.issuer, algorithms=settings.algorithms)


@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> str:
    # The middleware's marker says why, on the request right after a single sign-out.
    marker = request.scope.get("kc_sso.signed_out")
    return index_page("FastAPI app", request.session.get("user"), marker)


@app.get("/login")
async def login(request: Request) -> Response:
    redirect_uri = str(request.url_for("callback"))
    response: Response = await oauth.keycloak.authorize_redirect(request, redirect_uri)
    return response


@app.get("/auth/callback", name="callback")
async def callback(request: Request) -> Response:
    try:
        token = await oauth.keycloak.authorize_access_token(request)
    except (AuthlibBaseError, JoseError) as exc:
        # Keycloak's error, a state this browser did not start, an ID token that does not
        # verify (its nonce, signature, iss, aud): no login, and a page, not a 500.
        log.warning("login callback refused: %s", exc)
        return HTMLResponse(login_failed_page("FastAPI app"), status_code=400)
    request.session.clear()
    # What the middleware reads: the raw ID token (id_token_hint, sid, auth_time) and its
    # claims; the refresh token lets it ask Keycloak whether the session is still alive
    # (KC_SSO_LIVENESS_INTERVAL).
    request.session["id_token"] = token["id_token"]
    request.session["user"] = dict(token["userinfo"])
    request.session["refresh_token"] = token.get("refresh_token")
    if session_store:
        # A new server-side session id for the login (session fixation): an id planted or
        # read before it stays anonymous.
        regenerate_session_id(request)
    return RedirectResponse(request.url_for("index"), status_code=303)


@app.get("/me")
async def me(request: Request) -> Response:
    user = request.session.get("user")
    if not user:
        return JSONResponse({"error": "not_logged_in"}, status_code=401)
    return JSONResponse(user)


@app.websocket("/ws/me")
async def ws_me(websocket: WebSocket) -> None:
    """The session's user over a websocket: the middleware checks the handshake too."""
    user = websocket.session.get("user")
    if not user:
        await websocket.close(code=1008, reason="not logged in")
        return
    await websocket.accept()
    await websocket.send_json(user)
    await websocket.close()


@app.get("/api/me")
async def api_me(request: Request) -> Response:
    """The bearer token's claims, validated here (the middleware refuses revoked ones)."""
    from starlette.concurrency import run_in_threadpool

    answer = await run_in_threadpool(bearer.answer, request.headers.get("authorization"))
    headers = {**dict(answer.headers), "Cache-Control": "no-store"}
    return JSONResponse(dict(answer.body), status_code=answer.status, headers=headers)
