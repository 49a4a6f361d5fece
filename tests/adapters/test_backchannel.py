"""Back-channel logout receiver: every rule of OIDC Back-Channel Logout 1.0 §2.4-§2.8
(errata set 1) and RFC 8725's algorithm and key rules, through both adapters.

Each case posts one logout token and pins down both the answer (status, error code) and its
effect: after a 200 the session is anonymous on its next request; after a rejection the
session still works.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, RSAKey

from kc_sso_middleware.testing import BACKCHANNEL_EVENT, StandInOP, mint_jwt, mint_logout_token
from tests.conftest import CLIENT_ID, Clock, HarnessFactory

PATH = "/backchannel-logout"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(op: StandInOP, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": op.issuer,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
        "sub": "user-1",
        "sid": "session-1",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    claims.update(overrides)
    return claims


def unsigned(op: StandInOP) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'logout+jwt'})}.{_b64(_claims(op))}."


def hmac_with_public_key(op: StandInOP) -> str:
    """The classic key-confusion attack: HS256 keyed with the RSA public key's PEM.

    Signed by hand: joserfc itself refuses to use a public key as an HMAC secret.
    """
    pem = op.key.as_pem(private=False)
    header = {"alg": "HS256", "typ": "logout+jwt", "kid": op.key.kid}
    signing_input = f"{_b64(header)}.{_b64(_claims(op))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def attacker_key_embedded(op: StandInOP, member: str) -> str:
    attacker = RSAKey.generate_key(2048)
    header: dict[str, Any] = {"alg": "RS256", "typ": "logout+jwt", "kid": op.key.kid}
    if member == "jwk":
        header["jwk"] = attacker.as_dict(private=False)
    elif member == "jku":
        header["jku"] = "http://127.0.0.1:9/evil-jwks"
    elif member == "x5u":
        header["x5u"] = "http://127.0.0.1:9/evil.pem"
    return jws.serialize_compact(
        header, json.dumps(_claims(op)).encode(), attacker, algorithms=["RS256"]
    )


def signed_raw(op: StandInOP, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """RS256 by hand, for headers joserfc refuses to produce (e.g. an unknown crit)."""
    signing_input = f"{_b64(header)}.{_b64(claims)}".encode()
    signature = op.key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64(signature)}"


def signed_bytes(op: StandInOP, header: bytes, payload: bytes) -> str:
    """RS256 over raw header and payload bytes, for texts ``json.dumps`` never writes."""
    signing_input = f"{_b64(header)}.{_b64(payload)}".encode()
    signature = op.key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64(signature)}"


def _header_bytes(op: StandInOP) -> bytes:
    return json.dumps({"alg": "RS256", "typ": "logout+jwt", "kid": op.key.kid}).encode()


def header_not_an_object(header: bytes) -> Callable[[StandInOP], str]:
    return lambda op: f"{_b64(header)}.{_b64(_claims(op))}.{_b64(b'signature')}"


DEEP = b"[" * 3000 + b"]" * 3000  # deeper than Python's recursion limit


def deep_header(op: StandInOP) -> str:
    header = b'{"alg":"RS256","x":' + DEEP + b"}"
    return f"{_b64(header)}.{_b64(_claims(op))}.{_b64(b'signature')}"


def deep_payload(op: StandInOP) -> str:
    return signed_bytes(op, _header_bytes(op), b'{"x":' + DEEP + b"}")


def payload_encoded(encoding: str) -> Callable[[StandInOP], str]:
    """A signed payload in another encoding than UTF-8 (``json.loads`` of bytes guesses it)."""
    return lambda op: signed_bytes(op, _header_bytes(op), json.dumps(_claims(op)).encode(encoding))


def nan_in_header(op: StandInOP) -> str:
    header = _header_bytes(op)[:-1] + b', "x": NaN}'
    return signed_bytes(op, header, json.dumps(_claims(op)).encode())


def unknown_crit(op: StandInOP) -> str:
    header = {
        "alg": "RS256",
        "typ": "logout+jwt",
        "kid": op.key.kid,
        "crit": ["urn:example:ext"],
        "urn:example:ext": 1,
    }
    return signed_raw(op, header, _claims(op))


def tampered(op: StandInOP) -> str:
    head, _payload, signature = op.logout_token(CLIENT_ID).split(".")
    return f"{head}.{_b64(_claims(op, sid='someone-else'))}.{signature}"


def other_key_same_kid(op: StandInOP) -> str:
    attacker = RSAKey.generate_key(2048, parameters={"kid": op.key.kid})
    return mint_logout_token(attacker, issuer=op.issuer, audience=CLIENT_ID)


def unknown_kid(op: StandInOP) -> str:
    attacker = RSAKey.generate_key(2048, parameters={"kid": "not-in-jwks"})
    return mint_logout_token(attacker, issuer=op.issuer, audience=CLIENT_ID)


def es256_token(op: StandInOP) -> str:
    key = ECKey.generate_key("P-256", parameters={"kid": op.key.kid})
    return jws.serialize_compact(
        {"alg": "ES256", "typ": "logout+jwt", "kid": op.key.kid},
        json.dumps(_claims(op)).encode(),
        key,
        algorithms=["ES256"],
    )


def jwe_shaped(op: StandInOP) -> str:
    return f"{_b64({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.aaaa.bbbb.cccc.dddd"


@dataclass
class Case:
    """One back-channel delivery and what it must do."""

    token: Callable[[StandInOP], str]
    status: int
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    revokes: bool | None = None  # default: status == 200

    def __post_init__(self) -> None:
        if self.revokes is None:
            self.revokes = self.status == 200


def token(**kwargs: Any) -> Callable[[StandInOP], str]:
    return lambda op: op.logout_token(CLIENT_ID, **kwargs)


CASES = [
    # ---- accepted shapes
    pytest.param(Case(token(), 200), id="keycloak 25+ shape (typ logout+jwt, sid and sub)"),
    pytest.param(Case(token(header={"typ": "JWT"}), 200), id="keycloak <25 typ JWT"),
    pytest.param(Case(token(drop=["typ"]), 200), id="no typ header"),
    pytest.param(
        Case(token(header={"typ": "application/logout+jwt"}), 200), id="typ application/logout+jwt"
    ),
    pytest.param(Case(token(header={"typ": "Logout+JWT"}), 200), id="typ in other case"),
    pytest.param(Case(token(aud=[CLIENT_ID, CLIENT_ID]), 200), id="aud list of the client alone"),
    pytest.param(Case(token(sub=None), 200), id="sid only"),
    pytest.param(
        Case(token(events={BACKCHANNEL_EVENT: {}, "revoke_offline_access": True}), 200),
        id="keycloak revoke_offline_access sibling in events",
    ),
    pytest.param(Case(token(foo="bar", typ="Logout"), 200), id="unknown claims ignored"),
    pytest.param(
        Case(token(drop=["exp"]), 200, settings={"allow_missing_exp": True}),
        id="no exp, allowed for keycloak before 23.0.4",
    ),
    pytest.param(
        Case(
            lambda op: op.logout_token(CLIENT_ID, exp=time.time() + 100.5, iat=time.time() - 0.5),
            200,
        ),
        id="fractional NumericDates",
    ),
    # ---- header and signature rules (RFC 8725)
    pytest.param(Case(unsigned, 400, "unsupported_alg"), id="alg none"),
    pytest.param(
        Case(hmac_with_public_key, 400, "unsupported_alg"), id="HS256 keyed with the public key"
    ),
    pytest.param(
        Case(token(header={"alg": "RS512"}), 400, "unsupported_alg"), id="alg not on the allow list"
    ),
    pytest.param(
        Case(es256_token, 400, "unknown_kid", settings={"algorithms": ("ES256",)}),
        id="ES256 allowed but no EC key in JWKS",
    ),
    pytest.param(Case(tampered, 400, "bad_signature"), id="payload tampered"),
    pytest.param(
        Case(other_key_same_kid, 400, "bad_signature"), id="signed by another key with the OP's kid"
    ),
    pytest.param(Case(unknown_kid, 400, "unknown_kid"), id="kid not in JWKS"),
    pytest.param(
        Case(lambda op: attacker_key_embedded(op, "jwk"), 400, "bad_signature"),
        id="embedded jwk is not trusted",
    ),
    pytest.param(
        Case(lambda op: attacker_key_embedded(op, "jku"), 400, "bad_signature"),
        id="jku is not followed",
    ),
    pytest.param(
        Case(lambda op: attacker_key_embedded(op, "x5u"), 400, "bad_signature"),
        id="x5u is not followed",
    ),
    pytest.param(Case(unknown_crit, 400, "unsupported_crit"), id="unknown crit"),
    pytest.param(
        Case(token(header={"cty": "JWT"}), 400, "nested_token"), id="cty JWT: a nested token"
    ),
    pytest.param(
        Case(token(header={"cty": "application/JWT"}), 400, "nested_token"),
        id="cty application/jwt in other case",
    ),
    pytest.param(Case(token(header={"cty": "json"}), 200), id="cty other than JWT is no nesting"),
    pytest.param(Case(token(header={"typ": "at+jwt"}), 400, "bad_typ"), id="typ at+jwt"),
    pytest.param(
        Case(token(header={"typ": "secevent+jwt"}), 400, "bad_typ"), id="typ secevent+jwt"
    ),
    pytest.param(
        Case(token(header={"typ": "JWT"}), 400, "bad_typ", settings={"typ_policy": "strict"}),
        id="strict typ refuses JWT",
    ),
    pytest.param(
        Case(token(drop=["typ"]), 400, "bad_typ", settings={"typ_policy": "strict"}),
        id="strict typ refuses no typ",
    ),
    pytest.param(Case(jwe_shaped, 400, "encrypted_token"), id="encrypted token"),
    pytest.param(Case(lambda op: "not-a-jwt", 400, "malformed_token"), id="garbage"),
    pytest.param(Case(lambda op: "a.b.c", 400, "malformed_token"), id="three bad segments"),
    # ---- claims (§2.4, §2.6)
    pytest.param(
        Case(token(iss="http://evil.example/realms/test"), 400, "bad_iss"), id="wrong iss"
    ),
    pytest.param(Case(token(drop=["iss"]), 400, "bad_iss"), id="missing iss"),
    pytest.param(Case(token(aud="other-client"), 400, "bad_aud"), id="wrong aud"),
    pytest.param(Case(token(aud=["a", "b"]), 400, "bad_aud"), id="aud list without client"),
    pytest.param(
        Case(token(aud=[CLIENT_ID, "other"]), 400, "bad_aud"),
        id="aud list with an audience the client does not trust",
    ),
    pytest.param(Case(token(aud=[]), 400, "bad_aud"), id="aud empty list"),
    pytest.param(Case(token(aud=7), 400, "bad_aud"), id="aud not a string"),
    pytest.param(Case(token(drop=["aud"]), 400, "bad_aud"), id="missing aud"),
    pytest.param(Case(token(azp="other"), 400, "bad_azp"), id="azp of another client"),
    pytest.param(Case(token(drop=["iat"]), 400, "missing_iat"), id="missing iat"),
    pytest.param(Case(token(iat="now"), 400, "bad_iat"), id="iat not a number"),
    pytest.param(Case(token(iat=True), 400, "bad_iat"), id="iat boolean"),
    pytest.param(
        Case(token(iat=time.time() + 3600, exp=time.time() + 3700), 400, "iat_in_future"),
        id="iat in the future",
    ),
    pytest.param(
        Case(token(iat=time.time() - 3600, exp=time.time() + 60), 400, "token_too_old"),
        id="iat outside the window",
    ),
    pytest.param(Case(token(drop=["exp"]), 400, "missing_exp"), id="missing exp"),
    pytest.param(
        Case(token(exp=time.time() - 3600, iat=time.time() - 100), 400, "expired"), id="exp passed"
    ),
    pytest.param(Case(token(exp="later"), 400, "bad_exp"), id="exp not a number"),
    pytest.param(Case(token(nbf=time.time() + 3600), 400, "nbf_in_future"), id="nbf in the future"),
    pytest.param(Case(token(drop=["jti"]), 400, "missing_jti"), id="missing jti"),
    pytest.param(Case(token(jti=""), 400, "bad_jti"), id="empty jti"),
    pytest.param(Case(token(jti=42), 400, "bad_jti"), id="jti not a string"),
    pytest.param(Case(token(drop=["events"]), 400, "bad_events"), id="missing events"),
    pytest.param(
        Case(token(events=[BACKCHANNEL_EVENT]), 400, "bad_events"), id="events not an object"
    ),
    pytest.param(
        Case(token(events={"http://other/event": {}}), 400, "bad_events"),
        id="events without the back-channel member",
    ),
    pytest.param(
        Case(token(events={BACKCHANNEL_EVENT: True}), 400, "bad_events"),
        id="back-channel event member not an object",
    ),
    pytest.param(Case(token(sub=None, sid=None), 400, "missing_sub_sid"), id="neither sub nor sid"),
    pytest.param(Case(token(sid=123), 400, "bad_sid"), id="sid not a string"),
    pytest.param(Case(token(sub=""), 400, "bad_sub"), id="empty sub"),
    pytest.param(Case(token(nonce="n-0S6_WzA2Mj"), 400, "nonce_present"), id="nonce present"),
    # ---- found by test_fuzz.py: each was a 500 with a traceback, or a 200
    pytest.param(
        Case(header_not_an_object(b'["alg"]'), 400, "malformed_token"),
        id="header a JSON array (was a 500)",
    ),
    pytest.param(
        Case(header_not_an_object(b'"alg"'), 400, "malformed_token"),
        id="header a JSON string (was a 500)",
    ),
    pytest.param(
        Case(deep_header, 400, "malformed_token"), id="header nested too deep to parse (was a 500)"
    ),
    pytest.param(
        Case(deep_payload, 400, "bad_payload"), id="signed payload nested too deep (was a 500)"
    ),
    pytest.param(
        Case(payload_encoded("utf-16"), 400, "bad_payload"),
        id="signed payload in UTF-16 (was accepted)",
    ),
    pytest.param(
        Case(payload_encoded("utf-8-sig"), 400, "bad_payload"),
        id="signed payload after a byte order mark (was accepted)",
    ),
    pytest.param(
        Case(nan_in_header, 400, "malformed_token"), id="signed header holding NaN (was accepted)"
    ),
    pytest.param(Case(token(sid="\ud800"), 400, "bad_sid"), id="sid a lone surrogate (was a 500)"),
    pytest.param(
        Case(token(sub="\udc00", sid=None), 400, "bad_sub"), id="sub a lone surrogate (was a 500)"
    ),
    pytest.param(
        Case(token(jti="\ud800"), 400, "bad_jti"), id="jti a lone surrogate (was accepted)"
    ),
    pytest.param(
        Case(lambda op: op.logout_token(CLIENT_ID) + " ", 400, "malformed_token"),
        id="space after the signature (was accepted)",
    ),
    pytest.param(
        Case(lambda op: op.logout_token(CLIENT_ID) + "!", 400, "malformed_token"),
        id="stray character after the signature (was accepted)",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_logout_token_rules(case: Case, make_harness: HarnessFactory, op: StandInOP) -> None:
    """Each rule yields its status and error code, and revokes the session only on 200."""
    harness = make_harness(**case.settings)
    cookie = harness.session_cookie(op, sid="session-1", sub="user-1", auth_time=time.time() - 60)
    assert harness.seen_session(cookie), "the session works before the logout"

    response = harness.client.post(PATH, data={"logout_token": case.token(op)})

    assert response.status_code == case.status, response.text
    assert response.headers["cache-control"] == "no-store"
    if case.error is not None:
        body = response.json()
        assert body["error"] == "invalid_request"
        assert body["error_description"].startswith(f"{case.error}:"), body
    assert (harness.seen_session(cookie) == {}) is case.revokes


def test_replayed_jti_is_refused(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A second delivery of the same token (same jti) gets 400 replayed_jti."""
    harness = make_harness()
    logout_token = op.logout_token(CLIENT_ID, sid="replay-session")
    first = harness.client.post(PATH, data={"logout_token": logout_token})
    second = harness.client.post(PATH, data={"logout_token": logout_token})
    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error_description"].startswith("replayed_jti:")


