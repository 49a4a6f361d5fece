"""The server-side session source's decisions as values, over a dict standing in for a
library's backend (no Redis, no server): what it reads, remembers, refuses and deletes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kc_sso_middleware import Revocation, Settings
from kc_sso_middleware._effects import BackendCall
from kc_sso_middleware._flows import Effect, Flow, drive
from kc_sso_middleware._http import PASS, RequestHead, SignOut, Verdict
from kc_sso_middleware.sources.base import Finding
from kc_sso_middleware.sources.cookie_views import StarletteView, WerkzeugView
from kc_sso_middleware.sources.serverside import ServerSideSessionSource
from kc_sso_middleware.stores import MemoryStore

ISSUER = "http://op.test/realms/r"
SIGNED_OUT = SignOut("revoked")


class DictSource(ServerSideSessionSource):
    """A server-side source whose library keeps sessions in a dict."""

    name = "dict"

    def __init__(self, view: Any = None, store: MemoryStore | None = None) -> None:
        settings = Settings(issuer=ISSUER, client_id="c", session_secret="s", store="memory://")
        super().__init__(
            settings,
            cookie_name="session",
            view=view or WerkzeugView(),
            expire="session=; Max-Age=0; Path=/",
            clock=time.time,
            store=store,
        )
        self.backend: dict[str, dict[str, Any]] = {}
        self.reads = 0
        self.failing = False

    def _read(self, session_id: str) -> BackendCall[Any]:
        def read() -> Any:
            self.reads += 1
            if self.failing:
                raise ConnectionError("backend down")
            return self.backend.get(session_id)

        return BackendCall(sync=read)

    def _delete(self, session_id: str) -> BackendCall[None]:
        return BackendCall(sync=lambda: self.backend.pop(session_id, None) and None)


def run(flow: Flow[Any]) -> Any:
    def perform(effect: Effect[Any]) -> object:
        assert isinstance(effect, BackendCall)
        assert effect.sync is not None
        return effect.sync()

    return drive(flow, perform)


def login(sid: str, sub: str = "u") -> dict[str, Any]:
    return {"user": {"sid": sid, "sub": sub, "iat": int(time.time())}}


def found(source: DictSource, header: str | bytes) -> Finding | None:
    """What the request path finds, loading when the source asks to."""
    finding = source.find(RequestHead((header,)), time.time())
    if finding is not None and finding.load is not None:
        finding = run(finding.load)
    return finding


def refused(source: DictSource, finding: Finding, header: str) -> Verdict:
    verdict = source.refuse(finding, RequestHead((header,)), SIGNED_OUT)
    assert verdict.pending is not None
    result: Verdict = run(verdict.pending)
    return result


def test_a_cached_reading_needs_no_backend_read() -> None:
    """The second request with the same id is answered from memory."""
    source = DictSource()
    source.backend["abc"] = login("s1")
    first = found(source, "session=abc")
    assert first is not None
    assert first.identities[0].sid == "s1"
    assert found(source, "a=1; session=abc") is first
    assert source.reads == 1


@pytest.mark.parametrize(
    ("view", "header", "read"),
    [
        pytest.param(WerkzeugView(), 'session="abc"', "abc", id="werkzeug quoted"),
        pytest.param(WerkzeugView(), "session=abc; session=xyz", "abc", id="werkzeug first"),
        pytest.param(StarletteView(), "session=abc; session=xyz", "xyz", id="starlette last"),
        pytest.param(StarletteView(), b'session="\\141bc"', "abc", id="starlette escaped"),
    ],
)
def test_the_id_is_the_one_the_library_reads(view: Any, header: str | bytes, read: str) -> None:
    """Unusual headers are read by the library's own parser."""
    source = DictSource(view)
    source.backend = {"abc": login("s-abc"), "xyz": login("s-xyz")}
    finding = found(source, header)
    assert finding is not None
    assert finding.identities[0].sid == f"s-{read}"


@pytest.mark.parametrize("kind", [str, bytes])
def test_a_repeated_header_reads_as_what_it_holds(kind: type) -> None:
    """A header seen before is answered without parsing it again, never with another
    header's value: equal tails, other ids; the very same header object; a header
    without the session cookie; unusual headers still go to the library's parser."""

    def header(text: str) -> str | bytes:
        return text if kind is str else text.encode("latin-1")

    source = DictSource(StarletteView())
    source.backend = {"abc": login("s-abc"), "xyz": login("s-xyz")}
    tail = "; lang=" + "x" * 60  # longer than the key: the same tail after other ids
    for _ in range(3):
        for session_id in ("abc", "xyz", "abc"):
            text = header(f"session={session_id}{tail}")
            finding = found(source, text)
            assert finding is not None
            assert finding.identities[0].sid == f"s-{session_id}"
            assert found(source, text) is finding  # the same object again
        assert source.find(RequestHead((header(f"theme=dark{tail}"),)), time.time()) is None
        # Not plain: the last of two wins in Starlette, and is never remembered as plain.
        finding = found(source, header(f"session=abc; session=xyz{tail}"))
        assert finding is not None
        assert finding.identities[0].sid == "s-xyz"


