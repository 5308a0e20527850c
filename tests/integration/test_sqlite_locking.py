"""SQLite under another process's write lock: writes fail in time, reads carry on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keysvc.app.server import make_store
from keysvc.app.settings import Settings
from keysvc.core.errors import StoreUnavailableError
from keysvc.core.model import Event, EventType, KeyRecord
from keysvc.store.sqlite.store import SqliteStore

pytestmark = pytest.mark.integration

# Holds the file's write lock (BEGIN IMMEDIATE) until its stdin closes.
_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO meta (name, value) VALUES ('holder', 'x')")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def rec(key_id: str) -> KeyRecord:
    return KeyRecord(key_id=key_id, key_hash="h-" + key_id, hint="ks_abcd", owner_id="o",
                     created_at=1.0, updated_at=1.0)


def ev() -> Event:
    return Event(type=EventType.KEY_CREATED, at=1.0, actor="t")


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A second process holding the write lock of a keysvc file (schema made first)."""
    path = tmp_path / "locked.db"

    async def init() -> None:
        store = SqliteStore(str(path))
        await store.create_key(rec("k1"), None, ev())
        await store.close()

    asyncio.run(init())
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )

    def release() -> None:
        assert holder.stdin is not None
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)

    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield path, release
    finally:
        release()


async def test_a_locked_file_fails_writes_within_the_store_timeout_and_reads_go_on(
    lock_holder: tuple[Path, Callable[[], None]],
) -> None:
    path, _ = lock_holder
    store = make_store(Settings(store="sqlite:///" + str(path), store_timeout_ms=100))
    try:
        # 3 s is 30x the store timeout and under SQLite's old 5 s default.
        with pytest.raises(StoreUnavailableError) as caught:
            await asyncio.wait_for(store.create_key(rec("k2"), None, ev()), 3.0)
        assert "k2" not in str(caught.value)
        with pytest.raises(StoreUnavailableError):
            await asyncio.wait_for(store.set_meta("m", "v"), 3.0)
        found = await asyncio.wait_for(store.get_key("k1"), 3.0)
        assert found is not None
        assert found.key_id == "k1"
    finally:
        await store.close()


async def test_queued_writes_each_keep_the_store_timeout(
    lock_holder: tuple[Path, Callable[[], None]],
) -> None:
    """Writes queued behind one that waits for the lock do not wait a timeout each in turn."""
    path, _ = lock_holder
    store = SqliteStore(str(path), busy_timeout_s=0.1)
    try:
        # 40 x 0.1 s in turn would be 4 s; each keeping its own deadline, a fraction.
        writes = [store.set_meta(f"m{i}", "v") for i in range(40)]
        outcomes = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 3.0)
        assert all(isinstance(o, StoreUnavailableError) for o in outcomes), outcomes
    finally:
        await store.close()


async def test_reads_do_not_queue_behind_a_waiting_write(
    lock_holder: tuple[Path, Callable[[], None]],
) -> None:
    path, release = lock_holder
    store = SqliteStore(str(path), busy_timeout_s=60.0)
    try:
        await store.ping()
        write = asyncio.ensure_future(store.create_key(rec("k2"), None, ev()))
        # Give the write a moment to reach SQLite's lock wait; not a pass condition.
        await asyncio.wait({write}, timeout=0.5)
        assert not write.done()
        reads = [await store.get_key("k1") for _ in range(20)]
        assert all(r is not None for r in reads)
        assert not write.done(), "the reads answered while the write was still waiting"
        release()
        await asyncio.wait_for(write, 60.0)
        assert await store.get_key("k2") is not None
    finally:
        await store.close()


async def test_lifecycle_writes_commit_with_full_sync(tmp_path: Path) -> None:
    """An acknowledged revocation must survive a power loss: FULL, not NORMAL."""
    store = SqliteStore(str(tmp_path / "k.db"))
    try:
        def synchronous() -> int:
            conn = store._writer.open()  # the connection the last write committed on
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        await store.touch({"k0": 1.0})
        assert synchronous() == 1  # NORMAL: last-use times may be lost, never corrupted
        await store.create_key(rec("k1"), None, ev())
        assert synchronous() == 2  # FULL
    finally:
        await store.close()