def test_sub_only_revokes_earlier_sessions_of_that_user(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """sub without sid ends every session of the user that began before iat, not later ones."""
    harness = make_harness()
    now = time.time()
    older = harness.session_cookie(op, sid="s-old", sub="user-9", auth_time=now - 100)
    other_user = harness.session_cookie(op, sid="s-x", sub="user-10", auth_time=now - 100)
    logout_token = op.logout_token(CLIENT_ID, sub="user-9", sid=None, iat=int(now - 10))
    response = harness.client.post(PATH, data={"logout_token": logout_token})
    newer = harness.session_cookie(op, sid="s-new", sub="user-9", auth_time=now)
    assert response.status_code == 200
    assert harness.seen_session(older) == {}
    assert harness.seen_session(newer) != {}
    assert harness.seen_session(other_user) != {}


def test_sub_only_revokes_a_session_from_the_same_second(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A session established in the logout token's own second counts as earlier."""
    harness = make_harness()
    now = int(time.time())
    same_second = harness.session_cookie(op, sid="s-same", sub="user-11", auth_time=now)
    logout_token = op.logout_token(CLIENT_ID, sub="user-11", sid=None, iat=now)
    assert harness.client.post(PATH, data={"logout_token": logout_token}).status_code == 200
    assert harness.seen_session(same_second) == {}


def test_unknown_session_is_still_success(make_harness: HarnessFactory, op: StandInOP) -> None:
    """A valid token for a session this app never saw answers 200 (§2.8)."""
    harness = make_harness()
    response = harness.client.post(
        PATH, data={"logout_token": op.logout_token(CLIENT_ID, sid="never-seen")}
    )
    assert response.status_code == 200


def test_unknown_form_fields_are_ignored(make_harness: HarnessFactory, op: StandInOP) -> None:
    """Extra form fields next to logout_token do not matter."""
    harness = make_harness()
    response = harness.client.post(
        PATH, data={"logout_token": op.logout_token(CLIENT_ID), "extra": "1", "state": "x"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "status"),
    [
        pytest.param("GET", 405, id="GET"),
        pytest.param("PUT", 405, id="PUT"),
        pytest.param("DELETE", 405, id="DELETE"),
    ],
)
def test_other_methods_get_405(method: str, status: int, make_harness: HarnessFactory) -> None:
    """Only POST is served on the back-channel path."""
    harness = make_harness()
    response = harness.client.request(method, PATH)
    assert response.status_code == status
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize(
    ("content", "headers", "error"),
    [
        pytest.param(
            b'{"logout_token": "x"}',
            {"Content-Type": "application/json"},
            "bad_content_type",
            id="json body",
        ),
        pytest.param(
            b"",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "missing_logout_token",
            id="empty body",
        ),
        pytest.param(
            b"logout_token=a&logout_token=b",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "missing_logout_token",
            id="two logout_token fields",
        ),
        pytest.param(
            b"other=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "missing_logout_token",
            id="no logout_token field",
        ),
        pytest.param(
            b"logout_token=\xff\xfe",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "bad_body",
            id="not utf-8",
        ),
    ],
)
def test_malformed_requests(
    content: bytes, headers: dict[str, str], error: str, make_harness: HarnessFactory
) -> None:
    """A request that is not a well-formed logout form gets 400 naming the problem."""
    harness = make_harness()
    response = harness.client.post(PATH, content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["error_description"].startswith(f"{error}:")


def test_body_over_the_bound_gets_413(make_harness: HarnessFactory) -> None:
    """A body over KC_SSO_BACKCHANNEL_MAX_BODY is refused with 413."""
    harness = make_harness(backchannel_max_body=1024)
    response = harness.client.post(PATH, data={"logout_token": "x" * 5000})
    assert response.status_code == 413


def _rotate(rotating_op: StandInOP) -> None:
    rotating_op.key = RSAKey.generate_key(2048, parameters={"use": "sig"})
    rotating_op.key.ensure_kid()


@pytest.mark.parametrize("interval", [0, 3600], ids=["no throttle", "hour-long throttle"])
def test_key_rotation_is_picked_up_whatever_the_key_set_age(
    interval: int, make_harness: HarnessFactory
) -> None:
    """A key published since the last fetch works at once: the throttle never depends on age."""
    with StandInOP() as rotating_op:
        rotating_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=rotating_op.issuer, jwks_min_refresh_interval=interval)
        first = harness.client.post(
            PATH, data={"logout_token": rotating_op.logout_token(CLIENT_ID, sid="a")}
        )
        _rotate(rotating_op)
        second = harness.client.post(
            PATH, data={"logout_token": rotating_op.logout_token(CLIENT_ID, sid="b")}
        )
        assert first.status_code == 200
        assert second.status_code == 200, second.text
        assert rotating_op.jwks_requests == 2


@pytest.mark.parametrize("interval", [0, 3600], ids=["no throttle", "hour-long throttle"])
def test_key_rotation_is_picked_up_for_a_token_without_kid(
    interval: int, make_harness: HarnessFactory
) -> None:
    """A token with no kid names no key, so one signed with a key published since the last
    fetch is tried against fresh keys before it is refused: the rotation loses no logout."""
    with StandInOP() as rotating_op:
        rotating_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=rotating_op.issuer, jwks_min_refresh_interval=interval)
        first = harness.client.post(
            PATH,
            data={"logout_token": rotating_op.logout_token(CLIENT_ID, sid="a", drop=["kid"])},
        )
        _rotate(rotating_op)
        second = harness.client.post(
            PATH,
            data={"logout_token": rotating_op.logout_token(CLIENT_ID, sid="b", drop=["kid"])},
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        assert rotating_op.jwks_requests == 2
        assert harness.refused_for_good(harness.session_cookie(rotating_op, sid="b"))


def test_a_token_without_kid_of_a_new_key_type_is_picked_up(
    make_harness: HarnessFactory,
) -> None:
    """No cached key of the token's type (the OP moved from RS256 to ES256) and no kid to
    name the new one: the keys are refetched before the token is refused."""
    with StandInOP() as rotating_op:
        rotating_op.register_client(CLIENT_ID, "s")
        harness = make_harness(
            issuer=rotating_op.issuer,
            algorithms=("RS256", "ES256"),
            jwks_min_refresh_interval=3600,
        )
        first = harness.client.post(
            PATH, data={"logout_token": rotating_op.logout_token(CLIENT_ID, sid="a")}
        )
        ec = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
        ec.ensure_kid()
        rotating_op.extra_jwks.append(ec.as_dict(private=False))
        token = mint_logout_token(
            ec,
            issuer=rotating_op.issuer,
            audience=CLIENT_ID,
            sid="b",
            header={"alg": "ES256"},
            drop=["kid"],
        )
        second = harness.client.post(PATH, data={"logout_token": token})
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        assert rotating_op.jwks_requests == 2
        assert harness.refused_for_good(harness.session_cookie(rotating_op, sid="b"))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"typ": 'x"\\\u00e9\n<script>'}, id="quote, backslash, non-ASCII in typ"),
        pytest.param({"kid": "k" * 6000}, id="a kid of 6,000 characters"),
    ],
)
def test_error_descriptions_keep_to_oauths_characters(
    header: dict[str, Any], make_harness: HarnessFactory, op: StandInOP
) -> None:
    """RFC 6749 §5.2 allows error_description %x20-21 / %x23-5B / %x5D-7E: what an
    unsigned header carries is never echoed as it is, nor at any length."""
    harness = make_harness()
    token = mint_logout_token(op.key, issuer=op.issuer, audience=CLIENT_ID, header=header)
    response = harness.client.post(PATH, data={"logout_token": token})
    assert response.status_code == 400
    description = response.json()["error_description"]
    assert all(c == " " or c == "!" or "#" <= c <= "[" or "]" <= c <= "~" for c in description)
    assert len(description) <= 500
    assert description.split(":")[0] in {"bad_typ", "unknown_kid"}


