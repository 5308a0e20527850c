"""Protobuf <-> the client's typed results. No I/O, no decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from keysvc.client.types import (
    Code,
    CreatedKey,
    Event,
    Impact,
    Key,
    KeyStatus,
    Policy,
    PolicyChange,
    QuotaRefill,
    RateLimit,
    RateLimitState,
    RotatedKey,
    ValidationResult,
)
from keysvc.v1 import keysvc_pb2 as pb

__all__ = ["duration_pb", "key_from", "policy_from", "policy_pb", "timestamp_pb", "to_dict"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _span(message: Any, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    value: Duration = getattr(message, name)
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def timestamp_pb(when: datetime) -> Timestamp:
    """A datetime (naive means UTC) as a Timestamp."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    stamp = Timestamp()
    stamp.FromNanoseconds((delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000)
    return stamp


def duration_pb(span: timedelta | float) -> Duration:
    """A timedelta, or seconds, as a Duration."""
    if isinstance(span, timedelta):
        nanos = (span.days * 86400 + span.seconds) * 10**9 + span.microseconds * 1000
    else:
        nanos = int(span * 1e9)
    value = Duration()
    value.FromNanoseconds(nanos)
    return value


def _optional(message: Any, name: str) -> int | None:
    return int(getattr(message, name)) if message.HasField(name) else None


def validation_from(message: pb.ValidateResponse) -> ValidationResult:
    """A ValidateResponse as a ValidationResult."""
    limit = None
    if message.HasField("rate_limit"):
        limit = RateLimitState(message.rate_limit.limit, message.rate_limit.remaining,
                               _time(message.rate_limit, "reset_at"))
    return ValidationResult(
        valid=message.valid, code=Code(message.code) if message.code else Code.UNAVAILABLE,
        key_id=message.key_id, owner_id=message.owner_id, scopes=tuple(message.scopes),
        metadata=dict(message.metadata), expires_at=_time(message, "expires_at"),
        policy_id=message.policy_id, policy_version=message.policy_version, rate_limit=limit,
        quota_remaining=_optional(message, "quota_remaining"), message=message.message,
    )


def key_from(message: pb.Key) -> Key:
    """A Key message as a Key."""
    return Key(
        key_id=message.key_id, hint=message.hint, name=message.name, owner_id=message.owner_id,
        policy_id=message.policy_id, scopes=tuple(message.scopes), metadata=dict(message.metadata),
        enabled=message.enabled, status=KeyStatus(message.status) if message.status else KeyStatus.ACTIVE,
        created_at=_time(message, "created_at"), updated_at=_time(message, "updated_at"),
        expires_at=_time(message, "expires_at"), revoke_at=_time(message, "revoke_at"),
        last_used_at=_time(message, "last_used_at"), quota_remaining=_optional(message, "quota_remaining"),
        rotated_from=message.rotated_from, rotated_to=message.rotated_to, revision=message.revision,
    )


def created_from(message: pb.CreateKeyResponse) -> CreatedKey:
    """A CreateKeyResponse as a CreatedKey."""
    return CreatedKey(key_from(message.key), message.secret, message.secret_reissued)


def rotated_from(message: pb.RotateKeyResponse) -> RotatedKey:
    """A RotateKeyResponse as a RotatedKey."""
    return RotatedKey(key_from(message.key), key_from(message.previous), message.secret,
                      message.secret_reissued)


def policy_from(message: pb.Policy) -> Policy:
    """A Policy message as a Policy."""
    rate = refill = None
    if message.HasField("rate_limit"):
        rate = RateLimit(message.rate_limit.requests, _span(message.rate_limit, "window") or timedelta())
    if message.HasField("quota_refill"):
        refill = QuotaRefill(message.quota_refill.amount,
                             _span(message.quota_refill, "interval") or timedelta())
    return Policy(
        policy_id=message.policy_id, version=message.version, description=message.description,
        scopes=tuple(message.scopes), allowed_cidrs=tuple(message.allowed_cidrs), rate_limit=rate,
        quota_refill=refill, max_key_ttl=_span(message, "max_key_ttl"),
        created_at=_time(message, "created_at"), updated_at=_time(message, "updated_at"),
        updated_by=message.updated_by, change_note=message.change_note,
    )


def impact_from(message: pb.PolicyImpact) -> Impact:
    """A PolicyImpact message as an Impact."""
    return Impact(
        keys_affected=message.keys_affected, sample_key_ids=tuple(message.sample_key_ids),
        scopes_added=tuple(message.scopes_added), scopes_removed=tuple(message.scopes_removed),
        cidrs_added=tuple(message.cidrs_added), cidrs_removed=tuple(message.cidrs_removed),
        limits_tightened=tuple(message.limits_tightened), limits_loosened=tuple(message.limits_loosened),
        breaking=message.breaking,
    )


def change_from(message: pb.UpdatePolicyResponse | pb.RollbackPolicyResponse) -> PolicyChange:
    """An UpdatePolicy/RollbackPolicy answer as a PolicyChange."""
    return PolicyChange(policy_from(message.policy), impact_from(message.impact), message.applied)


def event_from(message: pb.Event) -> Event:
    """An Event message as an Event."""
    return Event(cursor=message.cursor, type=message.type, at=_time(message, "at"), actor=message.actor,
                 key_id=message.key_id, policy_id=message.policy_id, policy_version=message.policy_version)


def policy_pb(policy: Policy) -> pb.Policy:
    """A Policy as a Policy message."""
    message = pb.Policy(policy_id=policy.policy_id, version=policy.version, description=policy.description,
                        scopes=policy.scopes, allowed_cidrs=policy.allowed_cidrs,
                        updated_by=policy.updated_by, change_note=policy.change_note)
    if policy.rate_limit is not None:
        message.rate_limit.requests = policy.rate_limit.requests
        message.rate_limit.window.CopyFrom(duration_pb(policy.rate_limit.window))
    if policy.quota_refill is not None:
        message.quota_refill.amount = policy.quota_refill.amount
        message.quota_refill.interval.CopyFrom(duration_pb(policy.quota_refill.interval))
    if policy.max_key_ttl is not None:
        message.max_key_ttl.CopyFrom(duration_pb(policy.max_key_ttl))
    _set_times(message, policy, ("created_at", "updated_at"))
    return message


def _set_times(message: Any, value: Any, names: tuple[str, ...]) -> None:
    for name in names:
        when = getattr(value, name)
        if when is not None:
            getattr(message, name).CopyFrom(timestamp_pb(when))


def _key_pb(key: Key) -> pb.Key:
    message = pb.Key(
        key_id=key.key_id, hint=key.hint, name=key.name, owner_id=key.owner_id, policy_id=key.policy_id,
        scopes=key.scopes, metadata=dict(key.metadata), enabled=key.enabled,
        status=cast(pb.KeyStatus, int(key.status)), rotated_from=key.rotated_from,
        rotated_to=key.rotated_to, revision=key.revision)
    if key.quota_remaining is not None:
        message.quota_remaining = key.quota_remaining
    _set_times(message, key, ("created_at", "updated_at", "expires_at", "revoke_at", "last_used_at"))
    return message


def _message_of(value: Any) -> Any:  # noqa: PLR0911 - one branch per result type
    if isinstance(value, Key):
        return _key_pb(value)
    if isinstance(value, Policy):
        return policy_pb(value)
    if isinstance(value, Impact):
        return pb.PolicyImpact(**{name: getattr(value, name) for name in value.__slots__})
    if isinstance(value, CreatedKey):
        return pb.CreateKeyResponse(key=_key_pb(value.key), secret=value.secret,
                                    secret_reissued=value.secret_reissued)
    if isinstance(value, RotatedKey):
        return pb.RotateKeyResponse(key=_key_pb(value.key), previous=_key_pb(value.previous),
                                    secret=value.secret, secret_reissued=value.secret_reissued)
    if isinstance(value, PolicyChange):
        return pb.UpdatePolicyResponse(policy=policy_pb(value.policy), impact=_message_of(value.impact),
                                       applied=value.applied)
    if isinstance(value, Event):
        message = pb.Event(cursor=value.cursor, type=value.type, actor=value.actor, key_id=value.key_id,
                           policy_id=value.policy_id, policy_version=value.policy_version)
        _set_times(message, value, ("at",))
        return message
    if isinstance(value, ValidationResult):
        return _validation_pb(value)
    raise TypeError(f"not a keysvc.client result: {type(value).__name__}")


def _validation_pb(value: ValidationResult) -> pb.ValidateResponse:
    message = pb.ValidateResponse(
        valid=value.valid, code=cast(pb.Code, int(value.code)), key_id=value.key_id,
        owner_id=value.owner_id, scopes=value.scopes, metadata=dict(value.metadata),
        policy_id=value.policy_id, policy_version=value.policy_version, message=value.message)
    _set_times(message, value, ("expires_at",))
    if value.rate_limit is not None:
        message.rate_limit.limit = value.rate_limit.limit
        message.rate_limit.remaining = value.rate_limit.remaining
        if value.rate_limit.reset_at is not None:
            message.rate_limit.reset_at.CopyFrom(timestamp_pb(value.rate_limit.reset_at))
    if value.quota_remaining is not None:
        message.quota_remaining = value.quota_remaining
    return message


def to_dict(value: Any) -> dict[str, Any]:
    """A result as the proto3 JSON mapping of its message (proto field names; defaults left out).

    A `CreatedKey`/`RotatedKey` keeps its `secret`: handle the dict as the secret it holds.
    """
    return json_format.MessageToDict(_message_of(value), preserving_proto_field_name=True)
