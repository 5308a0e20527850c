"""Embedded store: one durable SQLite file, zero set-up.

Several processes may open the same file (`--workers N`); WAL mode lets their
readers run beside the one writer, and every write is one `BEGIN IMMEDIATE`
transaction (its event row included), so it takes the write lock up front and
waits at most `busy_timeout_s` for it.

sqlite3 blocks, so each call runs in a worker thread (`asyncio.to_thread`)
over one connection per store, serialised by a lock: SQLite has one writer
per file anyway, and a cache hit never reaches the store.

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
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

from keysvc.errors import CursorExpiredError, InvalidArgumentError, StoreUnavailableError
from keysvc.model import CounterResult, Event, KeyRecord, Policy, QuotaRefill, RateLimit
from keysvc.store import _sqlite_ops as ops
from keysvc.store._codec import (
    check_page_size,
    check_revision,
    decode_int_token,
    decode_token,
    paginate,
)
from keysvc.store._sqlite_schema import connect
from keysvc.store.base import KeyPage, PolicyPage

__all__ = ["SqliteStore"]

_T = TypeVar("_T")


def _file_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) of `path`, None when it does not exist."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


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
        busy_timeout_s: how long a call waits for another process's write
            lock before raising StoreUnavailableError.
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
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (device, inode) the connection opened
        self._closed = False
        self._wakeup: asyncio.Event | None = None

    # -- plumbing -------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise StoreUnavailableError("the SQLite store is closed")
            try:
                if self._conn is None:
                    self._conn = connect(self._path, self._busy_timeout_s)
                    self._file_id = _file_id(self._path)
                return work(self._conn)
            except sqlite3.DatabaseError as exc:
                # Locked, I/O, full disk, not a database: the store cannot
                # answer. Integrity and programming errors are bugs: let them be.
                if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                    raise StoreUnavailableError(f"SQLite store {self._path}: {exc}") from exc
                raise

    async def _change(self, work: Callable[[sqlite3.Connection], object], event: Event) -> str:
        """Run a lifecycle write and append its event, in one transaction."""

        def run(conn: sqlite3.Connection) -> str:
            with ops.transaction(conn):
                work(conn)
                # Runs under the lock, so the count needs no other guard.
                self._appended += 1
                trim = self._appended % self._trim_every == 0
                return ops.append_event(conn, event, self._retention if trim else None)

        cursor = await self._run(run)
        self._wake()
        return cursor

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def run(conn: sqlite3.Connection) -> _T:
            with ops.transaction(conn):
                return work(conn)

        return await self._run(run)

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
        """Close the connection; later calls raise StoreUnavailableError. Idempotent."""

        def run() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(run)

    # -- keys -------------------------------------------------------------------

    async def create_key(self, record: KeyRecord, quota: int | None, event: Event) -> None:
        """Insert a new key, its quota counter and its event in one transaction."""
        await self._change(partial(ops.insert_key, record=record, quota=quota), event)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """Return the key with this public id, or None."""
        return await self._run(partial(ops.get_key, key_id=key_id))

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """Return the key whose secret hashes to `key_hash`, or None."""
        return await self._run(partial(ops.get_key, key_hash=key_hash))

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

    async def update_key(self, record: KeyRecord, expected_revision: int, event: Event) -> None:
        """Replace a key's record if it is still at `expected_revision`."""
        check_revision(record.revision, expected_revision)
        await self._change(
            partial(ops.replace_key, record=record, expected_revision=expected_revision), event
        )

    async def rotate_key(
        self,
        old: KeyRecord,
        expected_revision: int,
        new: KeyRecord,
        quota: int | None,
        event: Event,
    ) -> None:
        """Replace `old` and insert `new` (and its quota counter) in one transaction."""
        check_revision(old.revision, expected_revision)

        def work(conn: sqlite3.Connection) -> None:
            ops.replace_key(conn, old, expected_revision)
            ops.insert_key(conn, new, quota)

        await self._change(work, event)

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
        """Take from the rate limit and quota in one transaction (rules in `_counters`)."""
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
        await self._run(partial(ops.set_quota, key_id=key_id, remaining=remaining))

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

    async def create_policy(self, policy: Policy, event: Event) -> None:
        """Insert version 1 of a new policy and its event in one transaction."""
        if policy.version != 1:
            raise InvalidArgumentError("a new policy starts at version 1")
        await self._change(partial(ops.insert_policy, policy=policy), event)

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

    async def put_policy_version(self, policy: Policy, event: Event) -> None:
        """Append `policy` as the new current version if the current one is `version - 1`."""
        await self._change(partial(ops.put_policy_version, policy=policy), event)

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
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
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
            if self._file_id is not None and _file_id(self._path) != self._file_id:
                # The file was replaced under us (a restored copy): the log this
                # connection follows is not the one at the path any more.
                conn.close()
                self._conn = None
                if after_id is not None:
                    raise CursorExpiredError("the database file was replaced; resynchronise")
                conn = self._conn = connect(self._path, self._busy_timeout_s)
                self._file_id = _file_id(self._path)
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
