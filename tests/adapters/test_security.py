"""Attacks on the middleware, through both adapters and the frameworks' own parsers.

The middleware must decide on exactly what the framework will read: a revoked session sent
in any form the framework accepts (quoted, escaped, duplicated, split over two headers) is
refused, a value it cannot vouch for never reaches the app, and nothing one issuer or
client writes touches another's sessions.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jws

from kc_sso_middleware import ConfigurationError, Revocation, Settings
from kc_sso_middleware.stores import MemoryStore, StoreStatus
from kc_sso_middleware.testing import BACKCHANNEL_EVENT, StandInOP, make_session_cookie, mint_jwt
from tests.conftest import (
    CLIENT_ID,
    SESSION_SECRET,
    Clock,
    Harness,
    HarnessFactory,
    admin_token,
    direct_grant,
    post_admin,
)

BACKCHANNEL = "/backchannel-logout"

# ------------------------------------------------------------------ cookie forms


def _octal_first(value: str) -> str:
    return f'"\\{ord(value[0]):03o}{value[1:]}"'


#: name -> how the Cookie header(s) carry the session value ``v`` (and junk ``j``)
FORMS: dict[str, Callable[[str], list[str]]] = {
    "plain": lambda v: [f"session={v}"],
    "quoted": lambda v: [f'session="{v}"'],
    "backslash escape": lambda v: [f'session="\\{v}"'],
    "octal escape": lambda v: [f"session={_octal_first(v)}"],
    "junk first": lambda v: [f"session=junk.value.x; session={v}"],
    "junk last": lambda v: [f"session={v}; session=junk.value.x"],
    "spaces around =": lambda v: [f"theme=dark;   session = {v} ; a=b"],
    "tab before": lambda v: [f"a=b;\tsession={v}"],
    # Spaces str.strip() knows and bytes.isspace() does not (Starlette strips them).
    "unit separator before": lambda v: [f"session=\x1f{v}"],
    "no-break space after": lambda v: [f"session={v}\xa0; a=b"],
    # A neighbour that is not UTF-8: the framework still reads the session.
    "latin-1 neighbour, quoted": lambda v: [f'a=\xff; session="{v}"'],
    "latin-1 neighbour, twice": lambda v: [f"a=\xff; session={v}; session={v}"],
}
#: forms only ASGI servers produce: several Cookie headers
ASGI_FORMS: dict[str, Callable[[str], list[str]]] = {
    "second header": lambda v: ["a=1", f"session={v}"],
    "both headers": lambda v: [f"session={v}", "session=junk.value.x"],
}


def _send(harness: Harness, headers: list[str], path: str = "/") -> httpx.Response:
    return harness.client.get(path, headers=[("Cookie", h.encode("latin-1")) for h in headers])


def _framework_reads(harness: Harness, headers: list[str]) -> str | None:
    """What the framework's own parser gives the app for ``session``."""
    if harness.kind == "asgi":
        from starlette.requests import HTTPConnection

        scope = {"type": "http", "headers": [(b"cookie", h.encode("latin-1")) for h in headers]}
        return HTTPConnection(scope).cookies.get("session")
    from werkzeug.wrappers import Request

    return Request({"HTTP_COOKIE": ";".join(headers)}).cookies.get("session")


def _forms(harness: Harness) -> dict[str, Callable[[str], list[str]]]:
    return {**FORMS, **ASGI_FORMS} if harness.kind == "asgi" else FORMS


def _read_as(harness: Harness, cookie: str) -> dict[str, Callable[[str], list[str]]]:
    """The forms the framework reads as ``cookie`` itself (in the others it reads a value
    that does not verify, taken out before the app: see the test after these)."""
    forms = _forms(harness).items()
    read = {name: form for name, form in forms if _framework_reads(harness, form(cookie)) == cookie}
    assert "plain" in read
    assert "latin-1 neighbour, quoted" in read
    return read


