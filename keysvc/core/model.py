"""Domain types shared by every layer. Pure: no I/O, no protobuf.

Times are float seconds since the epoch; `None` means "never".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ADMIN_SCOPE",
    "CachedRecord",
    "Code",
    "CounterResult",
    "Decision",
    "Event",
    "EventType",
    "KeyFacts",
    "KeyRecord",
    "KeyStatus",
    "Policy",
    "QuotaRefill",
    "RateLimit",
    "RateLimitState",
    "TakeRequest",
    "budget_of",
    "key_status",
    "next_deadline",
]

ADMIN_SCOPE = "keysvc:admin"


class Code(enum.IntEnum):
    """Outcome of a validation; numbers match keysvc.v1.Code."""

    VALID = 1
    MALFORMED = 2
    NOT_FOUND = 3
    DISABLED = 4
    EXPIRED = 5
    REVOKED = 6
    INSUFFICIENT_SCOPE = 7
    IP_NOT_ALLOWED = 8
    RATE_LIMITED = 9
    QUOTA_EXHAUSTED = 10
    UNAVAILABLE = 11


class KeyStatus(enum.IntEnum):
    """Lifecycle state at a given time; numbers match keysvc.v1.KeyStatus."""

    ACTIVE = 1
    DISABLED = 2
    EXPIRED = 3
    REVOKING = 4
    REVOKED = 5


class EventType(enum.StrEnum):
    """Kinds of lifecycle events in the store's event log."""

    KEY_CREATED = "key.created"
    KEY_UPDATED = "key.updated"
    KEY_REVOKED = "key.revoked"
    KEY_ROTATED = "key.rotated"
    KEY_EXPIRED = "key.expired"
    KEY_REVOKED_BY_SCHEDULE = "key.revoked_by_schedule"
    POLICY_CREATED = "policy.created"
    POLICY_UPDATED = "policy.updated"
    POLICY_ROLLED_BACK = "policy.rolled_back"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`requests` allowed per fixed window of `window_s` seconds."""

    requests: int
    window_s: int


@dataclass(frozen=True, slots=True)
class QuotaRefill:
    """A key's quota is reset to `amount` every `interval_s` seconds."""

    amount: int
    interval_s: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored: everything but the secret, which is kept only as a hash."""

    key_id: str
    key_hash: str
    hint: str
    owner_id: str
    created_at: float
    updated_at: float
    name: str = ""
    policy_id: str = ""
    scopes: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    expires_at: float | None = None
    revoke_at: float | None = None
    rotated_from: str = ""
    rotated_to: str = ""
    has_quota: bool = False
    budget_id: str = ""
    """Whose counters this key spends: "" its own; a rotated key keeps its predecessor's."""
    revision: int = 1
    announced_through: float = 0.0


@dataclass(frozen=True, slots=True)
class CachedRecord:
    """What decides and identifies a call to a key: the part of a `KeyRecord` the cache keeps.

    Validation reads the ids, scopes, metadata, state, deadlines and counters of a
    key; its name, hint, timestamps, rotation links and announced deadline are for
    admins, who read the store. At a million cached keys each field costs 8 MB.
    """

    key_id: str
    key_hash: str
    owner_id: str
    policy_id: str
    scopes: tuple[str, ...]
    metadata: Mapping[str, str]
    enabled: bool
    expires_at: float | None
    revoke_at: float | None
    has_quota: bool
    budget_id: str
    revision: int


KeyFacts = KeyRecord | CachedRecord
"""A record a call can be decided from: the store's whole record or the cache's part of it."""


def budget_of(record: KeyFacts) -> str:
    """Return the id the key's rate windows and quota are counted under."""
    return record.budget_id or record.key_id


def key_status(record: KeyFacts, now: float) -> KeyStatus:
    """Return the record's lifecycle state at `now`.

    Revoked beats expired beats disabled; a scheduled revocation (REVOKING)
    never hides a key that is disabled or expired.
    """
    if record.revoke_at is not None and record.revoke_at <= now:
        return KeyStatus.REVOKED
    if record.expires_at is not None and record.expires_at <= now:
        return KeyStatus.EXPIRED
    if not record.enabled:
        return KeyStatus.DISABLED
    if record.revoke_at is not None:
        return KeyStatus.REVOKING
    return KeyStatus.ACTIVE


def next_deadline(record: KeyRecord) -> float | None:
    """The next scheduled change of state (expiry or revocation) not yet announced.

    `announced_through` is the latest deadline an event was emitted for; once a
    revocation has been announced nothing more is due.
    """
    done = record.announced_through
    if record.revoke_at is not None and record.revoke_at <= done:
        return None
    due = [t for t in (record.revoke_at, record.expires_at) if t is not None and t > done]
    return min(due) if due else None


@dataclass(frozen=True, slots=True)
class Policy:
    """One version of a named policy."""

    policy_id: str
    version: int
    created_at: float
    updated_at: float
    description: str = ""
    scopes: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    quota_refill: QuotaRefill | None = None
    max_key_ttl_s: int | None = None
    updated_by: str = ""
    change_note: str = ""


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """A key's rate-limit window as seen by one call."""

    limit: int
    remaining: int
    reset_at: float


class TakeRequest(NamedTuple):
    """One take from a key's counters (`Store.take`): `cost` from its quota, one request of its rate limit."""

    budget_id: str
    """Names the counters: the key's budget (`budget_of`), shared by a rotated key and its successor."""
    cost: int
    rate_limit: RateLimit | None
    quota: bool
    """The key has a quota counter to take `cost` from."""
    refill: QuotaRefill | None
    now: float
    """The caller's clock; counts use it only where the store has no shared one."""


@dataclass(frozen=True, slots=True)
class CounterResult:
    """Outcome of one atomic take from a key's rate limit and quota.

    `allowed` is False when either refused; nothing is taken then.
    """

    allowed: bool
    rate_limit: RateLimitState | None = None
    quota_remaining: int | None = None
    rate_limited: bool = False
    quota_missing: bool = False
    """A quota was asked for and its counter is gone (the take was refused)."""
    counted_at: float | None = None
    """The store's clock when it counted (`rate_limit.reset_at` is on that clock)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one Validate call."""

    code: Code
    record: KeyFacts | None = None
    policy: Policy | None = None
    scopes: tuple[str, ...] = ()
    message: str = ""
    rate_limit: RateLimitState | None = None
    quota_remaining: int | None = None

    @property
    def valid(self) -> bool:
        """True when the call may go ahead."""
        return self.code is Code.VALID


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the store's event log. Carries ids and hashes, never secrets.

    `type` is a plain string when this version does not know it (a newer
    version wrote it during a rolling upgrade); followers skip such events.
    """

    type: EventType | str
    at: float
    actor: str = ""
    key_id: str = ""
    key_hash: str = ""
    policy_id: str = ""
    policy_version: int = 0
    cursor: str = ""
