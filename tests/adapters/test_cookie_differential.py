"""A differential fuzzer: the framework's own parser never reads a revoked session back.

Cookie headers are built around a revoked session cookie (and a valid one, in either
order): duplicates of the name, quoted and escaped values (``\\054`` octal, backslashes),
whitespace of every kind (spaces, tabs, ``\\x0b``, ``\\x0c``, ``\\xa0``, ``\\x85``), empty
segments, ``,`` separators, ``$Version`` attributes, names alike (``Session``,
``xsession``, ``session_``), several Cookie headers (ASGI keeps repeats, HTTP/2 splits
cookies; a WSGI server joins them with ``;`` or ``,``), latin-1 and UTF-8 bytes, long
values.  Each header goes through a real adapter around a small app of its framework, and
what the app then reads is asked of the framework's own parser:

* the ASGI adapter around Starlette with ``SessionMiddleware`` (Starlette's
  ``cookie_parser`` per Cookie header, as ``HTTPConnection.cookies`` reads them; Django's
  ``parse_cookie`` of the headers joined as Django's ASGI handler joins them),
* the WSGI adapter around Flask (``werkzeug.sansio.http.parse_cookie``, what
  ``request.cookies`` is),
* the server-side sources: Flask-Session (cachelib) and starsessions (memory store).

Checked for every case holding the revoked session: the app's session is not the revoked
one, and no value the parser reads under the name is the revoked one or any value the
middleware did not verify (server-side: the value the library reads is not the revoked
id).  For every case holding only the valid session in a form the parser reads as it, the
app gets that session.  Deterministic (fixed seed), a few thousand cases, seconds.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from flask import Flask, request, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request, cookie_parser
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kc_sso_middleware import Revocation
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.stores import MemoryStore
from kc_sso_middleware.testing import StandInOP, make_session_cookie, mint_jwt
from tests.conftest import CLIENT_ID, SESSION_SECRET, make_settings

SEED = 0x5E55_10C0
CASES = 900  # per deployment (4 deployments, each with negative and positive cases)
NAME = "session"
REVOKED_SID = "fuzz-revoked"
VALID_SID = "fuzz-valid"

# -- the header generator --------------------------------------------------------------

_SPACES = [" ", "  ", "\t", "\x0b", "\x0c", "\xa0", "\x85", "\x1f", "\r"]
_NAMES = [NAME] * 6 + [
    f" {NAME}",
    f"\t{NAME}",
    f"{NAME} ",
    f"{NAME}\t",
    f"\x0b{NAME}",
    f"{NAME}\x0c",
    f"\xa0{NAME}",
    f"{NAME}\xa0",
    f"\x85{NAME}",
    "Session",
    "SESSION",
    f"x{NAME}",
    f"{NAME}_",
    f"${NAME}",
    f'"{NAME}"',
    f"{NAME[:3]}\\{NAME[3:]}",
]
_NOISE = [
    "a=1",
    "theme=dark",
    "$Version=1",
    '$Version="1"',
    "$Path=/",
    "",
    " ",
    "\t",
    '"',
    'q="open',
    'q="x;y"',
    'q="a\\"b"',
    'q="\\"',
    "q=\\",
    "flag",
    "=bare",
    "u=\xe9t\xe9",
    "u8=\xc3\xa9t\xc3\xa9",  # UTF-8 bytes, read as latin-1 text
    "ctl=\x01\x7f",
    "p=" + "x" * 5000,
    "c=1,d=2",
    "csrftoken=abc",
    f"{NAME}x=1",
    f"x{NAME}=2",
    f"{NAME}_id=3",
]
_SEPARATORS = [";", "; ", " ; ", ";\t", ";;", "; ;", ",", ", ", ";\x0b", ";\xa0"]


def _octal(ch: str) -> str:
    return f"\\{ord(ch):03o}"


def _value_forms(value: str, rng: random.Random) -> str:
    """One way of writing ``value`` that some parser may read as ``value`` (or not)."""
    i = rng.randrange(len(value))
    forms = [
        value,
        value,
        value,
        f'"{value}"',
        f'"{value[:i]}{_octal(value[i])}{value[i + 1 :]}"',
        f'"{_octal(value[0])}{value[1:]}"',
        f'"{value[:i]}\\{value[i:]}"',
        f'"{value[:i]}\\054{value[i:]}"',
        f'"{value}',
        f'{value}"',
        f"{rng.choice(_SPACES)}{value}",
        f"{value}{rng.choice(_SPACES)}",
        f"{rng.choice(_SPACES)}{value}{rng.choice(_SPACES)}",
        f'"{rng.choice(_SPACES)}{value}"',
        f"{value},x=1",
        f"{value[:i]}\\{value[i:]}",
        f"{value}{'A' * rng.choice([1, 64, 4000])}",
        f"{value[:i]}\xe9{value[i:]}",
        f"{value}\xc3\xa9",
        "",
        '""',
    ]
    return rng.choice(forms)


def _pair(value: str, rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    equals = rng.choice(["="] * 6 + [" =", "= ", " = ", "\t=", "=\t", "==", "\xa0="])
    return f"{name}{equals}{_value_forms(value, rng)}"


def _headers(values: list[str], rng: random.Random) -> list[str]:
    """Cookie headers holding a pair for each of ``values`` among noise, 1 to 4 of them."""
    segments = [_pair(value, rng) for value in values]
    for _ in range(rng.randrange(4)):
        segments.insert(rng.randrange(len(segments) + 1), rng.choice(_NOISE))
    if rng.random() < 0.25:  # the plain, browser-like form, sometimes
        segments = [f"{NAME}={values[0]}", *rng.sample(_NOISE[:2], rng.randrange(2))]
    count = 1 if rng.random() < 0.55 else rng.randint(2, min(4, len(segments) + 1))
    headers: list[list[str]] = [[] for _ in range(count)]
    for index, segment in enumerate(segments):
        headers[index % count if rng.random() < 0.5 else rng.randrange(count)].append(segment)
    out = []
    for parts in headers:
        text = ""
        for index, part in enumerate(parts):
            text += (rng.choice(_SEPARATORS) if index else "") + part
        if rng.random() < 0.1:
            text = rng.choice([";", " ", "; "]) + text
        if rng.random() < 0.1:
            text += rng.choice([";", " ", "; ", ";;"])
        out.append(text)
    return out


@dataclass(frozen=True)
class Case:
    headers: list[str]
    revoked: bool  # whether the revoked value is in it (else only the valid one)


def _cases(valid: str, revoked: str, rng: random.Random, count: int) -> Iterator[Case]:
    for _ in range(count):
        kind = rng.random()
        if kind < 0.55:  # the revoked one, maybe duplicated, maybe next to the valid one
            values = [revoked] * rng.randint(1, 2)
            if rng.random() < 0.6:
                values.insert(rng.randrange(len(values) + 1), valid)
            yield Case(_headers(values, rng), revoked=True)
        else:  # only the valid one
            yield Case(_headers([valid] * rng.randint(1, 2), rng), revoked=False)


# -- the frameworks' own readings ------------------------------------------------------


def starlette_values(headers: list[str]) -> list[str]:
    """Every value Starlette's parser reads under the name (HTTPConnection.cookies parses
    each Cookie header in turn, each ";" chunk on its own)."""
    return [
        parsed[NAME]
        for header in headers
        for chunk in header.split(";")
        if NAME in (parsed := cookie_parser(chunk))
    ]


def starlette_chosen(headers: list[str]) -> str | None:
    cookies: dict[str, str] = {}
    for header in headers:
        cookies.update(cookie_parser(header))
    return cookies.get(NAME)


def django_values(headers: list[str]) -> list[str]:
    """Django's parse_cookie of the headers joined as Django's ASGI handler joins them."""
    from django.http.cookie import parse_cookie

    return [
        parsed[NAME]
        for chunk in ",".join(headers).split(";")
        if NAME in (parsed := parse_cookie(chunk))
    ]


def werkzeug_values(header: str | None) -> list[str]:
    """Every value ``request.cookies`` (Werkzeug's parser) holds under the name."""
    from werkzeug.sansio.http import parse_cookie

    found: list[str] = parse_cookie(header).getlist(NAME)
    return found


def werkzeug_chosen(header: str | None) -> str | None:
    values = werkzeug_values(header)
    return values[0] if values else None


# -- deployments -------------------------------------------------------------------------


@dataclass
class Seen:
    """What the app saw: its session, and the Cookie headers it was handed."""

    session: dict[str, Any]
    cookies: list[str]


def _id_token(op: StandInOP, sid: str) -> str:
    now = int(time.time())
    claims = {"iss": op.issuer, "aud": CLIENT_ID, "sub": f"user-{sid}", "sid": sid}
    return mint_jwt(op.key, {**claims, "iat": now, "exp": now + 300, "auth_time": now})


def _revoked_store(op: StandInOP) -> MemoryStore:
    store = MemoryStore()
    store.record(
        [
            Revocation.session(
                op.issuer, REVOKED_SID, client_id=CLIENT_ID, expires_at=time.time() + 3600
            )
        ]
    )
    return store


def _scope(headers: list[bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"app.test"), *[(b"cookie", h) for h in headers]],
        "client": ("127.0.0.1", 1234),
        "server": ("app.test", 80),
    }


