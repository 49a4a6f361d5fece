"""Bearer access tokens are checked against the same revocations, through both adapters.

The middleware only refuses: a revoked token gets 401 with ``WWW-Authenticate: Bearer
error="invalid_token"``; everything else (valid, opaque, another issuer, malformed) reaches
the app untouched, for the app's own validation to decide.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kc_sso_middleware import Revocation
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP, mint_jwt
from tests.conftest import (
    CLIENT_ID,
    Harness,
    HarnessFactory,
    admin_token,
    make_settings,
    post_admin,
)

BACKCHANNEL = "/backchannel-logout"


def _access_token(op: StandInOP, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": op.issuer,
        "aud": "account",
        "azp": "spa",
        "sub": "user-1",
        "sid": "bearer-sid",
        "iat": now,
        "exp": now + 300,
        "typ": "Bearer",
        **claims,
    }
    return mint_jwt(op.key, {k: v for k, v in payload.items() if v is not None}, {"typ": "JWT"})


def _api(harness: Any, token: str, scheme: str = "Bearer") -> Any:
    return harness.client.get("/api", headers={"Authorization": f"{scheme} {token}"})


def _assert_refused(response: Any) -> None:
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert response.json()["error"] == "invalid_token"


def test_a_live_token_reaches_the_app_untouched(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Nothing revoked: the app gets the request and its Authorization header as sent."""
    harness = make_harness()
    token = _access_token(op)
    response = _api(harness, token)
    assert response.status_code == 200
    assert response.json() == {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("separator", ["\t", " \t", "\t ", "   "], ids=repr)
def test_a_revoked_token_after_any_whitespace_is_refused(
    separator: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """``Bearer<TAB><token>``: Authlib, DRF and simplejwt split the header at any
    whitespace and use the token, so the middleware reads it so too."""
    harness = make_harness()
    token = _access_token(op, sid="tabbed")
    header = f"Bearer{separator}{token}"
    assert header.split(None, 1)[1] == token  # what those parsers hand the app
    logout = op.logout_token(CLIENT_ID, sid="tabbed")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": logout}).status_code == 200
    _assert_refused(harness.client.get("/api", headers={"Authorization": header}))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_a_back_channel_logout_refuses_the_sessions_tokens(
    scheme: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """After a back-channel logout of its sid, the access token gets 401 invalid_token."""
    harness = make_harness()
    token = _access_token(op, sid=f"bcl-{scheme}")
    assert _api(harness, token, scheme).status_code == 200
    logout = op.logout_token(CLIENT_ID, sid=f"bcl-{scheme}")
    assert harness.client.post(BACKCHANNEL, data={"logout_token": logout}).status_code == 200
    _assert_refused(_api(harness, token, scheme))


def test_user_wide_revocation_refuses_tokens_issued_before(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A sub-only logout refuses the user's tokens issued up to it, not later ones."""
    harness = make_harness()
    now = time.time()
    old = _access_token(op, sub="carol", sid=None, iat=int(now) - 60)
    later = _access_token(op, sub="carol", sid=None, iat=int(now) + 5)
    record = Revocation.user(op.issuer, "carol", not_before=now, expires_at=now + 3600)
    assert harness.store.record([record])
    _assert_refused(_api(harness, old))
    assert _api(harness, later).status_code == 200


def test_sign_out_all_refuses_earlier_tokens(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Keycloak's "sign out all" reaching this client refuses every earlier token."""
    harness = make_harness()
    token = _access_token(op, iat=int(time.time()) - 30)
    assert post_admin(harness, "/k_logout", admin_token(op, "LOGOUT")).status_code == 200
    _assert_refused(_api(harness, token))


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer opaque-token-value", id="opaque token"),
        pytest.param("Bearer a.b", id="two segments"),
        pytest.param("Bearer !!!.@@@.###", id="not base64"),
        pytest.param("Basic dXNlcjpwYXNz", id="another scheme"),
        pytest.param("Bearer", id="no credentials"),
        # Every JWT of the header is read, whatever its scheme: these hold none of ours.
        pytest.param("DPoP opaque-value", id="opaque DPoP"),
        pytest.param('Digest username="a.b", uri="/x.y.z"', id="Digest with dots"),
    ],
)
def test_what_is_not_ours_passes_untouched(
    authorization: str, make_harness: HarnessFactory
) -> None:
    """Opaque or malformed credentials are the app's to judge: untouched, never 401 here."""
    harness = make_harness()
    response = harness.client.get("/api", headers={"Authorization": authorization})
    assert response.status_code == 200
    assert response.json() == {"authorization": authorization}


def test_a_token_of_another_issuer_is_not_matched(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The same sid from another issuer is another session."""
    harness = make_harness()
    token = _access_token(op, iss="http://elsewhere.example/realms/x", sid="shared-sid")
    harness.store.record(
        [
            Revocation.session(
                op.issuer, "shared-sid", client_id=CLIENT_ID, expires_at=time.time() + 60
            )
        ]
    )
    assert _api(harness, token).status_code == 200


def test_a_token_is_ended_by_its_own_clients_logout_and_by_this_apps(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """An API of client ``app`` accepting a token issued to ``spa`` (its azp) refuses it once
    Keycloak logged the session out of ``spa`` (the store holds spa's sid entry, written by
    an app of spa sharing it) or out of ``app`` itself; a logout of a third client's part
    of the same Keycloak session leaves it alone.  The token client's not-before ends it
    too, as the app's own does."""
    store = MemoryStore()
    harness = make_harness(store=store)
    api = make_harness(store=store, client_id="spa")  # an app of the token's client
    expires = time.time() + 60
    tokens = {sid: _access_token(op, sid=sid, azp="spa") for sid in ("s-spa", "s-app", "s-3rd")}
    for sid, client in (("s-spa", "spa"), ("s-app", CLIENT_ID), ("s-3rd", "third")):
        store.record([Revocation.session(op.issuer, sid, client_id=client, expires_at=expires)])
    _assert_refused(_api(harness, tokens["s-spa"]))
    _assert_refused(_api(harness, tokens["s-app"]))
    assert _api(harness, tokens["s-3rd"]).status_code == 200
    _assert_refused(_api(api, tokens["s-spa"]))
    assert _api(api, tokens["s-app"]).status_code == 200  # app's logout is not spa's
    now = time.time()
    fresh = _access_token(op, sid="s-wide", azp="spa", iat=int(now) - 30)
    assert _api(harness, fresh).status_code == 200
    store.record([Revocation.all_sessions(op.issuer, "spa", not_before=now, expires_at=expires)])
    _assert_refused(_api(harness, fresh))


def test_bearer_check_can_be_turned_off(make_harness: HarnessFactory, op: StandInOP) -> None:
    """KC_SSO_BEARER=off leaves bearer tokens entirely to the app."""
    harness = make_harness(bearer="off")
    token = _access_token(op, sid="off-sid")
    harness.store.record(
        [Revocation.session(op.issuer, "off-sid", client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    assert _api(harness, token).status_code == 200


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_revoked_token_in_any_authorization_header_is_refused(where: str, op: StandInOP) -> None:
    """With two Authorization headers (ASGI only: WSGI holds one) Starlette reads the
    first, Django's ASGI handler joins them with ",": the check reads both."""
    harness = Harness("asgi", make_settings(op))
    try:
        revoked = _access_token(op, sid=f"{where}-header")
        other = _access_token(op, sid="live")
        harness.store.record(
            [
                Revocation.session(
                    op.issuer, f"{where}-header", client_id=CLIENT_ID, expires_at=time.time() + 60
                )
            ]
        )
        pair = [f"Bearer {revoked}", f"Bearer {other}"]
        if where == "second":
            pair.reverse()
        response = harness.client.get("/api", headers=[("Authorization", v) for v in pair])
        _assert_refused(response)
    finally:
        harness.close()


@pytest.mark.parametrize(
    "form",
    ["Basic dXNlcjpwdw==, Bearer {}", "Bearer {}, Basic dXNlcjpwdw==", "Bearer x.y.z,Bearer {}"],
)
def test_a_revoked_token_in_a_credential_list_is_refused(
    form: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A comma-separated list of credentials (flask-jwt-extended picks the Bearer one out
    of it): a revoked token anywhere in it is refused."""
    harness = make_harness()
    token = _access_token(op, sid="listed")
    header = form.format(token)
    assert harness.client.get("/api", headers={"Authorization": header}).status_code == 200
    harness.store.record(
        [Revocation.session(op.issuer, "listed", client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    _assert_refused(harness.client.get("/api", headers={"Authorization": header}))
