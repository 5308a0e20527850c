"""Policy lifecycle: versions, dry runs, rollbacks; each change one event, one audit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keysvc.core.errors import (
    ConflictError,
    DuplicateRequestError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from keysvc.core.model import (
    ADMIN_SCOPE,
    Event,
    EventType,
    Policy,
)
from keysvc.core.policy import PolicyDiff, diff
from keysvc.service import _authority as authority
from keysvc.service import _requests as requests
from keysvc.service import checks as check
from keysvc.service._admin_base import SAMPLE_KEYS, AdminBase, PolicyImpact

__all__ = ["PolicyAdmin"]


class PolicyAdmin(AdminBase):
    """The policy half of `AdminService`."""

    async def create_policy(self, actor: str, policy: Policy, request_id: str = "") -> Policy:
        """Make version 1 of a policy (a retry with the same `request_id` returns it).

        Raises:
            InvalidArgumentError: a field is invalid.
            AlreadyExistsError: the policy_id is taken.
            PermissionDeniedError: the policy would grant more than the actor holds.
        """
        with self._auditor.audit("policy.create", actor=actor, target_policy_id=policy.policy_id) as span, \
                authority.audited_rule(span):
            req = requests.request(actor, request_id, "CreatePolicy", {"policy": policy})
            if await self._replays.first_attempt(req, span) is not None:
                return await self.get_policy(policy.policy_id, 1)
            now = self._clock()
            created = replace(
                _checked_policy(policy), version=1, created_at=now, updated_at=now, updated_by=actor,
            )
            authority.check_policy(await authority.load(self._store, actor, now), created)
            try:
                await self._store.create_policy(
                    created, Event(EventType.POLICY_CREATED, now, actor, policy_id=created.policy_id,
                                   policy_version=1),
                    req.mark({"policy_id": created.policy_id, "version": 1}, now) if req else None,
                )
            except DuplicateRequestError as exc:
                await self._replays.raced(req, exc)
                return await self.get_policy(policy.policy_id, 1)
            return created

    async def list_policies(self, page_size: int = 0, page_token: str = "") -> tuple[list[Policy], str]:
        """Page through policies (current versions)."""
        bound = {"page_size": check.page_size(page_size)}
        position = await self._pages.open("ListPolicies", bound, page_token)
        page = await self._store.list_policies(bound["page_size"], position)
        return list(page.policies), await self._pages.issue("ListPolicies", bound, page.next_token)

    async def list_policy_versions(
        self, policy_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Policy], str]:
        """Page through one policy's versions, newest first."""
        check.policy_id(policy_id)
        size = check.page_size(page_size)
        bound = {"policy_id": policy_id, "page_size": size}
        position = await self._pages.open("ListPolicyVersions", bound, page_token)
        page = await self._store.list_policy_versions(policy_id, size, position)
        return list(page.policies), await self._pages.issue("ListPolicyVersions", bound, page.next_token)

    async def update_policy(
        self,
        actor: str,
        proposed: Policy,
        *,
        expected_version: int,
        dry_run: bool = False,
        allow_breaking: bool = False,
        change_note: str = "",
        request_id: str = "",
    ) -> tuple[Policy | None, PolicyImpact]:
        """Write version N+1, or only report its impact when `dry_run`.

        A retry with the same `request_id` writes no second version: it returns
        the first one (a dry run records nothing).

        Raises:
            NotFoundError: no such policy.
            ConflictError: `expected_version` is not the current version.
            FailedPreconditionError: the change is breaking and not allowed.
        """
        with self._auditor.audit("policy.update", actor=actor, target_policy_id=proposed.policy_id,
                        dry_run=dry_run) as span:
            req = None if dry_run else requests.request(actor, request_id, "UpdatePolicy", {
                "policy": proposed, "expected_version": expected_version,
                "allow_breaking": allow_breaking, "change_note": change_note})
            return await self._write_version(
                actor, proposed, expected_version, dry_run, allow_breaking,
                check.text("change_note", change_note, 256), EventType.POLICY_UPDATED, span, req,
            )

    async def rollback_policy(
        self,
        actor: str,
        policy_id: str,
        to_version: int,
        *,
        expected_version: int = 0,
        dry_run: bool = False,
        allow_breaking: bool = False,
        request_id: str = "",
    ) -> tuple[Policy | None, PolicyImpact]:
        """Make `to_version`'s content current as a new version (replayed as update_policy).

        Raises:
            NotFoundError: no such policy or version.
            ConflictError, FailedPreconditionError: as update_policy.
        """
        with self._auditor.audit("policy.rollback", actor=actor, target_policy_id=policy_id,
                        to_version=to_version, dry_run=dry_run) as span:
            req = None if dry_run else requests.request(actor, request_id, "RollbackPolicy", {
                "policy_id": policy_id, "to_version": to_version,
                "expected_version": expected_version, "allow_breaking": allow_breaking})
            if (first := await self._replays.first_attempt(req, span)) is not None:
                return await self._replayed_version(first)
            target = await self.get_policy(policy_id, to_version) if to_version > 0 else None
            if target is None:
                raise InvalidArgumentError("to_version: must be an existing version (>= 1)")
            if not expected_version:
                expected_version = (await self.get_policy(policy_id)).version
            return await self._write_version(
                actor, target, expected_version, dry_run, allow_breaking,
                f"rollback to version {to_version}", EventType.POLICY_ROLLED_BACK, span, req,
            )

    async def _write_version(
        self, actor: str, proposed: Policy, expected_version: int, dry_run: bool,
        allow_breaking: bool, note: str, event_type: EventType, span: Any,
        req: requests.Request | None = None,
    ) -> tuple[Policy | None, PolicyImpact]:
        if (first := await self._replays.first_attempt(req, span)) is not None:
            return await self._replayed_version(first)
        current = await self.get_policy(proposed.policy_id)
        if expected_version != current.version:
            raise ConflictError(
                f"policy {current.policy_id!r} is at version {current.version}, "
                f"not {expected_version}"
            )
        checked = _checked_policy(proposed)
        change = diff(current, checked)
        with authority.audited_rule(span):
            # A dry run reports a refusal too: it predicts what applying would do.
            grantor = await authority.load(self._store, actor, self._clock())
            authority.check_policy(grantor, checked)
            if change.scopes_added:
                await authority.check_grantees(self._store, grantor, current.policy_id, self._clock())
        count, sample = await self._store.keys_with_policy(current.policy_id, SAMPLE_KEYS)
        impact = PolicyImpact(change, count, sample)
        span.set("breaking", change.breaking)
        span.set("keys_affected", count)
        span.set("diff", _describe(change))
        if dry_run:
            span.set("outcome", "dry_run")
            return None, impact
        if change.breaking and not allow_breaking:
            raise FailedPreconditionError(
                f"breaking change to policy {current.policy_id!r} ({_describe(change)}) affects "
                f"{count} keys; set allow_breaking to apply it", rule="breaking_change",
            )
        now = self._clock()
        if ADMIN_SCOPE in change.scopes_removed:
            with authority.audited_rule(span):
                await authority.guard_last_admin(
                    self._store, actor, now, lambda r, _: r.policy_id == current.policy_id
                )
        new = replace(
            checked, version=current.version + 1, created_at=current.created_at, updated_at=now,
            updated_by=actor, change_note=note,
        )
        event = Event(event_type, now, actor, policy_id=new.policy_id, policy_version=new.version)
        try:
            await self._store.put_policy_version(
                new, event,
                req.mark({"policy_id": new.policy_id, "version": new.version}, now) if req else None,
            )
        except (DuplicateRequestError, ConflictError) as exc:
            return await self._replayed_version(await self._replays.raced(req, exc))
        self._on_change(event)
        span.set("new.version", new.version)
        return new, impact

    async def _replayed_version(self, first: requests.Recorded) -> tuple[Policy, PolicyImpact]:
        """Answer a retried UpdatePolicy/RollbackPolicy with the version it wrote."""
        policy_id, version = str(first.outcome["policy_id"]), int(first.outcome["version"])
        written = await self.get_policy(policy_id, version)
        before = await self.get_policy(policy_id, version - 1)
        count, sample = await self._store.keys_with_policy(policy_id, SAMPLE_KEYS)
        return written, PolicyImpact(diff(before, written), count, sample)


