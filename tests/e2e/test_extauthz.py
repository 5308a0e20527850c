"""envoy.service.auth.v3.Authorization/Check on a real server, asked the way Envoy asks.

CheckRequests carry what Envoy's ext_authz filter sends: lower-cased headers
(pseudo-headers included), the path with its query string, the method, and
the downstream peer as `source.address.socket_address`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from tests.conftest import _start_redis
from tests.e2e._servers import STACKS, ServerProcess, bootstrap, free_port, keysvc_cmd, launch

pytestmark = pytest.mark.e2e

ROUTES = """
[default]
scopes = []

[[rules]]
path_prefix = "/orders"
methods = ["POST", "PUT", "DELETE"]
scopes = ["orders:write"]

[[rules]]
path_prefix = "/orders"
scopes = ["orders:read"]
"""
CLIENT = "203.0.113.7"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE = 16, 7, 8, 14


def check_request(method: str, path: str, headers: dict[str, str] | None = None,
                  source: str = CLIENT) -> ea.CheckRequest:
    """A CheckRequest as Envoy's HTTP ext_authz filter builds it."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    http_headers = {
        ":authority": "api.example.com", ":method": method, ":path": path, ":scheme": "http",
        "user-agent": "curl/8.5.0", "accept": "*/*", "x-forwarded-proto": "http",
        "x-request-id": "5f8d4c1e-0000-4000-8000-000000000001",
        **{name.lower(): value for name, value in (headers or {}).items()},
    }
    return ea.CheckRequest(attributes=ac.AttributeContext(
        source=ac.AttributeContext.Peer(address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=source, port_value=51234))),
        destination=ac.AttributeContext.Peer(address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="10.0.0.2", port_value=8080))),
        request=ac.AttributeContext.Request(time=now, http=ac.AttributeContext.HttpRequest(
            id=http_headers["x-request-id"], method=method, headers=http_headers, path=path,
            host="api.example.com", scheme="http", protocol="HTTP/1.1", size=0,
        )),
    ))


@dataclass
class World:
    server: ServerProcess
    admin_md: list[tuple[str, str]]
    stub: ea_grpc.AuthorizationStub
    secrets: list[str]
    metrics_port: int

    def key(self, **fields: object) -> tuple[str, str]:
        created = self.server.stub().CreateKey(pb.CreateKeyRequest(owner_id="acme", **fields),  # type: ignore[arg-type]
                                               metadata=self.admin_md, timeout=5)
        self.secrets.append(created.secret)
        return created.key.key_id, created.secret

    def policy(self, **fields: object) -> None:
        self.server.stub().CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(**fields)),  # type: ignore[arg-type]
                                        metadata=self.admin_md, timeout=5)

    def check(self, method: str, path: str, headers: dict[str, str] | None = None,
              source: str = CLIENT) -> ea.CheckResponse:
        response = self.stub.Check(check_request(method, path, headers, source), timeout=5)
        blob = response.SerializeToString()
        for secret in self.secrets:  # never the key, in any header, body or metadata
            assert secret.encode() not in blob and secret[3:].encode() not in blob
        return response


