"""Calls to Redis for `RedisStore`: clients with explicit timeouts, error mapping, read retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keysvc.core.errors import StoreUnavailableError
from keysvc.store.redis.topology import Client, make_topology_client, parse

__all__ = ["Caller", "make_client", "text", "unavailable", "warn_if_evictable"]

log = structlog.get_logger("keysvc.store")

_T = TypeVar("_T")
# Server answers that mean "not now" rather than "wrong request".
_UNAVAILABLE_REPLIES = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def make_client(
    url: str, *, socket_timeout: float | None, connect_timeout: float, max_connections: int
) -> Client:
    """Return a client whose every timeout is explicit (redis-py's defaults are seconds).

    redis-py's own retries are off (`RedisStore` retries reads only). A burst
    beyond `max_connections` waits up to `connect_timeout` for a free
    connection instead of failing at once or opening sockets without bound.
    Cluster and Sentinel URLs: `_redis_topology`.
    """
    topology = parse(url)
    if topology is not None:
        return make_topology_client(
            topology, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        decode_responses=True,
        protocol=2,  # the reply shapes RedisStore parses are RESP2's
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        timeout=connect_timeout,
    )
    return Redis.from_pool(pool)


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Turn "Redis cannot answer now" errors into StoreUnavailableError."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError,
            OSError, TimeoutError, ClusterError, SlotNotCoveredError, TryAgainError) as exc:
        # OutOfMemoryError: redis-py strips the "OOM" prefix the check below looks for.
        raise StoreUnavailableError(f"redis: {exc or 'no answer within the store budget'}") from exc
    except ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailableError(f"redis: {exc}") from exc
        raise


def text(value: bytes | str) -> str:
    """Return a reply as str (decode_responses makes it one; redis-py's types cannot know)."""
    return value.decode() if isinstance(value, bytes) else value


class Caller:
    """Runs calls to Redis: reads retried, writes not, every failure mapped, each call under one deadline.

    Every call gets one budget, `timeout_s * (1 + retries)`: waiting for a
    pooled connection, connecting, every attempt and the backoffs between
    them all count against it. A read is retried inside it, a retry started
    only while at least a quarter of one attempt's timeout is left (a sliver
    could not answer anyway). A write gets one attempt (the whole budget); it
    is never retried: after a timeout it may have been applied, and applying
    it twice (a take, an XADD) would be wrong.

    Args:
        retries: extra attempts of a failed read.
        timeout_s: the timeout of one attempt.
        limit: calls in flight at once, the rest waiting within their
            deadline (for the cluster and Sentinel clients, whose pools
            fail at their bound instead of waiting as the plain client's does).
    """

    def __init__(self, retries: int, timeout_s: float, limit: int | None = None) -> None:
        self._retries = retries
        self._timeout_s = timeout_s
        self._gate = contextlib.nullcontext() if limit is None else asyncio.BoundedSemaphore(limit)
        # Backoff of a millisecond or so: sized for a sub-millisecond service.
        self._backoff = ExponentialWithJitterBackoff(base=0.0005, cap=0.005)

    @property
    def budget_s(self) -> float:
        """The most one call may take, a read's retries included."""
        return self._timeout_s * (1 + self._retries)

    async def read(self, op: Callable[[], Awaitable[_T]]) -> _T:
        """Run an idempotent call, retrying connection errors and timeouts within the read budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_s
        failures = 0
        while True:
            try:
                with unavailable():
                    async with asyncio.timeout_at(deadline), self._gate:
                        return await op()
            except StoreUnavailableError:
                failures += 1
                pause = self._backoff.compute(failures)
                if failures > self._retries or deadline - loop.time() - pause < self._timeout_s / 4:
                    raise
                await asyncio.sleep(pause)

    async def write(self, op: Awaitable[_T]) -> _T:
        """Await a call once, within the budget."""
        with unavailable():
            async with asyncio.timeout(self.budget_s), self._gate:
                return await op


async def warn_if_evictable(client: Client, caller: Caller) -> None:
    """Log a warning when Redis may evict keysvc's keys (`maxmemory-policy` not noeviction).

    Any eviction policy may drop them: volatile-* the rate windows (they have
    TTLs), allkeys-* a quota counter or a record. A server that refuses
    CONFIG (some managed ones) is noted at info level.
    """
    try:
        reply = await caller.read(lambda: client.config_get("maxmemory-policy"))
    except (StoreUnavailableError, RedisError):
        log.info("redis.maxmemory_policy_unknown", reason="CONFIG GET refused or failed")
        return
    value = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
    policy = "" if value is None else text(value)
    if policy and policy != "noeviction":
        log.warning(
            "redis.evicting_policy", maxmemory_policy=policy,
            advice="set maxmemory-policy noeviction: an evicted quota counter refuses "
            "its key, an evicted rate window restarts it",
        )
