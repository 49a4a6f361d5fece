"""Liveness and lifetime edge cases: clocks, bounded memory, bearer tokens past the lifetime."""

from __future__ import annotations

import time
from typing import Any, Literal

import pytest

from kc_sso_middleware.testing import StandInOP, mint_jwt
from tests.conftest import (
    Clock,
    Harness,
    HarnessFactory,
    PortalClient,
    direct_grant,
    make_settings,
    session_id_of,
    sso_middleware,
    wait_until,
)


def test_keycloak_a_little_ahead_ends_this_app_session_only(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak's clock runs 20 s ahead of the app's (within KC_SSO_CLOCK_SKEW, 60 s by
    default, which the rest of the package tolerates): the refresh token's exp passed on
    Keycloak's clock, not yet on the app's.  That is this client's idle limit, not the
    end of the Keycloak session: other app sessions of the same, still alive, Keycloak
    session (and new SSO logins into it) must not be refused."""
    op.refresh_lifetime = 1
    try:
        harness = make_harness(liveness_interval=0.3, clock=lambda: time.time() - 20)
        tokens = direct_grant(op, "skewed-sam")
    finally:
        op.refresh_lifetime = 1800
    cookie = harness.tokens_cookie(tokens)
    time.sleep(1.5)  # past the token's exp on Keycloak's clock
    harness.get("/", cookie)
    wait_until(lambda: harness.refused_for_good(cookie), "the app session is refused")
    assert op.sessions.get(session_id_of(tokens)) is not None  # Keycloak's session lives on
    again = harness.session_cookie(op, sid=session_id_of(tokens))
    assert harness.seen_session(again) != {}


def test_a_bearer_token_is_refused_once_its_session_passes_the_lifetime(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """KC_SSO_MAX_SESSION_LIFETIME: "sessions that began longer ago than this are refused".
    A bearer token seen while its session was younger must not stay accepted, from the
    source's memory, until its own exp once the session is older (the cookie and
    server-side sources cap their readings at the lifetime)."""
    clock = Clock()
    harness = make_harness(clock=clock, max_session_lifetime=3600)
    now = int(clock.now)
    token = mint_jwt(
        op.key,
        {
            "iss": op.issuer,
            "aud": "account",
            "azp": "spa",
            "sub": "user-1",
            "sid": "old-bearer-sid",
            "iat": now,
            "exp": now + 300,
            "auth_time": now - 3600 + 10,  # 10 s before the lifetime is reached
            "typ": "Bearer",
        },
        {"typ": "JWT"},
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert harness.client.get("/api", headers=headers).status_code == 200
    clock.now += 60  # the session is now older than the lifetime; the token has 4 min left
    response = harness.client.get("/api", headers=headers)
    assert response.status_code == 401
    # A worker that never saw the token refuses it: only this worker's memory differed.
    other = make_harness(clock=clock, max_session_lifetime=3600)
    assert other.client.get("/api", headers=headers).status_code == 401


def _liveness(harness: Harness) -> Any:
    from kc_sso_middleware import asgi as asgi_adapter

    if harness.kind == "wsgi":
        return harness.app.wsgi_app.core.check._liveness
    node: Any = harness.app.middleware_stack
    while not isinstance(node, asgi_adapter.SSOMiddleware):
        node = node.app
    return node.core.check._liveness


def test_failed_checks_are_not_remembered_forever(
    make_harness: HarnessFactory, op: StandInOP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KC_SSO_LIVENESS_FAILURE=closed remembers each session whose check failed, until a
    check of it succeeds.  Sessions that never come back after an outage must not stay in
    memory for the life of the process (outage after outage): once past
    KC_SSO_MAX_SESSION_LIFETIME they are refused anyway, and forgotten."""
    from kc_sso_middleware.core import liveness as liveness_module

    monkeypatch.setattr(liveness_module, "_SWEEP_FROM", 4)
    clock = Clock()
    harness = make_harness(
        clock=clock, liveness_interval=60, liveness_failure="closed", max_session_lifetime=3600
    )
    op.introspection_status = 503
    try:
        before = op.introspections
        refresh = direct_grant(op, "any")["refresh_token"]

        def session(n: int) -> str:  # a login now, on the app's clock
            extra = {"refresh_token": refresh}
            return harness.session_cookie(op, sid=f"gone-{n}-{clock.now}", extra=extra)

        for n in range(3):  # an outage: three sessions, one request each, never seen again
            harness.get("/", session(n))
        wait_until(lambda: op.introspections >= before + 3, "the checks ran")
        clock.now += 2 * 3600  # outages later, long past the lifetime of those sessions
        for n in range(3):
            harness.get("/", session(n))
        wait_until(lambda: op.introspections >= before + 6, "the later checks ran")
        time.sleep(0.2)
    finally:
        op.introspection_status = 200
    assert len(_liveness(harness)._unconfirmed) <= 3


