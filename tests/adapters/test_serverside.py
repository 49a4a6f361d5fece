"""Server-side sessions: Flask-Session through the WSGI adapter, starsessions through ASGI.

Each test runs for both libraries, against a real ``redis-server`` (the session backend)
and the stand-in OP.  The apps log in the way the examples' callbacks do (the raw ID token
under ``id_token``, its claims under ``user``); nothing else tells the middleware about
sessions.  "Workers" are several middlewares over one Redis and one revocation store.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
import redis
import redis.asyncio
from flask import Flask, jsonify, request, session
from flask_session import Session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starsessions import InMemoryStore, SessionAutoloadMiddleware, SessionStore
from starsessions import SessionMiddleware as StarsessionsMiddleware
from starsessions.stores.redis import RedisStore

from devtools.redis_server import RedisServer
from kc_sso_middleware import Revocation, Settings
from kc_sso_middleware import asgi as asgi_adapter
from kc_sso_middleware import wsgi as wsgi_adapter
from kc_sso_middleware.sources import IdentitySource, SignedCookieSource
from kc_sso_middleware.sources import serverside as serverside_module
from kc_sso_middleware.sources._session_index import SessionIndex
from kc_sso_middleware.sources.cookies import identity_from_claims
from kc_sso_middleware.sources.detect import session_source
from kc_sso_middleware.sources.serverside import ServerSideSessionSource
from kc_sso_middleware.stores import MemoryStore, RevocationStore
from kc_sso_middleware.testing import StandInOP, mint_jwt
from tests.conftest import (
    CLIENT_ID,
    Clock,
    HarnessFactory,
    PortalClient,
    ServerLikeWSGITransport,
    admin_token,
    make_settings,
)

pytestmark = pytest.mark.redis

Kind = Literal["flask-session", "starsessions"]
#: where both adapters put the request-scoped marker (environ / scope)
SIGNED_OUT = "kc_sso.signed_out"
KINDS = ["flask-session", "starsessions"]
COOKIE = "session"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def id_token(
    op: StandInOP,
    sid: str | None,
    sub: str = "sub-ann",
    iat: float | None = None,
    *,
    client_id: str = CLIENT_ID,
) -> str:
    """An ID token as the OP issues it at login (``iat`` now unless given)."""
    issued = int(time.time() if iat is None else iat)
    claims = {
        "iss": op.issuer,
        "aud": client_id,
        "sub": sub,
        "sid": sid,
        "iat": issued,
        "exp": issued + 300,
        "auth_time": issued,
        "preferred_username": sub,
    }
    return mint_jwt(op.key, {k: v for k, v in claims.items() if v is not None})


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _flask_app(redis_url: str, prefix: str, **config: Any) -> Flask:
    app = Flask("serverside")
    app.secret_key = "flask-secret"
    app.config.update(
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(redis_url),
        SESSION_KEY_PREFIX=prefix,
    )
    app.config.update(config)
    Session(app)

    @app.get("/")
    def show() -> Any:
        data = {k: v for k, v in session.items() if k != "_permanent"}
        return jsonify(session=data, cookie=request.headers.get("Cookie"))

    @app.get("/me")
    def me() -> Any:
        user = session.get("user")
        return (jsonify(user), 200) if user else (jsonify(error="not_logged_in"), 401)

    @app.post("/login")
    def login() -> Any:  # what the example's callback does with the OP's tokens
        session.clear()
        token = request.get_json()["id_token"]
        session["id_token"] = token
        session["user"] = _claims(token)
        return jsonify(ok=True)

    @app.post("/anon")
    def anon() -> Any:
        session["state"] = "before-login"
        return jsonify(ok=True)

    @app.get("/why")
    def why() -> Any:
        return jsonify(user=session.get("user"), signed_out=request.environ.get(SIGNED_OUT))

    return app


def _starlette_app(store: SessionStore) -> Starlette:
    async def show(request: Request) -> JSONResponse:
        return JSONResponse(
            {"session": dict(request.session), "cookie": request.headers.get("cookie")}
        )

    async def me(request: Request) -> JSONResponse:
        user = request.session.get("user")
        if not user:
            return JSONResponse({"error": "not_logged_in"}, status_code=401)
        return JSONResponse(user)

    async def login(request: Request) -> JSONResponse:
        token = str((await request.json())["id_token"])
        request.session.clear()
        request.session["id_token"] = token
        request.session["user"] = _claims(token)
        return JSONResponse({"ok": True})

    async def anon(request: Request) -> JSONResponse:
        request.session["state"] = "before-login"
        return JSONResponse({"ok": True})

    async def why(request: Request) -> JSONResponse:
        signed_out = request.scope.get(SIGNED_OUT)
        return JSONResponse({"user": request.session.get("user"), "signed_out": signed_out})

    return Starlette(
        routes=[
            Route("/", show),
            Route("/me", me),
            Route("/login", login, methods=["POST"]),
            Route("/anon", anon, methods=["POST"]),
            Route("/why", why),
        ],
        middleware=[
            Middleware(StarsessionsMiddleware, store=store, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ],
    )


class Worker:
    """One app with its middleware: Flask-Session under WSGI or starsessions under ASGI."""

    def __init__(
        self,
        kind: Kind,
        settings: Settings,
        redis_url: str,
        prefix: str,
        store: RevocationStore,
        clock: Clock | None = None,
        session_store: Any = None,
        **flask_config: Any,
    ) -> None:
        """``session_store``: a starsessions store other than Redis; ``flask_config``:
        Flask-Session settings (``SESSION_TYPE`` …) other than the Redis ones."""
        self.kind = kind
        self.prefix = prefix
        self.store = store
        clock_fn = clock if clock is not None else time.time
        self._async_redis: redis.asyncio.Redis | None = None
        if kind == "flask-session":
            flask_app = _flask_app(redis_url, prefix, **flask_config)
            self.middleware: Any = wsgi_adapter.SSOMiddleware(
                flask_app.wsgi_app, settings, store=store, clock=clock_fn
            )
            flask_app.wsgi_app = self.middleware  # type: ignore[method-assign]
            self.client: httpx.Client | PortalClient = httpx.Client(
                transport=ServerLikeWSGITransport(flask_app), base_url="http://app.test"
            )
        else:
            if session_store is None:
                self._async_redis = redis.asyncio.Redis.from_url(redis_url)
                session_store = RedisStore(connection=self._async_redis, prefix=prefix)
            starlette_app = _starlette_app(session_store)
            starlette_app.add_middleware(
                asgi_adapter.SSOMiddleware, settings=settings, store=store, clock=clock_fn
            )
            self.starlette_app = starlette_app
            self.client = PortalClient(starlette_app, "http://app.test")

    @property
    def source(self) -> IdentitySource:
        """The session source detection chose for this app."""
        if self.kind == "starsessions":
            node: Any = self.starlette_app.middleware_stack
            while not isinstance(node, asgi_adapter.SSOMiddleware):
                node = node.app
            self.middleware = node
        detected: Any = self.middleware.core.sources[0]
        source: IdentitySource = detected.source
        return source

    def close(self) -> None:
        if self._async_redis is not None:
            assert isinstance(self.client, PortalClient)
            self.client._portal.call(self._async_redis.aclose)
        self.client.close()

    def request(
        self, method: str, path: str, cookie: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers: Any = kwargs.pop("headers", {})
        if cookie is not None:
            headers = {**headers, "Cookie": f"{COOKIE}={cookie}"}
        response = self.client.request(method, path, headers=headers, **kwargs)
        self.client_cookies().clear()  # every request says what it carries
        return response

    def client_cookies(self) -> httpx.Cookies:
        if isinstance(self.client, PortalClient):
            return self.client._client.cookies
        return self.client.cookies

    def login(self, token: str, cookie: str | None = None) -> str:
        """Log in as the example's callback does; the session id the app set."""
        response = self.request("POST", "/login", cookie, json={"id_token": token})
        assert response.status_code == 200, response.text
        return set_cookie_value(response) or str(cookie)

    def me(self, cookie: str) -> httpx.Response:
        return self.request("GET", "/me", cookie)

    def key(self, cookie: str) -> str:
        """The Redis key the library keeps the session under."""
        return f"{self.prefix}{cookie}"

    def index(self, kind: str, label: str) -> str:
        return f"{self.prefix}kc-sso:{kind}:{label}"

    def post_admin(self, path: str, body: str) -> httpx.Response:
        return self.request("POST", path, content=body, headers={"Content-Type": "text/plain"})

    def backchannel(self, op: StandInOP, **claims: Any) -> httpx.Response:
        token = op.logout_token(CLIENT_ID, **claims)
        return self.request("POST", "/backchannel-logout", data={"logout_token": token})


