"""Parsers and checks for the ``KC_SSO_*`` variable table (:mod:`._variables`).

A parser turns the environment's text into a field value (``ValueError`` when it cannot);
a check looks at a field value however it was made and names what is wrong with it.
"""

from __future__ import annotations

import math
from urllib.parse import SplitResult, urlsplit

__all__ = ["ASYMMETRIC_ALGORITHMS"]  # and the parse_* and check_* functions

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


def parse_int(raw: str) -> int:
    return int(raw)


def parse_float(raw: str) -> float:
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


def check_url(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    parts = _split(value)
    if parts is None or parts.scheme not in {"http", "https"} or not parts.netloc:
        return f"must be an absolute http(s) URL, got {value!r}"
    if value.endswith("/"):
        return f"must not end with '/' (the issuer is compared exactly), got {value!r}"
    return None


def check_optional_url(value: object) -> str | None:
    if value is None:
        return None
    parts = _split(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in {"http", "https"}:
        return f"must be an absolute http(s) URL, got {value!r}"
    return None


def check_nonempty(value: object) -> str | None:
    return None if isinstance(value, str) and value else "must not be empty"


def check_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        return f"must start with '/', got {value!r}"
    return None


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
        parts = _split(entry)
        if parts is None or parts.scheme not in {"http", "https"} or not parts.netloc:
            return f"has {entry!r}, which is not an absolute http(s) URL or origin"
    return None


def check_store(value: object) -> str | None:
    if not isinstance(value, str) or "://" not in value:
        return f"must be a store URL, got {value!r}"
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
