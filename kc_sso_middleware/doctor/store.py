"""The revocation store: reachable, writable, replica current, workers alive and caught up.

:func:`probe_store` does the I/O once (open, start, one harmless write, the followers'
positions twice if one lags); the decision, :func:`store_findings`, reads only the value it
returns.  Where a SQLite file is and who can share it is :mod:`.sqlite_file`.

The harmless write claims a random logout-token ``jti`` that expires a second later and
records no revocation, so it exercises the write path (lock, transaction, fsync, Redis
script) without leaving anything that could end a session.  A SQLite file that does not
exist yet is not created: created by this check, it would belong to this check's user and
could lock the app's workers out.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigurationError, StoreUnavailableError
from ..settings import Settings
from ..stores import RevocationStore, open_store
from ..stores._following import FollowerState, FollowingStore
from ..stores.options import redact
from .report import Finding, Severity
from .sqlite_file import sqlite_path

__all__ = ["SETTLE_SECONDS", "StoreProbe", "probe_store", "store_findings"]

#: how long to wait before looking again at a worker that seemed behind
SETTLE_SECONDS = 1.2


# -- the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreProbe:
    """What happened when the store was opened, started, written and listed."""

    url: str
    kind: str
    #: ConfigurationError text from open or start
    config_error: str | None = None
    #: StoreUnavailableError text from start, or the status detail after it
    unavailable: str | None = None
    started: bool = False
    #: the SQLite file did not exist, so the store was not started
    not_created: bool = False
    write_error: str | None = None
    write_seconds: float | None = None
    #: other followers, at the first look and (if one lagged) the second
    followers: tuple[FollowerState, ...] | None = None
    followers_later: tuple[FollowerState, ...] | None = None
    followers_error: str | None = None
    #: (maxmemory-policy, maxmemory) of a Redis that may evict the store's keys
    evicting: tuple[str, int] | None = None


def _kind(url: str) -> str:
    scheme = url.partition("://")[0]
    return {"memory": "memory", "sqlite": "sqlite"}.get(scheme, "redis")


def probe_store(
    settings: Settings,
    *,
    opener: Callable[[str], RevocationStore] = open_store,
    settle: float = SETTLE_SECONDS,
) -> StoreProbe:
    """Open and start the store, write harmlessly, list the followers; close it again."""
    url = settings.store
    shown, kind = redact(url), _kind(url)
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None and not os.path.exists(path):
            return StoreProbe(shown, kind, not_created=True)
    try:
        store = opener(url)
    except ConfigurationError as exc:
        return StoreProbe(shown, kind, config_error=exc.description)
    except ImportError as exc:  # redis-py is an extra
        return StoreProbe(
            shown,
            kind,
            config_error=f"{exc}; install the redis extra: pip install 'kc-sso-middleware[redis]'",
        )
    try:
        try:
            store.start()
        except ConfigurationError as exc:
            return StoreProbe(shown, kind, config_error=exc.description)
        except StoreUnavailableError as exc:
            return StoreProbe(shown, kind, unavailable=exc.description)
        status = store.status()
        if not status.available:
            return StoreProbe(shown, kind, unavailable=status.detail or "not available")
        evicting: tuple[str, int] | None = getattr(store, "eviction_risk", None)
        began = time.monotonic()
        write_error = None
        try:
            store.record(
                [], jti=f"kc-sso-check:{secrets.token_hex(8)}", jti_expires_at=time.time() + 1
            )
        except StoreUnavailableError as exc:
            write_error = exc.description
        elapsed = time.monotonic() - began
        first = later = None
        followers_error = None
        if isinstance(store, FollowingStore):
            try:
                first = _others(store)
                if any(f.alive and f.lag for f in first):
                    time.sleep(settle)
                    later = _others(store)
            except StoreUnavailableError as exc:
                followers_error = exc.description
        return StoreProbe(
            shown,
            kind,
            started=True,
            write_error=write_error,
            write_seconds=elapsed,
            followers=first,
            followers_later=later,
            followers_error=followers_error,
            evicting=evicting,
        )
    finally:
        store.close()


def _others(store: FollowingStore) -> tuple[FollowerState, ...]:
    return tuple(f for f in store.followers() if f.name != store.follower_name)


def store_findings(probe: StoreProbe) -> list[Finding]:
    findings: list[Finding] = []
    if probe.kind == "memory":
        findings.append(
            Finding(
                "store-memory",
                Severity.WARN,
                "KC_SSO_STORE=memory:// keeps revocations in one process: right only for a "
                "single-process app.  With several workers or hosts, Keycloak's back-channel "
                "request reaches one of them and the others keep accepting the session.",
                "Leave KC_SSO_STORE unset (a SQLite file shared by the host's workers), or "
                "use redis://… for several hosts.",
            )
        )
    if probe.config_error is not None:
        return [
            *findings,
            Finding(
                "store-config",
                Severity.PROBLEM,
                f"The store {probe.url} cannot be used: {probe.config_error}",
                "Fix KC_SSO_STORE as the message says; the app refuses to start like this.",
            ),
        ]
    if probe.not_created:
        return findings
    if probe.unavailable is not None:
        unreachable = probe.kind == "redis"
        return [
            *findings,
            Finding(
                "store-unreachable" if unreachable else "store-unavailable",
                Severity.UNCHECKED if unreachable else Severity.PROBLEM,
                f"The store {probe.url} is not available: {probe.unavailable}.  With "
                "KC_SSO_STORE_FAILURE=closed (the default) the app answers 503 to requests "
                "with a session meanwhile, and back-channel logouts get 503 (Keycloak does "
                "not retry them).",
                "Check that Redis runs and that this host reaches it (host, port, password, "
                "TLS options in KC_SSO_STORE); run the check on the app's host."
                if unreachable
                else "Check the file's directory, permissions and free space.",
            ),
        ]
    findings.append(
        Finding(
            "store-ok",
            Severity.OK,
            f"The store {probe.url} is reachable and this process's replica is current.",
        )
    )
    if probe.evicting is not None:
        policy, limit = probe.evicting
        findings.append(
            Finding(
                "store-evicting",
                Severity.PROBLEM,
                f"Redis has maxmemory {limit} bytes with maxmemory-policy {policy}: when "
                "memory runs short it evicts any key, the store's too (they have no TTL), "
                "and revocations are forgotten: a worker that starts afterwards accepts "
                "the sessions they ended.",
                "Set maxmemory-policy noeviction (or a volatile-* policy, which evicts only "
                "keys with a TTL), or give the store a Redis of its own.",
            )
        )
    if probe.write_error is not None:
        findings.append(
            Finding(
                "store-write-failed",
                Severity.PROBLEM,
                f"A harmless test write to {probe.url} failed: {probe.write_error}.  "
                "Back-channel logouts would be answered 503 and lost.",
                "Check write access (a read-only Redis replica, a full disk, a file another "
                "user owns).",
            )
        )
    elif probe.write_seconds is not None:
        findings.append(
            Finding(
                "store-writable",
                Severity.OK,
                f"A harmless test write took {probe.write_seconds * 1000:.0f} ms.",
                details={"seconds": round(probe.write_seconds, 4)},
            )
        )
    findings += _follower_findings(probe)
    return findings


def _follower_findings(probe: StoreProbe) -> list[Finding]:
    if probe.followers_error is not None:
        return [
            Finding(
                "store-followers-unreadable",
                Severity.UNCHECKED,
                f"The workers following {probe.url} could not be listed: {probe.followers_error}.",
                "Check the store's health; rerun the check.",
            )
        ]
    if probe.followers is None:
        return []
    live = [f for f in probe.followers if f.alive]
    stale = [f for f in probe.followers if not f.alive]
    findings = []
    if not live:
        findings.append(
            Finding(
                "store-no-workers",
                Severity.INFO,
                f"No worker of the app follows {probe.url} right now.  Either the app is not "
                "running, or its workers use another store or another file (a private /tmp, "
                "another container, another KC_SSO_STORE).",
                "If the app is running, run the check with the app's exact environment, "
                "as its user and inside its service or container.",
            )
        )
    else:
        details = {
            "workers": [
                {
                    "name": f.name,
                    "applied": f.applied,
                    "lag": f.lag,
                    "seen_age": round(f.seen_age, 2),
                }
                for f in probe.followers
            ]
        }
        findings.append(
            Finding(
                "store-followers",
                Severity.OK,
                f"{len(live)} worker(s) follow the store: "
                + ", ".join(f"{f.name} (lag {f.lag}, seen {f.seen_age:.1f} s ago)" for f in live)
                + ".",
                details=details,
            )
        )
    for follower in stale:
        findings.append(
            Finding(
                "store-follower-stale",
                Severity.WARN,
                f"Worker {follower.name} sent no heartbeat for {follower.seen_age:.0f} s: it "
                "died or hangs.  Writers no longer wait for it; it is forgotten after 30 s.",
                "If that worker still serves requests, it enforces a stale replica: restart it "
                "and look for a blocked or crashed follower thread in its log.",
            )
        )
    findings += _lagging(probe)
    return findings


def _lagging(probe: StoreProbe) -> list[Finding]:
    first = probe.followers or ()
    later = {f.name: f for f in probe.followers_later or ()}
    head = max((f.applied + f.lag for f in first), default=0)
    findings = []
    for follower in first:
        again = later.get(follower.name)
        if not follower.alive or not follower.lag or again is None or not again.alive:
            continue
        if again.applied < head:
            findings.append(
                Finding(
                    "store-follower-lagging",
                    Severity.PROBLEM,
                    f"Worker {follower.name} is alive but {head - again.applied} change(s) "
                    f"behind and did not catch up within {SETTLE_SECONDS:g} s: its replica "
                    "is stale, so it accepts sessions that were logged out.",
                    "Restart that worker; look in its log for follower errors (a locked or "
                    "full disk, a Redis connection dropping).",
                    {"name": follower.name, "applied": again.applied, "head": head},
                )
            )
    return findings