def test_a_realm_key_of_8192_bits_signs_accepted_tokens(make_harness: HarnessFactory) -> None:
    """Keycloak imports RSA keys of any size from 2048 bits; an RSA-8192 signature (1366
    base64 characters) is beyond joserfc's default bound and must still be read."""
    with StandInOP() as big_op:
        big_op.register_client(CLIENT_ID, "s")
        big_op.key = RSAKey.generate_key(8192, parameters={"use": "sig"})
        big_op.key.ensure_kid()
        harness = make_harness(issuer=big_op.issuer)
        response = harness.client.post(
            PATH, data={"logout_token": big_op.logout_token(CLIENT_ID, sid="big")}
        )
        assert response.status_code == 200, response.text
        assert harness.refused_for_good(harness.session_cookie(big_op, sid="big"))


def test_forged_tokens_without_kid_refetch_at_most_once_per_interval(
    make_harness: HarnessFactory,
) -> None:
    """Kid-less tokens no key verifies are throttled as unknown kids are: one refetch, then
    503 Retry-After (a server's failure, never a false success or a flood of fetches)."""
    with StandInOP() as flooded_op:
        flooded_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=flooded_op.issuer, jwks_min_refresh_interval=3600)
        forger = RSAKey.generate_key(2048)
        answers = []
        for n in range(3):
            token = mint_logout_token(
                forger, issuer=flooded_op.issuer, audience=CLIENT_ID, sid=f"f{n}", drop=["kid"]
            )
            answers.append(harness.client.post(PATH, data={"logout_token": token}))
        assert [a.status_code for a in answers] == [400, 503, 503]
        assert answers[0].json()["error_description"].startswith("bad_signature:")
        assert answers[1].json()["error_description"].startswith("jwks_refetch_throttled:")
        assert flooded_op.jwks_requests == 2  # the first load and one refetch
        assert not harness.refused_for_good(harness.session_cookie(flooded_op, sid="f0"))


