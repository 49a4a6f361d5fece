"""Django middleware: ``"kc_sso_middleware.django.middleware.SSOMiddleware"`` in MIDDLEWARE.

Placement: **after** ``SessionMiddleware`` and ``AuthenticationMiddleware``.  Unlike the
ASGI and WSGI adapters it does not read the session cookie itself: it decides on the
session Django loaded (``request.session``, see :mod:`.source`), so the decision is about
exactly what the app will read, and it ends a revoked session the Django way
(``django.contrib.auth.logout``: the session is flushed from its store, ``request.user``
becomes anonymous, ``SessionMiddleware`` deletes the cookie on the way out).  Placed
before ``SessionMiddleware``, every request raises
:class:`~kc_sso_middleware.ConfigurationError` saying so (``manage.py check`` says it
first).

It serves the middleware's own paths (``KC_SSO_LOGOUT_PATH``, ``KC_SSO_BACKCHANNEL_PATH``,
the admin URL's ``k_logout``…) before URL resolution, so they need no URL patterns and no
CSRF exemption: ``CsrfViewMiddleware`` checks views only (the logout path has its own
cross-site guard, see README "Logout CSRF").  Every other request is checked; one whose
session was just ended carries ``request.kc_sso_signed_out``, a dict with ``reason``,
``at``, ``sid`` and ``origin``.

Sync and async: under WSGI it runs synchronously with blocking I/O; under ASGI it is a
coroutine, with the session and database work (loading a session, logout, purging) done
through ``asgiref.sync.sync_to_async`` and the OP's keys fetched with ``httpx.AsyncClient``.
The decisions are the same code, the core's.

Behind a reverse proxy, set Django's ``SECURE_PROXY_SSL_HEADER`` (and
``USE_X_FORWARDED_HOST`` if the proxy rewrites ``Host``): the default post-logout redirect
URI and the logout path's same-origin check use ``request.scheme`` and
``request.get_host()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http.cookies import SimpleCookie
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from .._effects import BackendCall
from .._flows import Flow
from .._http import PASS, Request, RequestHead, Response, Verdict, url_path
from ..core import Responder
from ..errors import ConfigurationError
from .integration import Integration, integration

__all__ = ["SIGNED_OUT_ATTRIBUTE", "SSOMiddleware"]

#: the request attribute saying why the request's session was just ended
SIGNED_OUT_ATTRIBUTE = "kc_sso_signed_out"


@dataclass(frozen=True, slots=True)
class _Decision:
    """What a request gets: ``response`` instead of the app, or the app with ``verdict``."""

    response: Any = None
    verdict: Verdict = PASS
    #: checks to run beside the request (liveness), whatever it gets
    background: tuple[Flow[None], ...] = ()


class SSOMiddleware:
    """Single sign-out for a Django project (WSGI or ASGI)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        self.sso: Integration = integration()

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        sso = self.sso
        if not sso.started:
            sso.start()  # on first use, not at import: a forking server must not inherit threads
        decision = sso.sync_runner.run(self._decide(request))
        if decision.background:
            sso.sync_runner.beside(decision.background)
        if decision.response is not None:
            return decision.response
        _apply(decision.verdict, request)
        return _with_cookies(decision.verdict, self.get_response(request))

    async def __acall__(self, request: Any) -> Any:
        sso = self.sso
        if not sso.started:
            await sso.astart()
        decision = await sso.async_runner.run(self._decide(request))
        if decision.background:
            sso.async_runner.beside(decision.background)
        if decision.response is not None:
            return decision.response
        _apply(decision.verdict, request)
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        return _with_cookies(decision.verdict, await get_response(request))

    def _decide(self, request: Any) -> Flow[_Decision]:
        """The decision for ``request``, the same under both modes; only the I/O differs."""
        sso = self.sso
        head = _head(request)
        responder = sso.core.route(request.path_info)
        if responder is not None:
            return (yield from self._serve(responder, head, request))
        verdict = sso.core.check(head)
        while verdict.pending is not None:  # the session had to be loaded, or ended
            verdict = yield from verdict.pending
        if verdict.response is not None:
            return _Decision(_django_response(verdict.response)[0], background=verdict.background)
        return _Decision(verdict=verdict, background=verdict.background)

    def _serve(self, responder: Responder, head: RequestHead, request: Any) -> Flow[_Decision]:
        """One of the middleware's own paths."""
        sso = self.sso
        early = sso.core.precheck(responder, request.method, _content_length(request))
        if early is not None:
            return _Decision(_django_response(early)[0])
        answer = yield from sso.core.respond(responder, _request(request, head))
        response, ends = _django_response(answer, sso.ending_headers())
        source = sso.session_source
        if ends and source is not None:
            end = partial(source.end_session, request)
            yield from BackendCall(sync=end, aio=sync_to_async(end), what="Django logout")
        return _Decision(response)


