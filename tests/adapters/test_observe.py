"""Seeing whether single sign-out works: events as log records, metrics, the health path."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import pytest

from kc_sso_middleware._logs import Tagger
from kc_sso_middleware.stores import MemoryStore, StoreStatus
from kc_sso_middleware.testing import StandInOP
from tests.conftest import CLIENT_ID, HarnessFactory

BACKCHANNEL = "/backchannel-logout"


class _DownStore(MemoryStore):
    def status(self) -> StoreStatus:
        return StoreStatus(available=False, detail="down for the test")


def test_health_is_off_by_default(make_harness: HarnessFactory) -> None:
    """No KC_SSO_HEALTH_PATH: the app's own path."""
    assert make_harness().client.get("/healthz").status_code == 404


def test_health_says_ok(make_harness: HarnessFactory, op: StandInOP) -> None:
    """200 with the store, the replica and the OP contact; nothing about sessions."""
    harness = make_harness(health_path="/healthz")
    harness.client.post(BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID)})
    response = harness.client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["store"]["available"] is True
    assert body["replica"]["entries"] >= 1
    assert body["op"]["last_contact_seconds_ago"] is not None
    assert "session-1" not in response.text


@pytest.mark.parametrize(
    ("policy", "status", "word"), [("closed", 503, "unavailable"), ("open", 200, "degraded")]
)
def test_health_when_the_store_is_down(
    policy: str, status: int, word: str, make_harness: HarnessFactory
) -> None:
    """503 only where requests with a session get 503 too (KC_SSO_STORE_FAILURE=closed)."""
    harness = make_harness(health_path="/healthz", store=_DownStore(), store_failure=policy)
    response = harness.client.get("/healthz")
    assert response.status_code == status
    assert response.json()["status"] == word
    assert response.json()["store"]["detail"] == "down for the test"


def _count(text: str, event: str, code: str = "") -> float:
    labels = f'app="{CLIENT_ID}",code="{code}",event="{re.escape(event)}"'
    pattern = rf"kc_sso_events_total\{{{labels}\}} ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_what_happened(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Counters by outcome and rule code, served at KC_SSO_METRICS_PATH."""
    harness = make_harness(metrics_path="/metrics")
    before = harness.client.get("/metrics").text
    assert (
        harness.client.post(
            BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="m-1")}
        ).status_code
        == 200
    )
    harness.client.post(BACKCHANNEL, data={"logout_token": "junk"})
    response = harness.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert _count(after, "backchannel.accepted") == _count(before, "backchannel.accepted") + 1
    assert (
        _count(after, "backchannel.rejected", "malformed_token")
        == _count(before, "backchannel.rejected", "malformed_token") + 1
    )
    assert "kc_sso_backchannel_duration_seconds_count" in after
    assert "kc_sso_propagation_seconds_count" in after
    assert f'kc_sso_store_available{{app="{CLIENT_ID}"}} 1.0' in after


def test_events_are_structured_log_records(
    make_harness: HarnessFactory, op: StandInOP, caplog: pytest.LogCaptureFixture
) -> None:
    """One stable name per outcome in record.event, fields in record.kc_sso; sids tagged."""
    caplog.set_level(logging.INFO, logger="kc_sso_middleware.events")
    harness = make_harness()
    harness.client.post(
        BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="log-sid")}
    )
    records = [r for r in caplog.records if getattr(r, "event", None) == "backchannel.accepted"]
    assert len(records) == 1
    fields = records[0].kc_sso  # type: ignore[attr-defined]
    assert fields["app"] == CLIENT_ID
    assert fields["sid_tag"]
    assert fields["sid_tag"] != "log-sid"
    assert "log-sid" not in records[0].getMessage()


def test_an_event_nobody_takes_is_not_built_and_one_somebody_takes_is(
    make_harness: HarnessFactory,
    op: StandInOP,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a log handler at the event's level, a recorder or a callback, an event's
    fields (keyed tags) are not computed; each of the three makes it whole again."""
    caplog.set_level(logging.WARNING, logger="kc_sso_middleware.events")
    tagged: list[str | None] = []

    def tag(self: Tagger, value: str | None) -> str:
        tagged.append(value)
        return "tag"

    monkeypatch.setattr(Tagger, "tag", tag)
    harness = make_harness()
    events = harness.events
    assert not events.wanted("backchannel.accepted")
    assert not events.wanted("revocation.applied", logging.DEBUG)
    harness.client.post(BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="a")})
    assert tagged == []  # nobody would have seen them

    seen: list[object] = []
    events.on_revocation(seen.append)
    assert events.wanted("revocation.applied", logging.DEBUG)
    assert not events.wanted("backchannel.accepted")  # the callback takes only the other
    harness.client.post(BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="b")})
    assert tagged == ["b"]  # the applied entry's tag, for the callback
    assert _eventually(lambda: len(seen) == 1)

    counted: list[str] = []
    events.record_with(lambda event: counted.append(event.name))
    assert events.wanted("backchannel.accepted")
    harness.client.post(BACKCHANNEL, data={"logout_token": op.logout_token(CLIENT_ID, sid="c")})
    assert "backchannel.accepted" in counted
    assert "revocation.applied" in counted

    caplog.set_level(logging.INFO, logger="kc_sso_middleware.events")
    events._recorders = ()  # logging alone
    assert events.wanted("backchannel.accepted")
    assert not events.wanted("backchannel.accepted", logging.DEBUG)


def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
