"""Announces scheduled changes of state (expiry, scheduled revocation) as events.

Validate needs no event for these (it checks the clock on every call), but
WatchEvents consumers do. Every server process runs an announcer; each
announcement is a revision-checked write, so exactly one process wins per
deadline and the others skip it (ConflictError).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from keysvc.core.errors import ConflictError, NotFoundError, StoreUnavailableError
from keysvc.core.model import Event, EventType, KeyRecord, next_deadline
from keysvc.store.base import Store

__all__ = ["DeadlineAnnouncer"]

log = structlog.get_logger("keysvc.deadlines")
_BATCH = 100


class DeadlineAnnouncer:
    """Emits key.expired / key.revoked_by_schedule once per passed deadline.

    Args:
        store: the backend.
        interval_s: how often to look for passed deadlines.
        clock: wall clock.
    """

    def __init__(
        self, store: Store, *, interval_s: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        self.announced = 0

    async def run_once(self) -> int:
        """Announce every passed deadline; return how many this process announced."""
        count = 0
        while True:
            now = self._clock()
            due = await self._store.due_keys(now, _BATCH)
            for record in due:
                count += await self._announce(record, now)
            if len(due) < _BATCH:
                return count

    async def _announce(self, record: KeyRecord, now: float) -> int:
        deadline = next_deadline(record)
        if deadline is None or deadline > now:
            return 0
        kind = EventType.KEY_REVOKED_BY_SCHEDULE if deadline == record.revoke_at else EventType.KEY_EXPIRED
        marked = replace(record, announced_through=deadline, revision=record.revision + 1)
        event = Event(kind, now, "", key_id=record.key_id, key_hash=record.key_hash,
                      policy_id=record.policy_id)
        try:
            await self._store.update_key(marked, record.revision, event)
        except (ConflictError, NotFoundError):
            return 0  # another process announced it, or an admin changed the key first
        self.announced += 1
        return 1

    async def run(self) -> None:
        """Announce forever, every `interval_s`, until cancelled."""
        while True:
            try:
                await self.run_once()
            except StoreUnavailableError:
                pass  # the health probe reports the store; try again next round
            except Exception:
                log.exception("deadline announcer failed; retrying")
            await asyncio.sleep(self._interval_s)
