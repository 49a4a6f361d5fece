"""The bearer source's reading of the Authorization header and its bounded cache."""

from __future__ import annotations

import base64
import json
import time

import pytest

from kc_sso_middleware import Settings
from kc_sso_middleware._http import RequestHead
from kc_sso_middleware.sources.bearer import _ENTRY_OVERHEAD, BearerSource, bearer_token

ISSUER = "http://op.test/realms/r"


def _token(**claims: object) -> str:
    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'iss': ISSUER, 'sid': 's', **claims})}.c2ln"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer\tabc", "abc"),
        ("  BEARER   abc  ", "abc"),
        ("Bearer", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        (b"Bearer\tabc", "abc"),
    ],
)
def test_the_token_is_read_after_any_whitespace(header: str | bytes, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_reading_made_again_is_counted_once() -> None:
    """An expired token presented again is read again: its bytes replace its old entry's."""
    source = BearerSource(Settings(issuer=ISSUER, client_id="c", session_secret="x"))
    header = f"Bearer {_token(exp=int(time.time()) - 10)}"
    for _ in range(3):
        finding = source.find(RequestHead((), header), time.time())
        assert finding is not None
    assert len(source._cache) == 1
    assert source._cache_bytes == len(header) + _ENTRY_OVERHEAD