class AsgiDeployment:
    """The ASGI adapter around a Starlette app; every request on one event loop."""

    def __init__(self, app: Any, seen: list[Seen]) -> None:
        self.app = app
        self.seen = seen
        self.loop = asyncio.new_event_loop()

    def send(self, headers: list[str]) -> tuple[int, Seen]:
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        self.seen.clear()
        raw = [h.encode("latin-1") for h in headers]
        self.loop.run_until_complete(self.app(_scope(raw), receive, send))
        return status[0], (self.seen[0] if self.seen else Seen({}, []))

    def close(self) -> None:
        self.loop.close()


def _environ(header: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "app.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "app.test",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if header is not None:
        environ["HTTP_COOKIE"] = header
    return environ


class WsgiDeployment:
    """The WSGI adapter around a Flask app; several Cookie headers joined as servers do."""

    def __init__(self, app: Flask, seen: list[Seen], joiner: Callable[[], str]) -> None:
        self.app = app
        self.seen = seen
        self.joiner = joiner

    def send(self, headers: list[str]) -> tuple[int, Seen]:
        status: list[int] = []

        def start_response(line: str, response_headers: Any, exc_info: Any = None) -> Any:
            status.append(int(line.split()[0]))
            return lambda data: None

        self.seen.clear()
        body = self.app(_environ(self.joiner().join(headers)), start_response)
        for _ in body:
            pass
        getattr(body, "close", lambda: None)()
        return status[0], (self.seen[0] if self.seen else Seen({}, []))


def _starlette_cookie_app(seen: list[Seen], op: StandInOP) -> Any:
    async def show(request: Request) -> PlainTextResponse:
        seen.append(Seen(dict(request.session), request.headers.getlist("cookie")))
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", show)],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
    )
    app.add_middleware(
        asgi_adapter.SSOMiddleware, settings=make_settings(op), store=_revoked_store(op)
    )
    return app


