"""Audit spans reach a real OTLP/gRPC collector endpoint (an in-process one on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from keysvc.app import telemetry
from keysvc.core import keys

pytestmark = pytest.mark.integration


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_audit_spans_are_exported_over_otlp(collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch) -> None:
    servicer, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")  # audit spans ignore it
    monkeypatch.setenv("OTEL_SERVICE_NAME", "keysvc-test")
    secret = keys.generate().secret
    telemetry.configure_tracing()
    try:
        with telemetry.audit_span("key.revoke", actor="key_admin", target_key_id="key_x", reason=f"leak {secret}"):
            pass
    finally:
        telemetry.shutdown_tracing()  # flushes the batch processor
    spans = [s for r in servicer.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["audit.key.revoke"]
    attributes = {a.key: a.value.string_value for a in spans[0].attributes}
    assert attributes["keysvc.actor"] == "key_admin" and attributes["keysvc.target.key_id"] == "key_x"
    resource = {a.key: a.value.string_value for a in servicer.requests[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "keysvc-test"
    assert secret.encode() not in b"".join(r.SerializeToString() for r in servicer.requests)
