"""The URL options table: every option of every scheme parses, and every bad one is refused
at open time with a ConfigurationError naming it (no connection is made)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kc_sso_middleware.errors import ConfigurationError
from kc_sso_middleware.stores import open_store
from kc_sso_middleware.stores.options import OPTIONS, SCHEMES, parse_store_url

pytest.importorskip("redis", reason="the redis extra is not installed")

#: one valid URL per scheme, without options
BASE = {
    "memory": "memory://",
    "sqlite": "sqlite:///x.db",
    "redis": "redis://cache.example:6379/0",
    "rediss": "rediss://cache.example:6380/0",
    "unix": "unix:///run/redis.sock",
    "redis+sentinel": "redis+sentinel://s1:26379,s2/mymaster",
    "redis+cluster": "redis+cluster://n1:7000,n2:7001",
}

#: values each option must refuse
BAD = {
    "max_entries": ["0", "-1", "many", "1.5", ""],
    "ack_timeout": ["-1", "nan", "inf", "soon", "", "1e16"],
    "poll_interval": ["0", "-0.5", "nan", "inf", "1e300"],
    "busy_timeout": ["0", "-5", "1.5", "99999999999999999999"],
    "purge_interval": ["0", "nan", "1e300"],
    "prefix": [""],
    "stream_maxlen": ["0", "ten"],
    "wait_replicas": ["-1", "one", "0.5"],
    "repair_wait": ["-1", "nan", "inf", "1e300"],
    "socket_timeout": ["0", "-1", "nan", "1e300"],
    "socket_connect_timeout": ["0", "inf", "1e300"],
    "db": ["-1", "two"],
    "ssl": ["perhaps"],
    "ssl_cert_reqs": ["maybe", "REQUIRED!"],
    "ssl_ca_certs": ["/nonexistent/ca.pem"],
    "ssl_certfile": ["/nonexistent/client.pem"],
    "ssl_keyfile": ["/nonexistent/client.key"],
    "sentinel_password": [""],
}


def _url(scheme: str, query: str) -> str:
    base = BASE[scheme]
    if scheme == "redis+sentinel" and query.startswith("ssl_"):
        query = f"ssl=true&{query}"  # TLS options need TLS to the master
    return f"{base}?{query}"


def _cases() -> list[object]:
    return [
        pytest.param(
            _url(scheme, f"{option.name}={bad}"), option.name, id=f"{scheme}-{option.name}={bad}"
        )
        for option in OPTIONS
        for scheme in sorted(option.schemes)
        for bad in BAD[option.name]
    ]


def test_every_option_has_bad_values_to_try() -> None:
    """The table of bad values covers the whole options table."""
    assert set(BAD) == {option.name for option in OPTIONS}
    assert set(BASE) == set(SCHEMES)


@pytest.mark.parametrize(("url", "name"), _cases())
def test_out_of_range_option_is_refused_naming_it(url: str, name: str) -> None:
    """A value that does not parse or is out of range fails open_store, naming the option."""
    with pytest.raises(ConfigurationError, match=f"{name}="):
        open_store(url)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_unknown_option_is_refused_listing_the_accepted_ones(scheme: str) -> None:
    """An unknown option names itself and every option the scheme accepts."""
    with pytest.raises(ConfigurationError, match="unknown option 'bogus'") as raised:
        open_store(f"{BASE[scheme]}?bogus=1")
    listed = str(raised.value).split("accepted: ")[1].split(", ")
    assert listed == [option.name for option in OPTIONS if scheme in option.schemes]


@pytest.mark.parametrize(
    ("scheme", "name"),
    [
        pytest.param(scheme, option.name, id=f"{scheme}-{option.name}")
        for option in OPTIONS
        for scheme in sorted(set(SCHEMES) - option.schemes)
    ],
)
def test_option_of_another_scheme_is_refused(scheme: str, name: str) -> None:
    """An option the scheme does not take (poll_interval on Redis, TLS on plain redis://)."""
    with pytest.raises(ConfigurationError, match=re.escape(f"'{name}' for {scheme}://")):
        open_store(f"{BASE[scheme]}?{name}=1")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("redis://h/0?protocol=3", "protocol", id="protocol"),
        pytest.param("redis://h/0?password=x", "user part", id="password in the query"),
        pytest.param("redis+sentinel://s1/m?ssl_cert_reqs=none", "ssl=true", id="tls without ssl"),
        pytest.param("mongodb://h/0", "unsupported scheme", id="scheme"),
        pytest.param("memory://somewhere", "no host or path", id="memory location"),
        pytest.param("redis://h/zero", "database number", id="redis path"),
        pytest.param("redis://h/1?db=2", "given twice", id="two databases"),
    ],
)
def test_other_malformed_urls_name_the_problem(url: str, reason: str) -> None:
    """Refused options, schemes and locations say why."""
    with pytest.raises(ConfigurationError, match=reason):
        open_store(url)


