"""What an admin actor may grant, and the guard that keeps one admin key alive.

An actor is the key_id of the admin key that authenticated the call. Its
authority is read from the store at every change (never a cache, never the
stale window, never a fail-open answer): the control plane fails closed.
An actor that is not a key id is an in-process operator holding the store
itself (the CLI's `bootstrap`, tests) and is unbounded; "" is nobody.

An admin key with no policy is a root admin key (`keysvc bootstrap` makes
one): unbounded. An admin key that follows a policy is bounded by it, and
what it writes is bounded in turn:
- it makes no root admin key (an admin key it writes follows a policy);
- scopes: the key's effective scopes, or a policy's scopes, are a subset of
  the actor's own effective scopes;
- lifetime: an actor whose policy has `max_key_ttl` writes only keys that
  expire within it, on policies whose own `max_key_ttl` is at most as
  long, and policies with such a bound; an actor that expires writes only
  keys that expire no later (so no chain of renewals outlives it).
Rate limits, quotas and allowed CIDRs limit how the actor itself calls; they
are not passed on as bounds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from keysvc.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    KeysvcError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from keysvc.core.keys import KEY_PATTERN
from keysvc.core.model import ADMIN_SCOPE, Code, Event, EventType, KeyRecord, KeyStatus, Policy, key_status
from keysvc.core.policy import effective_scopes, evaluate
from keysvc.service.ports import AuditRecord
from keysvc.store.base import Store

__all__ = [
    "Authority",
    "audited_rule",
    "bounded_expiry",
    "check_grantees",
    "check_key",
    "check_policy",
    "durable_admin",
    "guard_last_admin",
    "load",
    "safe",
]

_KEY_ID_RE = re.compile(r"key_[0-9A-Za-z]{17}")
_SCAN_PAGE = 1000
_UNUSABLE = {
    Code.NOT_FOUND: "not found", Code.REVOKED: "revoked", Code.EXPIRED: "expired",
    Code.DISABLED: "disabled",
}


def safe(value: str, *, quote: bool = True) -> str:
    """`value` (quoted) for a message, or a placeholder when it looks like a key."""
    if KEY_PATTERN.search(value):
        return "<redacted>"
    return repr(value) if quote else value


@contextmanager
def audited_rule(span: AuditRecord) -> Iterator[None]:
    """Add the rule a refusal broke to the action's audit record (its outcome is the error's class)."""
    try:
        yield
    except KeysvcError as exc:
        if exc.rule:
            span.set("rule", exc.rule)
        raise


@dataclass(frozen=True, slots=True)
class Authority:
    """The actor and what it may grant; `scopes` is None for an unbounded operator."""

    actor: str
    scopes: frozenset[str] | None = None
    max_key_ttl_s: int | None = None
    expires_at: float | None = None  # a bounded actor's own expiry: nothing it writes outlives it


async def load(store: Store, actor: str, now: float, client_ip: str = "") -> Authority:
    """Read the actor's authority from the store (no cache).

    Args:
        store: the backend.
        actor: the acting admin key's key_id (or an operator's name).
        now: the wall clock.
        client_ip: the caller's address, checked against the actor's policy
            CIDRs ("" skips the check: the call was admitted by admin auth).

    Raises:
        UnauthenticatedError: the actor's key is gone, revoked, expired or disabled.
        PermissionDeniedError: it lacks keysvc:admin, or the address is not allowed.
        StoreUnavailableError: the store does not answer (fail closed).
    """
    if not actor:
        raise PermissionDeniedError("admin changes need an authenticated admin key", rule="no_actor")
    if not _KEY_ID_RE.fullmatch(actor):
        return Authority(actor)
    record = await store.get_key(actor)
    policy = await store.get_policy(record.policy_id) if record is not None and record.policy_id else None
    if record is None or (record.policy_id and policy is None):
        raise UnauthenticatedError(f"admin key {actor} refused: not found", rule="admin_key_unusable")
    decision = evaluate(record, policy, (ADMIN_SCOPE,), client_ip, now)
    # Unusable first, then scope, then address: a refusal names the first rule broken.
    if decision.code in _UNUSABLE:
        raise UnauthenticatedError(f"admin key {actor} refused: {_UNUSABLE[decision.code]}",
                                   rule="admin_key_unusable")
    if decision.code is Code.IP_NOT_ALLOWED and client_ip:
        raise PermissionDeniedError(
            f"admin key {actor} may not call admin RPCs from this address (policy's allowed_cidrs)",
            rule="admin_cidrs",
        )
    if decision.code is Code.INSUFFICIENT_SCOPE:
        raise PermissionDeniedError(f"key {actor} may not call admin RPCs (needs scope {ADMIN_SCOPE!r})",
                                    rule="admin_scope")
    if policy is None:
        return Authority(actor)  # a root admin key
    # Its own expiry bounds what it writes even without a max_key_ttl: a temporary
    # admin key makes no heir that outlives it.
    return Authority(actor, frozenset(effective_scopes(record, policy)), policy.max_key_ttl_s,
                     record.expires_at)


def _within_scopes(authority: Authority, scopes: Iterable[str], what: str) -> None:
    if authority.scopes is None:
        return
    for scope in scopes:
        if scope not in authority.scopes:
            raise PermissionDeniedError(
                f"{what}: scope {safe(scope)} is not held by admin key {authority.actor}; "
                "an actor grants only scopes it holds", rule="actor_scopes",
            )


def check_key(authority: Authority, record: KeyRecord, policy: Policy | None) -> None:
    """Refuse a key (as it will be written) that holds more than the actor.

    Raises:
        PermissionDeniedError: naming the scope or bound exceeded.
    """
    if authority.scopes is None:
        return
    scopes = effective_scopes(record, policy)
    _within_scopes(authority, scopes, "scopes")
    if policy is None and ADMIN_SCOPE in scopes:
        raise PermissionDeniedError(
            f"policy_id: admin key {authority.actor} follows a policy, so an admin key it writes "
            "must follow one too (a key without a policy would be a root admin key)",
            rule="actor_policy",
        )
    bound = authority.max_key_ttl_s
    if bound is not None and policy is not None and (
        policy.max_key_ttl_s is None or policy.max_key_ttl_s > bound
    ):
        raise PermissionDeniedError(
            f"policy_id: policy {safe(policy.policy_id)} allows keys longer than the max_key_ttl "
            f"({bound} seconds) of admin key {authority.actor}", rule="actor_max_key_ttl",
        )


def check_policy(authority: Authority, policy: Policy) -> None:
    """Refuse a policy version (as it will be written) that grants more than the actor.

    Raises:
        PermissionDeniedError: naming the scope or bound exceeded.
    """
    _within_scopes(authority, policy.scopes, "scopes")
    bound = authority.max_key_ttl_s
    if bound is not None and (policy.max_key_ttl_s is None or policy.max_key_ttl_s > bound):
        raise PermissionDeniedError(
            f"max_key_ttl: must be set and at most {bound} seconds, the max_key_ttl of "
            f"admin key {authority.actor}", rule="actor_max_key_ttl",
        )


async def check_grantees(store: Store, authority: Authority, policy_id: str, now: float) -> None:
    """Refuse a lifetime-bound actor's policy change that adds scopes to keys outliving it.

    A key issued before its policy got a `max_key_ttl` keeps its (perhaps
    no) expiry; granting it a scope through the policy would be an heir that
    outlives the actor. Scans the keys (rare: only such an actor adding scopes).

    Raises:
        PermissionDeniedError: a live key on the policy lasts past the actor's bound.
    """
    ends_by = [t for t in (authority.expires_at,) if t is not None]
    if authority.max_key_ttl_s is not None:
        ends_by.append(now + authority.max_key_ttl_s)
    if not ends_by:
        return
    latest = min(ends_by)
    token = ""
    while True:
        page = await store.list_keys("", _SCAN_PAGE, token)
        for record in page.keys:
            if record.policy_id != policy_id or key_status(record, now) in (
                    KeyStatus.REVOKED, KeyStatus.EXPIRED):
                continue
            ends = [t for t in (record.expires_at, record.revoke_at) if t is not None]
            if not ends or min(ends) > latest + 1:
                raise PermissionDeniedError(
                    f"scopes: policy {safe(policy_id)} has keys that outlive the max_key_ttl or "
                    f"expiry of admin key {authority.actor}; it may add no scope to them",
                    rule="actor_max_key_ttl",
                )
        token = page.next_token
        if not token:
            return


def bounded_expiry(
    expires_at: float | None, *, explicit: bool, policy: Policy | None, authority: Authority,
    now: float, clear: bool = False,
) -> float | None:
    """The expiry a key gets under its policy's and the actor's `max_key_ttl`.

    A key under a bound never lacks an expiry: none given at creation (or an
    inherited one past the bound, on rotation or a policy change) becomes the
    latest allowed; an explicit request to `clear` the expiry is refused.

    Raises:
        InvalidArgumentError: an explicit expiry is in the past or past the policy's bound.
        PermissionDeniedError: an explicit expiry is past the actor's bound.
    """
    if explicit and expires_at is not None and expires_at <= now:
        raise InvalidArgumentError("expires_at: must be in the future")
    bounds: list[tuple[float, str]] = []  # (latest expiry allowed, whose rule)
    if policy is not None and policy.max_key_ttl_s is not None:
        bounds.append((now + policy.max_key_ttl_s, "policy"))
    if authority.max_key_ttl_s is not None:
        bounds.append((now + authority.max_key_ttl_s, "actor"))
    if authority.expires_at is not None:
        bounds.append((authority.expires_at, "actor_expiry"))
    if not bounds:
        return expires_at
    latest, whose = min(bounds)
    if not clear and (expires_at is None or (not explicit and expires_at > latest)):
        return latest
    if clear or (expires_at is not None and expires_at > latest + 1):
        if whose == "policy" and policy is not None:
            raise InvalidArgumentError(
                f"expires_at: policy {safe(policy.policy_id)} allows keys of at most "
                f"{policy.max_key_ttl_s} seconds", rule="policy_max_key_ttl",
            )
        if whose == "actor_expiry":
            raise PermissionDeniedError(
                f"expires_at: a key admin key {authority.actor} writes may not outlive it "
                "(a bounded admin key's own expiry is a max_key_ttl on what it writes)",
                rule="actor_max_key_ttl",
            )
        raise PermissionDeniedError(
            f"expires_at: admin key {authority.actor} may grant keys of at most "
            f"{authority.max_key_ttl_s} seconds "
            "(its policy's max_key_ttl)", rule="actor_max_key_ttl",
        )
    return expires_at


def durable_admin(record: KeyRecord, policy: Policy | None, now: float) -> bool:
    """True for a key that can administer now and keeps doing so with no further change.

    Active (enabled, no revocation scheduled), never expiring, holding keysvc:admin.
    """
    return (key_status(record, now) is KeyStatus.ACTIVE and record.expires_at is None
            and ADMIN_SCOPE in effective_scopes(record, policy))


async def guard_last_admin(
    store: Store, actor: str, now: float, loses: Callable[[KeyRecord, Policy | None], bool],
) -> None:
    """Refuse a change after which no durable admin key would be left.

    `loses(record, policy)` says whether the change takes a durable admin key's
    authority away. When some do, one that does not (the witness) must exist;
    its revision is bumped (revision-checked, one key.updated event) before the
    change is written, so two concurrent changes that each count on the other's
    target cannot both succeed: the later write of a target or witness that
    the other already bumped fails with ConflictError.

    Raises:
        FailedPreconditionError: the change would leave no admin key.
        ConflictError: a concurrent change won the witness; retry.
    """
    policies: dict[str, Policy | None] = {}
    lost = False
    witness: KeyRecord | None = None
    token = ""
    while True:
        page = await store.list_keys("", _SCAN_PAGE, token)
        for record in page.keys:
            policy = None
            if record.policy_id:
                if record.policy_id not in policies:
                    policies[record.policy_id] = await store.get_policy(record.policy_id)
                policy = policies[record.policy_id]
                if policy is None:
                    continue
            if not durable_admin(record, policy, now):
                continue
            if loses(record, policy):
                lost = True
            elif witness is None:
                witness = record
        token = page.next_token
        if not token or (lost and witness is not None):
            break
    if not lost:
        return
    if witness is None:
        raise FailedPreconditionError(
            "this change would leave no active admin key (enabled, not expiring or being revoked, "
            f"holding {ADMIN_SCOPE!r}); create another admin key first, or recover with "
            "`keysvc bootstrap --force` given store access", rule="last_admin",
        )
    await store.update_key(
        replace(witness, revision=witness.revision + 1), witness.revision,
        Event(EventType.KEY_UPDATED, now, actor, key_id=witness.key_id, key_hash=witness.key_hash,
              policy_id=witness.policy_id),
    )
