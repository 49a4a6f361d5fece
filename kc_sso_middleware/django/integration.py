"""One app's single sign-out in this process: settings, store, sources, core and runners.

Built once, on first use (the middleware's construction when the server loads the app, or
a login signal), from the ``KC_SSO_*`` environment variables; ``KC_SSO_SESSION_SECRET``
defaults to Django's ``SECRET_KEY``.  Management commands that never serve a request
(``migrate``, ``clearsessions``, ``collectstatic``) therefore need no ``KC_SSO_*``
variables.  :func:`configure` builds it from explicit settings instead (tests, or a
project that builds :class:`~kc_sso_middleware.Settings` in code).

The store starts on the first request, in the worker (after a pre-forking server forked),
as under the WSGI adapter; :meth:`Integration.close` stops it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from .._runner import AsyncRunner, SyncRunner
from ..core import SSOCore
from ..settings import Settings
from ..sources.base import IdentitySource
from ..sources.bearer import BearerSource
from ..stores import RevocationStore, open_store
from .source import DjangoSessionSource

__all__ = ["Integration", "configure", "configured", "integration", "settings_from_env"]


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """``Settings.from_env`` with Django's ``SECRET_KEY`` as the default session secret."""
    from django.conf import settings as django_settings

    env = dict(os.environ if environ is None else environ)
    if not env.get("KC_SSO_SESSION_SECRET", "").strip():
        secret = getattr(django_settings, "SECRET_KEY", "")
        if secret:
            env["KC_SSO_SESSION_SECRET"] = secret
    return Settings.from_env(env)


class Integration:
    """The middleware's state for one Django project, shared by its middleware instances."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RevocationStore | None = None,
        sources: Sequence[IdentitySource] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = (
            store
            if store is not None
            else open_store(settings.store, clock_skew=settings.clock_skew)
        )
        if sources is None:
            sources = [DjangoSessionSource(settings, clock)]
            if settings.bearer == "check":
                sources.append(BearerSource(settings))
        self.sources = tuple(sources)
        #: the Django session source, for the login index (``None`` if not configured)
        self.session_source = next(
            (s for s in self.sources if isinstance(s, DjangoSessionSource)), None
        )
        self.core = SSOCore(settings, self.store, self.sources, clock=clock)
        self.sync_runner = SyncRunner(settings, self.store)
        self.async_runner = AsyncRunner(settings, self.store)
        self._started = False
        self._start_lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start the store; idempotent (the first request does it when nobody did)."""
        with self._start_lock:
            if not self._started:
                self.store.start()
                self._started = True

    async def astart(self) -> None:
        """:meth:`start` from async code, in a worker thread (never blocking the loop)."""
        if not self._started:
            await asyncio.to_thread(self.start)

    def ending_headers(self) -> frozenset[str]:
        """``Set-Cookie`` values by which a response of the core ends the Django session."""
        if self.session_source is None:
            return frozenset()
        return frozenset(self.session_source.expiry_headers())

    def close(self) -> None:
        """Release the HTTP clients and the store's background work."""
        self.sync_runner.close()
        self.store.close()

    async def aclose(self) -> None:
        """:meth:`close` from async code (also closes the async HTTP client)."""
        await self.async_runner.aclose()
        await asyncio.to_thread(self.close)


_current: Integration | None = None
_lock = threading.Lock()


def configure(
    settings: Settings | None = None,
    *,
    store: RevocationStore | None = None,
    sources: Sequence[IdentitySource] | None = None,
    clock: Callable[[], float] = time.time,
) -> Integration:
    """Build the integration (``settings=None``: from ``KC_SSO_*``) and make it current.

    Middleware instances built afterwards use it; one built before keeps the old one.
    The old integration is not closed: close it yourself if it ran.
    """
    global _current
    built = Integration(
        settings if settings is not None else settings_from_env(),
        store=store,
        sources=sources,
        clock=clock,
    )
    with _lock:
        _current = built
    return built


def configured() -> Integration | None:
    """The current integration, if one was built."""
    return _current


def integration() -> Integration:
    """The current integration, built from ``KC_SSO_*`` on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = Integration(settings_from_env())
    return _current
