"""Client request ids (AIP-155): a retried admin write replays its first outcome.

A write with a `request_id` records a `RequestMark` in the same store
transaction as the change: who asked (the actor), a fingerprint of the
request's fields, and the outcome (ids and revisions) to answer a retry with.
A retry by the same actor within `REQUEST_WINDOW_S` finds the mark and
replays; the same id with different fields is refused.

Secrets are kept only as SHA-256, so a lost CreateKey/RotateKey answer cannot
be sent again: its retry gets the same key with a fresh secret (`rekey`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from keysvc.core import keys
from keysvc.core.errors import ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from keysvc.core.model import Event, EventType, KeyRecord
from keysvc.service import checks as check
from keysvc.store.base import RequestMark, Store

__all__ = ["REQUEST_WINDOW_S", "Recorded", "Replays", "Request", "recorded", "request"]

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
    check.no_key("request_id", request_id)  # it is stored and traced
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


class Replays:
    """Finds the first attempt of a retried write, and re-keys what it made.

    Args:
        store: the backend.
        clock: wall clock.
        default_prefix: prefix of a re-keyed key whose hint names none.
        on_change: called with the event of a re-keying, so this process
            evicts the unseen secret at once (as for every admin write).
    """

    def __init__(
        self, store: Store, clock: Callable[[], float], default_prefix: str,
        on_change: Callable[[Event], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._prefix = default_prefix
        self._on_change = on_change or (lambda event: None)

    async def first_attempt(self, req: Request | None, span: Any) -> Recorded | None:
        """Return what an earlier attempt of `req` recorded; the audit span tells a replay."""
        if req is None:
            return None
        span.set("request_id", req.request_id)
        first = await recorded(self._store, req, self._clock())
        if first is not None:
            span.set("outcome", "replayed")
        return first

    async def raced(self, req: Request | None, exc: Exception) -> Recorded:
        """After a refused write, return what a concurrent attempt of `req` recorded.

        Raises:
            exc: no attempt of `req` recorded anything; the refusal stands.
        """
        first = await recorded(self._store, req, self._clock())
        if first is None:
            raise exc
        return first

    async def rekey(self, actor: str, first: Recorded, span: Any) -> tuple[KeyRecord, str]:
        """Give the key a first attempt made a fresh secret; return it and the secret.

        The new hash replaces the unseen one in one write with the moved-on
        mark, so a retry of the retry works too; the unseen secret stops
        working (its hash leaves every cache with the key.updated event). The
        key must be as the first attempt left it: one changed since (by
        someone who did get the first answer) is not re-keyed.

        Raises:
            NotFoundError: the key is gone.
            FailedPreconditionError: the key changed since the first attempt.
            ConflictError: a concurrent retry re-keyed it first (retry again).
        """
        key_id, revision = str(first.outcome["key_id"]), int(first.outcome["revision"])
        record = await self._store.get_key(key_id)
        if record is None:
            raise NotFoundError(f"key {key_id} not found")
        if record.revision != revision:
            now_recorded = await self._store.get_request(first.mark.actor, first.mark.request_id,
                                                         self._clock())
            if now_recorded is not None and now_recorded.outcome != first.mark.outcome:
                raise ConflictError("request_id: a concurrent retry of this request re-issued "
                                    "the secret; retry")
            raise FailedPreconditionError(
                f"request_id: key {key_id} made by this request has changed since; "
                "its secret is not re-issued"
            )
        generated = keys.generate(record.hint.rpartition("_")[0] or self._prefix)
        now = self._clock()
        updated = replace(record, key_hash=generated.key_hash, hint=generated.hint, updated_at=now,
                          revision=record.revision + 1)
        event = Event(EventType.KEY_UPDATED, now, actor, key_id=key_id, key_hash=record.key_hash,
                      policy_id=record.policy_id)
        await self._store.update_key(
            updated, record.revision, event,
            first.moved_on({**first.outcome, "revision": updated.revision}, now),
        )
        self._on_change(event)
        span.set("target.key_id", key_id)
        span.set("outcome", "secret_reissued")
        return updated, generated.secret
