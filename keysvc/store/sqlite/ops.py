"""The SQL of `SqliteStore`: synchronous functions over one open connection.

`SqliteStore` runs them in a worker thread, under its lock, and wraps every
write in `transaction()`; none of them commits on its own.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence

from keysvc.core.errors import (
    AlreadyExistsError,
    ConflictError,
    CursorExpiredError,
    DuplicateRequestError,
    NotFoundError,
)
from keysvc.core.model import (
    Event,
    KeyRecord,
    Policy,
    budget_of,
    next_deadline,
)
from keysvc.store.base import RequestMark
from keysvc.store.codec import (
    dumps,
    event_from_dict,
    event_to_dict,
    loads,
    mark_from_json,
    mark_to_json,
    policy_from_dict,
    policy_to_dict,
    record_from_dict,
    record_to_dict,
)

__all__ = [
    "IN_CHUNK",
    "append_event",
    "get_key",
    "get_policy",
    "get_request",
    "insert_key",
    "insert_policy",
    "keys_page",
    "keys_with_policy",
    "last_id",
    "policies_page",
    "policy_versions_page",
    "put_policy_version",
    "put_request",
    "read_events",
    "replace_key",
    "transaction",
]

IN_CHUNK = 500  # bound parameters per statement (SQLite's limit is 999 on old builds)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """Run the block in one transaction; IMMEDIATE takes the write lock up front."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- events -------------------------------------------------------------------


def append_event(conn: sqlite3.Connection, event: Event, trim_to: int | None) -> str:
    """Insert an event; with `trim_to`, also delete all but the newest `trim_to` events."""
    cursor = conn.execute("INSERT INTO events (body) VALUES (?)", (dumps(event_to_dict(event)),))
    event_id = int(cursor.lastrowid or 0)
    horizon = event_id - trim_to if trim_to is not None else 0
    if horizon > 0:
        conn.execute("DELETE FROM events WHERE id <= ?", (horizon,))
    return str(event_id)


