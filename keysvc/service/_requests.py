"""Client request ids (AIP-155): a retried admin write replays its first outcome.

A write with a `request_id` records a `RequestMark` in the same store
transaction as the change: who asked (the actor), a fingerprint of the
request's fields, and the outcome (ids and revisions) to answer a retry with.
A retry by the same actor within `REQUEST_WINDOW_S` finds the mark and
replays; the same id with different fields is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keysvc.errors import FailedPreconditionError, InvalidArgumentError
from keysvc.store.base import RequestMark, Store

__all__ = ["REQUEST_WINDOW_S", "Recorded", "Request", "recorded", "request"]

REQUEST_WINDOW_S = 24 * 3600
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Request:
    """One admin write's request_id, scoped to its actor, and its fingerprint."""

    actor: str
    request_id: str
    fingerprint: str

    def mark(self, outcome: Mapping[str, Any], now: float) -> RequestMark:
        """Return the mark to record with the write that first answers this request."""
        return RequestMark(self.actor, self.request_id, self.fingerprint,
                           json.dumps(outcome, sort_keys=True), now + REQUEST_WINDOW_S, now)


@dataclass(frozen=True, slots=True)
class Recorded:
    """A request made before: its stored mark and the outcome it recorded."""

    mark: RequestMark
    outcome: Mapping[str, Any]

    def moved_on(self, outcome: Mapping[str, Any], now: float) -> RequestMark:
        """Return the mark replacing this one (same window) after a re-issued secret."""
        return dataclasses.replace(self.mark, outcome=json.dumps(outcome, sort_keys=True),
                                   recorded_at=now, replace=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def request(actor: str, request_id: str, operation: str, fields: Mapping[str, Any]) -> Request | None:
    """Return the request to record for a write, or None when it has no request_id.

    `fields` are the request's fields as the caller sent them (never a secret).

    Raises:
        InvalidArgumentError: the request_id is malformed.
    """
    if not request_id:
        return None
    if not _REQUEST_ID_RE.fullmatch(request_id):
        raise InvalidArgumentError("request_id: 1-64 of letters, digits, '-' and '_' (a UUID)")
    canonical = json.dumps({"operation": operation, "fields": _plain(fields)},
                           sort_keys=True, separators=(",", ":"))
    return Request(actor, request_id, hashlib.sha256(canonical.encode()).hexdigest())


async def recorded(store: Store, req: Request | None, now: float) -> Recorded | None:
    """Return what the first attempt of this request recorded, or None when there was none.

    Raises:
        FailedPreconditionError: the actor used this request_id for a different request.
    """
    if req is None:
        return None
    mark = await store.get_request(req.actor, req.request_id, now)
    if mark is None:
        return None
    if mark.fingerprint != req.fingerprint:
        raise FailedPreconditionError(
            "request_id: already used by this admin key for a different request"
        )
    return Recorded(mark, json.loads(mark.outcome))
