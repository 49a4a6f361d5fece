"""The HTML pages of the example apps: ``/``, and a failed login.

It says which app this is, who is logged in and with which Keycloak session, links to the
other apps of the demo (``EXAMPLE_OTHER_APPS``: ``name=url,name=url``), and, on the request
right after a single sign-out, *why* the user is logged out: the middleware's
request-scoped marker (``kc_sso.signed_out`` in the WSGI environ / ASGI scope, or
``request.kc_sso_signed_out`` in Django).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from html import escape
from typing import Any

#: what the demo's client ids are called on the page
APP_NAMES = {
    "flask-app": "the Flask app",
    "fastapi-app": "the FastAPI app",
    "django-app": "the Django app",
}

_WHY = {
    "local_logout": "you logged out of {origin}",
    "backchannel": "your Keycloak session ended (Keycloak told this app)",
    "frontchannel": "Keycloak ended your session (front-channel logout)",
    "admin_logout": "an administrator ended your session in Keycloak",
    "user_logout": "all of your sessions were ended",
    "sign_out_all": "an administrator signed out every session",
    "not_before": "an administrator revoked every session begun before a moment",
    "liveness": "Keycloak no longer knows your session (it expired or ended)",
    "lifetime": "your session reached its maximum lifetime",
}


def signed_out_sentence(marker: Mapping[str, Any] | None, this_app: str) -> str | None:
    """'You were signed out because …' for the marker, or ``None`` without one."""
    if not marker:
        return None
    reason = str(marker.get("reason", ""))
    origin = marker.get("origin")
    named = APP_NAMES.get(str(origin), str(origin)) if origin else None
    if reason == "backchannel" and named:
        why = f"you logged out of {named}"
    elif reason == "local_logout":
        why = _WHY["local_logout"].format(origin=named or "this app")
    else:
        why = _WHY.get(reason, f"your session ended ({reason})")
    at = marker.get("at")
    when = ""
    if isinstance(at, int | float):
        ago = max(0, round(time.time() - at))
        when = f" {ago} s ago"
    return f"You were signed out because {why}{when}."


def other_apps(this_app: str) -> list[tuple[str, str]]:
    """The demo's other apps, from ``EXAMPLE_OTHER_APPS`` (``name=url,name=url``)."""
    links = []
    for item in os.environ.get("EXAMPLE_OTHER_APPS", "").split(","):
        name, _, url = item.partition("=")
        if url and name.strip() != this_app:
            links.append((name.strip(), url.strip()))
    return links


def index_page(
    app_name: str, user: Mapping[str, Any] | None, signed_out: Mapping[str, Any] | None = None
) -> str:
    if user:
        name = user.get("preferred_username") or user.get("sub")
        body = (
            f'<p id="status">Logged in as <b id="username">{escape(str(name))}</b> '
            f'(Keycloak session <code id="sid">{escape(str(user.get("sid", "")))}</code>).</p>'
            '<p><a id="me" href="/me">/me</a> · <a id="logout" href="/logout">Log out</a></p>'
        )
    else:
        body = (
            '<p id="status">Not logged in.</p>'
            '<p><a id="login" href="/login">Log in with Keycloak</a></p>'
        )
    sentence = signed_out_sentence(signed_out, app_name)
    if sentence:
        body = f'<p id="signed-out" style="color:#a33">{escape(sentence)}</p>{body}'
    links = other_apps(app_name)
    if links:
        items = " · ".join(f'<a href="{escape(url)}/">{escape(name)}</a>' for name, url in links)
        body += f'<p id="other-apps">The other apps of this demo: {items}</p>'
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(app_name)}</title>"
        f"</head><body><h1>{escape(app_name)}</h1>{body}</body></html>"
    )


def login_failed_page(app_name: str) -> str:
    """What a login callback that is no login answers (with status 400): Keycloak's error
    (the user cancelled, access denied), a state this browser did not start (a forged,
    stale or replayed callback), a code or ID token that does not verify (a nonce of
    another login).  Nothing of the request is shown: ``error_description`` and the like
    are the sender's words, not Keycloak's; the app logs the reason."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(app_name)}</title>"
        f"</head><body><h1>{escape(app_name)}</h1>"
        '<p id="status">The login did not complete.</p>'
        '<p><a id="login" href="/login">Log in with Keycloak</a></p></body></html>'
    )
