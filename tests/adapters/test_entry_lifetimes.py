"""An entry outlives every session it matches, even when the OP's clock runs ahead.

The OP's clock may be ahead of the app's by up to ``KC_SSO_CLOCK_SKEW`` (its tokens are
accepted so): a session it began "in the future" lives until its ``auth_time`` plus
``KC_SSO_MAX_SESSION_LIFETIME`` by the app's lifetime check, so the entry that revokes it
must last at least as long.
"""

from __future__ import annotations

from pathlib import Path

from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.stores.sqlite import SQLiteStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import CLIENT_ID, Clock, HarnessFactory, admin_token, post_admin

PATH = "/backchannel-logout"
LIFETIME = 3600
AHEAD = 30  # the OP's clock ahead of the app's, within the default skew of 60 s


def test_a_user_wide_entry_outlives_the_sessions_it_revokes(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    clock = Clock()
    harness = make_harness(
        store=MemoryStore(timer=clock), clock=clock, max_session_lifetime=LIFETIME
    )
    op_now = int(clock.now) + AHEAD
    cookie = harness.session_cookie(op, sid="s-ahead", sub="user-ahead", auth_time=op_now - 1)
    token = op.logout_token(CLIENT_ID, sub="user-ahead", sid=None, now=op_now)
    assert harness.client.post(PATH, data={"logout_token": token}).status_code == 200
    assert harness.seen_session(cookie) == {}
    # Still within the session's lifetime (auth_time + LIFETIME is AHEAD - 1 s away)...
    clock.now += LIFETIME + 1
    # ...so it must still be refused.
    assert harness.seen_session(cookie) == {}


def test_a_client_wide_entry_outlives_the_sessions_it_revokes(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    clock = Clock()
    harness = make_harness(
        store=MemoryStore(timer=clock), clock=clock, max_session_lifetime=LIFETIME
    )
    op_now = int(clock.now) + AHEAD
    cookie = harness.session_cookie(op, sid="s-push", sub="user-push", auth_time=op_now - 1)
    token = admin_token(op, "PUSH_NOT_BEFORE", notBefore=op_now, expiration=op_now + 30)
    assert post_admin(harness, "/k_push_not_before", token).status_code == 200
    assert harness.seen_session(cookie) == {}
    clock.now += LIFETIME + 1
    assert harness.seen_session(cookie) == {}


def test_a_logout_token_is_refused_as_a_replay_for_as_long_as_it_is_accepted(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The jti claim lasts as long as the token passes the iat window (max age + skew),
    its last instant included."""
    clock = Clock()
    clock.now = float(int(clock.now))
    harness = make_harness(store=MemoryStore(timer=clock), clock=clock)
    iat = int(clock.now)
    token = op.logout_token(CLIENT_ID, sid="s-edge", now=iat, exp=iat + 3600)
    assert harness.client.post(PATH, data={"logout_token": token}).status_code == 200
    settings = harness.settings
    # The end of the iat window: the claim made above expires at this very instant.
    clock.now = iat + settings.logout_token_max_age + settings.clock_skew
    replay = harness.client.post(PATH, data={"logout_token": token})
    assert replay.status_code == 400


def test_a_session_entry_outlives_the_session_for_a_worker_started_later(
    make_harness: HarnessFactory, op: StandInOP, tmp_path: Path
) -> None:
    """The same for a sid: a worker that starts near the end of the session's lifetime
    loads only the entries that have not expired, and must still refuse it."""
    clock = Clock()
    path = tmp_path / "revocations.db"
    first = SQLiteStore(path, timer=clock)
    first.start()
    try:
        harness = make_harness(store=first, clock=clock, max_session_lifetime=LIFETIME)
        op_now = int(clock.now) + AHEAD
        cookie = harness.session_cookie(op, sid="s-late", sub="user-late", auth_time=op_now - 1)
        token = op.logout_token(CLIENT_ID, sid="s-late", now=op_now)
        assert harness.client.post(PATH, data={"logout_token": token}).status_code == 200
    finally:
        first.close()
    clock.now += LIFETIME + 1  # the session has AHEAD - 2 s to live
    later = SQLiteStore(path, timer=clock)
    later.start()
    try:
        harness = make_harness(store=later, clock=clock, max_session_lifetime=LIFETIME)
        assert harness.seen_session(cookie) == {}
    finally:
        later.close()
