"""The counter SQL of `SqliteStore`: rate windows, quotas, last-use times (rules: `keysvc.core.limits`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from keysvc.core.limits import QuotaCounter, plan_take, window_start
from keysvc.core.model import (
    CounterResult,
    TakeRequest,
)
from keysvc.store.sqlite.ops import IN_CHUNK

__all__ = ["last_used", "set_quota", "take", "touch"]


def take(conn: sqlite3.Connection, request: TakeRequest) -> CounterResult:
    """Apply `plan_take` to the stored window count and quota counter."""
    key_id, cost, rate_limit, quota, refill, now = request
    used = 0
    start = 0
    if rate_limit is not None:
        start = window_start(now, rate_limit.window_s)
        row = conn.execute(
            "SELECT window_s, window_start, used FROM rate_windows WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is not None and (row[0], row[1]) == (rate_limit.window_s, start):
            used = int(row[2])
    counter = None
    if quota:
        row = conn.execute(
            "SELECT remaining, refilled_at FROM quotas WHERE key_id = ?", (key_id,)
        ).fetchone()
        counter = QuotaCounter(None) if row is None else QuotaCounter(row[0], row[1])
    plan = plan_take(cost, rate_limit, used, counter, refill, now)
    if rate_limit is not None and plan.rate_used != used:
        conn.execute(
            "INSERT OR REPLACE INTO rate_windows (key_id, window_s, window_start, used) "
            "VALUES (?, ?, ?, ?)",
            (key_id, rate_limit.window_s, start, plan.rate_used),
        )
    if counter is not None and plan.quota != counter and plan.quota.remaining is not None:
        conn.execute(
            "INSERT OR REPLACE INTO quotas (key_id, remaining, refilled_at) VALUES (?, ?, ?)",
            (key_id, plan.quota.remaining, plan.quota.refilled_at),
        )
    return plan.result


def set_quota(conn: sqlite3.Connection, key_id: str, remaining: int | None) -> None:
    """Set (keeping the refill cadence) or with None remove a quota counter."""
    if remaining is None:
        conn.execute("DELETE FROM quotas WHERE key_id = ?", (key_id,))
    else:
        conn.execute(
            "INSERT INTO quotas (key_id, remaining) VALUES (?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining",
            (key_id, remaining),
        )


def touch(conn: sqlite3.Connection, rows: Sequence[tuple[str, float]]) -> None:
    """Record (key_id, time) pairs, keeping the later time of each key."""
    conn.executemany(
        "INSERT INTO last_used (key_id, at) VALUES (?, ?) "
        "ON CONFLICT (key_id) DO UPDATE SET at = max(at, excluded.at)",
        rows,
    )


def last_used(conn: sqlite3.Connection, key_ids: Sequence[str]) -> dict[str, float]:
    """Return the recorded last-use times of these keys."""
    found: dict[str, float] = {}
    for i in range(0, len(key_ids), IN_CHUNK):
        chunk = key_ids[i : i + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT key_id, at FROM last_used WHERE key_id IN ({marks})"  # noqa: S608
        found.update((row[0], float(row[1])) for row in conn.execute(sql, chunk))
    return found