def set_cookie_value(response: httpx.Response, name: str = COOKIE) -> str | None:
    """The value the response sets for cookie ``name`` (``None``: it sets none)."""
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";")[0].strip()
    return None


class Deployment:
    """Workers of one app: one session backend (Redis, one key prefix), one store."""

    def __init__(
        self, kind: Kind, op: StandInOP, redis_server: RedisServer, clock: Clock | None = None
    ) -> None:
        self.kind = kind
        self.op = op
        self.redis_url = redis_server.url
        self.prefix = f"t{uuid.uuid4().hex[:10]}:"
        self.store = MemoryStore()
        self.clock = clock
        self.workers: list[Worker] = []

    def worker(self, **overrides: Any) -> Worker:
        flask_config = overrides.pop("flask_config", {})
        settings = make_settings(self.op, **overrides)
        worker = Worker(
            self.kind,
            settings,
            self.redis_url,
            self.prefix,
            self.store,
            self.clock,
            **(flask_config if self.kind == "flask-session" else {}),
        )
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@pytest.fixture(params=KINDS)
def deploy(
    request: pytest.FixtureRequest, op: StandInOP, redis_server: RedisServer
) -> Iterator[Any]:
    """Build deployments of the parametrised library; all are closed afterwards."""
    built: list[Deployment] = []

    def factory(clock: Clock | None = None) -> Deployment:
        deployment = Deployment(request.param, op, redis_server, clock)
        built.append(deployment)
        return deployment

    yield factory
    for deployment in built:
        deployment.close()


