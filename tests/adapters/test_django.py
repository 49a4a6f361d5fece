"""The Django integration, through Django's own WSGI and ASGI handlers, against the stand-in OP.

A small Django project (configured here; mozilla-django-oidc with the example's backend,
database sessions in a SQLite file) runs under ``WSGIHandler`` over ``httpx.WSGITransport``
(the middleware in sync mode) and under ``ASGIHandler`` over ``httpx.ASGITransport`` on one
event loop (async mode: every session and database access must go through
``sync_to_async``, or Django raises ``SynchronousOnlyOperation``).  Logins take the real
mozilla-django-oidc flow: ``/login``, the stand-in OP's authorize endpoint, the callback
with its token exchange and ID token check.  Every way Keycloak ends a session ends the
Django session: ``/me`` turns 401 and the session is gone from its store.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

import django
import httpx
import pytest
from django.conf import settings as django_settings

from kc_sso_middleware import Revocation
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_SECRET,
    Clock,
    PortalClient,
    admin_token,
    direct_grant,
    make_settings,
)

_DATABASE_DIR = tempfile.mkdtemp(prefix="kc-sso-django-tests-")
atexit.register(shutil.rmtree, _DATABASE_DIR, True)
SSO_MIDDLEWARE = "kc_sso_middleware.django.middleware.SSOMiddleware"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    SSO_MIDDLEWARE,
]
DB = "django.contrib.sessions.backends.db"
CACHE = "django.contrib.sessions.backends.cache"
CACHED_DB = "django.contrib.sessions.backends.cached_db"
COOKIES = "django.contrib.sessions.backends.signed_cookies"
FILES = "django.contrib.sessions.backends.file"

if not django_settings.configured:
    django_settings.configure(
        SECRET_KEY=SESSION_SECRET,
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "mozilla_django_oidc",
            "kc_sso_middleware.django",
        ],
        MIDDLEWARE=MIDDLEWARE,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": f"{_DATABASE_DIR}/db.sqlite3",
                "OPTIONS": {"timeout": 20},
            }
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        SESSION_ENGINE=DB,
        AUTHENTICATION_BACKENDS=["examples.django_app.auth.KeycloakBackend"],
        OIDC_RP_CLIENT_ID=CLIENT_ID,
        OIDC_RP_CLIENT_SECRET=CLIENT_SECRET,
        OIDC_RP_SIGN_ALGO="RS256",
        OIDC_RP_SCOPES="openid email profile",
        OIDC_STORE_ID_TOKEN=True,
        OIDC_USE_PKCE=True,
        # The stand-in OP's endpoints, set by the op_endpoints fixture.
        OIDC_OP_AUTHORIZATION_ENDPOINT="",
        OIDC_OP_TOKEN_ENDPOINT="",
        OIDC_OP_USER_ENDPOINT="",
        OIDC_OP_JWKS_ENDPOINT="",
        LOGIN_REDIRECT_URL="/",
        LOGIN_REDIRECT_URL_FAILURE="/",
        LOGGING_CONFIG=None,
    )
    django.setup()

from asgiref.sync import iscoroutinefunction  # noqa: E402 - after django.setup()
from django.contrib.auth.signals import user_logged_in  # noqa: E402
from django.contrib.sessions.middleware import SessionMiddleware  # noqa: E402
from django.contrib.sessions.models import Session  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from mozilla_django_oidc.urls import OIDCAuthenticateClass, OIDCCallbackClass  # noqa: E402

from examples._bearer import BearerValidator  # noqa: E402
from kc_sso_middleware.django import checks  # noqa: E402
from kc_sso_middleware.django.integration import Integration, configure  # noqa: E402
from kc_sso_middleware.django.middleware import SSOMiddleware  # noqa: E402
from kc_sso_middleware.django.models import EndedSession, SessionLink  # noqa: E402
from kc_sso_middleware.errors import ConfigurationError  # noqa: E402
from kc_sso_middleware.sources.bearer import unverified_claims  # noqa: E402

Mode = Literal["wsgi", "asgi"]
BASE_URL = "http://app.test"
#: the bearer validator /api/me uses (one per test, for the stand-in OP)
_VALIDATOR: list[BearerValidator] = []


# --------------------------------------------------------------------------- the project


def _claims(request: HttpRequest) -> dict[str, Any] | None:
    if not request.user.is_authenticated:
        return None
    token = request.session.get("oidc_id_token")
    return unverified_claims(token) if isinstance(token, str) else None


def show(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "user": request.user.username if request.user.is_authenticated else None,
            "signed_out": getattr(request, "kc_sso_signed_out", None),
        }
    )


def me(request: HttpRequest) -> JsonResponse:
    claims = _claims(request)
    if claims is None:
        return JsonResponse({"error": "not_logged_in"}, status=401)
    return JsonResponse(claims)


def api_me(request: HttpRequest) -> JsonResponse:
    answer = _VALIDATOR[0].answer(request.headers.get("Authorization"))
    response = JsonResponse(dict(answer.body), status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


def touch(request: HttpRequest) -> HttpResponse:
    request.session["touched"] = True
    return HttpResponse("ok")


urlpatterns = [
    path("", show),
    path("login", OIDCAuthenticateClass.as_view()),
    path("oidc/callback/", OIDCCallbackClass.as_view(), name="oidc_authentication_callback"),
    path("me", me),
    path("api/me", api_me),
    path("touch", touch),
]


@pytest.fixture(scope="module", autouse=True)
def _database() -> None:
    call_command("migrate", interactive=False, verbosity=0)


@pytest.fixture(autouse=True)
def _op_endpoints(op: StandInOP) -> Iterator[None]:
    oidc = f"{op.issuer}/protocol/openid-connect"
    validator = BearerValidator(op.issuer)
    _VALIDATOR[:] = [validator]
    with override_settings(
        OIDC_OP_AUTHORIZATION_ENDPOINT=f"{oidc}/auth",
        OIDC_OP_TOKEN_ENDPOINT=f"{oidc}/token",
        OIDC_OP_USER_ENDPOINT=f"{oidc}/userinfo",
        OIDC_OP_JWKS_ENDPOINT=f"{oidc}/certs",
    ):
        yield
    validator.close()


# --------------------------------------------------------------------------- harness


class _Portal(PortalClient):
    """conftest's one-loop ASGI client, with its cookie jar in view."""

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies


