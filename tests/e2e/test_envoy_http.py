"""Envoy HTTP mode: a real Envoy (deploy/envoy/envoy-http.yaml) asking keysvc's HTTP listener.

Envoy's ext_authz `http_service` (and Istio's `envoyExtAuthzHttp` provider)
sends the request's own method and its path under `path_prefix`
(`/authz/<path>`); keysvc runs with `--authz-proxy envoy` and judges the
path after the prefix. The shipped config is loaded as YAML and only its
addresses are changed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._envoy import host_health, start_envoy, stats, stop_envoy, wait_for
from tests.e2e._proxies import (
    FORGED_IDENTITY,
    IDENTITY,
    ORDERS_ROUTES,
    SMUGGLED_PUBLIC,
    ProxyWorld,
    Upstream,
    check_smuggled_public,
    create_policies,
    send,
)
from tests.e2e._servers import bootstrap, free_port, launch
from tests.e2e.test_envoy import DEPLOY, POLICIES, envoy_binary, render

pytestmark = pytest.mark.e2e

# Target and method headers other proxies write: a client's copies must decide nothing here.
FORGED_TARGETS = [("x-original-uri", "/healthz"), ("x-original-method", "GET"),
                  ("x-forwarded-uri", "/healthz"), ("x-forwarded-method", "GET"),
                  ("x-envoy-original-path", "/healthz")]


@dataclass
class World(ProxyWorld):
    admin: int
    http_port: int
    log: Path

    def passed(self, method: str, path: str, headers: list[tuple[str, str]]) -> dict[str, str]:
        """Assert the request reached the app with keysvc's identity only, and no credential."""
        seen = self.reached(method, path, headers)
        assert seen.path == path
        assert not {"x-keysvc-error", "x-envoy-auth-headers-to-remove", "server"} & set(seen.names)
        return seen.headers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("envoy-http")
    routes = tmp / "routes.toml"
    routes.write_text(ORDERS_ROUTES)
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    http_port = free_port()
    keysvc = launch(store, tmp, "--http-listen", f"127.0.0.1:{http_port}", "--authz-routes", str(routes),
                    "--authz-proxy", "envoy", "--authz-trusted-proxy-depth", "1")
    upstream = Upstream()
    port, admin = free_port(), free_port()
    config = render(yaml.safe_load((DEPLOY / "envoy" / "envoy-http.yaml").read_text()),
                    port, admin, http_port, upstream.port)
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(config))
    log = tmp / "envoy.log"
    envoy = start_envoy(envoy_binary(), tmp / "envoy.yaml", log, port)
    try:
        md = [("authorization", f"Bearer {admin_secret}")]
        create_policies(keysvc, md, (
            *POLICIES,
            pb.Policy(policy_id="elsewhere", scopes=["orders:read"], allowed_cidrs=["198.51.100.0/24"]),
        ))
        wait_for(lambda: host_health(admin, "keysvc") == ["healthy"], "keysvc healthy in Envoy")
        yield World(port, upstream, keysvc, md, [admin_secret], admin=admin, http_port=http_port, log=log)
    finally:
        stop_envoy(envoy)
        keysvc.stop()
        upstream.close()
    output = log.read_text(errors="replace") + keysvc.logs()
    assert admin_secret not in output