def _flask_cookie_app(seen: list[Seen], op: StandInOP) -> Flask:
    app = Flask("differential")
    app.secret_key = SESSION_SECRET

    @app.get("/")
    def show() -> str:
        cookie = request.environ.get("HTTP_COOKIE")
        seen.append(Seen(dict(session), [] if cookie is None else [cookie]))
        return "ok"

    app.wsgi_app = wsgi_adapter.SSOMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, make_settings(op), store=_revoked_store(op)
    )
    return app


# -- the checks ----------------------------------------------------------------------------


def _reads(kind: str, headers: list[str]) -> dict[str, list[str]]:
    """Every value each parser the app's framework uses reads under the name."""
    if kind == "asgi":
        return {"starlette": starlette_values(headers), "django": django_values(headers)}
    return {"werkzeug": werkzeug_values(";".join(headers) if headers else None)}


def _chosen(kind: str, headers: list[str], joined: str) -> str | None:
    if kind == "asgi":
        return starlette_chosen(headers)
    return werkzeug_chosen(joined.join(headers) if headers else None)


def _shown(headers: list[str], **values: str) -> str:
    """``headers`` for a failure message: the cookie values named, long runs cut."""
    text = repr(headers)
    for label, value in values.items():
        text = text.replace(value, f"<{label}>")
    return re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", text)


