"""keysvc.core.policy: evaluate() and diff()."""

from __future__ import annotations

from dataclasses import replace

import pytest

from keysvc.core.model import ADMIN_SCOPE, Code, KeyRecord, Policy, QuotaRefill, RateLimit
from keysvc.core.policy import PolicyDiff, diff, effective_scopes, evaluate

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
DAY = 86_400


def key(**fields: object) -> KeyRecord:
    base = KeyRecord(
        key_id="key_00000000000000001", key_hash="0" * 64, hint="ks_abcd", owner_id="owner",
        created_at=NOW - 100, updated_at=NOW - 100,
    )
    return replace(base, **fields)


def pol(**fields: object) -> Policy:
    base = Policy(policy_id="p", version=1, created_at=NOW - 100, updated_at=NOW - 100)
    return replace(base, **fields)


# -- evaluate: lifecycle -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"revoke_at": NOW - 1, "expires_at": NOW - 1, "enabled": False}, Code.REVOKED),
        ({"revoke_at": NOW, "expires_at": NOW - 1}, Code.REVOKED),
        ({"expires_at": NOW - 1, "enabled": False}, Code.EXPIRED),
        ({"expires_at": NOW}, Code.EXPIRED),
        ({"enabled": False}, Code.DISABLED),
        ({"revoke_at": NOW + 60}, Code.VALID),
        ({"expires_at": NOW + 60}, Code.VALID),
        ({}, Code.VALID),
    ],
    ids=[
        "revoked-beats-expired-and-disabled", "revoked-at-now", "expired-beats-disabled",
        "expired-at-now", "disabled", "revoking-is-valid", "not-yet-expired", "active",
    ],
)
def test_lifecycle_codes_and_their_order(fields: dict[str, object], code: Code) -> None:
    decision = evaluate(key(**fields), None, (), "", NOW)
    assert decision.code is code
    assert decision.valid is (code is Code.VALID)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"revoke_at": NOW + 600, "enabled": False}, Code.DISABLED),
        ({"revoke_at": NOW + 600, "expires_at": NOW - 1}, Code.EXPIRED),
    ],
    ids=["revoking-and-disabled", "revoking-and-expired"],
)
def test_scheduled_revocation_does_not_revive_a_refused_key(fields: dict[str, object], code: Code) -> None:
    assert evaluate(key(**fields), None, (), "", NOW).code is code


def test_lifecycle_is_checked_before_scopes_and_address() -> None:
    policy = pol(scopes=("read",), allowed_cidrs=("10.0.0.0/8",))
    decision = evaluate(key(enabled=False), policy, ("write",), "192.0.2.1", NOW)
    assert decision.code is Code.DISABLED
    assert decision.message == "key is disabled"


# -- evaluate: scopes --------------------------------------------------------------


def test_missing_scope_is_named() -> None:
    decision = evaluate(key(scopes=("read",)), None, ("read", "write"), "", NOW)
    assert decision.code is Code.INSUFFICIENT_SCOPE
    assert "'write'" in decision.message
    assert "'read'" not in decision.message
    assert decision.scopes == ("read",)


def test_scopes_are_checked_before_the_address() -> None:
    policy = pol(scopes=("read",), allowed_cidrs=("10.0.0.0/8",))
    decision = evaluate(key(), policy, ("write",), "192.0.2.1", NOW)
    assert decision.code is Code.INSUFFICIENT_SCOPE


def test_effective_scopes_are_policy_scopes_narrowed_by_key_scopes() -> None:
    policy = pol(scopes=("a", "b", "c"))
    record = key(scopes=("c", "a", "z"))
    assert effective_scopes(record, policy) == ("a", "c")
    assert evaluate(record, policy, ("a", "c"), "", NOW).code is Code.VALID
    assert evaluate(record, policy, ("b",), "", NOW).code is Code.INSUFFICIENT_SCOPE
    # A key's own scope the policy does not grant is not granted.
    denied = evaluate(record, policy, ("z",), "", NOW)
    assert denied.code is Code.INSUFFICIENT_SCOPE
    assert "'z'" in denied.message