def test_a_hanging_keycloak_does_not_pile_up_checks(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak hangs (each introspection runs into KC_SSO_HTTP_TIMEOUT): a busy session
    must not queue a new check every interval while its last one still waits, or the
    checks beside requests (two threads under WSGI, tasks under ASGI) grow without bound
    and Keycloak gets them all once it answers again."""
    harness = make_harness(liveness_interval=0.05, liveness_failure="closed", http_timeout=0.5)
    cookie = harness.tokens_cookie(direct_grant(op, "patient-pat"))
    op.introspection_delay = 2.0
    try:
        before = op.introspections
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # a busy page: a request every 20 ms
            harness.get("/", cookie)
            time.sleep(0.02)
        asked = op.introspections - before
    finally:
        op.introspection_delay = 0.0
    # One check in flight at a time for the session: in 1.5 s, with a 0.5 s timeout, at
    # most a handful of attempts, never one per request.
    assert asked <= 4, f"{asked} introspections of one session in 1.5 s"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_shutdown_ends_the_checks_beside_requests_quietly(
    kind: Literal["asgi", "wsgi"], op: StandInOP
) -> None:
    """At shutdown a check beside a request may still wait for Keycloak.  Closing the
    HTTP client under it made it fail: a false ``liveness.failed`` warning (and its event,
    its metric) from every worker that stopped mid-check.  Under ASGI the check is
    cancelled before the client closes (also before the event loop ends, which would drop
    its socket unclosed); under WSGI its thread is waited for (it ends within
    KC_SSO_HTTP_TIMEOUT), checks not started yet are dropped."""
    harness = Harness(kind, make_settings(op, liveness_interval=0.2))
    seen: list[str] = []  # this middleware's events (the log has other tests' late ones)
    harness.events.subscribe(lambda event: seen.append(event.name))
    cookie = harness.tokens_cookie(direct_grant(op, "leaving-lou"))
    op.introspection_delay = 5.0 if kind == "asgi" else 0.5
    try:
        # The OP is shared by every test: counted from before the request, as the check
        # may reach it before the request's answer reaches the test.
        asked = op.introspections
        harness.seen_session(cookie)  # a session not checked yet: its check starts beside
        wait_until(lambda: op.introspections > asked, "Keycloak is asked")
        if isinstance(harness.client, PortalClient):
            middleware = sso_middleware(harness.app.middleware_stack)
            assert middleware._runner._background, "a check waits for Keycloak"
            harness.client.call(middleware.aclose)
            assert not middleware._runner._background
            assert not middleware._runner.http._transport._pool.connections  # type: ignore[attr-defined]
        else:
            harness.app.wsgi_app.close()
            harness.events.drain()
            assert "liveness.alive" in seen, seen  # the check ran to its end
    finally:
        op.introspection_delay = 0.0
        harness.client.close()
    harness.events.drain()
    assert "liveness.failed" not in seen, seen


def test_liveness_without_a_client_secret_is_refused_at_start(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Keycloak refuses token introspection to a request without client authentication
    (TokenIntrospectionEndpoint.authorizeClient: 401 "Authentication failed.", 403 "Client
    not allowed." for a public client), and the middleware authenticates only with
    KC_SSO_CLIENT_SECRET.  Without it no check can ever succeed: under
    KC_SSO_LIVENESS_FAILURE=closed every session holding a refresh token is answered 503
    from its second request on, for good.  The configuration must be refused at start."""
    from kc_sso_middleware.errors import ConfigurationError
    from tests.conftest import make_settings

    # What happens today: every check fails, the session stays 503 interval after interval.
    try:
        harness = make_harness(liveness_interval=0.2, liveness_failure="closed", client_secret=None)
    except ConfigurationError:
        pass
    else:
        cookie = harness.tokens_cookie(direct_grant(op, "no-secret-nina"))
        harness.get("/", cookie)
        time.sleep(1.0)  # five intervals: a check each time, each refused by Keycloak
        assert harness.get("/", cookie).status_code == 503
        assert harness.get("/", cookie).status_code == 503
    with pytest.raises(ConfigurationError, match="KC_SSO_CLIENT_SECRET"):
        make_settings(op, liveness_interval=30, client_secret=None)
