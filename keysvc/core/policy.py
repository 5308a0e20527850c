"""Pure policy evaluation and policy diffs. No I/O.

`evaluate` turns a key record, its policy, the request and the clock into a
Decision (before any rate limit or quota, which need the store's counters).
`diff` compares two policy versions and says whether the change is breaking:
whether some request allowed before could be refused after.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

from keysvc.core.model import ADMIN_SCOPE, Code, Decision, KeyFacts, KeyStatus, Policy, RateLimit, key_status

__all__ = [
    "Grant",
    "PolicyDiff",
    "diff",
    "effective_scopes",
    "evaluate",
    "ip_allowed",
    "make_grant",
    "parse_cidrs",
]

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=1024)
def parse_cidrs(cidrs: tuple[str, ...]) -> tuple[_IPNetwork, ...]:
    """Parse CIDR strings (a bare address means one host).

    Raises:
        ValueError: one is not an address or network.
    """
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=65536)
def ip_allowed(client_ip: str, cidrs: tuple[str, ...]) -> bool:
    """True when `client_ip` is in one of `cidrs` (memoised: callers repeat)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in parse_cidrs(cidrs))


def effective_scopes(record: KeyFacts, policy: Policy | None) -> tuple[str, ...]:
    """Policy scopes narrowed by the key's own scopes when it has any."""
    if policy is None:
        return record.scopes
    if not record.scopes:
        return policy.scopes
    own = set(record.scopes)
    narrowed = tuple(s for s in policy.scopes if s in own)
    # Usually the key's own scopes, in the policy's order: share that tuple.
    return record.scopes if narrowed == record.scopes else narrowed