class DjangoHarness:
    """The project under one of Django's handlers, with a fresh integration and store."""

    def __init__(
        self, mode: Mode, op: StandInOP, clock: Callable[[], float] = time.time, **overrides: Any
    ) -> None:
        self.mode = mode
        self.op = op
        self.store = MemoryStore()
        self.sso: Integration = configure(
            make_settings(op, **overrides), store=self.store, clock=clock
        )
        self.client: httpx.Client | _Portal
        if mode == "wsgi":
            self.client = httpx.Client(
                transport=httpx.WSGITransport(app=WSGIHandler()), base_url=BASE_URL
            )
        else:
            self.client = _Portal(ASGIHandler(), BASE_URL)
        #: the browser's cookies at the OP (its SSO session), kept apart from the app's
        self.op_browser = httpx.Client(timeout=10)

    def close(self) -> None:
        self.client.close()
        self.op_browser.close()
        self.sso.close()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(url, **kwargs)

    def replay(self, url: str, session_cookie: str | None) -> httpx.Response:
        """A request carrying only ``session_cookie`` (a copy taken earlier); the jar is emptied."""
        self.client.cookies.clear()
        return self.get(url, headers={"Cookie": f"sessionid={session_cookie}"})

    def login(self) -> dict[str, Any]:
        """The real mozilla-django-oidc login against the stand-in OP; the ID token's claims."""
        start = self.get("/login")
        assert start.status_code == 302, start.text
        authorized = self.op_browser.get(start.headers["location"])
        assert authorized.status_code == 302, authorized.text
        callback = authorized.headers["location"]
        assert callback.startswith(f"{BASE_URL}/oidc/callback/")
        landed = self.get(callback)
        assert landed.status_code == 302, landed.text
        assert landed.headers["location"] == "/"
        answer = self.get("/me")
        assert answer.status_code == 200, answer.text
        claims: dict[str, Any] = answer.json()
        return claims

    @property
    def session_key(self) -> str | None:
        return self.client.cookies.get("sessionid")

    def backchannel(self, **claims: Any) -> httpx.Response:
        token = self.op.logout_token(CLIENT_ID, **claims)
        return self.post("/backchannel-logout", data={"logout_token": token})

    def admin(self, action: str, **claims: Any) -> httpx.Response:
        body = admin_token(self.op, action, **claims)
        path = "/k_logout" if action == "LOGOUT" else "/k_push_not_before"
        return self.post(path, content=body, headers={"Content-Type": "text/plain"})

    def revoke_in_store(self, claims: dict[str, Any]) -> None:
        """Record the session revoked without purging (as another worker's replica gets it)."""
        assert self.store.record(
            [
                Revocation.session(
                    self.op.issuer, claims["sid"], client_id=CLIENT_ID, expires_at=_far()
                )
            ]
        )