def test_remembered_headers_stay_within_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its byte bound the header memory starts again: it never grows without end."""
    from kc_sso_middleware.sources import serverside

    monkeypatch.setattr(serverside, "HEADER_CACHE_BYTES", 20_000)
    source = DictSource()
    source.backend["abc"] = login("s1")
    for n in range(200):
        finding = found(source, f"n={n}; session=abc")
        assert finding is not None
        assert finding.identities[0].sid == "s1"
        assert source._headers.size <= 20_000
    assert 0 < len(source._headers.entries) < 200


def test_no_id_or_no_data_passes_and_is_not_remembered() -> None:
    """No session cookie, or an id the backend holds nothing for: nothing to judge."""
    source = DictSource()
    assert source.find(RequestHead(("theme=dark",)), time.time()) is None
    assert found(source, "session=unknown") is None
    assert len(source._cache) == 0


def test_data_without_a_login_passes() -> None:
    """OAuth state kept before login: found, no identity, the request passes."""
    source = DictSource()
    source.backend["pre"] = {"_state_keycloak_x": {"data": 1}}
    finding = found(source, "session=pre")
    assert finding is not None
    assert finding.identities == ()
    assert finding.clean is PASS


def test_a_malformed_login_is_taken_out_of_the_request() -> None:
    """An id_token that is no JWT cannot be vouched for: the cookie goes, not the data."""
    source = DictSource()
    source.backend["bad"] = {"id_token": "not-a-jwt"}
    finding = found(source, "a=1; session=bad")
    assert finding is not None
    assert finding.clean.cookie == "a=1"
    assert "bad" in source.backend


def test_an_unreadable_backend_answers_503() -> None:
    """The backend cannot be asked: 503, never the app unchecked."""
    source = DictSource()
    source.failing = True
    finding = found(source, "session=abc")
    assert finding is not None
    assert finding.clean.response is not None
    assert finding.clean.response.status == 503


def test_refusing_deletes_a_session_still_holding_the_revoked_login() -> None:
    """Read again, same login: deleted, cookie taken out and expired, marker set."""
    source = DictSource()
    source.backend["abc"] = login("s1")
    finding = found(source, "session=abc")
    assert finding is not None
    verdict = refused(source, finding, "a=1; session=abc")
    assert "abc" not in source.backend
    assert verdict.cookie == "a=1"
    assert verdict.set_cookies == ("session=; Max-Age=0; Path=/",)
    assert verdict.signed_out is SIGNED_OUT


def test_refusing_spares_a_new_login_under_the_same_id() -> None:
    """Another worker wrote a new, unrevoked login under the id: it passes, is kept and
    remembered, and is judged from then on."""
    store = MemoryStore()
    source = DictSource(store=store)
    source.backend["abc"] = login("old")
    finding = found(source, "session=abc")
    assert finding is not None
    source.backend["abc"] = login("new")
    store.record([Revocation.session(ISSUER, "old", client_id="c", expires_at=time.time() + 60)])

    assert refused(source, finding, "session=abc") is PASS
    assert "abc" in source.backend
    now_found = source.find(RequestHead(("session=abc",)), time.time())
    assert now_found is not None
    assert now_found.identities[0].sid == "new"


def test_refusing_deletes_a_new_login_that_is_revoked_too() -> None:
    """The new login under the id is revoked as well: refused and deleted."""
    store = MemoryStore()
    source = DictSource(store=store)
    source.backend["abc"] = login("old")
    finding = found(source, "session=abc")
    assert finding is not None
    source.backend["abc"] = login("new")
    expires = time.time() + 60
    store.record(
        [
            Revocation.session(ISSUER, "old", client_id="c", expires_at=expires),
            Revocation.session(ISSUER, "new", client_id="c", expires_at=expires),
        ]
    )
    assert refused(source, finding, "session=abc").signed_out is SIGNED_OUT
    assert "abc" not in source.backend


def test_refusing_a_session_already_gone_still_takes_the_cookie_out() -> None:
    """Deleted meanwhile (a purge): refused all the same, nothing left to delete."""
    source = DictSource()
    source.backend["abc"] = login("s1")
    finding = found(source, "session=abc")
    assert finding is not None
    del source.backend["abc"]
    verdict = refused(source, finding, "session=abc")
    assert verdict.cookie == ""
    assert verdict.set_cookies


def test_a_save_updates_the_reading_and_asks_for_an_index_write_only_for_new_logins() -> None:
    """What the library saves replaces this worker's reading; deleting forgets it."""
    source = DictSource()
    assert source.observed("abc", {"state": 1}) is None  # no index here either way
    reading = source._cache.get("abc")
    assert reading is not None
    assert reading.identities == ()
    source.observed("abc", login("s1"))
    reading = source._cache.get("abc")
    assert reading is not None
    assert reading.identities[0].sid == "s1"
    source.observed("abc", login("s1"))
    assert source._cache.get("abc") is reading  # unchanged: kept, with its check state
    source.observed("abc", None)
    assert source._cache.get("abc") is None


def test_a_reading_made_before_a_revocation_is_read_again_without_an_index() -> None:
    """Two workers, one backend with no index (filesystem, memcached, SQL): A remembers a
    session without a login; B stores a login under that id, and the login is revoked.
    The backend still holds it, so A must not answer from its reading."""
    store = MemoryStore()
    worker_a, worker_b = DictSource(store=store), DictSource(store=store)
    worker_b.backend = worker_a.backend
    worker_a.backend["shared-id"] = {"state": "xyz"}
    worker_a.observed("shared-id", {"state": "xyz"})
    reading = found(worker_a, "session=shared-id")
    assert reading is not None
    assert reading.identities == ()
    worker_b.backend["shared-id"] = {"state": "xyz", **login("sid-1")}
    worker_b.observed("shared-id", worker_b.backend["shared-id"])
    assert store.record(
        [Revocation.session(ISSUER, "sid-1", client_id="c", expires_at=time.time() + 3600)]
    )
    reads = worker_a.reads
    again = found(worker_a, "session=shared-id")
    assert worker_a.reads == reads + 1
    assert again is not None
    assert [i.sid for i in again.identities] == ["sid-1"]
    # Nothing changed since: the new reading stands.
    assert found(worker_a, "session=shared-id") is again
    assert worker_a.reads == reads + 1
