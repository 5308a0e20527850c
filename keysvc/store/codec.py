"""JSON forms of records, policies and events; page tokens; shared argument checks.

Private to the store backends, so both write the same shapes and page the
same way. Decoding is lenient about fields it does not know (a newer writer
may add some) and strict about the ones it needs.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.model import Event, EventType, KeyRecord, Policy, QuotaRefill, RateLimit
from keysvc.core.shared import SharedValues
from keysvc.store.base import RequestMark

__all__ = [
    "check_page_size",
    "check_revision",
    "decode_int_token",
    "decode_token",
    "dumps",
    "encode_token",
    "event_from_dict",
    "event_to_dict",
    "loads",
    "mark_from_json",
    "mark_to_json",
    "paginate",
    "policy_from_dict",
    "policy_to_dict",
    "record_from_dict",
    "record_to_dict",
]

_T = TypeVar("_T")


def dumps(value: Mapping[str, Any]) -> str:
    """Serialise a dict from one of the `*_to_dict` helpers compactly."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a JSON object written by `dumps`."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("stored value is not a JSON object")
    return value


# Records decoded for the cache share what repeats across keys: owner and
# policy ids, scope tuples, metadata names, and the empty metadata mapping. At 100k+ cached
# keys this is a good part of the per-key memory.
_EMPTY_METADATA: Mapping[str, str] = MappingProxyType({})
_SCOPES: SharedValues[tuple[str, ...]] = SharedValues()


def _shared_scopes(values: Any) -> tuple[str, ...]:
    scopes = tuple(sys.intern(str(s)) for s in values)
    return _SCOPES.share(scopes, scopes)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def record_to_dict(record: KeyRecord) -> dict[str, Any]:
    """Return the stored form of a key record."""
    return {
        "key_id": record.key_id,
        "key_hash": record.key_hash,
        "hint": record.hint,
        "owner_id": record.owner_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "name": record.name,
        "policy_id": record.policy_id,
        "scopes": list(record.scopes),
        "metadata": dict(record.metadata),
        "enabled": record.enabled,
        "expires_at": record.expires_at,
        "revoke_at": record.revoke_at,
        "rotated_from": record.rotated_from,
        "rotated_to": record.rotated_to,
        "has_quota": record.has_quota,
        "revision": record.revision,
        "announced_through": record.announced_through,
        "budget_id": record.budget_id,
    }


def record_from_dict(data: Mapping[str, Any]) -> KeyRecord:
    """Rebuild a key record from its stored form."""
    return KeyRecord(
        key_id=str(data["key_id"]),
        key_hash=str(data["key_hash"]),
        hint=str(data.get("hint", "")),
        owner_id=sys.intern(str(data.get("owner_id", ""))),
        created_at=float(data["created_at"]),
        updated_at=float(data["updated_at"]),
        name=str(data.get("name", "")),
        policy_id=sys.intern(str(data.get("policy_id", ""))),
        scopes=_shared_scopes(data.get("scopes", ())),
        metadata={sys.intern(str(k)): str(v) for k, v in dict(data["metadata"]).items()}
        if data.get("metadata") else _EMPTY_METADATA,
        enabled=bool(data.get("enabled", True)),
        expires_at=_opt_float(data.get("expires_at")),
        revoke_at=_opt_float(data.get("revoke_at")),
        rotated_from=str(data.get("rotated_from", "")),
        rotated_to=str(data.get("rotated_to", "")),
        has_quota=bool(data.get("has_quota", False)),
        budget_id=str(data.get("budget_id", "")),
        revision=int(data.get("revision", 1)),
        announced_through=float(data.get("announced_through", 0.0)),
    )


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Return the stored form of one policy version."""
    rate = policy.rate_limit
    refill = policy.quota_refill
    return {
        "policy_id": policy.policy_id,
        "version": policy.version,
        "created_at": policy.created_at,
        "updated_at": policy.updated_at,
        "description": policy.description,
        "scopes": list(policy.scopes),
        "allowed_cidrs": list(policy.allowed_cidrs),
        "rate_limit": None if rate is None else {"requests": rate.requests, "window_s": rate.window_s},
        "quota_refill": None
        if refill is None
        else {"amount": refill.amount, "interval_s": refill.interval_s},
        "max_key_ttl_s": policy.max_key_ttl_s,
        "updated_by": policy.updated_by,
        "change_note": policy.change_note,
    }


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    """Rebuild one policy version from its stored form."""
    rate = data.get("rate_limit")
    refill = data.get("quota_refill")
    ttl = data.get("max_key_ttl_s")
    return Policy(
        policy_id=str(data["policy_id"]),
        version=int(data["version"]),
        created_at=float(data["created_at"]),
        updated_at=float(data["updated_at"]),
        description=str(data.get("description", "")),
        scopes=tuple(str(s) for s in data.get("scopes", ())),
        allowed_cidrs=tuple(str(c) for c in data.get("allowed_cidrs", ())),
        rate_limit=None
        if rate is None
        else RateLimit(requests=int(rate["requests"]), window_s=int(rate["window_s"])),
        quota_refill=None
        if refill is None
        else QuotaRefill(amount=int(refill["amount"]), interval_s=int(refill["interval_s"])),
        max_key_ttl_s=None if ttl is None else int(ttl),
        updated_by=str(data.get("updated_by", "")),
        change_note=str(data.get("change_note", "")),
    )


def event_to_dict(event: Event) -> dict[str, Any]:
    """Return the stored form of an event; its cursor is the log's business, not stored."""
    return {
        "type": str(event.type),
        "at": event.at,
        "actor": event.actor,
        "key_id": event.key_id,
        "key_hash": event.key_hash,
        "policy_id": event.policy_id,
        "policy_version": event.policy_version,
    }


