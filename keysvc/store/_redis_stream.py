"""The event log of `RedisStore`: a stream, its cursors, and when one has expired."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from keysvc.errors import CursorExpiredError, InvalidArgumentError
from keysvc.model import Event
from keysvc.store._codec import event_from_dict, loads
from keysvc.store._redis_io import unavailable

__all__ = ["StreamId", "check_cursor", "parse_stream_id", "read_entries", "wait_for_entry"]

StreamId = tuple[int, int]
_ID = re.compile(r"([0-9]+)-([0-9]+)")


def parse_stream_id(text: str) -> StreamId:
    """Return a stream entry id as a comparable (ms, seq) pair.

    Raises:
        InvalidArgumentError: it is not `<ms>-<seq>`.
    """
    match = _ID.fullmatch(text)
    if match is None:
        raise InvalidArgumentError("invalid event cursor")
    return int(match[1]), int(match[2])


def _field_id(info: Mapping[str, Any], name: str) -> StreamId | None:
    value = info.get(name)
    if isinstance(value, (list, tuple)):  # first-entry / last-entry: (id, fields)
        value = value[0] if value else None
    return None if value is None else parse_stream_id(str(value))


def check_cursor(after: StreamId, info: Mapping[str, Any] | None) -> None:
    """Raise when events after `after` can no longer be read from this stream.

    `info` is XINFO STREAM's answer, None when the stream does not exist.
    Trimming removes the oldest entries, so events after `after` were lost
    exactly when the first retained entry comes later than the one right
    after `after`. Stream ids are not dense (`<ms>-<seq>`), so "right after"
    can only be known within one millisecond: a cursor that is itself the
    last trimmed entry may be reported lost (a needless resync, never a miss;
    it only happens to a follower a whole retention behind).

    Raises:
        CursorExpiredError: entries after `after` were trimmed, or `after`
            does not come from this stream (it was reset, e.g. flushed).
    """
    if info is None:
        if after != (0, 0):
            raise CursorExpiredError("event log is gone (reset); resynchronise")
        return
    last = _field_id(info, "last-generated-id") or (0, 0)
    if after > last:
        raise CursorExpiredError("event cursor is past the log's end (reset); resynchronise")
    first = _field_id(info, "first-entry")
    # A stream recreated after a reset also starts past the old cursor, so
    # this catches it even once the new stream has grown beyond the cursor.
    if first is not None and first > (after[0], after[1] + 1):
        raise CursorExpiredError("events after the cursor are gone (trimmed or reset); resynchronise")


def _id_text(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


async def read_entries(
    client: Redis, stream: str, after: StreamId | None, limit: int
) -> list[Event]:
    """Return up to `limit` events after `after` (None: from the oldest retained).

    The cursor check (XINFO STREAM) and the read (XREAD) run in one MULTI, so
    no trim or reset can slip in between.

    Raises:
        CursorExpiredError: as `check_cursor`.
    """
    async with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(stream)
        pipe.xread({stream: _id_text(after or (0, 0))}, count=limit)
        info, reply = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        info = None
    elif isinstance(info, Exception):
        raise info
    if after is not None:
        check_cursor(after, info)
    entries = reply[0][1] if reply else []
    return [event_from_dict(loads(fields["e"]), str(entry_id)) for entry_id, fields in entries]


async def wait_for_entry(
    blocking: Redis, stream: str, after: StreamId | None, wait_s: float, timeout_s: float
) -> None:
    """Return when an entry after `after` exists, or after about `wait_s` seconds.

    Uses XREAD BLOCK on `blocking`, a client without a socket timeout; the
    call is bounded by `wait_s + timeout_s` here instead. What it reads is
    dropped: the caller reads again, with the cursor check.

    Raises:
        StoreUnavailableError: Redis did not answer in that time.
    """
    with unavailable():
        # A saturated event loop can be late to read a reply that Redis sent on
        # time: allow at least a second beyond the block before calling it lost.
        async with asyncio.timeout(wait_s + max(timeout_s, 1.0)):
            await blocking.xread(
                {stream: _id_text(after or (0, 0))}, count=1, block=max(1, int(wait_s * 1000))
            )
