"""The examples' own bearer validation (``examples/_bearer.py``): only access tokens.

The middleware only ever refuses; accepting a token is the app's job, and the examples
show it done right: an ID token or a refresh token of the same realm is no access token
(RFC 8725 §3.11), and an API naming its audience refuses tokens meant for others.
"""

from __future__ import annotations

from examples._bearer import BearerValidator
from kc_sso_middleware.testing import StandInOP
from tests.conftest import CLIENT_ID, direct_grant


def _status(validator: BearerValidator, token: str) -> int:
    return validator.answer(f"Bearer {token}").status


def test_an_access_token_is_accepted_and_an_id_token_is_not(op: StandInOP) -> None:
    validator = BearerValidator(op.issuer)
    tokens = direct_grant(op, "tia")
    assert _status(validator, tokens["access_token"]) == 200
    answer = validator.answer(f"Bearer {tokens['id_token']}")
    assert answer.status == 401
    assert answer.body["error"] == "invalid_token"
    assert "not an access token" in answer.body["error_description"]
    validator.close()


def test_with_audiences_only_tokens_for_them_are_accepted(op: StandInOP) -> None:
    tokens = direct_grant(op, "ada")
    mine = BearerValidator(op.issuer, audiences=[CLIENT_ID])
    theirs = BearerValidator(op.issuer, audiences=["another-api"])
    assert _status(mine, tokens["access_token"]) == 200
    answer = theirs.answer(f"Bearer {tokens['access_token']}")
    assert answer.status == 401
    assert "not meant for this API" in answer.body["error_description"]
    mine.close()
    theirs.close()
