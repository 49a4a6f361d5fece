"""Liveness through both adapters, against the stand-in OP's token introspection.

Keycloak says nothing when a session idles out, and a lost back-channel request is never
retried; with KC_SSO_LIVENESS_INTERVAL the middleware asks, at most once per interval per
Keycloak session across workers, beside the request (never delaying it).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import (
    Harness,
    HarnessFactory,
    direct_grant,
    session_id_of,
    wait_until,
)


def _login(harness: Harness, op: StandInOP, username: str) -> tuple[str, dict[str, Any]]:
    """A session cookie holding the ID and refresh tokens of a fresh OP session."""
    tokens = direct_grant(op, username)
    return harness.tokens_cookie(tokens), tokens


def test_a_session_that_ended_silently_is_refused(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The OP forgot the session (idle expiry, a lost back-channel): it is refused soon after."""
    harness = make_harness(liveness_interval=0.5)
    worker_b = make_harness(liveness_interval=0.5, store=harness.store)
    cookie, tokens = _login(harness, op, "idle-ivy")
    before = op.introspections
    assert harness.seen_session(cookie) != {}  # checked beside it: alive
    wait_until(lambda: op.introspections > before, "the first check ran")
    op.forget_session(session_id_of(tokens))
    time.sleep(0.6)  # the next interval
    # Whichever worker asks next revokes for every worker sharing the store (once a
    # second answer confirms the first: a 503 meanwhile, the cookie kept).
    worker_b.get("/", cookie)

    def refused() -> bool:
        response = harness.get("/", cookie)
        worker_b.get("/", cookie)
        return response.status_code == 200 and response.json()["session"] == {}

    wait_until(refused, "the session is refused")
    response = harness.client.get("/marker", headers={"Cookie": f"session={cookie}"})
    assert response.json()["signed_out"]["reason"] == "liveness"


def test_a_live_session_is_asked_once_per_interval(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Many requests, one introspection; the requests never wait for it."""
    harness = make_harness(liveness_interval=3600)
    cookie, _ = _login(harness, op, "busy-bob")
    before = op.introspections
    for _ in range(20):
        assert harness.seen_session(cookie) != {}
    wait_until(lambda: op.introspections == before + 1, "one check ran")
    time.sleep(0.2)
    assert op.introspections == before + 1


def test_workers_sharing_a_store_ask_once_between_them(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The claim in the shared store lets one worker ask for all."""
    store = MemoryStore()
    workers = [make_harness(liveness_interval=3600, store=store) for _ in range(3)]
    cookie, _ = _login(workers[0], op, "shared-sam")
    before = op.introspections
    for worker in workers:
        worker.get("/", cookie)
    wait_until(lambda: op.introspections >= before + 1, "a check ran")
    time.sleep(0.3)
    assert op.introspections == before + 1


@pytest.mark.parametrize(("policy", "refused"), [("open", False), ("closed", True)])
def test_keycloak_unreachable(
    policy: str, refused: bool, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """KC_SSO_LIVENESS_FAILURE: open keeps the session, closed answers 503 for it (a
    temporary answer: the cookie is neither taken out nor expired)."""
    harness = make_harness(liveness_interval=60, liveness_failure=policy)
    cookie, _ = _login(harness, op, f"down-{policy}")
    op.introspection_status = 503
    try:
        before = op.introspections
        harness.get("/", cookie)
        wait_until(lambda: op.introspections > before, "the check ran")
        time.sleep(0.2)
        response = harness.get("/", cookie)
        if refused:
            assert response.status_code == 503
            assert response.headers["retry-after"]
            assert "set-cookie" not in response.headers
        else:
            assert response.status_code == 200
            assert response.json()["session"] != {}
    finally:
        op.introspection_status = 200


def test_a_closed_refusal_lifts_once_keycloak_answers_again(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """closed refuses a session only until a check succeeds: the worker whose check
    failed asks again at the next interval, and the session (and a new login into the
    same Keycloak session) gets through once Keycloak answers."""
    harness = make_harness(liveness_interval=0.3, liveness_failure="closed")
    cookie, tokens = _login(harness, op, "flaky-fay")
    op.introspection_status = 503
    try:
        before = op.introspections
        harness.get("/", cookie)
        wait_until(lambda: op.introspections > before, "the failing check ran")
        wait_until(lambda: harness.get("/", cookie).status_code == 503, "the session waits")
    finally:
        op.introspection_status = 200
    asked = op.introspections
    wait_until(lambda: harness.get("/", cookie).status_code == 200, "the session is back")
    assert op.introspections > asked
    assert harness.seen_session(cookie) != {}
    again = harness.session_cookie(op, sid=session_id_of(tokens))
    assert harness.seen_session(again) != {}


def test_an_idle_app_session_ends_here_only(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Past its refresh token's exp (this client's idle limit) only this app session ends."""
    op.refresh_lifetime = 1
    try:
        harness = make_harness(liveness_interval=0.5)
        cookie, tokens = _login(harness, op, "idle-app")
    finally:
        op.refresh_lifetime = 1800
    time.sleep(1.5)
    harness.get("/", cookie)
    wait_until(lambda: harness.seen_session(cookie) == {}, "the app session is refused")
    # Another app session of the same, still alive, Keycloak session is not touched.
    again = harness.session_cookie(op, sid=session_id_of(tokens))
    assert harness.seen_session(again) != {}


def test_sessions_without_a_refresh_token_are_not_checked(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Liveness needs a refresh token; a session without one is left to the other checks."""
    harness = make_harness(liveness_interval=60)
    before = op.introspections
    cookie = harness.session_cookie(op, sid="no-refresh")
    assert harness.seen_session(cookie) != {}
    time.sleep(0.2)
    assert op.introspections == before
