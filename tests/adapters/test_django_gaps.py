# ruff: noqa: F811 - the fixtures of test_django are imported by name
"""The Django integration where mozilla-django-oidc and Django leave gaps: a login whose
ID token was flushed, a user cached for async views, checks for what silently breaks
logouts, client-scoped purges (run beside tests/adapters/test_django.py).

Same project and harness as ``test_django``: its Django settings, URL patterns and fixtures.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, JsonResponse
from django.test import override_settings
from django.urls import path

from tests.adapters import test_django
from tests.adapters.test_django import (  # noqa: F401 - fixtures, used by name
    BASE_URL,
    CLIENT_ID,
    MIDDLEWARE,
    SSO_MIDDLEWARE,
    DjangoHarness,
    HarnessFactory,
    _database,
    _op_endpoints,
    _row_exists,
    make_harness,
)


async def async_show(request: HttpRequest) -> JsonResponse:
    """An async view reading the user the way Django's docs say async code reads it."""
    user = await request.auser()
    return JsonResponse({"user": user.username if user.is_authenticated else None})


urlpatterns = [*test_django.urlpatterns, path("async", async_show)]


class ReadsUserFirst:
    """A middleware between AuthenticationMiddleware and SSOMiddleware that looks at the
    user (an audit log, a per-user rate limit): ``await request.auser()`` under ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        request.user.is_authenticated  # noqa: B018 - evaluates the lazy user
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        await request.auser()
        return await self.get_response(request)


def _login_without_checks(harness: DjangoHarness) -> None:
    """mozilla-django-oidc's code flow, as DjangoHarness.login, without asserting /me."""
    start = harness.get("/login")
    assert start.status_code == 302, start.text
    authorized = harness.op_browser.get(start.headers["location"])
    assert authorized.status_code == 302, authorized.text
    callback = authorized.headers["location"]
    assert callback.startswith(f"{BASE_URL}/oidc/callback/")
    landed = harness.get(callback)
    assert landed.status_code == 302, landed.text


def test_a_second_users_login_over_a_live_session_is_still_ended(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's Django session outlives her Keycloak session (an idle expiry: no
    back-channel); bob then logs in through mozilla-django-oidc in the same browser.
    Django's login() flushes the session it finds another user in, *after*
    mozilla-django-oidc stored bob's ID token in it: bob's Django session then holds no
    Keycloak login at all, and no revocation of bob's Keycloak session ever ends it."""
    harness = make_harness()
    alice = harness.login()
    harness.op.forget_session(alice["sid"])  # Keycloak forgets alice silently
    monkeypatch.setattr(harness.op, "username", "bob")  # the OP is shared by the session
    harness.op_browser.cookies.clear()  # bob logs in at Keycloak on the same computer
    _login_without_checks(harness)
    key = harness.session_key

    # Keycloak ends all of bob's sessions (admin "sign out", or bob's logout elsewhere).
    assert harness.backchannel(sid=None, sub="sub-bob").status_code == 200

    assert harness.get("/").json()["user"] is None, "bob's revoked session still reaches views"
    assert not _row_exists(key)


def test_after_a_second_users_login_the_next_login_works(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same start as above; bob logs in once more: his session keeps its ID token, and
    single sign-out holds for it (the fix above must not lock him out)."""
    harness = make_harness()
    alice = harness.login()
    harness.op.forget_session(alice["sid"])
    monkeypatch.setattr(harness.op, "username", "bob")
    harness.op_browser.cookies.clear()
    _login_without_checks(harness)
    harness.get("/")

    bob = harness.login()
    assert bob["sub"] == "sub-bob"
    key = harness.session_key
    assert harness.backchannel(sid=bob["sid"], sub="sub-bob").status_code == 200
    assert harness.get("/").json()["user"] is None
    assert not _row_exists(key)


def test_a_refused_session_leaves_no_user_for_async_views(make_harness: HarnessFactory) -> None:
    """A middleware before SSOMiddleware awaited request.auser(): Django caches the user
    on the request (_acached_user).  django.contrib.auth.logout() replaces request.user
    but not that cache, so an async view's ``await request.auser()`` still returns the
    revoked session's user."""
    middleware = [*MIDDLEWARE[:-1], f"{__name__}.ReadsUserFirst", SSO_MIDDLEWARE]
    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF=__name__):
        harness = make_harness()
        claims = harness.login()
        assert harness.get("/async").json() == {"user": "sub-alice"}
        harness.revoke_in_store(claims)

        assert harness.get("/async").json() == {"user": None}, "the revoked user reached the view"