def _ways_to_revoke(
    harness: Harness, op: StandInOP, clock: Clock
) -> dict[str, tuple[str, Callable[[], None]]]:
    """Each way a session can be revoked: (its cookie, the action revoking it)."""
    now = clock.now

    def store(entry: Revocation) -> Callable[[], None]:
        def record() -> None:
            assert harness.store.record([entry])

        return record

    sid_cookie = harness.session_cookie(op, sid="bcl", sub="u1", auth_time=now - 10)
    user_cookie = harness.session_cookie(op, sid="usr", sub="u2", auth_time=now - 10)
    all_cookie = harness.session_cookie(op, sid="all", sub="u3", auth_time=now - 10)
    local_cookie = harness.session_cookie(op, sid="loc", sub="u4", auth_time=now - 10)
    old_cookie = harness.session_cookie(op, sid="old", sub="u5", auth_time=now - 10)

    def local_logout() -> None:
        harness.client.get("/logout", headers={"Cookie": f"session={local_cookie}"})

    def age() -> None:
        clock.now += harness.settings.max_session_lifetime + 1

    return {
        "back-channel": (
            sid_cookie,
            lambda: harness.client.post(
                BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="bcl")}
            ),
        ),
        "user": (
            user_cookie,
            store(Revocation.user(op.issuer, "u2", not_before=now, expires_at=now + 3600)),
        ),
        "not-before": (
            all_cookie,
            store(
                Revocation.all_sessions(op.issuer, CLIENT_ID, not_before=now, expires_at=now + 3600)
            ),
        ),
        "local logout": (local_cookie, local_logout),
        "lifetime": (old_cookie, age),
    }


WAYS = ["back-channel", "user", "not-before", "local logout", "lifetime"]


