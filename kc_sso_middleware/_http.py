"""The plain values the core and the adapters exchange: requests, responses, verdicts.

A leaf module: no framework, no I/O.  The adapters build a :class:`RequestHead` (what an
ordinary request carries that may identify a Keycloak session) or a :class:`Request` (for
the middleware's own paths), and turn a :class:`Response` or a :class:`Verdict` into bytes.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "NO_STORE",
    "PASS",
    "Request",
    "RequestHead",
    "Response",
    "SignOut",
    "Verdict",
    "html_response",
    "json_response",
    "url_path",
]

NO_STORE = ("Cache-Control", "no-store")
JSON_TYPE = ("Content-Type", "application/json")
HTML_TYPE = ("Content-Type", "text/html; charset=utf-8")

#: Raw header value as the adapter has it: text under WSGI, latin-1 bytes under ASGI.
RawHeader = str | bytes


class RequestHead:
    """What an ordinary request carries that may name a Keycloak session.

    ``cookies`` holds every ``Cookie`` header in order (WSGI has at most one; ASGI may have
    several); ``authorization`` the ``Authorization`` header, if any; ``native`` the
    framework's own request object where an integration has one (Django's
    ``HttpRequest``), for sources that read what the framework already parsed.

    Built for every request, so a plain slotted class (a frozen dataclass costs three
    times as much to make); treat it as read-only.
    """

    __slots__ = ("authorization", "cookies", "native")

    def __init__(
        self,
        cookies: tuple[RawHeader, ...] = (),
        authorization: RawHeader | None = None,
        native: Any = None,
    ) -> None:
        self.cookies = cookies
        self.authorization = authorization
        self.native = native

    def __repr__(self) -> str:
        has = "with" if self.authorization is not None else "without"
        return f"RequestHead({len(self.cookies)} cookie header(s), {has} authorization)"


@dataclass(frozen=True, slots=True)
class Request:
    """What the core needs to know about a request to one of its own paths."""

    method: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    scheme: str = "http"
    #: the app's mount path as a URL carries it (percent-encoded, see :func:`url_path`)
    root_path: str = ""
    head: RequestHead = field(default_factory=RequestHead)

    @property
    def origin(self) -> str:
        host = self.headers.get("host", "localhost")
        return f"{self.scheme}://{host}"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer, turned into bytes by the adapters."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class SignOut:
    """Why a request's session was just taken out: the request-scoped marker.

    The adapters put it where the app can read it (``environ["kc_sso.signed_out"]``,
    ``scope["kc_sso.signed_out"]``) so a page can tell the user what happened.
    """

    #: ``backchannel``, ``frontchannel``, ``local_logout``, ``user_logout``,
    #: ``sign_out_all``, ``liveness`` or ``lifetime``
    reason: str
    #: epoch seconds when the revocation was recorded, when known
    at: float | None = None
    #: the Keycloak session id (``sid``) of the session taken out, when known
    sid: str | None = None
    #: which client's action caused it, when known (e.g. the app a local logout ran in)
    origin: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "at": self.at, "sid": self.sid, "origin": self.origin}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to an ordinary request.

    * :data:`PASS`: call the app with the request untouched;
    * ``response`` set: answer it instead of calling the app;
    * otherwise call the app with the Cookie header replaced by ``cookie`` (``""`` removes
      it), and add ``set_cookies`` to the app's answer unless it sets those cookies itself;
    * ``pending`` set: the decision needs I/O first (a server-side session not seen
      before): drive the flow, whose result is the verdict to apply.
    """

    response: Response | None = None
    #: replacement for every Cookie header; ``None`` keeps them
    cookie: str | None = None
    #: ``Set-Cookie`` values to add (each ``name=...; attributes``)
    set_cookies: tuple[str, ...] = ()
    #: the request-scoped marker, when a session was taken out
    signed_out: SignOut | None = None
    #: the rest of the decision, when it needs I/O (a flow of ``_flows``; its result is
    #: the verdict)
    pending: Generator[Any, object, Verdict] | None = None
    #: flows to run beside the request, never delaying it (liveness checks)
    background: tuple[Generator[Any, object, None], ...] = ()

    @property
    def passes(self) -> bool:
        """Whether the app gets the request untouched (background work aside)."""
        return (
            self.response is None
            and self.cookie is None
            and not self.set_cookies
            and self.signed_out is None
        )


PASS = Verdict()


def json_response(status: int, payload: Mapping[str, object], *extra: tuple[str, str]) -> Response:
    """A JSON answer, ``Cache-Control: no-store`` unless ``extra`` names its own."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    if any(name.lower() == "cache-control" for name, _ in extra):
        return Response(status, (JSON_TYPE, *extra), body)
    return Response(status, (JSON_TYPE, NO_STORE, *extra), body)


def html_response(status: int, body: str, *extra: tuple[str, str]) -> Response:
    return Response(status, (HTML_TYPE, NO_STORE, *extra), body.encode())


def url_path(path: str | bytes) -> str:
    """A decoded URL path (text, or its bytes) as a URL carries it: percent-encoded.

    Servers hand over a mount path decoded, and a mount with a path parameter takes it
    from the request's URL: raw, it would put CR LF into a header, a ``;`` (a new
    attribute) into a cookie's ``Path``, or text beyond latin-1 into a header (a 500).
    Encoded, it is the path the browser sends back, so a cookie on it still matches.
    """
    return quote(path, safe="/:@!$&'()*+,=")
