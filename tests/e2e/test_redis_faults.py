"""Fault runs: no acknowledged revocation is lost when Redis itself loses data.

The Flask example under gunicorn and the FastAPI example under uvicorn, 3 workers each,
share one Redis store while a stream of back-channel logouts (one per logged-in session,
the apps in turn) goes on, and in the middle of it:

* **standalone Redis without persistence** (``--appendonly no --save ""``): Redis is
  SIGKILLed, one worker of each app is SIGKILLed (and respawned while Redis is down),
  and Redis comes back on the same port, empty; the same with a durable Redis
  (``appendonly yes``, ``appendfsync always``), which comes back with everything;
* **Redis Cluster** (three masters, three replicas): the master holding the store's slot
  is SIGKILLed, one worker of each app too, and the killed node later rejoins.

Afterwards every revocation that was answered 200 is refused by every worker, the
respawned ones included (at least 30 requests per session, until every worker has
answered), and a session never logged out still works on every worker: nothing lost,
nothing over-revoked.  Logouts answered 503 during the outage are not checked either way.
No assertion is about time; waits are "until, or a generous deadline".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools.apps import AppKind, AppServer, app_env, free_port
from devtools.redis_server import RedisCluster, RedisServer
from kc_sso_middleware.testing import StandInOP

from . import _served as served
from ._served import HTTP_TIMEOUT, MAX_REQUESTS, fresh_connections

pytestmark = [pytest.mark.servers, pytest.mark.redis]

WORKERS = 3
#: logged-in sessions per app whose logouts make up the stream
LOGOUTS_PER_APP = 24
#: seconds any wait may take (an outage noticed, a respawn, a recovery)
DEADLINE = 60.0
#: between two logouts of the stream, so that the faults land in its middle
PACE = 0.03


def _until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    served.poll(condition, what, deadline, step=0.05)


@dataclass
class Session:
    cookie: str
    sid: str
    sub: str


@dataclass
class App:
    """One example app under its real server with 3 workers, on the shared store."""

    kind: AppKind
    server: AppServer
    client_id: str
    cookie_name: str
    http: httpx.Client

    def login(self, stack: contextlib.ExitStack) -> Session:
        browser = stack.enter_context(httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT))
        return Session(*served.log_in(browser, self.server.url, self.cookie_name))

    def backchannel(self, op: StandInOP, session: Session) -> int:
        token = op.logout_token(self.client_id, sid=session.sid, sub=session.sub)
        response = self.http.post(
            f"{self.server.url}/backchannel-logout", data={"logout_token": token}
        )
        return response.status_code

    def every_worker_answers(self, cookie: str, status: int) -> bool:
        """Rounds of requests until every worker answered once; all with ``status``."""
        seen: set[int] = set()
        for _ in range(MAX_REQUESTS // WORKERS):
            for reply in served.held_round(self.url, self._cookie(cookie), WORKERS):
                if reply.status != status:
                    return False
                seen.add(reply.pid)
            if len(seen) >= WORKERS:
                return True
        return False

    def check(self, cookie: str, status: int, what: str) -> set[int]:
        """At least 30 requests, until every worker answered: all ``status``."""
        replies = served.sample(
            self.url, self._cookie(cookie), WORKERS, status, what=f"{self.kind}: {what}"
        )
        return {reply.pid for reply in replies}

    @property
    def url(self) -> str:
        return f"{self.server.url}/me"

    def _cookie(self, cookie: str) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={cookie}"}


@dataclass
class Stream:
    """Back-channel logouts of ``queue`` one after another, in a thread."""

    op: StandInOP
    queue: list[tuple[App, Session]]
    answered: list[tuple[App, Session, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _run(self) -> None:
        for app, session in self.queue:
            try:
                status = app.backchannel(self.op, session)
            except httpx.HTTPError as exc:  # a worker killed mid-request: not acknowledged
                self.errors.append(f"{app.kind} {session.sid}: {exc!r}")
                continue
            self.answered.append((app, session, status))
            time.sleep(PACE)

    def count(self, status: int | None = None) -> int:
        return sum(1 for *_, got in self.answered if status is None or got == status)

    @contextlib.contextmanager
    def running(self) -> Iterator[Stream]:
        thread = threading.Thread(target=self._run, name="logout-stream", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            thread.join(DEADLINE * 3)
            assert not thread.is_alive(), "the logout stream did not finish"


@contextlib.contextmanager
def _apps(op: StandInOP, store: str, log_dir: Path) -> Iterator[list[App]]:
    """The Flask (gunicorn) and FastAPI (uvicorn) examples, 3 workers each, on ``store``."""
    kinds: tuple[AppKind, ...] = ("flask", "fastapi")
    with contextlib.ExitStack() as stack:
        apps = []
        for kind in kinds:
            port = free_port()
            client_id = f"faults-{kind}-{uuid.uuid4().hex[:6]}"
            op.register_client(
                client_id, f"{client_id}-secret", f"http://127.0.0.1:{port}/backchannel-logout"
            )
            env = app_env(
                issuer=op.issuer,
                client_id=client_id,
                client_secret=f"{client_id}-secret",
                cookie=f"faults_{kind}_session",
                store=store,
            )
            server = stack.enter_context(
                AppServer(
                    kind,
                    env,
                    workers=WORKERS,
                    port=port,
                    log_dir=log_dir,
                    module=f"devtools.served:{kind}_app",
                )
            )
            http = stack.enter_context(fresh_connections())
            apps.append(App(kind, server, client_id, f"faults_{kind}_session", http))
        yield apps


def _workers(app: App) -> set[int]:
    """The app's live worker processes (a killed one may linger as a zombie a while)."""
    live = set()
    for pid in app.server.worker_pids():
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state not in {"Z", "X"}:
                live.add(pid)
    return live


