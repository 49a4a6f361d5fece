"""Helpers shared by the bench scripts (not a benchmark itself).

Every script in ``bench/`` is run from the repository root as ``.venv/bin/python
bench/<name>.py``; this module puts the repository root on ``sys.path`` so that the scripts
can import ``kc_sso_middleware``, ``examples`` and ``devtools`` (the servers and the
throwaway ``redis-server`` used by the test suite).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from joserfc.jwk import RSAKey  # noqa: E402

from kc_sso_middleware.testing import make_session_cookie, mint_jwt  # noqa: E402

#: Issuer used where no OP is ever contacted (ordinary requests never talk to the OP).
OFFLINE_ISSUER = "http://127.0.0.1:9/realms/bench"
CLIENT_ID = "bench-app"
SESSION_SECRET = "bench-session-secret"


def machine() -> str:
    """One line describing where the numbers come from."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: nproc={os.cpu_count()} cpu={model!r} "
        f"python={platform.python_version()} ({platform.python_implementation()}) "
        f"{platform.system()} {platform.release()}; load average {os.getloadavg()[0]:.2f} "
        "(1 min; other processes share these cores)"
    )


@cache
def signing_key() -> RSAKey:
    """An RSA key for ID tokens (the middleware never verifies them, but they look real)."""
    key = RSAKey.generate_key(2048, parameters={"use": "sig"})
    key.ensure_kid()
    return key


def id_token(
    *,
    issuer: str = OFFLINE_ISSUER,
    client_id: str = CLIENT_ID,
    sid: str | None = None,
    sub: str = "user-1",
    key: RSAKey | None = None,
) -> str:
    now = int(time.time())
    return mint_jwt(
        key or signing_key(),
        {
            "iss": issuer,
            "aud": client_id,
            "sub": sub,
            "sid": sid or str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "typ": "ID",
        },
    )


def session_data(
    *,
    sid: str | None = None,
    sub: str = "user-1",
    issuer: str = OFFLINE_ISSUER,
    client_id: str = CLIENT_ID,
    key: RSAKey | None = None,
) -> dict[str, Any]:
    """A session as the example apps store it after login: ``id_token`` and ``user``."""
    sid = sid or str(uuid.uuid4())
    token = id_token(issuer=issuer, client_id=client_id, sid=sid, sub=sub, key=key)
    return {
        "id_token": token,
        "user": {"sub": sub, "sid": sid, "preferred_username": "alice", "iss": issuer},
    }


def session_cookie(
    fmt: Literal["flask", "starlette"],
    *,
    secret: str = SESSION_SECRET,
    data: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """That session signed as Flask or Starlette would sign it (``claims``: session_data)."""
    session = data if data is not None else session_data(**claims)
    return make_session_cookie(secret, session, format=fmt, timestamp=int(time.time()))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