HarnessFactory = Callable[..., DjangoHarness]


@pytest.fixture(params=["wsgi", "asgi"])
def make_harness(request: pytest.FixtureRequest, op: StandInOP) -> Iterator[HarnessFactory]:
    """Build harnesses for the parametrised mode; all are closed afterwards."""
    built: list[DjangoHarness] = []

    def factory(clock: Callable[[], float] = time.time, **overrides: Any) -> DjangoHarness:
        harness = DjangoHarness(request.param, op, clock, **overrides)
        built.append(harness)
        return harness

    yield factory
    for harness in built:
        harness.close()


def _row_exists(session_key: str | None) -> bool:
    return session_key is not None and Session.objects.filter(session_key=session_key).exists()


def _linked(session_key: str | None) -> bool:
    return SessionLink.objects.filter(session_key=session_key).exists()


def _expires_session(set_cookie: str) -> bool:
    """Whether a Set-Cookie value is Django's deletion of the session cookie."""
    # (Django's WSGI handler writes a leading space that servers strip, httpx does not.)
    return set_cookie.strip().startswith('sessionid="";') and "Max-Age=0" in set_cookie


def _far() -> float:
    return time.time() + 3600


# --------------------------------------------------------------------------- login


def test_login_through_mozilla_django_oidc(make_harness: HarnessFactory) -> None:
    """The code flow logs in; /me has the ID token's claims; the session is indexed."""
    harness = make_harness()
    claims = harness.login()
    assert claims["sid"]
    assert claims["sub"] == "sub-alice"
    assert harness.get("/").json() == {"user": "sub-alice", "signed_out": None}
    link = SessionLink.objects.get(session_key=harness.session_key)
    assert (link.sid, link.sub) == (claims["sid"], claims["sub"])
    assert link.issued_at == claims["iat"]


class HeaderSessionMiddleware(SessionMiddleware):
    """A pattern of mobile and single-page clients: the session key from a header, else
    the cookie; ``request.session`` is still Django's own store."""

    def process_request(self, request: HttpRequest) -> None:
        key = request.META.get("HTTP_X_SESSION_KEY") or request.COOKIES.get(
            django_settings.SESSION_COOKIE_NAME
        )
        request.session = self.SessionStore(key)


@pytest.mark.parametrize(
    "extra", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}], ids=["no other header", "basic auth"]
)
def test_a_session_django_loaded_without_a_cookie_is_checked_too(
    extra: dict[str, str], make_harness: HarnessFactory
) -> None:
    """The decision is taken on request.session, however its key reached Django: with no
    Cookie header at all, a revoked session is refused too."""
    middleware = [f"{__name__}.HeaderSessionMiddleware", *MIDDLEWARE[1:]]
    with override_settings(MIDDLEWARE=middleware):
        harness = make_harness()
        claims = harness.login()
        key = harness.session_key
        assert key is not None
        harness.client.cookies.clear()
        headers = {"X-Session-Key": key, **extra}
        assert harness.get("/me", headers=headers).status_code == 200
        harness.revoke_in_store(claims)
        assert harness.get("/me", headers=headers).status_code == 401


def test_anonymous_request_passes(make_harness: HarnessFactory) -> None:
    """No session at all: the app answers as without the middleware."""
    harness = make_harness()
    assert harness.get("/").json() == {"user": None, "signed_out": None}
    assert harness.get("/me").status_code == 401


