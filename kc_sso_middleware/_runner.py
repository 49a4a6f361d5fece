"""The performers of the core's effects: the only place its flows meet the network and store.

:class:`SyncRunner` serves the WSGI adapter with httpx's blocking client and the store's
``record``; :class:`AsyncRunner` serves the ASGI adapter with ``httpx.AsyncClient`` and the
store's ``arecord``.  Both drive flows with :func:`~._flows.drive` / :func:`~._flows.adrive`;
only the I/O differs.  Concurrent identical GETs (the JWKS refetch a burst of tokens with a
new ``kid`` asks for) are performed once and their answer shared: single flight.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from ._effects import BackendCall, HttpCall, HttpResult, RecordRevocations
from ._flows import Effect, Flow, adrive, drive
from .errors import DiscoveryError
from .settings import Settings
from .stores.base import RevocationStore

__all__ = ["AsyncRunner", "SyncRunner"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.tls_verify:
        return False
    if settings.ca_bundle:
        return ssl.create_default_context(cafile=settings.ca_bundle)
    return True


def _unreachable(call: HttpCall, exc: Exception) -> DiscoveryError:
    error = DiscoveryError(f"{call.method} {call.url} failed: {exc.__class__.__name__}: {exc}")
    # A read timeout came after the request was sent: the OP may have acted on it.
    error.timed_out = isinstance(exc, httpx.ReadTimeout)
    return error


def _unknown(effect: Effect[Any]) -> TypeError:
    return TypeError(f"no performer for {type(effect).__name__}")


class _Flight:
    """One GET in flight, shared by every thread that asks for the same URL meanwhile."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: HttpResult | None = None
        self.error: Exception | None = None


class SyncRunner:
    """Runs flows with blocking I/O."""

    def __init__(self, settings: Settings, store: RevocationStore) -> None:
        self.store = store
        self._timeout = settings.http_timeout
        self.http = httpx.Client(timeout=settings.http_timeout, verify=_verify(settings))
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        # Created on first use, so that a forking server's workers each get their own.
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def run(self, flow: Flow[T]) -> T:
        return drive(flow, self.perform)

    def beside(self, flows: Sequence[Flow[None]]) -> None:
        """Run ``flows`` on a small pool of threads without the request waiting for them."""
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(2, thread_name_prefix="kc-sso-beside")
        for flow in flows:
            self._pool.submit(self._run_beside, flow)

    def _run_beside(self, flow: Flow[None]) -> None:
        try:
            self.run(flow)
        except Exception:
            logger.exception("background check failed")

    def perform(self, effect: Effect[Any]) -> object:
        if isinstance(effect, HttpCall):
            if effect.method == "GET":
                return self._get_once(effect)
            return self._request(effect)
        if isinstance(effect, RecordRevocations):
            return self.store.record(
                effect.revocations,
                jti=effect.jti,
                jti_expires_at=effect.jti_expires_at,
                authenticated=effect.authenticated,
            )
        if isinstance(effect, BackendCall):
            if effect.sync is None:
                raise TypeError(f"{effect.what} has no blocking form for the WSGI adapter")
            return effect.sync()
        raise _unknown(effect)

    def _request(self, call: HttpCall) -> HttpResult:
        try:
            response = self.http.request(call.method, call.url, data=call.form, auth=call.auth)
        except httpx.HTTPError as exc:
            raise _unreachable(call, exc) from exc
        return HttpResult(response.status_code, response.content)

    def _get_once(self, call: HttpCall) -> HttpResult:
        with self._flights_lock:
            flight = self._flights.get(call.url)
            leading = flight is None
            if flight is None:
                flight = self._flights[call.url] = _Flight()
        if not leading:
            if not flight.done.wait(self._timeout * 2):
                raise DiscoveryError(f"GET {call.url}: the shared fetch did not finish")
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result
        try:
            flight.result = self._request(call)
            return flight.result
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                del self._flights[call.url]
            flight.done.set()

    def close(self) -> None:
        # Checks not started yet are dropped; running ones end within the HTTP timeout and
        # are waited for: their client closed under them, they would only fail noisily.
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.http.close()


class AsyncRunner:
    """Runs flows with asyncio I/O."""

    def __init__(self, settings: Settings, store: RevocationStore) -> None:
        self.store = store
        self.http = httpx.AsyncClient(timeout=settings.http_timeout, verify=_verify(settings))
        self._flights: dict[str, asyncio.Future[HttpResult]] = {}
        self._background: set[asyncio.Future[None]] = set()

    async def run(self, flow: Flow[T]) -> T:
        return await adrive(flow, self.perform)

    def beside(self, flows: Sequence[Flow[None]]) -> None:
        """Run ``flows`` on the running event loop without the request waiting for them."""
        for flow in flows:
            task = asyncio.ensure_future(self.run(flow))
            self._background.add(task)  # a task only weakly referenced may vanish
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background check failed", exc_info=task.exception())

    async def perform(self, effect: Effect[Any]) -> object:
        if isinstance(effect, HttpCall):
            if effect.method == "GET":
                return await self._get_once(effect)
            return await self._request(effect)
        if isinstance(effect, RecordRevocations):
            return await self.store.arecord(
                effect.revocations,
                jti=effect.jti,
                jti_expires_at=effect.jti_expires_at,
                authenticated=effect.authenticated,
            )
        if isinstance(effect, BackendCall):
            if effect.aio is not None:
                return await effect.aio()
            if effect.sync is None:
                raise TypeError(f"{effect.what} has neither a blocking nor an async form")
            return await asyncio.to_thread(effect.sync)
        raise _unknown(effect)

    async def _request(self, call: HttpCall) -> HttpResult:
        try:
            response = await self.http.request(
                call.method, call.url, data=call.form, auth=call.auth
            )
        except httpx.HTTPError as exc:
            raise _unreachable(call, exc) from exc
        return HttpResult(response.status_code, response.content)

    async def _get_once(self, call: HttpCall) -> HttpResult:
        flight = self._flights.get(call.url)
        if flight is None:
            flight = asyncio.ensure_future(self._request(call))
            self._flights[call.url] = flight
            flight.add_done_callback(lambda _: self._flights.pop(call.url, None))
        # shield: one waiter cancelled (a client gone) must not cancel the others' fetch
        return await asyncio.shield(flight)

    async def aclose(self) -> None:
        # Checks still running beside requests are cancelled and awaited before the client
        # closes: left pending, the loop's end would drop their half-open connections
        # unclosed, and a check whose client closed under it only fails noisily.
        pending: list[asyncio.Future[Any]] = [*self._background, *self._flights.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.http.aclose()
