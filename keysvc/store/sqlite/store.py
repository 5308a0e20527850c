"""Embedded store: one durable SQLite file, zero set-up.

Several processes may open the same file (`--workers N`); WAL mode lets their
readers run beside the one writer, and every write is one `BEGIN IMMEDIATE`
transaction (its event row included), so it takes the write lock up front.

sqlite3 blocks, so each call runs in a worker thread (`asyncio.to_thread`).
A store holds two connections, each used by one thread at a time under its
own lock: one for writes (SQLite has one writer per file anyway) and one,
read-only, for reads, so a read never queues behind a write that waits for
another process's lock.

Timeouts: every call has a deadline of `busy_timeout_s` (the store timeout):
waiting for its connection, waiting for the file's write lock (SQLite's busy
timeout, set to what is left) and running (a progress handler interrupts a
statement past it) all count, and running out raises StoreUnavailableError.

Durability: lifecycle writes (keys, policies, their events) commit with
`synchronous=FULL`, so an acknowledged change (a revocation) survives a power
loss; counters and last-use times commit with NORMAL (WAL: a power loss may
drop the last ones, never corrupt the file).

Clock: one file, one host, one clock: takes count on the caller's `now`.

The event log is a table whose AUTOINCREMENT id is the cursor. Other
processes' events are found by polling every `poll_interval_s`; this
process's own appends wake its readers at once. Trimming runs every few
appends (about 1% of the retention); ids are dense, so an expired cursor
is told apart exactly from one that is merely old (the next id is missing).
A file replaced under a running process (a restored copy) is noticed by the
next event read, which reopens the path and reports the old cursor expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial

from keysvc.core.errors import CursorExpiredError, InvalidArgumentError, StoreUnavailableError
from keysvc.core.model import (
    CounterResult,
    Event,
    KeyRecord,
    TakeRequest,
    budget_of,
)
from keysvc.store.base import KeyPage, RequestMark
from keysvc.store.codec import (
    check_page_size,
    check_revision,
    decode_token,
    paginate,
)
from keysvc.store.sqlite import counters, ops
from keysvc.store.sqlite.policies import SqlitePolicies

__all__ = ["SqliteStore"]


def _parse_cursor(after: str) -> int:
    if not (after.isascii() and after.isdigit()):
        raise InvalidArgumentError("invalid event cursor")
    return int(after)


class SqliteStore(SqlitePolicies):
    """`Store` on one SQLite file in WAL mode; several processes may share the file.

    Args:
        path: the database file (created with its schema on first use).
        event_retention: events kept in the log (trimmed in batches of ~1%).
        poll_interval_s: how often a blocked `read_events` looks for other
            processes' events.
        busy_timeout_s: the deadline of one call (connection, another
            process's write lock and the work itself) before it raises
            StoreUnavailableError.
    """

    # -- lifecycle --------------------------------------------------------------

    async def ping(self) -> None:
        """Open the file (creating the schema) and run a trivial query."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close both connections; later calls raise StoreUnavailableError. Idempotent."""

        def run() -> None:
            for role in (self._writer, self._reader):
                with role.lock:
                    role.close()

        await asyncio.to_thread(run)

    # -- keys -------------------------------------------------------------------

    async def create_key(
        self, record: KeyRecord, quota: int | None, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert a new key, its quota counter and its event in one transaction."""
        await self._change(partial(ops.insert_key, record=record, quota=quota), event, mark)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """Return the key with this public id, or None."""
        return await self._run(partial(ops.get_key, key_id=key_id))

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """Return the key whose secret hashes to `key_hash`, or None."""
        return await self._run(partial(ops.get_key, key_hash=key_hash))

    async def get_keys_by_hash(self, key_hashes: Sequence[str]) -> Sequence[KeyRecord | None]:
        """Return the key of each hash, in order (None where unknown): one query."""
        return await self._run(partial(ops.keys_by_hash, key_hashes=key_hashes))

    async def list_keys(self, owner_id: str, page_size: int, page_token: str) -> KeyPage:
        """Page through keys ordered by key_id, optionally only `owner_id`'s."""
        check_page_size(page_size)
        after = decode_token("keys", page_token) if page_token else ""
        rows = await self._run(partial(ops.keys_page, owner_id=owner_id, after=after,
                                       limit=page_size + 1))
        keys, token = paginate(rows, page_size, "keys", lambda r: r.key_id)
        return KeyPage(keys, token)

    async def keys_with_policy(self, policy_id: str, limit: int) -> tuple[int, Sequence[str]]:
        """Return how many keys reference `policy_id` and the first `limit` of their ids."""
        return await self._run(partial(ops.keys_with_policy, policy_id=policy_id, limit=limit))

    async def due_keys(self, now: float, limit: int) -> Sequence[KeyRecord]:
        """Return keys whose next unannounced deadline has passed, soonest first."""
        return await self._run(partial(ops.due_keys, now=now, limit=max(1, limit)))

    async def update_key(
        self, record: KeyRecord, expected_revision: int, event: Event,
        mark: RequestMark | None = None, *, quota: int | None = None,
    ) -> None:
        """Replace a key's record if it is still at `expected_revision` (and set `quota`).

        The record, its quota counter, its event and `mark` are one transaction.
        """
        check_revision(record.revision, expected_revision)
        if quota is not None and quota < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")

        def work(conn: sqlite3.Connection) -> None:
            ops.replace_key(conn, record, expected_revision)
            if quota is not None:
                counters.set_quota(conn, budget_of(record), quota)

        await self._change(work, event, mark)

    async def rotate_key(
        self,
        old: KeyRecord,
        expected_revision: int,
        new: KeyRecord,
        quota: int | None,
        event: Event,
        mark: RequestMark | None = None,
    ) -> None:
        """Replace `old` and insert `new` (and its quota counter) in one transaction."""
        check_revision(old.revision, expected_revision)

        def work(conn: sqlite3.Connection) -> None:
            ops.replace_key(conn, old, expected_revision)
            ops.insert_key(conn, new, quota)

        await self._change(work, event, mark)

    # -- counters ---------------------------------------------------------------

    async def take(self, request: TakeRequest) -> CounterResult:
        """Take from the rate limit and quota in one transaction (rules in `keysvc.core.limits`)."""
        if request.rate_limit is None and not request.quota:
            return CounterResult(allowed=True)
        return await self._write(partial(counters.take, request=request))

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota; its refill cadence is kept."""
        if remaining is not None and remaining < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")
        await self._write(partial(counters.set_quota, key_id=key_id, remaining=remaining))

    async def get_quota(self, key_id: str) -> int | None:
        """Return a key's remaining quota, or None when it has none."""
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT remaining FROM quotas WHERE key_id = ?", (key_id,)
            ).fetchone()
        )
        return None if row is None else int(row[0])

    async def touch(self, last_used: Mapping[str, float]) -> None:
        """Record last-use times; an older time never replaces a newer one."""
        if last_used:
            rows = [(key_id, float(at)) for key_id, at in last_used.items()]
            await self._write(partial(counters.touch, rows=rows))

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        """Return the known last-use times of these keys."""
        ids = list(dict.fromkeys(key_ids))
        return await self._run(partial(counters.last_used, key_ids=ids)) if ids else {}

    # -- event log --------------------------------------------------------------

    async def append_event(self, event: Event) -> str:
        """Append an event on its own; return its cursor."""
        return await self._change(lambda conn: None, event)

    async def read_events(self, after: str, limit: int, block_s: float) -> Sequence[Event]:
        """Return up to `limit` events after `after`, polling up to `block_s` for the first."""
        if limit < 1:
            raise InvalidArgumentError("limit must be >= 1")
        after_id = _parse_cursor(after) if after else None

        def work(conn: sqlite3.Connection) -> list[Event]:
            # Runs under the reader's lock: the generation check needs no other guard.
            if self._reader.generation != self._log_generation:
                # The file was replaced under us (a restored copy): a cursor of
                # the old log means nothing in the one now at the path.
                self._log_generation = self._reader.generation
                if after_id is not None:
                    raise CursorExpiredError("the database file was replaced; resynchronise")
            return ops.read_events(conn, after_id, limit)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, block_s)
        while True:
            # Taken before reading, so an append in between still wakes us.
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            waiter = self._wakeup
            try:
                events = await self._run(work)
            except StoreUnavailableError:
                if after_id is None or self._reader.generation == self._log_generation:
                    raise
                # Replaced by a file SQLite cannot read (e.g. moved in beside the old
                # file's WAL): the old log is lost all the same, and a follower that
                # waited for the new one to answer would keep serving its cache.
                self._log_generation = self._reader.generation
                raise CursorExpiredError("the database file was replaced; resynchronise") from None
            left = deadline - loop.time()
            if events or left <= 0:
                return events
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(self._poll_interval_s, left))

    async def last_cursor(self) -> str:
        """Return the id of the newest event ever appended ("0" when none)."""
        return str(await self._run(ops.last_id))
