"""The check's HTTP: one blocking httpx client, every answer or failure as a plain value.

The client trusts what the middleware trusts (``KC_SSO_CA_BUNDLE``, ``KC_SSO_TLS_VERIFY``)
and waits as long (``KC_SSO_HTTP_TIMEOUT``).  :class:`Fetched` says what happened in a form
the decisions can read without catching anything: an answer (status, JSON body), or a
failure kind (``connect``, ``timeout``, ``tls``, ``too_large``) with the error text.

An answer is read up to :data:`MAX_BODY` bytes and for at most :data:`DEADLINE_FACTOR`
timeouts in all: httpx's timeout bounds each read, not the whole body, and a wrong URL (a
download, an endless stream) must end in a finding, not in memory exhaustion or a hang.
"""

from __future__ import annotations

import enum
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .._runner import _verify
from ..settings import Settings

__all__ = ["DEADLINE_FACTOR", "MAX_BODY", "Failure", "Fetched", "client_for", "get", "post_form"]

#: the most of an answer that is read (Keycloak's largest, /admin/serverinfo, is far smaller)
MAX_BODY = 8 * 1024 * 1024
#: how many timeouts one whole answer may take (each read is bounded by one timeout)
DEADLINE_FACTOR = 3


class Failure(str, enum.Enum):
    #: refused, unknown host, unreachable network
    CONNECT = "connect"
    TIMEOUT = "timeout"
    #: the server's certificate did not verify (or the TLS handshake failed)
    TLS = "tls"
    #: the answer was larger than MAX_BODY (not read further)
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Fetched:
    """One HTTP exchange: an answer, or why there was none."""

    url: str
    status: int | None = None
    #: the body parsed as JSON, when it was JSON
    body: object = None
    text: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    failure: Failure | None = None
    #: the error text of a failure
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.failure is None

    def json_object(self) -> dict[str, object] | None:
        return self.body if isinstance(self.body, dict) else None


def client_for(settings: Settings) -> httpx.Client:
    """A client with the middleware's TLS trust and timeout.

    Raises OSError or ssl.SSLError when ``KC_SSO_CA_BUNDLE`` cannot be read.
    """
    return httpx.Client(timeout=settings.http_timeout, verify=_verify(settings))


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text


def _failed(url: str, exc: httpx.HTTPError) -> Fetched:
    if isinstance(exc, httpx.TimeoutException):
        kind = Failure.TIMEOUT
    elif _tls_failure(exc):
        kind = Failure.TLS
    else:
        kind = Failure.CONNECT
    return Fetched(url, failure=kind, error=f"{exc.__class__.__name__}: {exc}"[:500])


def _invalid(url: str, exc: Exception) -> Fetched:
    """A URL httpx refuses to send to."""
    return Fetched(url, failure=Failure.CONNECT, error=f"invalid URL: {exc}"[:500])


def _read(client: httpx.Client, request: httpx.Request, url: str) -> Fetched:
    timeout = client.timeout.read or 5.0
    deadline = time.monotonic() + DEADLINE_FACTOR * timeout
    response = client.send(request, stream=True)
    try:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():  # decoded: a compressed bomb is bounded too
            size += len(chunk)
            if size > MAX_BODY:
                return Fetched(
                    url,
                    failure=Failure.TOO_LARGE,
                    error=f"HTTP {response.status_code}, an answer larger than {MAX_BODY} "
                    "bytes (not read further)",
                )
            if time.monotonic() > deadline:
                return Fetched(
                    url,
                    failure=Failure.TIMEOUT,
                    error=f"HTTP {response.status_code}, the answer still coming after "
                    f"{DEADLINE_FACTOR * timeout:g} s (not read further)",
                )
            chunks.append(chunk)
    finally:
        response.close()
    content = b"".join(chunks)
    try:
        body: object = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        body = None
    text = content[:20000].decode(response.encoding or "utf-8", errors="replace")
    return Fetched(url, response.status_code, body, text, dict(response.headers))


def _exchange(
    client: httpx.Client,
    method: str,
    url: str,
    headers: Mapping[str, str] | None,
    data: Mapping[str, str] | None = None,
) -> Fetched:
    try:
        request = client.build_request(
            method, url, headers=dict(headers or {}), data=None if data is None else dict(data)
        )
        return _read(client, request, url)
    except httpx.HTTPError as exc:
        return _failed(url, exc)
    except httpx.InvalidURL as exc:  # not an httpx.HTTPError: a malformed jwks_uri, --admin-url
        return _invalid(url, exc)


def get(client: httpx.Client, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
    return _exchange(client, "GET", url, headers)


def post_form(
    client: httpx.Client,
    url: str,
    data: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    return _exchange(client, "POST", url, headers, data)
