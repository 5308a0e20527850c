"""Follows the store's event log.

Evicts what changed from the local cache, and serves WatchEvents streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from keysvc.core.cache import KeyCache
from keysvc.core.errors import CursorExpiredError, StoreUnavailableError
from keysvc.core.model import Event, EventType
from keysvc.store.base import Store

__all__ = [
    "ACTIONS", "BEHIND_AFTER_S", "Action", "EventFollower", "EventLog", "FollowerHealth", "FollowerState",
    "watch",
]

log = structlog.get_logger("keysvc.events")

_BATCH = 512
# Retry delays while the store does not answer: short, because a revocation
# waits for them, and jittered, so sidecars do not retry in step.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 0.25
# An unknown event type is logged at most once per type per this many seconds,
# and at most this many types are remembered (the log is written by admins,
# but a bound costs nothing).
_UNKNOWN_LOG_EVERY_S = 60.0
_UNKNOWN_TYPES_MAX = 64
BEHIND_AFTER_S = 1.0
"""The follower is `behind` when it has not confirmed being caught up for this long."""


class Action(enum.Enum):
    """What one kind of event changes in this process."""

    EVICT_KEY = "evict_key"  # the key's record (and negative entry) and its over-limit memo
    EVICT_POLICY = "evict_policy"  # the policy, and over-limit memos (its limits may have changed)
    NOTHING = "nothing"  # for WatchEvents only: Validate checks deadlines on every call


ACTIONS: dict[EventType, Action] = {
    EventType.KEY_CREATED: Action.EVICT_KEY,  # a NOT_FOUND may be cached for its hash
    EventType.KEY_UPDATED: Action.EVICT_KEY,
    EventType.KEY_REVOKED: Action.EVICT_KEY,
    EventType.KEY_ROTATED: Action.EVICT_KEY,  # the old key: its revoke_at changed
    EventType.KEY_EXPIRED: Action.NOTHING,
    EventType.KEY_REVOKED_BY_SCHEDULE: Action.NOTHING,
    EventType.POLICY_CREATED: Action.NOTHING,  # an absent policy is never cached
    EventType.POLICY_UPDATED: Action.EVICT_POLICY,
    EventType.POLICY_ROLLED_BACK: Action.EVICT_POLICY,
}
"""The action of each event type this version knows; any other type is skipped."""


class FollowerState(enum.StrEnum):
    """Where the follower stands, for health and metrics."""

    STARTING = "starting"  # no position in the log yet
    DISCONNECTED = "disconnected"  # the store does not answer; resumes from its cursor
    BEHIND = "behind"  # reading, but not confirmed caught up for `BEHIND_AFTER_S`
    FOLLOWING = "following"


@dataclass(frozen=True, slots=True)
class FollowerHealth:
    """A snapshot of the follower's state, for health checks and a supervisor."""

    state: FollowerState
    lag_s: float  # since it last confirmed it had read the whole log
    cursor: str
    flushes: int
    skipped: int


