"""What each KeyService call sends and how its answer is read, shared by `Client` and `AsyncClient`.

A `Call` is built once per logical call: a write's `request_id` is chosen
here and so is the same on every retry of it.
"""

from __future__ import annotations

import functools
import inspect
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, cast

import grpc
from google.protobuf import field_mask_pb2

from keysvc.client import _convert as conv
from keysvc.client.errors import ClientError, InvalidArgument
from keysvc.client.types import (
    CreatedKey,
    Key,
    KeyStatus,
    Page,
    Policy,
    PolicyChange,
    RotatedKey,
    ValidationResult,
)
from keysvc.v1 import keysvc_pb2 as pb

__all__ = ["Call", "Retry", "Span"]

T = TypeVar("T")
Span = timedelta | float  # a duration: a timedelta, or seconds


@dataclass(frozen=True, slots=True)
class Retry:
    """How a call is retried: on UNAVAILABLE (and a concurrency-limit RESOURCE_EXHAUSTED), jittered.

    DEADLINE_EXCEEDED is retried only when `attempt_timeout` ended the
    attempt and the call's own deadline still has time. Every write carries a
    `request_id`, so its retries act at most once (README "Retries and request_id").
    """

    attempts: int = 5  # at most this many tries per call, the first included
    initial_backoff: float = 0.05  # seconds before the first retry (jittered: half to all of it)
    max_backoff: float = 1.0  # the backoff grows by `multiplier` up to this
    multiplier: float = 2.0
    attempt_timeout: float | None = None  # seconds per attempt; None: the call's whole remaining deadline

    def delay(self, code: grpc.StatusCode, details: str, attempt: int, remaining: float) -> float | None:
        """Seconds to wait before retrying after failed `attempt` (1-based), or None: do not retry."""
        retryable = code is grpc.StatusCode.UNAVAILABLE or (
            code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in details
        ) or (code is grpc.StatusCode.DEADLINE_EXCEEDED and remaining > 0)
        if not retryable or attempt >= self.attempts:
            return None
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        wait = cap / 2 + random.uniform(0, cap / 2)
        return wait if wait < remaining else None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One logical unary call: its method, its request (fixed across retries) and its answer's reader."""

    method: str
    request: Any = field(repr=False)  # may hold a key (Validate): never shown
    parse: Callable[[Any], T] = field(repr=False)
    admin: bool = True
    retried: bool = True  # False: one attempt (a probe answers now or not at all)
    service: str = "keys"  # "keys": KeyService; "health": grpc.health.v1.Health


P = ParamSpec("P")
_UINT32 = range(2**32)  # most request numbers are uint32 (cost, page_size, quota, versions)


