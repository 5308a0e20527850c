"""Admin authentication: a server interceptor in front of every admin RPC.

Admin keys are ordinary keys whose effective scopes hold `keysvc:admin`. The
interceptor validates the `authorization: Bearer <key>` metadata through the
same Validator as the hot path (so revocation reaches admin keys as fast as
any other), audits every refusal, and runs the handler with the caller's
key_id in `ACTOR`.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from keysvc.model import ADMIN_SCOPE, Code
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.telemetry import audit_span

__all__ = ["ACTOR", "PUBLIC_METHODS", "AdminAuthInterceptor"]

ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("keysvc_actor", default="")
PUBLIC_METHODS = frozenset({"/keysvc.v1.KeyService/Validate", "/keysvc.v1.KeyService/BatchValidate"})
_ADMIN_SERVICE = "/keysvc.v1.KeyService/"

_UNAUTHENTICATED = {Code.MALFORMED, Code.NOT_FOUND, Code.DISABLED, Code.EXPIRED, Code.REVOKED}
# Admin reads are audited here (changes are audited by the service that makes them,
# with their diff), so every admin call leaves exactly one audit record.
_READ_ACTIONS = {
    "GetKey": "key.get",
    "ListKeys": "key.list",
    "GetPolicy": "policy.get",
    "ListPolicies": "policy.list",
    "ListPolicyVersions": "policy.history",
    "WatchEvents": "events.watch",
}


def _bearer(metadata: Any) -> str:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class AdminAuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses admin RPCs without a working admin key.

    Args:
        validator: the process's validator.
        admin_enabled: False on a listener that must not serve admin RPCs
            (when admin RPCs have their own listener).
    """

    def __init__(self, validator: Validator, *, admin_enabled: bool = True) -> None:
        self._validator = validator
        self._admin_enabled = admin_enabled

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap admin handlers with authentication; pass the rest through."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_ADMIN_SERVICE) or method in PUBLIC_METHODS:
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        action = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, token, action),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, token, action),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _authenticate(self, token: str, action: str, context: aio.ServicerContext[Any, Any]) -> str:
        """Return the admin key_id, or abort the call with the right status."""
        if not self._admin_enabled:
            await self._refuse(context, action, "", "wrong_listener", grpc.StatusCode.PERMISSION_DENIED,
                               "admin RPCs are served on the admin listener")
        if not token:
            await self._refuse(context, action, "", "missing_credentials",
                               grpc.StatusCode.UNAUTHENTICATED,
                               "admin RPCs need 'authorization: Bearer <admin key>' metadata")
        decision = await self._validator.validate(ValidationRequest(token, (ADMIN_SCOPE,)))
        key_id = decision.record.key_id if decision.record is not None else ""
        if decision.code is Code.VALID:
            return key_id
        if decision.code in _UNAUTHENTICATED:
            await self._refuse(context, action, key_id, decision.code.name.lower(),
                               grpc.StatusCode.UNAUTHENTICATED, f"admin key refused: {decision.message}")
        if decision.code is Code.UNAVAILABLE:
            await self._refuse(context, action, key_id, "unavailable", grpc.StatusCode.UNAVAILABLE,
                               "key store unavailable; cannot authenticate")
        if decision.code in (Code.RATE_LIMITED, Code.QUOTA_EXHAUSTED):
            await self._refuse(context, action, key_id, decision.code.name.lower(),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, decision.message)
        await self._refuse(context, action, key_id, decision.code.name.lower(),
                           grpc.StatusCode.PERMISSION_DENIED,
                           f"key {key_id} may not call admin RPCs (needs scope {ADMIN_SCOPE!r})")
        raise AssertionError("unreachable: abort raises")

    @staticmethod
    async def _refuse(
        context: aio.ServicerContext[Any, Any], action: str, actor: str, outcome: str,
        code: grpc.StatusCode, message: str,
    ) -> None:
        with audit_span("auth.denied", actor=actor, rpc=action) as span:
            span.set("outcome", outcome)
        await context.abort(code, message)

    def _wrap_unary(
        self, behaviour: Callable[[Any, Any], Awaitable[Any]], token: str, action: str
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def authenticated(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            actor = await self._authenticate(token, action, context)
            reset = ACTOR.set(actor)
            try:
                read = _READ_ACTIONS.get(action)
                if read is None:
                    return await behaviour(request, context)
                with audit_span(read, actor=actor, target_key_id=getattr(request, "key_id", ""),
                                target_policy_id=getattr(request, "policy_id", "")):
                    return await behaviour(request, context)
            finally:
                ACTOR.reset(reset)

        return authenticated

    def _wrap_stream(
        self, behaviour: Callable[[Any, Any], AsyncIterator[Any]], token: str, action: str
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def authenticated(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # Each RPC runs in its own task, so the value cannot leak to another call;
            # no reset, because a generator's cleanup may run in another context.
            actor = await self._authenticate(token, action, context)
            ACTOR.set(actor)
            with audit_span(_READ_ACTIONS.get(action, action), actor=actor,
                            since=getattr(request, "since", "")):
                pass  # the stream's start is the audited act; it may then run for hours
            async for response in behaviour(request, context):
                yield response

        return authenticated
