"""Single sign-out across the workers of real multi-process servers (issue 3 acceptance).

The Flask example runs under gunicorn and the FastAPI example under uvicorn, 3 workers each,
with the SQLite or the Redis store, served through :mod:`devtools.served` so every
answer names the worker that gave it (``X-Worker-Pid``).  Every request in a sample goes
over a fresh connection, so the samples spread over the workers; a sample goes on until
every worker has answered, and every answer must be the expected one.

* one back-channel logout is enforced by every worker;
* a revocation survives a Redis restart, and one delivered after it reaches every worker;
* a worker respawned after a SIGKILL enforces revocations made before it started;
* with Redis killed mid-traffic, a revoked session is never served and a back-channel logout
  is never acknowledged, under both ``KC_SSO_STORE_FAILURE`` policies; all recovers after.

One deployment (its own Redis, one app server) runs at a time; the tests that share one are
grouped by pytest and run in file order (the Redis kill, which loses Redis' data, comes last).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest

from devtools.apps import AppKind, AppServer, app_env, free_port
from devtools.redis_server import RedisServer
from devtools.served import PID_HEADER
from kc_sso_middleware.testing import StandInOP

from . import _served as served
from ._served import HTTP_TIMEOUT, MAX_REQUESTS, fresh_connections

pytestmark = pytest.mark.servers

WORKERS = 3
#: seconds any poll may wait for a condition (respawn, reconnection, outage noticed)
POLL_DEADLINE = 45.0
METRICS_PATH = "/metrics"

StoreKind = Literal["sqlite", "redis"]
FailurePolicy = Literal["closed", "open"]


@dataclass(frozen=True)
class Config:
    """One deployment: which store, which example app, which store-failure policy."""

    store: StoreKind
    app: AppKind
    failure: FailurePolicy = "closed"
    #: where the example keeps its sessions (EXAMPLE_SESSION_STORE): signed cookie, Redis
    sessions: Literal["cookie", "redis"] = "cookie"

    @property
    def name(self) -> str:
        sessions = "" if self.sessions == "cookie" else f"-{self.sessions}-sessions"
        return f"{self.store}-{self.app}-{self.failure}{sessions}"


def _param(config: Config, id: str | None = None) -> Any:
    marks = [pytest.mark.redis] if "redis" in (config.store, config.sessions) else []
    return pytest.param(config, id=id or f"{config.store}-{config.app}", marks=marks)


SQLITE_FLASK = Config("sqlite", "flask")
SQLITE_FASTAPI = Config("sqlite", "fastapi")
REDIS_FLASK = Config("redis", "flask")
REDIS_FASTAPI = Config("redis", "fastapi")
REDIS_FLASK_OPEN = Config("redis", "flask", "open")
REDIS_FASTAPI_OPEN = Config("redis", "fastapi", "open")

EVERY_STORE = [_param(c) for c in (SQLITE_FLASK, SQLITE_FASTAPI, REDIS_FLASK, REDIS_FASTAPI)]
REDIS_ONLY = [_param(c) for c in (REDIS_FLASK, REDIS_FASTAPI)]
BOTH_POLICIES = [
    _param(REDIS_FLASK, "redis-flask-fail-closed"),
    _param(REDIS_FASTAPI, "redis-fastapi-fail-closed"),
    _param(REDIS_FLASK_OPEN, "redis-flask-fail-open"),
    _param(REDIS_FASTAPI_OPEN, "redis-fastapi-fail-open"),
]


# --------------------------------------------------------------------------- helpers


def poll(condition: Callable[[], bool], what: str, deadline: float = POLL_DEADLINE) -> None:
    """Call ``condition`` until it is true; fail after ``deadline`` seconds."""
    served.poll(condition, what, deadline)


@dataclass(frozen=True)
class Answer:
    """What one request got: the status and the worker that answered."""

    status: int
    pid: int


@dataclass
class Session:
    """A logged-in browser and what identifies its session."""

    browser: httpx.Client
    cookie: str
    sid: str
    sub: str


@dataclass
class Deployment:
    """One example app under its real server with 3 workers, its store and the stand-in OP."""

    config: Config
    op: StandInOP
    server: AppServer
    redis: RedisServer | None
    client_id: str
    cookie_name: str
    http: httpx.Client
    stack: contextlib.ExitStack

    @property
    def backchannel_url(self) -> str:
        return f"{self.server.url}/backchannel-logout"

    @property
    def redis_server(self) -> RedisServer:
        assert self.redis is not None, "a Redis deployment"
        return self.redis

    def login(self) -> Session:
        """Log in through the stand-in OP in a new browser (its own OP session)."""
        browser = self.stack.enter_context(
            httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT)
        )
        cookie, sid, sub = served.log_in(browser, self.server.url, self.cookie_name)
        return Session(browser, cookie, sid, sub)

    def me(self, cookie: str, client: httpx.Client | None = None) -> Answer:
        """``GET /me`` with only this session cookie, on a fresh connection."""
        response = (client or self.http).get(
            f"{self.server.url}/me", headers={"Cookie": f"{self.cookie_name}={cookie}"}
        )
        return Answer(response.status_code, int(response.headers[PID_HEADER]))

    def backchannel(self, sid: str, sub: str = "sub-alice") -> Answer:
        """Post one logout token (fresh ``jti``) for ``sid`` to the back-channel endpoint."""
        token = self.op.logout_token(self.client_id, sid=sid, sub=sub)
        response = self.http.post(self.backchannel_url, data={"logout_token": token})
        return Answer(response.status_code, int(response.headers[PID_HEADER]))

    def backchannel_round(self, sids: list[str]) -> list[served.Reply]:
        """One logout token per ``sid``, posted at once on held connections (see
        :func:`_served.held_round`), so that they reach as many workers."""
        bodies = [
            urllib.parse.urlencode(
                {"logout_token": self.op.logout_token(self.client_id, sid=sid, sub="sub-alice")}
            ).encode()
            for sid in sids
        ]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return served.held_round(
            self.backchannel_url, form, len(bodies), method="POST", bodies=bodies
        )

    def sample(self, cookie: str, expect: int) -> set[int]:
        """At least 30 requests, until every worker answered; each must get ``expect``."""
        replies = served.sample(f"{self.server.url}/me", self._cookie(cookie), WORKERS, expect)
        return {reply.pid for reply in replies}

    def until_every_worker(self, cookie: str, expect: int, allowed: Collection[int]) -> None:
        """Poll until every worker has answered ``expect``; any answer not allowed fails."""
        answered: set[int] = set()

        def done() -> bool:
            for reply in served.held_round(f"{self.server.url}/me", self._cookie(cookie), WORKERS):
                assert reply.status in {expect, *allowed}, (
                    f"worker {reply.pid} answered {reply.status} while waiting for {expect}"
                )
                if reply.status == expect:
                    answered.add(reply.pid)
            return len(answered) >= WORKERS

        poll(done, f"every worker answers {expect} (so far: {sorted(answered)})")

    def _cookie(self, cookie: str) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={cookie}"}

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One scrape of ``/metrics`` (whichever worker answers: every worker's sums)."""
        from prometheus_client.parser import text_string_to_metric_families

        response = self.http.get(f"{self.server.url}{METRICS_PATH}")
        assert response.status_code == 200, response.text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def log_size(self) -> int:
        return self.server.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.server.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


