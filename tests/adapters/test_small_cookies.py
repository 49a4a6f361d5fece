"""A cookie session that keeps only the ID token's few claims still gets every revocation.

Keycloak's tokens push a cookie session past the browser's 4 KB limit; an app can keep
``{"sid", "sub", "iat", "jti"}`` instead of the raw ID token.  What it loses: the logout
redirect has no ``id_token_hint``, so Keycloak asks the user to confirm.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from kc_sso_middleware import Revocation
from kc_sso_middleware.testing import StandInOP, make_session_cookie
from tests.conftest import (
    CLIENT_ID,
    SESSION_SECRET,
    Harness,
    HarnessFactory,
    admin_token,
    post_admin,
)


def _small(harness: Harness, sid: str, sub: str = "small-user", iat: float | None = None) -> str:
    claims = {"sid": sid, "sub": sub, "iat": int(iat or time.time()), "jti": f"jti-{sid}"}
    return make_session_cookie(SESSION_SECRET, {"user": claims}, format=harness.format)


@pytest.mark.parametrize("way", ["back-channel", "user", "sign out all", "local logout"])
def test_every_revocation_reaches_a_small_cookie(
    way: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """sid, sub, not-before and the local logout (by jti) all apply to claims-only sessions."""
    harness = make_harness()
    cookie = _small(harness, sid=f"small-{way}", iat=time.time() - 10)
    assert len(cookie) < 400
    assert harness.seen_session(cookie) != {}
    if way == "back-channel":
        token = op.logout_token(CLIENT_ID, sid=f"small-{way}")
        assert (
            harness.client.post("/backchannel-logout", data={"logout_token": token}).status_code
            == 200
        )
    elif way == "user":
        now = time.time()
        harness.store.record(
            [Revocation.user(op.issuer, "small-user", not_before=now, expires_at=now + 60)]
        )
    elif way == "sign out all":
        assert post_admin(harness, "/k_logout", admin_token(op, "LOGOUT")).status_code == 200
    else:
        response = harness.client.get("/logout", headers={"Cookie": f"session={cookie}"})
        location = parse_qs(urlsplit(response.headers["location"]).query)
        assert "id_token_hint" not in location  # what a small cookie gives up
    assert harness.seen_session(cookie) == {}


def test_a_new_small_session_of_the_same_keycloak_session_survives_a_local_logout(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """The local logout revokes this app session's jti, not the sid."""
    harness = make_harness()
    old = _small(harness, sid="kept")
    harness.client.get("/logout", headers={"Cookie": f"session={old}"})
    claims = {"sid": "kept", "sub": "small-user", "iat": int(time.time()), "jti": "jti-new"}
    new = make_session_cookie(SESSION_SECRET, {"user": claims}, format=harness.format)
    assert harness.seen_session(old) == {}
    assert harness.seen_session(new) != {}
