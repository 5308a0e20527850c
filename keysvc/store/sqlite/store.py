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
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

from keysvc.core.errors import CursorExpiredError, InvalidArgumentError, StoreUnavailableError
from keysvc.core.model import (
    CounterResult,
    Event,
    KeyRecord,
    Policy,
    QuotaRefill,
    RateLimit,
    budget_of,
)
from keysvc.store.base import KeyPage, PolicyPage, RequestMark
from keysvc.store.codec import (
    check_page_size,
    check_revision,
    decode_int_token,
    decode_token,
    paginate,
)
from keysvc.store.sqlite import ops
from keysvc.store.sqlite.schema import Connection, connect, connect_reader

__all__ = ["SqliteStore"]

_T = TypeVar("_T")


def _parse_cursor(after: str) -> int:
    if not (after.isascii() and after.isdigit()):
        raise InvalidArgumentError("invalid event cursor")
    return int(after)


class SqliteStore:
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

    def __init__(
        self,
        path: str,
        *,
        event_retention: int = 100_000,
        poll_interval_s: float = 0.05,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if event_retention < 1:
            raise ValueError("event_retention must be >= 1")
        self._path = path
        self._retention = event_retention
        self._poll_interval_s = poll_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._trim_every = max(1, min(1000, event_retention // 100))
        self._appended = 0
        # One connection per role, each used under its lock by one thread at a time.
        self._writer = Connection(partial(connect, path, busy_timeout_s), path)
        self._reader = Connection(partial(connect_reader, path, busy_timeout_s), path)
        self._log_generation = 0  # the reader generation whose log the follower's cursors are in
        self._wakeup: asyncio.Event | None = None

    # -- plumbing -------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read on the read connection."""
        deadline = time.monotonic() + self._busy_timeout_s
        return await asyncio.to_thread(self._on, self._reader, work, None, deadline)

    async def _run_write(
        self, work: Callable[[sqlite3.Connection], _T], *, durable: bool = False
    ) -> _T:
        """Run a write (its own transaction) on the write connection."""
        deadline = time.monotonic() + self._busy_timeout_s
        return await asyncio.to_thread(self._on, self._writer, work, durable, deadline)

    def _on(
        self,
        role: Connection,
        work: Callable[[sqlite3.Connection], _T],
        durable: bool | None,
        deadline: float,
    ) -> _T:
        # The deadline started with the call, so time queued for a worker
        # thread or the connection counts too.
        if not role.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreUnavailableError(
                f"SQLite store {self._path}: no connection free within the store timeout"
            )
        try:
            conn = role.open()
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            conn.execute(f"PRAGMA busy_timeout = {left_ms}")
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            if durable is None:
                return work(conn)
            conn.execute("PRAGMA synchronous = " + ("FULL" if durable else "NORMAL"))
            with ops.transaction(conn):
                return work(conn)
        except sqlite3.DatabaseError as exc:
            # Locked, interrupted, I/O, full disk, not a database: the store
            # cannot answer. Integrity and programming errors are bugs: let them be.
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                raise StoreUnavailableError(f"SQLite store {self._path}: {exc}") from exc
            raise
        finally:
            role.lock.release()

    async def _change(
        self, work: Callable[[sqlite3.Connection], object], event: Event,
        mark: RequestMark | None = None,
    ) -> str:
        """Run a lifecycle write and append its event (and record `mark`), in one transaction."""

        def run(conn: sqlite3.Connection) -> str:
            if mark is not None:
                ops.put_request(conn, mark)
            work(conn)
            # Runs under the write connection's lock: the count needs no other guard.
            self._appended += 1
            trim = self._appended % self._trim_every == 0
            return ops.append_event(conn, event, self._retention if trim else None)

        cursor = await self._run_write(run, durable=True)
        self._wake()
        return cursor

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run_write(work)

    def _wake(self) -> None:
        # This process's readers need not wait for their next poll.
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None:
            waiter.set()

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
                ops.set_quota(conn, budget_of(record), quota)

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

    async def take(
        self,
        key_id: str,
        cost: int,
        rate_limit: RateLimit | None,
        quota: bool,
        refill: QuotaRefill | None,
        now: float,
    ) -> CounterResult:
        """Take from the rate limit and quota in one transaction (rules in `keysvc.core.limits`)."""
        if rate_limit is None and not quota:
            return CounterResult(allowed=True)
        return await self._write(
            partial(ops.take, key_id=key_id, cost=cost, rate_limit=rate_limit, quota=quota,
                    refill=refill, now=now)
        )

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota; its refill cadence is kept."""
        if remaining is not None and remaining < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")
        await self._write(partial(ops.set_quota, key_id=key_id, remaining=remaining))

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
            await self._write(partial(ops.touch, rows=rows))

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        """Return the known last-use times of these keys."""
        ids = list(dict.fromkeys(key_ids))
        return await self._run(partial(ops.last_used, key_ids=ids)) if ids else {}

    # -- policies ---------------------------------------------------------------

    async def create_policy(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert version 1 of a new policy and its event in one transaction."""
        if policy.version != 1:
            raise InvalidArgumentError("a new policy starts at version 1")
        await self._change(partial(ops.insert_policy, policy=policy), event, mark)

    async def get_policy(self, policy_id: str, version: int = 0) -> Policy | None:
        """Return the current version (version=0) or a given version, or None."""
        return await self._run(partial(ops.get_policy, policy_id=policy_id, version=version))

    async def list_policies(self, page_size: int, page_token: str) -> PolicyPage:
        """Page through the current version of every policy, ordered by policy_id."""
        check_page_size(page_size)
        after = decode_token("policies", page_token) if page_token else ""
        rows = await self._run(partial(ops.policies_page, after=after, limit=page_size + 1))
        policies, token = paginate(rows, page_size, "policies", lambda p: p.policy_id)
        return PolicyPage(policies, token)

    async def put_policy_version(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Append `policy` as the new current version if the current one is `version - 1`."""
        await self._change(partial(ops.put_policy_version, policy=policy), event, mark)

    async def list_policy_versions(
        self, policy_id: str, page_size: int, page_token: str
    ) -> PolicyPage:
        """Page through one policy's versions, newest first."""
        check_page_size(page_size)
        kind = "versions:" + policy_id
        before = decode_int_token(kind, page_token) if page_token else 2**62
        rows = await self._run(partial(ops.policy_versions_page, policy_id=policy_id,
                                       before=before, limit=page_size + 1))
        policies, token = paginate(rows, page_size, kind, lambda p: str(p.version))
        return PolicyPage(policies, token)

    # -- meta -------------------------------------------------------------------

    async def get_meta(self, name: str) -> str | None:
        """Return a small named value, or None."""
        row = await self._run(
            lambda conn: conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value."""
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )

    async def ensure_meta(self, name: str, value: str) -> str:
        """Set a small named value unless one is set; return the stored one."""

        def work(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
            return str(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

        return await self._write(work)

    # -- request ids --------------------------------------------------------------

    async def get_request(self, actor: str, request_id: str, now: float) -> RequestMark | None:
        """Return the unexpired mark of (actor, request_id), or None."""
        return await self._run(
            partial(ops.get_request, actor=actor, request_id=request_id, now=now)
        )

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
            events = await self._run(work)
            left = deadline - loop.time()
            if events or left <= 0:
                return events
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(self._poll_interval_s, left))

    async def last_cursor(self) -> str:
        """Return the id of the newest event ever appended ("0" when none)."""
        return str(await self._run(ops.last_id))
