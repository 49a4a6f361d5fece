"""The middleware's behaviour table, run through both adapters (ASGI and WSGI).

Ordinary requests (no cookie, live session, revoked session), the logout path (redirect,
cookie expiry, open-redirect guard, API clients), front-channel logout and Keycloak's
legacy admin URL.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kc_sso_middleware import Revocation
from kc_sso_middleware.events import Event
from kc_sso_middleware.testing import StandInOP, mint_jwt
from tests.conftest import (
    CLIENT_ID,
    Clock,
    HarnessFactory,
    admin_token,
    direct_grant,
    post_admin,
)


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _final_target(harness: Any, logout: Any) -> str:
    """Where the browser lands: back from Keycloak with the logout's state, then on."""
    params = _query(logout.headers["location"])
    back = urlsplit(params.get("post_logout_redirect_uri") or params["redirect_uri"])
    assert back.path == "/logout/complete"
    # On the scheme Keycloak sends the browser back on: the state cookie is Secure on https.
    response = harness.client.get(
        f"{back.scheme}://app.test{back.path}", params={"state": params["state"]}
    )
    assert response.status_code == 302, response.text
    target: str = response.headers["location"]
    return target


def _revoke(harness: Any, *entries: Revocation) -> None:
    assert harness.store.record(entries)


def _sid_entry(sid: str, issuer: str = "") -> Revocation:
    return Revocation.session(
        issuer or _ISSUER[0], sid, client_id=CLIENT_ID, expires_at=time.time() + 3600
    )


_ISSUER: list[str] = []


@pytest.fixture(autouse=True)
def _remember_issuer(op: StandInOP) -> None:
    _ISSUER[:] = [op.issuer]


# ------------------------------------------------------------------ ordinary requests


def test_request_without_cookie_passes_untouched(make_harness: HarnessFactory) -> None:
    """No session cookie: the app answers as if there were no middleware."""
    harness = make_harness()
    response = harness.client.get("/", headers={"Cookie": "theme=dark"})
    assert response.status_code == 200
    assert response.json() == {"session": {}, "cookie": "theme=dark"}
    assert "set-cookie" not in response.headers


