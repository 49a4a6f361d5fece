"""The signed-cookie source as values: what it finds, what it caches, what it strips."""

from __future__ import annotations

import time

import pytest

from kc_sso_middleware import Settings
from kc_sso_middleware._http import PASS, RequestHead
from kc_sso_middleware.sources import SignedCookieSource, StarletteView, WerkzeugView, cookie_views
from kc_sso_middleware.sources import cookies as cookies_module
from kc_sso_middleware.testing import make_session_cookie

SECRET = "unit-secret"
ISSUER = "http://op.test/realms/r"


def _source(view: str = "werkzeug") -> SignedCookieSource:
    settings = Settings(issuer=ISSUER, client_id="c", session_secret=SECRET, store="memory://")
    if view == "werkzeug":
        return SignedCookieSource(settings, WerkzeugView(), "flask", time.time)
    return SignedCookieSource(settings, StarletteView(), "starlette", time.time)


def _cookie(sid: str, fmt: str = "flask") -> str:
    claims = {"sid": sid, "sub": "u", "iat": int(time.time())}
    return make_session_cookie(SECRET, {"user": claims}, format=fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize("view", ["werkzeug", "starlette"])
def test_junk_headers_cost_no_memory_that_stays(view: str) -> None:
    """Ten thousand distinct 16 KiB junk headers leave the cache empty."""
    source = _source(view)
    for n in range(10_000):
        junk = f"session={n:05d}" + "A" * 16_384
        finding = source.find(RequestHead((junk,)), time.time())
        assert finding is not None
        assert finding.clean.cookie == ""
    assert source._cache_bytes == 0
    assert not source._cache


@pytest.mark.parametrize("view", ["werkzeug", "starlette"])
def test_verified_readings_are_cached_within_a_byte_bound(
    view: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only verified values are cached, and the cache never holds more than its bytes."""
    monkeypatch.setattr(cookies_module, "CACHE_BYTES", 64 * 1024)
    source = _source(view)
    fmt = "flask" if view == "werkzeug" else "starlette"
    for n in range(500):
        header = f"session={_cookie(f'sid-{n}', fmt)}"
        finding = source.find(RequestHead((header,)), time.time())
        assert finding is not None
        assert finding.identities[0].sid == f"sid-{n}"
        assert source._cache_bytes <= 64 * 1024
    assert source._cache


def test_a_repeat_header_is_a_cache_hit() -> None:
    """The same value again gives the very same finding: no HMAC, no JSON."""
    source = _source()
    header = f"theme=x; session={_cookie('hit')}"
    first = source.find(RequestHead((header,)), time.time())
    again = source.find(RequestHead((str(header),)), time.time())
    assert first is again


@pytest.mark.parametrize(
    ("header", "plain"),
    [
        pytest.param("session=V", True, id="alone"),
        pytest.param("a=1; session=V; b=2", True, id="between others"),
        pytest.param("django_session=x; session=V", True, id="longer name before"),
        pytest.param("session=V; session_state=x", True, id="longer name after"),
        pytest.param('q="session=1"; session=V', True, id="name inside a quoted value"),
        pytest.param("session=V; session=W", False, id="duplicate"),
        pytest.param('session="V"', False, id="quoted"),
        pytest.param("session = V", False, id="spaces around ="),
        pytest.param("a=1;\tsession=V", False, id="tab before"),
        pytest.param("a=1;\xa0session=V", False, id="no-break space before"),
        pytest.param("a=1; session=V ", False, id="trailing space"),
    ],
)
def test_the_plain_form_is_recognised_conservatively(header: str, plain: bool) -> None:
    """Only a header every parser reads the same way takes the fast path."""
    for raw, name in ((header, "session"), (header.encode("latin-1"), b"session")):
        span = cookie_views.plain_span(raw, name)
        got = None if span is None else raw[span[0] : span[1]]
        assert (got in ("V", b"V")) is plain


@pytest.mark.parametrize("view", [WerkzeugView(), StarletteView()], ids=["werkzeug", "starlette"])
@pytest.mark.parametrize(
    "header",
    [
        'a=1; session="\\145yJ"; b="x\\"y"',
        "session=1; session=2; c=3",
        'weird="a;b"; session=x; last=\xe9',
    ],
)
def test_without_leaves_the_other_cookies_as_the_parser_reads_them(
    view: WerkzeugView | StarletteView, header: str
) -> None:
    """Taking the session out changes no other cookie, by the framework's own reading."""
    stripped = view.without([header], "session")
    assert view.values([stripped], "session") == []
    for name in ("a", "b", "c", "weird", "last"):
        before = view.values([header], name)
        assert view.values([stripped], name) == before


def test_a_session_without_login_is_vouched_for_as_it_is() -> None:
    """A verified cookie that holds no Keycloak login passes untouched."""
    source = _source()
    header = f"session={make_session_cookie(SECRET, {'state': 's'})}"
    finding = source.find(RequestHead((header,)), time.time())
    assert finding is not None
    assert finding.identities == ()
    assert finding.clean is PASS


def test_a_header_without_the_name_is_absent() -> None:
    """No occurrence at all: the source has nothing to say."""
    assert cookie_views.plain_span("a=1; b=2", "session") == cookie_views.ABSENT
    assert cookie_views.plain_span(b"a=1", b"session") == cookie_views.ABSENT
