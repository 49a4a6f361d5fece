"""The replica as a value: buckets, expiry, the bound, scoping (no I/O, no sleep)."""

from __future__ import annotations

import random
import threading

import pytest

from kc_sso_middleware.errors import StoreFullError
from kc_sso_middleware.stores import Revocation, RevocationKind
from kc_sso_middleware.stores.memory import ClaimedJtis
from kc_sso_middleware.stores.replica import Replica

from ._helpers import ISSUER, LONG, Clock, every_session, keys, session, user


def test_no_unexpired_entry_is_ever_dropped() -> None:
    """Through many writes and clock steps, every entry stays until its own expires_at."""
    rng = random.Random(7)
    clock = Clock()
    replica = Replica(timer=clock)
    written: list[tuple[str, float]] = []
    for step in range(300):
        lifetime = rng.choice([5.0, 60.0, 3600.0, 36000.0]) * rng.uniform(0.1, 1.0)
        sid = f"sid-{step}"
        written.append((sid, clock.now + lifetime))
        replica.apply([session(sid, clock.now + lifetime)])
        clock.now += rng.uniform(0, 200)
        replica.expire()
        for held, expires_at in written:
            if expires_at > clock.now:
                assert replica.is_revoked(keys(held)), f"{held} dropped before its expiry"


def test_expired_buckets_are_dropped_and_counted_out() -> None:
    """Once a bucket's window has passed, its entries are gone and no longer count."""
    clock = Clock()
    replica = Replica(timer=clock)
    t = clock.now
    replica.apply([session(f"s-{i}", t + 100) for i in range(10)])
    replica.apply([user("alice", t, t + 100), every_session(t, t + 100)])
    assert len(replica) == 12
    clock.now = t + 1000
    replica.expire()
    assert len(replica) == 0
    assert not replica.is_revoked(keys("s-1", "alice", t - 1))


def test_a_long_lifetime_fills_only_a_few_buckets() -> None:
    """A day of writes with one lifetime spreads over at most five buckets (the look-up cost)."""
    clock = Clock()
    replica = Replica(timer=clock)
    for _minute in range(24 * 60):
        replica.apply([session(f"s-{clock.now}", clock.now + 36000)])
        clock.now += 60
    assert 3 <= len(replica._buckets) <= 5


def test_start_up_load_of_mixed_lifetimes_fills_few_buckets() -> None:
    """A batch with every remaining lifetime (a start-up load) lands in a few buckets."""
    clock = Clock()
    replica = Replica(timer=clock)
    replica.apply([session(f"s-{i}", clock.now + 1 + i * 36) for i in range(1000)])
    assert len(replica._buckets) <= 5
    assert all(replica.is_revoked(keys(f"s-{i}")) for i in range(1000))


def test_apply_returns_only_what_was_new() -> None:
    """Entries already held (as long or longer) are not new; a raised not_before is."""
    clock = Clock()
    replica = Replica(timer=clock)
    t = clock.now
    first = [session("a", t + LONG), user("u", t, t + LONG)]
    assert replica.apply(first) == first
    assert replica.apply([session("a", t + LONG), user("u", t - 5, t + LONG)]) == []
    later = user("u", t + 5, t + LONG)
    assert set(replica.apply([later, session("b", t + LONG)])) == {session("b", t + LONG), later}
    assert replica.apply([session("gone", t - 1)]) == []


def test_version_changes_only_when_content_does() -> None:
    """Applying nothing new keeps the version; anything new, or a drop, moves it."""
    clock = Clock()
    replica = Replica(timer=clock)
    t = clock.now
    before = replica.version
    replica.apply([session("a", t + 10)])
    after_add = replica.version
    assert after_add != before
    replica.apply([session("a", t + 10)])
    assert replica.version == after_add
    clock.now = t + 100
    replica.expire()
    assert replica.version not in {before, after_add}
    assert Replica().version > replica.version  # never repeats in a process


def test_bound_counts_held_entries_and_refuses_unauthenticated_only() -> None:
    """check_room raises StoreFullError at max_entries for unauthenticated writes only."""
    replica = Replica(max_entries=3)
    t = Clock().now
    replica.apply([session(f"s-{i}", t + LONG) for i in range(3)])
    replica.check_room(authenticated=True, store="test")
    with pytest.raises(StoreFullError, match="unauthenticated"):
        replica.check_room(authenticated=False, store="test")
    replica.apply([session(f"more-{i}", t + LONG) for i in range(10)])
    assert len(replica) == 13
    assert all(replica.is_revoked(keys(f"s-{i}")) for i in range(3))


def test_subjects_are_scoped_by_kind_issuer_and_client() -> None:
    """The same string as sid, sub or client id, or under two issuers, is four subjects."""
    a = Revocation.session("iss-a", "x", client_id="app", expires_at=1)
    assert a.subject != Revocation.session("iss-b", "x", client_id="app", expires_at=1).subject
    assert a.subject != Revocation.user("iss-a", "x", not_before=0, expires_at=1).subject
    assert (
        Revocation.all_sessions("iss-a", "x", not_before=0, expires_at=1).subject
        != Revocation.all_sessions("iss-b", "x", not_before=0, expires_at=1).subject
    )
    assert a.kind is RevocationKind.SESSION
    assert a.subject < 2**60