@pytest.mark.parametrize("way", WAYS)
def test_a_revoked_cookie_is_refused_in_every_form(
    way: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Whatever form the framework's parser accepts, a revoked session never reaches the app."""
    clock = Clock()
    harness = make_harness(clock=clock, max_session_lifetime=3600)
    cookie, revoke = _ways_to_revoke(harness, op, clock)[way]
    for name, form in _forms(harness).items():
        if _framework_reads(harness, form(cookie)) == cookie:
            assert _send(harness, form(cookie)).json()["session"] != {}, f"{name}: works before"
    revoke()
    for name, form in _forms(harness).items():
        response = _send(harness, form(cookie))
        assert response.status_code == 200, name
        seen = response.json()
        assert seen["session"] == {}, f"{name}: the app saw the revoked session"
        assert cookie not in (seen["cookie"] or ""), f"{name}: the value reached the app"
        assert "Max-Age=0" in response.headers["set-cookie"], name


def test_a_revoked_cookie_gets_401_in_every_form(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """KC_SSO_REVOKED_ACTION=401 holds for every form too."""
    harness = make_harness(revoked_action="401")
    cookie = harness.session_cookie(op, sid="r401")
    harness.store.record(
        [Revocation.session(op.issuer, "r401", client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    for name, form in _read_as(harness, cookie).items():
        assert _send(harness, form(cookie)).status_code == 401, name


class _DownStore(MemoryStore):
    def status(self) -> StoreStatus:
        return StoreStatus(available=False, detail="down for the test")


def test_store_down_answers_503_in_every_form(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Fail-closed holds for every form of a session cookie, not only the plain one."""
    harness = make_harness(store=_DownStore())
    cookie = harness.session_cookie(op, sid="down")
    for name, form in _read_as(harness, cookie).items():
        response = _send(harness, form(cookie))
        assert response.status_code == 503, name
        assert "retry-after" in response.headers


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("session=not-a-signed-value", id="junk"),
        pytest.param('session="\\157pen"', id="escaped junk"),
        pytest.param("session=junk; session=more.junk", id="duplicate junk"),
    ],
)
def test_values_that_do_not_verify_never_reach_the_app(
    header: str, make_harness: HarnessFactory
) -> None:
    """Anything under the session name the middleware cannot verify is taken out and expired."""
    harness = make_harness()
    response = harness.client.get("/", headers={"Cookie": f"keep=1; {header}"})
    assert response.json() == {"session": {}, "cookie": "keep=1"}
    assert "Max-Age=0" in response.headers["set-cookie"]


def test_only_the_verified_value_reaches_the_app(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Next to a verified, unrevoked value, junk duplicates are dropped and the app is served."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="ok-dup")
    # Werkzeug reads the first duplicate, Starlette the last: the junk goes where the
    # framework would not read it, so the app is served the verified value.
    pair = [f"session={cookie}", "other=1", "session=junk.x.y"]
    if harness.kind == "asgi":
        pair.reverse()
    response = harness.client.get("/", headers={"Cookie": "; ".join(pair)})
    seen = response.json()
    assert seen["session"] != {}
    assert "junk" not in seen["cookie"]
    assert "other=1" in seen["cookie"]


def test_other_cookies_named_alike_are_left_alone(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Cookies whose names contain the session name (django_session, Session) are not ours."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="alike")
    header = f'django_session=abc; Session=X; session={cookie}; session_state=s; q="session=1"'
    response = harness.client.get("/", headers={"Cookie": header})
    assert response.json()["session"] != {}
    assert "set-cookie" not in response.headers


# ------------------------------------------------------------------ secret rotation


def test_cookies_signed_with_a_fallback_secret_still_verify(op: StandInOP) -> None:
    """KC_SSO_SESSION_SECRET_FALLBACKS: rotating the secret logs nobody out (Flask 3.1)."""
    from flask import Flask, jsonify, session

    from kc_sso_middleware.wsgi import SSOMiddleware

    app = Flask("rotated")
    app.secret_key = "new-secret"
    app.config["SECRET_KEY_FALLBACKS"] = ["old-secret"]

    @app.get("/")
    def show() -> Any:
        return jsonify(session=dict(session))

    settings = Settings(
        issuer=op.issuer,
        client_id=CLIENT_ID,
        session_secret="new-secret",
        session_secret_fallbacks=("old-secret",),
        store="memory://",
    )
    store = MemoryStore()
    app.wsgi_app = SSOMiddleware(app.wsgi_app, settings, store=store)  # type: ignore[method-assign]
    id_token = mint_jwt(
        op.key, {"iss": op.issuer, "sid": "rot", "sub": "u", "iat": int(time.time())}
    )
    old = make_session_cookie("old-secret", {"id_token": id_token})
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://a") as client:
        first = client.get("/", headers={"Cookie": f"session={old}"})
        assert first.json()["session"]["id_token"] == id_token
        assert "set-cookie" not in first.headers or "Max-Age=0" not in first.headers["set-cookie"]
        store.record(
            [Revocation.session(op.issuer, "rot", client_id=CLIENT_ID, expires_at=time.time() + 60)]
        )
        assert client.get("/", headers={"Cookie": f"session={old}"}).json()["session"] == {}


# ------------------------------------------------------------------ NumericDates


def _signed_raw(op: StandInOP, payload: str, header: dict[str, Any] | None = None) -> str:
    full = {"alg": "RS256", "kid": op.key.kid, "typ": "logout+jwt", **(header or {})}
    return jws.serialize_compact(full, payload.encode(), op.key, algorithms=["RS256"])


def _logout_payload(op: StandInOP, **raw: str) -> str:
    now = int(time.time())
    fields = {
        "iss": json.dumps(op.issuer),
        "aud": json.dumps(CLIENT_ID),
        "iat": str(now),
        "exp": str(now + 120),
        "jti": json.dumps(str(uuid.uuid4())),
        "sid": json.dumps("nd-session"),
        "events": json.dumps({BACKCHANNEL_EVENT: {}}),
    }
    fields.update(raw)
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


ABSURD = ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, "-5", "1e15", "true"]


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf", "auth_time"])
@pytest.mark.parametrize("value", ABSURD)
def test_absurd_numeric_dates_in_logout_tokens_are_rule_failures(
    claim: str, value: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Non-finite or absurd NumericDates get a clean 400, never a 500 or a stored entry."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="nd-session")
    token = _signed_raw(op, _logout_payload(op, **{claim: value}))
    response = harness.client.post(BACKCHANNEL, data={"logout_token": token})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize("claim", ["expiration", "notBefore"])
@pytest.mark.parametrize("value", ABSURD)
def test_absurd_numeric_dates_in_admin_tokens_are_rule_failures(
    claim: str, value: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The legacy admin URL treats them the same way."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="nd-admin")
    fields = {
        "id": json.dumps(str(uuid.uuid4())),
        "expiration": str(int(time.time()) + 30),
        "resource": json.dumps(CLIENT_ID),
        "action": json.dumps("LOGOUT"),
        "notBefore": "0",
        claim: value,
    }
    payload = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    token = _signed_raw(op, payload, {"typ": "JWT"})
    response = harness.client.post(
        "/k_logout", content=token, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400, response.text
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", "-5"])
def test_absurd_numeric_dates_in_a_session_make_it_unverifiable(
    value: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """An ID token in the session with such an iat is not a valid session: taken out."""
    harness = make_harness()
    header = {"alg": "RS256", "kid": op.key.kid}
    payload = f'{{"iss":"{op.issuer}","sid":"nd-cookie","sub":"u","iat":{value}}}'
    id_token = jws.serialize_compact(header, payload.encode(), op.key, algorithms=["RS256"])
    cookie = make_session_cookie(SESSION_SECRET, {"id_token": id_token}, format=harness.format)
    response = harness.get("/", cookie)
    assert response.status_code == 200
    assert response.json()["session"] == {}
    assert "Max-Age=0" in response.headers["set-cookie"]


# ------------------------------------------------------------------ logout CSRF


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Sec-Fetch-Site": "cross-site"}, id="fetch metadata"),
        # A sibling subdomain is another origin, as the Origin fallback says of it too.
        pytest.param({"Sec-Fetch-Site": "same-site"}, id="fetch metadata, same site"),
        pytest.param({"Origin": "http://other.app.test"}, id="sibling Origin"),
        pytest.param({"Origin": "https://evil.example"}, id="foreign Origin"),
        pytest.param({"Origin": "null"}, id="opaque Origin"),
        pytest.param({"Referer": "https://evil.example/page"}, id="foreign Referer"),
    ],
)
def test_cross_site_logout_neither_clears_nor_ends_the_session(
    headers: dict[str, str], make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A cross-site <img src=/logout> gets a confirmation page: no expiry, no id_token_hint."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="csrf")
    response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}", **headers})
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert "location" not in response.headers
    assert 'method="post"' in response.text
    assert "id_token_hint" not in response.text
    assert harness.seen_session(cookie) != {}


def test_cross_site_api_logout_is_forbidden(make_harness: HarnessFactory, op: StandInOP) -> None:
    """An API-style cross-site logout gets 403."""
    harness = make_harness()
    response = harness.client.post(
        "/logout", headers={"Accept": "application/json", "Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403


@pytest.mark.parametrize("site", ["same-origin", "none"])
def test_same_site_logout_works(site: str, make_harness: HarnessFactory, op: StandInOP) -> None:
    """Links and forms of the app itself keep working."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid=f"same-{site}")
    response = harness.client.get(
        "/logout", headers={"Cookie": f"session={cookie}", "Sec-Fetch-Site": site}
    )
    assert response.status_code == 302
    assert "Max-Age=0" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            {
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Mode": "no-cors",
                "Sec-Fetch-Dest": "image",
            },
            id="an <img> in content of this origin",
        ),
        pytest.param(
            {
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Mode": "no-cors",
                "Sec-Fetch-Dest": "script",
            },
            id="a <script> of this origin",
        ),
        pytest.param(
            {
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document",
                "Sec-Purpose": "prefetch",
            },
            id="a prefetch of a logout link (speculation rules)",
        ),
        pytest.param(
            {"Sec-Fetch-Site": "none", "Sec-Purpose": "prefetch;prerender"}, id="a prerender"
        ),
        pytest.param({"Purpose": "prefetch"}, id="a prefetch, older header"),
    ],
)
def test_a_get_logout_that_is_no_navigation_is_refused(
    headers: dict[str, str], make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Even from this origin, a GET the user did not navigate to logs nobody out: an
    image's redirect to Keycloak with id_token_hint would end the whole Keycloak session
    without asking, and a prefetched logout link would log out on hover."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="not-a-navigation")
    response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}", **headers})
    assert response.status_code == 403
    assert response.headers["cache-control"] == "no-store"
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers
    assert response.json()["error_description"].startswith("not_a_navigation:")
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize("dest", ["iframe", "frame", "object", "embed"])
def test_a_framed_logout_gets_the_confirmation_page(
    dest: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A navigation inside a frame, which a page of this origin could hide, is confirmed
    first; the page itself cannot be framed."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid=f"framed-{dest}")
    headers = {
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": dest,
    }
    response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}", **headers})
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert "location" not in response.headers
    assert 'method="post"' in response.text
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            {
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document",
            },
            id="a click on the app's link",
        ),
        pytest.param(
            {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
            id="the app's own fetch()",
        ),
        pytest.param(
            {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
            id="typed or bookmarked",
        ),
    ],
)
def test_a_get_logout_the_app_asks_for_works(
    headers: dict[str, str], make_harness: HarnessFactory, op: StandInOP
) -> None:
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="asked-for")
    response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}", **headers})
    assert response.status_code == 302
    assert "id_token_hint=" in response.headers["location"]
    assert harness.seen_session(cookie) == {}