_EVENT_TYPES = frozenset(t.value for t in EventType)


def event_from_dict(data: Mapping[str, Any], cursor: str) -> Event:
    """Rebuild an event read from the log at `cursor` (an unknown type stays a string)."""
    kind = str(data["type"])
    return Event(
        type=EventType(kind) if kind in _EVENT_TYPES else kind,
        at=float(data["at"]),
        actor=str(data.get("actor", "")),
        key_id=str(data.get("key_id", "")),
        key_hash=str(data.get("key_hash", "")),
        policy_id=str(data.get("policy_id", "")),
        policy_version=int(data.get("policy_version", 0)),
        cursor=cursor,
    )


def encode_token(kind: str, value: str) -> str:
    """Return an opaque page token carrying `value` (the last item of a page).

    `kind` names what the token pages through, so a token from one listing is
    refused by another instead of silently skipping items.
    """
    raw = f"{kind}\x00{value}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(kind: str, token: str) -> str:
    """Return the value carried by a token from `encode_token(kind, ...)`.

    Raises:
        InvalidArgumentError: the token was not issued for this listing.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError("invalid page token") from None
    got_kind, sep, value = raw.partition("\x00")
    if not sep or got_kind != kind:
        raise InvalidArgumentError("invalid page token")
    return value


def check_page_size(page_size: int) -> int:
    """Return `page_size` if it is at least 1 (clamping the maximum is the caller's job).

    Raises:
        InvalidArgumentError: it is smaller.
    """
    if page_size < 1:
        raise InvalidArgumentError("page_size must be >= 1")
    return page_size


def decode_int_token(kind: str, token: str) -> int:
    """Return the non-negative integer carried by a token from `encode_token(kind, str(n))`.

    Raises:
        InvalidArgumentError: the token was not issued for this listing.
    """
    value = decode_token(kind, token)
    # At most 18 digits: any larger number is no position (and overflows SQLite).
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise InvalidArgumentError("invalid page token")
    return int(value)


def paginate(
    items: Sequence[_T], page_size: int, kind: str, position: Callable[[_T], str]
) -> tuple[list[_T], str]:
    """Cut a page from up to `page_size + 1` fetched items; return it and its next token.

    The extra item only tells whether there is a next page; the token carries
    the position of the page's last item, so the next page starts after it.
    """
    page = list(items[:page_size])
    token = encode_token(kind, position(page[-1])) if len(items) > page_size else ""
    return page, token


def check_revision(revision: int, expected_revision: int) -> None:
    """Refuse a replacement record whose revision is not `expected_revision + 1`.

    Raises:
        InvalidArgumentError: it is not.
    """
    if revision != expected_revision + 1:
        raise InvalidArgumentError(f"record revision {revision} is not expected_revision + 1")


def mark_to_json(mark: RequestMark) -> str:
    """Return the stored form of a request mark (its actor and id are the row's key)."""
    return dumps({"fingerprint": mark.fingerprint, "outcome": mark.outcome,
                  "expires_at": mark.expires_at, "recorded_at": mark.recorded_at})


def mark_from_json(actor: str, request_id: str, body: str | bytes) -> RequestMark:
    """Rebuild a request mark from its stored form."""
    data = loads(body)
    return RequestMark(actor, request_id, str(data["fingerprint"]), str(data["outcome"]),
                       float(data["expires_at"]), float(data.get("recorded_at", 0.0)))
