"""A real nginx (deploy/nginx/nginx.conf) in front of a tiny upstream, asking a real keysvc.

Debian's nginx is installed by scripts/test.sh. The test renders the shipped
config's placeholders, starts nginx in the foreground on a free loopback port,
and shows which requests reach the upstream (and with which headers) and which
are stopped, with what status, headers and body.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._proxies import (
    ORDERS_ROUTES,
    SMUGGLED_PUBLIC,
    ProxyWorld,
    Reply,
    Upstream,
    check_smuggled_public,
    create_policies,
    send,
    wait_http,
)
from tests.e2e._servers import bootstrap, free_port, launch

pytestmark = pytest.mark.e2e

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf"


@dataclass
class Nginx:
    port: int
    prefix: Path
    proc: subprocess.Popen[bytes]

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=b"{}" if method in ("POST", "PUT") else None, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.prefix / "logs").glob("*.log"))


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.fail("nginx is not installed: scripts/test.sh installs it (apt-get install nginx)", pytrace=False)
    return binary


def start_nginx(prefix: Path, keysvc: str, upstream: str) -> Nginx:
    """Render deploy/nginx/nginx.conf's placeholders and run nginx in the foreground."""
    port = free_port()
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    text = CONF.read_text()
    for placeholder in ("@LISTEN@", "@KEYSVC@", "@UPSTREAM@"):
        assert placeholder in text, f"{CONF} lost its {placeholder} placeholder"
    conf.write_text(text.replace("@LISTEN@", f"127.0.0.1:{port}").replace("@KEYSVC@", keysvc)
                    .replace("@UPSTREAM@", upstream))
    directives = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log info;"
    if os.geteuid() == 0:
        directives += " user root;"  # workers would run as nobody, who cannot enter pytest's tmp dirs
    proc = subprocess.Popen([nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", directives],
                            stdout=subprocess.DEVNULL, stderr=(prefix / "logs" / "stderr.log").open("wb"))
    nginx = Nginx(port, prefix, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited ({proc.returncode}):\n{nginx.logs()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return nginx
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"nginx did not listen on {port}:\n{nginx.logs()}")


@dataclass
class World(ProxyWorld):
    nginx: Nginx

    def refused(self, method: str, path: str, headers: dict[str, str], status: int, error: str) -> Reply:
        """Assert nginx refuses the request with `status` and the upstream never sees it."""
        before = len(self.upstream.seen)
        reply = self.nginx.request(method, path, headers)
        assert reply.status == status, (reply.status, reply.body, self.nginx.logs()[-2000:])
        assert reply.headers["content-type"].startswith("application/json")
        body = reply.json()
        assert body["error"] == error and body["message"]
        assert len(self.upstream.seen) == before, "a refused request reached the upstream"
        raw = reply.body + str(reply.headers).encode()
        for secret in self.secrets:
            assert secret.encode() not in raw
        return reply


@contextlib.contextmanager
def make_world(tmp: Path) -> Iterator[World]:
    """A keysvc (SQLite, forward-auth on) with nginx in front of an upstream, in `tmp`."""
    routes = tmp / "routes.toml"
    routes.write_text(ORDERS_ROUTES)
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    http_port = free_port()
    upstream = Upstream()
    keysvc = launch(store, tmp, "--http-listen", f"127.0.0.1:{http_port}", "--authz-routes", str(routes),
                    "--authz-trusted-proxy-depth", "1", "--authz-proxy", "nginx")
    nginx: Nginx | None = None
    try:
        wait_http(http_port, keysvc)
        nginx = start_nginx(tmp / "prefix", f"127.0.0.1:{http_port}", f"127.0.0.1:{upstream.port}")
        md = [("authorization", f"Bearer {admin_secret}")]
        create_policies(keysvc, md, (
            pb.Policy(policy_id="partners", scopes=["orders:read", "orders:write"]),
            pb.Policy(policy_id="metered", scopes=["orders:read"],
                      rate_limit=pb.RateLimit(requests=2, window=duration_pb2.Duration(seconds=3600))),
            pb.Policy(policy_id="loopback", allowed_cidrs=["127.0.0.0/8"]),
            pb.Policy(policy_id="office", allowed_cidrs=["10.1.0.0/16"]),
        ))
        yield World(nginx.port, upstream, keysvc, md, [admin_secret], nginx=nginx)
    finally:
        if nginx is not None:
            nginx.proc.terminate()
            nginx.proc.wait(timeout=10)
        keysvc.stop()
        upstream.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("nginx")) as built:
        yield built


def test_valid_key_reaches_upstream_with_identity_and_without_the_key(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    # The client also tries to claim another identity; nginx replaces it with keysvc's.
    reply = world.nginx.request("GET", "/orders/17?expand=items",
                                {"X-Api-Key": secret, "X-Keysvc-Key-Id": "key_00000000000000000"})
    assert reply.status == 200 and reply.json() == {"upstream": "ok"}
    seen = world.upstream.seen[-1]
    assert (seen.method, seen.path) == ("GET", "/orders/17?expand=items")
    assert seen.headers["x-keysvc-key-id"] == key_id
    assert seen.headers["x-keysvc-owner-id"] == "acme"
    assert "x-api-key" not in seen.headers and "authorization" not in seen.headers
    assert secret not in json.dumps(seen.headers)

    reply = world.nginx.request("GET", "/orders", {"Authorization": f"Bearer {secret}"})
    assert reply.status == 200
    seen = world.upstream.seen[-1]
    assert seen.headers["x-keysvc-key-id"] == key_id and "authorization" not in seen.headers

    _, writer = world.key(policy_id="partners")
    assert world.nginx.request("POST", "/orders", {"X-Api-Key": writer}).status == 200
    assert world.upstream.seen[-1].method == "POST"


def test_public_route_needs_no_key(world: World) -> None:
    assert world.nginx.request("GET", "/healthz").status == 200
    seen = world.upstream.seen[-1]
    assert seen.path == "/healthz" and "x-keysvc-key-id" not in seen.headers


def test_missing_key_is_401_and_never_reaches_upstream(world: World) -> None:
    reply = world.refused("GET", "/orders", {}, 401, "missing_credentials")
    assert reply.headers.get_all("WWW-Authenticate") == ['Bearer realm="keysvc"']
    world.refused("GET", "/orders", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing_credentials")


def test_bad_keys_are_401(world: World) -> None:
    reply = world.refused("GET", "/orders", {"X-Api-Key": "not-a-key"}, 401, "malformed")
    assert reply.headers.get_all("WWW-Authenticate") == ['Bearer realm="keysvc", error="invalid_token"']
    unknown = generate().secret
    world.secrets.append(unknown)
    world.refused("GET", "/orders", {"X-Api-Key": unknown}, 401, "not_found")


def test_revoked_key_is_401(world: World) -> None:
    key_id, secret = world.key(policy_id="partners")
    assert world.nginx.request("GET", "/orders", {"X-Api-Key": secret}).status == 200
    world.keysvc.stub().RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=world.admin_md, timeout=5)
    deadline = time.monotonic() + 5
    while world.nginx.request("GET", "/status", {"X-Api-Key": secret}).status == 200:
        assert time.monotonic() < deadline, "revocation never took effect"
        time.sleep(0.01)
    world.refused("GET", "/orders", {"X-Api-Key": secret}, 401, "revoked")


def test_out_of_scope_key_is_403(world: World) -> None:
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    reply = world.refused("POST", "/orders", {"X-Api-Key": reader}, 403, "insufficient_scope")
    assert "WWW-Authenticate" not in reply.headers
    # Dot segments do not dodge the stricter rule.
    world.refused("DELETE", "/public/../orders/1", {"X-Api-Key": reader}, 403, "insufficient_scope")


def test_client_address_comes_from_nginx_not_the_client(world: World) -> None:
    _, local = world.key(policy_id="loopback")
    assert world.nginx.request("GET", "/status", {"X-Api-Key": local}).status == 200
    _, office = world.key(policy_id="office")
    # A forged X-Forwarded-For is kept on the left; keysvc reads nginx's entry on the right.
    world.refused("GET", "/status", {"X-Api-Key": office, "X-Forwarded-For": "10.1.2.3"}, 403, "ip_not_allowed")


def test_rate_limited_key_is_429_with_retry_after(world: World) -> None:
    _, secret = world.key(policy_id="metered")
    for _ in range(2):
        assert world.nginx.request("GET", "/orders", {"X-Api-Key": secret}).status == 200
    reply = world.refused("GET", "/orders", {"X-Api-Key": secret}, 429, "rate_limited")
    assert 1 <= int(reply.headers["Retry-After"]) <= 3600
    assert reply.headers["RateLimit-Limit"] == "2" and reply.headers["RateLimit-Remaining"] == "0"
    assert 0 <= int(reply.headers["RateLimit-Reset"]) <= 3600
    assert "WWW-Authenticate" not in reply.headers


def test_quota_exhausted_is_429_without_retry_after(world: World) -> None:
    _, secret = world.key(policy_id="partners", quota=1)
    assert world.nginx.request("GET", "/orders", {"X-Api-Key": secret}).status == 200
    reply = world.refused("GET", "/orders", {"X-Api-Key": secret}, 429, "quota_exhausted")
    assert "Retry-After" not in reply.headers


def test_client_identity_headers_never_reach_the_app_on_the_public_route(world: World) -> None:
    forged = [("X-Keysvc-Key-Id", "key_00000000000000000"), ("X-Keysvc-Owner-Id", "someone-else"),
              ("X_Keysvc_Key_Id", "key_00000000000000000")]
    assert send(world.nginx.port, "GET", "/healthz", forged).status == 200
    seen = world.upstream.seen[-1]
    assert seen.path == "/healthz"
    assert not {"x-keysvc-key-id", "x-keysvc-owner-id", "x_keysvc_key_id"} & set(seen.names)


def test_forged_target_headers_never_change_the_decision(world: World) -> None:
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    forged = {"X-Original-URI": "/public", "X-Original-Method": "GET",
              "X-Forwarded-Uri": "/public", "X-Forwarded-Method": "GET"}
    world.refused("POST", "/orders", {"X-Api-Key": reader, **forged}, 403, "insufficient_scope")
    assert world.nginx.request("GET", "/orders/9", {"X-Api-Key": reader, **forged}).status == 200
    seen = world.upstream.seen[-1]
    assert seen.path == "/orders/9"
    assert not {"x-original-uri", "x-original-method", "x-forwarded-uri", "x-forwarded-method"} & set(seen.names)


def test_two_keys_are_refused(world: World) -> None:
    _, first = world.key(policy_id="partners")
    _, second = world.key(policy_id="partners")
    for headers in ([("X-Api-Key", first), ("Authorization", f"Bearer {second}")],
                    [("X-Api-Key", first), ("X-Api-Key", second)]):
        before = len(world.upstream.seen)
        reply = send(world.nginx.port, "GET", "/orders", headers)
        assert reply.status == 401 and reply.json()["error"] == "invalid_request"
        assert len(world.upstream.seen) == before


def test_encoded_separators_never_reach_the_app_unchecked(world: World) -> None:
    for path in SMUGGLED_PUBLIC:
        check_smuggled_public(world.nginx.port, world.upstream, path)
    _, secret = world.key(policy_id="partners")
    assert world.nginx.request("GET", "/status?next=%2Fa%2E%5C", {"X-Api-Key": secret}).status == 200


def test_paths_keysvc_cannot_judge_are_400(world: World) -> None:
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    for path in ("/orders%2F..%2Fpublic", "/public%2F..%2Forders", "/orders/%2e%2e/x", "/x%252Forders"):
        world.refused("GET", path, {"X-Api-Key": reader}, 400, "invalid_path")


def test_keys_stay_out_of_nginx_logs(world: World) -> None:
    _, secret = world.key(policy_id="partners")
    assert world.nginx.request("GET", "/orders", {"X-Api-Key": secret}).status == 200
    world.refused("GET", "/orders", {"X-Api-Key": secret[:-1]}, 401, "malformed")
    logs = world.nginx.logs()
    assert "key_id=key_" in logs, "the access log should name keys by id"
    for secret in world.secrets:
        assert secret not in logs and secret[3:] not in logs


def test_keysvc_down_fails_closed_with_503(tmp_path: Path) -> None:
    # Its own keysvc and nginx: stopping the module's would break whatever runs after it.
    with make_world(tmp_path) as world:
        _, secret = world.key(policy_id="partners")
        assert world.nginx.request("GET", "/orders", {"X-Api-Key": secret}).status == 200
        world.keysvc.stop()
        world.refused("GET", "/orders", {"X-Api-Key": secret}, 503, "unavailable")
        world.refused("GET", "/orders", {}, 503, "unavailable")