def test_key_without_own_scopes_gets_the_policy_scopes() -> None:
    policy = pol(scopes=("a", "b"))
    decision = evaluate(key(), policy, ("b",), "", NOW)
    assert decision.code is Code.VALID
    assert decision.scopes == ("a", "b")


def test_key_without_policy_uses_its_own_scopes() -> None:
    record = key(scopes=("x", "y"))
    assert effective_scopes(record, None) == ("x", "y")
    assert evaluate(record, None, ("y",), "", NOW).code is Code.VALID
    assert evaluate(record, None, ("a",), "", NOW).code is Code.INSUFFICIENT_SCOPE
    assert evaluate(key(), None, ("a",), "", NOW).code is Code.INSUFFICIENT_SCOPE


def test_no_required_scopes_passes() -> None:
    assert evaluate(key(), None, (), "", NOW).code is Code.VALID


# -- evaluate: client address ------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "client_ip", "code"),
    [
        (("10.0.0.0/8",), "10.1.2.3", Code.VALID),
        (("10.0.0.0/8",), "11.0.0.1", Code.IP_NOT_ALLOWED),
        (("10.0.0.0/8", "192.0.2.7"), "192.0.2.7", Code.VALID),
        (("10.0.0.0/8", "192.0.2.7"), "192.0.2.8", Code.IP_NOT_ALLOWED),
        (("10.0.0.0/8",), "", Code.IP_NOT_ALLOWED),
        (("10.0.0.0/8",), "not-an-address", Code.IP_NOT_ALLOWED),
        (("2001:db8::/32",), "2001:db8::1", Code.VALID),
        (("2001:db8::/32",), "2001:db9::1", Code.IP_NOT_ALLOWED),
        (("2001:db8::/32",), "10.1.2.3", Code.IP_NOT_ALLOWED),
        (("10.0.0.0/8",), "2001:db8::1", Code.IP_NOT_ALLOWED),
        (("10.0.0.0/8",), "::ffff:10.1.2.3", Code.VALID),
        (("10.0.0.0/8",), "::ffff:11.0.0.1", Code.IP_NOT_ALLOWED),
        ((), "", Code.VALID),
        ((), "203.0.113.9", Code.VALID),
    ],
    ids=[
        "inside", "outside", "bare-address-match", "bare-address-miss", "missing-ip",
        "garbage-ip", "ipv6-inside", "ipv6-outside", "ipv4-vs-ipv6-net", "ipv6-vs-ipv4-net",
        "ipv4-mapped-inside", "ipv4-mapped-outside", "no-cidrs-no-ip", "no-cidrs",
    ],
)
def test_client_address(cidrs: tuple[str, ...], client_ip: str, code: Code) -> None:
    decision = evaluate(key(), pol(allowed_cidrs=cidrs), (), client_ip, NOW)
    assert decision.code is code
    if code is Code.IP_NOT_ALLOWED:
        assert decision.message == "client address not allowed"


def test_decision_carries_record_policy_and_scopes() -> None:
    record, policy = key(), pol(scopes=("a",))
    decision = evaluate(record, policy, ("a",), "", NOW)
    assert (decision.record, decision.policy, decision.scopes) == (record, policy, ("a",))


# -- diff: scopes and CIDRs --------------------------------------------------------


def test_identical_and_cosmetic_changes_are_not_changes() -> None:
    before = pol(scopes=("a",), allowed_cidrs=("10.0.0.0/8",), rate_limit=RateLimit(10, 1))
    for after in (before, replace(before, version=2, description="new words", change_note="why")):
        result = diff(before, after)
        assert result == PolicyDiff()
        assert not result.breaking


def test_scopes_added_are_not_breaking() -> None:
    result = diff(pol(scopes=("a",)), pol(scopes=("c", "a", "b")))
    assert result.scopes_added == ("b", "c")
    assert result.scopes_removed == ()
    assert result != PolicyDiff()
    assert not result.breaking


