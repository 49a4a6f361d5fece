"""What the middleware tells others (callbacks, metrics, log lines) stays true under failure.

Each test names what an operator or the app relies on (README's "Events, metrics and
health" and "Security" sections) and that a refused, failed or hostile request must not
take away or distort.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import pytest

from kc_sso_middleware.errors import StoreUnavailableError
from kc_sso_middleware.events import Event
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.stores.model import Revocation
from kc_sso_middleware.testing import StandInOP
from tests.adapters.test_observe import _eventually
from tests.conftest import CLIENT_ID, HarnessFactory, direct_grant

BACKCHANNEL = "/backchannel-logout"


class _WriteFailingStore(MemoryStore):
    """A store whose writes fail (Redis not confirming a write), its replica serving."""

    def record(self, revocations: Sequence[Revocation], **kwargs: Any) -> bool:
        raise StoreUnavailableError("the write was not confirmed")

    async def arecord(self, revocations: Sequence[Revocation], **kwargs: Any) -> bool:
        raise StoreUnavailableError("the write was not confirmed")


def _total(text: str, metric: str, **labels: str) -> float:
    """The sum of ``metric``'s samples of app ``CLIENT_ID`` whose labels include ``labels``
    (prometheus' registry is per process: tests compare before and after)."""
    total = 0.0
    for found in re.finditer(rf"^{metric}\{{([^}}]*)\}} ([0-9.e+]+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if have.get("app") == CLIENT_ID and all(have.get(k) == v for k, v in labels.items()):
            total += float(found.group(2))
    return total


# ------------------------------------------------------------------ callbacks


def test_a_back_channel_logout_lost_to_the_store_reaches_on_rejected(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """README's ``on_rejected(lambda e: alert(e["code"]))`` must hear of the rejection that
    matters most: Keycloak never retries a back-channel request, so one answered 503
    because the revocation could not be stored leaves the session alive here."""
    harness = make_harness(store=_WriteFailingStore())
    rejected: list[Event] = []
    harness.events.on_rejected(rejected.append)
    token = op.logout_token(CLIENT_ID, sid="lost-sid")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 503
    assert harness.client.post(BACKCHANNEL, data={"logout_token": "junk"}).status_code == 400
    harness.events.drain()
    assert _eventually(lambda: len(rejected) >= 2)
    codes = [event["code"] for event in rejected]
    assert codes == ["store_unavailable", "malformed_token"], codes


def test_a_failing_recorder_does_not_keep_events_from_the_callbacks(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A recorder (metrics, or the app's own) that raises must not stop an event on its
    way to the others: an ``on_revocation`` callback closing a revoked session's
    websockets would otherwise never run."""
    harness = make_harness()

    def broken(event: Event) -> None:
        raise RuntimeError("a metrics backend that fails")

    counted: list[str] = []
    revoked: list[Event] = []
    harness.events.record_with(broken)
    harness.events.record_with(lambda event: counted.append(event.name))
    harness.events.on_revocation(revoked.append)
    token = op.logout_token(CLIENT_ID, sid="ws-sid")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 200
    assert _eventually(lambda: len(revoked) == 1)
    assert revoked[0]["key"] == "ws-sid"
    assert "backchannel.accepted" in counted


def test_an_api_logout_keycloak_refused_is_an_event(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Every outcome is one event: an API logout that ended the app session but not
    Keycloak's (Keycloak refused it) is ``logout.api`` with ``op_ended`` false and why,
    not silence."""
    harness = make_harness(client_secret="wrong-secret")
    seen: list[Event] = []
    harness.events.subscribe(seen.append, names=["logout.api"])
    tokens = direct_grant(op)
    response = harness.client.post(
        "/logout",
        data={"refresh_token": tokens["refresh_token"]},
        headers={"Accept": "application/json", "Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 502
    harness.events.drain()
    assert _eventually(lambda: len(seen) == 1)
    assert seen[0]["op_ended"] is False
    assert seen[0]["code"] == "op_logout_failed"
    assert seen[0]["op_error"] == "unauthorized_client"


# ------------------------------------------------------------------ metrics


def test_a_wrong_method_at_the_observability_paths_is_no_refused_session(
    make_harness: HarnessFactory,
) -> None:
    """Anyone can POST to the health path or HEAD the metrics path: that is no session
    refused, and must not grow ``kc_sso_requests_refused_total`` (an alert's input) under
    a ``reason="None"`` nobody emits."""
    harness = make_harness(health_path="/healthz", metrics_path="/metrics")
    before = harness.client.get("/metrics").text
    assert harness.client.post("/healthz").status_code == 405
    assert harness.client.request("HEAD", "/metrics").status_code == 405
    after = harness.client.get("/metrics").text
    assert _total(after, "kc_sso_requests_refused_total") == _total(
        before, "kc_sso_requests_refused_total"
    )
    # the outcome itself is still counted, by event and code
    assert _total(after, "kc_sso_events_total", code="method_not_allowed") == (
        _total(before, "kc_sso_events_total", code="method_not_allowed") + 2
    )


def test_a_failed_key_fetch_is_counted_once(make_harness: HarnessFactory, op: StandInOP) -> None:
    """One failed fetch of the OP's keys is one ``result="failed"`` sample, by its reason:
    the request it failed is refused (``jwks.failed`` with its code) but is no second
    fetch, least of all one for an unknown kid."""
    dead = "http://127.0.0.1:9/realms/test"  # nothing listens on the discard port
    harness = make_harness(issuer=dead, metrics_path="/metrics")
    before = harness.client.get("/metrics").text
    token = op.logout_token(CLIENT_ID, sid="k-sid")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": token}).status_code == 503
    after = harness.client.get("/metrics").text
    metric = "kc_sso_jwks_fetches_total"
    assert _total(after, metric, result="failed") == _total(before, metric, result="failed") + 1
    assert _total(after, metric, reason="load", result="failed") == (
        _total(before, metric, reason="load", result="failed") + 1
    )


# ------------------------------------------------------------------ log lines


def test_log_lines_escape_c1_controls(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An 8-bit CSI (U+009B, ANSI's one-byte escape) in a request value is escaped like
    ESC is: it must not reach a terminal or log viewer that acts on it."""
    harness = make_harness()
    caplog.set_level(logging.INFO, logger="kc_sso_middleware")
    target = "https://evil.test/\x9b2J\x9b31mforged"
    harness.client.get("/logout", params={"post_logout_redirect_uri": target})
    messages = [record.getMessage() for record in caplog.records]
    assert any("forged" in message for message in messages), messages
    for message in messages:
        assert not any(0x80 <= ord(ch) < 0xA0 for ch in message), ascii(message)


def test_closing_the_store_at_shutdown_reports_no_outage(
    make_harness: HarnessFactory, tmp_path: Any
) -> None:
    """Every graceful shutdown (``worker_exit``, lifespan shutdown) closes the store; a
    warning "revocation store unavailable" and a ``store.unavailable`` event then would
    page an operator, and count an outage in the metrics, for every deploy."""
    from kc_sso_middleware.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "revocations.db"))
    harness = make_harness(store=store)
    assert harness.client.get("/").status_code == 200  # the store starts
    assert store.status().available
    harness.events.drain()  # its store.recovered
    heard: list[Event] = []
    harness.events.subscribe(heard.append)
    store.close()
    harness.events.drain()
    assert not store.status().available  # still refused as the policy says ...
    assert [e.name for e in heard if e.name.startswith("store.")] == []  # ... but no outage


def test_a_store_outage_is_still_reported(make_harness: HarnessFactory, tmp_path: Any) -> None:
    """The other side of the shutdown case: a store that fails is reported."""
    from kc_sso_middleware.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "revocations.db"), poll_interval=0.01)
    harness = make_harness(store=store)
    assert harness.client.get("/").status_code == 200
    harness.events.drain()
    heard: list[Event] = []
    harness.events.subscribe(heard.append)
    (tmp_path / "revocations.db").unlink()  # the file is gone: the replica is not current
    (tmp_path / "revocations.db").mkdir()  # and a directory stands in its way
    # The follower notices at its next poll (status() may know sooner): wait for the event.
    assert _eventually(lambda: "store.unavailable" in [e.name for e in heard], timeout=30)
    store.close()
