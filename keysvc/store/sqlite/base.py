"""The connections, threads and write path every part of `SqliteStore` shares."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from keysvc.core.errors import StoreUnavailableError
from keysvc.core.model import (
    Event,
)
from keysvc.store.base import RequestMark
from keysvc.store.sqlite import ops
from keysvc.store.sqlite.schema import Connection, connect, connect_reader

__all__ = ["SqliteBase"]

T = TypeVar("T")


class SqliteBase:
    """The two connections, the worker-thread runner and the write path; see `SqliteStore`."""

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

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the read connection."""
        deadline = time.monotonic() + self._busy_timeout_s
        return await asyncio.to_thread(self._on, self._reader, work, None, deadline)

    async def _run_write(
        self, work: Callable[[sqlite3.Connection], T], *, durable: bool = False
    ) -> T:
        """Run a write (its own transaction) on the write connection."""
        deadline = time.monotonic() + self._busy_timeout_s
        return await asyncio.to_thread(self._on, self._writer, work, durable, deadline)

    def _on(
        self,
        role: Connection,
        work: Callable[[sqlite3.Connection], T],
        durable: bool | None,
        deadline: float,
    ) -> T:
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

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run_write(work)

    def _wake(self) -> None:
        # This process's readers need not wait for their next poll.
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None:
            waiter.set()
