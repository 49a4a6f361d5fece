"""Server-side sessions across the workers of real servers: both examples with
``EXAMPLE_SESSION_STORE=redis://…`` (Flask-Session under gunicorn, starsessions under
uvicorn), 3 workers each, with the SQLite and the Redis revocation store.

After a revocation every worker refuses the session (at least 30 requests, spread over
the 3 worker pids), and the session is gone from the session backend's Redis by the time
the revocation is acknowledged, so a stolen session id is dead too.  The deployments and
the sampling are those of :mod:`tests.e2e.test_multiworker`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from kc_sso_middleware.testing import mint_jwt
from tests.e2e import test_multiworker as multiworker
from tests.e2e.test_multiworker import WORKERS, Config, Deployment, Session

pytestmark = [pytest.mark.servers, pytest.mark.redis]

# The multi-worker module's fixtures, used here by name: its OP, store and deployments.
stand_in_op = multiworker.stand_in_op
shared_store = multiworker.shared_store
deployment = multiworker.deployment

SERVER_SIDE = [
    pytest.param(Config(store, app, sessions="redis"), id=f"{store}-{app}")
    for store in ("sqlite", "redis")
    for app in ("flask", "fastapi")
]
#: where each example's session library keeps a session (its default key prefix)
KEY_PREFIX = {"flask": "session:", "fastapi": "starsessions."}


@pytest.fixture
def sessions_redis(deployment: Deployment) -> Iterator[redis.Redis]:
    """A client of the Redis database the example keeps its sessions in."""
    client = redis.Redis(host="127.0.0.1", port=deployment.redis_server.port, db=1)
    yield client
    client.close()


def _key(deployment: Deployment, session: Session) -> str:
    return f"{KEY_PREFIX[deployment.config.app]}{session.cookie}"


def _admin(deployment: Deployment, path: str, action: str, **claims: Any) -> int:
    """POST a legacy admin-URL action for this deployment's client, as Keycloak does."""
    payload = {
        "id": str(uuid.uuid4()),
        "expiration": int(time.time()) + 30,
        "resource": deployment.client_id,
        "action": action,
        "notBefore": 0,
        **claims,
    }
    token = mint_jwt(deployment.op.key, payload, {"typ": "JWT"})
    response = deployment.http.post(
        f"{deployment.server.url}{path}", content=token, headers={"Content-Type": "text/plain"}
    )
    return response.status_code


@pytest.mark.parametrize("deployment", SERVER_SIDE, indirect=True)
def test_one_backchannel_logout_reaches_every_worker_and_deletes_the_session(
    deployment: Deployment, sessions_redis: redis.Redis
) -> None:
    """One back-channel logout: the session is deleted before the 200, every worker
    refuses the old id, and a new login works on every worker."""
    session = deployment.login()
    assert sessions_redis.exists(_key(deployment, session)) == 1
    deployment.sample(session.cookie, expect=200)

    delivered = deployment.backchannel(session.sid, session.sub)

    assert delivered.status == 200
    assert sessions_redis.exists(_key(deployment, session)) == 0
    assert len(deployment.sample(session.cookie, expect=401)) == WORKERS
    fresh = deployment.login()
    assert fresh.cookie != session.cookie
    deployment.sample(fresh.cookie, expect=200)


@pytest.mark.parametrize("deployment", SERVER_SIDE, indirect=True)
def test_every_way_keycloak_ends_a_session(
    deployment: Deployment, sessions_redis: redis.Redis
) -> None:
    """Sub-only back-channel, admin k_logout naming the session, RP-initiated logout and
    "sign out all": each deletes the session and every worker refuses it."""
    # Narrow endings first: the wide ones also end logins made in the same second.
    by_admin = deployment.login()
    deployment.sample(by_admin.cookie, expect=200)
    assert _admin(deployment, "/k_logout", "LOGOUT", keycloakSessionIds=[by_admin.sid]) == 200
    _ended("k_logout with ids", deployment, sessions_redis, by_admin)

    by_rp = deployment.login()
    deployment.sample(by_rp.cookie, expect=200)
    landing = by_rp.browser.get(f"{deployment.server.url}/logout")
    assert "Not logged in" in landing.text
    _ended("RP-initiated logout", deployment, sessions_redis, by_rp)

    op = deployment.op
    username, op.username = op.username, f"bob-{uuid.uuid4().hex[:8]}"
    try:
        by_sub = deployment.login()  # another user
    finally:
        op.username = username
    everyone = [deployment.login(), deployment.login()]
    for session in (by_sub, *everyone):
        deployment.sample(session.cookie, expect=200)

    # A logout token naming only the user (Keycloak's "sub" without "sid").
    token = op.logout_token(deployment.client_id, sid=None, sub=by_sub.sub)
    answer = deployment.http.post(deployment.backchannel_url, data={"logout_token": token})
    assert answer.status_code == 200
    _ended("back-channel sub", deployment, sessions_redis, by_sub)
    deployment.sample(everyone[0].cookie, expect=200)  # another user's session lives on

    assert _admin(deployment, "/k_logout", "LOGOUT") == 200  # "sign out all"
    for session in everyone:
        _ended("sign out all", deployment, sessions_redis, session)


def _ended(way: str, deployment: Deployment, sessions_redis: redis.Redis, session: Session) -> None:
    """The session is gone from Redis and every worker refuses its id."""
    assert sessions_redis.exists(_key(deployment, session)) == 0, way
    assert len(deployment.sample(session.cookie, expect=401)) == WORKERS, way