def test_granting_admin_is_an_escalation_and_breaking() -> None:
    result = diff(pol(scopes=("a",)), pol(scopes=("a", ADMIN_SCOPE)))
    assert result.scopes_added == (ADMIN_SCOPE,) and result.scopes_removed == ()
    assert result.escalates and result.breaking
    assert not diff(pol(scopes=("a", ADMIN_SCOPE)), pol(scopes=("a", ADMIN_SCOPE, "b"))).breaking


def test_scopes_removed_are_breaking() -> None:
    result = diff(pol(scopes=("a", "b", "c")), pol(scopes=("b",)))
    assert result.scopes_removed == ("a", "c")
    assert result != PolicyDiff()
    assert result.breaking


@pytest.mark.parametrize(
    ("before", "after", "narrowed"),
    [
        (("10.0.0.0/16",), ("10.0.0.0/8",), False),
        (("10.0.0.0/8",), ("10.0.0.0/16",), True),
        ((), ("10.0.0.0/8",), True),
        (("10.0.0.0/8",), (), False),
        (("10.0.0.0/8",), ("10.0.0.0/8", "192.0.2.0/24"), False),
        (("10.0.0.0/8", "192.0.2.0/24"), ("10.0.0.0/8",), True),
        (("192.0.2.7",), ("192.0.2.0/24",), False),
        (("10.0.0.0/8",), ("2001:db8::/32",), True),
        (("10.0.0.0/8", "2001:db8::/48"), ("2001:db8::/32", "10.0.0.0/7"), False),
        (("10.0.0.0/8",), ("10.0.0.0/9", "10.128.0.0/9"), True),  # split: conservative
    ],
    ids=[
        "widen", "narrow", "first-cidr", "remove-all", "add-another", "drop-one",
        "host-to-net", "v4-to-v6", "both-families-widen", "split",
    ],
)
def test_cidr_changes_compare_as_ranges(
    before: tuple[str, ...], after: tuple[str, ...], narrowed: bool
) -> None:
    result = diff(pol(allowed_cidrs=before), pol(allowed_cidrs=after))
    assert result.cidrs_narrowed is narrowed
    assert result.breaking is narrowed
    assert result != PolicyDiff()
    assert result.cidrs_added == tuple(sorted(set(after) - set(before)))
    assert result.cidrs_removed == tuple(sorted(set(before) - set(after)))


# -- diff: limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "tightened"),
    [
        (None, RateLimit(100, 60), True),
        (RateLimit(100, 60), None, False),
        (RateLimit(100, 60), RateLimit(50, 60), True),
        (RateLimit(100, 60), RateLimit(200, 60), False),
        (RateLimit(100, 60), RateLimit(100, 120), True),
        (RateLimit(100, 60), RateLimit(50, 30), True),  # same average, smaller burst
        (RateLimit(50, 30), RateLimit(100, 60), False),  # same average, bigger burst
    ],
    ids=["add", "remove", "fewer", "more", "longer-window", "same-rate-smaller-burst",
         "same-rate-bigger-burst"],
)
def test_rate_limit_changes(before: RateLimit | None, after: RateLimit | None, tightened: bool) -> None:
    result = diff(pol(rate_limit=before), pol(rate_limit=after))
    assert result != PolicyDiff()
    assert result.breaking is tightened
    lines = result.limits_tightened if tightened else result.limits_loosened
    assert len(lines) == 1
    assert lines[0].startswith("rate limit ")
    assert (result.limits_loosened if tightened else result.limits_tightened) == ()


def test_rate_limit_line_says_before_and_after() -> None:
    result = diff(pol(rate_limit=RateLimit(100, 60)), pol(rate_limit=RateLimit(50, 60)))
    assert result.limits_tightened == ("rate limit 100/60s -> 50/60s",)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # 100 calls in one second were allowed (one 60 s window); now at most 60 per 30 s window.
        (RateLimit(100, 60), RateLimit(60, 30)),
        # Same average rate, but windows are aligned to the epoch: the new window [0, 90)
        # spans [0, 60) and half of [60, 120), so 100 + 100 calls were allowed there, now 150.
        (RateLimit(100, 60), RateLimit(150, 90)),
    ],
    ids=["higher-rate-smaller-burst", "same-rate-unaligned-window"],
)
def test_rate_limit_change_that_refuses_a_burst_is_breaking(before: RateLimit, after: RateLimit) -> None:
    result = diff(pol(rate_limit=before), pol(rate_limit=after))
    assert result.breaking


