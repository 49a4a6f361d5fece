"""The one HTML page both example apps show at ``/``."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any


def index_page(app_name: str, user: Mapping[str, Any] | None) -> str:
    if user:
        name = user.get("preferred_username") or user.get("sub")
        body = (
            f'<p id="status">Logged in as <b id="username">{escape(str(name))}</b> '
            f'(session <code id="sid">{escape(str(user.get("sid", "")))}</code>).</p>'
            '<p><a id="me" href="/me">/me</a> · <a id="logout" href="/logout">Log out</a></p>'
        )
    else:
        body = (
            '<p id="status">Not logged in.</p>'
            '<p><a id="login" href="/login">Log in with Keycloak</a></p>'
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(app_name)}</title>"
        f"</head><body><h1>{escape(app_name)}</h1>{body}</body></html>"
    )
