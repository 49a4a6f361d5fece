"""What Keycloak leaves out, closed through both adapters: a verified logout return, user-wide
logout from one sid, the request-scoped marker, and the events the app can subscribe to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kc_sso_middleware import Revocation
from kc_sso_middleware.events import Event
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.stores.sqlite import SQLiteStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import CLIENT_ID, Clock, HarnessFactory, admin_token, post_admin

BACKCHANNEL = "/backchannel-logout"


def _logout(harness: Any, cookie: str | None = None) -> tuple[str, dict[str, str]]:
    headers = {"Cookie": f"session={cookie}"} if cookie else {}
    response = harness.client.get("/logout", headers=headers)
    params = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
    return urlsplit(params["post_logout_redirect_uri"]).path, params


# ------------------------------------------------------------------ the return from Keycloak


def test_the_matching_state_goes_on_to_the_target(make_harness: HarnessFactory) -> None:
    """Back from Keycloak with the state it was sent: a redirect to the final target."""
    harness = make_harness(post_logout_redirect_uri="http://app.test/bye")
    path, params = _logout(harness)
    response = harness.client.get(path, params={"state": params["state"]})
    assert response.status_code == 302
    assert response.headers["location"] == "http://app.test/bye"
    assert "Max-Age=0" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"state": "another-state"}, id="other state"),
        pytest.param({}, id="no state"),
        pytest.param({"state": ""}, id="empty state"),
    ],
)
def test_a_state_that_does_not_match_is_never_a_redirect(
    query: dict[str, str], make_harness: HarnessFactory
) -> None:
    """A missing or different state gets a page saying the logout is not confirmed."""
    harness = make_harness()
    path, _ = _logout(harness)
    response = harness.client.get(path, params={**query, "post_logout_redirect_uri": "https://x"})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "could not be" in response.text


def test_without_the_state_cookie_the_return_is_not_confirmed(
    make_harness: HarnessFactory,
) -> None:
    """Another browser (no state cookie) arriving with a valid state gets the page too."""
    harness = make_harness()
    path, params = _logout(harness)
    harness.client.cookies.clear()
    response = harness.client.get(path, params={"state": params["state"]})
    assert response.status_code == 400


def test_a_forged_state_cookie_is_not_believed(make_harness: HarnessFactory) -> None:
    """The state cookie is signed: one made up by the attacker is worth nothing."""
    harness = make_harness()
    path, _ = _logout(harness)
    harness.client.cookies.clear()
    response = harness.client.get(
        path,
        params={"state": "x"},
        headers={"Cookie": 'session_logout_state=["x","https://evil.example"]'},
    )
    assert response.status_code == 400
    assert "location" not in response.headers


def test_the_return_works_once(make_harness: HarnessFactory) -> None:
    """The state cookie is expired on the way through: a second arrival is not confirmed."""
    harness = make_harness()
    path, params = _logout(harness)
    assert harness.client.get(path, params={"state": params["state"]}).status_code == 302
    assert harness.client.get(path, params={"state": params["state"]}).status_code == 400


def test_the_return_path_can_be_turned_off(make_harness: HarnessFactory) -> None:
    """KC_SSO_POST_LOGOUT_PATH=off sends Keycloak the final target directly, as before."""
    harness = make_harness(post_logout_path=None)
    response = harness.client.get("/logout")
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["post_logout_redirect_uri"] == ["http://app.test/"]


# ------------------------------------------------------------------ user-wide from one sid


@pytest.mark.parametrize("scope", ["session", "user"])
def test_sid_logout_scope(scope: str, make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_SID_LOGOUT_SCOPE=user: a token naming one sid ends the user's other sessions."""
    harness = make_harness(sid_logout_scope=scope)
    now = time.time()
    named = harness.session_cookie(op, sid="named", sub="dana", auth_time=now - 60)
    other = harness.session_cookie(op, sid="other-device", sub="dana", auth_time=now - 30)
    stranger = harness.session_cookie(op, sid="stranger", sub="erik", auth_time=now - 30)
    token = op.logout_token(CLIENT_ID, sid="named", sub="dana")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert harness.seen_session(named) == {}
    assert (harness.seen_session(other) == {}) is (scope == "user")
    assert harness.seen_session(stranger) != {}
    later = harness.session_cookie(op, sid="new-login", sub="dana", auth_time=now + 5)
    assert harness.seen_session(later) != {}


