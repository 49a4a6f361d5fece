"""FastAPI example: Keycloak login with Authlib, single sign-out with kc_sso_middleware.

Run with ``uvicorn examples.fastapi_app:app`` or ``uvicorn --workers 3 …``; configured only
by ``KC_SSO_*`` variables.
"""

from __future__ import annotations

from authlib.integrations.starlette_client import OAuth
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware

from examples._page import index_page
from kc_sso_middleware import Settings
from kc_sso_middleware.asgi import SSOMiddleware

settings = Settings.from_env()

app = FastAPI(title="FastAPI app")
app.add_middleware(
    SessionMiddleware,
    secret_key=settings.session_secret or "",
    session_cookie=settings.session_cookie,
    same_site="lax",
)
# Added last, so it is the outermost: it sees the session cookie before SessionMiddleware.
app.add_middleware(SSOMiddleware, settings=settings)

oauth = OAuth()
oauth.register(
    "keycloak",
    client_id=settings.client_id,
    client_secret=settings.client_secret,
    server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
    client_kwargs={"scope": "openid"},
)


@app.get("/", response_class=HTMLResponse)
async def index(request: Request) -> str:
    return index_page("FastAPI app", request.session.get("user"))


@app.get("/login")
async def login(request: Request) -> Response:
    redirect_uri = str(request.url_for("callback"))
    response: Response = await oauth.keycloak.authorize_redirect(request, redirect_uri)
    return response


@app.get("/auth/callback", name="callback")
async def callback(request: Request) -> Response:
    token = await oauth.keycloak.authorize_access_token(request)
    request.session.clear()
    # What the middleware reads: the raw ID token (id_token_hint, sid, auth_time) and its claims.
    request.session["id_token"] = token["id_token"]
    request.session["user"] = dict(token["userinfo"])
    return RedirectResponse(request.url_for("index"), status_code=303)


@app.get("/me")
async def me(request: Request) -> Response:
    user = request.session.get("user")
    if not user:
        return JSONResponse({"error": "not_logged_in"}, status_code=401)
    return JSONResponse(user)
