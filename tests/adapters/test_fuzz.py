"""Fuzzing the middleware's own endpoints, through both adapters.

Tens of thousands of mutated requests go straight into the real adapters (the Flask app whose
``wsgi_app`` is :class:`kc_sso_middleware.wsgi.SSOMiddleware`, the Starlette app with
:class:`kc_sso_middleware.asgi.SSOMiddleware`) and so into the real core.  httpx is left out:
it would make the 24,000 back-channel requests take minutes.  Requests are built as bytes on
the wire (a WSGI environ, an ASGI scope and its body messages).

An oracle written from the specifications, not from the code under test, judges every
answer: OIDC Back-Channel Logout 1.0 §2.4-§2.8 and RFC 7515/7519/8725 for logout tokens,
Keycloak's ``AdminAction`` for the admin URL, OIDC Front-Channel Logout 1.0 for the
front-channel page.  It re-verifies signatures itself (``cryptography``, not joserfc).  Only
the form and the query string are read with ``urllib.parse.parse_qs`` (the reading the
endpoints document), so that the token the oracle judges is the one the endpoint received.

For every request: no exception leaves the adapter, no log record carries a traceback, no
5xx; every refusal is ``{"error": "invalid_request", "error_description": "<code>: ..."}``
with a code the oracle names; 200 only for a token the oracle finds valid whose ``jti``
(admin: ``id``) was not accepted before, and always 200 for such a token.

Every random choice comes from seeded ``random.Random`` instances: a failure reproduces, and
its report names the request's family and number.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.testing import BACKCHANNEL_EVENT, StandInOP
from tests.conftest import CLIENT_ID, Harness, HarnessFactory, PortalClient

SEED = 20_250_611
BACKCHANNEL = "/backchannel-logout"
FRONTCHANNEL = "/frontchannel-logout"
ADMIN_ACTIONS = {
    "/k_logout": "LOGOUT",
    "/k_push_not_before": "PUSH_NOT_BEFORE",
    "/k_test_available": "TEST_AVAILABILITY",
}
FORM = b"application/x-www-form-urlencoded"

#: requests per adapter
BACKCHANNEL_REQUESTS = 12_000
ADMIN_REQUESTS = 3_000
FRONTCHANNEL_REQUESTS = 3_000

#: the settings the oracle assumes (the defaults, written out)
BODY_LIMIT = 65_536
SKEW = 60
MAX_AGE = 300
MAX_NUMERIC_DATE = 253_402_300_799

#: a session no mutant ever names; it must still work after the fuzz
CONTROL_SID = "control-session-never-named"
CONTROL_SUB = "control-user-never-named"

_CODE = re.compile(r"([a-z][a-zA-Z_]*): ")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def J(value: Any) -> bytes:
    """``value`` as JSON text."""
    return json.dumps(value).encode()


# --------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Raw:
    """One request as bytes on the wire, before any framework reads it."""

    family: str
    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    query: bytes = b""
    #: ASGI ``http.request`` messages the body is split into
    chunks: int = 1

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


@dataclass(frozen=True)
class Reply:
    """What the adapter answered."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


def _environ(raw: Raw) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": raw.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": raw.path,
        "QUERY_STRING": raw.query.decode("latin-1"),
        "SERVER_NAME": "app.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "app.test",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(raw.body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in raw.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        if key in environ and key != "HTTP_HOST":
            # What a server does with a repeated header (RFC 9110 §5.3; cookies with "; ").
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + text
        else:
            environ[key] = text
    return environ


