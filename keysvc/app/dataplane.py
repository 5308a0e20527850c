"""The data plane: store, cache, validator, event follower and their supervised tasks, built once.

Both the sidecar (`keysvc.app.server`) and the in-process validator
(`keysvc.inprocess`) assemble these objects here, so a Python service that
validates keys itself answers exactly as a sidecar on the same store would:
the same cache bounds and windows, the same follower (revocations and
changes propagate the same way), the same limits, counters and last-use
write-behind, and the same background tasks restarted by the same supervisor.

What a sidecar adds on top (listeners, admin, health servicers, TLS,
watchdog) stays in `server.py`. Nothing here imports a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from keysvc.app import startup as _startup
from keysvc.app.health import HealthState, probe_store, redact_url
from keysvc.app.settings import Settings, env_name
from keysvc.app.supervisor import TaskSupervisor
from keysvc.core.cache import KeyCache
from keysvc.core.errors import ConfigError, StoreUnavailableError
from keysvc.service.deadlines import DeadlineAnnouncer
from keysvc.service.events import EventFollower, FollowerState
from keysvc.service.validator import Validator
from keysvc.store.base import Store

__all__ = ["LAST_USED_FLUSH_S", "DataPlane", "assemble", "make_store", "release", "spawn_tasks",
           "start_follower"]

log = structlog.get_logger("keysvc.server")

LAST_USED_FLUSH_S = 1.0
"""How often last-use times are written behind (one batch per interval)."""


def make_store(settings: Settings) -> Store:
    """Build the store the settings name (the one place a backend is chosen).

    Raises:
        ConfigError: the store URL cannot be parsed.
    """
    timeout_s = settings.store_timeout_ms / 1000
    if settings.store.startswith("sqlite://"):
        from keysvc.store.sqlite.store import SqliteStore

        return SqliteStore(
            _startup.sqlite_path(settings), event_retention=settings.event_retention,
            poll_interval_s=settings.event_poll_ms / 1000, busy_timeout_s=timeout_s,
        )
    from keysvc.store.redis.store import RedisStore

    try:
        # redis+cluster:// and redis+sentinel:// paths are parsed (and checked) by store.redis.topology.
        url = urlsplit(settings.store)
        database = url.path.strip("/") if url.scheme in ("redis", "rediss") else ""
        if database and not (database.isascii() and database.isdigit()):
            # redis-py quietly uses database 0 for a path it cannot read as an int.
            raise ValueError("the database must be a number >= 0, as in redis://host:port/0")
        return RedisStore(
            settings.store, namespace=settings.redis_namespace, timeout_s=timeout_s,
            retries=settings.store_retries, event_retention=settings.event_retention,
        )
    except ValueError as exc:  # redis-py cannot parse the URL: it will never work
        raise ConfigError(f"{env_name('store')}: {redact_url(str(exc), settings.store)}") from None


@dataclass
class DataPlane:
    """The objects that answer validations, and the status their background tasks publish."""

    settings: Settings
    store: Store
    cache: KeyCache
    validator: Validator
    follower: EventFollower
    supervisor: TaskSupervisor
    status: HealthState


def assemble(
    settings: Settings, store: Store | None, checks: Any, ready_services: tuple[str, ...]
) -> DataPlane:
    """Build the data plane the settings describe (no I/O yet).

    Args:
        settings: the resolved settings.
        store: the store to use (default: the one the settings name).
        checks: where health statuses are published (a grpc_health servicer, or
            anything with the same `set(service, status)`).
        ready_services: service names that follow readiness.

    Raises:
        ConfigError: the store URL cannot be parsed.
    """
    store = store or make_store(settings)
    cache = KeyCache(
        max_keys=settings.cache_size, ttl_s=settings.cache_ttl_s,
        negative_max=settings.negative_cache_size, negative_ttl_s=settings.negative_ttl_s,
        stale_window_s=settings.stale_window_s,
    )
    validator = Validator(
        store, cache, fail_open=settings.fail_open, last_used_max=settings.cache_size,
        max_store_inflight=settings.max_store_inflight,
        store_budget_s=settings.store_timeout_ms / 1000 * (1 + settings.store_retries),
    )
    follower = EventFollower(
        store, cache, on_key_change=validator.forget_limits, on_flush=validator.forget_all_limits
    )
    supervisor = TaskSupervisor()
    status = HealthState(checks, ready_services, supervisor,
                         {"events": lambda: follower.state is FollowerState.FOLLOWING})
    supervisor.on_change = status.publish  # a task up or down changes readiness
    return DataPlane(settings, store, cache, validator, follower, supervisor, status)


async def start_follower(plane: DataPlane) -> None:
    """Position the event follower at the log's end; if the store is down, its task does it later."""
    try:
        await plane.follower.start()
    except StoreUnavailableError:
        pass  # its task connects once the store answers
    except Exception:  # an unexpected error: its supervised task retries, with backoff
        log.exception("event follower could not start; retrying")


async def _write_last_used(plane: DataPlane) -> None:
    """Write-behind of last-use times, off the hot path, one batch a second."""
    while True:
        await asyncio.sleep(LAST_USED_FLUSH_S)
        batch = plane.validator.drain_last_used()
        if batch:
            try:
                await plane.store.touch(batch)
            except StoreUnavailableError:
                log.warning("could not record last use", keys=len(batch))


def spawn_tasks(plane: DataPlane) -> list[asyncio.Task[None]]:
    """Start the supervised background tasks on the running loop (heartbeat, probe, events, ...)."""
    sup = plane.supervisor
    announcer = DeadlineAnnouncer(plane.store)
    return [
        sup.ticker(),
        sup.spawn("store_probe", lambda: probe_store(plane.store, plane.status, plane.settings.store,
                                                    on_recovered=plane.follower.wake)),
        sup.spawn("events", plane.follower.run),  # a restart resumes from the follower's cursor
        sup.spawn("last_used", lambda: _write_last_used(plane)),
        sup.spawn("deadlines", announcer.run),
    ]


async def release(plane: DataPlane) -> None:
    """Write the last uses not yet written (best effort), then close the store."""
    batch = plane.validator.drain_last_used()
    with contextlib.suppress(StoreUnavailableError):
        if batch:
            await plane.store.touch(batch)
    await plane.store.close()