_STATUS_CODES = {
    KeyStatus.REVOKED: (Code.REVOKED, "key is revoked"),
    KeyStatus.EXPIRED: (Code.EXPIRED, "key has expired"),
    KeyStatus.DISABLED: (Code.DISABLED, "key is disabled"),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """What one (record, policy) pair allows, worked out once and reused by every call.

    The cache keeps one per cached key, so a cache hit allocates nothing: it
    checks the clock, the scopes and the address, and returns `valid`. The
    record, policy and effective scopes are those of `valid` (not repeated
    here: this is held once per cached key).
    """

    valid: Decision
    scope_set: Collection[str]
    cidrs: tuple[str, ...]
    limited: bool


def make_grant(record: KeyFacts, policy: Policy | None) -> Grant:
    """Precompute the evaluation data of a record under its policy."""
    scopes = effective_scopes(record, policy)
    limited = record.has_quota or (policy is not None and policy.rate_limit is not None)
    # A short tuple is as fast to search as a set, and far smaller per cached key.
    scope_set = frozenset(scopes) if len(scopes) > 8 else scopes
    return Grant(
        Decision(Code.VALID, record, policy, scopes), scope_set,
        policy.allowed_cidrs if policy else (), limited,
    )


def evaluate(
    record: KeyFacts,
    policy: Policy | None,
    required_scopes: Sequence[str],
    client_ip: str,
    now: float,
    grant: Grant | None = None,
) -> Decision:
    """Decide a call for a known key, before rate limits and quotas.

    Order: lifecycle state (revoked, expired, disabled), then scopes, then
    client address. A REVOKING key (revocation scheduled) is still valid.
    A policy with CIDRs refuses a call that gives no client address.
    `grant` (from `make_grant(record, policy)`) saves recomputing it.
    """
    status = key_status(record, now)
    denial = _STATUS_CODES.get(status)
    if denial is not None:
        return Decision(denial[0], record, policy, message=denial[1])
    if grant is None:
        grant = make_grant(record, policy)
    allowed = grant.scope_set
    for scope in required_scopes:
        if scope not in allowed:
            return Decision(
                Code.INSUFFICIENT_SCOPE, record, policy, grant.valid.scopes,
                f"key lacks scope {scope!r}",
            )
    if grant.cidrs and not ip_allowed(client_ip, grant.cidrs):
        return Decision(
            Code.IP_NOT_ALLOWED, record, policy, grant.valid.scopes, "client address not allowed"
        )
    return grant.valid


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """What changes between two versions of a policy."""

    scopes_added: tuple[str, ...] = ()
    scopes_removed: tuple[str, ...] = ()
    cidrs_added: tuple[str, ...] = ()
    cidrs_removed: tuple[str, ...] = ()
    limits_tightened: tuple[str, ...] = ()
    limits_loosened: tuple[str, ...] = ()
    cidrs_narrowed: bool = False

    @property
    def escalates(self) -> bool:
        """True when the change gives the policy's keys admin authority."""
        return ADMIN_SCOPE in self.scopes_added

    @property
    def breaking(self) -> bool:
        """True when a request allowed before could be refused after, or keys gain admin authority.

        Granting keysvc:admin refuses nothing, but turns every key on the policy
        into an admin key: it needs the same explicit `allow_breaking`.
        """
        return bool(self.scopes_removed or self.limits_tightened or self.cidrs_narrowed
                    or self.escalates)


def _narrowed(before: tuple[str, ...], after: tuple[str, ...]) -> bool:
    """True when some address allowed by `before` is refused by `after`.

    An empty list allows every address. Compared as address ranges, not
    strings: replacing 10.0.0.0/16 by 10.0.0.0/8 widens. An old network split
    across several new ones counts as narrowed (conservative).
    """
    if not after:
        return False
    if not before:
        return True
    new = parse_cidrs(after)
    return not all(
        any(old.version == n.version and old.subnet_of(n) for n in new)  # type: ignore[arg-type]
        for old in parse_cidrs(before)
    )


def _rate_narrowed(before: RateLimit | None, after: RateLimit | None) -> bool:
    """True when some burst allowed under `before` is refused under `after`.

    Windows are aligned to the epoch, so one new window can overlap several old
    ones: 100/60s -> 150/90s refuses calls that were allowed (up to 200 could
    fall in one 90 s window before), and 100/60s -> 60/30s refuses a burst.
    """
    if after is None:
        return False
    if before is None:
        return True
    step = math.gcd(before.window_s, after.window_s)
    overlapped = 1 + -(-(after.window_s - step) // before.window_s)
    return before.requests * overlapped > after.requests


def _describe_rate(p: Policy) -> str:
    return "none" if p.rate_limit is None else f"{p.rate_limit.requests}/{p.rate_limit.window_s}s"


def _describe_ttl(p: Policy) -> str:
    return "none" if p.max_key_ttl_s is None else f"{p.max_key_ttl_s}s"


def _describe_refill(p: Policy) -> str:
    r = p.quota_refill
    return "none" if r is None else f"{r.amount} every {r.interval_s}s"


def _compare(
    before: float | None, after: float | None, label: str, text: tuple[str, str],
    tightened: list[str], loosened: list[str],
) -> None:
    """Record a numeric limit change; None means unlimited."""
    if before == after:
        return
    line = f"{label} {text[0]} -> {text[1]}"
    if after is None or (before is not None and after > before):
        loosened.append(line)
    else:
        tightened.append(line)


def diff(before: Policy, after: Policy) -> PolicyDiff:
    """Compare two versions of a policy (only what affects decisions)."""
    old_scopes, new_scopes = set(before.scopes), set(after.scopes)
    old_cidrs, new_cidrs = set(before.allowed_cidrs), set(after.allowed_cidrs)
    tightened: list[str] = []
    loosened: list[str] = []
    if before.rate_limit != after.rate_limit:
        (tightened if _rate_narrowed(before.rate_limit, after.rate_limit) else loosened).append(
            f"rate limit {_describe_rate(before)} -> {_describe_rate(after)}"
        )
    _compare(
        None if before.max_key_ttl_s is None else float(before.max_key_ttl_s),
        None if after.max_key_ttl_s is None else float(after.max_key_ttl_s),
        "max key TTL", (_describe_ttl(before), _describe_ttl(after)), tightened, loosened,
    )
    old, new = before.quota_refill, after.quota_refill
    if old != new:
        line = f"quota refill {_describe_refill(before)} -> {_describe_refill(after)}"
        # Losing a refill, refilling less often, or refilling to a smaller amount
        # can exhaust keys that would not have been. Adding a refill where there
        # was none caps keys at `amount` on their next refill: breaking too.
        narrowed = new is None or old is None or (
            new.amount / new.interval_s < old.amount / old.interval_s or new.amount < old.amount
        )
        (tightened if narrowed else loosened).append(line)
    return PolicyDiff(
        scopes_added=tuple(sorted(new_scopes - old_scopes)),
        scopes_removed=tuple(sorted(old_scopes - new_scopes)),
        cidrs_added=tuple(sorted(new_cidrs - old_cidrs)),
        cidrs_removed=tuple(sorted(old_cidrs - new_cidrs)),
        limits_tightened=tuple(tightened),
        limits_loosened=tuple(loosened),
        cidrs_narrowed=_narrowed(before.allowed_cidrs, after.allowed_cidrs),
    )