class EventFollower:
    """Keeps one process's cache consistent with the shared store.

    Each event type has one `Action` (`ACTIONS`); a type this version does not
    know (a newer one wrote it during a rolling upgrade) is logged, once per
    type and minute, and skipped. If the follower loses its place in the log
    (trimmed, emptied, deleted or reset past its cursor) it reads the log's
    new end first and then flushes the whole cache, since anything may have
    changed. A disconnect alone does not flush: the log is durable, so it
    resumes from its cursor once the store answers again (`wake` cuts the
    retry delay short); meanwhile the cache is read only for the stale
    window (the cache's `confirmed_at`, which this class keeps).

    Args:
        store: where the log lives.
        cache: the cache to keep consistent.
        on_key_change: called with the key_id of every key event (e.g. to
            drop a local over-limit memo).
        on_flush: called on a flush and on every policy change (e.g. to drop
            every over-limit memo).
        block_s: how long one read waits for new events; also how often an
            idle follower confirms it is caught up, so well below `BEHIND_AFTER_S`.
        monotonic: the clock of the cache's ages.
    """

    def __init__(
        self,
        store: Store,
        cache: KeyCache,
        *,
        on_key_change: Callable[[str], None] | None = None,
        on_flush: Callable[[], None] | None = None,
        block_s: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache = cache
        self._on_key_change = on_key_change
        self._on_flush = on_flush
        self._block_s = block_s
        self._monotonic = monotonic
        self.cursor = ""  # "" until positioned: never read from, it cannot tell a loss
        self.connected = False
        self.applied = 0
        self.skipped = 0
        self.flushes = 0
        # The lag clock starts now: a cache whose follower never reaches the
        # log is not trusted past the stale window either.
        self._confirmed_at = monotonic()
        cache.confirmed_at = self._confirmed_at
        self._backoff_s = _BACKOFF_FIRST_S
        self._wakeup = asyncio.Event()
        self._unknown_logged: dict[str, float] = {}

    # -- state -------------------------------------------------------------------

    @property
    def lag_s(self) -> float:
        """Seconds since the follower last confirmed it had read the whole log."""
        return max(0.0, self._monotonic() - self._confirmed_at)

    @property
    def state(self) -> FollowerState:
        """Starting, disconnected, behind or following."""
        if not self.cursor:
            return FollowerState.STARTING
        if not self.connected:
            return FollowerState.DISCONNECTED
        if self.lag_s > BEHIND_AFTER_S:
            return FollowerState.BEHIND
        return FollowerState.FOLLOWING

    def health(self) -> FollowerHealth:
        """A snapshot for health checks and metrics (a plain read, any thread)."""
        return FollowerHealth(self.state, self.lag_s, self.cursor, self.flushes, self.skipped)

    def wake(self) -> None:
        """Retry at once (the store answers again): called by the store's health probe."""
        self._wakeup.set()

    def _confirm(self, at: float) -> None:
        self._confirmed_at = max(self._confirmed_at, at)
        self._cache.confirmed_at = self._confirmed_at

    # -- following ---------------------------------------------------------------

    async def start(self) -> None:
        """Position at the log's end (the cache is empty at start).

        Raises:
            StoreUnavailableError: the store does not answer.
        """
        now = self._monotonic()
        self.cursor = await self._store.last_cursor()
        self.connected = True
        self._confirm(now)

    async def run(self) -> None:
        """Follow the log until cancelled."""
        while True:
            await self.poll_once()

    async def poll_once(self) -> None:
        """Read and apply one batch; on a failure, handle it and wait the retry delay.

        Never raises for the store's failures or a lost log.
        """
        try:
            if not self.connected:
                await self._reconnect()
            started = self._monotonic()
            events = await self._store.read_events(self.cursor, _BATCH, self._block_s)
        except CursorExpiredError:
            await self._resync()
            return
        except StoreUnavailableError:
            if self.connected:
                log.warning("event log unreachable; will resume from cursor", cursor=self.cursor)
            self.connected = False
            await self._backoff()
            return
        self._backoff_s = _BACKOFF_FIRST_S
        for event in events:
            self.apply(event)
        if len(events) < _BATCH:
            # The read saw the log's end as of its last look, which a read
            # that waited for news took `block_s` after it began.
            self._confirm(min(self._monotonic(), started + self._block_s))

    async def _reconnect(self) -> None:
        if not self.cursor:
            await self._position()
        else:
            await self._store.ping()  # read_events then checks the cursor is still valid
        self.connected = True
        log.info("event log reachable again", cursor=self.cursor)

    async def _position(self) -> None:
        """Take the log's end as the cursor, then flush: what was cached before is unfollowed."""
        end = await self._store.last_cursor()
        self._flush()
        self.cursor = end

    async def _resync(self) -> None:
        log.warning("event log lost; flushing cache", cursor=self.cursor)
        self.cursor = ""
        try:
            await self._position()
        except StoreUnavailableError:
            self.connected = False
            self._flush()  # the loss is known now; positioning later flushes again
            await self._backoff()

    async def _backoff(self) -> None:
        delay = self._backoff_s * random.uniform(0.5, 1.0)
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wakeup.wait()

    def _flush(self) -> None:
        self.flushes += 1
        self._cache.clear()
        if self._on_flush is not None:
            self._on_flush()

    # -- applying ----------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Evict what `event` changed and advance the cursor."""
        self.apply_local(event)
        self.cursor = event.cursor
        self.applied += 1

    def apply_local(self, event: Event) -> None:
        """Evict what `event` changed (also for this process's own writes, without waiting)."""
        action = ACTIONS.get(event.type) if isinstance(event.type, EventType) else None
        if action is Action.EVICT_KEY:
            if event.key_hash:
                self._cache.evict_key(event.key_hash)
            if self._on_key_change is not None and event.key_id:
                self._on_key_change(event.key_id)
        elif action is Action.EVICT_POLICY:
            if event.policy_id:
                self._cache.evict_policy(event.policy_id)
            if self._on_flush is not None:
                self._on_flush()  # limits may have changed for every key of the policy
        elif action is None:
            self._skip(str(event.type))

    def _skip(self, kind: str) -> None:
        self.skipped += 1
        now = self._monotonic()
        logged = self._unknown_logged
        last = logged.get(kind)
        if last is not None and now - last < _UNKNOWN_LOG_EVERY_S:
            return
        if last is None and len(logged) >= _UNKNOWN_TYPES_MAX:
            return
        logged[kind] = now
        log.warning("skipping events of an unknown type (written by a newer version?)",
                    event_type=kind[:64])


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


class EventLog:
    """The lifecycle event log as a client sees it (WatchEvents): where it ends, what follows.

    Args:
        store: the backend holding the log.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def last_cursor(self) -> str:
        """The cursor of the newest event ("" for an empty log).

        Raises:
            StoreUnavailableError: the store did not answer.
        """
        return await self._store.last_cursor()

    def follow(self, since: str, *, from_beginning: bool = False) -> AsyncIterator[Event]:
        """Yield events after `since` until the caller stops (see `watch`)."""
        return watch(self._store, since, from_beginning=from_beginning)
