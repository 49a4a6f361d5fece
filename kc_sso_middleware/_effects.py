"""The I/O the core's flows may ask for, as typed effects (see :mod:`._flows`).

:mod:`._runner` performs them: with blocking clients for the WSGI adapter, with asyncio
clients for the ASGI adapter.  Nothing else in the core touches the network or the
store's write path.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._flows import Effect
from .stores.model import Revocation

__all__ = ["BackendCall", "HttpCall", "HttpResult", "RecordRevocations"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpResult:
    """What came back from an :class:`HttpCall`."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class HttpCall(Effect[HttpResult]):
    """An HTTP request to the OP.  Concurrent identical GETs are performed once.

    A failure to get any answer raises :class:`~kc_sso_middleware.errors.DiscoveryError`
    into the flow.
    """

    method: str
    url: str
    form: Mapping[str, str] | None = field(default=None, repr=False)
    #: HTTP basic credentials (client authentication), never logged
    auth: tuple[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RecordRevocations(Effect[bool]):
    """Durably record revocations (and claim a ``jti``); the result is ``False`` on replay.

    Failure raises :class:`~kc_sso_middleware.errors.StoreUnavailableError` (or its
    :class:`~kc_sso_middleware.errors.StoreFullError`) into the flow.
    """

    revocations: Sequence[Revocation]
    jti: str | None = None
    jti_expires_at: float = 0.0
    authenticated: bool = True


@dataclass(frozen=True, slots=True)
class BackendCall(Effect[T], Generic[T]):
    """A call into a session backend an identity source reads (Flask-Session, starsessions).

    ``sync`` is what a blocking runner calls; ``aio`` what an asyncio runner awaits (when
    absent, it runs ``sync`` in a worker thread).  Whatever it raises is thrown into the
    flow.
    """

    sync: Callable[[], T] | None = None
    aio: Callable[[], Awaitable[T]] | None = None
    #: for logs and errors
    what: str = "session backend call"
