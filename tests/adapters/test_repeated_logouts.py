"""Logouts vouched for by a session's own cookie are stored beyond any bound, so they must
not add an entry each time one revoked cookie is sent again (a file that grows without end).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kc_sso_middleware.stores.sqlite import SQLiteStore
from kc_sso_middleware.testing import StandInOP
from tests.conftest import HarnessFactory


@pytest.mark.parametrize("path", ["/logout", "/frontchannel-logout"])
def test_logging_out_one_cookie_again_and_again_writes_one_entry(
    path: str, make_harness: HarnessFactory, op: StandInOP, tmp_path: Path
) -> None:
    """Once the session is revoked its cookie vouches for nothing more: replaying the same
    logout request must not append a row each time."""
    store = SQLiteStore(tmp_path / "revocations.db")
    store.start()
    try:
        harness = make_harness(store=store, frontchannel_path="/frontchannel-logout")
        cookie = harness.session_cookie(op, sid="s-again", sub="user-again")
        # Keycloak's frame names the session; the logout path needs nothing.
        params = {"iss": op.issuer, "sid": "s-again"} if path != "/logout" else {}
        for _ in range(20):
            response = harness.get(path, cookie, params=params)
            assert response.status_code in (200, 302)
        assert harness.seen_session(cookie) == {}
        with sqlite3.connect(tmp_path / "revocations.db") as conn:
            (rows,) = conn.execute("SELECT count(*) FROM revocations").fetchone()
        assert rows == 1
    finally:
        store.close()