def _sid() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- detection


def test_detection_picks_the_library(deploy: Any) -> None:
    """The adapters' default source is the app's server-side session library."""
    worker = deploy().worker()
    worker.request("GET", "/")
    source = worker.source
    assert isinstance(source, ServerSideSessionSource)
    assert source.name == worker.kind


# --------------------------------------------------------------------------- login


def test_login_is_indexed_when_saved(deploy: Any, op: StandInOP, redis_client: redis.Redis) -> None:
    """The login's save indexes the session at once; /me answers 200 with its claims."""
    worker = deploy().worker()
    sid = _sid()
    cookie = worker.login(id_token(op, sid, sub="sub-idx"))

    assert redis_client.exists(worker.key(cookie)) == 1
    for kind, label in (("sid", sid), ("sub", "sub-idx"), ("client", CLIENT_ID)):
        assert redis_client.zscore(worker.index(kind, label), cookie) is not None, kind
    me = worker.me(cookie)
    assert me.status_code == 200
    assert me.json()["sid"] == sid


def test_a_worker_that_did_not_see_the_login_indexes_on_first_read(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """A session the index lacks is indexed by the first worker that reads it."""
    deployment = deploy()
    worker = deployment.worker()
    sid = _sid()
    cookie = worker.login(id_token(op, sid))
    redis_client.delete(worker.index("sid", sid))

    other = deployment.worker()
    assert other.me(cookie).status_code == 200
    assert redis_client.zscore(worker.index("sid", sid), cookie) is not None


# --------------------------------------------------------------------------- revocations


def _revoke(way: str, worker: Worker, op: StandInOP, sid: str, sub: str) -> None:
    """End the session ``way`` Keycloak can (or the app's own logout path)."""
    if way == "backchannel-sid":
        response = worker.backchannel(op, sid=sid, sub=sub)
    elif way == "backchannel-sub":
        response = worker.backchannel(op, sid=None, sub=sub)
    elif way == "admin-session-ids":
        body = admin_token(op, "LOGOUT", keycloakSessionIds=[sid])
        response = worker.post_admin("/k_logout", body)
    elif way == "admin-sign-out-all":
        response = worker.post_admin("/k_logout", admin_token(op, "LOGOUT"))
    elif way == "admin-push-not-before":
        body = admin_token(op, "PUSH_NOT_BEFORE", notBefore=int(time.time()) + 1)
        response = worker.post_admin("/k_push_not_before", body)
    else:
        raise AssertionError(way)
    assert response.status_code == 200, response.text


WAYS = [
    "backchannel-sid",
    "backchannel-sub",
    "admin-session-ids",
    "admin-sign-out-all",
    "admin-push-not-before",
]


@pytest.mark.parametrize("way", WAYS)
def test_revocation_deletes_the_session_and_refuses_it_everywhere(
    deploy: Any, op: StandInOP, redis_client: redis.Redis, way: str
) -> None:
    """Every way Keycloak ends a session deletes it from Redis before the 200; a stolen
    id replayed afterwards gets no session on any worker; a new login then works."""
    deployment = deploy()
    receiver, cached, fresh = deployment.worker(), deployment.worker(), deployment.worker()
    sid, sub = _sid(), f"sub-{uuid.uuid4().hex[:8]}"
    cookie = receiver.login(id_token(op, sid, sub=sub, iat=time.time() - 5))
    assert cached.me(cookie).status_code == 200  # this worker has it in memory

    _revoke(way, receiver, op, sid, sub)

    assert redis_client.exists(receiver.key(cookie)) == 0
    for kind, label in (("sid", sid), ("sub", sub), ("client", CLIENT_ID)):
        assert redis_client.zscore(receiver.index(kind, label), cookie) is None, kind
    for worker in (receiver, cached, fresh):
        answer = worker.me(cookie)
        assert answer.status_code == 401, (worker, answer.text)
        assert answer.json() == {"error": "not_logged_in"}
    # A new login afterwards works on every worker.
    again = receiver.login(id_token(op, _sid(), sub=sub, iat=time.time() + 2))
    assert again != cookie
    assert [w.me(again).status_code for w in (receiver, cached, fresh)] == [200, 200, 200]


def test_a_deleted_session_still_says_why(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """A session deleted at a revocation leaves a tombstone: its id, presented to a worker
    that had read the session or to one that had not, is refused with the reason."""
    deployment = deploy()
    receiver, cached, fresh = deployment.worker(), deployment.worker(), deployment.worker()
    sid = _sid()
    cookie = receiver.login(id_token(op, sid))
    assert cached.me(cookie).status_code == 200

    assert receiver.backchannel(op, sid=sid, sub="sub-ann").status_code == 200

    assert redis_client.exists(receiver.key(cookie)) == 0
    tombstone = receiver.index("ended", cookie)
    assert 0 < redis_client.ttl(tombstone) <= make_settings(op).max_session_lifetime
    for worker in (cached, fresh, receiver):
        answer = worker.request("GET", "/why", cookie)
        assert answer.json()["user"] is None
        marker = answer.json()["signed_out"]
        assert (marker["reason"], marker["sid"]) == ("backchannel", sid), worker
        assert set_cookie_value(answer) in ("", "''"), "the cookie is expired"
    assert redis_client.exists(receiver.key(cookie)) == 0, "nothing was written back"


def test_local_logout_deletes_this_app_session(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """The logout path ends this app session: redirect with its ID token, key deleted,
    the id refused afterwards; the session's other app sessions are not touched."""
    deployment = deploy()
    worker, other = deployment.worker(), deployment.worker()
    sid = _sid()
    now = time.time()
    token = id_token(op, sid, iat=now)
    cookie = worker.login(token)
    # Same sid, another tab: issued in another second (without a jti, an app session is
    # told apart by its iat's second; two reads of the clock could fall in one second).
    sibling = worker.login(id_token(op, sid, iat=now - 5))
    assert other.me(cookie).status_code == 200

    response = worker.request("GET", "/logout", cookie)

    assert response.status_code == 302
    assert f"id_token_hint={token}" in response.headers["location"]
    assert set_cookie_value(response) in ("", "''")
    assert redis_client.exists(worker.key(cookie)) == 0
    assert redis_client.exists(worker.key(sibling)) == 1
    assert other.me(cookie).status_code == 401
    assert worker.me(cookie).status_code == 401
    assert worker.me(sibling).status_code == 200


def test_frontchannel_logout_deletes_the_session(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """A front-channel logout of the browser's own session deletes it too."""
    worker = deploy().worker(frontchannel_path="/frontchannel-logout")
    sid = _sid()
    cookie = worker.login(id_token(op, sid))
    response = worker.request(
        "GET", "/frontchannel-logout", cookie, params={"iss": op.issuer, "sid": sid}
    )
    assert response.status_code == 200
    assert redis_client.exists(worker.key(cookie)) == 0
    assert worker.me(cookie).status_code == 401


def test_a_revoked_session_is_deleted_when_presented(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """A revocation this worker only learns from the store (no purge here) is refused
    on the next request: the cookie is taken out and expired, the session deleted."""
    deployment = deploy()
    worker = deployment.worker()
    sid = _sid()
    cookie = worker.login(id_token(op, sid))
    assert worker.me(cookie).status_code == 200
    assert deployment.store.record(
        [Revocation.session(op.issuer, sid, client_id=CLIENT_ID, expires_at=time.time() + 3600)]
    )

    response = worker.request("GET", "/", headers={"Cookie": f"a=1; {COOKIE}={cookie}"})

    assert response.json() == {"session": {}, "cookie": "a=1"}
    expiry = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]
    assert expiry, response.headers
    assert redis_client.exists(worker.key(cookie)) == 0


def test_revoked_action_401(deploy: Any, op: StandInOP, redis_client: redis.Redis) -> None:
    """KC_SSO_REVOKED_ACTION=401 answers 401 JSON, expires the cookie, deletes the session."""
    deployment = deploy()
    worker = deployment.worker(revoked_action="401")
    sid = _sid()
    cookie = worker.login(id_token(op, sid))
    deployment.store.record(
        [Revocation.session(op.issuer, sid, client_id=CLIENT_ID, expires_at=time.time() + 60)]
    )

    response = worker.me(cookie)

    assert response.status_code == 401
    assert response.json()["error"] == "session_revoked"
    assert set_cookie_value(response) in ("", "''")
    assert redis_client.exists(worker.key(cookie)) == 0


def test_a_new_login_under_a_reused_id_is_not_refused_for_the_old_one(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """The library writes a new login under the same id; revoking the old login deletes
    nothing, and a worker that still remembers the old one reads again and lets it in."""
    deployment = deploy()
    worker, remembers = deployment.worker(), deployment.worker()
    old_sid, new_sid = _sid(), _sid()
    cookie = worker.login(id_token(op, old_sid, sub="sub-old"))
    assert remembers.me(cookie).json()["sid"] == old_sid

    reused = worker.login(id_token(op, new_sid, sub="sub-new"), cookie=cookie)
    assert reused == cookie  # the library kept the id
    assert worker.backchannel(op, sid=old_sid, sub="sub-old").status_code == 200

    assert redis_client.exists(worker.key(cookie)) == 1
    assert remembers.me(cookie).json()["sid"] == new_sid
    assert worker.me(cookie).json()["sid"] == new_sid
    # The new login is itself revocable.
    assert worker.backchannel(op, sid=new_sid, sub="sub-new").status_code == 200
    assert redis_client.exists(worker.key(cookie)) == 0
    assert remembers.me(cookie).status_code == 401


def test_a_reused_id_whose_new_login_is_revoked_too_is_refused(deploy: Any, op: StandInOP) -> None:
    """A worker remembering an old login that reads a new, also revoked, one refuses it."""
    deployment = deploy()
    worker, remembers = deployment.worker(), deployment.worker()
    old_sid, new_sid = _sid(), _sid()
    cookie = worker.login(id_token(op, old_sid))
    assert remembers.me(cookie).status_code == 200
    worker.login(id_token(op, new_sid), cookie=cookie)
    expires = time.time() + 60
    deployment.store.record(
        [
            Revocation.session(op.issuer, old_sid, client_id=CLIENT_ID, expires_at=expires),
            Revocation.session(op.issuer, new_sid, client_id=CLIENT_ID, expires_at=expires),
        ]
    )
    assert remembers.me(cookie).status_code == 401


def test_sign_out_all_spares_sessions_without_a_login(
    deploy: Any, op: StandInOP, redis_client: redis.Redis
) -> None:
    """A session holding no Keycloak login (OAuth state before login) passes, and "sign
    out all" leaves it alone."""
    worker = deploy().worker()
    response = worker.request("POST", "/anon")
    anon = set_cookie_value(response)
    assert anon
    assert worker.request("GET", "/", anon).json()["session"].get("state") == "before-login"

    assert worker.post_admin("/k_logout", admin_token(op, "LOGOUT")).status_code == 200

    seen = worker.request("GET", "/", anon)
    assert seen.json()["session"].get("state") == "before-login"
    assert set_cookie_value(seen) in (None, anon)
    assert redis_client.exists(worker.key(anon)) == 1


# --------------------------------------------------------------------------- what is read


def test_an_id_without_data_passes_untouched(deploy: Any) -> None:
    """An id the backend holds nothing for reaches the app as it came; nothing is expired."""
    worker = deploy().worker()
    junk = secrets.token_urlsafe(32)
    response = worker.request("GET", "/", headers={"Cookie": f"a=1; {COOKIE}={junk}"})
    assert response.status_code == 200
    assert response.json() == {"session": {}, "cookie": f"a=1; {COOKIE}={junk}"}
    assert "set-cookie" not in response.headers


def test_junk_ids_cost_no_cache_memory(deploy: Any, op: StandInOP) -> None:
    """Ids with no stored data are not remembered; ids with data are, within the bound."""
    worker = deploy().worker()
    for n in range(300):
        assert worker.request("GET", "/", f"junk-{n}-{'A' * 200}").status_code == 200
    source: Any = worker.source
    assert len(source._cache) == 0
    assert source._cache.size == 0
    cookie = worker.login(id_token(op, _sid()))
    assert worker.me(cookie).status_code == 200
    assert list(source._cache) == [cookie]


def test_the_cache_stays_within_its_byte_bound(
    deploy: Any, op: StandInOP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many sessions a worker reads, its readings stay within CACHE_BYTES."""
    monkeypatch.setattr(serverside_module, "CACHE_BYTES", 8 * 1024)
    worker = deploy().worker()
    worker.request("GET", "/")
    source: Any = worker.source
    for _ in range(30):
        cookie = worker.login(id_token(op, _sid()))
        assert worker.me(cookie).status_code == 200
        assert source._cache.size <= 8 * 1024


@pytest.mark.parametrize(
    "form",
    [
        "quoted",
        "duplicated",
        "reversed",
        "spaced",
        "unit separator",
        "no-break space",
        "latin-1 neighbour",
        "latin-1 neighbour, duplicated",
    ],
)
def test_the_id_is_read_as_the_library_reads_it(
    deploy: Any, op: StandInOP, redis_client: redis.Redis, form: str
) -> None:
    """Quoted, spaced and duplicated forms: the decision is taken on the id the library
    reads (Werkzeug: the first of duplicates; Starlette: the last)."""
    deployment = deploy()
    worker = deployment.worker()
    revoked_sid, valid_sid = _sid(), _sid()
    revoked = worker.login(id_token(op, revoked_sid))
    valid = worker.login(id_token(op, valid_sid))
    deployment.store.record(
        [
            Revocation.session(
                op.issuer, revoked_sid, client_id=CLIENT_ID, expires_at=time.time() + 60
            )
        ]
    )
    headers = {
        "quoted": f'{COOKIE}="{revoked}"',
        "spaced": f"a=1;  {COOKIE} = {revoked} ; b=2",
        "duplicated": f"{COOKIE}={valid}; {COOKIE}={revoked}",
        "reversed": f"{COOKIE}={revoked}; {COOKIE}={valid}",
        # Spaces str.strip() knows and bytes.isspace() does not: Starlette strips them.
        "unit separator": f"{COOKIE}=\x1f{revoked}",
        "no-break space": f"{COOKIE}={revoked}\xa0; a=b",
        # A neighbour that is not UTF-8: the library still reads the id.
        "latin-1 neighbour": f"a=\xff; {COOKIE}={revoked}",
        "latin-1 neighbour, duplicated": f"a=\xff; {COOKIE}={revoked}; {COOKIE}={valid}",
    }
    first_wins = worker.kind == "flask-session"
    library_reads = {
        "quoted": revoked,
        "spaced": revoked,
        "duplicated": valid if first_wins else revoked,
        "reversed": revoked if first_wins else valid,
        "unit separator": f"\x1f{revoked}" if first_wins else revoked,  # Werkzeug keeps it
        "no-break space": f"{revoked}\xa0" if first_wins else revoked,
        "latin-1 neighbour": revoked,
        "latin-1 neighbour, duplicated": revoked if first_wins else valid,
    }[form]

    cookie_header = headers[form].encode("latin-1")
    answer = worker.request("GET", "/me", headers={"Cookie": cookie_header})

    if library_reads not in (revoked, valid):  # an id naming no session: nobody's logged in
        assert answer.status_code == 401
        assert answer.json() == {"error": "not_logged_in"}
    elif library_reads == revoked:
        assert answer.status_code == 401
        assert redis_client.exists(worker.key(revoked)) == 0
    else:
        assert answer.status_code == 200
        assert answer.json()["sid"] == valid_sid


def test_several_cookie_headers_are_read_as_starlette_reads_them(
    op: StandInOP, redis_server: RedisServer
) -> None:
    """Two Cookie headers (ASGI): Starlette parses both in turn, the last value wins."""
    deployment = Deployment("starsessions", op, redis_server)
    try:
        worker = deployment.worker()
        revoked_sid = _sid()
        revoked = worker.login(id_token(op, revoked_sid))
        valid = worker.login(id_token(op, _sid()))
        deployment.store.record(
            [
                Revocation.session(
                    op.issuer, revoked_sid, client_id=CLIENT_ID, expires_at=time.time() + 60
                )
            ]
        )
        two = [("cookie", f"{COOKIE}={valid}"), ("cookie", f"{COOKIE}={revoked}")]
        assert worker.client.get("/me", headers=two).status_code == 401
        swapped = [("cookie", f"{COOKIE}={revoked}"), ("cookie", f"{COOKIE}={valid}")]
        assert worker.client.get("/me", headers=swapped).status_code == 200
    finally:
        deployment.close()


def test_session_older_than_max_lifetime_is_refused(deploy: Any, op: StandInOP) -> None:
    """A session whose login is older than KC_SSO_MAX_SESSION_LIFETIME is refused, even
    while this worker remembers it."""
    clock = Clock()
    worker = deploy(clock).worker(max_session_lifetime=3600)
    cookie = worker.login(id_token(op, _sid(), iat=clock.now - 10))
    assert worker.me(cookie).status_code == 200
    clock.now += 3600
    assert worker.me(cookie).status_code == 401


# --------------------------------------------------------------------------- failures


def test_unreachable_backend_answers_503(op: StandInOP) -> None:
    """A session the backend cannot be asked about gets 503, never the app unchecked."""
    with RedisServer() as dead:
        url = dead.url
    for kind in KINDS:
        worker = Worker(kind, make_settings(op), url, "t-dead:", MemoryStore())  # type: ignore[arg-type]
        try:
            response = worker.me("some-session-id")
            assert response.status_code == 503, kind
            assert response.json()["error"] == "temporarily_unavailable"
        finally:
            worker.close()


@pytest.mark.filterwarnings("ignore:The 'use_signer' option is deprecated:DeprecationWarning")
def test_flask_session_signed_ids(op: StandInOP, redis_server: RedisServer) -> None:
    """With Flask-Session's deprecated SESSION_USE_SIGNER the id is unsigned as the library
    does; a badly signed id passes (the library starts a new session)."""
    deployment = Deployment("flask-session", op, redis_server)
    try:
        worker = deployment.worker(flask_config={"SESSION_USE_SIGNER": True})
        sid = _sid()
        cookie = worker.login(id_token(op, sid))
        session_id = cookie.rsplit(".", 1)[0]
        assert worker.me(cookie).status_code == 200
        assert worker.request("GET", "/", f"{session_id}.forged").status_code == 200
        assert worker.backchannel(op, sid=sid, sub="sub-ann").status_code == 200
        with redis.Redis.from_url(redis_server.url) as client:
            assert client.exists(f"{worker.prefix}{session_id}") == 0
        assert worker.me(cookie).status_code == 401
    finally:
        deployment.close()


# --------------------------------------------------------------------------- other backends


def test_backends_without_an_index_delete_when_presented(op: StandInOP) -> None:
    """A backend with no Redis index (cachelib, starsessions' memory store): nothing is
    deleted at the revocation, but the session is refused and deleted when presented."""
    from cachelib import SimpleCache

    cache = SimpleCache()
    memory = InMemoryStore()
    for kind in KINDS:
        worker = Worker(
            kind,  # type: ignore[arg-type]
            make_settings(op),
            "redis://unused",
            "t-other:",
            MemoryStore(),
            session_store=memory,
            SESSION_TYPE="cachelib",
            SESSION_CACHELIB=cache,
        )
        try:

            def stored(cookie: str, kind: str = kind) -> bool:
                if kind == "flask-session":
                    return cache.get(f"t-other:{cookie}") is not None
                return cookie in memory.data

            sid = _sid()
            cookie = worker.login(id_token(op, sid))
            assert worker.me(cookie).status_code == 200
            assert worker.backchannel(op, sid=sid, sub="sub-ann").status_code == 200
            assert stored(cookie), kind  # no index: still there
            assert worker.me(cookie).status_code == 401
            assert not stored(cookie), kind
        finally:
            worker.close()


# --------------------------------------------------------------------------- wiring


def test_detection_through_wrappers(op: StandInOP, redis_server: RedisServer) -> None:
    """Flask-Session is found behind ProxyFix; starsessions behind a Starlette app the
    middleware wraps whole (its middleware stack built at first use)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    settings = make_settings(op)
    flask_app = _flask_app(redis_server.url, "t-wrap:")
    wsgi = wsgi_adapter.SSOMiddleware(ProxyFix(flask_app.wsgi_app), settings, store=MemoryStore())
    flask_app.wsgi_app = wsgi  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=flask_app), base_url="http://t") as http:
        assert http.get("/").status_code == 200
    assert wsgi.core.sources[0].source.name == "flask-session"  # type: ignore[attr-defined]

    client = redis.asyncio.Redis.from_url(redis_server.url)
    starlette_app = _starlette_app(RedisStore(connection=client, prefix="t-wrap:"))
    asgi = asgi_adapter.SSOMiddleware(starlette_app, settings, store=MemoryStore())
    portal = PortalClient(asgi, "http://t")
    try:
        response = portal.post("/login", json={"id_token": id_token(op, _sid())})
        cookie = set_cookie_value(response)
        assert portal.get("/me", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 200
        assert asgi.core.sources[0].source.name == "starsessions"  # type: ignore[attr-defined]
    finally:
        portal._portal.call(client.aclose)
        portal.close()


class _Wrapper:
    """A middleware keeping the next app as ``.inner``: detection cannot follow it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any) -> Any:
        return self.inner(*args)


def _hidden_session_app(kind: str) -> Any:
    """An app whose session middleware detection cannot reach, under another cookie name."""
    if kind == "wsgi":
        flask_app = Flask("hidden")
        flask_app.config["SESSION_COOKIE_NAME"] = "hidden_session"
        return _Wrapper(flask_app.wsgi_app)
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.routing import Mount

    hidden = Middleware(SessionMiddleware, secret_key="k", session_cookie="x")
    inner = Starlette(middleware=[hidden])
    return Starlette(routes=[Mount("/", app=inner)])


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_detection_that_finds_no_session_says_so(
    kind: str, op: StandInOP, caplog: pytest.LogCaptureFixture
) -> None:
    """When detection sees no session middleware the session is assumed to be the signed
    cookie KC_SSO_SESSION_COOKIE names: a warning says so, since under another name no
    revoked session would be refused; a detected one says nothing of the kind."""
    settings = make_settings(op)
    framework: Literal["flask", "starlette"] = "flask" if kind == "wsgi" else "starlette"
    caplog.set_level("WARNING", logger="kc_sso_middleware")
    source = session_source(settings, framework, time.time, _hidden_session_app(kind))
    assert isinstance(source, SignedCookieSource)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    looked_for = "no Flask app" if kind == "wsgi" else "no SessionMiddleware"
    assert warnings[0].startswith(f"session source: {looked_for} ("), warnings[0]
    assert repr(settings.session_cookie) in warnings[0]
    assert "sources=" in warnings[0]

    caplog.clear()
    if kind == "wsgi":
        seen: Any = Flask("seen")
        seen.config["SESSION_COOKIE_NAME"] = settings.session_cookie
        seen = seen.wsgi_app
    else:
        from starlette.middleware.sessions import SessionMiddleware

        seen = Starlette(middleware=[Middleware(SessionMiddleware, secret_key="k")])
    session_source(settings, framework, time.time, seen)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_cookie_sessions_keep_the_signed_cookie_source(make_harness: HarnessFactory) -> None:
    """Without a server-side library the detected source is the signed cookie's."""
    harness = make_harness()
    harness.client.get("/")
    middleware: Any = (
        harness.app.wsgi_app if harness.kind == "wsgi" else _sso(harness.app.middleware_stack)
    )
    assert isinstance(middleware.core.sources[0].source, SignedCookieSource)


def _sso(node: Any) -> Any:
    while not isinstance(node, asgi_adapter.SSOMiddleware):
        node = node.app
    return node


# --------------------------------------------------------------------------- the index


def test_the_index_stays_bounded_and_replaces_squatters(redis_client: redis.Redis) -> None:
    """Writing a key drops members past their lifetime; a key holding anything but the
    index (a session stored under that name) is replaced."""
    settings = Settings(issuer="http://op.test", client_id="app", session_secret="x")
    index = SessionIndex(
        redis_client,
        key=lambda name: f"t-index:{name}",
        decode=json.loads,
        asynchronous=False,
        lifetime=100,
        client_id="app",
    )
    now = time.time()
    old = identity_from_claims({"sid": "s1", "sub": "u", "iat": int(now) - 50}, settings)
    new = identity_from_claims({"sid": "s2", "sub": "u", "iat": int(now)}, settings)
    assert old is not None
    assert new is not None
    redis_client.set("t-index:kc-sso:sub:u", "a session stored under the index's name")

    index.add("first", old, now).sync()  # type: ignore[misc]
    index.add("second", new, now + 60).sync()  # type: ignore[misc]

    assert redis_client.zrange("t-index:kc-sso:sub:u", 0, -1) == [b"second"]
    assert redis_client.zrange("t-index:kc-sso:sid:s1", 0, -1) == [b"first"]
    assert 0 < redis_client.ttl("t-index:kc-sso:client:app") <= 100


def test_observed_serializer_vouches_only_for_the_bytes_it_just_made() -> None:
    """The store is told the dict behind the very bytes object just serialized, once;
    any other bytes (equal or not) are decoded as starsessions would decode them."""
    from starsessions.serializers import JsonSerializer

    from kc_sso_middleware.sources.starsessions import ObservedSerializer

    serializer = ObservedSerializer(JsonSerializer())
    session = {"user": {"sub": "s"}}
    raw = serializer.serialize(session)
    assert serializer.made_from(bytes(bytearray(raw))) is None  # equal, another object
    raw = serializer.serialize(session)
    assert serializer.made_from(raw) is session
    assert serializer.made_from(raw) is None  # once
    assert serializer.deserialize(raw) == session


@pytest.mark.parametrize("kind", KINDS)
def test_another_clients_logout_leaves_this_apps_sessions_alone(
    kind: Kind, op: StandInOP, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Two apps of different clients whose libraries share one Redis and key prefix share
    the index keys too.  A logout of the other client's part of the user's sessions (a
    logout token without sid) deletes that client's session at once and leaves this app's
    alone: its login was issued to another client, and no revocation of its own ends it."""
    op.register_client("other", "other-secret")
    prefix = "session:" if kind == "flask-session" else "starsessions."
    ours = Worker(kind, make_settings(op), redis_server.url, prefix, MemoryStore())
    other_settings = make_settings(op, client_id="other", client_secret="other-secret")
    theirs = Worker(kind, other_settings, redis_server.url, prefix, MemoryStore())
    try:
        sub, sid = f"sub-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
        our_cookie = ours.login(id_token(op, sid, sub))
        their_cookie = theirs.login(id_token(op, sid, sub, client_id="other"))
        assert redis_client.zcard(f"{prefix}kc-sso:sub:{sub}") == 2  # one key, both apps
        token = op.logout_token("other", sid=None, sub=sub)
        answer = theirs.request("POST", "/backchannel-logout", data={"logout_token": token})
        assert answer.status_code == 200, answer.text
        assert redis_client.exists(prefix + their_cookie) == 0  # deleted at once
        assert redis_client.exists(prefix + our_cookie) == 1
        assert ours.me(our_cookie).status_code == 200
        # Still indexed: a revocation of this app's own ends it at once too.
        members = redis_client.zrange(f"{prefix}kc-sso:sub:{sub}", 0, -1)
        assert our_cookie.encode() in members
    finally:
        ours.close()
        theirs.close()