def _bad_text(value: Any) -> bool:
    """True when `value` holds a str protobuf cannot encode (a lone surrogate), at any depth."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(_bad_text(k) or _bad_text(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_bad_text(v) for v in value)
    return False


def _problem(arguments: Mapping[str, Any]) -> str:
    """Which argument a request could not be built from, and why, naming it, never quoting it."""
    for name, value in arguments.items():
        if _bad_text(value):
            return f"{name}: not UTF-8 text (it holds a lone surrogate)"
    for name, value in arguments.items():
        if isinstance(value, int) and not isinstance(value, bool) and value not in _UINT32:
            return f"{name}: out of range"
    return "request: a field has a value of the wrong type or out of range"


def _checked(method: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Build `method`'s request or raise InvalidArgument naming the argument protobuf refused.

    Protobuf refuses a lone surrogate with a UnicodeEncodeError that holds the whole
    string (a key, when it is the key: in its repr, args and `.object`), and an
    out-of-range number with a ValueError that names no field. Neither leaves here:
    the error is raised outside the `except` block, so it is not even its context.
    """

    def wrap(builder: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(builder)
        def build(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return builder(*args, **kwargs)
            except ClientError:
                raise
            except (ValueError, TypeError, OverflowError):  # UnicodeEncodeError is a ValueError
                pass
            problem = _problem(inspect.signature(builder).bind(*args, **kwargs).arguments)
            raise InvalidArgument(problem, method=method)

        return build

    return wrap


def changes(**fields: Any) -> dict[str, Any]:
    """The fields that were given (not None): an UpdateKey's field mask and values."""
    return {name: value for name, value in fields.items() if value is not None}


def _request_id(given: str | None) -> str:
    return given or str(uuid.uuid4())


@_checked("Validate")
def validate(key: str, required_scopes: Iterable[str], client_ip: str, cost: int) -> Call[ValidationResult]:
    """Validate one key."""
    request = pb.ValidateRequest(key=key, required_scopes=list(required_scopes), client_ip=client_ip,
                                 cost=cost)
    return Call("Validate", request, conv.validation_from, admin=False)


@_checked("BatchValidate")
def batch_validate(keys: Iterable[str], required_scopes: Iterable[str], client_ip: str,
                   cost: int) -> Call[list[ValidationResult]]:
    """Validate many keys with the same scopes, address and cost."""
    scopes = list(required_scopes)
    request = pb.BatchValidateRequest(requests=[
        pb.ValidateRequest(key=key, required_scopes=scopes, client_ip=client_ip, cost=cost) for key in keys])
    return Call("BatchValidate", request,
                lambda reply: [conv.validation_from(r) for r in reply.responses], admin=False)


@_checked("CreateKey")
def create_key(owner_id: str, *, name: str, policy_id: str, scopes: Iterable[str],
               metadata: Mapping[str, str] | None, expires_at: datetime | None, ttl: Span | None,
               prefix: str, quota: int | None, request_id: str | None) -> Call[CreatedKey]:
    """Create a key."""
    request = pb.CreateKeyRequest(owner_id=owner_id, name=name, policy_id=policy_id, scopes=list(scopes),
                                  metadata=dict(metadata or {}), prefix=prefix,
                                  request_id=_request_id(request_id))
    if expires_at is not None:
        request.expires_at.CopyFrom(conv.timestamp_pb(expires_at))
    if ttl is not None:
        request.ttl.CopyFrom(conv.duration_pb(ttl))
    if quota is not None:
        request.quota = quota
    return Call("CreateKey", request, conv.created_from)


@_checked("GetKey")
def get_key(key_id: str) -> Call[Key]:
    """Read one key."""
    return Call("GetKey", pb.GetKeyRequest(key_id=key_id), lambda reply: conv.key_from(reply.key))


@_checked("ListKeys")
def list_keys(owner_id: str, status: KeyStatus | None, unused_for: Span | None, page_size: int,
              page_token: str) -> Call[Page[Key]]:
    """One page of keys."""
    request = pb.ListKeysRequest(owner_id=owner_id, page_size=page_size, page_token=page_token)
    if status is not None:
        request.status = cast(pb.KeyStatus, int(status))
    if unused_for is not None:
        request.unused_for.CopyFrom(conv.duration_pb(unused_for))
    return Call("ListKeys", request,
                lambda reply: Page(tuple(conv.key_from(k) for k in reply.keys), reply.next_page_token))


@_checked("UpdateKey")
def update_key(key_id: str, *, changes: Mapping[str, Any], expected_revision: int,
               request_id: str | None) -> Call[Key]:
    """Change the fields named in `changes` (and only those: they make the field mask)."""
    key = pb.Key()
    for name, value in changes.items():
        if name in ("scopes",):
            key.scopes.extend(value)
        elif name == "metadata":
            key.metadata.update(dict(value))
        elif name == "expires_at":
            key.expires_at.CopyFrom(conv.timestamp_pb(value))
        else:
            setattr(key, name, value)
    request = pb.UpdateKeyRequest(key_id=key_id, key=key,
                                  update_mask=field_mask_pb2.FieldMask(paths=list(changes)),
                                  expected_revision=expected_revision, request_id=_request_id(request_id))
    return Call("UpdateKey", request, lambda reply: conv.key_from(reply.key))


@_checked("RevokeKey")
def revoke_key(key_id: str, grace_period: Span, reason: str, request_id: str | None) -> Call[Key]:
    """Revoke a key now, or after `grace_period`."""
    request = pb.RevokeKeyRequest(key_id=key_id, grace_period=conv.duration_pb(grace_period), reason=reason,
                                  request_id=_request_id(request_id))
    return Call("RevokeKey", request, lambda reply: conv.key_from(reply.key))


@_checked("RotateKey")
def rotate_key(key_id: str, grace_period: Span, request_id: str | None) -> Call[RotatedKey]:
    """Issue a new key in place of `key_id`; the old secret works for `grace_period`."""
    request = pb.RotateKeyRequest(key_id=key_id, grace_period=conv.duration_pb(grace_period),
                                  request_id=_request_id(request_id))
    return Call("RotateKey", request, conv.rotated_from)


@_checked("CreatePolicy")
def create_policy(policy: Policy, request_id: str | None) -> Call[Policy]:
    """Create a policy (its version, times and author are the server's)."""
    request = pb.CreatePolicyRequest(policy=conv.policy_pb(policy), request_id=_request_id(request_id))
    return Call("CreatePolicy", request, lambda reply: conv.policy_from(reply.policy))


@_checked("GetPolicy")
def get_policy(policy_id: str, version: int) -> Call[Policy]:
    """Read a policy (its latest version, or `version`)."""
    return Call("GetPolicy", pb.GetPolicyRequest(policy_id=policy_id, version=version),
                lambda reply: conv.policy_from(reply.policy))


@_checked("ListPolicies")
def list_policies(page_size: int, page_token: str) -> Call[Page[Policy]]:
    """One page of policies."""
    return Call("ListPolicies", pb.ListPoliciesRequest(page_size=page_size, page_token=page_token),
                lambda reply: Page(tuple(conv.policy_from(p) for p in reply.policies), reply.next_page_token))


@_checked("UpdatePolicy")
def update_policy(policy: Policy, *, expected_version: int, dry_run: bool, allow_breaking: bool,
                  change_note: str, request_id: str | None) -> Call[PolicyChange]:
    """Write version `expected_version + 1` of a policy, or with `dry_run` only report the impact."""
    request = pb.UpdatePolicyRequest(policy=conv.policy_pb(policy), expected_version=expected_version,
                                     dry_run=dry_run, allow_breaking=allow_breaking, change_note=change_note,
                                     request_id=_request_id(request_id))
    return Call("UpdatePolicy", request, conv.change_from)


@_checked("RollbackPolicy")
def rollback_policy(policy_id: str, *, to_version: int, expected_version: int, dry_run: bool,
                    allow_breaking: bool, request_id: str | None) -> Call[PolicyChange]:
    """Write an earlier version's content as a new version."""
    request = pb.RollbackPolicyRequest(policy_id=policy_id, to_version=to_version,
                                       expected_version=expected_version, dry_run=dry_run,
                                       allow_breaking=allow_breaking, request_id=_request_id(request_id))
    return Call("RollbackPolicy", request, conv.change_from)


@_checked("ListPolicyVersions")
def list_policy_versions(policy_id: str, page_size: int, page_token: str) -> Call[Page[Policy]]:
    """One page of a policy's history, newest first."""
    request = pb.ListPolicyVersionsRequest(policy_id=policy_id, page_size=page_size, page_token=page_token)
    return Call("ListPolicyVersions", request,
                lambda reply: Page(tuple(conv.policy_from(p) for p in reply.versions), reply.next_page_token))


@_checked("Check")
def health(service: str) -> Call[str]:
    """The serving status of `service` ("" overall): "SERVING", "NOT_SERVING", ..."""
    from grpc_health.v1 import health_pb2

    return Call("Check", health_pb2.HealthCheckRequest(service=service),
                lambda reply: health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
                admin=False, retried=False, service="health")


@_checked("WatchEvents")
def watch_events(since: str, from_beginning: bool) -> pb.WatchEventsRequest:
    """The WatchEvents request."""
    return pb.WatchEventsRequest(since=since, from_beginning=from_beginning)
