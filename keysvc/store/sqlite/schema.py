"""SQLite schema of `SqliteStore` and opening a database file.

Records and policies are JSON bodies; the columns beside them exist only for
uniqueness, indexes and revision checks. The events table uses AUTOINCREMENT
so an id is never reused after trimming: a cursor (str(id)) stays meaningful
across processes sharing the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable

from keysvc.core.errors import ConfigError, StoreUnavailableError

__all__ = ["SCHEMA_VERSION", "Connection", "connect", "connect_reader"]

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS store_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    due_at REAL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_owner ON keys (owner_id, key_id);
CREATE INDEX IF NOT EXISTS keys_by_due ON keys (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS keys_by_policy ON keys (policy_id, key_id);
CREATE TABLE IF NOT EXISTS policies (
    policy_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_versions (
    policy_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (policy_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quotas (
    key_id TEXT PRIMARY KEY,
    remaining INTEGER NOT NULL,
    refilled_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_windows (
    key_id TEXT PRIMARY KEY,
    window_s INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_used (
    key_id TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    actor TEXT NOT NULL,
    request_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (actor, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_by_expiry ON requests (expires_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
"""


def connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open `path`, switch it to WAL and create or check the schema.

    Raises:
        sqlite3.Error: the file cannot be opened or written.
        ConfigError: the file was written by a newer keysvc.
    """
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write
    # takes the write lock up front instead of failing mid-transaction.
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power loss may drop the last commits (never
        # corrupting the file). Good enough for counters and last-use times;
        # SqliteStore switches to FULL around each lifecycle write, so an
        # acknowledged revocation survives a power loss.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _DDL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM store_meta WHERE name = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO store_meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"KEYSVC_STORE: {path} has schema version {row[0]}, newer than this "
                    f"keysvc understands ({SCHEMA_VERSION}); upgrade keysvc"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn


def connect_reader(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open a read-only connection to a keysvc file (creating the schema if it has none).

    Raises:
        sqlite3.Error: the file cannot be opened.
        ConfigError: the file was written by a newer keysvc.
    """
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        row = conn.execute(
            "SELECT value FROM store_meta WHERE name = 'schema_version'"
        ).fetchone()
    except sqlite3.OperationalError:
        row = None  # a new file: no tables yet
    except BaseException:
        conn.close()
        raise
    if row is None or int(row[0]) != SCHEMA_VERSION:
        # Let the writer's path create or check the schema, then read through it.
        conn.close()
        conn = connect(path, busy_timeout_s)
    conn.execute("PRAGMA query_only=1")
    return conn


def file_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) of `path`, None when it does not exist."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class Connection:
    """One lazily opened connection and the lock its users hold.

    A file replaced under a running process (a restored copy) is noticed on
    the next use: the connection is reopened on the file now at the path, and
    `generation` counts each such reopening so the event reader can tell its
    cursor belongs to the old log.
    """

    def __init__(self, opener: Callable[[], sqlite3.Connection], path: str) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self._opener = opener
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._closed = False

    def open(self) -> sqlite3.Connection:
        """Return the connection, opening it on first use or after a replacement (call under `lock`).

        Raises:
            StoreUnavailableError: the store was closed.
        """
        if self._closed:
            raise StoreUnavailableError("the SQLite store is closed")
        if self._conn is not None and self._file_id is not None and file_id(self._path) != self._file_id:
            self._conn.close()
            self._conn = None
            self.generation += 1
        if self._conn is None:
            self._conn = self._opener()
            self._file_id = file_id(self._path)
        return self._conn

    def close(self) -> None:
        """Close the connection for good (call under `lock`)."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
