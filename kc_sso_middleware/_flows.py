"""Sans-I/O flows: logic written once, I/O performed by whoever drives it.

A flow is a generator.  Where it needs I/O it writes ``result = yield from SomeEffect(...)``:
the effect is handed to the driver, which performs it (blocking or with ``await``) and sends
the result back.  Each effect class names its result type (``Effect[HttpResult]``), so mypy
sees what ``yield from`` returns, and the flow's own result type is ``Flow[T]``.

:func:`drive` runs a flow with a blocking ``perform``; :func:`adrive` with an async one.  They
are the only two trampolines in the package: the core's responders (HTTP to the OP, store
writes) and the Redis store (script calls, acknowledgement waits) both use them, so logic
that needs I/O exists once and only how the I/O is done differs between WSGI and ASGI.

An exception raised by ``perform`` is thrown into the flow at its ``yield``, so the flow
decides what a failed call means (a 503, a fallback, a retry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar, cast

__all__ = ["Effect", "Flow", "adrive", "done", "drive"]

R = TypeVar("R")
T = TypeVar("T")


class Effect(Generic[R]):
    """A request for I/O whose result has type ``R``; ``yield from`` it inside a flow."""

    __slots__ = ()

    def __iter__(self) -> Generator[Effect[R], object, R]:
        result = yield self
        return cast(R, result)


#: A flow yields effects, is sent their results, and returns a ``T``.
Flow = Generator[Effect[Any], object, T]


def done(value: T) -> Flow[T]:
    """A flow that needs no I/O and returns ``value`` (for branches that decide at once)."""
    return value
    yield  # pragma: no cover - makes this a generator


def drive(flow: Flow[T], perform: Callable[[Effect[Any]], object]) -> T:
    """Run ``flow`` to its end, performing each effect with blocking ``perform``."""
    result: object = None
    error: Exception | None = None
    while True:
        try:
            effect = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        try:
            result, error = perform(effect), None
        except Exception as exc:  # handed to the flow, which decides
            result, error = None, exc


async def adrive(flow: Flow[T], perform: Callable[[Effect[Any]], Awaitable[object]]) -> T:
    """Run ``flow`` to its end, performing each effect with async ``perform``."""
    result: object = None
    error: Exception | None = None
    while True:
        try:
            effect = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        try:
            result, error = await perform(effect), None
        except Exception as exc:  # handed to the flow, which decides
            result, error = None, exc
