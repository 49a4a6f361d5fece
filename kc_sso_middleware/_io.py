"""Effect runners: the only place the core's flows meet the network and the store.

``SyncRunner`` serves the WSGI adapter with httpx's blocking client and the store's
``record``; ``AsyncRunner`` serves the ASGI adapter with ``httpx.AsyncClient`` and the
store's ``arecord``.  Both drive the same generator the same way; only the I/O differs.
"""

from __future__ import annotations

import ssl
from typing import Any, TypeVar

import httpx

from ._effects import Effect, Flow, HttpCall, HttpResult
from .errors import DiscoveryError
from .settings import Settings
from .stores.base import RevocationStore

__all__ = ["AsyncRunner", "SyncRunner"]

T = TypeVar("T")


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.tls_verify:
        return False
    if settings.ca_bundle:
        return ssl.create_default_context(cafile=settings.ca_bundle)
    return True


def _unreachable(call: HttpCall, exc: Exception) -> DiscoveryError:
    return DiscoveryError(f"{call.method} {call.url} failed: {exc.__class__.__name__}: {exc}")


class SyncRunner:
    """Runs flows with blocking I/O."""

    def __init__(self, settings: Settings, store: RevocationStore) -> None:
        self.store = store
        self.http = httpx.Client(timeout=settings.http_timeout, verify=_verify(settings))

    def run(self, flow: Flow[T]) -> T:
        send: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            send, error = None, None
            try:
                send = self._perform(effect)
            except Exception as exc:  # handed to the flow, which decides
                error = exc

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, HttpCall):
            try:
                response = self.http.request(effect.method, effect.url, data=effect.form)
            except httpx.HTTPError as exc:
                raise _unreachable(effect, exc) from exc
            return HttpResult(response.status_code, response.content)
        return self.store.record(
            effect.revocations, jti=effect.jti, jti_expires_at=effect.jti_expires_at
        )

    def close(self) -> None:
        self.http.close()


class AsyncRunner:
    """Runs flows with asyncio I/O."""

    def __init__(self, settings: Settings, store: RevocationStore) -> None:
        self.store = store
        self.http = httpx.AsyncClient(timeout=settings.http_timeout, verify=_verify(settings))

    async def run(self, flow: Flow[T]) -> T:
        send: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            send, error = None, None
            try:
                send = await self._perform(effect)
            except Exception as exc:  # handed to the flow, which decides
                error = exc

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, HttpCall):
            try:
                response = await self.http.request(effect.method, effect.url, data=effect.form)
            except httpx.HTTPError as exc:
                raise _unreachable(effect, exc) from exc
            return HttpResult(response.status_code, response.content)
        return await self.store.arecord(
            effect.revocations, jti=effect.jti, jti_expires_at=effect.jti_expires_at
        )

    async def aclose(self) -> None:
        await self.http.aclose()
