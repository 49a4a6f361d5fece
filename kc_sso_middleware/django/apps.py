"""The Django app: ``INSTALLED_APPS += ["kc_sso_middleware.django"]``.

Installing it brings the :class:`~.models.SessionLink` index (``manage.py migrate``), the
signal receivers that keep it (a row written at ``user_logged_in``, dropped at
``user_logged_out``) and the system checks of :mod:`.checks`.  The middleware's settings are
read on first use (see :mod:`.integration`), so commands that serve no request need no
``KC_SSO_*`` variables.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out

from .integration import configured, integration
from .source import MOZILLA_ID_TOKEN_KEY

__all__ = ["KCSSOConfig"]


class KCSSOConfig(AppConfig):  # type: ignore[misc]  # django is untyped here
    name = "kc_sso_middleware.django"
    label = "kc_sso_middleware"
    verbose_name = "Keycloak single sign-out"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .checks import register_checks

        register_checks()
        user_logged_in.connect(link_login, dispatch_uid="kc_sso_middleware.link_login")
        user_logged_out.connect(unlink_logout, dispatch_uid="kc_sso_middleware.unlink_logout")


def link_login(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Index the session of a Keycloak login (the session key exists by now)."""
    session = getattr(request, "session", None)
    if session is None:
        return
    sso = configured()
    if sso is None:
        if MOZILLA_ID_TOKEN_KEY not in session:
            return  # not a Keycloak login; no need to read KC_SSO_* for it
        sso = integration()
    if sso.session_source is not None:
        sso.session_source.link(request)


def unlink_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    """Drop the index row of a session that a logout is about to flush."""
    session = getattr(request, "session", None)
    sso = configured()
    if session is not None and sso is not None and sso.session_source is not None:
        sso.session_source.unlink(session.session_key)