def test_live_session_reaches_the_app(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A valid, unrevoked session reaches the app unchanged."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="live")
    assert "id_token" in harness.seen_session(cookie)


def test_revoked_session_reaches_app_as_anonymous(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Revoked sid: the app sees no session cookie, other cookies stay, the cookie expires."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="gone")
    _revoke(harness, _sid_entry("gone"))
    response = harness.client.get("/", headers={"Cookie": f"theme=dark; session={cookie}; lang=en"})
    assert response.status_code == 200
    assert response.json() == {"session": {}, "cookie": "theme=dark; lang=en"}
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith("session=;")
    assert "Max-Age=0" in set_cookie
    assert "Path=/" in set_cookie


def test_duplicate_session_cookies_are_all_checked(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A revoked cookie cannot ride next to a valid one: every duplicate is checked."""
    harness = make_harness()
    good = harness.session_cookie(op, sid="fine")
    bad = harness.session_cookie(op, sid="revoked-dup")
    _revoke(harness, _sid_entry("revoked-dup"))
    response = harness.client.get("/", headers={"Cookie": f"session={good}; session={bad}"})
    assert response.json()["session"] == {}


def test_app_setting_a_new_session_wins_over_expiry(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """When the app starts a fresh session on the anonymous request, no expiry is added."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="renewed")
    _revoke(harness, _sid_entry("renewed"))
    response = harness.get("/login-again", cookie)
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1
    assert "Max-Age=0" not in cookies[0]


def test_revoked_action_401(make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_REVOKED_ACTION=401 answers 401 JSON and expires the cookie."""
    harness = make_harness(revoked_action="401")
    cookie = harness.session_cookie(op, sid="gone-401")
    _revoke(harness, _sid_entry("gone-401"))
    response = harness.get("/", cookie)
    assert response.status_code == 401
    assert response.json()["error"] == "session_revoked"
    assert "Max-Age=0" in response.headers["set-cookie"]


def test_user_wide_revocation_spares_later_logins(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A user entry revokes sessions that began before not_before, not those after."""
    harness = make_harness()
    now = time.time()
    before = harness.session_cookie(op, sid="u-a", sub="carol", auth_time=now - 50)
    after = harness.session_cookie(op, sid="u-b", sub="carol", auth_time=now)
    _revoke(
        harness, Revocation.user(op.issuer, "carol", not_before=now - 10, expires_at=now + 3600)
    )
    assert harness.seen_session(before) == {}
    assert harness.seen_session(after) != {}


def test_session_older_than_max_lifetime_is_refused(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Sessions older than KC_SSO_MAX_SESSION_LIFETIME are treated as ended."""
    clock = Clock()
    harness = make_harness(clock=clock, max_session_lifetime=3600)
    cookie = harness.session_cookie(op, sid="aging", auth_time=clock.now - 10)
    assert harness.seen_session(cookie) != {}
    clock.now += 3600
    assert harness.seen_session(cookie) == {}


def test_tampered_cookie_is_taken_out_and_expired(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A cookie that does not verify cannot be vouched for: out of the request, expired."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="t") + "x"
    response = harness.client.get("/", headers={"Cookie": f"a=1; session={cookie}; b=2"})
    assert response.status_code == 200
    assert response.json() == {"session": {}, "cookie": "a=1; b=2"}
    assert "Max-Age=0" in response.headers["set-cookie"]


def test_verified_session_without_keycloak_login_passes(make_harness: HarnessFactory) -> None:
    """A session the app signed that holds no login yet (e.g. OAuth state) stays as it is."""
    from kc_sso_middleware.testing import make_session_cookie
    from tests.conftest import SESSION_SECRET

    harness = make_harness()
    cookie = make_session_cookie(SESSION_SECRET, {"state": "abc"}, format=harness.format)
    response = harness.get("/", cookie)
    assert response.json()["session"] == {"state": "abc"}
    assert "set-cookie" not in response.headers


def test_claims_dict_without_raw_id_token(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A session holding only the claims dict (no raw ID token) is checked too."""
    from kc_sso_middleware.testing import make_session_cookie
    from tests.conftest import SESSION_SECRET

    harness = make_harness()
    cookie = make_session_cookie(
        SESSION_SECRET,
        {"user": {"sub": "dave", "sid": "claims-only", "auth_time": int(time.time())}},
        format=harness.format,
    )
    assert harness.seen_session(cookie) != {}
    _revoke(harness, _sid_entry("claims-only"))
    assert harness.seen_session(cookie) == {}


# ------------------------------------------------------------------ logout path


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_logout_redirects_to_end_session(
    method: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Logout expires the cookie, revokes the sid and redirects with RP-initiated params."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="bye")
    response = harness.client.request(method, "/logout", headers={"Cookie": f"session={cookie}"})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(f"{op.issuer}/protocol/openid-connect/logout?")
    params = _query(location)
    assert params["client_id"] == CLIENT_ID
    assert params["post_logout_redirect_uri"] == "http://app.test/logout/complete"
    assert _final_target(harness, response) == "http://app.test/"
    assert params["id_token_hint"].count(".") == 2
    assert len(params["state"]) >= 16
    assert "redirect_uri" not in params
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert response.headers["cache-control"] == "no-store"
    # a saved copy of the old cookie no longer works
    assert harness.seen_session(cookie) == {}


@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        pytest.param("de", ["de"], id="one tag"),
        pytest.param("fr-CA fr en", ["fr-CA fr en"], id="a list"),
        pytest.param('de"><script>', None, id="not BCP 47: dropped"),
        pytest.param("x" * 40, None, id="too long a subtag: dropped"),
    ],
)
def test_logout_passes_ui_locales_on(
    requested: str, sent: list[str] | None, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """RP-Initiated Logout 1.0 §2: ui_locales goes to Keycloak, which shows its logout
    pages in them; a value that is no list of language tags is dropped, never a failure."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid=f"locales-{len(requested)}")
    response = harness.client.get(
        "/logout", params={"ui_locales": requested}, headers={"Cookie": f"session={cookie}"}
    )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query.get("ui_locales") == sent
    assert harness.seen_session(cookie) == {}


def test_the_confirmation_page_keeps_ui_locales(make_harness: HarnessFactory) -> None:
    harness = make_harness()
    page = harness.client.get(
        "/logout", params={"ui_locales": "de"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert '<input type="hidden" name="ui_locales" value="de">' in page.text
    confirmed = harness.client.post(
        "/logout", data={"ui_locales": "de"}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert parse_qs(urlsplit(confirmed.headers["location"]).query)["ui_locales"] == ["de"]


def test_logout_keeps_the_end_session_endpoints_own_query(make_harness: HarnessFactory) -> None:
    """A query in the discovered endpoint is kept, and a client_id it holds is not repeated
    (two values would leave Keycloak to pick one)."""
    with StandInOP() as querying_op:
        querying_op.register_client(CLIENT_ID, "s")
        querying_op.end_session_query = f"kc_locale=de&client_id={CLIENT_ID}"
        harness = make_harness(issuer=querying_op.issuer)
        cookie = harness.session_cookie(querying_op, sid="bye-query")
        response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}"})
    assert response.status_code == 302
    sent = parse_qs(urlsplit(response.headers["location"]).query)
    assert sent["kc_locale"] == ["de"]
    assert sent["client_id"] == [CLIENT_ID]
    assert len(sent["state"]) == 1
    assert sent["id_token_hint"][0].count(".") == 2


def test_local_logout_spares_a_new_login_into_the_same_keycloak_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A local logout ends this app session, not the sid: a later SSO login still works.

    When Keycloak's session survives (the user left the logout confirmation page), logging
    in again gets a new ID token with the same sid; refusing it would loop forever.
    """
    clock = Clock()
    harness = make_harness(clock=clock)
    old = harness.session_cookie(op, sid="kept-alive", auth_time=clock.now - 100)
    harness.client.get("/logout", headers={"Cookie": f"session={old}"})
    clock.now += 5
    relogin = harness.session_cookie(
        op, sid="kept-alive", auth_time=clock.now - 105, issued_at=clock.now
    )
    assert harness.seen_session(old) == {}
    assert harness.seen_session(relogin) != {}


def test_logout_state_is_fresh_each_time(make_harness: HarnessFactory) -> None:
    """Every logout gets a new state value."""
    harness = make_harness()
    first = _query(harness.client.get("/logout").headers["location"])["state"]
    second = _query(harness.client.get("/logout").headers["location"])["state"]
    assert first != second


def test_logout_without_session_still_redirects(make_harness: HarnessFactory) -> None:
    """No session: still a redirect, without id_token_hint (Keycloak asks to confirm)."""
    harness = make_harness()
    response = harness.client.get("/logout")
    assert response.status_code == 302
    assert "id_token_hint" not in _query(response.headers["location"])


def test_configured_post_logout_redirect_uri(make_harness: HarnessFactory) -> None:
    """KC_SSO_POST_LOGOUT_REDIRECT_URI is sent as configured."""
    harness = make_harness(post_logout_redirect_uri="https://app.example/bye")
    logout = harness.client.get("/logout")
    params = _query(logout.headers["location"])
    # Keycloak sends the browser back to the app's public origin, the one configured
    assert params["post_logout_redirect_uri"] == "https://app.example/logout/complete"
    assert _final_target(harness, logout) == "https://app.example/bye"


def test_a_requested_path_lands_on_the_public_origin(make_harness: HarnessFactory) -> None:
    """Behind a proxy (the request's origin is internal), a requested path is made absolute
    on the public origin KC_SSO_POST_LOGOUT_REDIRECT_URI names."""
    harness = make_harness(post_logout_redirect_uri="https://app.example/bye")
    logout = harness.client.get("/logout", params={"post_logout_redirect_uri": "/goodbye"})
    assert _final_target(harness, logout) == "https://app.example/goodbye"


def test_legacy_redirect_uri_switch(make_harness: HarnessFactory) -> None:
    """KC_SSO_LEGACY_REDIRECT_URI sends redirect_uri for Keycloak before 18."""
    harness = make_harness(legacy_redirect_uri=True)
    logout = harness.client.get("/logout")
    params = _query(logout.headers["location"])
    assert params["redirect_uri"] == "http://app.test/logout/complete"
    assert "post_logout_redirect_uri" not in params
    assert _final_target(harness, logout) == "http://app.test/"


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        pytest.param("/goodbye", "http://app.test/goodbye", id="same-origin path"),
        pytest.param("http://app.test/x?y=1", "http://app.test/x?y=1", id="same-origin URL"),
        pytest.param(
            "https://partner.example/done", "https://partner.example/done", id="allow-listed"
        ),
        pytest.param("https://evil.example/", "http://app.test/", id="foreign origin"),
        pytest.param("//evil.example/", "http://app.test/", id="scheme-relative"),
        pytest.param("/\\evil.example", "http://app.test/", id="backslash trick"),
        pytest.param("javascript:alert(1)", "http://app.test/", id="javascript scheme"),
        pytest.param(
            "https://partner.example.evil.com/",
            "http://app.test/",
            id="allow-list prefix confusion",
        ),
        pytest.param("http://app.test.evil.com/", "http://app.test/", id="origin prefix confusion"),
        pytest.param(
            "https://shared.example/team-a/../team-b/x", "http://app.test/", id="dot segments"
        ),
        pytest.param(
            "https://shared.example/team-a/%2e%2e/team-b/x",
            "http://app.test/",
            id="encoded dot segments",
        ),
        pytest.param(
            "https://shared.example/team-a/.%2E/team-b/x", "http://app.test/", id="mixed dots"
        ),
        pytest.param(
            "https://shared.example/team-a/..;/team-b/x",
            "http://app.test/",
            id="dot segment with a path parameter (Tomcat, Jetty, Spring resolve it)",
        ),
        pytest.param(
            "https://shared.example/team-a/%2E%2e;x/team-b/x",
            "http://app.test/",
            id="encoded dot segment with a path parameter",
        ),
        pytest.param(
            "https://shared.example/team-a/..x;/y",
            "https://shared.example/team-a/..x;/y",
            id="a name that only starts with dots",
        ),
        pytest.param(
            "https://shared.example/team-a/done", "https://shared.example/team-a/done", id="prefix"
        ),
    ],
)
def test_post_logout_target_is_never_an_open_redirect(
    requested: str, expected: str, make_harness: HarnessFactory
) -> None:
    """A requested post_logout_redirect_uri is honoured only same-origin or allow-listed."""
    harness = make_harness(
        logout_redirect_allowlist=("https://partner.example", "https://shared.example/team-a/")
    )
    response = harness.client.get("/logout", params={"post_logout_redirect_uri": requested})
    assert _final_target(harness, response) == expected


@pytest.mark.parametrize(
    ("url", "secure"), [("https://app.test/logout", True), ("http://app.test/logout", False)]
)
def test_the_logout_state_cookie_is_secure_on_https(
    url: str, secure: bool, make_harness: HarnessFactory
) -> None:
    """The state cookie carries Secure when the app's origin is https, whatever
    KC_SSO_SESSION_COOKIE_SECURE says (that one is about the session cookie)."""
    harness = make_harness()
    response = harness.client.get(url)
    assert response.status_code == 302
    state_cookies = [
        value
        for name, value in response.headers.multi_items()
        if name == "set-cookie" and value.startswith("session_logout_state=")
    ]
    assert len(state_cookies) == 1
    assert ("; Secure" in state_cookies[0]) is secure


def test_api_client_logout_ends_keycloak_session_server_side(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """An API client posting its refresh token with its bearer token ends the OP session."""
    harness = make_harness()
    tokens = direct_grant(op)
    before = len(op.end_session_requests)
    response = harness.client.post(
        "/logout",
        data={"refresh_token": tokens["refresh_token"]},
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {tokens['access_token']}",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"logged_out": True, "op_session_ended": True}
    sent = op.end_session_requests[before]
    assert sent["refresh_token"] == tokens["refresh_token"]
    assert sent["client_id"] == CLIENT_ID
    assert sent["client_secret"] == "app-secret"


def test_api_client_logout_form_type_is_case_insensitive(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Media types are case-insensitive (RFC 9110 §8.3.1): a form sent as
    Application/x-www-form-urlencoded is read, so the Keycloak session is ended
    server-side rather than the client being redirected with the session's ID token."""
    harness = make_harness()
    tokens = direct_grant(op)
    before = len(op.end_session_requests)
    response = harness.client.post(
        "/logout",
        content=f"refresh_token={tokens['refresh_token']}",
        headers={
            "Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            "Authorization": f"Bearer {tokens['access_token']}",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"logged_out": True, "op_session_ended": True}
    assert op.end_session_requests[before]["refresh_token"] == tokens["refresh_token"]


def test_api_client_logout_that_keycloak_answers_too_late_is_a_504(
    make_harness: HarnessFactory,
) -> None:
    """Keycloak ends the session, then answers after KC_SSO_HTTP_TIMEOUT (waiting on a slow
    back-channel URL, or on this very app when one thread serves it): 504 op_timeout, not
    a 502 that says the session was kept; this app's session is ended either way."""
    with StandInOP() as slow_op:
        slow_op.register_client(CLIENT_ID, "app-secret")
        slow_op.logout_delay = 1.5
        harness = make_harness(issuer=slow_op.issuer, http_timeout=0.5)
        seen: list[Event] = []
        harness.events.subscribe(seen.append, names=["logout.api"])
        tokens = direct_grant(slow_op)
        response = harness.client.post(
            "/logout",
            data={"refresh_token": tokens["refresh_token"]},
            headers={
                "Accept": "application/json",
                "Authorization": f"Bearer {tokens['access_token']}",
            },
        )
        assert response.status_code == 504, response.text
        body = response.json()
        assert body["error"] == "op_timeout"
        assert body["op_error"] == "timeout"
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert not slow_op.sessions  # Keycloak did end it
        harness.events.drain()
        assert [(e["op_ended"], e["code"]) for e in seen] == [(None, "op_timeout")]


def test_api_client_logout_surfaces_keycloak_error(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Without client credentials Keycloak answers unauthorized_client; the error is passed on."""
    harness = make_harness(client_secret="wrong-secret")
    tokens = direct_grant(op)
    response = harness.client.post(
        "/logout",
        data={"refresh_token": tokens["refresh_token"]},
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {tokens['access_token']}",
        },
    )
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "op_logout_failed"
    assert body["op_error"] == "unauthorized_client"
    assert "KC_SSO_CLIENT_SECRET" in body["error_description"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_api_client_logout_refuses_a_refresh_token_in_the_url(
    make_harness: HarnessFactory, op: StandInOP, method: str
) -> None:
    """A refresh token in the query string (logged by every proxy) is refused: nothing is
    ended, locally or at Keycloak."""
    harness = make_harness()
    tokens = direct_grant(op)
    before = len(op.end_session_requests)
    response = harness.client.request(
        method,
        "/logout",
        params={"refresh_token": tokens["refresh_token"]},
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {tokens['access_token']}",
        },
    )
    assert response.status_code == 400, response.text
    assert "never in the URL" in response.json()["error_description"]
    assert len(op.end_session_requests) == before
    assert "set-cookie" not in response.headers


def test_api_client_logout_without_refresh_token(make_harness: HarnessFactory) -> None:
    """A JSON client without a refresh token is logged out locally and told where to go."""
    harness = make_harness()
    response = harness.client.get("/logout", headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["op_session_ended"] is False
    assert body["end_session_endpoint"].endswith("/protocol/openid-connect/logout")


def test_logout_other_method_gets_405(make_harness: HarnessFactory) -> None:
    """The logout path serves GET and POST only."""
    assert make_harness().client.request("PUT", "/logout").status_code == 405


# ------------------------------------------------------------------ front-channel

FRONT = {"frontchannel_path": "/frontchannel-logout"}


def test_frontchannel_is_off_by_default(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Without KC_SSO_FRONTCHANNEL_PATH the path is the app's; nothing is revoked."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="fc-off")
    response = harness.get(
        "/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": "fc-off"}
    )
    assert response.status_code == 404
    assert harness.seen_session(cookie) != {}


def test_frontchannel_logout_ends_the_browsers_own_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Matching iss and sid end the browser's own session: cookie expired, sid revoked."""
    harness = make_harness(**FRONT)
    cookie = harness.session_cookie(op, sid="fc-1")
    response = harness.get("/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": "fc-1"})
    assert response.status_code == 200
    assert "no-store" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache"
    assert "Max-Age=0" in response.headers["set-cookie"]
    origin = op.issuer.split("/realms/")[0]
    assert response.headers["content-security-policy"] == f"frame-ancestors {origin}"
    assert harness.seen_session(cookie) == {}


def test_frontchannel_logout_of_duplicate_cookies_ends_the_one_the_app_reads(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Two valid session cookies (set on two paths, say): the framework reads one of them
    (Starlette the last, Werkzeug the first), and Keycloak's front-channel call for that
    session ends it, whichever of the two stood first in the header."""
    harness = make_harness(**FRONT)
    first, second = harness.session_cookie(op, sid="dup-1"), harness.session_cookie(op, sid="dup-2")
    both = {"Cookie": f"session={first}; session={second}"}
    read = harness.client.get("/", headers=both).json()["session"]
    used, sid = (first, "dup-1") if read == harness.seen_session(first) else (second, "dup-2")
    response = harness.client.get(
        "/frontchannel-logout", params={"iss": op.issuer, "sid": sid}, headers=both
    )
    assert response.status_code == 200
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert harness.seen_session(used) == {}


@pytest.mark.parametrize(
    "fetch",
    [
        pytest.param({}, id="no fetch metadata"),
        pytest.param(
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "document"},
            id="cross-site navigation",
        ),
        pytest.param(
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "iframe"}, id="cross-site frame"
        ),
    ],
)
def test_frontchannel_logout_naming_no_session_is_refused(
    fetch: dict[str, str], make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Without iss and sid the request is one any page can make (a link carries the cookie):
    400 session_required, the session kept, unless KC_SSO_FRONTCHANNEL_SESSION_REQUIRED=false."""
    harness = make_harness(**FRONT)
    refused: list[Event] = []
    harness.events.subscribe(refused.append, names=["frontchannel.rejected"])
    cookie = harness.session_cookie(op, sid="fc-2")
    response = harness.get("/frontchannel-logout", cookie, headers=fetch)
    assert response.status_code == 400
    assert response.json()["error_description"].startswith("session_required:")
    assert response.headers.get_list("cache-control") == ["no-cache, no-store"]
    assert "set-cookie" not in response.headers
    assert harness.seen_session(cookie) != {}
    harness.events.drain()
    assert [event.get("code") for event in refused] == ["session_required"]


def test_frontchannel_logout_with_own_cookie_when_no_session_is_required(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """With KC_SSO_FRONTCHANNEL_SESSION_REQUIRED=false a request without parameters ends the
    browser's own session and expires its cookie."""
    harness = make_harness(**FRONT, frontchannel_session_required=False)
    cookie = harness.session_cookie(op, sid="fc-2b")
    response = harness.get("/frontchannel-logout", cookie)
    assert response.status_code == 200
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert harness.seen_session(cookie) == {}


@pytest.mark.parametrize("cookie_sent", [False, True], ids=["no cookie", "another session"])
def test_frontchannel_logout_that_ends_nothing_says_so(
    cookie_sent: bool, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak's frame without this app's cookie (withheld by SameSite, or after a local
    logout) or naming another session ends nothing, and frontchannel.ignored says which."""
    harness = make_harness(**FRONT)
    ignored: list[Event] = []
    harness.events.subscribe(ignored.append, names=["frontchannel.ignored"])
    cookie = harness.session_cookie(op, sid="fc-kept") if cookie_sent else None
    response = harness.get(
        "/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": "fc-elsewhere"}
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    harness.events.drain()
    assert [event["had_session"] for event in ignored] == [cookie_sent]
    if cookie is not None:
        assert harness.seen_session(cookie) != {}


def test_frontchannel_cannot_end_another_browsers_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A sid that is not the requesting browser's own session is not revoked (an <img> tag)."""
    harness = make_harness(**FRONT)
    victim = harness.session_cookie(op, sid="victim")
    attacker = harness.session_cookie(op, sid="attacker")
    response = harness.get(
        "/frontchannel-logout", attacker, params={"iss": op.issuer, "sid": "victim"}
    )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    response = harness.client.get(
        "/frontchannel-logout", params={"iss": op.issuer, "sid": "victim"}
    )
    assert response.status_code == 200
    assert harness.seen_session(victim) != {}
    assert harness.seen_session(attacker) != {}


def test_an_anonymous_front_channel_request_cannot_store_a_long_sid(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """With KC_SSO_FRONTCHANNEL_REVOKE_OTHERS a forged request is bounded in bytes too: a
    sid longer than any Keycloak sid is refused, not kept as an entry's label."""
    harness = make_harness(**FRONT, frontchannel_revoke_others=True)
    entries: list[object] = []
    harness.events.on_revocation(entries.append)
    response = harness.client.get(
        "/frontchannel-logout", params={"iss": op.issuer, "sid": "x" * 16384}
    )
    assert response.status_code == 400
    longest = harness.client.get(
        "/frontchannel-logout", params={"iss": op.issuer, "sid": "y" * 255}
    )
    assert longest.status_code == 200
    deadline = time.monotonic() + 5
    while not entries and time.monotonic() < deadline:
        time.sleep(0.01)  # callbacks run off the request
    assert [event.fields["key"] for event in entries] == ["y" * 255]  # type: ignore[attr-defined]


def test_frontchannel_revoke_others_is_an_opt_in(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """KC_SSO_FRONTCHANNEL_REVOKE_OTHERS lets the OP's iframe end any sid it names."""
    harness = make_harness(**FRONT, frontchannel_revoke_others=True)
    victim = harness.session_cookie(op, sid="fc-other")
    response = harness.client.get(
        "/frontchannel-logout", params={"iss": op.issuer, "sid": "fc-other"}
    )
    assert response.status_code == 200
    assert harness.seen_session(victim) == {}


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"iss": "http://evil.example/realms/x", "sid": "fc-3"}, id="wrong iss"),
        pytest.param({"sid": "fc-3"}, id="sid without iss"),
        pytest.param({"iss": "ISSUER"}, id="iss without sid"),
        pytest.param({"iss": "ISSUER", "sid": "x" * 256}, id="sid too long"),
        pytest.param({"iss": "ISSUER", "sid": "fc-3\u2028"}, id="sid not printable"),
    ],
)
def test_frontchannel_logout_rejects_bad_parameters(
    params: dict[str, str], make_harness: HarnessFactory, op: StandInOP
) -> None:
    """iss must match and come together with sid; otherwise 400 and nothing revoked."""
    harness = make_harness(**FRONT)
    cookie = harness.session_cookie(op, sid="fc-3")
    params = {k: (op.issuer if v == "ISSUER" else v) for k, v in params.items()}
    response = harness.get("/frontchannel-logout", cookie, params=params)
    assert response.status_code == 400
    # Front-Channel Logout 1.0 §2's RECOMMENDED directives, on refusals as on the page.
    assert response.headers.get_list("cache-control") == ["no-cache, no-store"]
    assert response.headers["pragma"] == "no-cache"
    assert harness.seen_session(cookie) != {}


# ------------------------------------------------------------------ legacy admin URL


def test_admin_logout_all_revokes_every_earlier_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """k_logout without session ids ("sign out all sessions") ends every current session."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="adm-1", auth_time=time.time() - 5)
    response = post_admin(
        harness, "/k_logout", admin_token(op, "LOGOUT", notBefore=int(time.time()))
    )
    assert response.status_code == 200
    assert harness.seen_session(cookie) == {}


def test_admin_logout_of_named_sessions(make_harness: HarnessFactory, op: StandInOP) -> None:
    """k_logout with keycloakSessionIds ends just those sessions."""
    harness = make_harness()
    ended = harness.session_cookie(op, sid="adm-2")
    kept = harness.session_cookie(op, sid="adm-3")
    response = post_admin(
        harness, "/k_logout", admin_token(op, "LOGOUT", keycloakSessionIds=["adm-2"])
    )
    assert response.status_code == 200
    assert harness.seen_session(ended) == {}
    assert harness.seen_session(kept) != {}


def test_admin_push_not_before(make_harness: HarnessFactory, op: StandInOP) -> None:
    """k_push_not_before revokes sessions that began before notBefore."""
    harness = make_harness()
    now = time.time()
    old = harness.session_cookie(op, sid="nb-1", auth_time=now - 100)
    new = harness.session_cookie(op, sid="nb-2", auth_time=now)
    response = post_admin(
        harness,
        "/k_push_not_before",
        admin_token(op, "PUSH_NOT_BEFORE", notBefore=int(now - 10)),
    )
    assert response.status_code == 200
    assert harness.seen_session(old) == {}
    assert harness.seen_session(new) != {}


def test_admin_test_availability_as_keycloak_sends_it(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak's "Test cluster availability" posts a TestAvailabilityAction to
    k_test_available whose action is "TEST_AVAILABILITY" (TestAvailabilityAction.java,
    ResourceAdminManager.sendTestNodeAvailabilityRequest): it must answer 200."""
    harness = make_harness()
    response = post_admin(harness, "/k_test_available", admin_token(op, "TEST_AVAILABILITY"))
    assert response.status_code == 200, response.text
    refused = post_admin(harness, "/k_test_available", admin_token(op, "TEST_AVAILABLE"))
    assert refused.status_code == 400  # a name Keycloak never sends
    assert refused.json()["error_description"].startswith("bad_action:")


@pytest.mark.parametrize(
    ("claims", "status", "code"),
    [
        pytest.param({"resource": "other"}, 400, "bad_resource", id="other resource"),
        pytest.param({"action": "PUSH_NOT_BEFORE"}, 400, "bad_action", id="wrong action"),
        pytest.param({"expiration": 1}, 400, "expired", id="expired"),
        pytest.param({"id": None}, 400, "missing_id", id="no id"),
    ],
)
def test_admin_action_rules(
    claims: dict[str, Any], status: int, code: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Admin actions are checked like the old adapters did: resource, action, expiration."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="adm-rule")
    response = post_admin(harness, "/k_logout", admin_token(op, "LOGOUT", **claims))
    assert response.status_code == status
    assert response.json()["error_description"].startswith(f"{code}:")
    assert harness.seen_session(cookie) != {}


def test_admin_bad_signature_gets_403(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A forged admin action is refused with 403, as old Keycloak adapters did."""
    from joserfc.jwk import RSAKey

    harness = make_harness()
    forger = RSAKey.generate_key(2048, parameters={"kid": op.key.kid})
    forged = mint_jwt(
        forger,
        {"id": "x", "expiration": int(time.time()) + 30, "resource": CLIENT_ID, "action": "LOGOUT"},
    )
    assert post_admin(harness, "/k_logout", forged).status_code == 403


def test_admin_replay_is_refused(make_harness: HarnessFactory, op: StandInOP) -> None:
    """The same admin action id is accepted once."""
    harness = make_harness()
    body = admin_token(op, "LOGOUT", keycloakSessionIds=["adm-r"])
    assert post_admin(harness, "/k_logout", body).status_code == 200
    assert post_admin(harness, "/k_logout", body).status_code == 400


def test_admin_path_can_be_turned_off(make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_ADMIN_PATH=off leaves /k_logout to the app."""
    harness = make_harness(admin_path=None)
    response = post_admin(harness, "/k_logout", admin_token(op, "LOGOUT"))
    assert response.status_code in (404, 405)


def test_sign_out_all_ends_a_session_of_its_own_second(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Token times are whole seconds: a session begun in the very second of a "sign out
    all" cannot be told from one begun after it, and is ended; the next second's works."""
    clock = Clock()
    clock.now = float(int(clock.now)) + 0.7
    harness = make_harness(clock=clock)
    earlier = harness.session_cookie(op, sid="same-second", auth_time=int(clock.now))
    assert harness.seen_session(earlier) != {}
    notice = admin_token(op, "LOGOUT", notBefore=int(clock.now))  # as Keycloak sends it
    assert post_admin(harness, "/k_logout", notice).status_code == 200
    assert harness.seen_session(earlier) == {}
    clock.now = float(int(clock.now) + 1)
    fresh = harness.session_cookie(op, sid="next-second", auth_time=int(clock.now))
    assert harness.seen_session(fresh) != {}
