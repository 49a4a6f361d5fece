"""Where a browser may be sent after logout: never an open redirect.

A ``post_logout_redirect_uri`` named by the request is honoured only when it is a path on
this origin, an absolute URL of this origin, or under an entry of
``KC_SSO_LOGOUT_REDIRECT_ALLOWLIST``; anything else falls back to
``KC_SSO_POST_LOGOUT_REDIRECT_URI`` (or the app's root URL).  Backslashes and control
characters are refused outright: browsers read ``/\\evil.example`` as another host.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .._http import Request
from .._logs import untrusted
from ..settings import Settings

__all__ = ["RedirectGuard"]

logger = logging.getLogger("kc_sso_middleware")


class RedirectGuard:
    """Validates post-logout targets for one app."""

    def __init__(self, settings: Settings) -> None:
        self._default = settings.post_logout_redirect_uri
        self._allowlist = tuple(urlsplit(entry) for entry in settings.logout_redirect_allowlist)

    def default(self, request: Request) -> str:
        """The configured target, else this app's root URL as the request shows it."""
        return self._default or f"{request.origin}{request.root_path}/"

    def public_origin(self, request: Request) -> str:
        """This app's origin: that of ``KC_SSO_POST_LOGOUT_REDIRECT_URI`` when configured
        (it is the public one behind a proxy), else the request's."""
        if self._default:
            parts = urlsplit(self._default)
            return f"{parts.scheme}://{parts.netloc}"
        return request.origin

    def target(self, request: Request, requested: str | None) -> str:
        """``requested`` if allowed (a path made absolute on the public origin), else
        :meth:`default`."""
        if not requested:
            return self.default(request)
        origin = self.public_origin(request)
        if self.allowed(requested, origin) or (
            origin != request.origin and self.allowed(requested, request.origin)
        ):
            # Behind a proxy the request's own origin may be an internal address.  A path
            # is told by its "/" (allowed() admits no "//"), not by "://", which its
            # query may hold.
            return f"{origin}{requested}" if requested.startswith("/") else requested
        logger.warning(
            "logout: ignoring post_logout_redirect_uri %s (not allowed)", untrusted(requested)
        )
        return self.default(request)

    def allowed(self, target: str, origin: str) -> bool:
        if "\\" in target or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
            return False
        if not target.isascii():
            return False  # a Location header is ASCII: the caller percent-encodes
        try:
            parts = urlsplit(target)
        except ValueError:  # e.g. "http://[": no URL at all
            return False
        if _dot_segments(parts.path):
            return False  # the browser resolves them first: a prefix could be left
        if target.startswith("/") and not target.startswith("//"):
            return True  # a path on this origin
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if f"{parts.scheme}://{parts.netloc}".lower() == origin.lower():
            return True
        for allowed in self._allowlist:
            if (parts.scheme, parts.netloc.lower()) != (allowed.scheme, allowed.netloc.lower()):
                continue
            prefix = allowed.path
            if (
                not prefix
                or prefix == "/"
                or parts.path == prefix
                or parts.path.startswith(prefix.rstrip("/") + "/")
            ):
                return True
        return False


def _dot_segments(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, also percent-encoded (``%2e``),
    which a browser resolves before following the URL (WHATWG URL, path state), or with
    path parameters (``..;x``), which Tomcat, Jetty and Spring resolve as ``..``."""
    return any(
        segment.lower().replace("%2e", ".").split(";")[0] in (".", "..")
        for segment in path.split("/")
    )
