"""Flask example: Keycloak login with Authlib, single sign-out with kc_sso_middleware.

Run with ``flask --app examples/flask_app.py run`` or
``gunicorn -w 3 examples.flask_app:app``; configured only by ``KC_SSO_*`` variables, and
``EXAMPLE_SESSION_STORE``: unset, sessions live in Flask's signed cookie; a
``redis://host:port/db`` URL keeps them server-side in that Redis with Flask-Session.
Either way the login callback is the same, and so is the middleware's one line.
"""

from __future__ import annotations

import os
from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Flask, jsonify, redirect, request, session, url_for
from joserfc.errors import JoseError

from examples._bearer import BearerValidator
from examples._logging import log_events
from examples._page import index_page, login_failed_page
from kc_sso_middleware import Settings
from kc_sso_middleware.wsgi import SSOMiddleware

settings = Settings.from_env()
log_events("Flask app")  # the demo's live lines (EXAMPLE_EVENT_LOG=1)

app = Flask(__name__)
app.secret_key = settings.session_secret
app.config["SESSION_COOKIE_NAME"] = settings.session_cookie
# HttpOnly is Flask's default.  Secure off keeps the http://127.0.0.1 demo working; an
# https deployment sets KC_SSO_SESSION_COOKIE_SECURE=true (and the middleware expires the
# cookie with the flags read from here).
app.config["SESSION_COOKIE_SECURE"] = settings.session_cookie_secure
app.config["SESSION_COOKIE_SAMESITE"] = "Lax"

session_store = os.environ.get("EXAMPLE_SESSION_STORE")
if session_store:
    # Server-side sessions (Flask-Session's Redis backend): the browser holds only the id.
    # The middleware finds Flask-Session on its own, reads and deletes sessions through it.
    import redis
    from flask_session import Session

    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.Redis.from_url(session_store)
    Session(app)

oauth = OAuth(app)
oauth.register(
    "keycloak",
    client_id=settings.client_id,
    client_secret=settings.client_secret,
    server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
    # PKCE (RFC 9700 §2.1.1) besides state and nonce, which Authlib adds on its own.
    client_kwargs={"scope": "openid", "code_challenge_method": "S256"},
)


bearer = BearerValidator(settings.issuer, algorithms=settings.algorithms)


@app.get("/")
def index() -> str:
    # The middleware's marker says why, on the request right after a single sign-out.
    return index_page("Flask app", session.get("user"), request.environ.get("kc_sso.signed_out"))


@app.get("/login")
def login() -> Any:
    return oauth.keycloak.authorize_redirect(url_for("callback", _external=True))


@app.get("/auth/callback")
def callback() -> Any:
    try:
        token = oauth.keycloak.authorize_access_token()
    except (AuthlibBaseError, JoseError) as exc:
        # Keycloak's error, a state this browser did not start, an ID token that does not
        # verify (its nonce, signature, iss, aud): no login, and a page, not a 500.
        app.logger.warning("login callback refused: %s", exc)
        return login_failed_page("Flask app"), 400
    session.clear()
    # What the middleware reads: the raw ID token (id_token_hint, sid, auth_time) and its
    # claims; the refresh token lets it ask Keycloak whether the session is still alive
    # (KC_SSO_LIVENESS_INTERVAL).
    session["id_token"] = token["id_token"]
    session["user"] = dict(token["userinfo"])
    session["refresh_token"] = token.get("refresh_token")
    if session_store:
        # A new server-side session id for the login (session fixation): an id planted or
        # read before it stays anonymous.  After the keys: regenerate() skips an empty one.
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
    return redirect(url_for("index"))


@app.get("/me")
def me() -> Any:
    user = session.get("user")
    if not user:
        return jsonify(error="not_logged_in"), 401
    return jsonify(user)


@app.get("/api/me")
def api_me() -> Any:
    """The bearer token's claims, validated here (the middleware refuses revoked ones)."""
    answer = bearer.answer(request.headers.get("Authorization"))
    return (
        jsonify(dict(answer.body)),
        answer.status,
        [*answer.headers, ("Cache-Control", "no-store")],
    )


# Outside Flask's own session handling, so a revoked cookie is taken out before Flask reads it.
app.wsgi_app = SSOMiddleware(app.wsgi_app, settings)  # type: ignore[method-assign]
