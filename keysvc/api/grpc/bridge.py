"""Serve keysvc's grpc.aio servicers on the synchronous grpc.server (the `sync` stack).

The synchronous `grpc.server` runs each call on a thread of its pool, and on
this kind of machine it carries a unary call for markedly less CPU than
grpc.aio (see the README's Performance section). keysvc's cache-hit path is a
plain synchronous function, so Validate and Check answer hits right on the
pool thread; everything that needs the store (misses, counters, admin RPCs,
WatchEvents) still runs as a coroutine on the process's one asyncio loop,
handed over with `run_coroutine_threadsafe`. One copy of the service code
serves both stacks: `Bridge.unary` / `Bridge.stream` adapt an aio handler.

Cancellation: a call that ends early (client gone, deadline, server stopping)
cancels the coroutine it is waiting on, so nothing keeps running for it.

Overload: grpc's sync server cannot answer asynchronously, so a call waiting
for the loop holds its pool thread. At most `max_held` threads (three quarters
of the pool) may be held by the loop at once, streams and waiting calls
together, each unary wait bounded by its deadline (or `max_wait_s`); a call
beyond that is answered at once (Validate: its shed answer, UNAVAILABLE; a
stream: RESOURCE_EXHAUSTED; others: the UNAVAILABLE status), so threads are
always left for cache hits however slow the store is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from keysvc.api.grpc.status import status_for

__all__ = ["AsyncContext", "Bridge", "threaded_servicer"]

_T = TypeVar("_T")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _Aborted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a coroutine by `AsyncContext.abort`; re-raised as the real abort."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class AsyncContext:
    """The part of `grpc.aio.ServicerContext` keysvc's handlers use, over a sync context.

    Only `abort` differs: it cannot end the call from the loop thread, so it
    raises, and the pool thread waiting for the coroutine aborts the call.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        """End the call with `code` (raised through to the pool thread)."""
        raise _Aborted(code, details)

    async def send_initial_metadata(self, metadata: Any) -> None:
        """Send the call's headers now."""
        self._context.send_initial_metadata(metadata)

    def invocation_metadata(self) -> Any:
        """The call's metadata."""
        return self._context.invocation_metadata()

    def peer(self) -> str:
        """The caller's address."""
        return self._context.peer()

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, or None."""
        return self._context.time_remaining()


class Bridge:
    """Runs coroutines on `loop` for calls served by a synchronous grpc.server's threads.

    Args:
        loop: the running loop of the process (store clients belong to it).
        max_streams: most server streams (WatchEvents) open at once: each
            holds a pool thread while it lasts, so they must not take them all.
        max_held: most pool threads held by the loop at once: open streams and
            unary calls waiting for their coroutine together.
        max_wait_s: the longest a thread waits on the loop for a call without a deadline.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, max_streams: int, max_held: int,
        max_wait_s: float = 30.0,
    ) -> None:
        self._loop = loop
        self._streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams
        self._held_lock = threading.Lock()
        self._held = 0  # under _held_lock: pool threads now held by the loop
        self._max_held = max_held
        self._max_wait_s = max_wait_s

    def run(
        self, coroutine: Coroutine[Any, Any, _T], context: grpc.ServicerContext, method: str,
        busy: Callable[[], _T] | None = None,
    ) -> _T:
        """Run `coroutine` on the loop and wait for it (bounded); cancel it if the call ends first.

        Ends the call with a status as grpc.aio would: the code a handler
        aborted with, CANCELLED when the call ended first, DEADLINE_EXCEEDED
        when the wait ran out, and INTERNAL (logged with its trace by
        `status_for`) for anything unexpected. When `max_held` threads are held
        already, the coroutine is dropped unstarted and the call answered at
        once: `busy()`, or without it the UNAVAILABLE status.
        """
        if not self._hold():
            coroutine.close()
            if busy is not None:
                return busy()
            context.abort(grpc.StatusCode.UNAVAILABLE, "server busy: too many calls waiting for the store")
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            context.add_callback(lambda: _cancel(future))  # a no-op once the coroutine is done
            remaining = context.time_remaining()
            wait_s = self._max_wait_s if remaining is None else min(remaining, self._max_wait_s)
            try:
                return future.result(timeout=max(0.0, wait_s))
            except TimeoutError:
                future.cancel()
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the deadline")
            except _Aborted as aborted:
                context.abort(aborted.code, aborted.details)
            except concurrent.futures.CancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
            except Exception as exc:
                context.abort(*status_for(exc, method))
        finally:
            self._unhold()

    def _hold(self) -> bool:
        """Take a held-thread slot if one is free."""
        with self._held_lock:
            if self._held < self._max_held:
                self._held += 1
                return True
        return False

    def _unhold(self) -> None:
        with self._held_lock:
            self._held -= 1

    def unary(
        self, handler: Callable[[_Req, Any], Awaitable[_Resp]], method: str
    ) -> Callable[[_Req, grpc.ServicerContext], _Resp]:
        """Adapt an aio unary handler to the synchronous server."""

        async def call(request: _Req, context: AsyncContext) -> _Resp:
            return await handler(request, context)

        def unary(request: _Req, context: grpc.ServicerContext) -> _Resp:
            return self.run(call(request, AsyncContext(context)), context, method)

        return unary

    def stream(
        self, handler: Callable[[_Req, Any], AsyncIterator[_Resp]], method: str
    ) -> Callable[[_Req, grpc.ServicerContext], Iterator[_Resp]]:
        """Adapt an aio server-streaming handler; at most `max_streams` at once."""

        def stream(request: _Req, context: grpc.ServicerContext) -> Iterator[_Resp]:
            if not self._streams.acquire(blocking=False):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"at most {self.max_streams} streams at once on this server "
                              "(raise KEYSVC_GRPC_THREADS, or use KEYSVC_GRPC_STACK=aio)")
            if not self._hold():
                self._streams.release()
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "server busy: too many calls waiting for the store "
                              "(raise KEYSVC_GRPC_THREADS, or use KEYSVC_GRPC_STACK=aio)")
            try:
                yield from self._pump(handler(request, AsyncContext(context)), context, method)
            finally:
                self._unhold()
                self._streams.release()

        return stream

    def _pump(
        self, responses: AsyncIterator[_Resp], context: grpc.ServicerContext, method: str
    ) -> Iterator[_Resp]:
        """Pull `responses` one at a time on the loop (back-pressure: one item in flight)."""
        current: list[concurrent.futures.Future[Any]] = []
        # One callback for the whole stream (not one per item): it cancels the pending pull.
        context.add_callback(lambda: _cancel(current[-1]) if current else None)

        async def pull() -> Any:
            try:
                return await anext(responses)
            except StopAsyncIteration:
                return _END

        try:
            while context.is_active():
                future = asyncio.run_coroutine_threadsafe(pull(), self._loop)
                current[:] = [future]
                try:
                    response = future.result()
                except _Aborted as aborted:
                    context.abort(aborted.code, aborted.details)
                except concurrent.futures.CancelledError:
                    return  # the call is over: nobody to answer
                except Exception as exc:
                    context.abort(*status_for(exc, method))
                if response is _END:
                    return
                yield response
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):  # best effort: the stream is over either way
                    asyncio.run_coroutine_threadsafe(aclose(), self._loop).result(timeout=5)


_END = object()  # the end of a pumped stream


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    future.cancel()


def threaded_servicer(
    servicer: Any, service: ServiceDescriptor, bridge: Bridge,
    blocking: Mapping[str, Callable[[Any, grpc.ServicerContext], Any]],
) -> Any:
    """An object serving `service` on grpc.server, for the generated `add_*_to_server`.

    Methods named in `blocking` are synchronous handlers already; every other
    one is `servicer`'s aio handler, run on the loop through `bridge`.
    """
    adapted = types.SimpleNamespace()
    for method in service.methods:
        if method.client_streaming:
            raise TypeError(f"{method.full_name}: client streams are not bridged")
        handler = blocking.get(method.name)
        if handler is None:
            aio_handler = getattr(servicer, method.name)
            adapt = bridge.stream if method.server_streaming else bridge.unary
            handler = adapt(aio_handler, method.name)
        setattr(adapted, method.name, handler)
    return adapted
