"""Admin authentication in front of every admin RPC.

Admin keys are ordinary keys whose effective scopes hold `keysvc:admin`. The
wrapper validates the `authorization: Bearer <key>` metadata through the
same Validator as the hot path (its shape checks, and the key's rate limit
and quota, count for admin calls too), with the gRPC peer as the client
address, then reads the key again from the store (`authority`): the control
plane fails closed, so neither fail-open, nor the stale window, nor a cached
record admits an admin call. It audits every refusal, and runs the handler
with the caller's key_id in `ACTOR`.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from keysvc.api.grpc.status import status_for, status_of_decision
from keysvc.core.errors import PermissionDeniedError, StoreUnavailableError, UnauthenticatedError
from keysvc.core.model import ADMIN_SCOPE, Code
from keysvc.core.policy import ip_allowed
from keysvc.service.ports import Auditor
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.v1 import keysvc_pb2

__all__ = ["ACTOR", "PUBLIC_METHODS", "AdminAuth"]

ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("keysvc_actor", default="")
PUBLIC_METHODS = frozenset({"/keysvc.v1.KeyService/Validate", "/keysvc.v1.KeyService/BatchValidate"})
_ADMIN_SERVICE = "/keysvc.v1.KeyService/"

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


_LOCAL = ("127.0.0.1", "::1")
Authority = Callable[[str, str], Awaitable[None]]


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string ("" when it has none).

    `ipv4:10.0.0.1:5000` and `ipv6:[::1]:5000` give the address; a unix socket
    (`unix:...`) is local and gives 127.0.0.1 (`_client_ip` also accepts ::1).
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind in ("unix", "unix-abstract"):
        return _LOCAL[0]
    return ""


def _bearer(metadata: Any) -> str:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class AdminAuth:
    """Refuses admin RPCs without a working admin key.

    Applied to the KeyService servicer's admin methods only (`protect`), not
    as a server interceptor: grpc.aio runs every interceptor on every call,
    and Validate and Check should pay nothing for admin authentication.

    Args:
        validator: the process's validator.
        authority: `AdminService.authority`: checks (key_id, client address)
            against the store; raises a typed error to refuse.
        auditor: records each refusal and each audited read.
        admin_enabled: False on a listener that must not serve admin RPCs
            (when admin RPCs have their own listener).
    """

    def __init__(
        self, validator: Validator, authority: Authority, auditor: Auditor, *, admin_enabled: bool = True,
    ) -> None:
        self._validator = validator
        self._auditor = auditor
        self._authority = authority
        self._admin_enabled = admin_enabled

    def protect(self, servicer: Any) -> Any:
        """Wrap every admin method of a KeyService servicer instance; return it."""
        for method in keysvc_pb2.DESCRIPTOR.services_by_name["KeyService"].methods:
            if f"{_ADMIN_SERVICE}{method.name}" in PUBLIC_METHODS:
                continue
            behaviour = getattr(servicer, method.name)
            wrap = self._wrap_stream if method.server_streaming else self._wrap_unary
            setattr(servicer, method.name, wrap(behaviour, method.name))
        return servicer

    async def _authenticate(self, token: str, action: str, context: aio.ServicerContext[Any, Any]) -> str:
        """Return the admin key_id, or abort the call with the right status."""
        if not self._admin_enabled:
            await self._refuse(context, action, "", "wrong_listener", grpc.StatusCode.PERMISSION_DENIED,
                               "admin RPCs are served on the admin listener")
        if not token:
            await self._refuse(context, action, "", "missing_credentials",
                               grpc.StatusCode.UNAUTHENTICATED,
                               "admin RPCs need 'authorization: Bearer <admin key>' metadata")
        peer = context.peer()
        client_ip = peer_address(peer)
        decision = await self._validator.validate(ValidationRequest(token, (ADMIN_SCOPE,), client_ip))
        key_id = decision.record.key_id if decision.record is not None else ""
        if decision.code is Code.IP_NOT_ALLOWED and peer.startswith("unix") and decision.policy is not None \
                and ip_allowed(_LOCAL[1], decision.policy.allowed_cidrs):
            client_ip = _LOCAL[1]  # local either way: a policy that admits ::1 admits a unix socket
            decision = await self._validator.validate(ValidationRequest(token, (ADMIN_SCOPE,), client_ip))
        if decision.code is Code.VALID and decision.record is None:
            # The validator's fail-open answer: fail-open is for the data plane only.
            await self._refuse(context, action, "", "unavailable", grpc.StatusCode.UNAVAILABLE,
                               "key store unavailable; cannot authenticate")
        if decision.code is Code.VALID:
            try:
                await self._authority(key_id, client_ip)
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                await self._refuse(context, action, key_id, exc.rule or "denied", *status_for(exc, action))
            except StoreUnavailableError:  # fail closed
                await self._refuse(context, action, key_id, "unavailable", grpc.StatusCode.UNAVAILABLE,
                                   "key store unavailable; cannot authenticate")
            return key_id
        status = status_of_decision(decision.code)
        if status is grpc.StatusCode.UNAVAILABLE:
            message = "key store unavailable; cannot authenticate"
        elif status is grpc.StatusCode.UNAUTHENTICATED:
            message = f"admin key refused: {decision.message}"
        elif status is grpc.StatusCode.RESOURCE_EXHAUSTED:
            message = decision.message
        elif decision.code is Code.IP_NOT_ALLOWED:
            message = f"admin key {key_id} may not call admin RPCs from this address (policy's allowed_cidrs)"
        else:
            message = f"key {key_id} may not call admin RPCs (needs scope {ADMIN_SCOPE!r})"
        await self._refuse(context, action, key_id, decision.code.name.lower(), status, message)
        raise AssertionError("unreachable: abort raises")

    async def _refuse(
        self, context: aio.ServicerContext[Any, Any], action: str, actor: str, outcome: str,
        code: grpc.StatusCode, message: str,
    ) -> None:
        with self._auditor.audit("auth.denied", actor=actor, rpc=action) as span:
            span.set("outcome", outcome)
        await context.abort(code, message)

    def _wrap_unary(
        self, behaviour: Callable[[Any, Any], Awaitable[Any]], action: str
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def authenticated(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            token = _bearer(context.invocation_metadata())
            actor = await self._authenticate(token, action, context)
            reset = ACTOR.set(actor)
            try:
                read = _READ_ACTIONS.get(action)
                if read is None:
                    return await behaviour(request, context)
                with self._auditor.audit(read, actor=actor, target_key_id=getattr(request, "key_id", ""),
                                target_policy_id=getattr(request, "policy_id", "")):
                    return await behaviour(request, context)
            finally:
                ACTOR.reset(reset)

        return authenticated

    def _wrap_stream(
        self, behaviour: Callable[[Any, Any], AsyncIterator[Any]], action: str
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def authenticated(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            token = _bearer(context.invocation_metadata())
            # Each RPC runs in its own task, so the value cannot leak to another call;
            # no reset, because a generator's cleanup may run in another context.
            actor = await self._authenticate(token, action, context)
            ACTOR.set(actor)
            with self._auditor.audit(_READ_ACTIONS.get(action, action), actor=actor,
                            since=getattr(request, "since", "")):
                pass  # the stream's start is the audited act; it may then run for hours
            async for response in behaviour(request, context):
                yield response

        return authenticated