@pytest.mark.parametrize(
    ("before", "after", "tightened"),
    [
        (QuotaRefill(1000, DAY), None, True),
        (QuotaRefill(1000, DAY), QuotaRefill(500, DAY), True),
        (QuotaRefill(1000, DAY), QuotaRefill(1000, 2 * DAY), True),
        (QuotaRefill(1000, DAY), QuotaRefill(2000, DAY), False),
        (QuotaRefill(1000, DAY), QuotaRefill(1000, 3600), False),
    ],
    ids=["remove", "less", "slower", "more", "faster"],
)
def test_quota_refill_changes(
    before: QuotaRefill | None, after: QuotaRefill | None, tightened: bool
) -> None:
    result = diff(pol(quota_refill=before), pol(quota_refill=after))
    assert result != PolicyDiff()
    assert result.breaking is tightened
    lines = result.limits_tightened if tightened else result.limits_loosened
    assert len(lines) == 1
    assert lines[0].startswith("quota refill ")


def test_quota_refill_line_says_before_and_after() -> None:
    result = diff(pol(quota_refill=QuotaRefill(1000, DAY)), pol(quota_refill=None))
    assert result.limits_tightened == ("quota refill 1000 every 86400s -> none",)


def test_quota_refill_with_a_smaller_amount_is_breaking() -> None:
    # Before: up to 1000 calls right after a reset. After: never more than 500 at once.
    result = diff(pol(quota_refill=QuotaRefill(1000, DAY)), pol(quota_refill=QuotaRefill(500, 3600)))
    assert result.breaking


@pytest.mark.parametrize(
    ("before", "after", "tightened"),
    [
        (None, 30 * DAY, True),
        (30 * DAY, None, False),
        (30 * DAY, 7 * DAY, True),
        (7 * DAY, 30 * DAY, False),
    ],
    ids=["add", "remove", "shorter", "longer"],
)
def test_max_key_ttl_changes(before: int | None, after: int | None, tightened: bool) -> None:
    result = diff(pol(max_key_ttl_s=before), pol(max_key_ttl_s=after))
    assert result != PolicyDiff()
    assert result.breaking is tightened
    lines = result.limits_tightened if tightened else result.limits_loosened
    assert len(lines) == 1
    assert lines[0].startswith("max key TTL ")


def test_max_key_ttl_line_says_before_and_after() -> None:
    result = diff(pol(max_key_ttl_s=30 * DAY), pol(max_key_ttl_s=7 * DAY))
    assert result.limits_tightened == ("max key TTL 2592000s -> 604800s",)


def test_several_changes_are_all_reported() -> None:
    before = pol(scopes=("a",), rate_limit=RateLimit(10, 1), max_key_ttl_s=DAY)
    after = pol(scopes=("a", "b"), rate_limit=RateLimit(5, 1), max_key_ttl_s=2 * DAY)
    result = diff(before, after)
    assert result.scopes_added == ("b",)
    assert result.limits_tightened == ("rate limit 10/1s -> 5/1s",)
    assert result.limits_loosened == ("max key TTL 86400s -> 172800s",)
    assert result.breaking


# -- PolicyDiff properties ---------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "breaking"),
    [
        (PolicyDiff(), False),
        (PolicyDiff(scopes_added=("a",)), False),
        (PolicyDiff(scopes_added=("a", ADMIN_SCOPE)), True),
        (PolicyDiff(scopes_removed=("a",)), True),
        (PolicyDiff(cidrs_added=("10.0.0.0/8",)), False),
        (PolicyDiff(cidrs_removed=("10.0.0.0/8",)), False),
        (PolicyDiff(cidrs_removed=("10.0.0.0/8",), cidrs_narrowed=True), True),
        (PolicyDiff(limits_tightened=("x",)), True),
        (PolicyDiff(limits_loosened=("x",)), False),
    ],
)
def test_breaking(result: PolicyDiff, breaking: bool) -> None:
    assert result.breaking is breaking
