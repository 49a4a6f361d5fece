"""Flask example: Keycloak login with Authlib, single sign-out with kc_sso_middleware.

Run with ``flask --app examples/flask_app.py run`` or
``gunicorn -w 3 examples.flask_app:app``; configured only by ``KC_SSO_*`` variables.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_client import OAuth
from flask import Flask, jsonify, redirect, session, url_for

from examples._page import index_page
from kc_sso_middleware import Settings
from kc_sso_middleware.wsgi import SSOMiddleware

settings = Settings.from_env()

app = Flask(__name__)
app.secret_key = settings.session_secret
app.config["SESSION_COOKIE_NAME"] = settings.session_cookie
app.config["SESSION_COOKIE_SAMESITE"] = "Lax"

oauth = OAuth(app)
oauth.register(
    "keycloak",
    client_id=settings.client_id,
    client_secret=settings.client_secret,
    server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
    client_kwargs={"scope": "openid"},
)


@app.get("/")
def index() -> str:
    return index_page("Flask app", session.get("user"))


@app.get("/login")
def login() -> Any:
    return oauth.keycloak.authorize_redirect(url_for("callback", _external=True))


@app.get("/auth/callback")
def callback() -> Any:
    token = oauth.keycloak.authorize_access_token()
    session.clear()
    # What the middleware reads: the raw ID token (id_token_hint, sid, auth_time) and its claims.
    session["id_token"] = token["id_token"]
    session["user"] = dict(token["userinfo"])
    return redirect(url_for("index"))


@app.get("/me")
def me() -> Any:
    user = session.get("user")
    if not user:
        return jsonify(error="not_logged_in"), 401
    return jsonify(user)


# Outside Flask's own session handling, so a revoked cookie is taken out before Flask reads it.
app.wsgi_app = SSOMiddleware(app.wsgi_app, settings)  # type: ignore[method-assign]