# -- translation, shared by both modes -----------------------------------------------------


def _head(request: Any) -> RequestHead:
    if not hasattr(request, "session") or not hasattr(request, "user"):
        raise ConfigurationError(
            "SSOMiddleware runs before Django's session or authentication middleware: put "
            "kc_sso_middleware.django.middleware.SSOMiddleware after "
            "django.contrib.sessions.middleware.SessionMiddleware and "
            "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE"
        )
    meta = request.META
    cookie = meta.get("HTTP_COOKIE")
    return RequestHead(
        (cookie,) if cookie is not None else (), meta.get("HTTP_AUTHORIZATION"), request
    )


def _content_length(request: Any) -> str | None:
    value: str | None = request.META.get("CONTENT_LENGTH") or None
    return value


def _request(request: Any, head: RequestHead) -> Request:
    """The core's view of a request to one of its paths, read the way Django reads it."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    # Django's reading of the host (ALLOWED_HOSTS, USE_X_FORWARDED_HOST): the origin the
    # same-origin check and the default post-logout redirect URI are built from.
    headers["host"] = request.get_host()
    return Request(
        method=request.method,
        query_string=request.META.get("QUERY_STRING", ""),
        headers=headers,
        body=request.body if request.method == "POST" else b"",
        scheme=request.scheme,
        root_path=url_path(request.META.get("SCRIPT_NAME", "") or ""),  # Django's: text
        head=head,
    )


def _django_response(response: Response, ending: frozenset[str] = frozenset()) -> tuple[Any, bool]:
    """An ``HttpResponse`` for the core's answer, and whether it ends the Django session.

    A ``Set-Cookie`` among ``ending`` (the Django session cookie, expired) is the core
    saying "this session ends here": the caller ends it with Django's logout instead of
    sending the header, and ``SessionMiddleware`` deletes the cookie itself.
    """
    from django.http import HttpResponse

    out = HttpResponse(response.body, status=response.status)
    del out["Content-Type"]  # only what the core sets, as the other adapters send
    ends = False
    for name, value in response.headers:
        if name.lower() != "set-cookie":
            out[name] = value
        elif value in ending:
            ends = True
        else:
            _set_cookie(out, value)
    return out, ends


def _set_cookie(response: Any, value: str) -> None:
    """Add a ``Set-Cookie`` value to a Django response (which keeps cookies by name)."""
    parsed: SimpleCookie = SimpleCookie()
    parsed.load(value)
    for name, morsel in parsed.items():
        response.cookies[name] = morsel


def _apply(verdict: Verdict, request: Any) -> None:
    """Put the verdict's changes on the request the app will get."""
    if verdict.signed_out is not None:
        setattr(request, SIGNED_OUT_ATTRIBUTE, verdict.signed_out.as_dict())
    if verdict.cookie is not None:
        if verdict.cookie:
            request.META["HTTP_COOKIE"] = verdict.cookie
        else:
            request.META.pop("HTTP_COOKIE", None)
        request.__dict__.pop("COOKIES", None)  # parsed again from the new header


def _with_cookies(verdict: Verdict, response: Any) -> Any:
    """The app's response with the verdict's ``Set-Cookie`` values it did not set itself."""
    for value in verdict.set_cookies:
        name = value.partition("=")[0].strip()
        if name not in response.cookies:
            _set_cookie(response, value)
    return response
