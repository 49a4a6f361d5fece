"""The I/O a decision may need, as plain values (the sans-I/O seam).

Flows in the core are generators: they ``yield`` an effect and receive its result, so the
logic of a logout or back-channel request is written once.  ``_io.SyncRunner`` performs
effects with blocking clients (WSGI), ``_io.AsyncRunner`` with asyncio clients (ASGI); they
are the only code that touches the network or the store's write path.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .stores.base import Revocation

__all__ = ["Effect", "Flow", "HttpCall", "HttpResult", "RecordRevocations"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpCall:
    """An HTTP request to the OP (discovery, JWKS, end-session)."""

    method: str
    url: str
    form: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HttpResult:
    """What came back from an :class:`HttpCall`."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class RecordRevocations:
    """Durably record revocations (and claim a ``jti``); the result is ``False`` on replay."""

    revocations: Sequence[Revocation]
    jti: str | None = None
    jti_expires_at: float = 0.0


Effect = HttpCall | RecordRevocations
#: A flow yields effects, is sent their results, and returns a value.
Flow = Generator[Effect, Any, T]