def _kill_one_worker(app: App) -> int:
    victim = min(_workers(app))
    os.kill(victim, signal.SIGKILL)
    return victim


def _fault_run(
    op: StandInOP,
    apps: list[App],
    stack: contextlib.ExitStack,
    lose_the_store: Callable[[], None],
    bring_it_back: Callable[[], None],
) -> None:
    """The stream, the faults in its middle, and the checks afterwards."""
    control = {app.kind: app.login(stack) for app in apps}
    sessions = {app.kind: [app.login(stack) for _ in range(LOGOUTS_PER_APP)] for app in apps}
    for app in apps:
        _until(
            lambda app=app: app.every_worker_answers(control[app.kind].cookie, 200),
            f"{app.kind} serves the control session on every worker",
        )
    queue = [(app, sessions[app.kind][index]) for index in range(LOGOUTS_PER_APP) for app in apps]
    stream = Stream(op, queue)
    with stream.running():
        _until(lambda: stream.count(200) >= len(queue) // 4, "a quarter was acknowledged")
        lose_the_store()
        killed = {app.kind: _kill_one_worker(app) for app in apps}
        _until(lambda: stream.count(503) >= 4, "logouts are refused during the outage")
        for app in apps:  # respawned while the store is away
            _until(
                lambda app=app: len(_workers(app) - {killed[app.kind]}) >= WORKERS,
                f"{app.kind} respawned its worker",
            )
        bring_it_back()
    assert stream.count() + len(stream.errors) == len(queue)
    assert stream.count(200) > len(queue) // 4, "nothing was acknowledged after the outage"
    unexpected = {got for *_, got in stream.answered} - {200, 503}
    assert not unexpected, f"back-channel answers other than 200/503: {unexpected}"

    for app in apps:  # fail-closed: 200 for the control session means current again
        _until(
            lambda app=app: app.every_worker_answers(control[app.kind].cookie, 200),
            f"every {app.kind} worker is current again",
        )
    for app in apps:
        workers = _workers(app)
        assert killed[app.kind] not in workers
        acknowledged = [s for a, s, got in stream.answered if a is app and got == 200]
        for session in acknowledged:
            seen = app.check(session.cookie, 401, f"acknowledged logout of {session.sid}")
            assert workers <= seen, "a respawned worker did not answer"
        app.check(control[app.kind].cookie, 200, "the control session, never logged out")


@pytest.fixture(scope="module")
def op() -> Iterator[StandInOP]:
    with StandInOP() as stand_in:
        yield stand_in


@pytest.mark.parametrize(
    "durable",
    [
        pytest.param(False, id="without-persistence"),
        pytest.param(True, id="appendonly-fsync-always"),
    ],
)
def test_redis_killed_and_restarted(
    op: StandInOP, tmp_path_factory: pytest.TempPathFactory, durable: bool
) -> None:
    """Redis SIGKILLed and restarted, one worker of each app SIGKILLed, during the stream:
    every acknowledged revocation is enforced by every worker afterwards, nothing else.
    Without persistence Redis comes back empty: the survivors write their revocations
    back, and the respawned workers wait for that before they report current."""
    with RedisServer(durable=durable) as redis_server, contextlib.ExitStack() as stack:
        store = f"{redis_server.url}?prefix=kcsso-faults-{uuid.uuid4().hex[:8]}:"
        apps = stack.enter_context(_apps(op, store, tmp_path_factory.mktemp("logs")))
        _fault_run(op, apps, stack, redis_server.kill, redis_server.start)


def test_redis_cluster_master_of_the_slot_killed(
    op: StandInOP, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The cluster master holding the store's slot SIGKILLed, one worker of each app
    SIGKILLed, during the stream; the killed node rejoins later: every acknowledged
    revocation is enforced by every worker afterwards, nothing else."""
    with RedisCluster() as cluster, contextlib.ExitStack() as stack:
        tag = "{kcsso-faults-" + uuid.uuid4().hex[:8] + "}"
        store = f"{cluster.url}?prefix={tag}:"
        apps = stack.enter_context(_apps(op, store, tmp_path_factory.mktemp("logs")))
        killed = []

        def lose_the_master() -> None:
            victim = cluster.master_of(tag)
            victim.kill()
            killed.append(victim)

        def fail_over_and_rejoin() -> None:
            cluster.wait_for_failover(tag, killed[0])
            cluster.rejoin(killed[0])

        _fault_run(op, apps, stack, lose_the_master, fail_over_and_rejoin)
