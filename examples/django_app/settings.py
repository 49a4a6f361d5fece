"""Settings of the Django example, all from ``KC_SSO_*`` variables.

mozilla-django-oidc's endpoints come from ``KC_SSO_ISSUER``'s discovery document, fetched
once here; if the OP cannot be reached (a management command run while Keycloak is down),
Keycloak's well-known paths under the issuer stand in, with a warning.  Django's session
cookie is the one ``KC_SSO_SESSION_COOKIE`` names, signed with ``KC_SSO_SESSION_SECRET``
as ``SECRET_KEY``; sessions live in a SQLite database file in the system temp directory
(one per client id), created with its tables when the app first starts.
"""

from __future__ import annotations

import logging
import re
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx

from examples._logging import EVENT_LOGGER, EventFormatter
from examples._logging import wanted as event_lines_wanted
from kc_sso_middleware import Settings

SSO = Settings.from_env()


def _tls() -> ssl.SSLContext | bool:
    if not SSO.tls_verify:
        return False
    if SSO.ca_bundle:
        return ssl.create_default_context(cafile=SSO.ca_bundle)
    return True


def _discovery() -> dict[str, Any]:
    url = f"{SSO.issuer}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=SSO.http_timeout, verify=SSO_TLS)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document
    except (httpx.HTTPError, ValueError) as exc:
        logging.getLogger("examples.django_app").warning(
            "discovery at %s failed (%s); using Keycloak's default endpoint paths", url, exc
        )
        return {}


#: TLS verification for requests to the OP (KC_SSO_TLS_VERIFY, KC_SSO_CA_BUNDLE)
SSO_TLS = _tls()
_DISCOVERY = _discovery()
_OIDC = f"{SSO.issuer}/protocol/openid-connect"

SECRET_KEY = SSO.session_secret
DEBUG = False
# Any Host: the example runs on whatever name the tests and the demo use.  Keycloak checks
# the redirect URI built from it, and the logout path's same-origin check compares with it.
# A real deployment lists its own names.
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
WSGI_APPLICATION = "examples.django_app.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "mozilla_django_oidc",
    "kc_sso_middleware.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After the session and authentication middleware: it judges the session Django
    # loaded and ends a revoked one with Django's logout.
    "kc_sso_middleware.django.middleware.SSOMiddleware",
    # Inside it, so it leaves alone the middleware's own answers (a front-channel logout
    # page, when turned on, must be framable by the OP).
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

_DATABASE = Path(tempfile.gettempdir()) / (
    "kc-sso-django-" + re.sub(r"[^A-Za-z0-9_.-]", "_", SSO.client_id) + ".sqlite3"
)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_DATABASE),
        # Several workers share the file: WAL lets readers run beside the one writer.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_NAME = SSO.session_cookie
SESSION_COOKIE_PATH = SSO.session_cookie_path
SESSION_COOKIE_DOMAIN = SSO.session_cookie_domain
SESSION_COOKIE_SECURE = SSO.session_cookie_secure
SESSION_COOKIE_SAMESITE = SSO.session_cookie_samesite.capitalize()
if SSO.session_max_age:
    SESSION_COOKIE_AGE = SSO.session_max_age

# mozilla-django-oidc: authorization code flow (with PKCE), endpoints from discovery.
AUTHENTICATION_BACKENDS = ["examples.django_app.auth.KeycloakBackend"]
OIDC_RP_CLIENT_ID = SSO.client_id
OIDC_RP_CLIENT_SECRET = SSO.client_secret
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = "openid"  # Keycloak adds its default client scopes (profile, email)
OIDC_USE_PKCE = True
# The client authenticates as the OP says it may; without a list, OIDC's default (basic).
OIDC_TOKEN_USE_BASIC_AUTH = "client_secret_basic" in (
    _DISCOVERY.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
)
OIDC_OP_AUTHORIZATION_ENDPOINT = _DISCOVERY.get("authorization_endpoint", f"{_OIDC}/auth")
OIDC_OP_TOKEN_ENDPOINT = _DISCOVERY.get("token_endpoint", f"{_OIDC}/token")
OIDC_OP_USER_ENDPOINT = _DISCOVERY.get("userinfo_endpoint", f"{_OIDC}/userinfo")
OIDC_OP_JWKS_ENDPOINT = _DISCOVERY.get("jwks_uri", f"{_OIDC}/certs")
# The raw ID token in the session (session["oidc_id_token"]): what the middleware reads.
OIDC_STORE_ID_TOKEN = True
OIDC_VERIFY_SSL = (SSO.ca_bundle or True) if SSO.tls_verify else False
OIDC_TIMEOUT = SSO.http_timeout
LOGIN_REDIRECT_URL = "/"
LOGIN_REDIRECT_URL_FAILURE = "/"
# No OIDC_OP_LOGOUT_URL_METHOD: the middleware's logout path builds the end-session URL.

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "kc_sso_middleware": {"handlers": ["console"], "level": "INFO"},
        "examples": {"handlers": ["console"], "level": "INFO"},
    },
}
if event_lines_wanted():  # the demo's live lines (EXAMPLE_EVENT_LOG=1, see examples._logging)
    LOGGING["formatters"] = {"events": {"()": EventFormatter, "app": "Django app"}}
    LOGGING["handlers"]["events"] = {"class": "logging.StreamHandler", "formatter": "events"}
    LOGGING["loggers"][EVENT_LOGGER] = {"handlers": ["events"], "level": "INFO", "propagate": False}
