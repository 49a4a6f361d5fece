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

__all__ = ["CookieView", "DjangoView", "StarletteView", "WerkzeugView"]

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
        from werkzeug.datastructures import ImmutableMultiDict
        from werkzeug.http import parse_cookie

        # What werkzeug.sansio.request.Request.cookies does with the WSGI header(s).
        joined = ";".join(_text(h) for h in headers)
        try:
            return parse_cookie(joined, cls=ImmutableMultiDict)
        except UnicodeDecodeError:
            # Werkzeug decodes the latin-1 header as UTF-8 and fails on invalid bytes; the
            # app then fails too, before any session is read.
            return ImmutableMultiDict()

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