def test_unknown_kids_refetch_at_most_once_per_interval(make_harness: HarnessFactory) -> None:
    """A flood of tokens with unknown kids makes one refetch; the rest answer 503 Retry-After."""
    with StandInOP() as flooded_op:
        flooded_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=flooded_op.issuer, jwks_min_refresh_interval=3600)
        forger = RSAKey.generate_key(2048)
        answers = []
        for n in range(5):
            token = mint_logout_token(
                forger, issuer=flooded_op.issuer, audience=CLIENT_ID, header={"kid": f"k{n}"}
            )
            answers.append(harness.client.post(PATH, data={"logout_token": token}))
        assert [a.status_code for a in answers] == [400, 503, 503, 503, 503]
        assert answers[0].json()["error_description"].startswith("unknown_kid:")
        assert int(answers[1].headers["retry-after"]) > 0
        assert answers[1].json()["error_description"].startswith("jwks_refetch_throttled:")
        assert flooded_op.jwks_requests == 2  # the first load and one refetch


def test_failed_refetches_count_toward_the_throttle(make_harness: HarnessFactory) -> None:
    """An OP answering 500 is asked once per interval, and the failure reads as the server's."""
    with StandInOP() as failing_op:
        failing_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=failing_op.issuer, jwks_min_refresh_interval=3600)
        good = harness.client.post(
            PATH, data={"logout_token": failing_op.logout_token(CLIENT_ID, sid="a")}
        )
        assert good.status_code == 200
        failing_op.jwks_status = 500
        forger = RSAKey.generate_key(2048)
        statuses = []
        for n in range(4):
            token = mint_logout_token(
                forger, issuer=failing_op.issuer, audience=CLIENT_ID, header={"kid": f"k{n}"}
            )
            response = harness.client.post(PATH, data={"logout_token": token})
            statuses.append(response.status_code)
            assert "retry-after" in response.headers
        assert statuses == [503, 503, 503, 503]
        assert failing_op.jwks_requests == 2


