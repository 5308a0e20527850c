"""Server reflection answers both protocol names clients ask for: grpc.reflection.v1 and v1alpha.

grpcurl, Postman and grpcui try `grpc.reflection.v1` first; older clients only know v1alpha.
The two protocols have the same messages under different package names, so one client
(v1alpha's generated messages) speaks both over a real channel.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.e2e._servers import ServerProcess

pytestmark = pytest.mark.e2e

REFLECTION_NAMES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")


def _ask(channel: grpc.Channel, service: str,
         *requests: reflection_pb2.ServerReflectionRequest) -> list[reflection_pb2.ServerReflectionResponse]:
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize("service", REFLECTION_NAMES)
def test_reflection_lists_services_and_describes_keyservice(
        service: str, start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str) -> None:
    server = start_server(sqlite_url, stack=stack)
    listed, described = _ask(
        server.channel(), service,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="keysvc.v1.KeyService"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"keysvc.v1.KeyService", "envoy.service.auth.v3.Authorization", "grpc.health.v1.Health",
            *REFLECTION_NAMES} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    methods = {m.name for f in files for s in f.service if s.name == "KeyService" for m in s.method}
    assert {"Validate", "CreateKey", "RevokeKey"} <= methods


def test_unknown_symbol_is_a_not_found_error_on_v1(start_server: Callable[..., ServerProcess],
                                                   sqlite_url: str) -> None:
    server = start_server(sqlite_url)
    (reply,) = _ask(server.channel(), REFLECTION_NAMES[0],
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service"))
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
