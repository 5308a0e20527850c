"""Typed results of `keysvc.client`: frozen, slotted dataclasses, no protobuf.

Times are timezone-aware UTC `datetime`s and spans are `timedelta`s; `None`
means "not set" (never expires, no limit). Secrets appear only on
`CreatedKey` and `RotatedKey`, and never in their repr.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from keysvc.core.model import Code, KeyStatus

__all__ = [
    "Code",
    "CreatedKey",
    "Event",
    "Impact",
    "Key",
    "KeyStatus",
    "Page",
    "Policy",
    "PolicyChange",
    "QuotaRefill",
    "RateLimit",
    "RateLimitState",
    "RotatedKey",
    "ValidationResult",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """A key's rate limit as of this call: `remaining` of `limit` requests until `reset_at`."""

    limit: int
    remaining: int
    reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The answer to Validate: a denial is a result with `valid=False` and its `code`, not an error."""

    valid: bool
    code: Code
    key_id: str = ""
    owner_id: str = ""
    scopes: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None
    policy_id: str = ""
    policy_version: int = 0
    rate_limit: RateLimitState | None = None
    quota_remaining: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Key:
    """A key as the admin API shows it (never its secret)."""

    key_id: str
    hint: str = ""
    name: str = ""
    owner_id: str = ""
    policy_id: str = ""
    scopes: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    status: KeyStatus = KeyStatus.ACTIVE
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    revoke_at: datetime | None = None
    last_used_at: datetime | None = None
    quota_remaining: int | None = None
    rotated_from: str = ""
    rotated_to: str = ""
    revision: int = 0


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """CreateKey's answer: the key, and the only copy of its secret (hidden from repr)."""

    key: Key
    secret: str = field(repr=False)
    secret_reissued: bool = False  # a retry of an earlier request: this secret replaces the one it issued


@dataclass(frozen=True, slots=True)
class RotatedKey:
    """RotateKey's answer: the new key and its secret (hidden from repr), and the previous key."""

    key: Key
    previous: Key
    secret: str = field(repr=False)
    secret_reissued: bool = False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A policy's rate limit: `requests` per `window`."""

    requests: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class QuotaRefill:
    """A policy's quota refill: `amount` uses every `interval`."""

    amount: int
    interval: timedelta


@dataclass(frozen=True, slots=True)
class Policy:
    """One version of a named policy."""

    policy_id: str
    version: int = 0
    description: str = ""
    scopes: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    quota_refill: QuotaRefill | None = None
    max_key_ttl: timedelta | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str = ""
    change_note: str = ""


@dataclass(frozen=True, slots=True)
class Impact:
    """What a policy change does to the keys that follow the policy."""

    keys_affected: int = 0
    sample_key_ids: tuple[str, ...] = ()
    scopes_added: tuple[str, ...] = ()
    scopes_removed: tuple[str, ...] = ()
    cidrs_added: tuple[str, ...] = ()
    cidrs_removed: tuple[str, ...] = ()
    limits_tightened: tuple[str, ...] = ()
    limits_loosened: tuple[str, ...] = ()
    breaking: bool = False


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """UpdatePolicy/RollbackPolicy's answer: the policy (as written, or as it would be) and the impact."""

    policy: Policy
    impact: Impact
    applied: bool  # False for a dry run


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle event from WatchEvents."""

    cursor: str
    type: str
    at: datetime | None = None
    actor: str = ""
    key_id: str = ""
    policy_id: str = ""
    policy_version: int = 0


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass `next_page_token` to get the next ("" on the last page)."""

    items: tuple[T, ...]
    next_page_token: str = ""

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