def test_middleware_mode_follows_the_handler(op: StandInOP) -> None:
    """Under an async handler chain the middleware is a coroutine function; else it is not."""
    configure(make_settings(op), store=MemoryStore())

    async def async_view(request: Any) -> Any:
        return None

    def sync_view(request: Any) -> Any:
        return None

    assert iscoroutinefunction(SSOMiddleware(async_view))
    assert not iscoroutinefunction(SSOMiddleware(sync_view))


# --------------------------------------------------------------------------- revocations


REVOCATIONS = [
    pytest.param("backchannel-sid", id="back-channel logout naming the sid"),
    pytest.param("backchannel-sub", id="back-channel logout naming only the sub"),
    pytest.param("k_logout-ids", id="admin k_logout with the session id"),
    pytest.param("k_logout-all", id="admin k_logout without ids (sign out all)"),
    pytest.param("push-not-before", id="admin push not-before"),
    pytest.param("local-logout", id="the app's own logout path"),
]


def _revoke(harness: DjangoHarness, how: str, claims: dict[str, Any]) -> httpx.Response:
    if how == "backchannel-sid":
        return harness.backchannel(sid=claims["sid"], sub=claims["sub"])
    if how == "backchannel-sub":
        return harness.backchannel(sid=None, sub=claims["sub"])
    if how == "k_logout-ids":
        return harness.admin("LOGOUT", keycloakSessionIds=[claims["sid"]])
    if how == "k_logout-all":
        return harness.admin("LOGOUT")
    if how == "push-not-before":
        return harness.admin("PUSH_NOT_BEFORE", notBefore=int(time.time()) + 1)
    assert how == "local-logout"
    return harness.get("/logout")


def test_user_scope_purges_the_users_other_django_sessions(
    make_harness: HarnessFactory,
) -> None:
    """KC_SSO_SID_LOGOUT_SCOPE=user: a token naming one sid also deletes the user's other
    Django sessions of this app (the entry is scoped to this app's client)."""
    harness = make_harness(sid_logout_scope="user")
    first = harness.login()
    first_key = harness.session_key
    harness.client.cookies.clear()
    harness.op_browser.cookies.clear()  # a second device: another Keycloak session
    second = harness.login()
    second_key = harness.session_key
    assert first["sid"] != second["sid"]
    assert first["sub"] == second["sub"]
    assert _row_exists(first_key)
    assert _row_exists(second_key)
    assert harness.backchannel(sid=first["sid"], sub=first["sub"]).status_code == 200
    assert not _row_exists(first_key)
    assert not _row_exists(second_key), "the user's other session is still in the database"


@pytest.mark.parametrize("how", REVOCATIONS)
def test_every_revocation_ends_the_django_session(how: str, make_harness: HarnessFactory) -> None:
    """Each way Keycloak (or the app) ends a session: /me 401, the row and its link gone."""
    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    assert _row_exists(key)
    assert _linked(key)

    answer = _revoke(harness, how, claims)

    assert answer.status_code == (302 if how == "local-logout" else 200), answer.text
    assert not _row_exists(key), "the Django session is still in the database"
    assert not _linked(key)
    assert harness.replay("/me", key).status_code == 401, "the old session cookie still works"
    assert harness.get("/me").status_code == 401


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        pytest.param("backchannel-sid", "backchannel", id="back-channel logout"),
        pytest.param("backchannel-sub", "backchannel", id="back-channel logout without sid"),
        pytest.param("k_logout-ids", "admin_logout", id="admin k_logout with the session id"),
    ],
)
def test_a_deleted_session_still_says_why(
    how: str, reason: str, make_harness: HarnessFactory
) -> None:
    """A session deleted at a revocation leaves an EndedSession: the browser's next request
    with its key is refused with the reason, and the cookie deleted; nothing comes back."""
    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    assert _revoke(harness, how, claims).status_code == 200
    assert not _row_exists(key)
    assert EndedSession.objects.filter(session_key=key, sid=claims["sid"]).exists()

    answer = harness.replay("/", key)

    assert answer.status_code == 200
    assert answer.json()["user"] is None
    assert answer.json()["signed_out"]["reason"] == reason
    assert answer.json()["signed_out"]["sid"] == claims["sid"]
    assert _expires_session(answer.headers["set-cookie"])
    assert not _row_exists(key)
    assert harness.replay("/me", key).status_code == 401


