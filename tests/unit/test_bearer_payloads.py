"""The bearer source: which tokens of a header it reads, and what its cache counts."""

from __future__ import annotations

import base64
import json
import sys
import time
import tracemalloc

import pytest

from kc_sso_middleware import Settings
from kc_sso_middleware._http import RequestHead
from kc_sso_middleware.sources.bearer import BearerSource

ISSUER = "http://op.test/realms/r"


def _payload(**claims: object) -> str:
    data = json.dumps({"iss": ISSUER, **claims}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(**claims: object) -> str:
    return f"eyJhbGciOiJSUzI1NiJ9.{_payload(**claims)}.c2ln"


def _source() -> BearerSource:
    return BearerSource(Settings(issuer=ISSUER, client_id="c", session_secret="x"))


@pytest.mark.parametrize(
    "form",
    [
        "DPoP {}",
        "JWT {}",
        "Token {}",
        "{}",
        "Bearer,{}",
        "Bearer:{}",
        "Bearer={}",
        "Basic dXNlcg==,{}",
        b"DPoP\t{}",
    ],
    ids=repr,
)
def test_a_token_is_read_whatever_precedes_it(form: str | bytes) -> None:
    """Every token an app may read out of the header is read, whatever its scheme."""
    token = _token(sid="s")
    header: str | bytes = (
        form.format(token) if isinstance(form, str) else form.replace(b"{}", token.encode())
    )
    finding = _source().find(RequestHead((), header), time.time())
    assert finding is not None
    assert [i.sid for i in finding.identities] == ["s"]


def test_the_bytes_counted_cover_what_a_header_of_many_tokens_holds() -> None:
    """The cache's bound is in bytes held: a header naming many sessions holds far more
    than its own length (each session's objects), and must be counted so, or the 16 MiB
    bound holds several times over (an attacker's headers need no valid signature)."""
    source = _source()
    headers = [
        ",".join(f"Bearer e30.{_payload(sid=f'{n}-{k}')}.x{n}" for k in range(100)).encode()
        for n in range(100)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for header in headers:
            assert source.find(RequestHead((), header), time.time()) is not None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    held = grown + sum(sys.getsizeof(header) for header in headers)  # the cache keeps them
    assert len(source._cache.entries) == len(headers)
    assert held <= source._cache.size


def test_a_long_sid_and_sub_are_counted() -> None:
    """A token's sid and sub are held as text of their own, beside the header."""
    source = _source()
    header = f"Bearer {_token(sid='s' * 3000, sub='u' * 3000)}"
    assert source.find(RequestHead((), header), time.time()) is not None
    assert source._cache.size >= len(header) + 6000