def test_check_names_oidc_backend_without_id_token_when_the_app_is_not_installed() -> None:
    """mozilla-django-oidc has no models, templates or AppConfig: projects use its backend
    without listing it in INSTALLED_APPS.  Its sessions then hold no ID token just the
    same, and manage.py check must say so (E003)."""
    from django.conf import settings as django_settings

    from kc_sso_middleware.django import checks

    apps_without = [a for a in django_settings.INSTALLED_APPS if a != "mozilla_django_oidc"]
    with override_settings(INSTALLED_APPS=apps_without, OIDC_STORE_ID_TOKEN=False):
        assert django_settings.AUTHENTICATION_BACKENDS == [
            "examples.django_app.auth.KeycloakBackend"
        ]
        found = [m.id for m in checks.check_oidc()]
    assert found == ["kc_sso_middleware.E003"]


@pytest.fixture
def other_client(op: Any) -> str:
    """A second client at the stand-in OP: the one mozilla-django-oidc logs in with."""
    op.register_client("other-app", "other-secret")
    return "other-app"


def test_mozilla_client_other_than_kc_sso_client_is_flagged(
    make_harness: HarnessFactory, other_client: str
) -> None:
    """OIDC_RP_CLIENT_ID is not KC_SSO_CLIENT_ID: logins work, but every back-channel
    logout Keycloak sends for the login's client is refused (its aud is the other client),
    so no session is ever ended, silently.  manage.py check must name it, as the other
    adapters refuse to start when the session cookie name differs."""
    from kc_sso_middleware.django import checks

    with override_settings(OIDC_RP_CLIENT_ID=other_client, OIDC_RP_CLIENT_SECRET="other-secret"):
        harness = make_harness()  # KC_SSO_CLIENT_ID is CLIENT_ID ("app")
        claims = harness.login()
        token = harness.op.logout_token(other_client, sid=claims["sid"], sub=claims["sub"])
        refused = harness.post("/backchannel-logout", data={"logout_token": token})
        assert refused.status_code == 400  # Keycloak's logout of this login: refused
        assert harness.get("/me").status_code == 200  # and the session lives on

        found = [m.id for m in (*checks.check_middleware(), *checks.check_oidc())]
    assert "kc_sso_middleware.E005" in found


def test_a_client_scoped_user_logout_purges_no_other_clients_sessions(
    make_harness: HarnessFactory,
) -> None:
    """A logout token without sid ends the user's sessions *in this client only* (the
    store's entry is scoped to KC_SSO_CLIENT_ID; another client's check does not refuse
    by it).  Two Django apps of the realm sharing one database (one SessionLink table and
    one django_session table) must keep that: this app's purge may not delete the other
    client's session of the same user."""
    import time

    from django.contrib.sessions.backends.db import SessionStore

    from kc_sso_middleware.django.models import SessionLink
    from kc_sso_middleware.stores.model import RevocationKind, subject_of

    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    issuer = harness.op.issuer
    other = SessionStore()
    other["oidc_id_token"] = "the other app's token"
    other.create()
    SessionLink.objects.create(
        session_key=other.session_key,
        sid="another-keycloak-session",
        sub=claims["sub"],
        session_subject=subject_of(RevocationKind.SESSION, issuer, "another-keycloak-session"),
        instance_subject=None,
        user_subject=subject_of(RevocationKind.USER, issuer, claims["sub"]),
        client_subject=subject_of(RevocationKind.ALL, issuer, "other-app"),
        issued_at=claims["iat"] - 10,
        expires_at=time.time() + 3600,
    )

    assert harness.backchannel(sid=None, sub=claims["sub"]).status_code == 200

    assert not _row_exists(key)  # this client's session of the user: deleted
    assert _row_exists(other.session_key), "the other client's session was deleted"