def test_a_sid_entry_revokes_its_clients_sessions_and_a_realm_wide_one_every_clients() -> None:
    """A sid entry names the Keycloak session in one client's apps; the realm-wide form
    earlier versions wrote still matches every client's, and both explain as "sid"."""
    clock = Clock()
    replica = Replica(timer=clock)
    until = clock.now + LONG
    replica.apply([session("s-1", until, client="app-a"), session("s-2", until, client=None)])
    assert replica.is_revoked(keys("s-1", client="app-a"))
    assert not replica.is_revoked(keys("s-1", client="app-b"))
    assert replica.revoked_by(keys("s-1", client="app-b")) is None
    for client in ("app-a", "app-b"):
        assert replica.is_revoked(keys("s-2", client=client))
        assert replica.revoked_by(keys("s-2", client=client)) == "sid"
    assert replica.revoked_by(keys("s-1", client="app-a")) == "sid"
    assert not replica.is_revoked(keys("s-1#jti", client="app-a"))  # a sid is no instance


def test_label_is_not_part_of_equality() -> None:
    """Two entries that differ only in their label are equal (the replica never keeps it)."""
    a = Revocation.session("iss", "x", client_id="app", expires_at=1)
    assert a == Revocation(a.kind, a.subject, a.not_before, a.expires_at, None)
    assert hash(a) == hash(Revocation(a.kind, a.subject, a.not_before, a.expires_at))


def test_lock_free_reads_see_every_entry_written_before_them() -> None:
    """Readers racing writers (and bucket drops) never miss an entry applied before they ask."""
    clock = Clock()
    replica = Replica(timer=clock)
    t = clock.now
    replica.apply([session("anchor", t + LONG)])
    stop = threading.Event()
    misses: list[str] = []

    def read() -> None:
        anchor = keys("anchor")
        while not stop.is_set():
            if not replica.is_revoked(anchor):
                misses.append("anchor")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    for batch in range(200):
        replica.apply([session(f"w-{batch}-{i}", t + 1 + batch % 7) for i in range(200)])
        clock.now = t + batch % 5
        replica.expire()
    stop.set()
    for thread in readers:
        thread.join()
    assert not misses


def test_jti_claims_last_until_their_own_expiry() -> None:
    """The replay cache refuses a live claim however many others follow; expiry frees it."""
    clock = Clock()
    claims = ClaimedJtis(clock)
    t = clock.now
    assert claims.claim("first", t + 10)
    for index in range(1000):
        assert claims.claim(f"other-{index}", t + 5)
    assert not claims.claim("first", t + 10)
    clock.now = t + 6
    assert claims.claim("unrelated", t + 100)
    assert len(claims) == 2  # the 1000 expired ones are gone
    clock.now = t + 11
    assert claims.claim("first", t + 20)


def test_a_snapshot_gives_back_every_live_entry_never_later_than_its_expiry() -> None:
    """What a repair writes back: each live entry, with an expiry not past its own."""
    clock = Clock()
    replica = Replica(timer=clock)
    entries = [
        Revocation.session(
            ISSUER, f"sid-{n}", client_id="app", expires_at=clock.now + 60 * n + 0.4321
        )
        for n in range(1, 50)
    ]
    entries.append(Revocation.user(ISSUER, "sub", not_before=clock.now, expires_at=clock.now + 90))
    replica.apply(entries)
    clock.now += 600.5
    back = {(e.kind, e.subject): e for e in replica.snapshot()}
    live = [e for e in entries if e.expires_at > clock.now]
    assert set(back) == {(e.kind, e.subject) for e in live}
    for entry in live:
        got = back[(entry.kind, entry.subject)].expires_at
        assert entry.expires_at - 0.002 <= got <= entry.expires_at


@pytest.mark.parametrize("days", [30, 100, 200, 365, 3650])
def test_long_session_lifetimes_are_held_and_snapshotted(days: int) -> None:
    """KC_SSO_MAX_SESSION_LIFETIME takes any positive number of seconds (Keycloak's SSO
    Session Max Remember Me is often months): every entry of such a lifetime is applied,
    and a snapshot gives each back, never later than its own expiry."""
    rng = random.Random(days)
    clock = Clock()
    replica = Replica(timer=clock)
    lifetime = days * 86400.0
    entries = []
    for n in range(200):
        entry = session(f"sid-{n}", clock.now + lifetime)
        replica.apply([entry])  # one by one, as logouts come
        entries.append(entry)
        clock.now += rng.uniform(0, lifetime / 100)
    for entry in entries:
        assert replica.is_revoked(keys(entry.label))
    back = {e.subject: e.expires_at for e in replica.snapshot()}
    for entry in entries:
        if entry.expires_at > clock.now:
            assert entry.expires_at - 0.002 <= back[entry.subject] <= entry.expires_at
