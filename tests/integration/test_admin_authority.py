"""Admin authority on both stores: no actor grants more than it holds, and one admin key always remains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core.errors import (
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from keysvc.core.model import ADMIN_SCOPE, KeyStatus, Policy
from keysvc.service.admin import AdminService, KeyView
from keysvc.store.base import Store
from keysvc.testing import capture_spans

pytestmark = pytest.mark.integration

OPERATOR = "bootstrap"  # an in-process operator with store access (as `keysvc bootstrap`)
HOUR = 3600
OPS = Policy("ops", 0, 0.0, 0.0, scopes=(ADMIN_SCOPE, "read"), max_key_ttl_s=HOUR)
WIDE = Policy("wide", 0, 0.0, 0.0, scopes=("read", "write"))
CAPPED = Policy("capped", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60)


async def world(store: Store) -> tuple[AdminService, KeyView, KeyView]:
    """An unbounded, durable admin key (`root`) and a bounded one (`ops`: scopes admin+read, 1 h)."""
    admin = AdminService(store, auditor=AUDITOR)
    for policy in (OPS, WIDE, CAPPED):
        await admin.create_policy(OPERATOR, policy)
    root, _ = await admin.create_key(OPERATOR, owner_id="root", scopes=[ADMIN_SCOPE])
    ops, _ = await admin.create_key(OPERATOR, owner_id="ops", policy_id="ops")
    return admin, root, ops


async def test_a_bounded_actor_cannot_create_keys_beyond_its_scopes_or_lifetime(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    with pytest.raises(PermissionDeniedError, match=r"scopes: scope 'write' is not held"):
        await admin.create_key(actor, owner_id="o", scopes=[ADMIN_SCOPE, "write"])
    with pytest.raises(PermissionDeniedError, match=r"scope 'write'"):
        await admin.create_key(actor, owner_id="o", policy_id="wide", scopes=["write"])
    with pytest.raises(PermissionDeniedError, match=r"max_key_ttl"):
        await admin.create_key(actor, owner_id="o", scopes=["read"], expires_at=time.time() + 2 * HOUR)
    with pytest.raises(PermissionDeniedError, match=r"policy_id: policy 'wide'"):
        await admin.create_key(actor, owner_id="o", policy_id="wide", scopes=["read"])
    # No root admin key (an admin key without a policy, unbounded) from a bounded one.
    with pytest.raises(PermissionDeniedError, match=r"policy_id: .*must follow one too"):
        await admin.create_key(actor, owner_id="o", scopes=[ADMIN_SCOPE])
    # Within its bounds it may act; a key it makes never outlives its own bound.
    minted, _ = await admin.create_key(actor, owner_id="o", scopes=["read"])
    assert minted.record.expires_at is not None and minted.record.expires_at <= time.time() + HOUR + 1
    on_ops, _ = await admin.create_key(actor, owner_id="o", policy_id="ops")
    assert on_ops.record.expires_at is not None
    keys = (await admin.list_keys(owner_id="o"))[0]
    assert sorted(k.record.key_id for k in keys) == sorted([minted.record.key_id, on_ops.record.key_id])


async def test_no_key_a_bounded_actor_writes_outlives_the_actor(store: Store) -> None:
    admin, _, _ = await world(store)
    soon = time.time() + 600
    short, _ = await admin.create_key(OPERATOR, owner_id="ops", policy_id="ops", expires_at=soon)
    actor = short.record.key_id
    # Within max_key_ttl (1 h), but past its own expiry: no renewing itself, no longer-lived heir.
    with pytest.raises(PermissionDeniedError, match="may not outlive it"):
        await admin.update_key(actor, actor, {"expires_at": soon + 600})
    with pytest.raises(PermissionDeniedError, match="may not outlive it"):
        await admin.create_key(actor, owner_id="o", policy_id="ops", expires_at=soon + 600)
    heir, _ = await admin.create_key(actor, owner_id="o", policy_id="ops")
    assert heir.record.expires_at is not None and heir.record.expires_at <= soon
    rotated, _, _ = await admin.rotate_key(actor, actor)
    assert rotated.record.expires_at is not None and rotated.record.expires_at <= soon


async def test_an_expiring_bounded_actor_without_a_max_key_ttl_makes_no_key_outliving_it(
        store: Store) -> None:
    admin, _, _ = await world(store)
    soon = time.time() + 600
    # A temporary admin key (an explicit expiry) on a policy with no max_key_ttl.
    await admin.create_policy(OPERATOR, Policy("staff", 0, 0.0, 0.0, scopes=(ADMIN_SCOPE, "read")))
    temporary, _ = await admin.create_key(OPERATOR, owner_id="contractor", policy_id="staff",
                                          expires_at=soon)
    actor = temporary.record.key_id
    heir, _ = await admin.create_key(actor, owner_id="contractor", policy_id="staff")
    assert heir.record.expires_at is not None and heir.record.expires_at <= soon
    with pytest.raises(PermissionDeniedError, match="may not outlive it"):
        await admin.create_key(actor, owner_id="o", policy_id="staff", expires_at=soon + 600)
    with pytest.raises(PermissionDeniedError, match="may not outlive it"):
        await admin.update_key(actor, heir.record.key_id, {"expires_at": None})
    rotated, _, _ = await admin.rotate_key(actor, actor)
    assert rotated.record.expires_at is not None and rotated.record.expires_at <= soon


async def test_a_bounded_actor_cannot_widen_keys_by_update_or_rotation(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    mine, _ = await admin.create_key(actor, owner_id="o", scopes=["read"])
    target = mine.record.key_id
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_key(actor, target, {"scopes": ["read", "write"]})
    with pytest.raises(PermissionDeniedError):
        await admin.update_key(actor, target, {"policy_id": "wide"})
    with pytest.raises(PermissionDeniedError, match="max_key_ttl"):
        await admin.update_key(actor, target, {"expires_at": time.time() + 10 * HOUR})
    with pytest.raises(PermissionDeniedError, match="max_key_ttl"):
        await admin.update_key(actor, target, {"expires_at": None})
    # A key made by an unbounded admin: the bounded one may not hand out a copy of it.
    wider, _ = await admin.create_key(OPERATOR, owner_id="o", scopes=["write"])
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.rotate_key(actor, wider.record.key_id)
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_key(actor, wider.record.key_id, {"enabled": True})
    # Its own key: narrowed to admin only by its own scopes, it may not drop them to get the policy's.
    narrowed, _ = await admin.create_key(OPERATOR, owner_id="ops", policy_id="ops", scopes=[ADMIN_SCOPE])
    with pytest.raises(PermissionDeniedError, match="scope 'read'"):
        await admin.update_key(narrowed.record.key_id, narrowed.record.key_id, {"scopes": []})
    assert (await admin.get_key(target)).record.scopes == ("read",)
    assert (await admin.get_key(narrowed.record.key_id)).record.scopes == (ADMIN_SCOPE,)
    # Revoking grants nothing: a bounded actor may revoke a wider key.
    assert (await admin.revoke_key(actor, wider.record.key_id)).status is KeyStatus.REVOKED


async def test_a_bounded_actor_cannot_refill_or_edit_a_key_beyond_its_scopes(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    # A key made by an unbounded admin, its quota spent: refilling it grants it use again.
    wider, _ = await admin.create_key(OPERATOR, owner_id="o", scopes=["write"], quota=0)
    target = wider.record.key_id
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_key(actor, target, {"quota_remaining": 1_000_000})
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_key(actor, target, {"metadata": {"tenant": "other"}})
    after = await admin.get_key(target)
    assert after.quota_remaining == 0 and after.record.revision == wider.record.revision
    # Within its scopes it may.
    mine, _ = await admin.create_key(actor, owner_id="o", scopes=["read"], quota=0)
    assert (await admin.update_key(actor, mine.record.key_id, {"quota_remaining": 5})).quota_remaining == 5


async def test_a_retry_after_the_actor_lost_a_scope_re_issues_no_secret(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    made, _ = await admin.create_key(actor, owner_id="o", scopes=["read"], request_id="r-create")
    other, _ = await admin.create_key(actor, owner_id="o", scopes=["read"])
    rotated, _, _ = await admin.rotate_key(actor, other.record.key_id, request_id="r-rotate")
    # An unbounded admin takes "read" from the actor's policy.
    await admin.update_policy(OPERATOR, replace(OPS, scopes=(ADMIN_SCOPE,)), expected_version=1,
                              allow_breaking=True)
    with pytest.raises(PermissionDeniedError, match="scope 'read'"):
        await admin.create_key(actor, owner_id="o", scopes=["read"], request_id="r-create")
    with pytest.raises(PermissionDeniedError, match="scope 'read'"):
        await admin.rotate_key(actor, other.record.key_id, request_id="r-rotate")
    for view in (made, rotated):
        assert (await admin.get_key(view.record.key_id)).record.key_hash == view.record.key_hash


async def test_a_bounded_actor_cannot_write_policies_beyond_its_authority(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.create_policy(actor, Policy("p", 0, 0.0, 0.0, scopes=("write",), max_key_ttl_s=60))
    with pytest.raises(PermissionDeniedError, match="max_key_ttl"):
        await admin.create_policy(actor, Policy("p", 0, 0.0, 0.0, scopes=("read",)))
    # Its own policy: no widening of scopes, no loosening of its lifetime bound.
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_policy(actor, replace(OPS, scopes=(*OPS.scopes, "write")), expected_version=1)
    with pytest.raises(PermissionDeniedError, match="max_key_ttl"):
        await admin.update_policy(actor, replace(OPS, max_key_ttl_s=None), expected_version=1)
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.update_policy(actor, replace(OPS, scopes=(*OPS.scopes, "write")), expected_version=1,
                                  dry_run=True)
    # Rolling back to a wider version is widening too.
    await admin.create_policy(OPERATOR, Policy("team", 0, 0.0, 0.0, scopes=("read", "write"), max_key_ttl_s=60))
    await admin.update_policy(OPERATOR, Policy("team", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60),
                              expected_version=1, allow_breaking=True)
    with pytest.raises(PermissionDeniedError, match="scope 'write'"):
        await admin.rollback_policy(actor, "team", 1, allow_breaking=True)
    assert (await admin.get_policy("team")).version == 2
    assert (await admin.get_policy("ops")).version == 1
    # Within its authority it may.
    await admin.create_policy(actor, Policy("mine", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60))


async def test_a_lifetime_bound_actor_grants_no_scope_to_keys_that_outlive_it(store: Store) -> None:
    admin, _, ops = await world(store)
    actor = ops.record.key_id
    # A never-expiring key on a policy that got its max_key_ttl later (issued keys keep their expiry).
    await admin.create_policy(OPERATOR, Policy("team", 0, 0.0, 0.0, scopes=("read",)))
    lasting, _ = await admin.create_key(OPERATOR, owner_id="o", policy_id="team")
    capped = Policy("team", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60)
    await admin.update_policy(OPERATOR, capped, expected_version=1, allow_breaking=True)
    assert (await admin.get_key(lasting.record.key_id)).record.expires_at is None
    # Granting admin through the policy would make it an admin key outliving the actor: an heir.
    escalated = replace(capped, scopes=("read", ADMIN_SCOPE))
    for dry_run in (True, False):
        with pytest.raises(PermissionDeniedError, match="max_key_ttl"):
            await admin.update_policy(actor, escalated, expected_version=2, allow_breaking=True,
                                      dry_run=dry_run)
    assert (await admin.get_policy("team")).version == 2
    # On a policy whose keys all expire in time, it may.
    await admin.create_policy(OPERATOR, Policy("short", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60))
    await admin.create_key(OPERATOR, owner_id="o", policy_id="short")
    await admin.update_policy(actor, replace(escalated, policy_id="short"), expected_version=1,
                              allow_breaking=True)


async def test_an_actor_whose_key_stopped_working_cannot_act(store: Store) -> None:
    admin, root, ops = await world(store)
    await admin.update_key(root.record.key_id, ops.record.key_id, {"enabled": False})
    with pytest.raises(UnauthenticatedError, match="disabled"):
        await admin.create_key(ops.record.key_id, owner_id="o")
    reader, _ = await admin.create_key(OPERATOR, owner_id="o", scopes=["read"])
    with pytest.raises(PermissionDeniedError, match=ADMIN_SCOPE):
        await admin.create_key(reader.record.key_id, owner_id="o")
    with pytest.raises(PermissionDeniedError):
        await admin.create_key("", owner_id="o")


async def test_max_key_ttl_holds_on_every_path_that_sets_an_expiry_or_a_policy(store: Store) -> None:
    admin, root, _ = await world(store)
    actor = root.record.key_id
    capped, _ = await admin.create_key(actor, owner_id="o", policy_id="capped")
    key_id = capped.record.key_id
    with pytest.raises(InvalidArgumentError, match="expires_at: policy 'capped'"):
        await admin.update_key(actor, key_id, {"expires_at": time.time() + 10 * HOUR})
    with pytest.raises(InvalidArgumentError, match="expires_at: policy 'capped'"):
        await admin.update_key(actor, key_id, {"expires_at": None})
    assert (await admin.get_key(key_id)).record.expires_at == capped.record.expires_at
    # Moving a never-expiring key onto a capped policy brings its expiry within the cap.
    forever, _ = await admin.create_key(actor, owner_id="o", scopes=["read"])
    moved = await admin.update_key(actor, forever.record.key_id, {"policy_id": "capped"})
    assert moved.record.expires_at is not None and moved.record.expires_at <= time.time() + 61
    # A key from before its policy was capped gets the cap when rotated.
    await admin.create_policy(actor, Policy("later", 0, 0.0, 0.0, scopes=("read",)))
    legacy, _ = await admin.create_key(actor, owner_id="o", policy_id="later")
    await admin.update_policy(actor, Policy("later", 0, 0.0, 0.0, scopes=("read",), max_key_ttl_s=60),
                              expected_version=1, allow_breaking=True)
    new, _, _ = await admin.rotate_key(actor, legacy.record.key_id)
    assert new.record.expires_at is not None and new.record.expires_at <= time.time() + 61


async def test_the_last_admin_key_cannot_be_taken_away(store: Store) -> None:
    admin, root, ops = await world(store)
    last = root.record.key_id  # `ops` expires within the hour: it does not count
    attempts: list[Callable[[], Awaitable[KeyView]]] = [
        lambda: admin.revoke_key(last, last),
        lambda: admin.revoke_key(ops.record.key_id, last, grace_s=60),
        lambda: admin.update_key(last, last, {"enabled": False}),
        lambda: admin.update_key(last, last, {"expires_at": time.time() + 7 * 86400}),
        lambda: admin.update_key(last, last, {"scopes": ["read"]}),
    ]
    for attempt in attempts:
        with pytest.raises(FailedPreconditionError, match=r"no active admin key.*bootstrap --force"):
            await attempt()
    after = await admin.get_key(last)
    assert after.status is KeyStatus.ACTIVE and after.record.expires_at is None
    # Rotation is fine: the new key is an admin key.
    new, _, _ = await admin.rotate_key(last, last)
    # With a second durable admin, the first may go.
    second, _ = await admin.create_key(new.record.key_id, owner_id="root2", scopes=[ADMIN_SCOPE])
    await admin.revoke_key(second.record.key_id, new.record.key_id)
    with pytest.raises(FailedPreconditionError, match="no active admin key"):
        await admin.revoke_key(second.record.key_id, second.record.key_id)


async def test_a_policy_change_cannot_take_admin_from_the_last_admin_keys(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    await admin.create_policy(OPERATOR, Policy("admins", 0, 0.0, 0.0, scopes=(ADMIN_SCOPE, "read")))
    only, _ = await admin.create_key(OPERATOR, owner_id="root", policy_id="admins")
    actor = only.record.key_id
    with pytest.raises(FailedPreconditionError, match="no active admin key"):
        await admin.update_policy(actor, Policy("admins", 0, 0.0, 0.0, scopes=("read",)),
                                  expected_version=1, allow_breaking=True)
    assert (await admin.get_policy("admins")).version == 1
    await admin.create_key(OPERATOR, owner_id="root2", scopes=[ADMIN_SCOPE])
    policy, _ = await admin.update_policy(actor, Policy("admins", 0, 0.0, 0.0, scopes=("read",)),
                                          expected_version=1, allow_breaking=True)
    assert policy is not None and policy.version == 2


async def test_a_rollback_cannot_take_admin_from_the_last_admin_keys(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    await admin.create_policy(OPERATOR, Policy("admins", 0, 0.0, 0.0, scopes=("read",)))
    escalated, impact = await admin.update_policy(
        OPERATOR, Policy("admins", 0, 0.0, 0.0, scopes=("read", ADMIN_SCOPE)), expected_version=1,
        allow_breaking=True)
    assert escalated is not None and impact.diff.breaking
    only, _ = await admin.create_key(OPERATOR, owner_id="root", policy_id="admins")
    with pytest.raises(FailedPreconditionError, match="no active admin key"):
        await admin.rollback_policy(only.record.key_id, "admins", 1, allow_breaking=True)
    assert (await admin.get_policy("admins")).version == 2


async def test_two_concurrent_revocations_of_the_two_last_admins_do_not_both_succeed(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    for _ in range(5):
        a, _ = await admin.create_key(OPERATOR, owner_id="a", scopes=[ADMIN_SCOPE])
        b, _ = await admin.create_key(OPERATOR, owner_id="b", scopes=[ADMIN_SCOPE])
        others = [v for v in (await admin.list_keys())[0]
                  if v.status is KeyStatus.ACTIVE and v.record.key_id not in (a.record.key_id, b.record.key_id)]
        for other in others:  # earlier rounds' survivor: only a and b are admins now
            await admin.revoke_key(OPERATOR, other.record.key_id)
        results = await asyncio.gather(
            admin.revoke_key(b.record.key_id, a.record.key_id),
            admin.revoke_key(a.record.key_id, b.record.key_id),
            return_exceptions=True,
        )
        for result in results:
            assert isinstance(result, KeyView | ConflictError | FailedPreconditionError), result
        assert sum(isinstance(r, KeyView) for r in results) <= 1, results
        statuses = [(await admin.get_key(k.record.key_id)).status for k in (a, b)]
        assert KeyStatus.ACTIVE in statuses, statuses


async def test_refusals_are_audited_with_their_rule(store: Store) -> None:
    admin, root, ops = await world(store)
    with capture_spans() as spans:
        with pytest.raises(PermissionDeniedError):
            await admin.create_key(ops.record.key_id, owner_id="o", scopes=["write"])
        with pytest.raises(FailedPreconditionError):
            await admin.revoke_key(root.record.key_id, root.record.key_id)
        with pytest.raises(PermissionDeniedError):
            await admin.update_policy(ops.record.key_id, replace(OPS, max_key_ttl_s=None), expected_version=1)
    audit = {s.name: dict(s.attributes or {}) for s in spans.get_finished_spans()}
    create = audit["audit.key.create"]
    assert create["keysvc.actor"] == ops.record.key_id
    assert (create["keysvc.outcome"], create["keysvc.rule"]) == ("PermissionDeniedError", "actor_scopes")
    revoke = audit["audit.key.revoke"]
    assert (revoke["keysvc.outcome"], revoke["keysvc.rule"]) == ("FailedPreconditionError", "last_admin")
    update = audit["audit.policy.update"]
    assert (update["keysvc.outcome"], update["keysvc.rule"]) == ("PermissionDeniedError", "actor_max_key_ttl")


async def test_changes_and_refusals_are_audited_through_the_port(store: Store) -> None:
    from keysvc.core.errors import PermissionDeniedError
    from keysvc.testing import RecordingAuditor

    auditor = RecordingAuditor()
    admin = AdminService(store, auditor=auditor)
    await admin.create_policy(OPERATOR, OPS)
    ops, _ = await admin.create_key(OPERATOR, owner_id="ops", policy_id="ops")
    with pytest.raises(PermissionDeniedError):
        await admin.create_key(ops.record.key_id, owner_id="x", scopes=["write"])
    assert [(e.action, e.fields["outcome"]) for e in auditor.events] == [
        ("policy.create", "ok"), ("key.create", "ok"), ("key.create", "PermissionDeniedError"),
    ]
    assert auditor.events[1].fields["target_key_id"] == ops.record.key_id
    assert auditor.events[2].fields["actor"] == ops.record.key_id
