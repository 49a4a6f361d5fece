"""Logout token validation: OIDC Back-Channel Logout 1.0 (errata set 1) §2.4-§2.6, RFC 8725.

Pure functions over bytes, keys and an injected ``now``; no I/O.  Each failure raises
:class:`~kc_sso_middleware.errors.LogoutTokenError` whose ``code`` names the rule.

Signature rules (RFC 8725 §3.1-3.2, §3.10): the algorithm must be on the configured
allow-list of asymmetric algorithms (never ``none``, never HMAC); the key comes only from the
OP's JWKS, matched by ``kid`` and by key type; keys named inside the token (``jwk``, ``jku``,
``x5u``, ``x5c``) are ignored; a ``crit`` header is rejected since we implement no extension;
a ``cty`` of ``JWT`` (a nested token, RFC 7519 §5.2) is rejected, since its claims would be
those of a token inside that we never verified (RFC 8725 §2.8: one token, one meaning).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey
from joserfc.jws import CompactSignature

from .errors import LogoutTokenError
from .settings import Settings

__all__ = [
    "ACCESS_TYPES",
    "BACKCHANNEL_EVENT",
    "AdminAction",
    "LogoutClaims",
    "TokenPolicy",
    "candidate_keys",
    "check_admin_claims",
    "check_header",
    "check_logout_claims",
    "numeric_date",
    "parse_compact",
    "strict_json",
    "verify_signature",
]

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
LEGACY_TYPES = frozenset({"jwt", "application/jwt"})
#: RFC 9068 §2.1: an explicitly typed JWT access token
ACCESS_TYPES = frozenset({"at+jwt", "application/at+jwt"})
TokenKind = Literal["logout", "admin", "access"]

#: The last second of the year 9999 (RFC 7519 NumericDates beyond it are not plausible times,
#: and some would overflow on their way into a store's TTL).
MAX_NUMERIC_DATE = 253_402_300_799

_KEY_TYPES: dict[str, type[Key]] = {"RS": RSAKey, "PS": RSAKey, "ES": ECKey, "Ed": OKPKey}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """The validation parameters, taken from Settings once."""

    issuer: str
    client_id: str
    algorithms: frozenset[str]
    clock_skew: float
    max_age: float
    allow_missing_exp: bool
    strict_typ: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenPolicy:
        return cls(
            issuer=settings.issuer,
            client_id=settings.client_id,
            algorithms=frozenset(settings.algorithms),
            clock_skew=settings.clock_skew,
            max_age=settings.logout_token_max_age,
            allow_missing_exp=settings.allow_missing_exp,
            strict_typ=settings.typ_policy == "strict",
        )


@dataclass(frozen=True, slots=True)
class LogoutClaims:
    """A validated back-channel logout token, reduced to what the middleware acts on."""

    jti: str
    iat: float
    #: until when the ``jti`` must be remembered (the token could be accepted until then)
    expires_at: float
    sub: str | None
    sid: str | None


@dataclass(frozen=True, slots=True)
class AdminAction:
    """A validated legacy admin-URL action (``k_logout``, ``k_push_not_before``, …)."""

    id: str
    action: str
    expiration: float
    not_before: float
    session_ids: tuple[str, ...]


# Extraction only parses; rules are checked by us.  The larger header bound lets a token
# carrying e.g. an x5c chain fail on its signature rather than on joserfc's 512-byte default.
_EXTRACT_REGISTRY = jws.JWSRegistry(strict_check_header=False)
_EXTRACT_REGISTRY.max_header_length = 8192
# joserfc's default of 1024 base64 characters stops at RSA-6144; an RSA-8192 realm key
# (Keycloak imports one) signs 1366.
_EXTRACT_REGISTRY.max_signature_length = 2048


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(data: str | bytes) -> Any:
    """``json.loads`` of UTF-8 JSON; ``ValueError`` for anything else.

    Refused: ``NaN`` and ``Infinity`` (not JSON, RFC 8259 §6), other encodings than UTF-8
    (§8.1; ``json.loads`` would guess UTF-16 or skip a byte order mark), and nesting too
    deep for the parser (a ``RecursionError`` otherwise).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_text(value: object) -> TypeGuard[str]:
    """A non-empty string of Unicode scalar values (a lone surrogate from ``"\\ud800"`` is
    valid JSON but no text: it cannot be encoded into a store key or a log line)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def numeric_date(value: object, name: str) -> float:
    """A NumericDate (RFC 7519 §2) as a float; ``ValueError`` unless finite and plausible."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a NumericDate")
    # Python's json reads 1e400 as inf and a 400-digit integer as an int no float holds.
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise ValueError(f"{name} must be a NumericDate between 0 and {MAX_NUMERIC_DATE}")
    return float(value)


def _fail(code: str, description: str, status: int = 400) -> LogoutTokenError:
    return LogoutTokenError(code, description, status=status)


