"""Every ``KC_SSO_STORE`` URL option, in one table, parsed and checked once for every store.

A store URL is ``scheme://location?name=value&…``.  :func:`parse_store_url` checks the
scheme, then every option against :data:`OPTIONS`: an option the scheme does not accept,
a value that does not parse or is out of range (``memory://?max_entries=0``, a negative
or ``nan`` ``ack_timeout``, a TLS option on a plain connection) is a
:class:`~kc_sso_middleware.errors.ConfigurationError` naming the option, raised when the
store is opened and never later on a request.  A repeated option: the last one wins.

Options marked ``redis_kwarg`` are handed to redis-py as typed keyword arguments; the
store never passes anything to redis-py that this table has not checked, because a
keyword redis-py does not expect fails only at the first connection.  Passwords belong in
the URL's user part (``redis://:password@host``), which messages never show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from urllib.parse import SplitResult, parse_qs, urlsplit

from .._variable_checks import parse_float, parse_int
from ..errors import ConfigurationError

__all__ = [
    "OPTIONS",
    "SCHEMES",
    "Option",
    "StoreURL",
    "accepted",
    "default_of",
    "has_hash_tag",
    "parse_store_url",
    "redact",
]

T = TypeVar("T")

#: every scheme a store URL may have, and what it means
SCHEMES: Mapping[str, str] = {
    "memory": "memory:// (this process only)",
    "sqlite": "sqlite:////absolute/path.db or sqlite:///relative/path.db",
    "redis": "redis://[[user]:password@]host[:port][/db]",
    "rediss": "rediss://… (Redis over TLS)",
    "unix": "unix:///path/to/redis.sock?db=N",
    "redis+sentinel": (
        "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]"
    ),
    "redis+cluster": "redis+cluster://[[user]:password@]host[:port][,host[:port]…]",
}

_ALL = frozenset(SCHEMES)
_SHARED = _ALL - {"memory"}
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"})
#: Redis Cluster has only database 0
_SELECTABLE_DB = REDIS_SCHEMES - {"redis+cluster"}
_TLS = frozenset({"rediss", "redis+sentinel"})
#: defaults that differ for one scheme (the table's default holds for the others)
_SCHEME_DEFAULTS: Mapping[str, Mapping[str, object]] = {
    "redis+cluster": {"prefix": "{kcsso}:", "wait_replicas": 1},
}


@dataclass(frozen=True)
class Option(Generic[T]):
    """One URL option: how it parses, its default, its range, and who accepts it."""

    name: str
    parse: Callable[[str], T]
    #: the value when the URL does not give one; ``None``: the library's own default
    default: T | None
    #: whether a parsed value is in range, and the words for the range ("a positive number")
    check: Callable[[T], bool]
    expected: str
    meaning: str
    schemes: frozenset[str]
    #: passed to redis-py as a keyword argument of the same name
    redis_kwarg: bool = False
    #: never shown in messages
    secret: bool = False


def _integer(raw: str) -> int:
    return parse_int(raw.strip())


def _number(raw: str) -> float:
    return parse_float(raw.strip())


def _text(raw: str) -> str:
    return raw


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _positive(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def _non_negative(value: float) -> bool:
    return value >= 0 and math.isfinite(value)


#: the longest any timeout or interval may be (a day): larger values are typing errors,
#: and values far larger fail only later, at the first connection or write (a socket
#: timeout beyond time_t, a PEXPIRE out of range, a repair wait without end)
MAX_SECONDS = 86400.0


def _seconds(value: float) -> bool:
    return _positive(value) and value <= MAX_SECONDS


def _seconds_or_zero(value: float) -> bool:
    return _non_negative(value) and value <= MAX_SECONDS


def _milliseconds(value: float) -> bool:
    return _positive(value) and value <= MAX_SECONDS * 1000


def _non_empty(value: str) -> bool:
    return bool(value)


def _any(_value: object) -> bool:
    return True


def _cert_reqs(value: str) -> bool:
    return value in {"none", "optional", "required"}


def _is_file(value: str) -> bool:
    return os.path.isfile(value)


MAX_ENTRIES = Option(
    "max_entries",
    _integer,
    1_000_000,
    _positive,
    "a positive whole number",
    "entries a worker's replica holds before unauthenticated writes (front-channel "
    "logouts) are refused with StoreFullError; authenticated ones are always stored",
    _ALL,
)
ACK_TIMEOUT = Option(
    "ack_timeout",
    _number,
    1.0,
    _seconds_or_zero,
    "a non-negative number of seconds, at most 86400",
    "seconds record() waits for every live worker to apply a write (0: do not wait)",
    _SHARED,
)
POLL_INTERVAL = Option(
    "poll_interval",
    _number,
    0.01,
    _seconds,
    "a positive number of seconds, at most 86400",
    "seconds between a follower's checks for new rows",
    frozenset({"sqlite"}),
)
BUSY_TIMEOUT = Option(
    "busy_timeout",
    _integer,
    5000,
    _milliseconds,
    "a positive whole number of milliseconds, at most 86400000",
    "milliseconds a write waits for another writer's lock",
    frozenset({"sqlite"}),
)
PURGE_INTERVAL = Option(
    "purge_interval",
    _number,
    60.0,
    _seconds,
    "a positive number of seconds, at most 86400",
    "seconds between deletions of expired rows",
    frozenset({"sqlite"}),
)
PREFIX = Option(
    "prefix",
    _text,
    "kcsso:",
    _non_empty,
    "a non-empty string",
    "prefix of every key; for Redis Cluster it must hold a {hash tag} (default {kcsso}:), "
    "so that every key is in one slot",
    REDIS_SCHEMES,
)
STREAM_MAXLEN = Option(
    "stream_maxlen",
    _integer,
    10_000,
    _positive,
    "a positive whole number",
    "messages the change feed keeps (a follower further behind resyncs)",
    REDIS_SCHEMES,
)
SOCKET_TIMEOUT = Option(
    "socket_timeout",
    _number,
    5.0,
    _seconds,
    "a positive number of seconds, at most 86400",
    "seconds a Redis command may take",
    REDIS_SCHEMES,
    redis_kwarg=True,
)
SOCKET_CONNECT_TIMEOUT = Option(
    "socket_connect_timeout",
    _number,
    2.0,
    _seconds,
    "a positive number of seconds, at most 86400",
    "seconds a connection attempt may take",
    REDIS_SCHEMES,
    redis_kwarg=True,
)
WAIT_REPLICAS = Option(
    "wait_replicas",
    _integer,
    0,
    _non_negative,
    "a non-negative whole number",
    "replicas a write must reach (Redis WAIT, within ack_timeout) before it is confirmed; "
    "fewer is a failed write (503); default 1 for redis+cluster://, else 0",
    REDIS_SCHEMES,
)
REPAIR_WAIT = Option(
    "repair_wait",
    _number,
    3.0,
    _seconds_or_zero,
    "a non-negative number of seconds, at most 86400",
    "seconds a starting worker waits, when Redis has been up for less than that and holds "
    "none of this store's keys, for a surviving worker to write back what Redis lost",
    REDIS_SCHEMES,
)
DB = Option(
    "db",
    _integer,
    None,
    _non_negative,
    "a non-negative whole number",
    "Redis database number (also the URL path's last segment)",
    _SELECTABLE_DB,
    redis_kwarg=True,
)
SSL = Option(
    "ssl",
    _boolean,
    None,
    _any,
    "true or false",
    "TLS to the master that Sentinel names",
    frozenset({"redis+sentinel"}),
    redis_kwarg=True,
)
SSL_CERT_REQS = Option(
    "ssl_cert_reqs",
    _text,
    None,
    _cert_reqs,
    "none, optional or required",
    "whether the server's TLS certificate is verified (default required)",
    _TLS,
    redis_kwarg=True,
)
SSL_CA_CERTS = Option(
    "ssl_ca_certs",
    _text,
    None,
    _is_file,
    "an existing file",
    "CA certificates (PEM) the server's certificate is verified against",
    _TLS,
    redis_kwarg=True,
)
SSL_CERTFILE = Option(
    "ssl_certfile",
    _text,
    None,
    _is_file,
    "an existing file",
    "client certificate (PEM) for mutual TLS",
    _TLS,
    redis_kwarg=True,
)
SSL_KEYFILE = Option(
    "ssl_keyfile",
    _text,
    None,
    _is_file,
    "an existing file",
    "private key (PEM) of the client certificate",
    _TLS,
    redis_kwarg=True,
)
SENTINEL_PASSWORD = Option(
    "sentinel_password",
    _text,
    None,
    _non_empty,
    "a non-empty string",
    "password of the sentinels themselves (the master's is in the URL)",
    frozenset({"redis+sentinel"}),
    secret=True,
)

#: the table: every option any store accepts
OPTIONS: tuple[Option[Any], ...] = (
    MAX_ENTRIES,
    ACK_TIMEOUT,
    POLL_INTERVAL,
    BUSY_TIMEOUT,
    PURGE_INTERVAL,
    PREFIX,
    STREAM_MAXLEN,
    WAIT_REPLICAS,
    REPAIR_WAIT,
    SOCKET_TIMEOUT,
    SOCKET_CONNECT_TIMEOUT,
    DB,
    SSL,
    SSL_CERT_REQS,
    SSL_CA_CERTS,
    SSL_CERTFILE,
    SSL_KEYFILE,
    SENTINEL_PASSWORD,
)
_BY_NAME = {option.name: option for option in OPTIONS}

# Options some users will try, refused with the reason rather than as merely unknown.
_REFUSED = {
    "protocol": "the store speaks RESP2 on its own connections; the protocol option is "
    "not supported",
    "password": "put the password in the URL's user part: redis://:password@host",
    "username": "put the user name in the URL's user part: redis://user:password@host",
}

_TLS_OPTIONS = frozenset(o.name for o in OPTIONS if o.name.startswith("ssl_"))


@dataclass(frozen=True)
class StoreURL:
    """A store URL whose scheme and options have been checked."""

    #: the URL as given (with its password: never put it in a message)
    url: str
    scheme: str
    parts: SplitResult
    #: every option the scheme accepts that has a value (given, or its default)
    values: Mapping[str, object]
    #: the options the URL itself gave
    given: frozenset[str]

    def __getitem__(self, option: Option[T]) -> T:
        return cast(T, self.values[option.name])

    def get(self, option: Option[T]) -> T | None:
        return cast("T | None", self.values.get(option.name))

    @property
    def redacted(self) -> str:
        """The URL without its password or query, for messages."""
        return redact(self.url)

    @property
    def without_query(self) -> str:
        """The URL without its query (and fragment), as redis-py is given it."""
        return self.url.partition("#")[0].partition("?")[0]

    def redis_kwargs(self) -> dict[str, object]:
        """The redis-py keyword arguments these options give (with our defaults)."""
        return {
            option.name: self.values[option.name]
            for option in OPTIONS
            if option.redis_kwarg and option.name in self.values
        }


def default_of(option: Option[T]) -> T:
    """The default of an option that has one (for constructors' keyword defaults)."""
    if option.default is None:
        raise LookupError(f"{option.name} has no default")
    return option.default


def _user_part_end(rest: str) -> int:
    """Where the user part of a URL's text after ``://`` ends (its last ``@``), or -1.

    A password pasted unencoded may hold ``/``, ``?``, ``#`` or ``@``, so the user part is
    not cut at the first of those: it runs to the last ``@`` before the query, or, when
    a ``?`` comes before any ``/`` and not after a port (a ``?`` inside the location),
    to the last ``@`` at all.
    """
    query = rest.find("?")
    at = rest.rfind("@", 0, len(rest) if query < 0 else query)
    if at < 0 and query >= 0:
        location = rest[:query]
        if "/" not in location and not location.rpartition(":")[2].isdigit():
            at = rest.rfind("@")
    return at


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` and its query dropped.

    A user part without a ``:`` is redacted whole: redis-py reads it as a user name, but
    it is as often a password written without the ``:`` before it (``redis://s3cret@h``),
    which an error message about the failing login would otherwise show.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.partition("?")[0]
    at = _user_part_end(rest)
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[:at].partition(':')[0]}:***{rest[at:]}"
    elif at >= 0:
        rest = f"***{rest[at:]}"
    return f"{scheme}://{rest}".partition("#")[0].partition("?")[0]


def _unencoded_password(url: str, parts: SplitResult) -> bool:
    """Whether ``url`` has a password that holds ``/``, ``?`` or ``#`` unencoded (the
    parsed location then stops inside it)."""
    rest = url.partition("://")[2]
    at = _user_part_end(rest)
    netloc = parts.netloc
    return (
        at >= 0
        and ":" in rest[:at]
        and "@" not in netloc
        and not netloc.rpartition(":")[2].isdigit()  # host:port: the "@" is further on
    )


def has_hash_tag(prefix: str) -> bool:
    """Whether every key starting with ``prefix`` hashes to one Redis Cluster slot: the
    prefix holds a ``{`` followed by a ``}`` with at least one character between them."""
    opening = prefix.find("{")
    closing = prefix.find("}", opening + 1)
    return opening >= 0 and closing > opening + 1


def accepted(scheme: str) -> list[Option[Any]]:
    """The options ``scheme`` accepts, in table order."""
    return [option for option in OPTIONS if scheme in option.schemes]


def parse_store_url(url: str, *, schemes: frozenset[str] = _ALL) -> StoreURL:
    """Check ``url``'s scheme (one of ``schemes``) and options; raise ConfigurationError."""
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in schemes:
        forms = "; ".join(SCHEMES[s] for s in SCHEMES if s in schemes)
        raise ConfigurationError(
            f"KC_SSO_STORE={shown!r} has an unsupported scheme {parts.scheme!r}; accepted: {forms}"
        )
    if _unencoded_password(url, parts):
        raise ConfigurationError(
            f"KC_SSO_STORE={shown!r}: the password holds '/', '?' or '#'; percent-encode "
            "it in the URL (/ as %2F, ? as %3F, # as %23)"
        )
    own = accepted(parts.scheme)
    query = parse_qs(parts.query, keep_blank_values=True)
    values: dict[str, object] = {o.name: o.default for o in own if o.default is not None}
    for name, raws in query.items():
        option = _BY_NAME.get(name)
        if option is None or parts.scheme not in option.schemes:
            why = f" ({_REFUSED[name]})" if name in _REFUSED else ""
            raise ConfigurationError(
                f"KC_SSO_STORE={shown!r}: unknown option {name!r} for {parts.scheme}://{why}; "
                f"accepted: {', '.join(o.name for o in own)}"
            )
        raw = raws[-1]
        shown_raw = "***" if option.secret else repr(raw)
        try:
            value = option.parse(raw)
        except ValueError:
            ok = False
        else:
            ok = option.check(value)
        if not ok:
            raise ConfigurationError(
                f"KC_SSO_STORE={shown!r}: {name}={shown_raw} must be {option.expected} "
                f"({option.meaning})"
            )
        values[name] = value
    given = frozenset(query)
    for name, value in _SCHEME_DEFAULTS.get(parts.scheme, {}).items():
        if name not in given:
            values[name] = value
    if parts.scheme == "redis+cluster" and not has_hash_tag(str(values["prefix"])):
        raise ConfigurationError(
            f"KC_SSO_STORE={shown!r}: prefix={values['prefix']!r} has no hash tag; Redis "
            "Cluster needs every key of the store in one slot, so the prefix must contain "
            "a non-empty {tag}, e.g. prefix={kcsso}:"
        )
    if parts.scheme == "redis+sentinel" and given & _TLS_OPTIONS and not values.get("ssl"):
        raise ConfigurationError(
            f"KC_SSO_STORE={shown!r}: {', '.join(sorted(given & _TLS_OPTIONS))} need ssl=true "
            "(the connection to the master is not TLS otherwise)"
        )
    return StoreURL(url, parts.scheme, parts, values, given)