def _call_wsgi(app: Any, raw: Raw) -> Reply | BaseException:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    try:
        result = app(_environ(raw), start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        return exc
    status, headers = started[-1]
    return Reply(int(status.split()[0]), tuple(headers), body)


async def _call_asgi(app: Any, raw: Raw) -> Reply | BaseException:
    size = len(raw.body)
    cuts = sorted({0, size, *(size * k // raw.chunks for k in range(1, raw.chunks))})
    messages = [
        {"type": "http.request", "body": raw.body[a:b], "more_body": b != size}
        for a, b in itertools.pairwise(cuts)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    pending = iter(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(pending, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": raw.method,
        "scheme": "http",
        "path": raw.path,
        "raw_path": raw.path.encode(),
        "root_path": "",
        "query_string": raw.query,
        "headers": [(b"host", b"app.test"), *((n.lower(), v) for n, v in raw.headers)],
        "client": ("127.0.0.1", 50_000),
        "server": ("app.test", 80),
        "state": {},
    }
    try:
        await app(scope, receive, send)
    except Exception as exc:
        return exc
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return RuntimeError(f"no response started: {sent!r:.200}")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in start["headers"])
    return Reply(start["status"], headers, body)


def deliver(harness: Harness, requests: Sequence[Raw]) -> list[Reply | BaseException]:
    """Send ``requests`` in order through the harness's adapter, without httpx."""
    if harness.kind == "wsgi":
        assert isinstance(harness.app.wsgi_app, wsgi_adapter.SSOMiddleware)
        return [_call_wsgi(harness.app, raw) for raw in requests]
    assert any(m.cls is asgi_adapter.SSOMiddleware for m in harness.app.user_middleware)

    async def run() -> list[Reply | BaseException]:
        return [await _call_asgi(harness.app, raw) for raw in requests]

    # The loop the harness keeps for its lifetime: the adapter's async HTTP client lives there.
    assert isinstance(harness.client, PortalClient)
    return harness.client._portal.call(run)


# --------------------------------------------------------------------------- the oracle


@dataclass(frozen=True)
class Expect:
    """What the oracle allows for one request."""

    statuses: frozenset[int]
    #: error codes allowed in a refusal (empty: any code)
    codes: frozenset[str] = frozenset()
    #: a valid token's replay key: 200 the first time, then 400 replayed_jti
    replay_key: str | None = None
    #: a valid admin action revoking every session that began before this time
    revokes_before: float | None = None
    #: only the invariants hold (the adapters may legitimately read the body differently)
    loose: bool = False
    #: a 200 must expire this cookie (the browser's own session ended)
    expires: str | None = None


def refused(*codes: str, status: int = 400) -> Expect:
    return Expect(frozenset({status}), frozenset(codes))


@dataclass
class Ledger:
    """What the fuzz has legitimately done so far, as the oracle saw it accepted."""

    replay_keys: set[str] = field(default_factory=set)
    #: every session that began before this was revoked by an accepted admin action
    not_before: float = 0.0
    accepted: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def json_object(data: bytes) -> dict[str, Any] | None:
    """RFC 8259/7159 as RFC 7515 §5.2 and RFC 7519 §7.2 ask: a UTF-8 JSON object, or ``None``."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url(segment: str) -> bytes | None:
    """Strict base64url without padding (RFC 7515 §2); ``None`` unless canonical."""
    if not _ALPHABET.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return data if _b64(data) == segment else None


def numeric_date(claims: dict[str, Any], name: str) -> float | str | None:
    """RFC 7519 §2 NumericDate: a number, not bool, finite, not before 1970 nor after 9999.

    ``None`` when absent or null, ``"bad"`` when malformed.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "bad"
    if not 0 <= value <= MAX_NUMERIC_DATE:  # also refuses inf and nan
        return "bad"
    return float(value)


def text(value: object) -> bool:
    """A non-empty string of Unicode scalar values (a lone surrogate is not text)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: registered header parameters and the type RFC 7515 §4.1 gives them (URLs as joserfc
#: checks them: http or https)
_URL = re.compile(r"https?://")
_HEADER_TYPES: dict[str, Callable[[Any], bool]] = {
    "jku": lambda v: isinstance(v, str) and bool(_URL.match(v)),
    "jwk": lambda v: isinstance(v, dict),
    "kid": lambda v: isinstance(v, str),
    "x5u": lambda v: isinstance(v, str) and bool(_URL.match(v)),
    "x5c": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "x5t": lambda v: isinstance(v, str),
    "x5t#S256": lambda v: isinstance(v, str),
    "typ": lambda v: isinstance(v, str),
    "cty": lambda v: isinstance(v, str),
    "crit": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "b64": lambda v: isinstance(v, bool),
}
LOGOUT_TYPES = {"logout+jwt", "application/logout+jwt"}
LEGACY_TYPES = {"jwt", "application/jwt"}


@dataclass(frozen=True)
class Keys:
    """The OP's signing key as the oracle verifies with it."""

    kid: str
    public: Any

    def verifies(self, signing_input: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


def judge_jws(token: str, keys: Keys, *, admin: bool) -> Expect | dict[str, Any]:
    """The payload of a compact JWS the OP signed, or the refusal it deserves."""
    bad_key = 403 if admin else 400
    dots = token.count(".")
    if dots == 4:
        return refused("encrypted_token")
    if dots != 2:
        return refused("malformed_token")
    head_seg, body_seg, sig_seg = token.split(".")
    raw_header = b64url(head_seg)
    header = json_object(raw_header) if raw_header is not None else None
    if header is None or len(head_seg) > 8192 or len(sig_seg) > 2048:
        return refused("malformed_token")
    if "alg" not in header:
        return refused("malformed_token", "unsupported_alg")
    if "b64" in header and header["b64"] is not True:
        # RFC 7797: only with "b64" in crit, which no logout token may carry
        return refused("malformed_token", "unsupported_crit")
    if not _ALPHABET.fullmatch(sig_seg):
        return refused("malformed_token")
    payload = b64url(body_seg)
    if payload is None:
        return refused("malformed_token")

    rules = set()
    alg = header["alg"]
    if alg != "RS256" or not isinstance(alg, str):
        rules.add("unsupported_alg")
    if "crit" in header:
        rules.add("unsupported_crit")
    # RFC 7519 §5.2: cty JWT marks a nested token, whose claims are another token's
    cty = header.get("cty")
    if isinstance(cty, str) and cty.lower() in LEGACY_TYPES:
        rules.add("nested_token")
    # RFC 8725 §3.11 explicit typing; Keycloak's admin tokens and older logout tokens say JWT
    typ = header.get("typ")
    types = LEGACY_TYPES if admin else LOGOUT_TYPES | LEGACY_TYPES
    if typ is not None and not (isinstance(typ, str) and typ.lower() in types):
        rules.add("bad_typ")
    if rules:
        return refused(*rules)
    kid = header.get("kid")
    if kid is not None and kid != keys.kid:
        return refused("unknown_kid", status=bad_key)
    if not all(check(header[name]) for name, check in _HEADER_TYPES.items() if name in header):
        return refused("bad_signature", status=bad_key)
    signature = b64url(sig_seg)
    signing_input = f"{head_seg}.{body_seg}".encode()
    if signature is None or not keys.verifies(signing_input, signature):
        return refused("bad_signature", status=bad_key)
    claims = json_object(payload)
    if claims is None:
        return refused("bad_payload")
    return claims


def logout_claim_failures(claims: dict[str, Any], issuer: str, now: float) -> set[str]:
    """Every rule of Back-Channel Logout §2.4/§2.6 the claims break (empty: valid)."""
    failed = set()
    if not (isinstance(claims.get("iss"), str) and claims["iss"] == issuer):
        failed.add("bad_iss")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not (
        isinstance(audiences, list)
        and audiences
        and all(isinstance(a, str) for a in audiences)
        and set(audiences) == {CLIENT_ID}
    ):
        failed.add("bad_aud")
    if claims.get("azp") is not None and claims["azp"] != CLIENT_ID:  # null: not returned
        failed.add("bad_azp")
    iat = numeric_date(claims, "iat")
    if iat is None:
        failed.update({"missing_iat"} if "iat" not in claims else {"missing_iat", "bad_iat"})
    elif iat == "bad":
        failed.add("bad_iat")
    elif isinstance(iat, float) and iat > now + SKEW:
        failed.add("iat_in_future")
    elif isinstance(iat, float) and iat < now - MAX_AGE - SKEW:
        failed.add("token_too_old")
    exp = numeric_date(claims, "exp")
    if exp is None:
        failed.update({"missing_exp"} if "exp" not in claims else {"missing_exp", "bad_exp"})
    elif exp == "bad":
        failed.add("bad_exp")
    elif isinstance(exp, float) and exp + SKEW <= now:
        failed.add("expired")
    nbf = numeric_date(claims, "nbf")
    if nbf == "bad":
        failed.add("bad_nbf")
    elif isinstance(nbf, float) and nbf > now + SKEW:
        failed.add("nbf_in_future")
    if numeric_date(claims, "auth_time") == "bad":
        failed.add("bad_auth_time")
    if "jti" not in claims:
        failed.add("missing_jti")
    elif not text(claims["jti"]):
        failed.add("bad_jti")
    events = claims.get("events")
    if not (isinstance(events, dict) and isinstance(events.get(BACKCHANNEL_EVENT), dict)):
        failed.add("bad_events")
    for name in ("sub", "sid"):
        if name in claims and not text(claims[name]):
            failed.add(f"bad_{name}")
    if "sub" not in claims and "sid" not in claims:
        failed.add("missing_sub_sid")
    if "nonce" in claims:
        failed.add("nonce_present")
    return failed


def judge_backchannel(raw: Raw, keys: Keys, issuer: str, now: float) -> Expect:
    """What OIDC Back-Channel Logout 1.0 allows as the answer to ``raw``."""
    if raw.method != "POST":
        return refused("method_not_allowed", status=405)
    if len(raw.body) > BODY_LIMIT:
        return refused("body_too_large", status=413)
    content_type = (raw.header(b"content-type") or b"").decode("latin-1")
    if content_type.split(";")[0].strip().lower() != FORM.decode():
        return refused("bad_content_type")
    try:
        form = parse_qs(raw.body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except ValueError:  # not UTF-8, or too many fields
        return refused("bad_body")
    tokens = form.get("logout_token", [])
    if len(tokens) != 1 or not tokens[0]:
        return refused("missing_logout_token")
    judged = judge_jws(tokens[0], keys, admin=False)
    if isinstance(judged, Expect):
        return judged
    failed = logout_claim_failures(judged, issuer, now)
    if failed:
        return refused(*failed)
    return Expect(frozenset({200}), replay_key=judged["jti"])


NOT_IN_ADMIN_ACTIONS = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "azp", "sid", "nonce", "events"}
)


def judge_admin(raw: Raw, keys: Keys, now: float) -> Expect:
    """What Keycloak's admin-URL protocol allows as the answer to ``raw``."""
    action = ADMIN_ACTIONS[raw.path]
    if raw.method != "POST":
        return refused("method_not_allowed", status=405)
    if len(raw.body) > BODY_LIMIT:
        return refused("body_too_large", status=413)
    # The old adapters read the body as the bare token, trailing whitespace tolerated.
    judged = judge_jws(raw.body.decode("ascii", "replace").strip(), keys, admin=True)
    if isinstance(judged, Expect):
        return judged
    failed = set()
    # Keycloak's AdminAction is plain JSON: a JWT claim makes it another realm token.
    if NOT_IN_ADMIN_ACTIONS.intersection(judged):
        failed.add("not_admin_action")
    if not text(judged.get("id")):
        failed.add("missing_id")
    if judged.get("resource") != CLIENT_ID:
        failed.add("bad_resource")
    if judged.get("action") != action:
        failed.add("bad_action")
    expiration = numeric_date(judged, "expiration")
    if expiration == "bad":
        failed.add("bad_expiration")
    elif expiration is None or (isinstance(expiration, float) and expiration + SKEW <= now):
        failed.add("expired")
    not_before = numeric_date(judged, "notBefore")
    if not_before == "bad":
        failed.add("bad_notBefore")
    ids = judged.get("keycloakSessionIds")
    ids = [] if ids is None else ids  # a List<String> Keycloak may leave null
    if not isinstance(ids, list) or not all(isinstance(i, str) and (not i or text(i)) for i in ids):
        failed.add("bad_session_ids")
    if failed:
        return refused(*failed)
    nb = not_before if isinstance(not_before, float) else 0.0
    if action == "LOGOUT":
        # session ids: those sessions only; none: everybody (what the old adapters did)
        before = None if ids else max(nb, now)
        return Expect(frozenset({200}), replay_key=judged["id"], revokes_before=before)
    if action == "PUSH_NOT_BEFORE" and nb > 0:
        return Expect(frozenset({200}), replay_key=judged["id"], revokes_before=nb)
    return Expect(frozenset({200}))  # nothing to record, so nothing to replay


def check(
    raw: Raw, reply: Reply | BaseException, expect: Expect, ledger: Ledger, *, page: bool = False
) -> str | None:
    """The problem with ``reply``, if any (updating ``ledger`` with what was accepted)."""
    if isinstance(reply, BaseException):
        return f"raised {type(reply).__name__}: {reply}"
    if reply.status >= 500:
        return f"{reply.status} {reply.body[:200]!r}"
    statuses, codes = expect.statuses, expect.codes
    if expect.replay_key is not None and expect.replay_key in ledger.replay_keys:
        statuses, codes = frozenset({400}), frozenset({"replayed_jti"})
    if expect.loose:
        allowed = {200, 400, 405, 413} if 200 in statuses else {400, 405, 413}
        if reply.status not in allowed:
            return f"status {reply.status} where {sorted(allowed)} (loose) were allowed"
    elif reply.status not in statuses:
        return f"status {reply.status} where {sorted(statuses)} were allowed: {reply.body[:300]!r}"
    if reply.header("cache-control") not in ("no-store", "no-cache, no-store"):
        return f"cache-control {reply.header('cache-control')!r}"
    if reply.status == 200:
        if page:
            if not reply.body.startswith(b"<!doctype html>"):
                return f"200 without the logged-out page: {reply.body[:100]!r}"
        elif reply.body:
            return f"200 with a body: {reply.body[:100]!r}"
        if expect.expires is not None and not any(
            name.lower() == "set-cookie" and value.startswith(f"{expect.expires}=;")
            for name, value in reply.headers
        ):
            return f"200 without expiring the {expect.expires} cookie: {reply.headers!r:.300}"
        ledger.accepted += 1
        if expect.replay_key is not None:
            ledger.replay_keys.add(expect.replay_key)
        if expect.revokes_before is not None:
            ledger.not_before = max(ledger.not_before, expect.revokes_before)
        return None
    try:
        body = json.loads(reply.body)
    except ValueError:
        return f"{reply.status} without a JSON body: {reply.body[:200]!r}"
    if not (
        isinstance(body, dict)
        and set(body) == {"error", "error_description"}
        and body["error"] == "invalid_request"
        and isinstance(body["error_description"], str)
    ):
        return f"{reply.status} with an unexpected body: {body!r:.300}"
    match = _CODE.match(body["error_description"])
    if match is None:
        return f"error_description without a code: {body['error_description']!r:.200}"
    code = match.group(1)
    ledger.refusals[code] = ledger.refusals.get(code, 0) + 1
    if codes and not expect.loose and code not in codes:
        return (
            f"code {code!r} where {sorted(codes)} were allowed: {body['error_description']!r:.300}"
        )
    return None


def run_fuzz(
    harness: Harness,
    requests: Sequence[Raw],
    judge: Callable[[Raw], Expect],
    caplog: pytest.LogCaptureFixture,
    *,
    page: bool = False,
    ledger: Ledger | None = None,
) -> Ledger:
    """Deliver ``requests``, judge every answer, and fail listing the first problems found."""
    ledger = ledger if ledger is not None else Ledger()
    problems: list[str] = []
    batch = 2_000
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        replies = deliver(harness, chunk)
        for offset, (raw, reply) in enumerate(zip(chunk, replies, strict=True)):
            problem = check(raw, reply, judge(raw), ledger, page=page)
            if problem is not None:
                problems.append(f"#{start + offset} [{raw.family}] {problem}\n    {raw!r:.400}")
        tracebacks = [r for r in caplog.records if r.exc_info]
        problems.extend(f"traceback logged: {r.getMessage()!r:.300}" for r in tracebacks)
        caplog.clear()
    assert not problems, f"{len(problems)} problem(s) in {len(requests)} requests:\n" + "\n".join(
        f"{count} like {example}" for example, count in _grouped(problems)
    )
    return ledger


def _grouped(problems: list[str]) -> list[tuple[str, int]]:
    """One example of each kind of problem (family and message without its details)."""
    kinds: dict[str, tuple[str, int]] = {}
    for problem in problems:
        kind = re.sub(r"#\d+|b?'[^']*'|b?\"[^\"]*\"|\d+", "_", problem.split("\n")[0])[:120]
        example, count = kinds.get(kind, (problem, 0))
        kinds[kind] = (example, count + 1)
    return sorted(kinds.values(), key=lambda item: -item[1])[:25]


# --------------------------------------------------------------------------- the mutants

Members = list[tuple[str, bytes]]


def render(members: Members) -> bytes:
    """A JSON object from raw member texts (duplicate names and non-JSON values allowed)."""
    return b"{" + b",".join(J(name) + b":" + value for name, value in members) + b"}"


def _set(members: Members, name: str, value: bytes) -> Members:
    if any(n == name for n, _ in members):
        return [(n, value if n == name else v) for n, v in members]
    return [*members, (name, value)]


def catalogue(now: int, issuer: str) -> list[bytes]:
    """Values of every JSON type and then some, as raw JSON text."""
    return [
        *(b"null", b"true", b"false", b"0", b"-0", b"-1", b"1", b"0.5", b"-0.0", b"1E+2"),
        *(b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"),
        b"9" * 400,
        b"-" + b"9" * 400,
        b"1" + b"0" * 5_000,  # more digits than Python turns into an int
        *(J(now), J(now + 0.5), J(now - 100_000), J(now + 100_000), J(-now)),
        *(J(MAX_NUMERIC_DATE), J(MAX_NUMERIC_DATE + 1), J(2**63), J(-(2**63))),
        *(b'""', b'"x"', J(issuer), J(CLIENT_ID), J(BACKCHANNEL_EVENT), J(str(now))),
        *(b'"\\u0000"', b'"\\ud800"', b'"a\\udc00"', b'"\\ud83d\\ude00"', J("\u0000" * 3)),
        J("é\u202e\u2028\n\r\t\x7f\U0001f600"),
        *(b'"\xff\xfe"', b'"\xc0\xae"', b'"\xed\xa0\x80"', b'"a\x01b"'),  # not UTF-8 / not JSON
        *(b"[]", b"[null]", J([CLIENT_ID]), J([CLIENT_ID, "other"]), J(["other"]), J([1, 2])),
        J([[CLIENT_ID]]),
        *(b"{}", J({"a": {"b": [1, {"c": None}]}}), J({BACKCHANNEL_EVENT: {}})),
        J({BACKCHANNEL_EVENT: True}),
        b"[" * 40 + b"]" * 40,
        b"[" * 3_000 + b"]" * 3_000,  # deeper than Python's recursion limit
        b'{"a":' * 2_000 + b"1" + b"}" * 2_000,
        J("x" * 30_000),
        J(["x"] * 2_000),
        *(b'"unterminated', b"{", b"1 2", b"tru", b"+1", b"01", b".5", b"0x10", b"1_000"),
    ]


def plausible(now: int, issuer: str, rng: random.Random) -> dict[str, list[bytes]]:
    """Values near the valid ones, so that mutants reach every rule, and some stay valid."""
    return {
        "iss": [J(issuer), J(issuer + "/"), J(issuer.upper()), J("http://evil.example/r/t")],
        "aud": [J(CLIENT_ID), J([CLIENT_ID]), J(["other", CLIENT_ID]), J("other"), J([])],
        "iat": [J(now), J(now - 10), J(now - 200), J(now + 20), J(now - 2000), J(now + 2000)],
        "exp": [J(now + 120), J(now + 5), J(now - 20), J(now - 2000), J(now + 10**6)],
        "nbf": [J(now - 10), J(now + 20), J(now + 2000), J(now - 0.5)],
        "jti": [J(str(uuid.UUID(int=rng.getrandbits(128)))), J("j"), J("")],
        "sub": [J("fz-user-x"), J(""), J("fz-user-\u00e9\u0000")],
        "sid": [J("fz-sid-x"), J(""), J("fz-sid-" + "s" * 5_000)],
        "events": [
            J({BACKCHANNEL_EVENT: {}}),
            J({BACKCHANNEL_EVENT: {"x": 1}}),
            J({BACKCHANNEL_EVENT: {}, "revoke_offline_access": True}),
            J({BACKCHANNEL_EVENT: []}),
            J({"http://other/event": {}}),
            J([BACKCHANNEL_EVENT]),
        ],
        "nonce": [J("n-0S6_WzA2Mj"), b"null"],
        "azp": [J(CLIENT_ID), J("other"), b"null"],
        "auth_time": [J(now - 100), J(now)],
    }


CLAIMS = ("iss", "aud", "iat", "exp", "nbf", "jti", "sub", "sid", "events", "nonce", "azp")
CLAIMS += ("auth_time",)


def logout_members(now: int, issuer: str, rng: random.Random, n: int) -> Members:
    """The claims of a valid logout token (sid and sub, or only one of them)."""
    members: Members = [
        ("iss", J(issuer)),
        ("aud", J(CLIENT_ID)),
        ("iat", J(now - rng.choice((0, 1, 30)))),
        ("exp", J(now + 120)),
        ("jti", J(str(uuid.UUID(int=rng.getrandbits(128))))),
        ("sub", J(f"fz-user-{n}")),
        ("sid", J(f"fz-sid-{n}")),
        ("events", J({BACKCHANNEL_EVENT: {}})),
    ]
    shape = rng.random()
    if shape < 0.2:
        members = [m for m in members if m[0] != "sid"]
    elif shape < 0.4:
        members = [m for m in members if m[0] != "sub"]
    rng.shuffle(members)
    return members


def mutate_members(
    members: Members, rng: random.Random, values: list[bytes], near: dict[str, list[bytes]]
) -> Members:
    """One to three claim mutations: replaced, dropped, duplicated or added members."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(CLAIMS)
        value = rng.choice(near[name]) if rng.random() < 0.45 else rng.choice(values)
        op = rng.random()
        if op < 0.55:
            members = _set(members, name, value)
        elif op < 0.75:
            members = [m for m in members if m[0] != name]
        elif op < 0.9:  # a duplicate name: before or after the original (RFC 7519 §4)
            where = rng.randrange(len(members) + 1)
            members = [*members[:where], (name, value), *members[where:]]
        else:
            members = [*members, (f"x-{rng.randrange(100)}", value)]
    return members


def whole_payloads(claims: bytes) -> list[bytes]:
    """Payloads that are not a UTF-8 JSON object, or barely are."""
    return [
        b"",
        b"[]",
        b'"logout"',
        b"42",
        b"null",
        b"[" + claims + b"]",
        claims + b"x",
        claims[:-1],
        b" \n" + claims + b"\t ",
        b"\xef\xbb\xbf" + claims,  # UTF-8 byte order mark
        claims.decode().encode("utf-16"),
        claims.decode().encode("utf-32-le"),
        claims.replace(b'"iss"', b'"\xff\xfe"'),
        b"[" * 3_000 + b"]" * 3_000,
        b'{"a":' * 1_500 + b"{}" + b"}" * 1_500,
        b"\x00" * 64,
    ]


def header_members(kid: str, typ: str | None = "logout+jwt") -> Members:
    members: Members = [("alg", J("RS256")), ("kid", J(kid))]
    if typ is not None:
        members.append(("typ", J(typ)))
    return members


def header_variants(kid: str, admin: bool) -> list[tuple[str, bytes]]:
    """JOSE header members to set: alg, crit, keys named in the token, kid of every type."""
    fake_jwk = {"kty": "RSA", "n": "sXch" * 64, "e": "AQAB", "kid": kid}
    typs = ["JWT", "jwt", "application/jwt", "logout+jwt", "application/logout+jwt"]
    typs += ["Logout+JWT", "at+jwt", "secevent+jwt", "", "logout+jwt\u0000", "JWT "]
    out = [("typ", J(t)) for t in typs]
    out += [("typ", v) for v in (b"null", b"1", b'["JWT"]', b"{}", b"true")]
    algs = (J(a) for a in ("none", "HS256", "RS512", "PS256", "ES256", "rs256", "RS256 ", ""))
    out += [("alg", v) for v in (*algs, b"null", b"256", b"true", b'["RS256"]', b'{"RS256":1}')]
    out += [("kid", v) for v in (b"null", b"true", b"0", b"1.5", b'""', J("other-kid"))]
    out += [("kid", v) for v in (J([kid]), J({"kid": kid}), J(kid + " "), J(kid.upper()))]
    out += [("crit", v) for v in (b"[]", b'["b64"]', b'["exp"]', b'"b64"', b"null")]
    out += [("b64", v) for v in (b"true", b"false", b'"false"', b"0")]
    out += [("jku", v) for v in (J("https://evil.example/jwks"), J("ftp://x"), b"5", b"null")]
    out += [("jwk", v) for v in (J(fake_jwk), J("x"), b"[]")]
    out += [("x5u", v) for v in (J("http://127.0.0.1:9/evil.pem"), J("evil"), b"{}")]
    out += [("x5c", v) for v in (J(["MIIBfake"]), b"[1]", J("MIIB"), b"[]")]
    out += [("x5c", J(["A" * 9_000]))]  # a header over the 8 KiB bound
    out += [("x5t", J("abc")), ("x5t#S256", b"5"), ("cty", J("JWT")), ("cty", b"[]")]
    out += [("cty", J(c)) for c in ("application/JWT", "jwt", "json", "JWT ")]
    out += [("zip", J("DEF")), ("enc", J("A256GCM")), ("exp", J(0)), ("x-extra", b"NaN")]
    if admin:
        out += [("typ", J("JWT"))] * 6
    return out


def whole_headers(kid: str) -> list[bytes]:
    good = render(header_members(kid))
    return [
        b"[]",
        b'["alg"]',
        b'"alg"',
        b"{}",
        b"null",
        b'{"alg":"none","alg":"RS256"}',  # last wins: RS256 (RFC 7515 §4)
        b'{"alg":"RS256","alg":"none"}',
        good.replace(b"}", b',"x":NaN}'),
        good.decode().encode("utf-16"),
        b"\xef\xbb\xbf" + good,
        b"\xff" + good,
        b'{"alg":"RS256","x":' + b"[" * 3_000 + b"]" * 3_000 + b"}",
        b" " + good + b" ",
    ]


@dataclass(frozen=True)
class Pool:
    """Tokens signed with the OP's real key, made once per module (RSA signing is slow)."""

    now: int
    keys: Keys
    #: unmutated valid logout tokens: the seeds of byte-level and structural mutants
    valid: tuple[str, ...]
    #: re-signed mutants: every claim and header variant, some still valid
    resigned: tuple[str, ...]
    #: admin-URL tokens per action, valid and mutated
    admin: dict[str, tuple[str, ...]]


def sign(op: StandInOP, header: bytes, payload: bytes) -> str:
    """RS256 by hand over raw header and payload bytes (joserfc would re-serialise them)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}".encode()
    signature = op.key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64(signature)}"


def _logout_pool(op: StandInOP, now: int, rng: random.Random) -> tuple[list[str], list[str]]:
    issuer, kid = op.issuer, op.key.kid
    values = catalogue(now, issuer)
    near = plausible(now, issuer, rng)
    headers = header_variants(kid, admin=False)
    valid: list[str] = []
    resigned: list[str] = []
    for n in range(700):
        members = logout_members(now, issuer, rng, n)
        header = header_members(kid, rng.choice(("logout+jwt", "logout+jwt", "JWT", None)))
        kind = n % 10
        if kind == 0:  # valid as it is
            token = sign(op, render(header), render(members))
            valid.append(token)
            resigned.append(token)
            continue
        payload = render(members)
        if kind <= 5:
            payload = render(mutate_members(members, rng, values, near))
        elif kind <= 7:
            for _ in range(rng.choice((1, 1, 2))):
                header = _set(header, *rng.choice(headers))
            if rng.random() < 0.1:
                header = [h for h in header if h[0] != rng.choice(("alg", "kid", "typ"))]
        elif kind == 8:
            payload = rng.choice(whole_payloads(payload))
        else:
            resigned.append(sign(op, rng.choice(whole_headers(kid)), payload))
            continue
        resigned.append(sign(op, render(header), payload))
    return valid, resigned


def _admin_pool(op: StandInOP, now: int, rng: random.Random) -> dict[str, tuple[str, ...]]:
    kid = op.key.kid
    values = [v for v in catalogue(now, op.issuer) if not _late_date(v, now)]
    headers = header_variants(kid, admin=True)
    near: dict[str, list[bytes]] = {
        "id": [J(str(uuid.UUID(int=rng.getrandbits(128)))), J(""), b'"\\ud800"', J("a")],
        "expiration": [J(now + 30), J(now - 30), J(now - 200), J(now + 0.5)],
        "resource": [J(CLIENT_ID), J("other"), J(CLIENT_ID.upper()), J([CLIENT_ID])],
        "action": [
            J(a)
            for a in ("LOGOUT", "PUSH_NOT_BEFORE", "TEST_AVAILABILITY", "TEST_AVAILABLE", "logout")
        ],
        "notBefore": [J(0), J(now - 3_600), J(now - 30), J(now + 100), J(1), b"null"],
        "iss": [J(op.issuer)],
        "typ": [J("Bearer"), J("JWT")],
        "keycloakSessionIds": [
            *(b"[]", b"null", b"{}", b'""', b"0", b"false", b"[1]", J("adm-sid")),
            *(J(["adm-sid-a", "adm-sid-b"]), J([""]), b'["\\ud800"]', J([None])),
        ],
    }
    pools: dict[str, tuple[str, ...]] = {}
    for action in ADMIN_ACTIONS.values():
        tokens = []
        for n in range(120):
            members: Members = [
                ("id", J(str(uuid.UUID(int=rng.getrandbits(128))))),
                ("expiration", J(now + 30)),
                ("resource", J(CLIENT_ID)),
                ("action", J(action)),
                ("notBefore", J(0)),
                ("keycloakSessionIds", J([f"adm-sid-{action}-{n}"])),
            ]
            header = header_members(kid, rng.choice(("JWT", "JWT", None)))
            kind = n % 8
            if 1 <= kind <= 5:
                for _ in range(rng.choice((1, 1, 2))):
                    name = rng.choice(list(near))
                    value = rng.choice(near[name]) if rng.random() < 0.6 else rng.choice(values)
                    if rng.random() < 0.15:
                        members = [m for m in members if m[0] != name]
                    else:
                        members = _set(members, name, value)
            elif kind == 6:
                header = _set(header, *rng.choice(headers))
            elif kind == 7:
                members = [*members, (rng.choice(list(near)), rng.choice(values))]
            tokens.append(sign(op, render(header), render(members)))
        pools[action] = tuple(tokens)
    return pools


def _late_date(value: bytes, now: int) -> bool:
    """A valid NumericDate more than an hour ahead: a not-before no session could pass."""
    try:
        number = json.loads(value)
    except (ValueError, RecursionError):
        return False
    is_number = isinstance(number, int | float) and not isinstance(number, bool)
    return is_number and now + 3_600 < number <= MAX_NUMERIC_DATE


@pytest.fixture(scope="module")
def pool(op: StandInOP) -> Pool:
    rng = random.Random(SEED)
    now = int(time.time())
    valid, resigned = _logout_pool(op, now, rng)
    admin = _admin_pool(op, now, rng)
    keys = Keys(kid=op.key.kid, public=op.key.public_key)
    return Pool(now, keys, tuple(valid), tuple(resigned), admin)


# --- byte-level mutations of a form body


_SPICE = [
    *(b"\x00", b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"%"),
    *(b"%00", b"%0", b"%zz", b"%G1", b"+", b"&", b"=", b";", b".", b" ", b"\n", b"%2E", b"%2e"),
    *(b"%252E", b"%C0%AE", b"%E2%80%A8", b"%FF", b"%ED%A0%80", b"logout_token=", b"&&&"),
    *(b"\r\n", b"\t", b"#", b"?", b"~", b"!", b"/", b"-", b"_", b"A", b"==", b"%3D", b"%26"),
]


def percent_encode(data: bytes, rng: random.Random, rate: float) -> bytes:
    out = bytearray()
    for byte in data:
        if rng.random() < rate:
            code = f"%{byte:02X}" if rng.random() < 0.7 else f"%{byte:02x}"
            out += code.encode() if rng.random() < 0.9 else b"%25" + code[1:].encode()
        else:
            out.append(byte)
    return bytes(out)


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    """One byte-level mutation of ``data``."""
    size = len(data)
    at = rng.randrange(size + 1)
    op = rng.randrange(15)
    if op == 0 and size:  # bit flips
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 8))):
            buf[rng.randrange(size)] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op == 1:
        return data[:at] + rng.choice(_SPICE) + data[at:]
    if op == 2:
        return data[:at] + rng.randbytes(rng.choice((1, 2, 5, 40))) + data[at:]
    if op == 3:
        return data[:at] + data[at + rng.choice((1, 1, 3, 50, size)) :]
    if op == 4:
        return data[:at]
    if op == 5:  # duplicated logout_token
        return rng.choice(
            (data + b"&" + data, b"logout_token=" + data, data[:at] + b"&logout_token=" + data[at:])
        )
    if op == 6:
        return rng.randbytes(rng.choice((0, 1, 10, 300)))
    if op == 7 and size:  # not UTF-8
        buf = bytearray(data)
        buf[rng.randrange(size)] = rng.randrange(0x80, 0x100)
        return bytes(buf)
    if op == 8:  # huge, up to the body limit (and one byte past it)
        target = BODY_LIMIT + rng.choice((-1, 0, 0, 1))
        pad = max(0, target - size - 5)
        return rng.choice((data + b"&pad=" + b"A" * pad, data + b"A" * (pad + 5)))
    if op == 9:
        return percent_encode(data, rng, rng.choice((0.05, 0.3, 1.0)))
    if op == 10:
        return data[:at] + rng.choice((b"+", b"%00", b"%20", b"+%00+")) + data[at:]
    if op == 11 and size > 2:  # swap two bytes
        i, j = sorted(rng.sample(range(size), 2))
        return data[:i] + data[j : j + 1] + data[i + 1 : j] + data[i : i + 1] + data[j + 1 :]
    if op == 12:
        return (
            data[:at] + data[at : at + rng.choice((1, 10, 100))] * rng.choice((2, 10)) + data[at:]
        )
    if op == 13:
        return b"&".join([b"f=1"] * rng.choice((99, 100, 101, 500))) + b"&" + data
    return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]


def form_mutation(token: str, rng: random.Random) -> bytes:
    """A form around ``token``: fields around it, its name spelled otherwise, it encoded."""
    t = token.encode()
    forms = [
        b"logout_token=" + t + b"&extra=1",
        b"state=x&logout_token=" + t,
        b"logout_token=" + t + b"&",
        b"&logout_token=" + t,
        b"logout_token=" + t + b"&logout_token=" + t,
        b"logout_token=" + t + b"&logout_token=",
        b"logout_token=&logout_token=" + t,
        b"logout_token=" + t + b";x=1",
        b"logout%5Ftoken=" + t,
        b"logout%5ftoken=" + t,
        b"LOGOUT_TOKEN=" + t,
        b"logout_token =" + t,
        b"logout_token" + t,
        b"logout_token=" + quote(token, safe="").encode(),
        b"logout_token=" + percent_encode(t, rng, 0.3),
        b"logout_token=+" + t,
        b"logout_token=" + t + b"+",
        b"logout_token=" + t + b"%00",
        b"logout_token=" + t + b"%0A",
        b"logout_token=" + t.replace(b".", b"%2E", 1),
        b"logout_token=" + t.replace(b".", b"..", 1),
        b"logout_token=" + t + b"#frag",
    ]
    body = rng.choice(forms)
    return byte_mutation(body, rng) if rng.random() < 0.3 else body


# --- structural mutations of a compact JWS


def structural_mutation(token: str, pool: Pool, rng: random.Random, op: StandInOP) -> str:
    """A compact JWS whose segments are swapped, dropped, doubled, garbled or replaced."""
    h, p, s = token.split(".")
    other = rng.choice(pool.resigned).split(".")
    kid = pool.keys.kid
    choice = rng.randrange(12)
    if choice == 0:
        perm = rng.choice([(h, s, p), (p, h, s), (p, s, h), (s, h, p), (s, p, h), (p, p, s)])
        return ".".join(perm)
    if choice == 1:
        return rng.choice([f"{h}.{p}", f"{p}.{s}", f"{h}.{s}", h, f"{h}.{h}.{p}.{s}"])
    if choice == 2:  # JWE-like and other dot counts
        return rng.choice(
            [f"{h}.{p}.{s}.{s}.{p}", f"{h}.{p}.{s}..", "....", f"{h}.{p}.{s}.", f".{h}.{p}.{s}"]
        )
    if choice == 3:
        return rng.choice([f".{p}.{s}", f"{h}..{s}", f"{h}.{p}.", "..", f"{h}.{p}.{s}{s}"])
    if choice == 4:  # base64 garbage in one segment
        garbage = rng.choice(["=", "==", "+", "/", "!", " ", "%", "\u00e9", "*", "~", "\\"])
        parts = [h, p, s]
        i = rng.randrange(3)
        at = rng.randrange(len(parts[i]) + 1)
        parts[i] = parts[i][:at] + garbage + parts[i][at:]
        return ".".join(parts)
    if choice == 5:  # a header variant over the old payload and signature
        name, value = rng.choice(header_variants(kid, admin=False))
        return f"{_b64(render(_set(header_members(kid), name, value)))}.{p}.{s}"
    if choice == 6:
        return f"{_b64(rng.choice(whole_headers(kid)))}.{p}.{s}"
    if choice == 7:  # alg none, or HS256 keyed with the public key (RFC 8725 §2.1)
        none = render([("alg", J(rng.choice(("none", "None", "NONE")))), ("typ", J("JWT"))])
        hs = render([("alg", J("HS256")), ("typ", J("logout+jwt")), ("kid", J(kid))])
        pem = op.key.as_pem(private=False)
        mac = hmac.new(pem, f"{_b64(hs)}.{p}".encode(), hashlib.sha256).digest()
        return rng.choice(
            [f"{_b64(none)}.{p}.", f"{_b64(none)}.{p}.{s}", f"{_b64(hs)}.{p}.{_b64(mac)}"]
        )
    if choice == 8:  # a tampered payload under the old signature
        claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        claims[rng.choice(CLAIMS)] = rng.choice([None, "x", 7, [], {}, CONTROL_SID + "-not"])
        return f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    if choice == 9:  # another signature
        signature = rng.choice(
            ["", s[:-1], s[:-2], s + "A", s[:10], _b64(rng.randbytes(256)), other[2], s.upper()]
        )
        return f"{h}.{p}.{signature}"
    if choice == 10:  # segments of two tokens mixed
        return rng.choice([f"{h}.{other[1]}.{s}", f"{other[0]}.{p}.{s}", f"{h}.{p}.{other[2]}"])
    return rng.choice([f"{h}.{p}.{s}" + "A" * 1_200, "a." * 30_000, f"{h}.{p}.{s}".upper()])


def _chunks(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 2, 3))


def backchannel_requests(pool: Pool, op: StandInOP, rng: random.Random, count: int) -> list[Raw]:
    """``count`` back-channel deliveries from five families of mutants."""
    ctype = ((b"content-type", FORM),)
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.30:
            family, body = "resigned", b"logout_token=" + rng.choice(pool.resigned).encode()
        elif roll < 0.45:
            family, body = "form-around-resigned", form_mutation(rng.choice(pool.resigned), rng)
        elif roll < 0.75:
            body = b"logout_token=" + rng.choice(pool.valid).encode()
            for _ in range(rng.choice((1, 1, 2, 4))):
                body = byte_mutation(body, rng)
            family = "bytes"
        elif roll < 0.95:
            token = structural_mutation(rng.choice(pool.valid), pool, rng, op)
            family, body = "structure", b"logout_token=" + quote(token, safe="").encode()
        else:
            out.append(transport_mutation(rng.choice(pool.resigned), rng))
            continue
        headers = (*ctype, (b"content-length", str(len(body)).encode()))
        out.append(Raw(family, "POST", BACKCHANNEL, headers, body, chunks=_chunks(rng)))
    return out


def transport_mutation(token: str, rng: random.Random) -> Raw:
    """A delivery whose method, Content-Type or Content-Length is off."""
    body = b"logout_token=" + token.encode()
    content_type = rng.choice(
        [
            FORM,
            FORM + b"; charset=utf-8",
            FORM.upper(),
            b" " + FORM + b" ;;",
            b"application/json",
            b"text/plain",
            b"multipart/form-data; boundary=x",
            b"",
            b"application/x-www-form-urlencoded\x00",
            FORM + b"; charset=\xff",
        ]
    )
    length = rng.choice(
        [str(len(body)).encode(), b"abc", b"-1", b"1e3", b" 12 ", b"9" * 30, b"0", b"", b"9" * 5000]
    )
    headers = [(b"content-type", content_type), (b"content-length", length)]
    if rng.random() < 0.3:
        headers = [h for h in headers if rng.random() < 0.5]
    method = rng.choice(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "post"])
    lengths = [value for name, value in headers if name == b"content-length"]
    loose = lengths != [str(len(body)).encode()] or method != method.upper()
    return Raw("transport" + ("-loose" if loose else ""), method, BACKCHANNEL, tuple(headers), body)


# --------------------------------------------------------------------------- the tests


def _fixed_clock(now: float) -> Callable[[], float]:
    return lambda: now


def _assumed(harness: Harness) -> Harness:
    """``harness``, once its settings are those the oracle assumes."""
    settings = harness.settings
    assumed = (BODY_LIMIT, SKEW, MAX_AGE, ("RS256",), "lenient", False)
    actual = (settings.backchannel_max_body, settings.clock_skew, settings.logout_token_max_age)
    actual += (settings.algorithms, settings.typ_policy, settings.allow_missing_exp)
    assert actual == assumed
    return harness


def test_backchannel_fuzz(
    make_harness: HarnessFactory, op: StandInOP, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """12,000 mutated back-channel deliveries per adapter: no 5xx, no traceback, the answer
    the specification gives, 200 only for valid tokens; the app still works afterwards."""
    caplog.set_level(logging.DEBUG, logger="kc_sso_middleware")
    harness = _assumed(make_harness(clock=_fixed_clock(pool.now), jwks_min_refresh_interval=0))
    control = harness.session_cookie(op, sid=CONTROL_SID, sub=CONTROL_SUB, auth_time=pool.now - 60)
    assert harness.seen_session(control) != {}
    rng = random.Random(f"{SEED}-backchannel-{harness.kind}")
    requests = backchannel_requests(pool, op, rng, BACKCHANNEL_REQUESTS)

    def judge(raw: Raw) -> Expect:
        if not raw.family.endswith("-loose"):
            return judge_backchannel(raw, pool.keys, op.issuer, pool.now)
        # Judged as a POST: the WSGI adapter reads the method case-insensitively.
        as_post = replace(raw, method=raw.method.upper())
        return replace(judge_backchannel(as_post, pool.keys, op.issuer, pool.now), loose=True)

    ledger = run_fuzz(harness, requests, judge, caplog)

    assert ledger.accepted >= 100, "the fuzz reaches the accepting path"
    assert len(ledger.refusals) >= 30, f"the fuzz reaches most rules: {sorted(ledger.refusals)}"
    assert harness.seen_session(control) != {}, "a session the fuzz never named still works"


def admin_requests(pool: Pool, op: StandInOP, rng: random.Random, count: int) -> list[Raw]:
    """``count`` admin-URL deliveries: re-signed tokens, their bytes mutated, other paths."""
    out = []
    paths = list(ADMIN_ACTIONS)
    for _ in range(count):
        path = rng.choice(paths)
        own = pool.admin[ADMIN_ACTIONS[path]]
        token = (
            rng.choice(own)
            if rng.random() < 0.8
            else rng.choice(pool.admin[rng.choice(list(pool.admin))])
        )
        roll = rng.random()
        body = token.encode()
        family = "admin-resigned"
        if roll < 0.15:
            body = rng.choice(
                [body + b"\n", b"  " + body + b"\r\n", body + b"\x00", body + b"\xff"]
            )
            family = "admin-whitespace"
        elif roll < 0.45:
            for _ in range(rng.choice((1, 1, 2, 3))):
                body = byte_mutation(body, rng)
            family = "admin-bytes"
        elif roll < 0.6:
            body = structural_mutation(rng.choice(pool.valid), pool, rng, op).encode()
            family = "admin-structure"
        headers = ((b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()))
        method = "POST" if rng.random() < 0.97 else rng.choice(["GET", "PUT"])
        out.append(Raw(family, method, path, headers, body, chunks=_chunks(rng)))
    return out


def test_admin_url_fuzz(
    make_harness: HarnessFactory, op: StandInOP, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 mutated admin-URL deliveries per adapter: no 5xx, no traceback, the answer
    Keycloak's protocol gives; sessions end only as the accepted actions say."""
    caplog.set_level(logging.DEBUG, logger="kc_sso_middleware")
    harness = _assumed(make_harness(clock=_fixed_clock(pool.now), jwks_min_refresh_interval=0))
    control = harness.session_cookie(op, sid=CONTROL_SID, sub=CONTROL_SUB, auth_time=pool.now - 60)
    assert harness.seen_session(control) != {}
    rng = random.Random(f"{SEED}-admin-{harness.kind}")
    requests = admin_requests(pool, op, rng, ADMIN_REQUESTS)

    ledger = run_fuzz(harness, requests, lambda raw: judge_admin(raw, pool.keys, pool.now), caplog)

    assert ledger.accepted >= 50, "the fuzz reaches the accepting path"
    revoked = ledger.not_before > pool.now - 60
    assert (harness.seen_session(control) == {}) is revoked
    fresh = harness.session_cookie(
        op, sid="fresh-session", sub="fresh-user", auth_time=max(ledger.not_before, pool.now) + 5
    )
    assert harness.seen_session(fresh) != {}, "a session begun after every not-before works"


def frontchannel_query(rng: random.Random, issuer: str, own: Sequence[str]) -> bytes:
    """A query string for the front-channel page: well-formed, half-formed or garbled."""
    iss = quote(issuer, safe="")
    sid = rng.choice([*own, "fc-other-sid", "", "x" * 10_000, "\u00e9\u0000", "fc-sid-%ff"])
    q = quote(sid, safe="%").encode()
    choices = [
        b"iss=" + iss.encode() + b"&sid=" + q,
        b"sid=" + q + b"&iss=" + issuer.encode(),
        b"",
        b"iss=" + iss.encode(),
        b"sid=" + q,
        b"iss=" + quote(issuer + "/", safe="").encode() + b"&sid=" + q,
        b"iss=http%3A%2F%2Fevil.example&sid=" + q,
        b"iss=http%3A%2F%2Fevil.example&iss=" + iss.encode() + b"&sid=" + q,
        b"iss=&sid=" + q,
        b"iss=" + iss.encode() + b"&sid=",
        b"&".join([b"a=1"] * rng.choice((19, 20, 21, 200))),
        b"iss=" + iss.encode() + b";sid=" + q,
        b"iss=" + percent_encode(issuer.encode(), rng, 0.5) + b"&sid=" + q,
        rng.randbytes(rng.choice((1, 20, 200))),
        b"iss=" + iss.encode() + b"&sid=" + q + b"&" + b"x=" * 30,
        b"iss=" + iss.encode() + b"&sid=" + q + b"&sid=other",
    ]
    query = rng.choice(choices)
    return byte_mutation(query, rng) if rng.random() < 0.25 else query


def frontchannel_cookie(rng: random.Random, cookies: Sequence[str], name: str) -> list[bytes]:
    """Cookie headers: none, a real session, mutated, duplicated, quoted, garbage, several."""
    cookie = rng.choice(cookies).encode()
    n = name.encode()
    choices: list[list[bytes]] = [
        [],
        [n + b"=" + cookie],
        [n + b"=" + cookie, b"other=1"],
        [b"a=1; " + n + b"=" + cookie + b"; b=2"],
        [n + b"=" + byte_mutation(cookie, rng)],
        [n + b"=" + cookie + b"; " + n + b"=" + rng.choice(cookies).encode()],
        [n + b'="' + cookie + b'"'],
        [n + b"=" + cookie[: len(cookie) // 2]],
        [byte_mutation(n + b"=" + cookie, rng)],
        [rng.randbytes(rng.choice((1, 30, 300)))],
        [b'a="; ' + n + b"=" + cookie],
        [n + b"=\xff\xfe; x=\x00"],
        [n + b"=" + cookie + b" ; " + n + b"=" + b"x" * 5_000],
    ]
    return rng.choice(choices)


def frontchannel_requests(
    harness: Harness, op: StandInOP, rng: random.Random, count: int
) -> tuple[list[Raw], dict[bytes, str]]:
    """Front-channel requests, and the sid each unmutated session cookie header carries."""
    own = [f"fc-sid-{n}" for n in range(12)]
    cookies = [harness.session_cookie(op, sid=sid, sub=f"fc-user-{sid}") for sid in own]
    name = harness.settings.session_cookie
    sid_of = {f"{name}={c}".encode(): sid for c, sid in zip(cookies, own, strict=True)}
    out = []
    for _ in range(count):
        headers = tuple((b"cookie", value) for value in frontchannel_cookie(rng, cookies, name))
        method = "GET" if rng.random() < 0.97 else rng.choice(["POST", "PUT", "HEAD"])
        query = frontchannel_query(rng, op.issuer, own)
        out.append(Raw("frontchannel", method, FRONTCHANNEL, headers, query=query))
    return out, sid_of


def judge_frontchannel(
    raw: Raw,
    issuer: str,
    settings: tuple[bool, bool],
    sid_of: dict[bytes, str],
    name: str,
) -> Expect:
    """What OIDC Front-Channel Logout 1.0 §2-§3 (and this app's rate limit) allow, with
    ``settings`` (KC_SSO_FRONTCHANNEL_REVOKE_OTHERS, KC_SSO_FRONTCHANNEL_SESSION_REQUIRED)."""
    revoke_others, session_required = settings
    if raw.method != "GET":
        return refused("method_not_allowed", status=405)
    try:
        params = parse_qs(raw.query.decode("latin-1"), keep_blank_values=True, max_num_fields=20)
    except ValueError:
        return refused("bad_request")
    if len(params.get("iss", ())) > 1 or len(params.get("sid", ())) > 1:
        return refused("bad_request")  # which value counts would be a guess
    iss = params.get("iss", [None])[0]
    sid = params.get("sid", [None])[0]
    if (iss is None) != (sid is None):
        return refused("bad_request")
    if sid is None and session_required:
        return refused("session_required")  # naming nothing, any page could send it
    if iss is not None and iss != issuer:
        return refused("bad_iss")
    if sid is not None and (not sid or len(sid) > 255 or not sid.isprintable()):
        return refused("bad_sid")  # not a session id: bounded, as it is not authenticated
    cookies = [v for n, v in raw.headers if n == b"cookie"]
    own = sid_of.get(cookies[0]) if len(cookies) == 1 else None
    if own is not None and sid in (None, own):  # §3: the browser's own session ends
        return Expect(frozenset({200}), expires=name)
    if sid is not None and revoke_others:
        return Expect(frozenset({200, 429}), frozenset({"rate_limited"}))
    return Expect(frozenset({200}))


@pytest.mark.parametrize(
    ("revoke_others", "session_required"),
    [(False, True), (True, True), (False, False)],
    ids=["own session only", "revoke others", "no session required"],
)
def test_frontchannel_fuzz(
    revoke_others: bool,
    session_required: bool,
    make_harness: HarnessFactory,
    op: StandInOP,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,500 mutated front-channel requests per adapter and setting: no 5xx, no traceback,
    200 or the refusal the specification gives (429 only from the rate limit)."""
    caplog.set_level(logging.DEBUG, logger="kc_sso_middleware")
    harness = make_harness(
        frontchannel_path=FRONTCHANNEL,
        frontchannel_revoke_others=revoke_others,
        frontchannel_session_required=session_required,
    )
    control = harness.session_cookie(op, sid=CONTROL_SID, sub=CONTROL_SUB)
    assert harness.seen_session(control) != {}
    cookie_name = harness.settings.session_cookie
    rng = random.Random(f"{SEED}-frontchannel-{harness.kind}-{revoke_others}-{session_required}")
    requests, sid_of = frontchannel_requests(harness, op, rng, FRONTCHANNEL_REQUESTS // 2)

    ledger = run_fuzz(
        harness,
        requests,
        lambda raw: judge_frontchannel(
            raw, op.issuer, (revoke_others, session_required), sid_of, cookie_name
        ),
        caplog,
        page=True,
    )

    # With others revocable, most sids are other browsers' and meet the rate limit (its
    # burst is 20): fewer 200s, but still every kind of accepted request.
    assert ledger.accepted >= (20 if revoke_others else 100)
    assert harness.seen_session(control) != {}, "a session the fuzz never named still works"