_COMPACT = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def parse_compact(token: str) -> CompactSignature:
    """Split a compact JWS; reject JWE, JSON serialisation and garbage."""
    segments = token.count(".")
    if segments == 4:
        raise _fail("encrypted_token", "encrypted (JWE) logout tokens are not accepted")
    if segments != 2:
        raise _fail("malformed_token", "not a compact JWS (three dot-separated segments)")
    if not _COMPACT.fullmatch(token):
        # RFC 7515 §2, §7.1: base64url only.  The decoder would skip stray characters, so
        # "<token> " or "<token>;x" would otherwise verify as the token.
        raise _fail("malformed_token", "a segment holds characters outside base64url")
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=_EXTRACT_REGISTRY)
        # RFC 7515 §5.2: the header is a UTF-8 JSON object; joserfc's parser also takes
        # arrays and strings (which have no .get), NaN, UTF-16 and any nesting depth.
        raw_header = obj.segments["header"]
        header = strict_json(base64.urlsafe_b64decode(raw_header + b"=" * (-len(raw_header) % 4)))
    except (JoseError, ValueError, UnicodeError, RecursionError) as exc:
        raise _fail("malformed_token", f"cannot decode the JWS: {exc}") from None
    if not isinstance(header, dict):
        raise _fail("malformed_token", "the JWS header is not a JSON object")
    return obj


def check_header(
    header: Mapping[str, Any], policy: TokenPolicy, *, kind: TokenKind = "logout"
) -> str:
    """Check ``alg``, ``crit``, ``cty`` and ``typ`` for a token of ``kind``; return the algorithm.

    Each kind has its own ``typ`` values (RFC 8725 §3.11), so that no token is taken for
    another kind by its header: a logout token ``logout+jwt`` (``JWT`` or none unless
    strict), Keycloak's admin-URL tokens ``JWT`` or none, an access token ``at+jwt``
    (RFC 9068) or ``JWT`` or none (Keycloak's default; its claims say the kind then).
    """
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise _fail(
            "unsupported_alg",
            f"alg {alg!r} is not allowed; allowed: {', '.join(sorted(policy.algorithms))}",
        )
    if "crit" in header:
        raise _fail("unsupported_crit", f"crit {header['crit']!r} names an unsupported extension")
    cty = header.get("cty")
    if isinstance(cty, str) and cty.lower() in LEGACY_TYPES:
        # RFC 7519 §5.2/§7.2: the payload of a JWS with cty JWT is itself a token; nothing
        # Keycloak sends is nested, and we never unwrap one.
        raise _fail("nested_token", f"cty {cty!r} marks a nested token, which is not accepted")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise _fail("bad_typ", "typ must be a string")
    lowered = typ.lower() if typ is not None else None
    if kind == "admin":
        # Keycloak's admin-URL protocol always sends typ JWT.
        if lowered is not None and lowered not in LEGACY_TYPES:
            raise _fail("bad_typ", f"typ {typ!r} is not a Keycloak admin token type")
    elif kind == "access":
        if lowered is not None and lowered not in LEGACY_TYPES | ACCESS_TYPES:
            raise _fail("bad_typ", f"typ {typ!r} is not an access token type")
    elif lowered not in LOGOUT_TYPES and (
        policy.strict_typ or (lowered is not None and lowered not in LEGACY_TYPES)
    ):
        expected = "logout+jwt" if policy.strict_typ else "logout+jwt, JWT or none"
        raise _fail("bad_typ", f"typ {typ!r} is not a logout token type (expected {expected})")
    return alg


def candidate_keys(keys: KeySet | None, header: Mapping[str, Any], alg: str) -> list[Key]:
    """Keys of the OP's JWKS that may have signed this token: by ``kid`` and key type."""
    if keys is None:
        return []
    key_type = _KEY_TYPES[alg[:2]]
    kid = header.get("kid")
    out = []
    for key in keys:
        if not isinstance(key, key_type):
            continue
        if kid is not None and key.kid != kid:
            continue
        if key.get("use") not in (None, "sig"):
            continue
        if key.get("alg") not in (None, alg):
            continue
        if isinstance(key, ECKey) and key.get("crv") != _EC_CURVES.get(alg):
            continue
        if isinstance(key, OKPKey) and key.get("crv") not in ("Ed25519", "Ed448"):
            continue
        out.append(key)
    return out


