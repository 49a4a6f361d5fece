"""The check's HTTP: one blocking httpx client, every answer or failure as a plain value.

The client trusts what the middleware trusts (``KC_SSO_CA_BUNDLE``, ``KC_SSO_TLS_VERIFY``)
and waits as long (``KC_SSO_HTTP_TIMEOUT``).  :class:`Fetched` says what happened in a form
the decisions can read without catching anything: an answer (status, JSON body), or a
failure kind (``connect``, ``timeout``, ``tls``) with the error text.
"""

from __future__ import annotations

import enum
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .._runner import _verify
from ..settings import Settings

__all__ = ["Failure", "Fetched", "client_for", "get", "post_form"]


class Failure(str, enum.Enum):
    #: refused, unknown host, unreachable network
    CONNECT = "connect"
    TIMEOUT = "timeout"
    #: the server's certificate did not verify (or the TLS handshake failed)
    TLS = "tls"


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


def _answer(url: str, response: httpx.Response) -> Fetched:
    text = response.text[:20000]
    try:
        body: object = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    return Fetched(url, response.status_code, body, text, dict(response.headers))


def get(client: httpx.Client, url: str, headers: Mapping[str, str] | None = None) -> Fetched:
    try:
        response = client.get(url, headers=dict(headers or {}))
    except httpx.HTTPError as exc:
        return _failed(url, exc)
    return _answer(url, response)


def post_form(
    client: httpx.Client,
    url: str,
    data: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    try:
        response = client.post(url, data=dict(data), headers=dict(headers or {}))
    except httpx.HTTPError as exc:
        return _failed(url, exc)
    return _answer(url, response)
