"""Why a session was just taken out: the request-scoped marker's reason, time and origin.

The store's replica says *which* entry revokes a session (its sid, this app session's own
token, its user, its client); the notes entries carry (cause, when, which client) say the
rest.  Notes reach every worker with the entries, so an app that shares its store with the
others of a deployment can say "you logged out of the Flask app 2 s ago" even though what
it received was Keycloak's back-channel request.  A bounded table of recent notes is kept;
forgetting one loses an explanation, never a revocation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from .._http import SignOut
from ..sources.base import SessionIdentity
from ..stores.base import RevocationStore
from ..stores.model import Note, Revocation, RevocationKind

__all__ = ["Explanations"]

_NOTES_KEPT = 50_000
#: notes kept per user or client: wide entries of one key with different not-befores
_WIDE_KEPT = 8
#: the store's word for the matching entry → the marker's reason, when no note says more
_REASONS = {"sid": "backchannel", "instance": "local_logout", "user": "user_logout"}


class Explanations:
    """Recent notes by key (sid, sub, client id), and the marker built from them."""

    def __init__(self, store: RevocationStore, lifetime: float, client_id: str) -> None:
        self._store = store
        self._lifetime = lifetime
        self._client_id = client_id
        self._notes: OrderedDict[tuple[str, str], Note] = OrderedDict()
        #: user- and client-wide notes, (not_before, note) each: which one ended a session
        #: depends on when it began
        self._wide: OrderedDict[tuple[str, str], list[tuple[float, Note]]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, entries: Sequence[Revocation]) -> None:
        """A store listener: keep the notes of applied entries."""
        with self._lock:
            for entry in entries:
                if entry.note is None or entry.label is None:
                    continue
                kind, key = entry.kind.value, entry.label
                if entry.kind is not RevocationKind.SESSION:
                    self._keep_wide((kind, key), entry.not_before, entry.note)
                    continue
                if "#" in key:
                    kind, key = "instance", key  # a local logout of one app session
                    self._keep(("local", key.split("#", 1)[0]), entry.note)
                self._keep((kind, key), entry.note)

    def _keep(self, key: tuple[str, str], note: Note) -> None:
        notes = self._notes
        if key in notes and notes[key].at <= note.at:
            return  # the first explanation of a key is the one that ended the session
        notes[key] = note
        notes.move_to_end(key)
        while len(notes) > _NOTES_KEPT:
            notes.popitem(last=False)

    def _keep_wide(self, key: tuple[str, str], not_before: float, note: Note) -> None:
        notes = self._wide.setdefault(key, [])
        if any(seen == not_before for seen, _ in notes):
            return  # the same entry again (another worker's copy, a repair)
        notes.append((not_before, note))
        notes.sort(key=lambda pair: pair[1].at)
        del notes[:-_WIDE_KEPT]
        self._wide.move_to_end(key)
        while len(self._wide) > _NOTES_KEPT:
            self._wide.popitem(last=False)

    def _wide_note(self, key: tuple[str, str], issued_at: float | None) -> Note | None:
        """The first recorded wide note whose entry revokes a session issued at
        ``issued_at`` (unknown: the first)."""
        for not_before, note in self._wide.get(key, ()):
            if issued_at is None or issued_at < not_before:
                return note
        return None

    def explain(self, identity: SessionIdentity, now: float) -> SignOut:
        """The marker for ``identity``, which was just found revoked."""
        began = identity.auth_time
        if began is not None and began + self._lifetime < now:
            return SignOut("lifetime", at=began + self._lifetime, sid=identity.sid)
        matched = self._store.revoked_by(identity.keys)
        with self._lock:
            if matched == "instance" and identity.instance is not None:
                note = self._notes.get(("instance", identity.instance))
            elif matched == "user" and identity.sub is not None:
                note = self._wide_note(("sub", identity.sub), identity.keys.issued_at)
            elif matched == "client":
                note = self._wide_note(("all", self._client_id), identity.keys.issued_at)
            elif identity.sid is not None:
                note = self._notes.get(("sid", identity.sid))
                # A local logout in another app sharing the store ended it first: say so.
                local = self._notes.get(("local", identity.sid))
                if local is not None and (note is None or local.at <= note.at):
                    note = local
            else:
                note = None
        reason = note.cause if note is not None else _REASONS.get(matched or "", "sign_out_all")
        return SignOut(
            reason,
            at=None if note is None else note.at,
            sid=identity.sid,
            origin=None if note is None else note.origin,
        )
