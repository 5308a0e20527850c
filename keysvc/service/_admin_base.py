"""What every part of the admin service shares: its state, its views, its store helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keysvc.core import keys
from keysvc.core.errors import (
    NotFoundError,
)
from keysvc.core.model import (
    Event,
    EventType,
    KeyRecord,
    KeyStatus,
    Policy,
    budget_of,
    key_status,
)
from keysvc.core.policy import PolicyDiff
from keysvc.service import _authority as authority
from keysvc.service import _requests as requests
from keysvc.service import checks as check
from keysvc.service._pages import PageTokens
from keysvc.service.ports import Auditor, Clock, wall_clock
from keysvc.store.base import Store

__all__ = ["SAMPLE_KEYS", "AdminBase", "KeyView", "PolicyImpact"]

SAMPLE_KEYS = 20  # key ids a policy change's impact names


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key record with its counters, as admins see it."""

    record: KeyRecord
    status: KeyStatus
    last_used_at: float | None = None
    quota_remaining: int | None = None
    # The secret returned with this view replaces one never seen (a retried request_id).
    secret_reissued: bool = False


@dataclass(frozen=True, slots=True)
class PolicyImpact:
    """What a policy change does to the keys that follow it."""

    diff: PolicyDiff
    keys_affected: int
    sample_key_ids: Sequence[str]


class AdminBase:
    """The state and store helpers the key and policy halves of `AdminService` share."""

    def __init__(
        self, store: Store, *, auditor: Auditor, default_prefix: str = keys.DEFAULT_PREFIX,
        clock: Clock = wall_clock, on_change: Callable[[Event], None] | None = None,
    ) -> None:
        self._store = store
        self._auditor = auditor
        self._prefix = default_prefix
        self._clock = clock
        self._pages = PageTokens(store, clock)
        self._on_change = on_change or (lambda event: None)
        self._replays = requests.Replays(store, clock, default_prefix, self._on_change)

    async def authority(self, actor: str, client_ip: str = "") -> None:
        """Check, from the store, that `actor` is a working admin key (for admin auth).

        Raises:
            UnauthenticatedError: the key is gone, revoked, expired or disabled.
            PermissionDeniedError: it lacks keysvc:admin, or `client_ip` is not allowed.
            StoreUnavailableError: the store does not answer (fail closed).
        """
        await authority.load(self._store, actor, self._clock(), client_ip)

    async def get_policy(self, policy_id: str, version: int = 0) -> Policy:
        """Return the current or a given version.

        Raises:
            NotFoundError: no such policy or version.
        """
        check.policy_id(policy_id)
        policy = await self._store.get_policy(policy_id, version)
        if policy is None:
            what = f"policy {authority.safe(policy_id)}" + (f" version {version}" if version else "")
            raise NotFoundError(f"{what} not found")
        return policy

    async def _record(self, key_id: str) -> KeyRecord:
        record = await self._store.get_key(check.key_id(key_id))
        if record is None:
            raise NotFoundError(f"key {key_id} not found")
        return record

    async def _policy(self, policy_id: str) -> Policy:
        return await self.get_policy(policy_id)

    async def _key_policy(self, record: KeyRecord) -> Policy | None:
        return await self._store.get_policy(record.policy_id) if record.policy_id else None

    async def _views(self, records: Sequence[KeyRecord]) -> list[KeyView]:
        now = self._clock()
        used = await self._store.last_used([r.key_id for r in records]) if records else {}
        views = []
        for r in records:
            quota = await self._store.get_quota(budget_of(r)) if r.has_quota else None
            views.append(KeyView(r, key_status(r, now), used.get(r.key_id), quota))
        return views

    def _event(self, kind: EventType, actor: str, record: KeyRecord) -> Event:
        return Event(kind, self._clock(), actor, key_id=record.key_id, key_hash=record.key_hash,
                     policy_id=record.policy_id)