def test_one_apps_user_scope_leaves_other_apps_of_the_store_alone(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The scope is each app's choice: app A's ``user`` ends A's sessions of the user,
    not those of app B (``session``) sharing the store; a token without a sid addressed to
    B ends the user's sessions in B."""
    store = MemoryStore()
    app_a = make_harness(store=store, client_id="app-a", sid_logout_scope="user")
    app_b = make_harness(store=store, client_id="app-b", sid_logout_scope="session")
    now = time.time()
    a_other = app_a.session_cookie(op, sid="kiosk-2", sub="kiosk", auth_time=now - 30)
    b_named = app_b.session_cookie(op, sid="kiosk-1", sub="kiosk", auth_time=now - 60)
    b_other = app_b.session_cookie(op, sid="kiosk-2", sub="kiosk", auth_time=now - 30)
    for harness, client in ((app_a, "app-a"), (app_b, "app-b")):
        token = op.logout_token(client, sid="kiosk-1", sub="kiosk")
        assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert app_a.seen_session(a_other) == {}  # A's choice, in A
    assert app_b.seen_session(b_named) == {}  # the session Keycloak ended
    assert app_b.seen_session(b_other) != {}  # B keeps its other session
    everywhere = op.logout_token("app-b", sub="kiosk", sid=None)
    assert app_b.client.post(BACKCHANNEL, data={"logout_token": everywhere}).status_code == 200
    assert app_b.seen_session(b_other) == {}


def test_a_sid_logout_for_one_client_leaves_other_clients_of_the_store_alone(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak addresses every logout token to one client, and a sid names a Keycloak
    session that other clients may keep: revoking a consent
    (AuthenticationManager.backchannelLogoutUserFromClient) logs the user out of that
    client alone and leaves the Keycloak session, and so the sessions of the same sid
    in other clients, alive.  A token for app A naming sid S ends A's session of S, not
    app B's session of the same S in a shared store; nor can an unauthenticated
    front-channel write at A (KC_SSO_FRONTCHANNEL_REVOKE_OTHERS) reach B.  B's own token
    for S ends B's session."""
    store = MemoryStore()
    app_a = make_harness(
        store=store,
        client_id="app-a",
        frontchannel_path="/frontchannel-logout",
        frontchannel_revoke_others=True,
    )
    app_b = make_harness(store=store, client_id="app-b")
    a_session = app_a.session_cookie(op, sid="shared-1")
    b_session = app_b.session_cookie(op, sid="shared-1")
    b_elsewhere = app_b.session_cookie(op, sid="shared-2")

    token = op.logout_token("app-a", sid="shared-1")
    assert app_a.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    forged = app_a.client.get("/frontchannel-logout", params={"iss": op.issuer, "sid": "shared-2"})
    assert forged.status_code == 200

    assert app_a.seen_session(a_session) == {}
    assert app_b.seen_session(b_session) != {}, "A's logout token ended B's session"
    assert app_b.seen_session(b_elsewhere) != {}, "a front-channel write at A ended B's session"
    token = op.logout_token("app-b", sid="shared-1")
    assert app_b.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert app_b.seen_session(b_session) == {}
    assert app_b.seen_session(b_elsewhere) != {}


def test_a_realm_wide_sid_entry_of_an_earlier_version_still_revokes_every_client(
    make_harness: HarnessFactory, op: StandInOP, tmp_path: Path
) -> None:
    """Earlier versions wrote a sid entry for every client of the realm.  A store file that
    still holds one when the upgraded apps start keeps revoking it in every client: no
    revocation is forgotten early."""
    path = str(tmp_path / "revocations.db")
    earlier = SQLiteStore(path)
    entry = Revocation.session(
        op.issuer, "before-upgrade", client_id=None, expires_at=time.time() + 60
    )
    assert earlier.record([entry])
    earlier.close()
    store = SQLiteStore(path)
    try:
        app_a = make_harness(store=store, client_id="app-a")
        app_b = make_harness(store=store, client_id="app-b")
        a_session = app_a.session_cookie(op, sid="before-upgrade")
        b_session = app_b.session_cookie(op, sid="before-upgrade")
        other = app_b.session_cookie(op, sid="not-revoked")
        assert app_a.seen_session(a_session) == {}
        assert app_b.seen_session(b_session) == {}
        assert app_b.seen_session(other) != {}
    finally:
        store.close()


def test_a_token_without_sid_for_one_client_leaves_other_clients_of_the_store_alone(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak leaves ``sid`` out of a logout token only because *that* client has
    "Backchannel logout session required" off (DefaultTokenManager.initLogoutToken); it
    sends that sub-only shape for an ordinary one-session logout too.  Back-Channel
    Logout §2.4: without a sid, all sessions *at the RP* for the End-User end.  A token
    addressed to app A (aud app-a) must not end the user's sessions in app B that shares
    the store: Keycloak keeps those (B gets its own token if one of them ends)."""
    store = MemoryStore()
    app_a = make_harness(store=store, client_id="app-a")
    app_b = make_harness(store=store, client_id="app-b")
    now = time.time()
    a_session = app_a.session_cookie(op, sid="dev-1", sub="frank", auth_time=now - 60)
    b_other_device = app_b.session_cookie(op, sid="dev-2", sub="frank", auth_time=now - 30)
    token = op.logout_token("app-a", sub="frank", sid=None)
    assert app_a.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert app_a.seen_session(a_session) == {}  # all of the user's sessions at A (§2.4)
    assert app_b.seen_session(b_other_device) != {}  # not those at B


# ------------------------------------------------------------------ the request-scoped marker


def _marker(harness: Any, cookie: str) -> dict[str, Any]:
    response = harness.client.get("/marker", headers={"Cookie": f"session={cookie}"})
    assert response.status_code == 200
    marker: dict[str, Any] = response.json()["signed_out"]
    return marker


def test_the_marker_says_why_and_when(make_harness: HarnessFactory, op: StandInOP) -> None:
    """The request whose session was just taken out carries reason, time and sid."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="why-bcl")
    before = time.time()
    token = op.logout_token(CLIENT_ID, sid="why-bcl")
    harness.client.post(BACKCHANNEL, data={"logout_token": token})
    marker = _marker(harness, cookie)
    assert marker["reason"] == "backchannel"
    assert marker["sid"] == "why-bcl"
    assert before - 1 <= marker["at"] <= time.time()


def test_the_marker_of_each_kind_of_ending(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Local logout, user logout, sign out all, admin logout and lifetime say so."""
    clock = Clock()
    harness = make_harness(clock=clock, max_session_lifetime=3600)
    local = harness.session_cookie(op, sid="why-local", auth_time=clock.now - 5)
    harness.client.get("/logout", headers={"Cookie": f"session={local}"})
    marker = _marker(harness, local)
    assert (marker["reason"], marker["origin"]) == ("local_logout", CLIENT_ID)

    admin = harness.session_cookie(op, sid="why-admin", sub="ad", auth_time=clock.now - 5)
    post_admin(harness, "/k_logout", admin_token(op, "LOGOUT", keycloakSessionIds=["why-admin"]))
    assert _marker(harness, admin)["reason"] == "admin_logout"

    user = harness.session_cookie(op, sid="why-user", sub="uu", auth_time=clock.now - 5)
    harness.client.post(
        BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid=None, sub="uu")}
    )
    assert _marker(harness, user)["reason"] == "backchannel"

    everyone = harness.session_cookie(op, sid="why-all", sub="ee", auth_time=clock.now - 5)
    post_admin(harness, "/k_logout", admin_token(op, "LOGOUT"))
    assert _marker(harness, everyone)["reason"] == "sign_out_all"

    clock.now += 7200
    aged = harness.session_cookie(op, sid="why-old", sub="oo", auth_time=clock.now - 3700)
    assert _marker(harness, aged)["reason"] == "lifetime"


def test_the_marker_names_the_wide_entry_that_ended_the_session(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """An older not-before push of the same client does not explain a session that only
    a later "sign out all" ended; and another client's sign-out-all in a shared store
    does not explain this app's refusal."""
    store = MemoryStore()
    harness = make_harness(store=store)
    other = make_harness(store=store, client_id="other-app")
    now = time.time()
    pushed = int(now) - 100
    assert (
        post_admin(
            harness, "/k_push_not_before", admin_token(op, "PUSH_NOT_BEFORE", notBefore=pushed)
        ).status_code
        == 200
    )
    old = harness.session_cookie(op, sid="wide-old", auth_time=now - 200, issued_at=now - 200)
    recent = harness.session_cookie(op, sid="wide-new", auth_time=now - 30, issued_at=now - 30)
    assert harness.seen_session(recent) != {}
    post_admin(harness, "/k_logout", admin_token(op, "LOGOUT"))
    post_admin(other, "/k_logout", admin_token(op, "LOGOUT", resource="other-app"))
    assert _marker(harness, old)["reason"] == "not_before"
    marker = _marker(harness, recent)
    assert (marker["reason"], marker["origin"]) == ("sign_out_all", CLIENT_ID)


def test_no_marker_on_an_ordinary_request(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A live session's request carries no marker."""
    harness = make_harness()
    assert _marker(harness, harness.session_cookie(op, sid="fine")) is None


# ------------------------------------------------------------------ events


def test_callbacks_see_revocations_and_rejections(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """on_revocation gets what this worker's replica applied; on_rejected the refusals."""
    harness = make_harness()
    applied: list[Event] = []
    rejected: list[Event] = []
    harness.events.on_revocation(applied.append)
    harness.events.on_rejected(rejected.append)
    token = op.logout_token(CLIENT_ID, sid="evt-sid")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 400
    harness.client.post(BACKCHANNEL, data={"logout_token": "garbage"})
    harness.events.drain()
    assert [(e["kind"], e["key"], e["cause"]) for e in applied] == [
        ("sid", "evt-sid", "backchannel")
    ]
    assert [e.name for e in rejected] == ["backchannel.replayed", "backchannel.rejected"]
    assert rejected[1]["code"] == "malformed_token"


def test_a_failing_callback_breaks_nothing(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A callback that raises is logged; the logout and the requests go on."""
    harness = make_harness()
    seen: list[str] = []

    def broken(event: Event) -> None:
        seen.append(event.name)
        raise RuntimeError("the app's bug")

    harness.events.subscribe(broken)
    cookie = harness.session_cookie(op, sid="evt-broken")
    token = op.logout_token(CLIENT_ID, sid="evt-broken")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert harness.seen_session(cookie) == {}
    harness.events.drain()
    assert "backchannel.accepted" in seen
    assert "request.refused" in seen


def test_callbacks_never_run_on_the_request_thread(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Callbacks run on the events thread, so a slow one never delays a request."""
    import threading

    harness = make_harness()
    threads: set[str] = set()
    harness.events.subscribe(lambda event: threads.add(threading.current_thread().name))
    harness.client.get("/")  # Starlette builds its middleware on the first request
    harness.store.record(
        [Revocation.session(op.issuer, "evt-t", client_id=CLIENT_ID, expires_at=time.time() + 9)]
    )
    harness.events.drain()
    assert threads == {"kc-sso-events"}
