"""Follows the store's event log.

Evicts what changed from the local cache, and serves WatchEvents streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import structlog

from keysvc.cache import KeyCache
from keysvc.errors import CursorExpiredError, StoreUnavailableError
from keysvc.model import Event, EventType
from keysvc.store.base import Store

__all__ = ["EventFollower", "watch"]

log = structlog.get_logger("keysvc.events")

_KEY_EVENTS = frozenset(
    {EventType.KEY_CREATED, EventType.KEY_UPDATED, EventType.KEY_REVOKED, EventType.KEY_ROTATED}
)
_BATCH = 512


class EventFollower:
    """Keeps one process's cache consistent with the shared store.

    On every key event it evicts that key's hash; on every policy event, that
    policy. If it loses its place in the log (trimmed past its cursor, or
    the log was reset) it flushes the whole cache, since anything may have
    changed. A disconnect alone does not flush: the log is durable, so the
    follower resumes from its cursor once the store answers again, and the
    entries it kept meanwhile were bounded by the cache's stale window.

    Args:
        store: where the log lives.
        cache: the cache to keep consistent.
        on_key_change: called with the key_id of every key event (e.g. to
            drop a local over-limit memo).
        block_s: how long one read waits for new events.
    """

    def __init__(
        self,
        store: Store,
        cache: KeyCache,
        *,
        on_key_change: Callable[[str], None] | None = None,
        on_flush: Callable[[], None] | None = None,
        block_s: float = 1.0,
    ) -> None:
        self._store = store
        self._cache = cache
        self._on_key_change = on_key_change
        self._on_flush = on_flush
        self._block_s = block_s
        self.cursor = ""
        self.connected = False
        self.applied = 0
        self.last_event_at = 0.0
        self.lag_s = 0.0  # from an event's append to its eviction here (clocks permitting)
        self.flushes = 0

    async def start(self) -> None:
        """Position at the log's end (the cache is empty at start).

        Raises:
            StoreUnavailableError: the store does not answer.
        """
        self.cursor = await self._store.last_cursor()
        self.connected = True

    async def run(self) -> None:
        """Follow the log until cancelled."""
        backoff = 0.05
        while True:
            try:
                if not self.connected:
                    await self.start_or_resume()
                events = await self._store.read_events(self.cursor, _BATCH, self._block_s)
                backoff = 0.05
            except CursorExpiredError:
                log.warning("event log lost; flushing cache", cursor=self.cursor)
                self._flush()
                self.cursor = await self._safe_last_cursor()
                continue
            except StoreUnavailableError:
                if self.connected:
                    log.warning("event log unreachable; will resume from cursor", cursor=self.cursor)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for event in events:
                self.apply(event)

    async def start_or_resume(self) -> None:
        """Reconnect: resume from the cursor (read_events checks it is still valid)."""
        if not self.cursor:
            self.cursor = await self._store.last_cursor()
        await self._store.ping()
        self.connected = True
        log.info("event log reachable again", cursor=self.cursor)

    async def _safe_last_cursor(self) -> str:
        try:
            return await self._store.last_cursor()
        except StoreUnavailableError:
            self.connected = False
            return ""

    def _flush(self) -> None:
        self.flushes += 1
        self._cache.clear()
        if self._on_flush is not None:
            self._on_flush()

    def apply(self, event: Event) -> None:
        """Evict what `event` changed and advance the cursor."""
        if event.type in _KEY_EVENTS:
            if event.key_hash:
                self._cache.evict_key(event.key_hash)
            if self._on_key_change is not None and event.key_id:
                self._on_key_change(event.key_id)
        elif event.policy_id:
            self._cache.evict_policy(event.policy_id)
            if self._on_flush is not None:
                # Limits may have changed for every key of the policy.
                self._on_flush()
        self.cursor = event.cursor
        self.applied += 1
        self.last_event_at = event.at
        self.lag_s = max(0.0, time.time() - event.at)


async def watch(
    store: Store, since: str, *, from_beginning: bool = False, block_s: float = 1.0
) -> AsyncIterator[Event]:
    """Yield events after `since` ("" = from now, or the oldest with from_beginning).

    Raises:
        CursorExpiredError: `since` is older than the retained log.
        StoreUnavailableError: the store stopped answering.
    """
    cursor = since
    if not since and not from_beginning:
        cursor = await store.last_cursor()
    while True:
        for event in await store.read_events(cursor, _BATCH, block_s):
            cursor = event.cursor
            yield event