def test_an_unknown_session_key_passes_as_django_has_it(make_harness: HarnessFactory) -> None:
    """A cookie naming a session that never existed: anonymous, no marker, cookie deleted."""
    harness = make_harness()
    answer = harness.replay("/", "nosuchsessionkeyatall")
    assert answer.json() == {"user": None, "signed_out": None}
    assert _expires_session(answer.headers["set-cookie"])


def test_refused_session_is_flushed_and_marked(make_harness: HarnessFactory) -> None:
    """A session the store says is revoked (no purge here) is logged out the Django way."""
    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    harness.revoke_in_store(claims)

    answer = harness.get("/")

    assert answer.status_code == 200
    assert answer.json()["user"] is None
    assert answer.json()["signed_out"]["sid"] == claims["sid"]
    assert answer.json()["signed_out"]["reason"] == "backchannel"
    assert _expires_session(answer.headers["set-cookie"])
    assert not _row_exists(key)
    assert not _linked(key)
    assert harness.replay("/me", key).status_code == 401


def test_revoked_action_401(make_harness: HarnessFactory) -> None:
    """KC_SSO_REVOKED_ACTION=401: a revoked session is answered 401, and still flushed."""
    harness = make_harness(revoked_action="401")
    claims = harness.login()
    key = harness.session_key
    harness.revoke_in_store(claims)

    answer = harness.get("/")

    assert answer.status_code == 401
    assert answer.json()["error"] == "session_revoked"
    assert _expires_session(answer.headers["set-cookie"])
    assert not _row_exists(key)


def test_save_every_request_does_not_resurrect(make_harness: HarnessFactory) -> None:
    """With SESSION_SAVE_EVERY_REQUEST a flushed session is not saved back (no 400 either)."""
    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    harness.revoke_in_store(claims)
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
        answer = harness.get("/touch")
    assert answer.status_code == 200
    assert not _row_exists(key)
    assert harness.replay("/me", key).status_code == 401


def test_session_past_its_lifetime_is_refused(make_harness: HarnessFactory) -> None:
    """A login older than KC_SSO_MAX_SESSION_LIFETIME is ended, though nothing revoked it."""
    clock = Clock()
    harness = make_harness(clock=clock, max_session_lifetime=60)
    harness.login()
    key = harness.session_key
    clock.now += 120
    answer = harness.get("/")
    assert answer.json()["signed_out"]["reason"] == "lifetime"
    assert not _row_exists(key)
    assert harness.get("/me").status_code == 401


def test_malformed_login_in_session_is_ended(make_harness: HarnessFactory) -> None:
    """A session whose stored ID token is not a JWT cannot be vouched for: it is flushed."""
    harness = make_harness()
    harness.login()
    key = harness.session_key
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore(key)
    store["oidc_id_token"] = "not-a-jwt"
    store.save()

    answer = harness.get("/")

    assert answer.json() == {"user": None, "signed_out": None}
    assert not _row_exists(key)