def last_id(conn: sqlite3.Connection) -> int:
    """Return the highest event id ever issued in this file (0 when none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def read_events(conn: sqlite3.Connection, after_id: int | None, limit: int) -> list[Event]:
    """Return up to `limit` events after `after_id` (None: from the oldest retained).

    Ids are dense (AUTOINCREMENT, and a rolled-back insert rolls its id back
    too), so nothing after `after_id` was lost exactly when the next retained
    id is `after_id + 1`, or no id was issued after it.

    Raises:
        CursorExpiredError: events after `after_id` were deleted (trimmed, or
            the table emptied), or it is past the newest id ever issued (the
            id sequence or the file was reset).
    """
    with transaction(conn, "DEFERRED"):
        if after_id is not None:
            end = last_id(conn)
            if after_id > end:
                raise CursorExpiredError(f"event cursor {after_id} is past the log's end (reset)")
            if after_id < end:
                (following,) = conn.execute(
                    "SELECT min(id) FROM events WHERE id > ?", (after_id,)
                ).fetchone()
                if following != after_id + 1:
                    raise CursorExpiredError(f"events after cursor {after_id} were deleted")
        rows = conn.execute(
            "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id or 0, limit)
        ).fetchall()
    return [event_from_dict(loads(body), str(event_id)) for event_id, body in rows]


# -- request ids --------------------------------------------------------------


def get_request(conn: sqlite3.Connection, actor: str, request_id: str, now: float) -> RequestMark | None:
    """Return the unexpired mark of (actor, request_id), or None."""
    row = conn.execute(
        "SELECT body FROM requests WHERE actor = ? AND request_id = ? AND expires_at > ?",
        (actor, request_id, now),
    ).fetchone()
    return None if row is None else mark_from_json(actor, request_id, row[0])


def put_request(conn: sqlite3.Connection, mark: RequestMark) -> None:
    """Record a request mark (inside the write's own transaction); forget expired ones.

    Raises:
        DuplicateRequestError: a new mark whose (actor, request_id) is recorded.
    """
    conn.execute("DELETE FROM requests WHERE expires_at <= ?", (mark.recorded_at,))
    if not mark.replace and get_request(conn, mark.actor, mark.request_id, mark.recorded_at):
        raise DuplicateRequestError("request_id: already used by this admin key")
    conn.execute(
        "INSERT OR REPLACE INTO requests (actor, request_id, expires_at, body) VALUES (?, ?, ?, ?)",
        (mark.actor, mark.request_id, mark.expires_at, mark_to_json(mark)),
    )


# -- keys ---------------------------------------------------------------------


def insert_key(conn: sqlite3.Connection, record: KeyRecord, quota: int | None) -> None:
    """Insert a new key and, when `quota` is set, its quota counter.

    Raises:
        AlreadyExistsError: its key_id or key_hash is taken.
    """
    try:
        conn.execute(
            "INSERT INTO keys (key_id, key_hash, owner_id, policy_id, revision, due_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (record.key_id, record.key_hash, record.owner_id, record.policy_id,
             record.revision, next_deadline(record), dumps(record_to_dict(record))),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExistsError(f"key {record.key_id} (or its hash) exists already") from None
    if quota is not None:
        conn.execute(
            "INSERT OR REPLACE INTO quotas (key_id, remaining, refilled_at) VALUES (?, ?, ?)",
            (budget_of(record), quota, record.created_at),
        )


def replace_key(conn: sqlite3.Connection, record: KeyRecord, expected_revision: int) -> None:
    """Replace a key's record if it is still at `expected_revision`.

    Raises:
        NotFoundError: no such key.
        ConflictError: it is at another revision.
        AlreadyExistsError: its new key_hash belongs to another key.
    """
    row = conn.execute("SELECT revision FROM keys WHERE key_id = ?", (record.key_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"key {record.key_id} not found")
    if row[0] != expected_revision:
        raise ConflictError(f"key {record.key_id} is at revision {row[0]}, not {expected_revision}")
    try:
        conn.execute(
            "UPDATE keys SET key_hash = ?, owner_id = ?, policy_id = ?, revision = ?, due_at = ?, "
            "body = ? WHERE key_id = ?",
            (record.key_hash, record.owner_id, record.policy_id, record.revision,
             next_deadline(record), dumps(record_to_dict(record)), record.key_id),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExistsError(f"another key has the hash of {record.key_id}") from None


def get_key(conn: sqlite3.Connection, *, key_id: str = "", key_hash: str = "") -> KeyRecord | None:
    """Return the key with this id (or, given `key_hash`, this hash), or None."""
    if key_hash:
        row = conn.execute("SELECT body FROM keys WHERE key_hash = ?", (key_hash,)).fetchone()
    else:
        row = conn.execute("SELECT body FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    return None if row is None else record_from_dict(loads(row[0]))


def keys_by_hash(conn: sqlite3.Connection, key_hashes: Sequence[str]) -> list[KeyRecord | None]:
    """Return the key of each hash, in order (None where unknown)."""
    found: dict[str, KeyRecord] = {}
    for start in range(0, len(key_hashes), IN_CHUNK):
        chunk = key_hashes[start:start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for key_hash, body in conn.execute(
            f"SELECT key_hash, body FROM keys WHERE key_hash IN ({marks})", tuple(chunk)  # noqa: S608 - only ? marks
        ):
            found[key_hash] = record_from_dict(loads(body))
    return [found.get(h) for h in key_hashes]


def keys_page(conn: sqlite3.Connection, owner_id: str, after: str, limit: int) -> list[KeyRecord]:
    """Return up to `limit` keys with key_id > `after`, of `owner_id` ("" = all)."""
    if owner_id:
        rows = conn.execute(
            "SELECT body FROM keys WHERE owner_id = ? AND key_id > ? ORDER BY key_id LIMIT ?",
            (owner_id, after, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT body FROM keys WHERE key_id > ? ORDER BY key_id LIMIT ?", (after, limit)
        ).fetchall()
    return [record_from_dict(loads(row[0])) for row in rows]


def due_keys(conn: sqlite3.Connection, now: float, limit: int) -> list[KeyRecord]:
    """Return up to `limit` keys whose next unannounced deadline is <= `now`, soonest first."""
    rows = conn.execute(
        "SELECT body FROM keys WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    return [record_from_dict(loads(row[0])) for row in rows]


def keys_with_policy(conn: sqlite3.Connection, policy_id: str, limit: int) -> tuple[int, list[str]]:
    """Return how many keys reference `policy_id` and the first `limit` key_ids."""
    with transaction(conn, "DEFERRED"):
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM keys WHERE policy_id = ?", (policy_id,)
        ).fetchone()
        rows = conn.execute(
            "SELECT key_id FROM keys WHERE policy_id = ? ORDER BY key_id LIMIT ?",
            (policy_id, max(0, limit)),
        ).fetchall()
    return int(count), [row[0] for row in rows]


# -- policies -------------------------------------------------------------------


def _insert_version(conn: sqlite3.Connection, policy: Policy) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO policy_versions (policy_id, version, body) VALUES (?, ?, ?)",
        (policy.policy_id, policy.version, dumps(policy_to_dict(policy))),
    )


def insert_policy(conn: sqlite3.Connection, policy: Policy) -> None:
    """Insert a new policy at its (first) version.

    Raises:
        AlreadyExistsError: the policy_id is taken.
    """
    try:
        conn.execute(
            "INSERT INTO policies (policy_id, version) VALUES (?, ?)",
            (policy.policy_id, policy.version),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExistsError(f"policy {policy.policy_id} exists already") from None
    _insert_version(conn, policy)


def put_policy_version(conn: sqlite3.Connection, policy: Policy) -> None:
    """Make `policy` the current version if the current one is `policy.version - 1`.

    Raises:
        NotFoundError: no such policy.
        ConflictError: the current version is another.
    """
    row = conn.execute(
        "SELECT version FROM policies WHERE policy_id = ?", (policy.policy_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"policy {policy.policy_id} not found")
    if row[0] != policy.version - 1:
        raise ConflictError(
            f"policy {policy.policy_id} is at version {row[0]}, not {policy.version - 1}"
        )
    conn.execute(
        "UPDATE policies SET version = ? WHERE policy_id = ?", (policy.version, policy.policy_id)
    )
    _insert_version(conn, policy)


_CURRENT = (
    "SELECT v.body FROM policies p JOIN policy_versions v "
    "ON v.policy_id = p.policy_id AND v.version = p.version "
)


def get_policy(conn: sqlite3.Connection, policy_id: str, version: int) -> Policy | None:
    """Return the current (version 0) or a given version of a policy, or None."""
    if version == 0:
        row = conn.execute(_CURRENT + "WHERE p.policy_id = ?", (policy_id,)).fetchone()
    else:
        row = conn.execute(
            "SELECT body FROM policy_versions WHERE policy_id = ? AND version = ?",
            (policy_id, version),
        ).fetchone()
    return None if row is None else policy_from_dict(loads(row[0]))


def policies_page(conn: sqlite3.Connection, after: str, limit: int) -> list[Policy]:
    """Return the current version of up to `limit` policies with policy_id > `after`."""
    rows = conn.execute(
        _CURRENT + "WHERE p.policy_id > ? ORDER BY p.policy_id LIMIT ?", (after, limit)
    ).fetchall()
    return [policy_from_dict(loads(row[0])) for row in rows]


def policy_versions_page(
    conn: sqlite3.Connection, policy_id: str, before: int, limit: int
) -> list[Policy]:
    """Return up to `limit` versions below `before`, newest first.

    Raises:
        NotFoundError: no such policy.
    """
    with transaction(conn, "DEFERRED"):
        if conn.execute(
            "SELECT 1 FROM policies WHERE policy_id = ?", (policy_id,)
        ).fetchone() is None:
            raise NotFoundError(f"policy {policy_id} not found")
        rows = conn.execute(
            "SELECT body FROM policy_versions WHERE policy_id = ? AND version < ? "
            "ORDER BY version DESC LIMIT ?",
            (policy_id, before, limit),
        ).fetchall()
    return [policy_from_dict(loads(row[0])) for row in rows]