def negative_hits(port: int) -> float:
    """The server's count of negative-cache hits, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^keysvc_cache_lookups_total\{[^}]*result="negative_hit"[^}]*\} ([0-9.e+]+)$', text, re.M)
    assert found, "no negative_hit sample"
    return float(found.group(1))


def denied(response: ea.CheckResponse, status: int, rpc_code: int, error: str) -> dict[str, str]:
    """Assert a denial; return its response headers."""
    assert not response.HasField("ok_response")
    assert response.status.code == rpc_code
    assert response.denied_response.status.code == status
    body = json.loads(response.denied_response.body)
    assert body["error"] == error and body["message"]
    assert set(body) == {"error", "message"}
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["content-type"] == "application/json"
    assert all(h.append_action == OVERWRITE for h in response.denied_response.headers)
    return headers


@pytest.fixture(scope="module", params=STACKS)
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"extauthz-{request.param}")
    routes = tmp / "routes.toml"
    routes.write_text(ROUTES)
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    metrics_port = free_port()
    server = launch(store, tmp, "--authz-routes", str(routes), "--metrics-listen", f"127.0.0.1:{metrics_port}",
                    stack=request.param)
    try:
        world = World(server, [("authorization", f"Bearer {admin_secret}")],
                      ea_grpc.AuthorizationStub(server.channel()), [admin_secret], metrics_port)
        world.policy(policy_id="partners", scopes=["orders:read", "orders:write"])
        world.policy(policy_id="office", scopes=["orders:read"], allowed_cidrs=["10.1.0.0/16"])
        world.policy(policy_id="metered", scopes=["orders:read"],
                     rate_limit=pb.RateLimit(requests=2, window=duration_pb2.Duration(seconds=3600)))
        yield world
    finally:
        server.stop()
    logs = server.logs()
    for secret in world.secrets:
        assert secret not in logs and secret[3:] not in logs


def test_allowed_sets_identity_removes_the_key_and_reports_metadata(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    # A client trying to pass for someone else: its identity headers are overwritten.
    response = world.check("GET", "/orders/17?expand=items&page=2",
                           {"X-Api-Key": secret, "x-keysvc-key-id": "key_00000000000000000"})
    assert response.status.code == 0 and response.HasField("ok_response")
    ok = response.ok_response
    assert {h.header.key: h.header.value for h in ok.headers} == {
        "x-keysvc-key-id": key_id, "x-keysvc-owner-id": "acme"}
    assert all(h.append_action == OVERWRITE for h in ok.headers)
    # Every credential header is removed, not only the one the key came in.
    assert list(ok.headers_to_remove) == ["x-api-key", "authorization"]
    assert json_format.MessageToDict(response.dynamic_metadata) == {
        "key_id": key_id, "owner_id": "acme", "policy_id": "partners"}

    bearer = world.check("HEAD", "/orders", {"authorization": f"Bearer {secret}"})
    assert bearer.status.code == 0
    assert list(bearer.ok_response.headers_to_remove) == ["x-api-key", "authorization"]
    # The same key in both headers is one key.
    both = world.check("GET", "/orders", {"x-api-key": secret, "authorization": f"Bearer {secret}"})
    assert list(both.ok_response.headers_to_remove) == ["x-api-key", "authorization"]
    # Routes outside any rule need only a valid key.
    assert world.check("GET", "/status", {"x-api-key": secret}).status.code == 0


def test_missing_key_is_401_with_a_challenge(world: World) -> None:
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"x-api-key": ""}):
        response = world.check("GET", "/orders", headers)
        assert denied(response, 401, UNAUTHENTICATED, "missing_credentials")["www-authenticate"] == (
            'Bearer realm="keysvc"')
        assert not response.HasField("dynamic_metadata")


def test_malformed_key_is_401(world: World) -> None:
    _, secret = world.key(policy_id="partners")
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    world.secrets.append(typo)
    for key in ("not-a-key", typo, "ks_" + "x" * 5000):
        headers = denied(world.check("GET", "/orders", {"x-api-key": key}), 401, UNAUTHENTICATED, "malformed")
        assert headers["www-authenticate"] == 'Bearer realm="keysvc", error="invalid_token"'


def test_unknown_key_is_401(world: World) -> None:
    unknown = generate().secret
    world.secrets.append(unknown)
    denied(world.check("GET", "/orders", {"x-api-key": unknown}), 401, UNAUTHENTICATED, "not_found")
    before = negative_hits(world.metrics_port)
    denied(world.check("GET", "/orders", {"x-api-key": unknown}), 401, UNAUTHENTICATED, "not_found")
    # The second answer came from the negative cache, not another store read.
    assert negative_hits(world.metrics_port) == before + 1


def test_revoked_key_is_401(world: World) -> None:
    key_id, secret = world.key(policy_id="partners")
    assert world.check("GET", "/orders", {"x-api-key": secret}).status.code == 0
    world.server.stub().RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=world.admin_md, timeout=5)
    deadline = time.monotonic() + 5
    while (response := world.check("GET", "/orders", {"x-api-key": secret})).status.code == 0:
        assert time.monotonic() < deadline, "revocation never reached the cache"
        time.sleep(0.01)
    denied(response, 401, UNAUTHENTICATED, "revoked")
    assert json_format.MessageToDict(response.dynamic_metadata)["key_id"] == key_id  # for Envoy's logs


def test_expired_and_disabled_keys_are_401(world: World) -> None:
    _, expiring = world.key(policy_id="partners", ttl=duration_pb2.Duration(seconds=1))
    disabled_id, disabled = world.key(policy_id="partners")
    world.server.stub().UpdateKey(pb.UpdateKeyRequest(
        key_id=disabled_id, key=pb.Key(enabled=False), update_mask=field_mask_pb2.FieldMask(paths=["enabled"])),
        metadata=world.admin_md, timeout=5)
    denied(world.check("GET", "/orders", {"x-api-key": disabled}), 401, UNAUTHENTICATED, "disabled")
    # Allowed until its second is up, then refused as expired: never anything else.
    deadline = time.monotonic() + 30
    while (response := world.check("GET", "/orders", {"x-api-key": expiring})).status.code == 0:
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.05)
    denied(response, 401, UNAUTHENTICATED, "expired")


def test_out_of_scope_is_403(world: World) -> None:
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    assert world.check("GET", "/orders/1", {"x-api-key": reader}).status.code == 0
    for method, path in (("POST", "/orders"), ("DELETE", "/orders/1?hard=true"),
                         ("PUT", "/public/../orders/1"), ("POST", "//orders")):
        headers = denied(world.check(method, path, {"x-api-key": reader}), 403, PERMISSION_DENIED,
                         "insufficient_scope")
        assert "www-authenticate" not in headers
    _, writer = world.key(policy_id="partners")
    assert world.check("POST", "/orders", {"x-api-key": writer}).status.code == 0


def test_client_address_outside_the_policy_is_403(world: World) -> None:
    _, secret = world.key(policy_id="office")
    assert world.check("GET", "/orders", {"x-api-key": secret}, source="10.1.2.3").status.code == 0
    denied(world.check("GET", "/orders", {"x-api-key": secret}, source=CLIENT), 403, PERMISSION_DENIED,
           "ip_not_allowed")
    # With depth 0, a client-written X-Forwarded-For is not believed.
    denied(world.check("GET", "/orders", {"x-api-key": secret, "x-forwarded-for": "10.1.2.3"}),
           403, PERMISSION_DENIED, "ip_not_allowed")


def test_rate_limited_is_429_with_retry_after_and_ratelimit_headers(world: World) -> None:
    _, secret = world.key(policy_id="metered")
    for _ in range(2):
        assert world.check("GET", "/orders", {"x-api-key": secret}).status.code == 0
    for _ in range(2):  # the store's refusal, then the local over-limit memo
        headers = denied(world.check("GET", "/orders", {"x-api-key": secret}), 429, RESOURCE_EXHAUSTED,
                         "rate_limited")
        assert 1 <= int(headers["retry-after"]) <= 3600
        assert headers["ratelimit-limit"] == "2" and headers["ratelimit-remaining"] == "0"
        assert 0 <= int(headers["ratelimit-reset"]) <= 3600


def test_quota_exhausted_is_429_without_retry_after(world: World) -> None:
    _, secret = world.key(policy_id="partners", quota=1)
    assert world.check("GET", "/orders", {"x-api-key": secret}).status.code == 0
    headers = denied(world.check("GET", "/orders", {"x-api-key": secret}), 429, RESOURCE_EXHAUSTED,
                     "quota_exhausted")
    assert "retry-after" not in headers  # no refill: waiting does not help


def test_trusted_proxy_depth_reads_x_forwarded_for(world: World, tmp_path: Path) -> None:
    _, secret = world.key(policy_id="office")
    server = launch(world.server.store, tmp_path, "--authz-trusted-proxy-depth", "1")
    try:
        stub = ea_grpc.AuthorizationStub(server.channel())

        def check(xff: str | None) -> int:
            headers = {"x-api-key": secret, **({"x-forwarded-for": xff} if xff is not None else {})}
            return int(stub.Check(check_request("GET", "/orders", headers, source="10.9.9.9"), timeout=5)
                       .denied_response.status.code)

        assert check("10.1.2.3") == 0                  # one trusted proxy: the rightmost entry
        assert check("10.1.2.3, 198.51.100.1") == 403  # a spoofed entry on the left is not read
        assert check(None) == 403                      # no header: no client address, fail closed
    finally:
        server.stop()


def test_check_is_public_and_health_covers_it(world: World) -> None:
    # No admin credentials needed; the health service names the Authorization service too.
    health = health_pb2_grpc.HealthStub(world.server.channel())
    reply = health.Check(health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class PrivateRedis:
    url: str
    stop: Callable[[], None]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, to stop mid-test (the session's must stay up)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed"
    proc, url = _start_redis(binary, tmp_path)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    try:
        yield PrivateRedis(url, stop)
    finally:
        stop()


def test_store_down_is_503_for_an_uncached_key(
    start_server: Callable[..., ServerProcess], private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    _, admin_secret = bootstrap(url)
    # Made before the server starts, so no key.created event of it is still on its way to the
    # server's follower (which would evict the entry the first Check is about to cache).
    _, cached = bootstrap(url, "--force")
    server = start_server(url, "--store-timeout-ms", "50", "--store-retries", "0")
    stub = ea_grpc.AuthorizationStub(server.channel())
    assert stub.Check(check_request("GET", "/", {"x-api-key": cached}), timeout=5).status.code == 0

    private_redis.stop()  # the store goes away
    uncached = generate().secret
    response = stub.Check(check_request("GET", "/orders", {"x-api-key": uncached}), timeout=5)
    assert response.status.code == UNAVAILABLE and response.denied_response.status.code == 503
    body = json.loads(response.denied_response.body)
    assert body == {"error": "unavailable", "message": "authorization is temporarily unavailable"}
    blob = response.SerializeToString()
    assert uncached.encode() not in blob and b"redis" not in blob and b"127.0.0.1" not in blob
    # A key answered before the outage keeps working within the stale window.
    assert stub.Check(check_request("GET", "/", {"x-api-key": cached}), timeout=5).status.code == 0
    # Malformed and missing keys need no store at all.
    assert stub.Check(check_request("GET", "/", {}), timeout=5).denied_response.status.code == 401
    logs = server.logs()
    assert uncached not in logs and cached not in logs and admin_secret not in logs


def test_a_request_without_attributes_is_denied(world: World) -> None:
    # Nothing Envoy would send, but still an answer, and a refusal.
    response = world.stub.Check(ea.CheckRequest(), timeout=5)
    assert response.status.code == UNAUTHENTICATED and response.denied_response.status.code == 401


def test_a_bad_routes_file_stops_start_up_naming_variable_file_and_rule(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[rules]]\npath_prefix = "/a"\nscopes = []\n\n[[rules]]\npath_prefix = "b"\nscopes = []\n')
    for path, why in ((routes, "rules[1]: path_prefix must be a string starting with '/'"),
                      (tmp_path / "missing.json", "cannot read route file")):
        done = subprocess.run(keysvc_cmd("serve", "--store", f"sqlite:///{tmp_path}/k.db", "--listen",
                                         f"127.0.0.1:{free_port()}", "--authz-routes", str(path)),
                              check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert f"KEYSVC_AUTHZ_ROUTES: {path}: " in done.stderr and why in done.stderr, done.stderr


def test_more_than_one_key_is_refused(world: World) -> None:
    # Envoy joins repeated headers with "," in CheckRequest.headers: those are the merged forms.
    _, first = world.key(policy_id="partners")
    _, second = world.key(policy_id="partners")
    for headers in (
        {"x-api-key": first, "authorization": f"Bearer {second}"},
        {"x-api-key": f"{first},{second}"},
        {"authorization": f"Bearer {first},Bearer {second}"},
        {"authorization": f"Bearer {first}, {second}"},
        {"x-api-key": first, "authorization": "Bearer upstream-jwt"},
    ):
        response = world.check("GET", "/orders", headers)
        challenge = denied(response, 401, UNAUTHENTICATED, "invalid_request")["www-authenticate"]
        assert challenge == 'Bearer realm="keysvc", error="invalid_request"'


def test_paths_keysvc_cannot_judge_as_the_app_will_are_400(world: World) -> None:
    _, secret = world.key(policy_id="partners", scopes=["orders:read"])
    for path in ("/orders%2F..%2Fpublic", "/orders%2f..%2fstatus", "/x%5C..%5Corders", "/orders/%2E%2E/x",
                 "/orders%252F..%252Fx", "/orders%00", "/x\\..\\orders"):
        response = world.check("GET", path, {"x-api-key": secret})
        assert denied(response, 400, 3, "invalid_path")  # INVALID_ARGUMENT
        assert path.encode() not in response.SerializeToString()