def test_new_login_after_a_revocation(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Once Keycloak ended the session, logging in again gives a fresh, working session."""
    harness = make_harness()
    first = harness.login()
    op.end_session(first["sid"])  # Keycloak ends it (no back-channel URL registered here)
    assert harness.backchannel(sid=first["sid"], sub=first["sub"]).status_code == 200
    assert harness.get("/me").status_code == 401

    second = harness.login()

    assert second["sid"] != first["sid"]
    assert harness.get("/me").json()["sid"] == second["sid"]
    assert _linked(harness.session_key)


# --------------------------------------------------------------------------- logout path


def test_local_logout_redirects_to_keycloak(make_harness: HarnessFactory, op: StandInOP) -> None:
    """/logout: the session ends here, the browser goes to end-session with id_token_hint."""
    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    id_token = Session.objects.get(session_key=key).get_decoded()["oidc_id_token"]

    answer = harness.get("/logout")

    assert answer.status_code == 302
    location = httpx.URL(answer.headers["location"])
    assert str(location).startswith(f"{op.issuer}/protocol/openid-connect/logout?")
    assert location.params["id_token_hint"] == id_token
    # Keycloak sends the browser back to the path where the logout's state is checked.
    assert location.params["post_logout_redirect_uri"] == f"{BASE_URL}/logout/complete"
    assert location.params["client_id"] == CLIENT_ID
    cookies = answer.headers.get_list("set-cookie")
    assert len(cookies) == 2, cookies
    assert any(_expires_session(cookie) for cookie in cookies)
    assert any(cookie.strip().startswith("session_logout_state=") for cookie in cookies)
    assert not _row_exists(key)
    # This app session (its token) is revoked for every worker; the sid is not (a new login
    # into the same Keycloak session, if the user stays logged in there, must work).
    source = harness.sso.session_source
    assert source is not None
    identity = source.identity_of({"oidc_id_token": id_token})
    assert identity is not None
    assert identity.sid == claims["sid"]
    assert harness.store.is_revoked(identity.keys)
    assert not harness.store.is_revoked(replace(identity.keys, instance=None))


def test_logout_post_needs_no_csrf_token(make_harness: HarnessFactory) -> None:
    """The middleware's paths are served before CsrfViewMiddleware looks at any view."""
    harness = make_harness()
    harness.login()
    answer = harness.post("/logout", data={})
    assert answer.status_code == 302
    assert harness.get("/me").status_code == 401


def test_cross_site_logout_asks_first(make_harness: HarnessFactory) -> None:
    """A cross-site GET of /logout gets the confirmation page; the session stays."""
    harness = make_harness()
    harness.login()
    answer = harness.get("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 200
    assert 'id="confirm-logout"' in answer.text
    assert "set-cookie" not in answer.headers
    assert harness.get("/me").status_code == 200


def test_api_logout_answers_json(make_harness: HarnessFactory) -> None:
    """An API client's logout: JSON, and the Django session ends too."""
    harness = make_harness()
    harness.login()
    key = harness.session_key
    answer = harness.get("/logout", headers={"Accept": "application/json"})
    assert answer.status_code == 200
    assert answer.json()["logged_out"] is True
    assert not _row_exists(key)


def test_bad_logout_token_changes_nothing(make_harness: HarnessFactory) -> None:
    """A back-channel request that breaks a rule is 400 and ends no session."""
    harness = make_harness()
    claims = harness.login()
    answer = harness.backchannel(sid=claims["sid"], iss="https://evil.test")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert harness.get("/me").status_code == 200


# --------------------------------------------------------------------------- bearer tokens


def test_bearer_token_refused_after_revocation(make_harness: HarnessFactory, op: StandInOP) -> None:
    """/api/me validates a token (200); once its session is revoked the middleware says 401."""
    harness = make_harness()
    tokens = direct_grant(op)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    accepted = harness.get("/api/me", headers=bearer)
    assert accepted.status_code == 200, accepted.text
    sid = accepted.json()["sid"]

    assert harness.backchannel(sid=sid, sub=accepted.json()["sub"]).status_code == 200

    refused = harness.get("/api/me", headers=bearer)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert refused.json()["error"] == "invalid_token"


def test_bearer_check_off(make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_BEARER=off leaves bearer tokens to the app entirely."""
    harness = make_harness(bearer="off")
    tokens = direct_grant(op)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    sid = harness.get("/api/me", headers=bearer).json()["sid"]
    assert harness.backchannel(sid=sid).status_code == 200
    assert harness.get("/api/me", headers=bearer).status_code == 200


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        pytest.param(None, "Bearer", id="no token"),
        pytest.param("Bearer not.a.jwt", 'Bearer error="invalid_token"', id="not a JWT"),
        pytest.param("Basic dXNlcjpwdw==", "Bearer", id="another scheme"),
    ],
)
def test_api_me_without_a_valid_token(
    authorization: str | None, challenge: str, make_harness: HarnessFactory
) -> None:
    """The app's own validation: 401 with the RFC 6750 challenge."""
    harness = make_harness()
    headers = {"Authorization": authorization} if authorization else {}
    answer = harness.get("/api/me", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith(challenge)


def test_api_me_refuses_a_forged_token(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A token signed with another key (same kid) is refused by the app's validation."""
    from joserfc.jwk import RSAKey

    from kc_sso_middleware.testing import mint_jwt

    harness = make_harness()
    forger = RSAKey.generate_key(2048, parameters={"kid": op.key.kid})
    now = int(time.time())
    claims = {"iss": op.issuer, "sub": "x", "sid": "y", "iat": now, "exp": now + 60}
    token = mint_jwt(forger, claims)
    answer = harness.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_token"


# --------------------------------------------------------------------------- session engines


@pytest.mark.parametrize("engine", [CACHE, CACHED_DB, FILES], ids=["cache", "cached_db", "file"])
def test_other_server_side_engines_are_purged(
    engine: str, make_harness: HarnessFactory, tmp_path: Any
) -> None:
    """A back-channel logout deletes a session from whichever store the engine keeps it in."""
    from importlib import import_module

    with override_settings(SESSION_ENGINE=engine, SESSION_FILE_PATH=str(tmp_path)):
        harness = make_harness()
        claims = harness.login()
        key = harness.session_key
        store_class = import_module(engine).SessionStore
        assert key is not None
        assert store_class().exists(key)

        assert harness.backchannel(sid=claims["sid"], sub=claims["sub"]).status_code == 200

        assert not store_class().exists(key)
        if engine != FILES:
            assert cache.get(store_class.cache_key_prefix + key) is None
        assert not _row_exists(key)
        assert not _linked(key)
        assert harness.replay("/me", key).status_code == 401


def test_signed_cookie_engine(make_harness: HarnessFactory) -> None:
    """Sessions in signed cookies: no index, and a copied cookie is refused after logout."""
    with override_settings(SESSION_ENGINE=COOKIES):
        harness = make_harness()
        claims = harness.login()
        copied = harness.session_key
        assert not _linked(copied)

        assert harness.backchannel(sid=claims["sid"], sub=claims["sub"]).status_code == 200

        answer = harness.replay("/", copied)
        assert answer.json()["user"] is None
        assert answer.json()["signed_out"]["sid"] == claims["sid"]
        assert _expires_session(answer.headers["set-cookie"])
        assert harness.replay("/me", copied).status_code == 401


def test_signed_cookie_engine_local_logout(make_harness: HarnessFactory) -> None:
    """/logout with signed-cookie sessions: the cookie is deleted and a copy is refused."""
    with override_settings(SESSION_ENGINE=COOKIES):
        harness = make_harness()
        harness.login()
        copied = harness.session_key
        answer = harness.get("/logout")
        assert answer.status_code == 302
        assert any(_expires_session(c) for c in answer.headers.get_list("set-cookie"))
        assert harness.replay("/me", copied).status_code == 401


# --------------------------------------------------------------------------- maintenance


def test_clearsessions_keeps_working(make_harness: HarnessFactory) -> None:
    """manage.py clearsessions deletes expired sessions with the app installed."""
    from datetime import timedelta

    from django.utils import timezone

    harness = make_harness()
    harness.login()
    live = harness.session_key
    expired = "expired" + uuid.uuid4().hex
    Session.objects.create(
        session_key=expired, session_data="e30", expire_date=timezone.now() - timedelta(days=1)
    )

    call_command("clearsessions")

    assert not _row_exists(expired)
    assert _row_exists(live)
    assert harness.get("/me").status_code == 200


def test_login_prunes_expired_links(make_harness: HarnessFactory) -> None:
    """Index rows whose sessions outlived the lifetime go at the next login."""
    SessionLink.objects.create(
        session_key="stale" + uuid.uuid4().hex, client_subject=1, expires_at=time.time() - 1
    )
    harness = make_harness()
    harness.login()
    assert not SessionLink.objects.filter(expires_at__lt=time.time()).exists()


def test_password_login_needs_no_settings(op: StandInOP) -> None:
    """A login that is not Keycloak's (no ID token) is not indexed and reads no settings."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from kc_sso_middleware.django import integration as module

    user = get_user_model().objects.get_or_create(username="local-" + uuid.uuid4().hex)[0]
    request = HttpRequest()
    request.session = SessionStore()
    request.session.create()
    saved = module._current
    module._current = None
    try:
        user_logged_in.send(sender=type(user), request=request, user=user)
        assert module._current is None
    finally:
        module._current = saved
    assert not _linked(request.session.session_key)


# --------------------------------------------------------------------------- configuration


def test_misplaced_middleware_says_so(op: StandInOP, caplog: pytest.LogCaptureFixture) -> None:
    """SSOMiddleware before SessionMiddleware: every request fails, saying where it belongs."""
    configure(make_settings(op), store=MemoryStore())
    order = [SSO_MIDDLEWARE, *[m for m in MIDDLEWARE if m != SSO_MIDDLEWARE]]
    with override_settings(MIDDLEWARE=order):
        app = WSGIHandler()
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=BASE_URL) as client:
            assert client.get("/").status_code == 500
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(e, ConfigurationError) and "after" in str(e) for e in errors)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, [], id="as configured"),
        pytest.param(
            {"MIDDLEWARE": [SSO_MIDDLEWARE, *MIDDLEWARE[:-1]]},
            ["kc_sso_middleware.E002", "kc_sso_middleware.E002"],
            id="before session and auth middleware",
        ),
        pytest.param(
            {"MIDDLEWARE": MIDDLEWARE[:-1]}, ["kc_sso_middleware.W001"], id="not in MIDDLEWARE"
        ),
        pytest.param(
            {"OIDC_STORE_ID_TOKEN": False}, ["kc_sso_middleware.E003"], id="no ID token stored"
        ),
    ],
)
def test_system_checks(overrides: dict[str, Any], expected: list[str]) -> None:
    """manage.py check names a misplaced middleware and a session without ID token."""
    with override_settings(**overrides):
        found = [m.id for m in (*checks.check_middleware(), *checks.check_oidc())]
    assert found == expected


def test_deploy_check_reports_bad_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """check --deploy: KC_SSO_* variables that do not parse are an error naming the variable."""
    monkeypatch.delenv("KC_SSO_ISSUER", raising=False)
    errors = checks.check_variables()
    assert [e.id for e in errors] == ["kc_sso_middleware.E004"]
    assert "KC_SSO_ISSUER" in errors[0].msg
    monkeypatch.setenv("KC_SSO_ISSUER", "https://kc.test/realms/x")
    monkeypatch.setenv("KC_SSO_CLIENT_ID", "app")
    assert checks.check_variables() == []  # SECRET_KEY stands in for KC_SSO_SESSION_SECRET


def test_the_logout_return_is_verified(make_harness: HarnessFactory) -> None:
    """Back from Keycloak with the logout's state: on to the final target; without it, a page."""
    harness = make_harness()
    harness.login()
    answer = harness.get("/logout")
    location = httpx.URL(answer.headers["location"])
    back = httpx.URL(location.params["post_logout_redirect_uri"])
    returned = harness.get(f"{back.path}?state={location.params['state']}")
    assert returned.status_code == 302
    assert returned.headers["location"] == f"{BASE_URL}/"
    assert harness.get(f"{back.path}?state=other").status_code == 400


def test_liveness_ends_a_session_keycloak_forgot(make_harness: HarnessFactory) -> None:
    """The example's backend keeps the refresh token in the session: with
    KC_SSO_LIVENESS_INTERVAL a Django session whose Keycloak session ended silently (idle
    expiry) is refused soon after, in both modes (the check runs beside a request)."""
    harness = make_harness(liveness_interval=0.3)
    claims = harness.login()
    key = harness.session_key
    before = harness.op.introspections
    deadline = time.monotonic() + 10
    while harness.op.introspections == before and time.monotonic() < deadline:
        assert harness.get("/me").status_code == 200  # each due one is checked beside it
        time.sleep(0.05)
    assert harness.op.introspections > before, "no liveness check ran"
    harness.op.forget_session(claims["sid"])
    time.sleep(0.4)  # the next interval
    harness.get("/me")  # starts the check that finds the session gone
    deadline = time.monotonic() + 10
    # 200 until Keycloak's answer, 503 while a second answer confirms it, then 401.
    while harness.get("/me").status_code in (200, 503) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness.get("/me").status_code == 401
    assert not _row_exists(key), "the Django session is still in the database"