def test_allowed_request_carries_only_keysvcs_identity_and_no_credential(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    headers = world.passed("GET", "/orders/7?x=1", [("x-api-key", secret), *FORGED_IDENTITY])
    assert (headers["x-keysvc-key-id"], headers["x-keysvc-owner-id"]) == (key_id, "acme")
    headers = world.passed("GET", "/orders", [("authorization", f"Bearer {secret}")])
    assert headers["x-keysvc-key-id"] == key_id
    headers = world.passed("GET", "/healthz", FORGED_IDENTITY)  # ext_authz is off there
    assert not set(headers) & set(IDENTITY)


def test_the_target_is_the_requests_own_path_and_method(world: World) -> None:
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    # A client's target headers (other proxies' protocol) are never read: still a POST to /orders.
    reply = world.stopped("POST", "/orders", [("x-api-key", reader), *FORGED_TARGETS], 403)
    assert reply.json()["error"] == "insufficient_scope"
    world.passed("GET", "/orders/1", [("x-api-key", reader), ("x-original-uri", "/orders"),
                                      ("x-original-method", "DELETE")])
    # Envoy resolves dot segments before asking keysvc; the stricter rule still applies.
    world.stopped("DELETE", "/public/../orders/1", [("x-api-key", reader)], 403)


def test_keysvcs_http_listener_in_envoy_mode_reads_only_its_own_path(world: World) -> None:
    """Straight to keysvc, as a client on the pod network could: headers decide nothing."""
    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    direct = [("x-api-key", reader), *FORGED_TARGETS]
    assert send(world.http_port, "POST", "/authz/orders", direct).status == 403
    assert send(world.http_port, "GET", "/authz/orders", direct).status == 200
    # No target after the prefix: refused, never judged as "/" (the default rule).
    for path in ("/authz", "/authz?x=/orders"):
        reply = send(world.http_port, "GET", path, direct)
        assert (reply.status, reply.json()["error"]) == (400, "missing_original_uri"), path
    # The path-encoding rules apply to the path after the prefix.
    for path in ("/authz/public%2F..%2Forders", "/authz/public/%2e%2e/orders", "/authz/orders%00",
                 "/authz/orders/..%5Cx", "/authz/public%252F..%252Forders"):
        reply = send(world.http_port, "GET", path, direct)
        assert reply.status == 400, (path, reply.status, reply.body)
    # Not under the prefix at all: no route, never judged.
    assert send(world.http_port, "GET", "/authz%2Forders", direct).status == 404


def test_denials_reach_the_client_as_keysvc_sent_them(world: World) -> None:
    reply = world.stopped("GET", "/orders", [], 401)
    assert reply.json() == {"error": "missing_credentials", "message": "an API key is required"}
    assert reply.headers["www-authenticate"] == 'Bearer realm="keysvc"'
    assert reply.headers["content-type"] == "application/json"
    unknown = generate().secret
    world.secrets.append(unknown)
    assert world.stopped("GET", "/orders", [("x-api-key", unknown)], 401).json()["error"] == "not_found"
    _, first = world.key(policy_id="partners")
    _, second = world.key(policy_id="partners")
    reply = world.stopped("GET", "/orders", [("x-api-key", first), ("authorization", f"Bearer {second}")], 401)
    assert reply.json()["error"] == "invalid_request"

    _, metered = world.key(policy_id="metered")
    world.passed("GET", "/orders", [("x-api-key", metered)])
    reply = world.stopped("GET", "/orders", [("x-api-key", metered)], 429)
    assert reply.json()["error"] == "rate_limited"
    assert int(reply.headers["retry-after"]) > 0 and reply.headers["ratelimit-limit"] == "1"

    # The client address keysvc judges is the one Envoy appended, not one a client sends. (For a
    # loopback client Envoy appends the host's own address, never in 198.51.100.0/24, TEST-NET-2.)
    _, fenced = world.key(policy_id="elsewhere")
    reply = world.stopped("GET", "/orders", [("x-api-key", fenced), ("x-forwarded-for", "198.51.100.7")], 403)
    assert reply.json()["error"] == "ip_not_allowed"


def test_revocation_is_effective_on_the_very_next_request(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    world.passed("GET", "/orders", [("x-api-key", secret)])
    world.keysvc.stub().RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=world.admin_md, timeout=5)
    assert world.stopped("GET", "/orders", [("x-api-key", secret)], 401).json()["error"] == "revoked"


def test_access_log_names_the_key_never_the_secret(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    world.passed("GET", "/orders/access-log", [("x-api-key", secret)])
    line = f'"GET /orders/access-log" 200 - key_id={key_id} owner_id=acme'
    wait_for(lambda: line in world.log.read_text(errors="replace"), f"{line!r} in Envoy's access log")
    assert secret not in world.log.read_text(errors="replace")


def test_escaped_separators_are_refused_by_envoy_or_keysvc(world: World) -> None:
    _, secret = world.key(policy_id="partners", scopes=["orders:read"])
    for path in ("/public%2F..%2Forders", "/public%5C..%5Corders", "/public%252F..%252Forders",
                 "/public/%2e%2e/orders%00"):
        world.stopped("GET", path, [("x-api-key", secret)], 400)
    for path in SMUGGLED_PUBLIC:
        check_smuggled_public(world.port, world.upstream, path)


def test_envoys_stats_count_every_check_keysvc_answered(world: World) -> None:
    def counts() -> dict[str, int]:
        found = stats(world.admin, r"^http\.ingress_http\.ext_authz\.")
        return {outcome: found.get(f"http.ingress_http.ext_authz.{outcome}", 0)
                for outcome in ("ok", "denied", "error", "failure_mode_allowed")}

    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    before = counts()
    for _ in range(3):
        world.passed("GET", "/orders", [("x-api-key", reader)])
    world.stopped("GET", "/orders", [], 401)
    world.stopped("POST", "/orders", [("x-api-key", reader)], 403)
    world.passed("GET", "/healthz", [])  # ext_authz is off there: not counted
    expected = {"ok": before["ok"] + 3, "denied": before["denied"] + 2, "error": before["error"],
                "failure_mode_allowed": before["failure_mode_allowed"]}
    wait_for(lambda: counts() == expected, f"ext_authz counters {expected}")


def test_keysvc_down_is_503(world: World) -> None:  # last: it stops keysvc
    _, secret = world.key(policy_id="partners")
    world.passed("GET", "/orders", [("x-api-key", secret)])
    world.keysvc.proc.send_signal(signal.SIGSTOP)  # stuck: the check times out
    try:
        wait_for(lambda: host_health(world.admin, "keysvc") != ["healthy"], "a stopped keysvc unhealthy", 20)
        assert world.stopped("GET", "/orders", [("x-api-key", secret)], 503)
    finally:
        world.keysvc.proc.send_signal(signal.SIGCONT)
    world.keysvc.stop()  # gone: the connection is refused
    wait_for(lambda: world.send("GET", "/orders", [("x-api-key", secret)]).status != 200, "keysvc gone")
    assert world.stopped("GET", "/orders", [("x-api-key", secret)], 503)
    errors = stats(world.admin, r"^http\.ingress_http\.ext_authz\.error$")["http.ingress_http.ext_authz.error"]
    assert errors >= 2, errors  # refused Checks are errors, never failure_mode_allowed
