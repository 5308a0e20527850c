"""keysvc.store.redis.stream.check_cursor: every XINFO STREAM shape a lost log can take."""

from __future__ import annotations

from typing import Any

import pytest

from keysvc.core.errors import CursorExpiredError
from keysvc.store.redis.stream import ORIGIN, check_cursor, end_of

pytestmark = pytest.mark.unit


def info(first: str | None, last: str, added: int | None, length: int, deleted: str = "0-0") -> dict[str, Any]:
    """XINFO STREAM's answer as redis-py gives it (Redis 7 unless `added` is None)."""
    found: dict[str, Any] = {"length": length, "last-generated-id": last,
                             "first-entry": None if first is None else (first, {"e": "{}"})}
    if added is not None:
        found |= {"entries-added": added, "max-deleted-entry-id": deleted}
    return found


LOST = [
    ("emptied past the cursor", (5, 0), info(None, "9-0", 3, 0)),
    ("emptied, Redis 6", (5, 0), info(None, "9-0", None, 0)),
    ("trimmed past the cursor", (5, 0), info("9-0", "12-0", 6, 2)),
    ("entry after the cursor deleted", (5, 0), info("5-0", "12-0", 6, 4, deleted="7-0")),
    ("recreated, nothing removed since", (5, 0), info("20-0", "21-0", 2, 2)),
    ("reset: ends before the cursor", (5, 0), info("1-0", "2-0", 2, 2)),
    ("gone", (5, 0), None),
]

KEPT = [
    ("caught up", (9, 0), info("1-0", "9-0", 3, 3)),
    ("at the end of an emptied log", (9, 0), info(None, "9-0", 3, 0)),
    ("origin of a log that never lost an entry", ORIGIN, info("20-0", "21-0", 2, 2)),
    ("origin of no log", ORIGIN, None),
    ("trimmed, but not past the cursor", (9, 0), info("9-1", "12-0", 6, 3)),
]


@pytest.mark.parametrize(("why", "after", "stream"), LOST, ids=[c[0] for c in LOST])
def test_every_loss_expires_the_cursor(why: str, after: tuple[int, int], stream: dict[str, Any] | None) -> None:
    with pytest.raises(CursorExpiredError):
        check_cursor(after, stream)


@pytest.mark.parametrize(("why", "after", "stream"), KEPT, ids=[c[0] for c in KEPT])
def test_no_loss_keeps_the_cursor(why: str, after: tuple[int, int], stream: dict[str, Any] | None) -> None:
    check_cursor(after, stream)


def test_the_end_of_a_log_is_its_last_generated_id_or_the_origin() -> None:
    assert end_of(info(None, "9-3", 3, 0)) == "9-3"
    assert end_of(None) == "0-0"
