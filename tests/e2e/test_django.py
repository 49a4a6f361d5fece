"""The Django example under gunicorn (WSGI) and uvicorn (ASGI), 3 workers, SQLite and Redis.

The same deployments as ``test_multiworker.py`` (the stand-in OP, a shared revocation
store, :mod:`devtools.served` naming the worker of every answer), with the Django example:
database sessions in its own SQLite file, created by whichever worker starts first.

* one back-channel logout makes every worker refuse the session, and the bearer access
  tokens of that Keycloak session (``/api/me``: 401 ``invalid_token``);
* a logout through the app (``/logout``, the OP's end-session, its back-channel fan-out)
  leaves a copy of the old session cookie refused by every worker.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.apps import AppServer, app_env, free_port
from devtools.redis_server import RedisServer
from kc_sso_middleware.testing import StandInOP
from tests.e2e.test_multiworker import WORKERS, Config, Deployment

from . import _served as served
from ._served import fresh_connections

pytestmark = pytest.mark.servers

CONFIGS = [
    pytest.param(Config("sqlite", "django-wsgi"), id="sqlite-gunicorn"),
    pytest.param(Config("sqlite", "django-asgi"), id="sqlite-uvicorn"),
    pytest.param(Config("redis", "django-wsgi"), id="redis-gunicorn", marks=pytest.mark.redis),
    pytest.param(Config("redis", "django-asgi"), id="redis-uvicorn", marks=pytest.mark.redis),
]


@pytest.fixture(scope="module")
def stand_in_op() -> Iterator[StandInOP]:
    with StandInOP() as op:
        yield op


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest,
    stand_in_op: StandInOP,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The Django example with 3 workers, its own store (and Redis), a client of its own."""
    config: Config = request.param
    with contextlib.ExitStack() as stack:
        redis: RedisServer | None = None
        if config.store == "redis":
            redis = stack.enter_context(RedisServer())
            store = f"{redis.url}?prefix=kcsso-django-e2e:"
        else:
            store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'revocations.db'}"
        port = free_port()
        client_id = f"dj-{config.name}-{port}"  # a fresh client: a fresh session database
        cookie_name = f"{config.app.replace('-', '_')}_session"
        stand_in_op.register_client(
            client_id, f"{client_id}-secret", f"http://127.0.0.1:{port}/backchannel-logout"
        )
        env = app_env(
            issuer=stand_in_op.issuer,
            client_id=client_id,
            client_secret=f"{client_id}-secret",
            cookie=cookie_name,
            store=store,
        )
        server = stack.enter_context(
            AppServer(
                config.app,
                env,
                workers=WORKERS,
                port=port,
                log_dir=tmp_path_factory.mktemp(f"logs-{config.name}"),
                module=f"devtools.served:{config.app.replace('-', '_')}_app",
            )
        )
        http = stack.enter_context(fresh_connections())
        stack.callback(_remove_database, client_id)
        yield Deployment(config, stand_in_op, server, redis, client_id, cookie_name, http, stack)


def _remove_database(client_id: str) -> None:
    """Delete the session database the example created for ``client_id`` (see its settings)."""
    database = Path(tempfile.gettempdir()) / f"kc-sso-django-{client_id}.sqlite3"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def _api_me(deployment: Deployment, access_token: str) -> httpx.Response:
    return deployment.http.get(
        f"{deployment.server.url}/api/me", headers={"Authorization": f"Bearer {access_token}"}
    )


def _sample_api(deployment: Deployment, access_token: str, expect: int) -> set[int]:
    """``/api/me`` with the token until every worker answered (at least 30 requests)."""
    bearer = {"Authorization": f"Bearer {access_token}"}
    replies = served.sample(f"{deployment.server.url}/api/me", bearer, WORKERS, expect)
    if expect == 401:
        for reply in replies:
            challenge = reply.headers["www-authenticate"]
            assert challenge.startswith('Bearer error="invalid_token"'), challenge
    return {reply.pid for reply in replies}


def _password_grant(deployment: Deployment, username: str) -> dict[str, Any]:
    response = httpx.post(
        f"{deployment.op.issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": deployment.client_id,
            "client_secret": f"{deployment.client_id}-secret",
            "username": username,
            "password": "x",
            "scope": "openid",
        },
    )
    response.raise_for_status()
    tokens: dict[str, Any] = response.json()
    return tokens


@pytest.mark.parametrize("deployment", CONFIGS, indirect=True)
def test_one_backchannel_logout_reaches_every_worker(deployment: Deployment) -> None:
    """One back-channel logout: every worker refuses the session cookie, and its bearer tokens."""
    session = deployment.login()
    deployment.sample(session.cookie, expect=200)
    tokens = _password_grant(deployment, "erin")
    _sample_api(deployment, tokens["access_token"], expect=200)
    api_sid = _api_me(deployment, tokens["access_token"]).json()["sid"]

    assert deployment.backchannel(session.sid, session.sub).status == 200
    assert deployment.backchannel(api_sid, "sub-erin").status == 200

    assert len(deployment.sample(session.cookie, expect=401)) == WORKERS
    assert len(_sample_api(deployment, tokens["access_token"], expect=401)) == WORKERS


@pytest.mark.parametrize("deployment", CONFIGS, indirect=True)
def test_logout_through_the_op_ends_the_session_everywhere(deployment: Deployment) -> None:
    """/logout, the OP's end-session and its back-channel: a copied old cookie is dead."""
    session = deployment.login()
    deployment.sample(session.cookie, expect=200)
    sent = len(deployment.op.deliveries)

    landing = session.browser.get(f"{deployment.server.url}/logout")

    assert landing.status_code == 200, landing.text
    assert "Not logged in" in landing.text
    deliveries = [d for d in deployment.op.deliveries[sent:] if d.url == deployment.backchannel_url]
    assert [d.status for d in deliveries] == [200], deliveries
    assert session.browser.get(f"{deployment.server.url}/me").status_code == 401
    assert len(deployment.sample(session.cookie, expect=401)) == WORKERS