def _checked_policy(policy: Policy) -> Policy:
    check.policy_id(policy.policy_id)
    if policy.rate_limit is not None and (policy.rate_limit.requests <= 0 or policy.rate_limit.window_s <= 0):
        raise InvalidArgumentError("rate_limit: requests and window must be > 0")
    if policy.quota_refill is not None and (
        policy.quota_refill.amount <= 0 or policy.quota_refill.interval_s <= 0
    ):
        raise InvalidArgumentError("quota_refill: amount and interval must be > 0")
    if policy.max_key_ttl_s is not None and policy.max_key_ttl_s <= 0:
        raise InvalidArgumentError("max_key_ttl: must be > 0 (or unset for none)")
    return replace(
        policy,
        description=check.text("description", policy.description, 512),
        scopes=check.scopes("scopes", policy.scopes),
        allowed_cidrs=check.cidrs(policy.allowed_cidrs),
    )


def _describe(change: PolicyDiff) -> str:
    parts = []
    if change.scopes_added:
        parts.append("scopes +" + ",".join(authority.safe(s, quote=False) for s in change.scopes_added))
    if change.escalates:
        parts.append(f"grants {ADMIN_SCOPE} (an escalation)")
    if change.scopes_removed:
        parts.append("scopes -" + ",".join(authority.safe(s, quote=False) for s in change.scopes_removed))
    if change.cidrs_added:
        parts.append("cidrs +" + ",".join(change.cidrs_added))
    if change.cidrs_removed:
        parts.append("cidrs -" + ",".join(change.cidrs_removed))
    parts.extend(change.limits_tightened)
    parts.extend(change.limits_loosened)
    return "; ".join(parts) or "no change"
