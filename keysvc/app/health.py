"""What grpc.health.v1 (and the HTTP /healthz, /livez) say about this process.

Readiness (`""`, `readiness`, `keysvc.v1.KeyService`, the ext_authz service):
SERVING while the store answers, every background task is running and the
process is not shutting down. Liveness (`liveness`): SERVING while the event
loop ticks; a store outage never fails it, so an orchestrator does not restart
(and empty the cache of) every sidecar when Redis is away for a minute. One
name per component: `keysvc.store` and `keysvc.<task>` for each supervised task
(`keysvc.events` also needs the event follower caught up: a follower that is
behind or disconnected says so there, without failing readiness, since the
stale window already bounds what it may answer).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from grpc_health.v1 import health_pb2

from keysvc.core.errors import StoreUnavailableError

if TYPE_CHECKING:
    from keysvc.app.supervisor import TaskSupervisor
    from keysvc.store.base import Store

__all__ = ["LIVENESS", "READINESS", "HealthState", "probe_store", "redact_url"]

log = structlog.get_logger("keysvc.health")

READINESS = "readiness"
LIVENESS = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_PROBE_S = 2.0  # between store probes while it answers
_RETRY_S = 0.25  # while it does not


def redact_url(text: str, url: str) -> str:
    """Replace the credentials of `url` (a store URL) wherever they appear in `text`."""
    try:
        parts = urlsplit(url)
        secrets = [s for s in (parts.password, parts.username if parts.password else None) if s]
    except ValueError:
        return text
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class HealthState:
    """Publishes readiness, liveness and per-component status to a health servicer.

    Written on the event loop only; the liveness watchdog (sync stack) writes
    `liveness` from its thread through the servicer, which is thread-safe there,
    and nothing here writes `liveness` after `start`.

    Args:
        servicer: grpc_health's HealthServicer (sync) or its aio variant.
        ready_services: service names that follow readiness, besides "" and `readiness`.
        supervisor: whose task states are published.
        conditions: per task name, a further check its `keysvc.<task>` status needs
            besides the task running (e.g. "events": the follower is caught up).
    """

    def __init__(
        self, servicer: Any, ready_services: tuple[str, ...], supervisor: TaskSupervisor,
        conditions: Mapping[str, Callable[[], bool]] | None = None,
    ) -> None:
        self.servicer = servicer
        self._ready_services = ("", READINESS, *ready_services)
        self._supervisor = supervisor
        self._conditions = dict(conditions or {})
        self.store_ok = False
        self.stopping = False
        self.ready = False  # what readiness says now (the HTTP /healthz reads it)

    async def _set(self, service: str, serving: bool) -> None:
        done = self.servicer.set(service, _SERVING if serving else _NOT_SERVING)
        if inspect.isawaitable(done):  # grpc.aio's servicer; the sync one sets at once
            await done

    async def start(self) -> None:
        """Publish everything once: liveness SERVING, readiness from the current state."""
        await self._set(LIVENESS, True)
        await self.publish()

    async def publish(self) -> None:
        """Recompute readiness and the per-component statuses, and publish them."""
        self.ready = self.store_ok and self._supervisor.all_up and not self.stopping
        for service in self._ready_services:
            await self._set(service, self.ready)
        await self._set("keysvc.store", self.store_ok)
        for state in self._supervisor.snapshot():
            condition = self._conditions.get(state.name)
            await self._set(f"keysvc.{state.name}", state.up and (condition is None or condition()))

    def set_live(self, live: bool) -> None:
        """Set liveness from the watchdog thread (sync-stack servicer only)."""
        self.servicer.set(LIVENESS, _SERVING if live else _NOT_SERVING)


async def probe_store(
    store: Store, health: HealthState, store_url: str,
    on_recovered: Callable[[], None] | None = None,
) -> None:
    """Follow the store's reachability into readiness, logging each change with its reason.

    Every round also republishes the per-component statuses (a follower falling
    behind shows within one round); `on_recovered` runs when the store answers
    again (the event follower resumes at once, not after its retry delay).
    """
    kind = store_url.split(":", 1)[0]
    known: bool | None = None  # None: not probed yet (also after a restart of this task)
    while True:
        reason = ""
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            cause = exc.__cause__ or exc
            reason = redact_url(f"{type(cause).__name__}: {exc}", store_url)
        ok = not reason
        if ok != known:
            known = health.store_ok = ok
            await health.publish()
            if ok:
                log.info("store reachable", store=kind)
                if on_recovered is not None:
                    on_recovered()
            else:
                log.warning("store unreachable", store=kind, reason=reason)
        else:
            await health.publish()
        await asyncio.sleep(_PROBE_S if ok else _RETRY_S)

