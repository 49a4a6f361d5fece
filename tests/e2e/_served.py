"""Helpers of the tests that drive the example apps under real servers over HTTP."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
import pytest

from devtools.served import PID_HEADER

HTTP_TIMEOUT = 15.0
#: requests per sample at least; a sample goes on until every worker has answered
MIN_REQUESTS = 30
#: requests per sample at most (the bound on "until every worker has answered")
MAX_REQUESTS = 300


@dataclass(frozen=True)
class Reply:
    """One answer of a served example app: its status, headers, body and the worker's pid."""

    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def pid(self) -> int:
        return int(self.headers[PID_HEADER])


def held_round(
    url: str,
    headers: Mapping[str, str],
    count: int,
    *,
    method: str = "GET",
    bodies: Sequence[bytes] = (),
) -> list[Reply]:
    """``count`` requests to ``url``, each on its own connection, all in flight at once
    (with ``bodies``, one request per body, ``count`` being their number).

    Each request is sent but for its last byte until every connection is open, then all are
    finished.  A sync worker that accepted one is stuck waiting for that byte, so the next
    connection must be accepted by another worker: ``count`` requests reach ``count``
    different workers of a sync server (gunicorn), where one-at-a-time requests may be
    taken by the same two workers again and again.  An async server still gets them as the
    kernel hands them out.
    """
    assert not bodies or len(bodies) == count, "one body per request"
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "", parts.port or 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    requests = []
    for body in bodies or [b""] * count:
        lines = [*head, f"Content-Length: {len(body)}"] if method != "GET" else head
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    connections: list[socket.socket] = []
    try:
        for request in requests:
            connection = socket.create_connection(address, HTTP_TIMEOUT)
            connection.sendall(request[:-1])
            connections.append(connection)
        for connection, request in zip(connections, requests, strict=True):
            connection.sendall(request[-1:])
        replies = []
        for connection in connections:
            response = http.client.HTTPResponse(connection, method=method)
            response.begin()
            text = response.read().decode("utf-8", "replace")
            replies.append(Reply(response.status, response.headers, text))
        return replies
    finally:
        for connection in connections:
            connection.close()


def sample(
    url: str,
    headers: Mapping[str, str],
    workers: int,
    expect: int,
    *,
    what: str = "",
    minimum: int = MIN_REQUESTS,
) -> list[Reply]:
    """Rounds of :func:`held_round` until at least ``minimum`` requests were answered and
    every one of ``workers`` answered; each answer must have status ``expect``."""
    replies: list[Reply] = []
    while len(replies) < MAX_REQUESTS:
        for reply in held_round(url, headers, workers):
            replies.append(reply)
            assert reply.status == expect, (
                f"{what or url}: request {len(replies)} of the sample: worker {reply.pid} "
                f"answered {reply.status}, expected {expect}: {reply.text[:300]}"
            )
        if len(replies) >= minimum and len({reply.pid for reply in replies}) >= workers:
            return replies
    pids = sorted({reply.pid for reply in replies})
    pytest.fail(f"{what or url}: only workers {pids} answered in {MAX_REQUESTS} requests")


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection for every request (no keep-alive), so that
    the requests spread over the server's workers."""
    return httpx.Client(timeout=HTTP_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0))


def poll(condition: Callable[[], bool], what: str, deadline: float, step: float = 0.02) -> None:
    """Call ``condition`` until it is true; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"gave up after {deadline:.0f} s waiting until {what}")
        time.sleep(step)


def log_in(browser: httpx.Client, app_url: str, cookie_name: str) -> tuple[str, str, str]:
    """Log in at the example app through the stand-in OP in ``browser`` (which follows
    redirects); the session cookie's value and the session's ``sid`` and ``sub``."""
    page = browser.get(f"{app_url}/login")
    assert page.status_code == 200, page.text
    assert "Logged in as" in page.text
    me = browser.get(f"{app_url}/me")
    assert me.status_code == 200, me.text
    cookie = browser.cookies.get(cookie_name)
    assert cookie, f"no {cookie_name} cookie after login"
    return cookie, str(me.json()["sid"]), str(me.json()["sub"])
