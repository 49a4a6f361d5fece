"""Front-channel logout and the logout path: what a review found, run as tests.

* A front-channel logout of the browser's own session ends it here as the logout path
  does: every source's cookie expired on the path the library set it (a mount's root
  path), the server-side session deleted from its backend, even when the revocation
  cannot be recorded.
* A mount prefix taken from the request's URL never puts raw text into a header.
* A path the logout may return to is always made absolute on the app's origin.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP
from tests.adapters.test_logout_leaves_nothing import (
    WriteFailingStore,
    serverside_worker,
    starsessions_cookies_left,
)
from tests.conftest import SESSION_SECRET, Harness, HarnessFactory, PortalClient, make_settings

FRONT = {"frontchannel_path": "/frontchannel-logout"}


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# ------------------------------------------------------------ front-channel: nothing left


def test_frontchannel_ends_the_starsessions_cookie_under_a_root_path(op: StandInOP) -> None:
    """starsessions sets its cookie on the root path when no ``cookie_path`` is given;
    the front-channel page must expire it there, as the logout path does, or the browser
    keeps the cookie of a session the OP just ended."""
    token = Harness("asgi", make_settings(op)).id_token(op, sid="fc-root-path")
    params = {"iss": op.issuer, "sid": "fc-root-path"}
    settings = make_settings(op, **FRONT)
    left, response = starsessions_cookies_left(settings, token, "/frontchannel-logout", params)
    assert response.status_code == 200
    assert left == [], response.headers.get_list("set-cookie")


@pytest.mark.parametrize("kind", ["flask-session", "starsessions"])
@pytest.mark.parametrize("store", ["working", "write-failing"])
def test_frontchannel_deletes_its_own_server_side_session(
    kind: str, store: str, op: StandInOP
) -> None:
    """Keycloak sends a client with front-channel logout on no back-channel request: the
    front-channel page is the only word this app gets.  Like the logout path, it deletes
    the browser's server-side session from its backend (no Redis index here) and expires
    its cookie, even when the revocation cannot be recorded (then it says 503)."""
    from tests.adapters.test_serverside import _sid, id_token

    settings = make_settings(op, **FRONT)
    with serverside_worker(kind, settings, store, "t-fc:") as (worker, stored):
        sid = _sid()
        cookie = worker.login(id_token(op, sid))
        assert worker.me(cookie).status_code == 200

        response = worker.request(
            "GET", "/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": sid}
        )

        assert response.status_code == (200 if store == "working" else 503)
        assert "no-store" in response.headers["cache-control"]
        expiries = [v for v in response.headers.get_list("set-cookie") if v.startswith("session=")]
        assert expiries, response.headers
        assert not stored(cookie), "the session is still in the backend after the logout"
        assert worker.me(cookie).status_code == 401


def test_frontchannel_expires_the_cookie_even_when_the_store_fails(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A signed cookie session: the revocation cannot be recorded (503, never a false
    success), but the browser's own cookie still ends, as on the logout path."""
    harness = make_harness(store=WriteFailingStore(), **FRONT)
    cookie = harness.session_cookie(op, sid="fc-store-down")
    response = harness.get(
        "/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": "fc-store-down"}
    )
    assert response.status_code == 503
    assert response.headers.get_list("cache-control") == ["no-cache, no-store"]
    assert "Max-Age=0" in response.headers["set-cookie"]


# ------------------------------------------------------------ a mount prefix from the URL


def _tenant_client(op: StandInOP) -> PortalClient:
    """An app under a Starlette ``Mount`` with a path parameter: its ``root_path`` is the
    decoded text of the request's URL, whatever a link puts there."""
    inner = Starlette(routes=[Route("/", lambda request: JSONResponse({}))])
    inner.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET)
    inner.add_middleware(
        asgi_adapter.SSOMiddleware, settings=make_settings(op), store=MemoryStore()
    )
    return PortalClient(Starlette(routes=[Mount("/{tenant}", app=inner)]), "http://app.test")


@pytest.mark.parametrize(
    ("tenant", "encoded"),
    [
        pytest.param("a%0D%0AX-Injected:%201", "/a%0D%0AX-Injected:%201", id="CRLF"),
        pytest.param("a%3B%20Domain%3Devil.test", "/a%3B%20Domain=evil.test", id="semicolon"),
        pytest.param("%E6%97%A5", "/%E6%97%A5", id="beyond latin-1"),
    ],
)
def test_a_mount_prefix_from_the_url_goes_into_headers_percent_encoded(
    tenant: str, encoded: str, op: StandInOP
) -> None:
    """The logout path puts the root path into the state cookie's ``Path`` and the return
    URL, the return into its ``Location``: decoded text there is a header injection (CR
    LF), a cookie attribute injection (``;``) or a 500 (beyond latin-1).  Percent-encoded
    it is the path the browser sends back, so the state cookie still matches."""
    client = _tenant_client(op)
    try:
        started = client.get(f"/{tenant}/logout")
        assert started.status_code == 302
        params = _query(started.headers["location"])
        assert params["post_logout_redirect_uri"] == f"http://app.test{encoded}/logout/complete"
        state_cookie = next(
            value
            for value in started.headers.get_list("set-cookie")
            if value.startswith("session_logout_state=")
        )
        assert f"; Path={encoded}/logout/complete;" in state_cookie
        back = client.get(
            f"/{tenant}/logout/complete",
            params={"state": params["state"]},
            headers={"Cookie": state_cookie.split(";")[0]},
        )
    finally:
        client.close()
    assert back.status_code == 302
    assert back.headers["location"] == f"http://app.test{encoded}/"
    for name, value in back.headers.multi_items():
        assert "\r" not in value, (name, value)
        assert "\n" not in value, (name, value)


# ------------------------------------------------------------ a path to return to


@pytest.mark.parametrize("post_logout_path", [None, "/logout/complete"])
def test_a_requested_path_naming_a_url_in_its_query_is_made_absolute(
    post_logout_path: str | None, make_harness: HarnessFactory
) -> None:
    """``/search?next=https://x`` is a path on this origin (allowed), yet it holds ``://``:
    it must still be made absolute, or Keycloak gets a relative post_logout_redirect_uri,
    which no "Valid post logout redirect URIs" entry matches (its error page, not the
    logout)."""
    harness = make_harness(post_logout_path=post_logout_path)
    requested = "/search?next=https://partner.example/x"
    started = harness.client.get("/logout", params={"post_logout_redirect_uri": requested})
    assert started.status_code == 302
    params = _query(started.headers["location"])
    if post_logout_path is None:
        assert params["post_logout_redirect_uri"] == f"http://app.test{requested}"
        return
    state_cookie = next(
        value.split(";")[0]
        for value in started.headers.get_list("set-cookie")
        if value.startswith("session_logout_state=")
    )
    back = harness.client.get(
        "/logout/complete", params={"state": params["state"]}, headers={"Cookie": state_cookie}
    )
    assert back.status_code == 302
    assert back.headers["location"] == f"http://app.test{requested}"
