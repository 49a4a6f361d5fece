"""Parsers and checks for the ``KC_SSO_*`` variable table (:mod:`._variables`).

A parser turns the environment's text into a field value (``ValueError`` when it cannot);
a check looks at a field value however it was made and names what is wrong with it.
"""

from __future__ import annotations

import math
import re
from urllib.parse import SplitResult, urlsplit

__all__ = ["ADMIN_ACTION_NAMES", "ASYMMETRIC_ALGORITHMS"]  # and the parse_* and check_* functions

#: the legacy admin protocol's paths below ``KC_SSO_ADMIN_PATH`` (the keys of
#: ``core.admin.ADMIN_ACTIONS``, which a test keeps equal): Settings refuses a served
#: path equal to one of them
ADMIN_ACTION_NAMES = ("k_logout", "k_push_not_before", "k_test_available")

#: Signature algorithms a logout token may use.  Asymmetric only: an OP's JWKS holds public
#: keys, and accepting HMAC would let anyone holding the public key forge tokens (RFC 8725 §3.1).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

# --------------------------------------------------------------------------- parsers


def parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("not a boolean")


# Plain ASCII decimals only: Python's int() and float() also take "1_000", digits of other
# scripts ("١٢") and, for floats, "nan" and "infinity", none of which a reader of the
# setting would take for the number the middleware then uses.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_int(raw: str) -> int:
    if not _INTEGER.fullmatch(raw):
        raise ValueError("not a decimal integer")
    return int(raw)


def parse_float(raw: str) -> float:
    if not _DECIMAL.fullmatch(raw):
        raise ValueError("not a decimal number")
    return float(raw)


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_optional_path(raw: str) -> str | None:
    return None if raw.lower() == "off" else raw


def parse_choice(raw: str) -> str:
    # Variable.parse_raw checks the lowered value against the variable's choices.
    return raw.lower()


# --------------------------------------------------------------------------- checks


def _split(value: str) -> SplitResult | None:
    """``urlsplit(value)``, or None where it raises (``http://[::1``: a bad IPv6 host),
    so that a bad URL is a ConfigurationError naming the variable, not a bare ValueError."""
    try:
        return urlsplit(value)
    except ValueError:
        return None


def check_string(value: object) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def check_optional_string(value: object) -> str | None:
    return None if value is None else check_string(value)


def check_bool(value: object) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, got {value!r}"


def check_strings(value: object) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        return f"must be a tuple of non-empty strings, got {value!r}"
    return None


def _url_problem(value: object, what: str) -> str | None:
    """What keeps ``value`` from being an absolute http(s) URL of ``what`` kind, or None.

    Credentials are refused and never echoed: the URL would reach ``repr(settings)``,
    logs and Keycloak.  A fragment is never sent to a server, a bad port or a blank makes
    every request fail: each would be a setting that silently cannot work.
    """
    if not isinstance(value, str):
        return "must be a string"
    # anything with an '@' may hold a password: never shown
    got = "" if "@" in value else f", got {value!r}"
    parts = _split(value)
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"must be an absolute http(s) URL{got}"
    if "@" in parts.netloc:
        return "must not hold credentials (user:password@)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"has a bad port{got}"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return f"must not hold blanks or control characters{got}"
    if "#" in value:
        return f"must not have a fragment ({what}){got}"
    return None


def check_url(value: object) -> str | None:
    problem = _url_problem(value, "the issuer is compared exactly")
    if problem is not None:
        return problem
    assert isinstance(value, str)
    if "?" in value:
        # discovery is {issuer}/.well-known/openid-configuration: a query would swallow it
        return f"must not have a query (the issuer is compared exactly), got {value!r}"
    if value.endswith("/"):
        return f"must not end with '/' (the issuer is compared exactly), got {value!r}"
    return None


def check_optional_url(value: object) -> str | None:
    # Its origin is the app's public origin (RedirectGuard.public_origin): it needs a host.
    # A fragment may stay (a single-page app's route, e.g. https://app/#/logged-out): the
    # browser keeps it across the redirect, and no server ever compares it.
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string"
    return _url_problem(value.partition("#")[0], "")