@pytest.fixture(scope="module")
def stand_in_op() -> Iterator[StandInOP]:
    """One stand-in OP for the module; each deployment registers its own client."""
    with StandInOP() as op:
        yield op


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh SQLite file and a fresh Redis key prefix for this module."""
    return {
        "sqlite": f"sqlite:///{tmp_path_factory.mktemp('store') / 'revocations.db'}",
        "redis_prefix": f"kcsso-multiworker-{uuid.uuid4().hex[:12]}:",
    }


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest,
    stand_in_op: StandInOP,
    shared_store: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The parametrised deployment: its own Redis (for Redis), the app with 3 workers."""
    config: Config = request.param
    with contextlib.ExitStack() as stack:
        redis: RedisServer | None = None
        if "redis" in (config.store, config.sessions):
            redis = stack.enter_context(RedisServer())
        if config.store == "redis":
            assert redis is not None
            store = f"{redis.url}?prefix={shared_store['redis_prefix']}"
        else:
            store = shared_store["sqlite"]
        port = free_port()
        client_id = f"mw-{config.name}"
        cookie_name = f"mw_{config.app}_session"
        stand_in_op.register_client(
            client_id, f"{client_id}-secret", f"http://127.0.0.1:{port}/backchannel-logout"
        )
        env = app_env(
            issuer=stand_in_op.issuer,
            client_id=client_id,
            client_secret=f"{client_id}-secret",
            cookie=cookie_name,
            store=store,
            store_failure=config.failure,
        )
        if config.sessions == "redis":
            assert redis is not None
            env["EXAMPLE_SESSION_STORE"] = redis.url.rsplit("/", 1)[0] + "/1"
        # Metrics in prometheus-client's multiprocess mode, as the README says to run them.
        env["KC_SSO_METRICS_PATH"] = METRICS_PATH
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp(f"prom-{config.name}"))
        server = stack.enter_context(
            AppServer(
                config.app,
                env,
                workers=WORKERS,
                port=port,
                log_dir=tmp_path_factory.mktemp(f"logs-{config.name}"),
                module=f"devtools.served:{config.app}_app",
            )
        )
        http = stack.enter_context(fresh_connections())
        yield Deployment(config, stand_in_op, server, redis, client_id, cookie_name, http, stack)


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("deployment", EVERY_STORE, indirect=True)
def test_one_backchannel_logout_reaches_every_worker(deployment: Deployment) -> None:
    """One back-channel logout makes every worker refuse the old session cookie at once."""
    session = deployment.login()
    deployment.sample(session.cookie, expect=200)

    delivered = deployment.backchannel(session.sid, session.sub)

    assert delivered.status == 200
    workers = deployment.sample(session.cookie, expect=401)
    assert len(workers) == WORKERS


