"""KeyService servicer: protobuf <-> domain, nothing else."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from keysvc.api.grpc import convert as conv
from keysvc.api.grpc.auth import ACTOR
from keysvc.api.grpc.bridge import Bridge
from keysvc.api.grpc.memo import AnswerMemo
from keysvc.api.grpc.status import status_for
from keysvc.core.errors import InvalidArgumentError, KeysvcError
from keysvc.core.model import Code, Decision, KeyStatus
from keysvc.service.admin import AdminService
from keysvc.service.events import EventLog
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc as pb_grpc

__all__ = ["CURSOR_METADATA", "KeyServiceServicer"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Context = aio.ServicerContext[Any, Any]
CURSOR_METADATA = "x-keysvc-cursor"  # WatchEvents: the cursor the stream starts after
MAX_REQUIRED_SCOPES = 64
MAX_BATCH = 100
_MAX_MEMO = 4_096  # hot keys only: a response costs ~1.8 us to build, and memory to keep
_Answer = tuple[Decision, pb.ValidateResponse, bytes]


def _rpc(
    method: Callable[[Any, _Req, _Context], Awaitable[_Resp]],
) -> Callable[[Any, _Req, _Context], Awaitable[_Resp]]:
    """Turn typed errors into a status (`status_for` logs the unexpected ones)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: _Req, context: _Context) -> _Resp:
        try:
            return await method(self, request, context)
        except KeysvcError as exc:
            code, message = status_for(exc, method.__name__)
            await context.abort(code, message)
            raise  # pragma: no cover - abort raises

    return wrapper


def _validation_request(request: pb.ValidateRequest) -> ValidationRequest:
    if len(request.required_scopes) > MAX_REQUIRED_SCOPES:
        raise InvalidArgumentError(f"required_scopes: at most {MAX_REQUIRED_SCOPES}")
    return ValidationRequest(request.key, request.required_scopes, request.client_ip, request.cost or 1)


def _optional_duration(message: Any, field: str) -> float | None:
    return conv.duration_s(getattr(message, field)) if message.HasField(field) else None


