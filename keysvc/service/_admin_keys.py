"""Key lifecycle: create, read, update, revoke, rotate, bootstrap; each change one event, one audit."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from keysvc.core import keys
from keysvc.core.errors import (
    AlreadyExistsError,
    ConflictError,
    DuplicateRequestError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from keysvc.core.model import (
    ADMIN_SCOPE,
    EventType,
    KeyRecord,
    KeyStatus,
    budget_of,
    key_status,
)
from keysvc.service import _authority as authority
from keysvc.service import _requests as requests
from keysvc.service import checks as check
from keysvc.service._admin_base import AdminBase, KeyView

__all__ = ["UPDATABLE_KEY_FIELDS", "KeyAdmin"]

UPDATABLE_KEY_FIELDS = frozenset(
    {"name", "metadata", "scopes", "expires_at", "enabled", "policy_id", "quota_remaining"}
)
_FIELD_NAME_RE = re.compile(r"[a-z][a-z_]{0,31}")  # cannot hold a key (no digits, no capitals)


class KeyAdmin(AdminBase):
    """The key half of `AdminService`."""

    async def create_key(
        self,
        actor: str,
        *,
        owner_id: str,
        name: str = "",
        policy_id: str = "",
        scopes: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        expires_at: float | None = None,
        ttl_s: float | None = None,
        prefix: str = "",
        quota: int | None = None,
        request_id: str = "",
    ) -> tuple[KeyView, str]:
        """Make a key; return it and its plaintext secret (the only copy).

        A retry with the same `request_id` makes no second key: it returns the
        first one with a re-issued secret (see `Replays.rekey`).

        Raises:
            InvalidArgumentError: a field is invalid, or the lifetime exceeds
                the policy's max key TTL.
            NotFoundError: the policy does not exist.
            FailedPreconditionError: `request_id` was used for another request.
            PermissionDeniedError: the key would hold more than the actor.
        """
        with self._auditor.audit("key.create", actor=actor, target_policy_id=policy_id) as span, \
                authority.audited_rule(span):
            req = requests.request(actor, request_id, "CreateKey", {
                "owner_id": owner_id, "name": name, "policy_id": policy_id, "scopes": scopes,
                "metadata": metadata or {}, "expires_at": expires_at, "ttl_s": ttl_s,
                "prefix": prefix, "quota": quota,
            })
            if (first := await self._replays.first_attempt(req, span)) is not None:
                return await self._reissue(actor, first, span)
            now = self._clock()
            owner_id = check.owner_id(owner_id)
            name = check.text("name", name)
            check.policy_id(policy_id, required=False)
            own_scopes = check.scopes("scopes", scopes)
            meta = check.metadata(metadata or {})
            if quota is not None and quota < 0:
                raise InvalidArgumentError("quota: must be >= 0")
            try:
                generated = keys.generate(prefix or self._prefix)
            except ValueError:
                raise InvalidArgumentError(
                    "prefix: 1-16 lower-case letters or digits, starting with a letter"
                ) from None
            if ttl_s is not None:
                if expires_at is not None:
                    raise InvalidArgumentError("give expires_at or ttl, not both")
                expires_at = now + check.duration("ttl", ttl_s, maximum=100 * 365 * 86400)
            grantor = await authority.load(self._store, actor, now)
            policy = await self._policy(policy_id) if policy_id else None
            expires_at = authority.bounded_expiry(expires_at, explicit=True, policy=policy,
                                                  authority=grantor, now=now)
            record = KeyRecord(
                key_id=keys.new_key_id(), key_hash=generated.key_hash, hint=generated.hint,
                owner_id=owner_id, created_at=now, updated_at=now, name=name, policy_id=policy_id,
                scopes=own_scopes, metadata=meta, expires_at=expires_at, has_quota=quota is not None,
            )
            authority.check_key(grantor, record, policy)
            mark = req.mark({"key_id": record.key_id, "revision": record.revision}, now) if req else None
            event = self._event(EventType.KEY_CREATED, actor, record)
            try:
                await self._store.create_key(record, quota, event, mark)
            except DuplicateRequestError as exc:
                return await self._reissue(actor, await self._replays.raced(req, exc), span)
            self._on_change(event)
            span.set("target.key_id", record.key_id)
            return KeyView(record, key_status(record, now), None, quota), generated.secret

    async def get_key(self, key_id: str) -> KeyView:
        """Return one key with its counters.

        Raises:
            NotFoundError: no such key.
        """
        record = await self._record(key_id)
        return (await self._views([record]))[0]

    async def list_keys(
        self,
        *,
        owner_id: str = "",
        status: KeyStatus | None = None,
        page_size: int = 0,
        page_token: str = "",
        unused_for_s: float | None = None,
    ) -> tuple[list[KeyView], str]:
        """Page through keys; status and unused filters are applied to each page.

        A filtered page may hold fewer than `page_size` keys while more follow.
        """
        if owner_id:
            check.owner_id(owner_id)
        size = check.page_size(page_size)
        bound = {"owner_id": owner_id, "status": None if status is None else status.name,
                 "page_size": size, "unused_for_s": unused_for_s}
        position = await self._pages.open("ListKeys", bound, page_token)
        page = await self._store.list_keys(owner_id, size, position)
        views = await self._views(page.keys)
        if status is not None:
            views = [v for v in views if v.status is status]
        if unused_for_s is not None:
            cutoff = self._clock() - unused_for_s
            views = [v for v in views if v.last_used_at is None or v.last_used_at <= cutoff]
        return views, await self._pages.issue("ListKeys", bound, page.next_token)

    async def update_key(
        self, actor: str, key_id: str, changes: Mapping[str, Any], expected_revision: int = 0,
        request_id: str = "",
    ) -> KeyView:
        """Apply `changes` (field name -> new value) to a key.

        Raises:
            InvalidArgumentError: an unknown field or a bad value.
            NotFoundError: no such key (or policy).
            FailedPreconditionError: the key is revoked, or it is the last admin key
                and the change takes its authority.
            PermissionDeniedError: the key would hold more than the actor.
            ConflictError: `expected_revision` is set and stale, or a concurrent
                change won.
        """
        unknown = set(changes) - UPDATABLE_KEY_FIELDS
        with self._auditor.audit("key.update", actor=actor, target_key_id=key_id,
                        fields=",".join(sorted(set(changes) - unknown))) as span, \
                authority.audited_rule(span):
            if unknown or not changes:
                # Unknown paths are client text: only short field-name-shaped ones are named.
                named = sorted(p for p in unknown if _FIELD_NAME_RE.fullmatch(p))
                others = len(unknown) - len(named)
                raise InvalidArgumentError(
                    f"update_mask: name some of {', '.join(sorted(UPDATABLE_KEY_FIELDS))}"
                    + (f"; unknown: {', '.join(named)}" if named else "")
                    + (f"; {others} other unknown path(s)" if others else "")
                )
            req = requests.request(actor, request_id, "UpdateKey", {
                "key_id": key_id, "changes": changes, "expected_revision": expected_revision})
            if await self._replays.first_attempt(req, span) is not None:
                return await self.get_key(key_id)
            record = await self._record(key_id)
            now = self._clock()
            if key_status(record, now) is KeyStatus.REVOKED:
                raise FailedPreconditionError(f"key {key_id} is revoked")
            if expected_revision and expected_revision != record.revision:
                raise ConflictError(
                    f"key {key_id} is at revision {record.revision}, not {expected_revision}"
                )
            fields = check.plain_key_fields(changes)
            policy_id = check.policy_id(changes.get("policy_id", record.policy_id), required=False)
            fields["policy_id"] = policy_id
            grantor = await authority.load(self._store, actor, now)
            policy = await self._policy(policy_id) if policy_id else None
            # The expiry bounds hold on every path that sets an expiry or a policy or grants
            # (scopes, enabled); a name, metadata or quota edit sets no expiry.
            if changes.keys() & {"expires_at", "policy_id", "scopes", "enabled"}:
                explicit = "expires_at" in changes
                fields["expires_at"] = authority.bounded_expiry(
                    changes["expires_at"] if explicit else record.expires_at, explicit=explicit,
                    policy=policy, authority=grantor, now=now,
                    clear=explicit and changes["expires_at"] is None,
                )
            quota = changes.get("quota_remaining")
            if "quota_remaining" in changes:
                if quota is not None and quota < 0:
                    raise InvalidArgumentError("quota_remaining: must be >= 0")
                fields["has_quota"] = quota is not None
            updated = replace(record, **fields, updated_at=now, revision=record.revision + 1)
            # Every edit is checked, not only the granting ones: a refilled quota
            # grants use, and metadata may carry authority upstream.
            authority.check_key(grantor, updated, policy)
            before = policy if policy_id == record.policy_id else await self._key_policy(record)
            # Only a change that takes a working admin key's authority needs the (scanning) guard.
            if authority.durable_admin(record, before, now) and not authority.durable_admin(
                    updated, policy, now):
                await authority.guard_last_admin(
                    self._store, actor, now,
                    lambda r, _: r.key_id == key_id,
                )
            # The counter is written with the record (see Store.update_key). A
            # removed quota leaves its counter unread: a rotated sibling may share it.
            event = self._event(EventType.KEY_UPDATED, actor, record)
            try:
                await self._store.update_key(
                    updated, record.revision, event,
                    req.mark({"key_id": key_id}, now) if req else None, quota=quota,
                )
            except (DuplicateRequestError, ConflictError) as exc:
                await self._replays.raced(req, exc)
                return await self.get_key(key_id)
            self._on_change(event)
            return (await self._views([updated]))[0]

    async def revoke_key(
        self, actor: str, key_id: str, grace_s: float = 0.0, reason: str = "", request_id: str = ""
    ) -> KeyView:
        """Revoke a key now, or schedule it `grace_s` from now.

        A scheduled revocation may be brought forward, never pushed back. A retry
        with the same `request_id` returns the key as it is now, changing nothing.

        Raises:
            NotFoundError: no such key.
            FailedPreconditionError: already revoked.
        """
        reason = check.text("reason", reason, 256, stored=False)  # audited (redacted), not stored
        with self._auditor.audit("key.revoke", actor=actor, target_key_id=key_id,
                        grace_s=int(grace_s), reason=reason) as span, \
                authority.audited_rule(span):
            grace_s = check.duration("grace_period", grace_s)
            req = requests.request(actor, request_id, "RevokeKey",
                                   {"key_id": key_id, "grace_s": grace_s, "reason": reason})
            if await self._replays.first_attempt(req, span) is not None:
                return await self.get_key(key_id)
            record = await self._record(key_id)
            now = self._clock()
            revoke_at = now + grace_s
            refused = None
            if key_status(record, now) is KeyStatus.REVOKED:
                refused = FailedPreconditionError(f"key {key_id} is already revoked")
            elif record.revoke_at is not None and record.revoke_at <= revoke_at:
                refused = FailedPreconditionError(
                    f"key {key_id} is already being revoked sooner; revocation is never postponed"
                )
            if refused is not None:  # perhaps by a concurrent attempt of this very request
                await self._replays.raced(req, refused)
                return await self.get_key(key_id)
            # A revocation that takes effect now is announced by its own key.revoked event;
            # only a scheduled one is left for the DeadlineAnnouncer.
            announced = revoke_at if grace_s == 0 else record.announced_through
            updated = replace(record, revoke_at=revoke_at, updated_at=now, revision=record.revision + 1,
                              announced_through=announced)
            await authority.load(self._store, actor, now)
            if authority.durable_admin(record, await self._key_policy(record), now):
                await authority.guard_last_admin(self._store, actor, now, lambda r, _: r.key_id == key_id)
            event = self._event(EventType.KEY_REVOKED, actor, record)
            try:
                await self._store.update_key(
                    updated, record.revision, event,
                    req.mark({"key_id": key_id}, now) if req else None,
                )
            except (DuplicateRequestError, ConflictError) as exc:
                await self._replays.raced(req, exc)
                return await self.get_key(key_id)
            self._on_change(event)
            return (await self._views([updated]))[0]

    async def rotate_key(
        self, actor: str, key_id: str, grace_s: float = 0.0, request_id: str = ""
    ) -> tuple[KeyView, str, KeyView]:
        """Issue a new key with the same owner, policy, scopes and metadata.

        The old key is revoked `grace_s` from now. The new key inherits the
        old one's budget: during the grace period both secrets spend one quota
        and one rate window, so a rotation never doubles them. Returns (new
        key, its secret, old key). A retry with the same `request_id` makes no
        second rotation: it returns the same new key with a re-issued secret,
        and the old key's grace runs on unchanged.

        Raises:
            NotFoundError: no such key.
            FailedPreconditionError: the key is revoked, being revoked or expired.
        """
        with self._auditor.audit("key.rotate", actor=actor, target_key_id=key_id,
                                 grace_s=int(grace_s)) as span, \
                authority.audited_rule(span):
            grace_s = check.duration("grace_period", grace_s)
            req = requests.request(actor, request_id, "RotateKey",
                                   {"key_id": key_id, "grace_s": grace_s})
            if (first := await self._replays.first_attempt(req, span)) is not None:
                return await self._rotated(actor, first, span)
            old = await self._record(key_id)
            now = self._clock()
            status = key_status(old, now)
            if status in (KeyStatus.REVOKED, KeyStatus.EXPIRED) or old.revoke_at is not None:
                state = "being revoked" if status is not KeyStatus.REVOKED and old.revoke_at else (
                    status.name.lower())
                refused = FailedPreconditionError(f"key {key_id} is {state}; cannot rotate")
                # Perhaps because a concurrent attempt of this very request rotated it.
                return await self._rotated(actor, await self._replays.raced(req, refused), span)
            grantor = await authority.load(self._store, actor, now)
            policy = await self._policy(old.policy_id) if old.policy_id else None
            generated = keys.generate(old.hint.rpartition("_")[0] or self._prefix)
            new = replace(
                old, key_id=keys.new_key_id(), key_hash=generated.key_hash, hint=generated.hint,
                created_at=now, updated_at=now, revoke_at=None, rotated_from=old.key_id,
                rotated_to="", revision=1, budget_id=budget_of(old),
                expires_at=authority.bounded_expiry(old.expires_at, explicit=False, policy=policy,
                                                    authority=grantor, now=now),
            )
            authority.check_key(grantor, new, policy)
            retired = replace(
                old, revoke_at=now + grace_s, rotated_to=new.key_id, updated_at=now,
                revision=old.revision + 1,
            )
            outcome = {"key_id": new.key_id, "revision": new.revision, "previous": old.key_id}
            # No new counter: the budget (and its quota counter) is carried over.
            event = self._event(EventType.KEY_ROTATED, actor, old)
            try:
                await self._store.rotate_key(
                    retired, old.revision, new, None, event, req.mark(outcome, now) if req else None,
                )
            except (DuplicateRequestError, ConflictError) as exc:
                return await self._rotated(actor, await self._replays.raced(req, exc), span)
            self._on_change(event)
            span.set("new.key_id", new.key_id)
            views = await self._views([new, retired])
            return views[0], generated.secret, views[1]

    async def bootstrap(self, *, force: bool = False, owner_id: str = "keysvc-admin") -> tuple[KeyView, str]:
        """Create the first admin key, once.

        Raises:
            AlreadyExistsError: bootstrap ran before and `force` is not set.
        """
        marker = await self._store.get_meta("bootstrap_key_id")
        if marker and not force:
            raise AlreadyExistsError(
                f"bootstrap already made admin key {marker}; use --force to make another"
            )
        view, secret = await self.create_key(
            "bootstrap", owner_id=owner_id, name="bootstrap admin key", scopes=[ADMIN_SCOPE]
        )
        await self._store.set_meta("bootstrap_key_id", view.record.key_id)
        return view, secret

    # -- replays of a retried request_id (see _requests) ---------------------------

    async def _reissue(self, actor: str, first: requests.Recorded, span: Any) -> tuple[KeyView, str]:
        """Answer a retried CreateKey/RotateKey: the same key, with a fresh secret."""
        # A fresh secret is a grant: the actor must still hold what the key holds.
        grantor = await authority.load(self._store, actor, self._clock())
        made = await self._record(str(first.outcome["key_id"]))
        authority.check_key(grantor, made, await self._key_policy(made))
        record, secret = await self._replays.rekey(actor, first, span)
        view = (await self._views([record]))[0]
        return replace(view, secret_reissued=True), secret

    async def _rotated(
        self, actor: str, first: requests.Recorded, span: Any
    ) -> tuple[KeyView, str, KeyView]:
        """Answer a retried RotateKey: the same new key, re-keyed; the old one as it is."""
        new, secret = await self._reissue(actor, first, span)
        return new, secret, await self.get_key(str(first.outcome["previous"]))