def test_confirmation_button_logs_out(make_harness: HarnessFactory, op: StandInOP) -> None:
    """The page's same-origin POST completes the logout."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="confirm")
    response = harness.client.post(
        "/logout",
        headers={
            "Cookie": f"session={cookie}",
            "Sec-Fetch-Site": "same-origin",
            "Origin": "http://app.test",
        },
    )
    assert response.status_code == 302
    assert "id_token_hint" in response.headers["location"]


def test_post_only_logout(make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_LOGOUT_POST_ONLY answers a GET with 405 and serves POST."""
    harness = make_harness(logout_post_only=True)
    cookie = harness.session_cookie(op, sid="post-only")
    response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert harness.seen_session(cookie) != {}
    assert (
        harness.client.post("/logout", headers={"Cookie": f"session={cookie}"}).status_code == 302
    )


# ------------------------------------------------------------------ someone else's refresh token


def test_a_stolen_refresh_token_cannot_end_its_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Without the session's own cookie or bearer token: 401, the same for any token."""
    harness = make_harness()
    victim = direct_grant(op, "victim")
    attacker_cookie = harness.session_cookie(op, sid="attacker-sid")
    before = len(op.end_session_requests)
    answers = [
        harness.client.post("/logout", data={"refresh_token": token}, headers=headers)
        for token in (victim["refresh_token"], "not-a-token", victim["refresh_token"] + "x")
        for headers in (
            {"Accept": "application/json"},
            {"Accept": "application/json", "Cookie": f"session={attacker_cookie}"},
            {"Authorization": f"Bearer {victim['access_token']}x"},
        )
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1
    assert len(op.end_session_requests) == before


def test_the_sessions_own_cookie_authenticates_its_refresh_token(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """With a session cookie of the same sid the refresh token is honoured."""
    harness = make_harness()
    tokens = direct_grant(op, "victim")
    claims = json.loads(jws.extract_compact(tokens["id_token"].encode()).payload)
    cookie = harness.session_cookie(op, sid=claims["sid"], sub=claims["sub"])
    response = harness.client.post(
        "/logout",
        data={"refresh_token": tokens["refresh_token"]},
        headers={"Accept": "application/json", "Cookie": f"session={cookie}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["op_session_ended"] is True


def _claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(jws.extract_compact(token.encode()).payload)
    return claims


def _api_logout(harness: Harness, refresh_token: str, bearer: str) -> httpx.Response:
    return harness.client.post(
        "/logout",
        data={"refresh_token": refresh_token},
        headers={"Accept": "application/json", "Authorization": f"Bearer {bearer}"},
    )


def _other_kinds_of_the_session(op: StandInOP, tokens: dict[str, Any]) -> dict[str, str]:
    """OP-signed JWTs of the refresh token's session that are not this app's access token."""
    access = _claims_of(tokens["access_token"])
    now = int(time.time())
    logout = {
        "iss": op.issuer,
        "aud": CLIENT_ID,
        "sid": access["sid"],
        "iat": now,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
        "typ": "Logout",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    other_client = {**access, "aud": "account", "azp": "some-other-spa", "exp": now + 300}
    return {
        "ID token": tokens["id_token"],
        "logout token (typ JWT, as before Keycloak 25)": mint_jwt(op.key, logout, {"typ": "JWT"}),
        "access token of another client": mint_jwt(op.key, other_client, {"typ": "JWT"}),
    }


def test_only_an_access_token_of_this_client_authenticates_a_refresh_token(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """RFC 8725 §3.12 and §3.9: the API logout takes the bearer token as an access token
    issued to this client, never as another kind of JWT of the session (ID tokens travel
    in id_token_hint URLs) nor one issued to another client: 401, the OP not asked."""
    harness = make_harness()
    tokens = direct_grant(op, "kinds")
    before = len(op.end_session_requests)
    for kind, token in _other_kinds_of_the_session(op, tokens).items():
        response = _api_logout(harness, tokens["refresh_token"], token)
        assert response.status_code == 401, kind
        # RFC 9110 §15.5.2: a 401 names its challenge (RFC 6750 §3).
        assert response.headers["www-authenticate"].startswith("Bearer "), kind
    assert len(op.end_session_requests) == before
    ours = _api_logout(harness, tokens["refresh_token"], tokens["access_token"])
    assert ours.status_code == 200, ours.text


def test_an_rfc9068_typed_access_token_authenticates_a_refresh_token(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """``typ: at+jwt`` (RFC 9068 §2.1; Keycloak's client option
    access.token.header.type.rfc9068) is an access token too."""
    harness = make_harness()
    tokens = direct_grant(op, "typed")
    typed = mint_jwt(op.key, _claims_of(tokens["access_token"]), {"typ": "at+jwt"})
    response = _api_logout(harness, tokens["refresh_token"], typed)
    assert response.status_code == 200, response.text
    assert response.json()["op_session_ended"] is True


def test_a_nested_access_token_does_not_authenticate_a_refresh_token(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """``cty: JWT`` says the payload is another token (RFC 7519 §5.2), so the claims read
    are not those the OP signed as this token's: 401, the OP not asked."""
    harness = make_harness()
    tokens = direct_grant(op, "nested")
    before = len(op.end_session_requests)
    nested = mint_jwt(op.key, _claims_of(tokens["access_token"]), {"typ": "JWT", "cty": "JWT"})
    response = _api_logout(harness, tokens["refresh_token"], nested)
    assert response.status_code == 401, response.text
    assert len(op.end_session_requests) == before


# ------------------------------------------------------------------ hostile input to own paths


@pytest.mark.parametrize("path", ["/logout", "/logout-return"])
def test_too_many_query_fields_are_refused_not_a_crash(
    path: str, make_harness: HarnessFactory
) -> None:
    """Past the bound on fields: 400 (the return reads no state then, which is a
    mismatch: never a redirect)."""
    harness = make_harness(post_logout_path="/logout-return")
    query = "&".join(f"f{i}=x" for i in range(150))
    response = harness.client.get(f"{path}?{query}")
    assert response.status_code == 400
    assert "location" not in response.headers


def test_a_referer_that_is_no_url_reads_as_cross_site(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """``Referer: http://[`` (urlsplit raises on it) names no origin of this app: the
    logout asks for confirmation instead of failing."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="bad-referer")
    response = harness.client.get(
        "/logout", headers={"Referer": "http://[", "Cookie": f"session={cookie}"}
    )
    assert response.status_code == 200
    assert "<form" in response.text
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize("target", ["http://[", "/\u2028x", "/caf\u00e9"])
def test_a_post_logout_target_no_url_or_beyond_ascii_is_not_followed(
    target: str, make_harness: HarnessFactory
) -> None:
    """``http://[`` is no URL (urlsplit raises); a target beyond ASCII cannot go into a
    Location header as it is: both are refused, and the return goes to the default."""
    from urllib.parse import parse_qs, urlsplit

    harness = make_harness(post_logout_path="/logout-return")
    started = harness.client.get("/logout", params={"post_logout_redirect_uri": target})
    assert started.status_code == 302
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    cookie = next(
        c.split(";")[0] for c in started.headers.get_list("set-cookie") if "_logout_state=" in c
    )
    back = harness.client.get(f"/logout-return?state={state}", headers={"Cookie": cookie})
    assert back.status_code == 302
    assert back.headers["location"] == "http://app.test/"  # the default, never the target


# ------------------------------------------------------------------ sessions of unknown age


def test_a_revoked_session_of_unknown_age_stays_revoked_past_the_lifetime(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A session holding claims without iat or auth_time: past KC_SSO_MAX_SESSION_LIFETIME
    its revocation is forgotten, so its age is bounded by the cookie's signature (which
    the app never renews once the session is taken out), and it stays refused."""
    clock = Clock()
    store = MemoryStore(timer=clock)
    harness = make_harness(store=store, clock=clock)
    cookie = make_session_cookie(
        SESSION_SECRET, {"user": {"sid": "no-age", "sub": "u-no-age"}}, format=harness.format
    )
    assert harness.seen_session(cookie) != {}
    token = op.logout_token(CLIENT_ID, sid="no-age")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert harness.seen_session(cookie) == {}
    clock.now += 2 * 24 * 3600  # within the cookie's own max age (14 or 31 days)
    assert store.record(
        [Revocation.session(op.issuer, "other", client_id=CLIENT_ID, expires_at=clock.now + 60)]
    )
    assert harness.seen_session(cookie) == {}, "the revoked session came back"


# ------------------------------------------------------------------ the app's cookie name


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_app_keeping_its_session_under_another_name_is_a_configuration_error(
    kind: str, op: StandInOP
) -> None:
    """Flask's SESSION_COOKIE_NAME or Starlette's session_cookie other than
    KC_SSO_SESSION_COOKIE: no revoked session would be refused, so the middleware
    refuses to start, naming the setting to change."""
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware

    from kc_sso_middleware import asgi as asgi_adapter
    from kc_sso_middleware import wsgi as wsgi_adapter
    from tests.conftest import PortalClient, make_settings

    settings = make_settings(op)  # KC_SSO_SESSION_COOKIE left at "session"
    client: Any
    if kind == "asgi":
        named = Middleware(
            SessionMiddleware, secret_key=SESSION_SECRET, session_cookie="app_session"
        )
        app = Starlette(middleware=[named])
        app.add_middleware(asgi_adapter.SSOMiddleware, settings=settings, store=MemoryStore())
        client = PortalClient(app, "http://app.test")
    else:
        flask_app = Flask("named")
        flask_app.config["SESSION_COOKIE_NAME"] = "app_session"
        middleware = wsgi_adapter.SSOMiddleware(flask_app.wsgi_app, settings, store=MemoryStore())
        flask_app.wsgi_app = middleware  # type: ignore[method-assign]
        client = httpx.Client(transport=httpx.WSGITransport(app=flask_app), base_url="http://a")
    try:
        with pytest.raises(ConfigurationError, match="KC_SSO_SESSION_COOKIE=app_session"):
            client.get("/")
    finally:
        client.close()


# ------------------------------------------------------------------ realms and clients
# ------------------------------------------------------------------ realms and clients


def test_two_realms_sharing_one_store_never_touch_each_other(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Same sid and sub strings in two realms: revoking in one leaves the other alone."""
    shared = MemoryStore()
    with StandInOP() as other_op:
        other_op.register_client(CLIENT_ID, "s")
        realm_a = make_harness(store=shared)
        realm_b = make_harness(store=shared, issuer=other_op.issuer)
        now = time.time()
        cookie_a = realm_a.session_cookie(op, sid="same-sid", sub="same-sub", auth_time=now - 5)
        cookie_b = realm_b.session_cookie(
            other_op, sid="same-sid", sub="same-sub", auth_time=now - 5
        )
        assert (
            realm_a.client.post(
                BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="same-sid")}
            ).status_code
            == 200
        )
        token = op.logout_token(CLIENT_ID, sid=None, sub="same-sub")
        assert realm_a.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
        assert post_admin(realm_a, "/k_logout", admin_token(op, "LOGOUT")).status_code == 200
        assert realm_a.seen_session(cookie_a) == {}
        assert realm_b.seen_session(cookie_b) != {}


def test_not_before_of_one_client_spares_another(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Sign out all addressed to client A does not log out client B sharing the store."""
    shared = MemoryStore()
    op.register_client("client-b", "s")
    app_a = make_harness(store=shared)
    app_b = make_harness(store=shared, client_id="client-b")
    now = time.time()
    cookie_b = app_b.session_cookie(op, sid="b-sid", auth_time=now - 5)
    response = post_admin(app_a, "/k_logout", admin_token(op, "LOGOUT"))
    assert response.status_code == 200
    assert app_b.seen_session(cookie_b) != {}


# ------------------------------------------------------------------ logs


def test_untrusted_values_cannot_forge_log_lines(
    make_harness: HarnessFactory, op: StandInOP, caplog: pytest.LogCaptureFixture
) -> None:
    """CR/LF in request values are escaped; sids are tagged, tokens never logged."""
    harness = make_harness(frontchannel_path="/frontchannel-logout")
    caplog.set_level(logging.DEBUG, logger="kc_sso_middleware")
    token = op.logout_token(CLIENT_ID, sid="real-sid-value")
    harness.client.post(BACKCHANNEL, data={"logout_token": token})
    harness.client.get("/logout", params={"post_logout_redirect_uri": "https://evil\r\nFAKE LINE"})
    bad = op.logout_token(CLIENT_ID, sid="x", iss="http://evil\nINJECTED")
    harness.client.post(BACKCHANNEL, data={"logout_token": bad})
    # A sid the OP signed is still text from outside: it reaches DEBUG lines escaped.
    forged = op.logout_token(CLIENT_ID, sid="s\r\n2099-01-01 INFO forged line \x1b[2J")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": forged}).status_code == 200
    assert any("forged line" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message, message
        assert "\r" not in message, message
        assert "\x1b" not in message, message
        assert token not in message
        if record.levelno >= logging.INFO:
            assert "real-sid-value" not in message, message


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("store_failure", "clsoed"),
        ("typ_policy", "Strict"),
        ("session_format", "flsk"),
        ("revoked_action", "403"),
        ("session_cookie_samesite", "Lax "),
        ("tls_verify", "false"),
        ("clock_skew", float("nan")),
        ("max_session_lifetime", 0),
    ],
)
def test_settings_built_directly_are_validated(field: str, value: Any, op: StandInOP) -> None:
    """A typo in a choice is an error naming the field and the accepted values."""
    with pytest.raises(ConfigurationError) as caught:
        Settings(issuer=op.issuer, client_id="c", session_secret="s", **{field: value})
    assert field in str(caught.value)