def check_nonempty(value: object) -> str | None:
    return None if isinstance(value, str) and value else "must not be empty"


def check_path(value: object) -> str | None:
    """A path the middleware serves: compared exactly with the request's decoded path
    (ASGI ``path``, WSGI ``PATH_INFO``), so one no request path can equal is refused
    rather than left as a route that silently never answers."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        return f"must start with '/', got {value!r}"
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "?#%" for ch in value):
        # A query or fragment is not part of a request's path; the path is compared
        # decoded, so '%' escapes never match.  Text beyond ASCII is fine: both adapters
        # compare it decoded as UTF-8, as the frameworks route it.
        return (
            "must be a plain decoded path: no '?', '#', '%' escapes, blanks or control "
            f"characters, got {value!r}"
        )
    if "//" in value or any(segment in (".", "..") for segment in value.split("/")):
        # browsers and proxies resolve dot segments and often merge '//' before the
        # request reaches the app
        return f"must have no '//', '.' or '..' segment, got {value!r}"
    return None


#: RFC 6265 §4.1.1: a cookie name is an RFC 2616 token
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_cookie_name(value: object) -> str | None:
    # A name with a blank, '=', ';' or ',' could never be read back from a Cookie header:
    # no session would ever be found, so none ever revoked.
    if not isinstance(value, str) or not value or not set(value) <= _TOKEN:
        return f"must be an RFC 6265 cookie name (letters, digits, !#$%&'*+-.^_`|~), got {value!r}"
    return None


def _cookie_attribute_problem(value: str) -> str | None:
    # Written verbatim into the expiring Set-Cookie header: a ';' would add attributes,
    # CR/LF would split the header.
    if not value.isascii() or any(ch.isspace() or ord(ch) < 0x20 or ch in ";," for ch in value):
        return f"must hold no ';', ',', blanks, control or non-ASCII characters, got {value!r}"
    return None


def check_cookie_path(value: object) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        return f"must start with '/', got {value!r}"
    return _cookie_attribute_problem(value)


def check_cookie_domain(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return f"must be a domain, got {value!r}"
    return _cookie_attribute_problem(value)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(value: object) -> str | None:
    if not is_number(value) or value <= 0:  # type: ignore[operator]
        return f"must be a positive number, got {value!r}"
    return None


def check_non_negative(value: object) -> str | None:
    if not is_number(value) or value < 0:  # type: ignore[operator]
        return f"must be zero or more, got {value!r}"
    return None


def check_optional_positive(value: object) -> str | None:
    return None if value is None else check_positive(value)


def check_algorithms(value: object) -> str | None:
    if not isinstance(value, tuple) or not value:
        return "must name at least one algorithm"
    unknown = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
    if unknown:
        return (
            f"names {unknown}: only asymmetric algorithms are allowed "
            "('none' and HMAC never are, RFC 8725 §3.1-3.2)"
        )
    return None


def check_origins(value: object) -> str | None:
    if not isinstance(value, tuple):
        return "must be a tuple of URLs"
    for entry in value:
        if not isinstance(entry, str):
            return f"has {entry!r}, which is not a URL"
        problem = _url_problem(entry, "it would be ignored")
        if problem is None and "?" in entry:
            # RedirectGuard compares scheme, host and path: https://a.example?x would
            # allow every path of a.example, not what it says
            problem = "must not have a query (entries are origins or path prefixes)"
        if problem is not None:
            shown = f"{entry!r}, which" if "@" not in entry else "an entry that"
            return f"has {shown} is not an origin or URL prefix: {problem}"
    return None


def check_store(value: object) -> str | None:
    if not isinstance(value, str) or "://" not in value:
        # not echoed: a typo before "://" keeps the password from being recognised and
        # redacted (stores.options.redact), e.g. redis//:password@host
        return "must be a store URL (scheme://...)"
    scheme = value.split("://", 1)[0]
    if scheme not in {
        "memory",
        "sqlite",
        "redis",
        "rediss",
        "redis+sentinel",
        "redis+cluster",
        "unix",
    }:
        return f"has unknown scheme {scheme!r}"
    return None
