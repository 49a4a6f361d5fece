"""How each framework reads a ``Cookie`` header, with the framework's own parser.

The middleware decides about a session cookie and the framework then reads it: if the two
read the header differently, a revoked session can come back (a quoted or escaped value, a
duplicate, a second Cookie header).  So every decision is taken on what the framework
itself will read: a :class:`CookieView` asks the framework's parser which value the app
will get for a name, and takes every value the parser would give that name out of the
header, leaving the other cookies as the parser reads them.

* :class:`WerkzeugView` (Flask, and Flask-Session): ``werkzeug.wrappers.Request.cookies``,
  a MultiDict whose ``get`` returns the first value; Werkzeug unquotes ``"…"`` values and
  their backslash and octal escapes.
* :class:`StarletteView` (Starlette, FastAPI, starsessions): ``HTTPConnection.cookies``,
  every Cookie header parsed in turn into one dict, the last value winning; values
  unquoted with Python's ``http.cookies`` rules.
* :class:`DjangoView`: ``django.http.cookie.parse_cookie`` of ``HTTP_COOKIE``, last wins.

Each view re-parses what it produces and refuses to hand on a header in which the name
survived (it then drops the Cookie header altogether): the framework has the last word.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ABSENT",
    "CookieView",
    "DjangoView",
    "StarletteView",
    "WerkzeugView",
    "is_token",
    "plain_span",
]

Raw = str | bytes


def _text(raw: Raw) -> str:
    # WSGI hands headers over as latin-1 text and ASGI as bytes: latin-1 maps one to the
    # other exactly, byte for byte.
    return raw if isinstance(raw, str) else raw.decode("latin-1")


class CookieView(abc.ABC):
    """One framework's reading of the Cookie header(s) of a request."""

    @abc.abstractmethod
    def values(self, headers: Sequence[Raw], name: str) -> list[str]:
        """Every value the parser gives ``name``, in order."""

    @abc.abstractmethod
    def chosen(self, headers: Sequence[Raw], name: str) -> str | None:
        """The value the app will read for ``name`` (``None``: it reads none)."""

    @abc.abstractmethod
    def _strip(self, headers: Sequence[Raw], name: str) -> str:
        """One Cookie header holding the other cookies; ``name`` in no form."""

    def without(self, headers: Sequence[Raw], name: str, keep: str | None = None) -> str:
        """A single Cookie header without any value of ``name``, plus ``name=keep`` if given.

        ``keep`` must be a plain token (no quotes, separators or spaces).  Returns ``""``
        when nothing is left.
        """
        rebuilt = self._strip(headers, name)
        if keep is not None:
            rebuilt = f"{rebuilt}; {name}={keep}" if rebuilt else f"{name}={keep}"
        expected = [] if keep is None else [keep]
        if self.values([rebuilt], name) != expected:  # the parser has the last word
            return f"{name}={keep}" if keep is not None else ""
        return rebuilt


class WerkzeugView(CookieView):
    """Flask's reading: Werkzeug's parser, first value wins."""

    def _parse(self, headers: Sequence[Raw]) -> Any:
        from werkzeug.wrappers import Request

        # Exactly what the app reads: ``request.cookies`` of the installed Werkzeug over
        # the WSGI header.  (``werkzeug.http.parse_cookie`` is another reading: it decodes
        # the latin-1 text as UTF-8 and fails on bytes that are not, where the request
        # object reads them as they are.)
        joined = ";".join(_text(h) for h in headers)
        return Request({"HTTP_COOKIE": joined}).cookies

    def values(self, headers: Sequence[Raw], name: str) -> list[str]:
        found: list[str] = self._parse(headers).getlist(name)
        return found

    def chosen(self, headers: Sequence[Raw], name: str) -> str | None:
        value: str | None = self._parse(headers).get(name)
        return value

    def _strip(self, headers: Sequence[Raw], name: str) -> str:
        from werkzeug.http import dump_cookie

        pairs = [(k, v) for k, v in self._parse(headers).items(multi=True) if k != name]
        # dump_cookie quotes and escapes a value exactly as Werkzeug's parser unquotes it,
        # so each other cookie reads back unchanged; path=None leaves out attributes.
        rebuilt = "; ".join(dump_cookie(k, v, path=None, max_size=0) for k, v in pairs)
        # dump_cookie writes non-ASCII as octal escapes, so the result is ASCII; the WSGI
        # header is latin-1 text again.
        return rebuilt


class StarletteView(CookieView):
    """Starlette's reading: every Cookie header parsed in turn, last value wins."""

    def values(self, headers: Sequence[Raw], name: str) -> list[str]:
        # The parser reads each ";"-separated chunk on its own and keeps the last value of
        # a name; asking it chunk by chunk also finds the values a later one overwrote.
        from starlette.requests import cookie_parser

        found = []
        for header in headers:
            for chunk in _text(header).split(";"):
                parsed = cookie_parser(chunk)
                if name in parsed:
                    found.append(parsed[name])
        return found

    def chosen(self, headers: Sequence[Raw], name: str) -> str | None:
        from starlette.requests import HTTPConnection

        scope = {"type": "http", "headers": [(b"cookie", _bytes(h)) for h in headers]}
        return HTTPConnection(scope).cookies.get(name)

    def _strip(self, headers: Sequence[Raw], name: str) -> str:
        # The parser reads each ";"-separated chunk on its own (key before the first "=",
        # stripped), so removing the chunks whose key is ``name`` and keeping every other
        # chunk verbatim leaves each other cookie reading exactly as before.
        kept: list[str] = []
        for header in headers:
            for chunk in _text(header).split(";"):
                key, sep, _value = chunk.partition("=")
                if (sep and key.strip() == name) or not chunk.strip():
                    continue
                kept.append(chunk.strip())
        return "; ".join(kept)


