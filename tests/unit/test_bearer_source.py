"""The bearer source's reading of the Authorization header and its bounded cache."""

from __future__ import annotations

import base64
import json
import time

import pytest

from kc_sso_middleware import Settings
from kc_sso_middleware._http import RequestHead
from kc_sso_middleware.sources.bearer import _ENTRY_OVERHEAD, BearerSource, _held, jwt_payloads

ISSUER = "http://op.test/realms/r"


def _token(**claims: object) -> str:
    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'iss': ISSUER, 'sid': 's', **claims})}.c2ln"


@pytest.mark.parametrize(
    ("header", "payloads"),
    [
        ("Bearer h.abc.s", ["abc"]),
        ("bearer\th.abc.s", ["abc"]),
        ("  BEARER   h.abc.s  ", ["abc"]),
        ("Bearer", []),
        ("Bearer abc", []),
        ("Basic abc", []),
        ("Bearerh.abc.s", ["abc"]),
        (b"Bearer\th.abc.s", ["abc"]),
        ("Basic dXNlcg==, Bearer h.abc.s", ["abc"]),
        ("Bearer h.abc.s,Bearer h.def.", ["abc", "def"]),
        (b"Bearer h.abc.s, , Basic x", ["abc"]),
    ],
)
def test_every_jwt_payload_is_read(header: str | bytes, payloads: list[str]) -> None:
    """After any whitespace, in every part of a comma-separated list, whatever the
    scheme: every run between two dots."""
    assert jwt_payloads(header) == payloads


def test_a_header_carrying_two_tokens_names_both_sessions() -> None:
    """Either token may be the one the app reads: the finding holds both identities."""
    source = BearerSource(Settings(issuer=ISSUER, client_id="c", session_secret="x"))
    now = time.time()
    header = f"Basic x, Bearer {_token(sid='a', exp=now + 60)}, Bearer {_token(sid='b')}"
    finding = source.find(RequestHead((), header), now)
    assert finding is not None
    assert [i.sid for i in finding.identities] == ["a", "b"]
    assert finding.valid_until == now + 60


def test_a_reading_made_again_is_counted_once() -> None:
    """An expired token presented again is read again: its bytes replace its old entry's."""
    source = BearerSource(Settings(issuer=ISSUER, client_id="c", session_secret="x"))
    header = f"Bearer {_token(exp=int(time.time()) - 10)}"
    for _ in range(3):
        finding = source.find(RequestHead((), header), time.time())
        assert finding is not None
    assert len(source._cache.entries) == 1
    assert finding is not None
    assert source._cache.size == len(header) + _ENTRY_OVERHEAD + _held(finding)


def test_headers_with_the_same_tail_read_as_what_they_hold() -> None:
    """The cache is keyed by a header's tail: two headers ending alike never answer for
    each other, and each replaces the other's entry, counted once."""
    source = BearerSource(Settings(issuer=ISSUER, client_id="c", session_secret="x"))
    now = time.time()
    first, second = _token(sid="first"), _token(sid="second")
    tail = ", Basic " + "x" * 60  # longer than the key: equal tails, other tokens
    for _ in range(3):
        for token, sid in ((first, "first"), (second, "second")):
            header = f"Bearer {token}{tail}"
            for raw in (header, header.encode("latin-1")):
                finding = source.find(RequestHead((), raw), now)
                assert finding is not None
                assert [i.sid for i in finding.identities] == [sid]
    assert len(source._cache.entries) == 2  # one str and one bytes key
    held = source._cache.entries.values()
    assert source._cache.size == sum(len(h) + _ENTRY_OVERHEAD + _held(f) for h, f in held)