def test_a_sid_logout_purges_this_clients_sessions_of_the_sid_only(
    make_harness: HarnessFactory,
) -> None:
    """A logout token names a sid for this client alone: another client may keep its part
    of the Keycloak session (Keycloak's consent revocation logs the user out of one
    client).  Two Django apps sharing one database: this app's purge deletes its own
    session of the sid, also one an earlier version linked (by the realm-wide subject), and
    leaves the other client's sessions of that sid, however they were linked."""
    import time

    from django.contrib.sessions.backends.db import SessionStore

    from kc_sso_middleware.django.models import SessionLink
    from kc_sso_middleware.stores.model import RevocationKind, client_scope, subject_of

    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    issuer, sid, sub = harness.op.issuer, claims["sid"], claims["sub"]

    def linked(client: str, session_subject: int) -> str:
        session = SessionStore()
        session["oidc_id_token"] = f"a token of {client}"
        session.create()
        SessionLink.objects.create(
            session_key=session.session_key,
            sid=sid,
            sub=sub,
            session_subject=session_subject,
            instance_subject=None,
            user_subject=subject_of(RevocationKind.USER, issuer, sub),
            client_subject=subject_of(RevocationKind.ALL, issuer, client),
            issued_at=claims["iat"],
            expires_at=time.time() + 3600,
        )
        assert session.session_key is not None
        return session.session_key

    realm_wide = subject_of(RevocationKind.SESSION, issuer, sid)
    other_scoped = subject_of(RevocationKind.SESSION, client_scope(issuer, "other-app"), sid)
    others = [linked("other-app", other_scoped), linked("other-app", realm_wide)]
    earlier = linked(CLIENT_ID, realm_wide)

    assert harness.backchannel(sid=sid, sub=sub).status_code == 200

    assert not _row_exists(key)  # this client's session of the sid: deleted
    assert not _row_exists(earlier), "a session linked by an earlier version outlived its sid"
    for other in others:
        assert _row_exists(other), "the other client's session of the sid was deleted"


def test_without_oidc_store_id_token_no_session_outlives_a_revocation(
    make_harness: HarnessFactory,
) -> None:
    """OIDC_STORE_ID_TOKEN = False (E003 at manage.py check, but gunicorn and uvicorn run
    no checks): mozilla-django-oidc's sessions hold no Keycloak login, and a logout at
    Keycloak must still not leave one reaching views."""
    with override_settings(OIDC_STORE_ID_TOKEN=False):
        harness = make_harness()
        _login_without_checks(harness)
        assert harness.backchannel(sid=None, sub="sub-alice").status_code == 200
        assert harness.get("/").json()["user"] is None


@pytest.mark.parametrize("dated", [False, True], ids=["no iat or auth_time", "with iat"])
def test_a_login_of_unknown_age_is_ended(dated: bool, make_harness: HarnessFactory) -> None:
    """Session data holding only claims without iat or auth_time: nothing bounds such a
    login by KC_SSO_MAX_SESSION_LIFETIME (Django's session API has no signature time to
    fall back on), so after its revocation expired it would be accepted again.  It is
    ended at once, as a malformed login; the same claims with iat are kept."""
    from django.contrib.sessions.backends.db import SessionStore

    harness = make_harness()
    claims = harness.login()
    key = harness.session_key
    session = SessionStore(session_key=key)
    del session["oidc_id_token"]
    session["user"] = {"sid": claims["sid"], "sub": claims["sub"]}
    if dated:
        session["user"]["iat"] = claims["iat"]
    session.save()

    answer = harness.get("/").json()

    assert (answer["user"] is not None) is dated
    assert _row_exists(key) is dated