class DjangoView(StarletteView):
    """Django's reading: ``django.http.cookie.parse_cookie`` (Starlette adapted it), last wins."""

    def values(self, headers: Sequence[Raw], name: str) -> list[str]:
        from django.http.cookie import parse_cookie

        found = []
        for chunk in _joined(headers).split(";"):
            parsed = parse_cookie(chunk)
            if name in parsed:
                found.append(parsed[name])
        return found

    def chosen(self, headers: Sequence[Raw], name: str) -> str | None:
        from django.http.cookie import parse_cookie

        value: str | None = parse_cookie(_joined(headers)).get(name)
        return value


def _joined(headers: Sequence[Raw]) -> str:
    # Django's ASGI handler joins several Cookie headers with "," into one HTTP_COOKIE, as
    # WSGI servers such as gunicorn do.
    return ",".join(_text(h) for h in headers)


def _bytes(raw: Raw) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("latin-1")


#: what plain_span() answers when the name does not occur at all
ABSENT = (-1, -1)
_STR_MARKS = (";", "; ", "=", '"')
_BYTES_MARKS = (b";", b"; ", b"=", b'"')


def plain_span(raw: str | bytes, name: str | bytes) -> tuple[int, int] | None:
    """Where the session value of a header in the plain form is, or ``None`` if not plain.

    Returns ``(start, end)`` of the value, :data:`ABSENT` when ``name`` does not occur at
    all, and ``None`` for any other header.  Plain: ``name`` occurs exactly once where any
    parser could read it as a cookie name (at the start, or after ``;`` and whitespace,
    followed by whitespace and ``=``), written ``name=value`` after ``;`` and spaces, with a
    value that does not start with a quote and has no surrounding whitespace.  Werkzeug's,
    Starlette's and Django's parsers then all read either exactly that value, or (when an
    earlier cookie's unbalanced quote swallows it) no value at all, never another one.
    Every occurrence elsewhere (inside a longer name such as ``django_session``, or inside
    a value) is one no parser reads as this cookie's name.

    This runs on every request: the common shape (the name once, at the start or after
    ``"; "``) is decided with a few substring searches.
    """
    semi, semi_space, equals, quote = _STR_MARKS if type(raw) is str else _BYTES_MARKS
    first = raw.find(name)  # type: ignore[arg-type]  # str in str, bytes in bytes
    if first < 0:
        return ABSENT
    size = len(name)
    after = first + size
    if raw[after : after + 1] == equals and (
        first == 0 or raw[first - 1 : first] == semi or raw[first - 2 : first] == semi_space
    ):
        # The first occurrence, plainly written.  None comes before it, and none inside its
        # value can start a cookie (a value holds no ";"): it is the only candidate unless
        # the name occurs again after the value, in the (short) rest of the header.
        end = raw.find(semi, after)  # type: ignore[arg-type]
        if end >= 0 and raw.find(name, end) >= 0:  # type: ignore[arg-type]
            found = _only_candidate(raw, name, first, size)
            if found != first:
                return None
    else:
        found = _only_candidate(raw, name, first, size)
        if found < 0:
            return ABSENT if found == -1 else None
        before = raw[:found].rstrip(semi_space[1:])  # type: ignore[arg-type]
        if before and before[-1:] != semi:
            return None  # other whitespace before the name: let the parser decide
        after = found + size
        if raw[after : after + 1] != equals:
            return None
        end = raw.find(semi, after)  # type: ignore[arg-type]
    start = after + 1
    if end < 0:
        end = len(raw)
    # A value with a space at either end is not plain: the parsers strip it, with
    # str.strip() after a latin-1 decode, which also strips \x1c-\x1f, \x85 and \xa0
    # (bytes.isspace() knows none of these).
    if (
        end == start
        or raw[start : start + 1] == quote
        or _space(raw, start)
        or _space(raw, end - 1)
    ):
        return None
    return start, end


def _only_candidate(raw: str | bytes, name: str | bytes, first: int, size: int) -> int:
    """The one place a parser could read ``name`` as a cookie name: -1 none, -2 several."""
    found = -1
    start = first
    while start >= 0:
        if _could_be_name(raw, start, size):
            if found >= 0:
                return -2  # a second place that may hold the cookie: not plain
            found = start
        start = raw.find(name, start + 1)  # type: ignore[arg-type]
    return found


def _could_be_name(raw: str | bytes, start: int, size: int) -> bool:
    """Whether a parser could read the text at ``start`` as a cookie name."""
    i = start - 1
    while i >= 0 and _space(raw, i):
        i -= 1
    if i >= 0 and raw[i : i + 1] not in (";", b";"):
        return False  # inside a longer name or a value
    j = start + size
    while j < len(raw) and _space(raw, j):
        j += 1
    return raw[j : j + 1] in ("=", b"=")


def _space(raw: str | bytes, index: int) -> bool:
    char = raw[index]
    # Parsers strip with str.strip() after a latin-1 decode: judge each byte that way.
    return (chr(char) if isinstance(char, int) else char).isspace()


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/")


def is_token(value: str) -> bool:
    """A value every parser reads as itself when written ``name=value`` (signed tokens are)."""
    return bool(value) and all(ch in _TOKEN_CHARS for ch in value)
