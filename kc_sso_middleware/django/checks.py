"""System checks (``manage.py check``): middleware order, mozilla-django-oidc, variables.

* ``kc_sso_middleware.W001``: the app is installed but ``SSOMiddleware`` is not in
  ``MIDDLEWARE``: nothing refuses logged-out sessions.
* ``kc_sso_middleware.E002``: ``SSOMiddleware`` comes before ``SessionMiddleware`` or
  ``AuthenticationMiddleware``.
* ``kc_sso_middleware.E003``: mozilla-django-oidc is installed (or its backend is in
  ``AUTHENTICATION_BACKENDS``) without ``OIDC_STORE_ID_TOKEN = True``: sessions hold no ID
  token, so the middleware cannot tell which Keycloak session they belong to.
* ``kc_sso_middleware.E004`` (``check --deploy``): the ``KC_SSO_*`` variables do not parse.
* ``kc_sso_middleware.E005``: mozilla-django-oidc's ``OIDC_RP_CLIENT_ID`` is not
  ``KC_SSO_CLIENT_ID``: Keycloak's logout tokens for its logins are refused.
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


def _uses_mozilla_django_oidc() -> bool:
    """Installed as an app, or its backend (or a subclass) authenticates: the package has
    no models or AppConfig, so projects often use the backend without listing it."""
    from .source import is_oidc_backend

    if apps.is_installed("mozilla_django_oidc"):
        return True
    backends = getattr(settings, "AUTHENTICATION_BACKENDS", None) or []
    return any(isinstance(path, str) and is_oidc_backend(path) for path in backends)


def _kc_sso_client_id() -> str | None:
    """KC_SSO_CLIENT_ID as the middleware uses it (``None``: not parseable, see E004)."""
    from .integration import configured, settings_from_env

    sso = configured()
    if sso is not None:
        return sso.settings.client_id
    try:
        return settings_from_env().client_id
    except ConfigurationError:
        return None


def check_oidc(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not _uses_mozilla_django_oidc():
        return []
    errors: list[CheckMessage] = []
    if not getattr(settings, "OIDC_STORE_ID_TOKEN", False):
        errors.append(
            Error(
                "mozilla-django-oidc does not keep the ID token in the session",
                hint="set OIDC_STORE_ID_TOKEN = True: the session's Keycloak login (sid, sub, "
                "auth_time) and the logout's id_token_hint come from it",
                id="kc_sso_middleware.E003",
            )
        )
    oidc_client = getattr(settings, "OIDC_RP_CLIENT_ID", None)
    client_id = _kc_sso_client_id() if oidc_client else None
    if client_id is not None and oidc_client != client_id:
        errors.append(
            Error(
                f"mozilla-django-oidc logs in as client {oidc_client!r}, the middleware "
                f"expects {client_id!r} (KC_SSO_CLIENT_ID)",
                hint="Keycloak's logout tokens for these logins are addressed to "
                "OIDC_RP_CLIENT_ID and refused: set both to the same client",
                id="kc_sso_middleware.E005",
            )
        )
    return errors


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