def verify_signature(obj: CompactSignature, keys: Sequence[Key], alg: str) -> dict[str, Any]:
    """Verify with the first key that fits and return the decoded JSON payload."""
    registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
    for key in keys:
        try:
            if jws.validate_compact(obj, key, registry=registry):
                break
        except JoseError:
            continue
    else:
        raise _fail("bad_signature", "signature does not verify with the OP's keys", 400)
    try:
        claims = strict_json(obj.payload)
    except ValueError:
        raise _fail("bad_payload", "payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _fail("bad_payload", "payload is not a JSON object")
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        return numeric_date(value, name)
    except ValueError as exc:
        raise _fail(f"bad_{name}", str(exc)) from None


def _nonempty_string(claims: Mapping[str, Any], name: str) -> str | None:
    if name not in claims:
        return None
    value = claims[name]
    if not _is_text(value):
        raise _fail(f"bad_{name}", f"{name} must be a non-empty string")
    return value


def check_logout_claims(claims: Mapping[str, Any], policy: TokenPolicy, now: float) -> LogoutClaims:
    """Back-Channel Logout §2.4 and §2.6 claim rules (ID-token rules for iss/aud/iat/exp)."""
    if claims.get("iss") != policy.issuer:
        raise _fail("bad_iss", f"iss {claims.get('iss')!r} is not {policy.issuer!r}")

    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audiences = aud
    else:
        raise _fail("bad_aud", "aud must be a string or a non-empty list of strings")
    if policy.client_id not in audiences:
        raise _fail("bad_aud", f"aud does not contain {policy.client_id!r}")
    if any(audience != policy.client_id for audience in audiences):
        # OIDC Core §3.1.3.7 step 3, which BCL §2.6 step 3 applies: a token that also names
        # audiences this client does not trust is refused (Keycloak sends its client alone).
        raise _fail("bad_aud", f"aud names audiences other than {policy.client_id!r}")
    azp = claims.get("azp")
    if azp is not None and azp != policy.client_id:
        raise _fail("bad_azp", f"azp {azp!r} is not {policy.client_id!r}")

    skew = policy.clock_skew
    iat = _numeric_date(claims, "iat")
    if iat is None:
        raise _fail("missing_iat", "iat is required")
    if iat > now + skew:
        raise _fail("iat_in_future", "iat is in the future")
    # Half-open, as the jti claim below is: at its last instant the claim has expired.
    if iat <= now - policy.max_age - skew:
        raise _fail("token_too_old", f"iat is more than {policy.max_age:g} s in the past")

    exp = _numeric_date(claims, "exp")
    if exp is None:
        if not policy.allow_missing_exp:
            raise _fail("missing_exp", "exp is required (errata set 1)")
    elif exp + skew <= now:
        raise _fail("expired", "exp has passed")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and nbf > now + skew:
        raise _fail("nbf_in_future", "nbf is in the future")
    _numeric_date(claims, "auth_time")  # not used, but a present one must be well-formed

    jti = _nonempty_string(claims, "jti")
    if jti is None:
        raise _fail("missing_jti", "jti is required")

    events = claims.get("events")
    if not isinstance(events, dict):
        raise _fail("bad_events", "events must be a JSON object")
    if not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise _fail("bad_events", f"events must hold the member {BACKCHANNEL_EVENT} as an object")

    sub = _nonempty_string(claims, "sub")
    sid = _nonempty_string(claims, "sid")
    if sub is None and sid is None:
        raise _fail("missing_sub_sid", "a logout token needs sub, sid or both")
    if "nonce" in claims:
        raise _fail("nonce_present", "a logout token must not contain nonce")

    # The jti must be remembered for as long as the token could still be accepted, and
    # the iat window refuses it after iat + max_age whatever its exp says.
    remember_until = iat + policy.max_age + skew
    return LogoutClaims(jti=jti, iat=iat, expires_at=remember_until, sub=sub, sid=sid)


#: claims of other realm-signed tokens that Keycloak's AdminAction classes never carry
_NOT_IN_ADMIN_ACTIONS = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "azp", "sid", "nonce", "events"}
)


def check_admin_claims(
    claims: Mapping[str, Any], client_id: str, expected_action: str, now: float, skew: float
) -> AdminAction:
    """Keycloak's legacy admin-URL token (``AdminAction``): resource, action, expiration."""
    # Keycloak signs admin actions, access and ID tokens with the same realm key and the
    # same "typ": "JWT" header, so only the claims tell them apart (RFC 8725 §3.12).  An
    # AdminAction is plain JSON with none of JWT's registered claims; a token that has one
    # is some other token (an access token given resource/action claims by a mapper).
    foreign = sorted(_NOT_IN_ADMIN_ACTIONS.intersection(claims))
    if foreign:
        raise _fail(
            "not_admin_action",
            f"claims {', '.join(foreign)} make this another kind of token, not an admin action",
        )
    action_id = claims.get("id")
    if not _is_text(action_id):
        raise _fail("missing_id", "admin action has no id")
    if claims.get("resource") != client_id:
        raise _fail("bad_resource", f"resource {claims.get('resource')!r} is not {client_id!r}")
    if claims.get("action") != expected_action:
        raise _fail("bad_action", f"action {claims.get('action')!r} is not {expected_action!r}")
    expiration = _numeric_date(claims, "expiration")
    if expiration is None or expiration + skew <= now:
        raise _fail("expired", "admin action has expired")
    not_before = _numeric_date(claims, "notBefore") or 0.0
    # Only null or absent means "no ids" (and so "every session"): a {} or "" is malformed.
    ids = claims.get("keycloakSessionIds")
    ids = [] if ids is None else ids
    if not isinstance(ids, list) or not all(i == "" or _is_text(i) for i in ids):
        raise _fail("bad_session_ids", "keycloakSessionIds must be a list of strings")
    return AdminAction(
        id=action_id,
        action=expected_action,
        expiration=expiration,
        not_before=not_before,
        session_ids=tuple(ids),
    )