def test_passwords_never_appear_in_messages() -> None:
    """Neither the URL's password nor the sentinel password is shown in an error."""
    for url in [
        "redis://:hunter2@h/0?bogus=1",
        "redis+sentinel://user:hunter2@s1/m?sentinel_password=s3cret&bogus=1",
        "redis+sentinel://:hunter2@s1/m?sentinel_password=",
    ]:
        with pytest.raises(ConfigurationError) as raised:
            open_store(url)
        assert "hunter2" not in str(raised.value)
        assert "s3cret" not in str(raised.value)


def test_defaults_and_given_values(tmp_path: Path) -> None:
    """Options not given take the table's defaults; given ones are typed; the last repeat wins."""
    parsed = parse_store_url("redis://h/0?stream_maxlen=5&stream_maxlen=7&socket_timeout=1.5")
    assert parsed.values["stream_maxlen"] == 7
    assert parsed.values["max_entries"] == 1_000_000
    assert parsed.redis_kwargs() == {"socket_timeout": 1.5, "socket_connect_timeout": 2.0}
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    tls = parse_store_url(f"rediss://h/0?ssl_cert_reqs=none&ssl_ca_certs={ca}&db=0")
    assert tls.redis_kwargs()["ssl_cert_reqs"] == "none"
    assert tls.redis_kwargs()["ssl_ca_certs"] == str(ca)
    assert tls.given == {"ssl_cert_reqs", "ssl_ca_certs", "db"}
    sentinel = parse_store_url("redis+sentinel://s1/m?ssl=yes&sentinel_password=pw")
    assert sentinel.values["ssl"] is True
    assert "sentinel_password" not in sentinel.redis_kwargs()


@pytest.mark.parametrize(
    "url",
    [
        # Generated passwords hold "/" (base64) or other reserved characters, and are
        # easily pasted unencoded.
        pytest.param("redis://:hunter/2@h/0?bogus=1", id="slash, option error"),
        pytest.param("redis://:hunter/2@h/0", id="slash, path error"),
        pytest.param("rediss://user:hunter/2@h:6380/0", id="slash, tls"),
        pytest.param("redis+sentinel://:hunter/2@s1/m", id="slash, sentinel"),
        pytest.param("redis+cluster://:hunter/2@n1:7000", id="slash, cluster"),
        pytest.param("redis://:hunter#2@h:6379/0", id="hash"),
        pytest.param("redis://user:hunter?2@h/0", id="question mark"),
        pytest.param("redis+cluster://u:hunter?2@n1:7000", id="question mark, cluster"),
    ],
)
def test_a_password_with_reserved_characters_is_never_shown(url: str) -> None:
    """A password pasted unencoded is refused with a ConfigurationError that hides it."""
    with pytest.raises(ConfigurationError) as raised:
        open_store(url)
    assert "hunter" not in str(raised.value)
    assert "2@" not in str(raised.value)


def test_a_store_description_never_shows_a_password_with_a_slash() -> None:
    """The description that every log line of the store carries hides the password too."""
    from kc_sso_middleware.stores.options import redact

    for url in ["unix://:hunter/2@/run/redis.sock", "redis://u:hunter/2@h/0"]:
        assert "hunter" not in redact(url)


def test_a_user_part_without_a_colon_is_redacted_whole() -> None:
    """``redis://s3cret@host``: a password written without its ``:`` is not shown."""
    from kc_sso_middleware.stores.options import redact

    assert redact("redis://hunter2@h:6379/0?prefix=a:") == "redis://***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379?prefix=app@1:",
        "redis://h:6379/0?prefix=app@1:",
        "redis+sentinel://s1:26379,s2:26380?prefix=a@b:",
        "unix:///run/redis@main.sock",
        "redis://:p@ss@h/0",
        "redis://:p%2Fss@h/0",
    ],
)
def test_an_at_sign_elsewhere_is_no_password(url: str) -> None:
    """An ``@`` in an option, a socket path or an encoded password is still accepted."""
    if url.startswith("redis+sentinel"):
        url = url.replace("?", "/m?")
    open_store(url).close()


@pytest.mark.parametrize(
    "option", ["busy_timeout=1_000", "poll_interval=\u0661", "ack_timeout=0_5"]
)
def test_a_number_option_is_plain_ascii_decimal(option: str) -> None:
    """As for the KC_SSO_* numbers: what int() and float() take beyond plain decimals
    ("1_000", other scripts' digits) is refused, naming the option."""
    with pytest.raises(ConfigurationError, match=option.partition("=")[0]):
        parse_store_url(f"sqlite:///revocations.db?{option}")
