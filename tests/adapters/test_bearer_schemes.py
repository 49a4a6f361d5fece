"""The bearer path through both adapters: every token the app may read is checked.

* A revoked session's access token must not reach the app when it is sent under another scheme
  than ``Bearer`` (``DPoP``, RFC 9449, which Keycloak issues; ``JWT``, a prefix simplejwt
  and flask-jwt-extended may be configured with) or in a form only a hand-written parser
  takes (no scheme; ``Bearer,<token>``): the check must read every token the app may read.
* The API logout's 401 names no error code when the request carried no token at all
  (RFC 6750 §3.1), and ``error="invalid_token"`` when it carried one.
"""

from __future__ import annotations

import time

import pytest

from kc_sso_middleware import Revocation
from kc_sso_middleware.testing import StandInOP
from tests.adapters.test_bearer import _access_token
from tests.conftest import CLIENT_ID, HarnessFactory, direct_grant

#: Authorization forms an app may read a token from that are not ``Bearer <token>``
_FORMS = [
    pytest.param("DPoP {}", id="DPoP"),
    pytest.param("dpop {}", id="DPoP lower-case"),
    pytest.param("JWT {}", id="JWT prefix"),
    pytest.param("{}", id="no scheme"),
    pytest.param("Bearer,{}", id="Bearer,token"),
    pytest.param("Bearer:{}", id="Bearer:token"),
    pytest.param("Basic dXNlcjpwdw==, DPoP {}", id="DPoP in a list"),
]


@pytest.mark.parametrize("form", _FORMS)
def test_a_revoked_token_under_any_scheme_is_refused(
    form: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """Whichever way the header carries it, a token the app may read is checked: the
    app's parser (a DPoP or JWT scheme, ``header.split(" ")[1]``, a bare token) decides
    what it reads, not the middleware's."""
    harness = make_harness()
    sid = f"scheme-{form}"
    header = form.format(_access_token(op, sid=sid, typ="DPoP" if "DPoP" in form else "Bearer"))
    live = harness.client.get("/api", headers={"Authorization": header})
    assert live.status_code == 200  # not revoked: untouched
    assert live.json() == {"authorization": header}
    harness.store.record(
        [Revocation.session(op.issuer, sid, client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )
    refused = harness.client.get("/api", headers={"Authorization": header})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert refused.json()["error"] == "invalid_token"


def test_the_api_logout_challenge_names_no_error_without_a_token(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """RFC 6750 §3.1: a request with no token gets the challenge without an error code;
    one whose bearer token does not authenticate it gets ``invalid_token``.  The body is
    the same either way (it never tells whether the refresh token is valid)."""
    harness = make_harness()
    tokens = direct_grant(op, "challenged")
    form = {"refresh_token": tokens["refresh_token"]}
    bare = harness.client.post("/logout", data=form, headers={"Accept": "application/json"})
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    other = _access_token(op, sid="someone-else")
    wrong = harness.client.post(
        "/logout",
        data=form,
        headers={"Accept": "application/json", "Authorization": f"Bearer {other}"},
    )
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert wrong.text == bare.text
