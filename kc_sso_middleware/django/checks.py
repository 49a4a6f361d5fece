"""System checks (``manage.py check``): middleware order, mozilla-django-oidc, variables.

* ``kc_sso_middleware.W001``: the app is installed but ``SSOMiddleware`` is not in
  ``MIDDLEWARE``: nothing refuses logged-out sessions.
* ``kc_sso_middleware.E002``: ``SSOMiddleware`` comes before ``SessionMiddleware`` or
  ``AuthenticationMiddleware``.
* ``kc_sso_middleware.E003``: mozilla-django-oidc is installed without
  ``OIDC_STORE_ID_TOKEN = True``: sessions hold no ID token, so the middleware cannot tell
  which Keycloak session they belong to.
* ``kc_sso_middleware.E004`` (``check --deploy``): the ``KC_SSO_*`` variables do not parse.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from ..errors import ConfigurationError

__all__ = ["check_middleware", "check_oidc", "check_variables", "register_checks"]

SSO_MIDDLEWARE = "kc_sso_middleware.django.middleware.SSOMiddleware"
_REQUIRED = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
)


def _is(entry: str, path: str) -> bool:
    """Whether the MIDDLEWARE entry ``entry`` is the class at ``path`` or a subclass."""
    if entry == path:
        return True
    try:
        return issubclass(import_string(entry), import_string(path))
    except (ImportError, TypeError):
        return False


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    position = next((i for i, e in enumerate(middleware) if _is(e, SSO_MIDDLEWARE)), None)
    if position is None:
        return [
            Warning(
                "kc_sso_middleware.django is installed but its middleware is not in MIDDLEWARE",
                hint=f"add {SSO_MIDDLEWARE!r} after AuthenticationMiddleware",
                id="kc_sso_middleware.W001",
            )
        ]
    errors: list[CheckMessage] = []
    for required in _REQUIRED:
        if not any(_is(entry, required) for entry in middleware[:position]):
            errors.append(
                Error(
                    f"{SSO_MIDDLEWARE} must come after {required} in MIDDLEWARE",
                    hint="it reads the session Django loaded and ends it with Django's logout",
                    id="kc_sso_middleware.E002",
                )
            )
    return errors


def check_oidc(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("mozilla_django_oidc") and not getattr(
        settings, "OIDC_STORE_ID_TOKEN", False
    ):
        return [
            Error(
                "mozilla-django-oidc does not keep the ID token in the session",
                hint="set OIDC_STORE_ID_TOKEN = True: the session's Keycloak login (sid, sub, "
                "auth_time) and the logout's id_token_hint come from it",
                id="kc_sso_middleware.E003",
            )
        ]
    return []


def check_variables(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .integration import settings_from_env

    try:
        settings_from_env()
    except ConfigurationError as exc:
        return [Error(str(exc), id="kc_sso_middleware.E004")]
    return []


def register_checks() -> None:
    """Register the checks with Django (the app config does, once)."""
    register(check_middleware, Tags.security)
    register(check_oidc)
    register(check_variables, Tags.security, deploy=True)