@pytest.mark.parametrize("deployment", EVERY_STORE, indirect=True)
def test_a_logged_out_access_token_is_refused_by_every_worker(deployment: Deployment) -> None:
    """A bearer access token (password grant at the OP) reaches /api/me on every worker;
    after one back-channel logout of its session, every worker answers 401
    ``invalid_token`` with the RFC 6750 challenge."""
    response = deployment.http.post(
        f"{deployment.op.issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": deployment.client_id,
            "client_secret": f"{deployment.client_id}-secret",
            "username": "bearer-bo",
            "password": "x",
            "scope": "openid",
        },
    )
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    url = f"{deployment.server.url}/api/me"
    live = served.sample(url, headers, WORKERS, 200, what="/api/me with a live token")
    sid = json.loads(live[0].text)["sid"]  # the app validated the token: its claims

    assert deployment.backchannel(sid, "sub-bearer-bo").status == 200

    refused = served.sample(url, headers, WORKERS, 401, what="/api/me after the logout")
    assert len({reply.pid for reply in refused}) == WORKERS
    for reply in refused:
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
        assert "logged out" in reply.text


def _total(
    scrape: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value for (sample, have), value in scrape.items() if sample == name and wanted <= have
    )


@pytest.mark.parametrize("deployment", EVERY_STORE, indirect=True)
def test_metrics_of_every_worker_count_what_was_sent(deployment: Deployment) -> None:
    """Scraped from any one of the 3 workers, the metrics sum every worker: the back-channel
    logouts sent, the refused requests made, one propagation per revocation and worker."""
    sessions = [deployment.login() for _ in range(4)]
    before = deployment.metrics()

    for session in sessions:
        assert deployment.backchannel(session.sid, session.sub).status == 200
    replayed = deployment.op.logout_token(deployment.client_id, sid=f"other-{uuid.uuid4()}")
    for _ in range(2):  # the same token twice: accepted once, then replayed
        deployment.http.post(deployment.backchannel_url, data={"logout_token": replayed})
    garbage = deployment.http.post(deployment.backchannel_url, data={"logout_token": "x.y.z"})
    assert garbage.status_code == 400
    refused = [deployment.me(session.cookie) for session in sessions for _ in range(5)]
    assert {answer.status for answer in refused} == {401}

    def counted(scrape: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
        applied = _total(scrape, "kc_sso_propagation_seconds_count")
        applied -= _total(before, "kc_sso_propagation_seconds_count")
        return applied >= (len(sessions) + 1) * WORKERS

    poll(lambda: counted(deployment.metrics()), "every worker has counted its propagations")
    after = deployment.metrics()

    def sent(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert sent("kc_sso_events_total", event="backchannel.accepted") == len(sessions) + 1
    assert sent("kc_sso_events_total", event="backchannel.replayed") == 1
    assert sent("kc_sso_events_total", event="backchannel.rejected") == 1
    assert sent("kc_sso_backchannel_duration_seconds_count") == len(sessions) + 1
    assert sent("kc_sso_requests_refused_total") == len(refused)
    # Each revocation is applied, and its propagation observed, once by each worker.
    assert sent("kc_sso_propagation_seconds_count") == (len(sessions) + 1) * WORKERS
    assert _total(after, "kc_sso_store_available") == 1  # min over the workers


@pytest.mark.parametrize("deployment", REDIS_ONLY, indirect=True)
def test_revocations_survive_a_redis_restart(deployment: Deployment) -> None:
    """A revocation made before a Redis restart holds after it, and a new one reaches all."""
    before = deployment.login()
    after = deployment.login()
    assert before.sid != after.sid
    assert deployment.backchannel(before.sid, before.sub).status == 200
    deployment.until_every_worker(before.cookie, 401, allowed={200})
    deployment.sample(after.cookie, expect=200)

    deployment.redis_server.restart()

    deployment.sample(before.cookie, expect=401)
    # Fail-closed: a worker answers 200 again only once its follower has reconnected.
    deployment.until_every_worker(after.cookie, 200, allowed={503})
    # Logout through the OP: the app's /logout, end-session, back-channel fan-out.
    sent = len(deployment.op.deliveries)
    landing = after.browser.get(f"{deployment.server.url}/logout")
    assert landing.status_code == 200, landing.text
    assert "Not logged in" in landing.text
    deliveries = [d for d in deployment.op.deliveries[sent:] if d.url == deployment.backchannel_url]
    assert [d.status for d in deliveries] == [200], deliveries
    deployment.until_every_worker(after.cookie, 401, allowed={200})
    deployment.sample(after.cookie, expect=401)
    deployment.sample(before.cookie, expect=401)


@pytest.mark.parametrize("deployment", EVERY_STORE, indirect=True)
def test_respawned_worker_rejects_revoked_session(deployment: Deployment) -> None:
    """A worker respawned after a SIGKILL refuses a session revoked before it started."""
    session = deployment.login()
    assert deployment.backchannel(session.sid, session.sub).status == 200
    deployment.until_every_worker(session.cookie, 401, allowed={200})
    before = deployment.sample(session.cookie, expect=401)
    victim = min(before & set(deployment.server.worker_pids()))

    os.kill(victim, signal.SIGKILL)

    newcomers: set[int] = set()

    def new_worker_answered() -> bool:
        answer = deployment.me(session.cookie)
        assert answer.status == 401, f"worker {answer.pid} answered {answer.status}"
        assert answer.pid != victim, "the killed worker answered"
        if answer.pid not in before:
            newcomers.add(answer.pid)
        return bool(newcomers)

    poll(new_worker_answered, "a respawned worker answers")
    after = deployment.sample(session.cookie, expect=401)
    assert victim not in after
    assert newcomers <= after


@dataclass
class Traffic:
    """Background requests with a valid and a revoked session, recording every answer."""

    deployment: Deployment
    cookies: Mapping[str, str]
    phase: str = "redis up"
    answers: list[tuple[str, str, Answer]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        with fresh_connections() as client:
            while not self._stop.is_set():
                for kind, cookie in self.cookies.items():
                    phase = self.phase
                    try:
                        answer = self.deployment.me(cookie, client)
                    except (httpx.HTTPError, KeyError) as exc:
                        self.errors.append(f"{phase}, {kind}: {exc!r}")
                        continue
                    self.answers.append((phase, kind, answer))

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.answers if p == phase)

    def statuses(self, kind: str) -> set[int]:
        return {a.status for _, k, a in self.answers if k == kind}

    def __enter__(self) -> Traffic:
        self._thread.start()
        poll(lambda: self.count("redis up") >= 10, "traffic is flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HTTP_TIMEOUT * 2)


@pytest.mark.parametrize("deployment", BOTH_POLICIES, indirect=True)
def test_redis_killed_mid_traffic(deployment: Deployment) -> None:
    """While Redis is down a revoked session and a back-channel logout never get 200."""
    closed = deployment.config.failure == "closed"
    valid = deployment.login()
    revoked = deployment.login()
    assert deployment.backchannel(revoked.sid, revoked.sub).status == 200
    deployment.until_every_worker(revoked.cookie, 401, allowed={200})
    deployment.sample(revoked.cookie, expect=401)
    deployment.sample(valid.cookie, expect=200)
    redis = deployment.redis_server

    with Traffic(deployment, {"valid": valid.cookie, "revoked": revoked.cookie}) as traffic:
        log_offset = deployment.log_size()
        traffic.phase = "redis down"
        redis.kill()

        if closed:
            deployment.until_every_worker(valid.cookie, 503, allowed={200})
        else:
            # Nothing in an answer tells that a worker noticed; each logs it once.
            poll(
                lambda: deployment.log_since(log_offset).count("disconnected (") >= WORKERS,
                "every worker logged that Redis is unreachable",
            )
            deployment.sample(valid.cookie, expect=200)
        deployment.sample(revoked.cookie, expect=401)

        refused: set[int] = set()
        for _ in range(MAX_REQUESTS // WORKERS):
            for delivery in deployment.backchannel_round(
                [f"not-stored-{uuid.uuid4()}" for _ in range(WORKERS)]
            ):
                assert delivery.status == 503, (
                    f"worker {delivery.pid} answered {delivery.status} to a back-channel "
                    "logout while Redis was down"
                )
                refused.add(delivery.pid)
            if len(refused) >= WORKERS:
                break
        assert len(refused) == WORKERS, f"only workers {sorted(refused)} got a delivery"
        assert traffic.count("redis down") > 0

        traffic.phase = "redis back"
        redis.start()
        # Fail-closed: 200 again means the worker's follower has reconnected.
        deployment.until_every_worker(valid.cookie, 200, allowed={503})
        poll(lambda: traffic.count("redis back") >= 10, "traffic flows after the restart")

    assert not traffic.errors, traffic.errors[:5]
    assert traffic.statuses("revoked") == {401}, "a revoked session was served"
    assert traffic.statuses("valid") <= ({200, 503} if closed else {200})
    # Redis came back empty (killed without saving): the workers' replicas still hold it.
    deployment.sample(revoked.cookie, expect=401)

    assert deployment.backchannel(valid.sid, valid.sub).status == 200
    deployment.until_every_worker(valid.cookie, 401, allowed={200})
    deployment.sample(valid.cookie, expect=401)