class KeyServiceServicer(pb_grpc.KeyServiceServicer):
    """Serves keysvc.v1.KeyService on grpc.aio (and, through `bridge`, on grpc.server)."""

    RAW_RESPONSES = frozenset({"Validate"})
    """Methods whose handler returns the serialized answer (registered by `memo.add_service`)."""

    def __init__(self, validator: Validator, admin: AdminService, events: EventLog) -> None:
        self._validator = validator
        self._admin = admin
        self._events = events
        self.bridge: Bridge | None = None  # set when served on the sync stack (validate_blocking)
        # id(decision) -> (decision, response, its bytes). VALID answers without counters
        # are one shared Decision per cached key (a policy.Grant), and the constant
        # denials are module-level objects: their responses are built and serialized once.
        self._answers: AnswerMemo[int, _Answer] = AnswerMemo(_MAX_MEMO)

    def _answer(self, decision: Decision) -> _Answer:
        answer = self._answers.get(id(decision))
        if answer is not None and answer[0] is decision:
            return answer
        response = conv.decision_to_pb(decision)
        answer = (decision, response, response.SerializeToString())
        if decision.rate_limit is None and decision.quota_remaining is None and (
            decision.code is Code.VALID or decision.record is None
        ):
            # The memo holds the decision, so its id cannot be reused while the entry lives.
            kept = self._answers.keep(id(decision), answer)
            return kept if kept[0] is decision else answer
        return answer

    async def Validate(self, request: pb.ValidateRequest, context: _Context) -> bytes:
        """Answer from the cache when possible; a denial is a normal response (serialized)."""
        try:
            validation = _validation_request(request)
        except InvalidArgumentError as exc:
            await context.abort(*status_for(exc, "Validate"))
            raise
        validator = self._validator
        decision = validator.check_cached(validation)
        if decision is None:
            decision = await validator.validate_from_store(validation)
        return self._answer(decision)[2]

    def validate_blocking(self, request: pb.ValidateRequest, context: grpc.ServicerContext) -> bytes:
        """Validate on a sync-stack thread: a hit answers here, a miss waits for the loop (`bridge`)."""
        try:
            validation = _validation_request(request)
        except InvalidArgumentError as exc:
            context.abort(*status_for(exc, "Validate"))
        validator = self._validator
        decision = validator.check_cached(validation)
        if decision is None:
            bridge = self.bridge
            if bridge is None:  # pragma: no cover - _server sets it before serving the sync stack
                raise RuntimeError("validate_blocking needs a bridge")
            decision = bridge.run(validator.validate_from_store(validation), context, "Validate",
                                  busy=lambda: validator.shed(validation))
        return self._answer(decision)[2]

    @_rpc
    async def BatchValidate(
        self, request: pb.BatchValidateRequest, context: _Context
    ) -> pb.BatchValidateResponse:
        """Validate up to MAX_BATCH keys."""
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgumentError(f"requests: at most {MAX_BATCH}")
        validations = [_validation_request(r) for r in request.requests]
        decisions = await self._validator.validate_many(validations)
        return pb.BatchValidateResponse(responses=[self._answer(d)[1] for d in decisions])

    @_rpc
    async def CreateKey(self, request: pb.CreateKeyRequest, context: _Context) -> pb.CreateKeyResponse:
        """Make a key; the response holds the only copy of its secret."""
        view, secret = await self._admin.create_key(
            ACTOR.get(), owner_id=request.owner_id, name=request.name, policy_id=request.policy_id,
            scopes=list(request.scopes), metadata=dict(request.metadata),
            expires_at=conv.timestamp_s(request.expires_at) if request.HasField("expires_at") else None,
            ttl_s=_optional_duration(request, "ttl"), prefix=request.prefix,
            quota=request.quota if request.HasField("quota") else None, request_id=request.request_id,
        )
        return pb.CreateKeyResponse(
            key=conv.key_to_pb(view), secret=secret, secret_reissued=view.secret_reissued
        )

    @_rpc
    async def GetKey(self, request: pb.GetKeyRequest, context: _Context) -> pb.GetKeyResponse:
        """One key by id."""
        return pb.GetKeyResponse(key=conv.key_to_pb(await self._admin.get_key(request.key_id)))

    @_rpc
    async def ListKeys(self, request: pb.ListKeysRequest, context: _Context) -> pb.ListKeysResponse:
        """A page of keys."""
        status = KeyStatus(request.status) if request.status else None
        views, token = await self._admin.list_keys(
            owner_id=request.owner_id, status=status, page_size=request.page_size,
            page_token=request.page_token, unused_for_s=_optional_duration(request, "unused_for"),
        )
        return pb.ListKeysResponse(keys=[conv.key_to_pb(v) for v in views], next_page_token=token)

    @_rpc
    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: _Context) -> pb.UpdateKeyResponse:
        """Apply the fields named in update_mask."""
        key = request.key
        changes: dict[str, Any] = {}
        for path in request.update_mask.paths:
            if path == "expires_at":
                changes[path] = conv.timestamp_s(key.expires_at) if key.HasField("expires_at") else None
            elif path == "quota_remaining":
                changes[path] = key.quota_remaining if key.HasField("quota_remaining") else None
            elif path in ("scopes",):
                changes[path] = list(key.scopes)
            elif path == "metadata":
                changes[path] = dict(key.metadata)
            elif path in ("name", "enabled", "policy_id"):
                changes[path] = getattr(key, path)
            else:
                changes[path] = None  # the service names the unknown field
        view = await self._admin.update_key(
            ACTOR.get(), request.key_id, changes, request.expected_revision, request.request_id
        )
        return pb.UpdateKeyResponse(key=conv.key_to_pb(view))

    @_rpc
    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: _Context) -> pb.RevokeKeyResponse:
        """Revoke now or after the grace period."""
        view = await self._admin.revoke_key(
            ACTOR.get(), request.key_id, conv.duration_s(request.grace_period), request.reason,
            request.request_id,
        )
        return pb.RevokeKeyResponse(key=conv.key_to_pb(view))

    @_rpc
    async def RotateKey(self, request: pb.RotateKeyRequest, context: _Context) -> pb.RotateKeyResponse:
        """New secret; the old one works for the grace period."""
        new, secret, old = await self._admin.rotate_key(
            ACTOR.get(), request.key_id, conv.duration_s(request.grace_period), request.request_id
        )
        return pb.RotateKeyResponse(
            key=conv.key_to_pb(new), secret=secret, previous=conv.key_to_pb(old),
            secret_reissued=new.secret_reissued,
        )

    @_rpc
    async def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: _Context
    ) -> pb.CreatePolicyResponse:
        """Version 1 of a policy."""
        policy = await self._admin.create_policy(
            ACTOR.get(), conv.policy_from_pb(request.policy), request.request_id
        )
        return pb.CreatePolicyResponse(policy=conv.policy_to_pb(policy))

    @_rpc
    async def GetPolicy(self, request: pb.GetPolicyRequest, context: _Context) -> pb.GetPolicyResponse:
        """The current or a given version."""
        policy = await self._admin.get_policy(request.policy_id, request.version)
        return pb.GetPolicyResponse(policy=conv.policy_to_pb(policy))

    @_rpc
    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: _Context
    ) -> pb.ListPoliciesResponse:
        """A page of policies."""
        policies, token = await self._admin.list_policies(request.page_size, request.page_token)
        return pb.ListPoliciesResponse(
            policies=[conv.policy_to_pb(p) for p in policies], next_page_token=token
        )

    @_rpc
    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: _Context
    ) -> pb.UpdatePolicyResponse:
        """Version N+1, or the impact only on dry run."""
        policy, impact = await self._admin.update_policy(
            ACTOR.get(), conv.policy_from_pb(request.policy), expected_version=request.expected_version,
            dry_run=request.dry_run, allow_breaking=request.allow_breaking,
            change_note=request.change_note, request_id=request.request_id,
        )
        return pb.UpdatePolicyResponse(
            policy=conv.policy_to_pb(policy) if policy else None, impact=conv.impact_to_pb(impact),
            applied=policy is not None,
        )

    @_rpc
    async def RollbackPolicy(
        self, request: pb.RollbackPolicyRequest, context: _Context
    ) -> pb.RollbackPolicyResponse:
        """An earlier version's content as a new version."""
        policy, impact = await self._admin.rollback_policy(
            ACTOR.get(), request.policy_id, request.to_version,
            expected_version=request.expected_version, dry_run=request.dry_run,
            allow_breaking=request.allow_breaking, request_id=request.request_id,
        )
        return pb.RollbackPolicyResponse(
            policy=conv.policy_to_pb(policy) if policy else None, impact=conv.impact_to_pb(impact),
            applied=policy is not None,
        )

    @_rpc
    async def ListPolicyVersions(
        self, request: pb.ListPolicyVersionsRequest, context: _Context
    ) -> pb.ListPolicyVersionsResponse:
        """A page of a policy's history, newest first."""
        versions, token = await self._admin.list_policy_versions(
            request.policy_id, request.page_size, request.page_token
        )
        return pb.ListPolicyVersionsResponse(
            versions=[conv.policy_to_pb(p) for p in versions], next_page_token=token
        )

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: _Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        """Stream events after `since` until the client goes away.

        The start is fixed (and sent as `x-keysvc-cursor` initial metadata)
        before the first event, so "from now" means from when the headers left.
        """
        since, from_beginning = request.since, request.from_beginning
        try:
            if not since and not from_beginning:
                since = await self._events.last_cursor()
                from_beginning = not since  # an empty log: all that is appended from now on
            await context.send_initial_metadata(((CURSOR_METADATA, since),))
            async for event in self._events.follow(since, from_beginning=from_beginning):
                yield pb.WatchEventsResponse(event=conv.event_to_pb(event))
        except KeysvcError as exc:
            await context.abort(*status_for(exc, "WatchEvents"))
