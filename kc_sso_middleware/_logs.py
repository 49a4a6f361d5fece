"""Logging without leaking or forging: untrusted text escaped, session ids tagged.

* :func:`untrusted` makes any value from a request safe to interpolate into a log line:
  control characters (CR, LF and the rest) are escaped, so a crafted ``sid`` cannot start
  a forged line, and long values are cut.
* :class:`Tagger` turns a ``sid``, ``sub`` or ``sid#jti`` key into a short keyed hash,
  stable across the workers and hosts of one deployment (the key derives from the session
  secret), so log lines can be correlated without writing session ids at INFO or above.

Tokens and secrets are never logged at all.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["Tagger", "log_safe", "untrusted"]

# C0, DEL and every C1 control: NEL (U+0085) ends a line, and CSI (U+009B) is ANSI's one-
# character escape, which terminals and log viewers act on like ESC [.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029", ord("\\"): "\\\\"})
_LIMIT = 120


def untrusted(value: object, limit: int = _LIMIT) -> str:
    """``value`` as text fit for a log line: escaped, at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}…({len(text)} chars)"
    return text.translate(_ESCAPES)


_CONTROLS = frozenset(chr(code) for code in _ESCAPES if code != ord("\\"))
_FIELD_LIMIT = 1000


def log_safe(value: object) -> object:
    """An event field as a log line may show it: a string with control characters, or
    longer than a log line should hold, goes through :func:`untrusted`; anything else
    (including text :func:`untrusted` already escaped) is left as it is."""
    if isinstance(value, str) and (len(value) > _FIELD_LIMIT or not _CONTROLS.isdisjoint(value)):
        return untrusted(value, _FIELD_LIMIT)
    return value


class Tagger:
    """Short keyed hashes of session identifiers, for logs and events."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"kc-sso-log-tag\x00" + secret.encode()).digest()

    def tag(self, value: str | None) -> str | None:
        """A 12-character tag of ``value`` (``None`` stays ``None``)."""
        if value is None:
            return None
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:12]
