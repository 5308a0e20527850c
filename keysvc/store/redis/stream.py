"""The event log of `RedisStore`: a stream, its cursors, and when one has expired."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from keysvc.core.errors import CursorExpiredError, InvalidArgumentError
from keysvc.core.model import Event
from keysvc.store.codec import event_from_dict, loads
from keysvc.store.redis.io import unavailable
from keysvc.store.redis.topology import Client

__all__ = [
    "ORIGIN", "StreamId", "check_cursor", "end_of", "parse_stream_id", "read_entries",
    "stream_info", "wait_for_entry",
]

StreamId = tuple[int, int]
ORIGIN: StreamId = (0, 0)
"""The cursor before any entry: the end of a log that does not exist yet."""
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
    after `after`, or, in a stream trimmed to empty, when its last generated
    id comes later than `after`. Stream ids are not dense (`<ms>-<seq>`), so
    "right after" can only be known within one millisecond: a cursor that is
    itself the last trimmed entry may be reported lost (a needless resync,
    never a miss; it only happens to a follower a whole retention behind).
    An entry deleted by XDEL past `after` (`max-deleted-entry-id`) is a loss
    too. A stream deleted and recreated since `after` was read either ends
    before `after` or starts after it; one that never lost an entry
    (`entries-added` equals its length) is read from `ORIGIN` without loss.

    Raises:
        CursorExpiredError: entries after `after` were trimmed, or `after`
            does not come from this stream (it was reset, e.g. flushed).
    """
    if info is None:
        if after != ORIGIN:
            raise CursorExpiredError("event log is gone (reset); resynchronise")
        return
    last = _field_id(info, "last-generated-id") or ORIGIN
    if after > last:
        raise CursorExpiredError("event cursor is past the log's end (reset); resynchronise")
    deleted = _field_id(info, "max-deleted-entry-id")  # Redis >= 7
    added, length = info.get("entries-added"), info.get("length")  # entries-added: Redis >= 7
    first = _field_id(info, "first-entry")
    if first is None:
        if after < last:
            raise CursorExpiredError("events after the cursor were trimmed; resynchronise")
    elif added is not None and added == length:
        # Nothing was ever removed: only a cursor from an older stream lies before its start.
        if after != ORIGIN and first > after:
            raise CursorExpiredError("event log was recreated after the cursor; resynchronise")
    elif first > (after[0], after[1] + 1) or (deleted is not None and deleted > after):
        raise CursorExpiredError("events after the cursor are gone (trimmed or reset); resynchronise")


def end_of(info: Mapping[str, Any] | None) -> str:
    """The cursor of a stream's end, from XINFO STREAM (None: no stream): later entries are new.

    The last id ever generated, not the newest entry's, so that a stream
    emptied by trimming still has an end, and `ORIGIN` for no stream: both
    are cursors `check_cursor` can find lost.
    """
    end = None if info is None else _field_id(info, "last-generated-id")
    return _id_text(end or ORIGIN)


async def stream_info(client: Client, stream: str) -> Mapping[str, Any] | None:
    """XINFO STREAM's answer, or None when the stream does not exist."""
    try:
        info: Mapping[str, Any] = await client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return info


def _id_text(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


async def read_entries(
    client: Client, stream: str, after: StreamId | None, limit: int
) -> list[Event]:
    """Return up to `limit` events after `after` (None: from the oldest retained).

    The cursor check (XINFO STREAM) and the read (XRANGE) run in one MULTI, so
    no trim or reset can slip in between.

    Raises:
        CursorExpiredError: as `check_cursor`.
    """
    async with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(stream)
        # XRANGE, not XREAD: its key has a fixed place, so a cluster client routes it unaided.
        pipe.xrange(stream, "(" + _id_text(after or ORIGIN), "+", count=limit)
        info, reply = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        info = None
    elif isinstance(info, Exception):
        raise info
    if after is not None:
        check_cursor(after, info)
    entries = reply or []
    return [event_from_dict(loads(fields["e"]), str(entry_id)) for entry_id, fields in entries]


async def wait_for_entry(
    blocking: Client, stream: str, after: StreamId | None, wait_s: float, timeout_s: float
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