def _app_reads(kind: str, app: Any) -> Callable[[str], Any]:
    """The session data the app's own session loader reads from a cookie value."""
    if kind == "asgi":
        from itsdangerous import BadSignature, TimestampSigner

        signer = TimestampSigner(SESSION_SECRET)

        def starlette(value: str) -> Any:
            try:
                return json.loads(base64.b64decode(signer.unsign(value.encode("utf-8"))))
            except (BadSignature, ValueError):
                return None

        return starlette
    serializer = app.session_interface.get_signing_serializer(app)

    def flask(value: str) -> Any:
        from itsdangerous import BadSignature

        try:
            return serializer.loads(value)
        except (BadSignature, ValueError):
            return None

    return flask


def _run_signed(kind: str, deployment: Any, op: StandInOP, rng: random.Random) -> int:
    fmt: Literal["flask", "starlette"] = "starlette" if kind == "asgi" else "flask"
    revoked_token = _id_token(op, REVOKED_SID)
    valid_token = _id_token(op, VALID_SID)
    revoked = make_session_cookie(SESSION_SECRET, {"id_token": revoked_token}, format=fmt)
    valid = make_session_cookie(SESSION_SECRET, {"id_token": valid_token}, format=fmt)
    # What the middleware verified and may let through: the valid session, as the app's
    # own loader reads a value (itsdangerous skips bytes beyond ASCII in a signature, so
    # a value with them appended still carries the valid session: verified as such).
    app_reads = _app_reads(kind, deployment.app if kind == "wsgi" else None)
    read_revoked = reached = 0
    for number, case in enumerate(_cases(valid, revoked, rng, CASES)):
        joined = rng.choice([";", ",", "; "]) if kind == "wsgi" else ";"
        if kind == "wsgi":
            deployment.joiner = lambda joined=joined: joined
        where = f"{kind} case {number}: {_shown(case.headers, VALID=valid, REVOKED=revoked)}"
        status, seen = deployment.send(case.headers)
        assert status == 200, where
        assert seen.session.get("id_token") != revoked_token, f"{where}: the revoked session"
        for parser, values in _reads(kind, seen.cookies).items():
            assert revoked not in values, f"{where}: {parser} reads the revoked value"
            for value in values:
                assert value == valid or app_reads(value) == {"id_token": valid_token}, (
                    f"{where}: {parser} reads {_shown([value], VALID=valid)}, not verified"
                )
        if not case.revoked and _chosen(kind, case.headers, joined) == valid:
            assert seen.session.get("id_token") == valid_token, f"{where}: valid session lost"
            reached += 1
        before = _reads(kind, [joined.join(case.headers)] if kind == "wsgi" else case.headers)
        read_revoked += any(revoked in values for values in before.values())
    # The generator reaches what matters: many headers the framework reads the revoked
    # session from, and many a valid session comes through in.
    assert read_revoked > CASES // 10, read_revoked
    assert reached > CASES // 10, reached
    return CASES


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_no_form_of_a_revoked_signed_cookie_reaches_the_app(kind: str, op: StandInOP) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    seen: list[Seen] = []
    if kind == "asgi":
        deployment: Any = AsgiDeployment(_starlette_cookie_app(seen, op), seen)
    else:
        deployment = WsgiDeployment(_flask_cookie_app(seen, op), seen, lambda: ";")
    try:
        assert _run_signed(kind, deployment, op, rng) == CASES
    finally:
        if isinstance(deployment, AsgiDeployment):
            deployment.close()


# -- server-side sessions ------------------------------------------------------------------

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def _session_id(rng: random.Random) -> str:
    return "".join(rng.choice(_ID_ALPHABET) for _ in range(32))


