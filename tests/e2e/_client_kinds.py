"""Run one test body against `Client` and `AsyncClient` alike: a blocking face over the async client."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from keysvc.client import AsyncClient, Client

KINDS = ("sync", "async")


class BlockingAsync:
    """Drives an `AsyncClient` on its own event loop; coroutines are awaited, async iterators drained lazily."""

    def __init__(self, make: Callable[[], AsyncClient]) -> None:
        self._loop = asyncio.new_event_loop()

        async def build() -> AsyncClient:
            return make()

        self.client = self._loop.run_until_complete(build())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                return self._drain(result)
            return self._loop.run_until_complete(result)

        return call

    def _drain(self, agen: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(agen.aclose())

    def close(self) -> None:
        self._loop.run_until_complete(self.client.close())
        self._loop.close()


def make_client(kind: str, target: str, **options: Any) -> Any:
    """A `Client`, or a blocking face over an `AsyncClient`, built with the same arguments."""
    if kind == "sync":
        return Client(target, **options)
    return BlockingAsync(lambda: AsyncClient(target, **options))
