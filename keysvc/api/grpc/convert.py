"""Protobuf <-> domain conversion. No business logic."""

from __future__ import annotations

from typing import cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from keysvc.core.model import Decision, Event, Policy, QuotaRefill, RateLimit
from keysvc.service.admin import KeyView, PolicyImpact
from keysvc.v1 import keysvc_pb2 as pb

__all__ = [
    "decision_to_pb",
    "duration_s",
    "event_to_pb",
    "impact_to_pb",
    "key_to_pb",
    "policy_from_pb",
    "policy_to_pb",
    "timestamp_s",
]


def ts(seconds: float | None) -> Timestamp | None:
    """Epoch seconds to a Timestamp (None stays None)."""
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def timestamp_s(message: Timestamp) -> float:
    """A Timestamp to epoch seconds."""
    return message.seconds + message.nanos / 1e9


def duration_s(message: Duration) -> float:
    """A Duration to seconds."""
    return message.seconds + message.nanos / 1e9


def dur(seconds: float) -> Duration:
    """Seconds to a Duration."""
    message = Duration()
    message.FromNanoseconds(int(seconds * 1e9))
    return message


def decision_to_pb(decision: Decision) -> pb.ValidateResponse:
    """Build the Validate answer for a decision."""
    response = pb.ValidateResponse(
        valid=decision.valid, code=cast(pb.Code, int(decision.code)), message=decision.message
    )
    record = decision.record
    if record is not None:
        response.key_id = record.key_id
        response.owner_id = record.owner_id
        response.policy_id = record.policy_id
        if record.metadata:
            response.metadata.update(record.metadata)
        if record.expires_at is not None:
            response.expires_at.FromNanoseconds(int(record.expires_at * 1e9))
    if decision.scopes:
        response.scopes.extend(decision.scopes)
    if decision.policy is not None:
        response.policy_version = decision.policy.version
    if decision.rate_limit is not None:
        limit = decision.rate_limit
        response.rate_limit.limit = limit.limit
        response.rate_limit.remaining = max(limit.remaining, 0)
        response.rate_limit.reset_at.FromNanoseconds(int(limit.reset_at * 1e9))
    if decision.quota_remaining is not None:
        response.quota_remaining = decision.quota_remaining
    return response


def key_to_pb(view: KeyView) -> pb.Key:
    """A key as admins see it (never the secret)."""
    r = view.record
    key = pb.Key(
        key_id=r.key_id, hint=r.hint, name=r.name, owner_id=r.owner_id, policy_id=r.policy_id,
        scopes=r.scopes, metadata=dict(r.metadata), enabled=r.enabled,
        status=cast(pb.KeyStatus, int(view.status)),
        created_at=ts(r.created_at), updated_at=ts(r.updated_at), expires_at=ts(r.expires_at),
        revoke_at=ts(r.revoke_at), last_used_at=ts(view.last_used_at), rotated_from=r.rotated_from,
        rotated_to=r.rotated_to, revision=r.revision,
    )
    if view.quota_remaining is not None:
        key.quota_remaining = view.quota_remaining
    return key


def policy_to_pb(policy: Policy) -> pb.Policy:
    """One policy version."""
    message = pb.Policy(
        policy_id=policy.policy_id, version=policy.version, description=policy.description,
        scopes=policy.scopes, allowed_cidrs=policy.allowed_cidrs, created_at=ts(policy.created_at),
        updated_at=ts(policy.updated_at), updated_by=policy.updated_by, change_note=policy.change_note,
    )
    if policy.rate_limit is not None:
        message.rate_limit.requests = policy.rate_limit.requests
        message.rate_limit.window.CopyFrom(dur(policy.rate_limit.window_s))
    if policy.quota_refill is not None:
        message.quota_refill.amount = policy.quota_refill.amount
        message.quota_refill.interval.CopyFrom(dur(policy.quota_refill.interval_s))
    if policy.max_key_ttl_s is not None:
        message.max_key_ttl.CopyFrom(dur(policy.max_key_ttl_s))
    return message


def policy_from_pb(message: pb.Policy) -> Policy:
    """The content of a proposed policy (version and times are the server's)."""
    rate = None
    if message.HasField("rate_limit"):
        rate = RateLimit(message.rate_limit.requests, int(duration_s(message.rate_limit.window)))
    refill = None
    if message.HasField("quota_refill"):
        refill = QuotaRefill(message.quota_refill.amount, int(duration_s(message.quota_refill.interval)))
    ttl = int(duration_s(message.max_key_ttl)) if message.HasField("max_key_ttl") else None
    return Policy(
        policy_id=message.policy_id, version=0, created_at=0.0, updated_at=0.0,
        description=message.description, scopes=tuple(message.scopes),
        allowed_cidrs=tuple(message.allowed_cidrs), rate_limit=rate, quota_refill=refill,
        max_key_ttl_s=ttl or None,
    )


def impact_to_pb(impact: PolicyImpact) -> pb.PolicyImpact:
    """The dry-run / applied impact of a policy change."""
    d = impact.diff
    return pb.PolicyImpact(
        keys_affected=impact.keys_affected, sample_key_ids=list(impact.sample_key_ids),
        scopes_added=d.scopes_added, scopes_removed=d.scopes_removed, cidrs_added=d.cidrs_added,
        cidrs_removed=d.cidrs_removed, limits_tightened=d.limits_tightened,
        limits_loosened=d.limits_loosened, breaking=d.breaking,
    )


def event_to_pb(event: Event) -> pb.Event:
    """One lifecycle event (ids only)."""
    return pb.Event(
        cursor=event.cursor, type=str(event.type), at=ts(event.at), actor=event.actor,
        key_id=event.key_id, policy_id=event.policy_id, policy_version=event.policy_version,
    )
