"""A real key sent in every field of every admin request never comes back, nor reaches logs or spans."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from keysvc.api.grpc.auth import PUBLIC_METHODS
from keysvc.core import keys
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e

CASES = sorted((Path(__file__).parent.parent / "data" / "bad_admin").glob("*.json"))
PLACEHOLDER = "xsecretx"
SERVICE = pb.DESCRIPTOR.services_by_name["KeyService"]
ADMIN_METHODS = [m for m in SERVICE.methods if f"/keysvc.v1.KeyService/{m.name}" not in PUBLIC_METHODS]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint on loopback, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: object) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span_names(self) -> list[str]:
        return [s.name for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans
                for s in ss.spans]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def string_paths(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> set[str]:
    """Every string a client can set in a message (map keys and values, field-mask paths)."""
    found: set[str] = set()
    for field in descriptor.fields:
        path = prefix + field.name
        sub = field.message_type
        if sub is None:
            if field.type == FieldDescriptor.TYPE_STRING:
                found.add(path)
        elif sub.GetOptions().map_entry:
            found.add(path + "{key}")
            if sub.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING:
                found.add(path + "{value}")
        elif sub.full_name == "google.protobuf.FieldMask":
            found.add(path + ".paths")
        elif not sub.full_name.startswith("google.protobuf.") and depth < 3:
            found |= string_paths(sub, path + ".", depth + 1)
    return found


def substitute(message: Message, values: dict[str, str], prefix: str = "") -> set[str]:
    """Replace placeholders in every string of `message`; return the paths that held the secret's."""
    hit: set[str] = set()

    def swap(text: str, path: str) -> str:
        if PLACEHOLDER in text:
            hit.add(path)
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return text

    for field, value in list(message.ListFields()):
        path = prefix + field.name
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            container: Any = getattr(message, field.name)
            items = dict(container)
            container.clear()
            for k, v in items.items():
                new_value = swap(v, path + "{value}") if isinstance(v, str) else v
                container[swap(k, path + "{key}")] = new_value
        elif sub is not None and sub.full_name == "google.protobuf.FieldMask":
            paths = [swap(p, path + ".paths") for p in value.paths]
            del value.paths[:]
            value.paths.extend(paths)
        elif sub is not None:
            for item in (value if field.is_repeated else [value]):
                hit |= substitute(item, values, path + ".")
        elif field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                entries = [swap(v, path) for v in value]
                del getattr(message, field.name)[:]
                getattr(message, field.name).extend(entries)
            else:
                setattr(message, field.name, swap(value, path))
    return hit


def load(case: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(case.read_text())
    return data


def test_every_string_field_of_every_admin_request_has_a_case() -> None:
    covered: set[tuple[str, str]] = set()
    for case in CASES:
        data = load(case)
        method = SERVICE.methods_by_name[data["method"]]
        request = json_format.ParseDict(data["request"], pb.__dict__[method.input_type.name]())
        covered |= {(data["method"], p) for p in substitute(request, {})}
    wanted = {(m.name, p) for m in ADMIN_METHODS for p in string_paths(m.input_type)}
    assert not wanted - covered, f"fields with no case in tests/data/bad_admin/: {sorted(wanted - covered)}"


def leaked(secret: str, text: str) -> bool:
    """True when `text` holds the secret or a recognisable piece of it (a truncated echo)."""
    return any(piece in text for piece in (secret, secret[:16], secret[-16:]))


def test_admin_errors_logs_and_spans_never_hold_a_key_sent_in_any_field(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str,
    collector: tuple[Collector, int],
) -> None:
    spans, port = collector
    _, admin_secret = bootstrap(sqlite_url)
    admin_md = (("authorization", f"Bearer {admin_secret}"),)
    server = start_server(sqlite_url, stack=stack, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    })
    stub = server.stub()
    secrets: list[str] = []
    seen: list[str] = []
    counter = itertools.count()
    for case, suffix in itertools.product(CASES, ("", " ", "\n")):
        data = load(case)
        secret = keys.generate().secret
        secrets.append(secret)
        n = next(counter)
        key = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=admin_md, timeout=10).key
        stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(policy_id=f"p{n}", scopes=["a"])),
                          metadata=admin_md, timeout=10)
        values = {PLACEHOLDER: secret + suffix, "xkeyidx": key.key_id, "xnewpolicyx": f"new{n}",
                  "xpolicyx": f"p{n}"}
        method = SERVICE.methods_by_name[data["method"]]
        request = json_format.ParseDict(data["request"], pb.__dict__[method.input_type.name]())
        substitute(request, values)
        md = admin_md
        if "authorization" in data:
            md = (("authorization", data["authorization"].replace(PLACEHOLDER, secret + suffix)),)
        call = getattr(stub, data["method"])
        try:
            if method.server_streaming:
                stream = call(request, metadata=md, timeout=2)
                for _ in stream:
                    break
                stream.cancel()
                seen.append(repr(stream.trailing_metadata()))
            else:
                _, outcome = call.with_call(request, metadata=md, timeout=10)
                seen.append(repr(outcome.trailing_metadata()))
        except grpc.RpcError as exc:
            text = f"{exc.code().name} {exc.details()} {exc.trailing_metadata()!r}"
            seen.append(text)
        assert not leaked(secret, seen[-1]), f"{case.name} {suffix!r}: {seen[-1]}"
    assert server.stop() == 0
    logs = server.logs()
    exported = b"".join(r.SerializeToString() for r in spans.requests).decode(errors="replace")
    for secret in secrets:
        assert not leaked(secret, logs), "a key sent by a client reached the server's logs"
        assert not leaked(secret, exported), "a key sent by a client reached an exported span"
        assert not any(leaked(secret, text) for text in seen)
    # Not vacuous: the calls were made, refused, logged and traced.
    assert sum(s.startswith("INVALID_ARGUMENT") for s in seen) > len(CASES)
    assert '"audit"' in logs and "auth.denied" in logs
    assert "audit.key.create" in spans.span_names()
