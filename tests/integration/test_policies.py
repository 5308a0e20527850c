"""Versioned policies on both stores: dry runs, the breaking-change guard, rollback, races."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core.cache import KeyCache
from keysvc.core.errors import ConflictError, FailedPreconditionError
from keysvc.core.model import Code, Policy, RateLimit
from keysvc.service.admin import AdminService
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.testing import capture_spans

pytestmark = pytest.mark.integration

BASE = Policy("partners", 0, 0.0, 0.0, scopes=("read", "write"), allowed_cidrs=("10.0.0.0/8",),
              rate_limit=RateLimit(100, 1))


async def outcomes(store: Store, secrets: list[str]) -> list[tuple[Code, ...]]:
    """Validate outcomes of every key for a fixed set of requests, on a cold cache."""
    validator = Validator(store, KeyCache(max_keys=100, ttl_s=0.0, negative_max=10, negative_ttl_s=0,
                                          stale_window_s=0))
    requests = [([], "10.1.2.3"), (["read"], "10.1.2.3"), (["write"], "10.1.2.3"),
                (["read"], "192.168.1.1"), (["admin"], "10.0.0.1")]
    result = []
    for secret in secrets:
        codes = []
        for scopes, ip in requests:
            decision = await validator.validate(ValidationRequest(secret, scopes, ip))
            codes.append(decision.code)
        result.append(tuple(codes))
    return result


async def setup(store: Store) -> tuple[AdminService, list[str]]:
    admin = AdminService(store, auditor=AUDITOR)
    await admin.create_policy("admin-1", BASE)
    secrets = []
    for scopes in ([], ["read"], ["write"]):
        _, secret = await admin.create_key("admin-1", owner_id="acme", policy_id="partners", scopes=scopes)
        secrets.append(secret)
    return admin, secrets


async def test_dry_run_reports_impact_and_writes_nothing(store: Store) -> None:
    admin, secrets = await setup(store)
    before_events = await store.last_cursor()
    before = await outcomes(store, secrets)
    narrowed = replace(BASE, scopes=("read",), allowed_cidrs=("10.0.0.0/16",), rate_limit=RateLimit(10, 1))
    policy, impact = await admin.update_policy("admin-1", narrowed, expected_version=1, dry_run=True)
    assert policy is None
    assert impact.keys_affected == 3 and len(impact.sample_key_ids) == 3
    assert impact.diff.scopes_removed == ("write",)
    assert impact.diff.cidrs_removed == ("10.0.0.0/8",) and impact.diff.cidrs_added == ("10.0.0.0/16",)
    assert impact.diff.limits_tightened == ("rate limit 100/1s -> 10/1s",)
    assert impact.diff.breaking
    assert (await admin.get_policy("partners")).version == 1
    assert await store.last_cursor() == before_events, "a dry run appends no event"
    assert await outcomes(store, secrets) == before


async def test_breaking_change_needs_allow_breaking(store: Store) -> None:
    admin, secrets = await setup(store)
    before = await outcomes(store, secrets)
    narrowed = replace(BASE, scopes=("read",))
    with pytest.raises(FailedPreconditionError, match="allow_breaking"):
        await admin.update_policy("admin-1", narrowed, expected_version=1)
    assert (await admin.get_policy("partners")).version == 1
    assert await outcomes(store, secrets) == before
    widened = replace(BASE, scopes=("read", "write", "admin"), allowed_cidrs=("10.0.0.0/8", "192.168.0.0/16"))
    policy, impact = await admin.update_policy("admin-1", widened, expected_version=1)
    assert policy is not None and policy.version == 2 and not impact.diff.breaking
    policy, _ = await admin.update_policy("admin-1", narrowed, expected_version=2, allow_breaking=True)
    assert policy is not None and policy.version == 3


async def test_rollback_restores_the_exact_earlier_outcomes(store: Store) -> None:
    admin, secrets = await setup(store)
    v1 = await outcomes(store, secrets)
    changed = replace(BASE, scopes=("read", "admin"), allowed_cidrs=())
    await admin.update_policy("admin-1", changed, expected_version=1, allow_breaking=True)
    v2 = await outcomes(store, secrets)
    assert v2 != v1
    with capture_spans() as spans:
        policy, impact = await admin.rollback_policy("admin-1", "partners", 1, allow_breaking=True)
    assert policy is not None and policy.version == 3 and policy.change_note == "rollback to version 1"
    assert impact.diff.scopes_removed == ("admin",) and impact.diff.scopes_added == ("write",)
    assert await outcomes(store, secrets) == v1
    span = next(s for s in spans.get_finished_spans() if s.name == "audit.policy.rollback")
    assert span.attributes is not None and "scopes -admin" in str(span.attributes["keysvc.diff"])
    versions, _ = await admin.list_policy_versions("partners")
    assert [v.version for v in versions] == [3, 2, 1]
    assert [v.scopes for v in versions] == [BASE.scopes, changed.scopes, BASE.scopes]
    assert all(v.updated_by == "admin-1" for v in versions)


async def test_concurrent_updates_with_the_same_expected_version_one_wins(store: Store) -> None:
    admin, _ = await setup(store)
    attempts = [replace(BASE, description=f"writer {i}") for i in range(8)]
    results = await asyncio.gather(
        *(admin.update_policy(f"admin-{i}", p, expected_version=1) for i, p in enumerate(attempts)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    current = await admin.get_policy("partners")
    assert current.version == 2
    assert current.description == winners[0][0].description  # type: ignore[index,union-attr]


async def test_granting_admin_through_a_policy_is_breaking(store: Store) -> None:
    admin, _ = await setup(store)
    escalated = replace(BASE, scopes=(*BASE.scopes, "keysvc:admin"))
    policy, impact = await admin.update_policy("admin-1", escalated, expected_version=1, dry_run=True)
    assert policy is None and impact.diff.breaking and impact.diff.scopes_added == ("keysvc:admin",)
    with pytest.raises(FailedPreconditionError, match="allow_breaking"):
        await admin.update_policy("admin-1", escalated, expected_version=1)
    assert (await admin.get_policy("partners")).version == 1
    policy, _ = await admin.update_policy("admin-1", escalated, expected_version=1, allow_breaking=True)
    assert policy is not None and policy.version == 2