def _send_at(harness: Any, op: StandInOP, clock: Clock, sid: str) -> httpx.Response:
    """A logout token for ``sid`` issued at the clock's time, posted."""
    token = op.logout_token(CLIENT_ID, sid=sid, now=clock.now)
    response: httpx.Response = harness.client.post(PATH, data={"logout_token": token})
    return response


def _asked_again_past_the_interval(
    op: StandInOP, clock: Clock, send: Callable[[str], httpx.Response], *, requests: int
) -> None:
    """Past the 600 s interval, with the OP answering again: one more fetch, and a 200."""
    clock.now += 601
    op.jwks_status = 200
    assert send("later").status_code == 200
    assert op.jwks_requests == requests


def test_a_failed_refresh_keeps_the_stale_keys_and_waits_the_interval(
    make_harness: HarnessFactory,
) -> None:
    """Past the cache TTL with the OP answering 500, the stale keys keep verifying and the
    OP is asked once per interval, not once per token."""
    clock = Clock()
    with StandInOP() as failing_op:
        failing_op.register_client(CLIENT_ID, "s")
        harness = make_harness(
            issuer=failing_op.issuer,
            clock=clock,
            jwks_cache_ttl=60,
            jwks_min_refresh_interval=600,
        )

        send = partial(_send_at, harness, failing_op, clock)

        assert send("fresh").status_code == 200
        failing_op.jwks_status = 500
        clock.now += 61
        assert [send(f"stale{n}").status_code for n in range(4)] == [200] * 4
        assert failing_op.jwks_requests == 2  # the load and one failed refresh
        _asked_again_past_the_interval(failing_op, clock, send, requests=3)