def _starsessions_deployment(op: StandInOP, seen: list[Seen]) -> tuple[Any, Callable[..., None]]:
    from starsessions import InMemoryStore, SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarsessionsMiddleware

    memory = InMemoryStore()

    async def show(request: Request) -> PlainTextResponse:
        seen.append(Seen(dict(request.session), request.headers.getlist("cookie")))
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", show)],
        middleware=[
            Middleware(StarsessionsMiddleware, store=memory, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )
    app.add_middleware(
        asgi_adapter.SSOMiddleware, settings=make_settings(op), store=_revoked_store(op)
    )

    def put(session_id: str, data: dict[str, Any]) -> None:
        memory.data[session_id] = json.dumps(data).encode()

    return AsgiDeployment(app, seen), put


def _flask_session_deployment(op: StandInOP, seen: list[Seen]) -> tuple[Any, Callable[..., None]]:
    from cachelib import SimpleCache
    from flask_session import Session

    cache = SimpleCache()
    app = Flask("differential-serverside")
    app.secret_key = "flask-secret"
    app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=cache, SESSION_KEY_PREFIX="d:")
    Session(app)

    @app.get("/")
    def show() -> str:
        cookie = request.environ.get("HTTP_COOKIE")
        data = {k: v for k, v in session.items() if k != "_permanent"}
        seen.append(Seen(data, [] if cookie is None else [cookie]))
        return "ok"

    app.wsgi_app = wsgi_adapter.SSOMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, make_settings(op), store=_revoked_store(op)
    )

    def put(session_id: str, data: dict[str, Any]) -> None:
        cache.set(f"d:{session_id}", data, timeout=3600)

    return WsgiDeployment(app, seen, lambda: ";"), put


@pytest.mark.parametrize("library", ["starsessions", "flask-session"])
def test_no_form_of_a_revoked_session_id_reaches_the_library(library: str, op: StandInOP) -> None:
    """A revoked server-side id hidden so the library's parser reads it but the middleware
    does not: the library never loads the revoked session."""
    rng = random.Random(f"{SEED}-{library}")
    seen: list[Seen] = []
    maker = _starsessions_deployment if library == "starsessions" else _flask_session_deployment
    deployment, put = maker(op, seen)
    kind = "asgi" if library == "starsessions" else "wsgi"
    revoked_data = {"id_token": _id_token(op, REVOKED_SID)}
    valid_data = {"id_token": _id_token(op, VALID_SID)}
    read_revoked = reached = 0
    try:
        for number in range(CASES):
            # fresh ids now and then: the source's caches see new values and old ones
            if number % 50 == 0:
                revoked_id, valid_id = _session_id(rng), _session_id(rng)
                put(valid_id, valid_data)
            case = next(_cases(valid_id, revoked_id, rng, 1))
            put(revoked_id, revoked_data)  # a refusal deletes it: back for the next case
            joined = rng.choice([";", ",", "; "]) if kind == "wsgi" else ";"
            if kind == "wsgi":
                deployment.joiner = lambda joined=joined: joined
            shown = _shown(case.headers, VALID=valid_id, REVOKED=revoked_id)
            where = f"{library} case {number}: {shown} joined {joined!r}"
            status, seen_now = deployment.send(case.headers)
            assert status == 200, where
            assert seen_now.session.get("id_token") != revoked_data["id_token"], (
                f"{where}: the library loaded the revoked session"
            )
            assert _chosen(kind, seen_now.cookies, ";") != revoked_id, (
                f"{where}: the library reads the revoked id"
            )
            original = _chosen(kind, case.headers, joined)
            if not case.revoked and original == valid_id:
                assert seen_now.session.get("id_token") == valid_data["id_token"], (
                    f"{where}: the valid session was lost"
                )
                reached += 1
            read_revoked += original == revoked_id
        assert read_revoked > CASES // 10, read_revoked
        assert reached > CASES // 10, reached
    finally:
        if isinstance(deployment, AsgiDeployment):
            deployment.close()
