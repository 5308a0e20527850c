"""envoy.service.auth.v3.Authorization servicer: CheckRequest in, CheckResponse out.

Messages come from the `xds-protos` package (Envoy's own protos). Decisions
are `keysvc.api.authz`'s; this module only reads the request's attributes and
builds the response. Allow: status OK and an OkHttpResponse that overwrites
`x-keysvc-key-id` / `x-keysvc-owner-id` (a client cannot smuggle its own)
and removes the credential header, plus `CheckResponse.dynamic_metadata`
(key_id, owner_id, policy_id) under `envoy.filters.http.ext_authz` for
Envoy's access logs. Deny: a DeniedHttpResponse (status, headers, JSON body)
and a non-OK google.rpc status. A 503 is a denial, not an error, so Envoy
answers it even with `failure_mode_allow: true`. Hot path: no logging, no
JSON round trips; a key's response is built and serialized once, and its
bytes reused (registered with no response serializer: `memo.add_service`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from grpc import aio

from keysvc.api.authz import Authorizer, AuthzResult
from keysvc.api.grpc.bridge import Bridge
from keysvc.api.grpc.memo import AnswerMemo
from keysvc.api.grpc.status import status_for, status_of_http

__all__ = ["AUTHORIZATION_SERVICE", "AuthorizationServicer", "check_response"]

AUTHORIZATION_SERVICE = pb.DESCRIPTOR.services_by_name["Authorization"].full_name
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_MAX_RESPONSES = 10_000  # about 3 MB at most
_Context = aio.ServicerContext[Any, Any]


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    # append_action, not the deprecated `append`: Envoy reads the action when
    # `append` is unset, and older Envoys read unset `append` as "overwrite" too.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _identity(result: AuthzResult) -> struct_pb2.Struct | None:
    if not result.key_id:
        return None
    metadata = struct_pb2.Struct()
    metadata.update({"key_id": result.key_id, "owner_id": result.owner_id, "policy_id": result.policy_id})
    return metadata


def check_response(result: AuthzResult) -> pb.CheckResponse:
    """Build the CheckResponse for a decision."""
    if result.allowed:
        return pb.CheckResponse(
            status=_OK,
            ok_response=pb.OkHttpResponse(
                headers=[_header(name, value) for name, value in result.upstream_headers],
                headers_to_remove=result.remove_headers,
            ),
            dynamic_metadata=_identity(result),
        )
    metadata = _identity(result)
    if metadata is not None:
        metadata.update({"error": result.error})
    return pb.CheckResponse(
        status=status_pb2.Status(
            code=status_of_http(result.status).value[0], message=result.message
        ),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=result.status),
            headers=[_header(name, value) for name, value in result.response_headers],
            body=result.body,
        ),
        dynamic_metadata=metadata,
    )


def _headers(http: Any) -> Mapping[str, str]:
    """The request headers; from `header_map` when Envoy sends raw headers (encode_raw_headers)."""
    if http.headers or not http.HasField("header_map"):
        return http.headers  # type: ignore[no-any-return]
    merged: dict[str, str] = {}
    for header in http.header_map.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        name = header.key.lower()
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return merged


class AuthorizationServicer(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Serves envoy.service.auth.v3.Authorization/Check on grpc.aio or grpc.server.

    Args:
        authorizer: the shared proxy authorizer.
    """

    RAW_RESPONSES = frozenset({"Check"})
    """Methods whose handler returns the serialized answer (registered by `memo.add_service`)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer
        self.bridge: Bridge | None = None  # set when served on the sync stack (check_blocking)
        # Serialized responses by result: a key's allow (or 401/403) is the same message every
        # time, and garbage floods reuse a handful.
        self._responses: AnswerMemo[AuthzResult, bytes] = AnswerMemo(_MAX_RESPONSES)

    async def Check(self, request: pb.CheckRequest, context: _Context) -> bytes:
        """Decide one request Envoy is holding; a denial is a normal response (serialized)."""
        try:
            attributes = request.attributes
            http = attributes.request.http
            result = await self._authorizer.check(
                _headers(http), http.method, http.path,
                attributes.source.address.socket_address.address,
            )
            response = self._response(result)
        except Exception as exc:  # an unknown error is INTERNAL, logged by status_for
            await context.abort(*status_for(exc, "Check"))
            raise
        return response

    def check_blocking(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> bytes:
        """Check on a sync-stack thread: a hit answers here, a miss waits for the loop (`bridge`)."""
        authorizer = self._authorizer
        try:
            attributes = request.attributes
            http = attributes.request.http
            authz = authorizer.read(_headers(http), http.method, http.path,
                                    attributes.source.address.socket_address.address)
            result = authorizer.check_cached(authz)
        except Exception as exc:  # an unknown error is INTERNAL, logged by status_for
            context.abort(*status_for(exc, "Check"))
        if result is None:
            bridge = self.bridge
            if bridge is None:  # pragma: no cover - _server sets it before serving the sync stack
                raise RuntimeError("check_blocking needs a bridge")
            result = bridge.run(authorizer.check_from_store(authz), context, "Check")
        return self._response(result)

    def _response(self, result: AuthzResult) -> bytes:
        """The serialized CheckResponse for `result`, built once per distinct result."""
        if result.status == 429:  # its headers count down: not worth keeping
            return bytes(check_response(result).SerializeToString())
        response = self._responses.get(result)
        if response is None:
            response = self._responses.keep(result, bytes(check_response(result).SerializeToString()))
        return response
