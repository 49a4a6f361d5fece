"""The SQLite store losing its file underneath running workers loses no acknowledged logout.

The Flask example under gunicorn and the FastAPI example under uvicorn, 3 workers each, one
SQLite file, sessions from the stand-in OP (as in ``test_multiworker.py``).  While a stream
of back-channel logouts goes on, the database file and its ``-wal`` and ``-shm`` files are
deleted (the workers recreate the file and write their replicas back into it), and once
every worker has written back, one worker is killed and respawned.  Afterwards:

* every revocation that was acknowledged (200) is refused by every worker (at least 30
  requests each, spread over the workers, the respawned one included);
* a replayed logout token that was acknowledged before the loss is still refused;
* a control session that was never revoked is still served everywhere.

Nothing here is timed: every wait is "poll until true or a generous deadline".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools.apps import AppKind, AppServer, app_env, free_port
from kc_sso_middleware.testing import StandInOP

from . import _served as served
from ._served import HTTP_TIMEOUT, MIN_REQUESTS, fresh_connections

pytestmark = pytest.mark.servers

WORKERS = 3
POLL_DEADLINE = 60.0
#: sessions logged out by the stream (each checked on every worker afterwards)
SESSIONS = 24
#: back-channel logouts of unknown sessions between two of them, for volume
FILLER = 3


def poll(condition: Callable[[], bool], what: str, deadline: float = POLL_DEADLINE) -> None:
    served.poll(condition, what, deadline)


@dataclass(frozen=True)
class Login:
    cookie: str
    sid: str
    sub: str


@dataclass
class Deployment:
    op: StandInOP
    server: AppServer
    client_id: str
    cookie_name: str
    db: Path
    http: httpx.Client

    def login(self) -> Login:
        with httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT) as browser:
            return Login(*served.log_in(browser, self.server.url, self.cookie_name))

    def post_logout(self, client: httpx.Client, token: str) -> int:
        response = client.post(
            f"{self.server.url}/backchannel-logout", data={"logout_token": token}
        )
        return response.status_code

    def sample(self, cookie: str, expect: int) -> set[int]:
        """At least 30 requests, until every worker answered; each must get ``expect``."""
        replies = served.sample(f"{self.server.url}/me", self.cookie(cookie), WORKERS, expect)
        return {reply.pid for reply in replies}

    def cookie(self, cookie: str) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={cookie}"}

    def log(self) -> str:
        return self.server.log_text(full=True)


@dataclass
class Stream:
    """Back-channel logouts of ``sessions`` one after another (with filler logouts of
    unknown sessions between them), in a thread; remembers which were acknowledged."""

    deployment: Deployment
    sessions: list[Login]
    acknowledged: list[tuple[Login, str]] = field(default_factory=list)
    statuses: list[int | str] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="logouts", daemon=True)
        self._pace = threading.Semaphore(0)

    def _run(self) -> None:
        op, client_id = self.deployment.op, self.deployment.client_id
        with fresh_connections() as client:
            for session in self.sessions:
                self._pace.acquire()
                for n in range(FILLER):
                    filler = op.logout_token(client_id, sid=f"unknown-{self.sent}-{n}")
                    self._post(client, filler)
                token = op.logout_token(client_id, sid=session.sid, sub=session.sub)
                if self._post(client, token) == 200:
                    self.acknowledged.append((session, token))
                self.sent += 1

    def _post(self, client: httpx.Client, token: str) -> int | str:
        try:
            status: int | str = self.deployment.post_logout(client, token)
        except httpx.HTTPError as exc:  # the killed worker's connection, for one
            status = type(exc).__name__
        self.statuses.append(status)
        return status

    def go(self, count: int) -> None:
        """Let ``count`` more sessions be logged out, and wait until they were."""
        target = self.sent + count
        for _ in range(count):
            self._pace.release()
        poll(lambda: self.sent >= target, f"{target} logouts were sent")

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self.sessions:
            self._pace.release()
        self._thread.join(timeout=POLL_DEADLINE)


@pytest.fixture(scope="module")
def stand_in_op() -> Iterator[StandInOP]:
    with StandInOP() as op:
        yield op


@contextlib.contextmanager
def deployed(kind: AppKind, op: StandInOP, tmp: Path) -> Iterator[Deployment]:
    port = free_port()
    client_id = f"faults-{kind}"
    cookie_name = f"faults_{kind}_session"
    op.register_client(
        client_id, f"{client_id}-secret", f"http://127.0.0.1:{port}/backchannel-logout"
    )
    db = tmp / "store" / "revocations.db"
    env = app_env(
        issuer=op.issuer,
        client_id=client_id,
        client_secret=f"{client_id}-secret",
        cookie=cookie_name,
        store=f"sqlite:///{db}",
    )
    with (
        AppServer(
            kind,
            env,
            workers=WORKERS,
            port=port,
            log_dir=tmp,
            module=f"devtools.served:{kind}_app",
        ) as server,
        fresh_connections() as http,
    ):
        yield Deployment(op, server, client_id, cookie_name, db, http)


def _delete_store(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


@pytest.mark.parametrize("kind", ["flask", "fastapi"])
def test_deleted_store_loses_no_acknowledged_logout(
    kind: AppKind, stand_in_op: StandInOP, tmp_path: Path
) -> None:
    """File deleted under a stream of logouts, a worker respawned: every acknowledged
    revocation is refused on every worker, a replay too, and a control session lives."""
    with deployed(kind, stand_in_op, tmp_path) as deployment:
        control = deployment.login()
        sessions = [deployment.login() for _ in range(SESSIONS)]
        workers = deployment.sample(control.cookie, expect=200)
        inode = os.stat(deployment.db).st_ino

        with Stream(deployment, sessions) as stream:
            stream.go(SESSIONS // 3)
            before_loss = list(stream.acknowledged)
            assert before_loss, f"nothing acknowledged before the loss: {stream.statuses}"

            _delete_store(deployment.db)
            stream.go(SESSIONS // 3)
            # Each worker notices on its next wake (a logout, or its heartbeat) and writes
            # its replica back into the new file.
            poll(
                lambda: deployment.log().count("revocation(s) and") >= WORKERS,
                "every worker wrote its replica back",
            )
            assert os.stat(deployment.db).st_ino != inode

            # (uvicorn's supervisor has a child that is no worker: pick one that answered)
            pids = set(deployment.server.worker_pids())
            victim = min(workers & pids)
            os.kill(victim, signal.SIGKILL)
            stream.go(SESSIONS - 2 * (SESSIONS // 3))

        assert len(stream.acknowledged) >= SESSIONS // 2, stream.statuses
        assert set(stream.statuses) <= {200, 503, "RemoteProtocolError", "ReadError"}, (
            stream.statuses
        )

        def every_worker_serves_the_control_session() -> bool:
            # Fail-closed: 503 while a worker is not current yet (respawned, repairing).
            answered: set[int] = set()
            for _ in range(MIN_REQUESTS // WORKERS):
                url, cookie = f"{deployment.server.url}/me", deployment.cookie(control.cookie)
                for reply in served.held_round(url, cookie, WORKERS):
                    assert reply.status in {200, 503}, f"worker {reply.pid} answered {reply.status}"
                    if reply.status == 200:
                        answered.add(reply.pid)
            return len(answered) >= WORKERS and victim not in answered

        poll(every_worker_serves_the_control_session, "every worker serves again")
        respawned = set(deployment.server.worker_pids()) - pids
        assert respawned, "no worker was respawned"

        seen: set[int] = set()
        for session, _token in stream.acknowledged:
            seen |= deployment.sample(session.cookie, expect=401)
        assert respawned <= seen, "the respawned worker was not asked"
        assert victim not in seen

        with fresh_connections() as client:
            for _session, token in before_loss[:5]:
                assert deployment.post_logout(client, token) == 400, "a replay was accepted"
        deployment.sample(control.cookie, expect=200)