def test_without_keys_a_failing_op_is_asked_once_per_interval(
    make_harness: HarnessFactory,
) -> None:
    """Before any key set loaded, an OP answering 500 is asked once per interval; every
    token meanwhile is answered 503 Retry-After, the server's failure."""
    clock = Clock()
    with StandInOP() as failing_op:
        failing_op.register_client(CLIENT_ID, "s")
        failing_op.jwks_status = 500
        harness = make_harness(issuer=failing_op.issuer, clock=clock, jwks_min_refresh_interval=600)

        send = partial(_send_at, harness, failing_op, clock)
        answers = [send(f"down{n}") for n in range(4)]
        assert [a.status_code for a in answers] == [503] * 4
        assert all(int(a.headers["retry-after"]) > 0 for a in answers)
        assert failing_op.jwks_requests == 1
        _asked_again_past_the_interval(failing_op, clock, send, requests=2)


def test_unusable_keys_are_left_out_and_the_rest_of_the_set_serves(
    make_harness: HarnessFactory,
) -> None:
    """RFC 7517 §5: a JWK missing a member, of an unknown curve or type, or an RSA key
    under 2048 bits (RFC 7518 §3.3) is left out; the set's other keys still verify, and a
    token signed with a short key is refused as signed by no key of the OP."""
    with pytest.warns(SecurityWarning):
        short = RSAKey.generate_key(1024, parameters={"use": "sig"})
    short.ensure_kid()
    no_exponent = RSAKey.generate_key(2048).as_dict(private=False)
    del no_exponent["e"]
    with StandInOP() as odd_op:
        odd_op.register_client(CLIENT_ID, "s")
        odd_op.extra_jwks = [
            {**no_exponent, "kid": "no-e"},
            {"kty": "EC", "crv": "P-192", "x": "AAAA", "y": "AAAA", "kid": "p192"},
            {"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "bad-base64"},
            {"kty": "PQC", "kid": "future"},
            "not a key",
            short.as_dict(private=False),
        ]
        harness = make_harness(issuer=odd_op.issuer, jwks_min_refresh_interval=3600)
        good = harness.client.post(
            PATH, data={"logout_token": odd_op.logout_token(CLIENT_ID, sid="good")}
        )
        assert good.status_code == 200, good.text
        forged = mint_logout_token(short, issuer=odd_op.issuer, audience=CLIENT_ID, sid="weak")
        refused = harness.client.post(PATH, data={"logout_token": forged})
        assert refused.status_code == 400
        assert refused.json()["error_description"].startswith("unknown_kid:")


def test_a_set_without_a_usable_key_is_the_servers_failure(make_harness: HarnessFactory) -> None:
    """An OP whose only key is too short to trust: nothing verifies, and the answer is the
    server's failure (503), never a 200."""
    with StandInOP() as weak_op:
        weak_op.register_client(CLIENT_ID, "s")
        with pytest.warns(SecurityWarning):
            weak_op.key = RSAKey.generate_key(1024, parameters={"use": "sig"})
        weak_op.key.ensure_kid()
        harness = make_harness(issuer=weak_op.issuer)
        response = harness.client.post(
            PATH, data={"logout_token": weak_op.logout_token(CLIENT_ID, sid="weak")}
        )
        assert response.status_code == 503
        assert "no usable key" in response.json()["error_description"]


def test_concurrent_unknown_kids_share_one_refetch(make_harness: HarnessFactory) -> None:
    """Forty concurrent tokens with an unknown kid make a single JWKS fetch (single flight)."""
    from concurrent.futures import ThreadPoolExecutor

    with StandInOP() as slow_op:
        slow_op.register_client(CLIENT_ID, "s")
        harness = make_harness(issuer=slow_op.issuer, jwks_min_refresh_interval=0)
        assert (
            harness.client.post(
                PATH, data={"logout_token": slow_op.logout_token(CLIENT_ID, sid="warm")}
            ).status_code
            == 200
        )
        _rotate(slow_op)
        slow_op.jwks_delay = 0.5
        before = slow_op.jwks_requests
        tokens = [slow_op.logout_token(CLIENT_ID, sid=f"c{n}") for n in range(40)]
        with ThreadPoolExecutor(40) as pool:
            statuses = list(
                pool.map(
                    lambda t: harness.client.post(PATH, data={"logout_token": t}).status_code,
                    tokens,
                )
            )
        assert statuses == [200] * 40
        assert slow_op.jwks_requests - before == 1


# ------------------------------------------------------------ admin URL and front-channel
# Rules of the other two logout receivers that test_fuzz.py found broken.


def admin_token(op: StandInOP, header: dict[str, Any] | None = None, **claims: Any) -> str:
    payload = {
        "id": str(uuid.uuid4()),
        "expiration": int(time.time()) + 30,
        "resource": CLIENT_ID,
        "action": "LOGOUT",
        "notBefore": 0,
        "keycloakSessionIds": ["adm-other"],
    }
    payload.update(claims)
    return mint_jwt(op.key, payload, {"typ": "JWT", **(header or {})})


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        pytest.param(
            {"keycloakSessionIds": {}}, "bad_session_ids", id="session ids {} (was everybody)"
        ),
        pytest.param(
            {"keycloakSessionIds": ""}, "bad_session_ids", id="session ids '' (was everybody)"
        ),
        pytest.param(
            {"keycloakSessionIds": False}, "bad_session_ids", id="session ids false (was everybody)"
        ),
        pytest.param(
            {"keycloakSessionIds": ["\ud800"]},
            "bad_session_ids",
            id="session id a lone surrogate (was a 500)",
        ),
        pytest.param({"id": "\ud800"}, "missing_id", id="id a lone surrogate (was accepted)"),
        pytest.param(
            {"typ": "Bearer", "iss": "http://op/realms/demo", "sub": "u", "azp": CLIENT_ID},
            "not_admin_action",
            id="an access token given admin claims by a mapper (was accepted)",
        ),
        pytest.param({"exp": 2_000_000_000}, "not_admin_action", id="a JWT's exp"),
    ],
)
def test_admin_token_rules(
    claims: dict[str, Any], error: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A malformed k_logout action is a 400 naming the rule, and logs nobody out."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="adm-mine", auth_time=time.time() - 60)
    response = harness.client.post(
        "/k_logout", content=admin_token(op, **claims), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error_description"].startswith(f"{error}:")
    assert harness.seen_session(cookie) != {}


def test_a_nested_admin_token_is_refused(make_harness: HarnessFactory, op: StandInOP) -> None:
    """An admin action whose header says ``cty: JWT`` carries another token as its payload
    (RFC 7519 §5.2): 400, and nobody is logged out by what it seems to say."""
    harness = make_harness()
    cookie = harness.session_cookie(op, sid="adm-nested", auth_time=time.time() - 60)
    nested = admin_token(op, {"cty": "JWT"}, keycloakSessionIds=["adm-nested"])
    response = harness.client.post(
        "/k_logout", content=nested, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error_description"].startswith("nested_token:")
    assert harness.seen_session(cookie) != {}


@pytest.mark.parametrize(
    ("query", "error"),
    [
        pytest.param("&".join(["a=1"] * 21), "bad_request", id="21 fields (was a 500)"),
        pytest.param(
            "iss=x&sid=y&" + "&".join(["a=1"] * 200), "bad_request", id="220 fields (was a 500)"
        ),
        # Two values: which one counts would be a guess (was: the first).
        pytest.param("iss={iss}&iss={iss}&sid=fc-mine", "bad_request", id="iss twice"),
        pytest.param("iss={iss}&sid=fc-mine&sid=fc-mine", "bad_request", id="sid twice"),
        pytest.param("iss={iss}&sid=&sid=fc-mine", "bad_request", id="blank sid, then sid"),
        pytest.param("iss={iss}&sid=", "bad_sid", id="blank sid (was: no sid at all)"),
        pytest.param("iss=&sid=", "bad_iss", id="blank iss and sid (was: neither)"),
    ],
)
def test_frontchannel_query_rules(
    query: str, error: str, make_harness: HarnessFactory, op: StandInOP
) -> None:
    """A front-channel query the page refuses is a 400 naming the rule, never a 500."""
    harness = make_harness(frontchannel_path="/frontchannel-logout")
    cookie = harness.session_cookie(op, sid="fc-mine")
    query = query.replace("{iss}", quote(op.issuer, safe=""))
    response = harness.get(f"/frontchannel-logout?{query}", cookie)
    assert response.status_code == 400, response.text
    assert response.json()["error_description"].startswith(f"{error}:")
    assert harness.seen_session(cookie) != {}


def test_a_blank_duplicate_logout_token_is_refused(
    make_harness: HarnessFactory, op: StandInOP
) -> None:
    """``logout_token=&logout_token=T`` carries two fields: not exactly one, so 400."""
    harness = make_harness()
    token = op.logout_token(CLIENT_ID, sid="blank-dup")
    response = harness.client.post(
        PATH,
        content=f"logout_token=&logout_token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json()["error_description"].startswith("missing_logout_token:")
