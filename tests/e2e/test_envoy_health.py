"""Envoy's active health check on keysvc, both shipped configs: an unready keysvc is seen within seconds.

keysvc reports `readiness` NOT_SERVING (gRPC) and `/healthz` 503 (HTTP)
while its store does not answer. A
real redis-server is paused (SIGSTOP) under a real keysvc, with no traffic
through Envoy, which is when Envoy's `no_traffic_interval` applies (60 s by
Envoy's default). Envoy's /clusters must show the host failing its health
check within seconds, and requests for keys keysvc cannot answer fail closed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from tests.conftest import _start_redis
from tests.e2e._envoy import host_health, start_envoy, stop_envoy, wait_for
from tests.e2e._proxies import Upstream, send
from tests.e2e._servers import bootstrap, free_port, launch
from tests.e2e.test_envoy import DEPLOY, envoy_binary, render

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[tuple[object, str]]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    proc, url = _start_redis("redis-server", workdir)
    try:
        yield proc, url
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["grpc", "http"])
def test_an_unready_keysvc_is_unhealthy_within_seconds_and_requests_fail_closed(
    tmp_path: Path, redis_proc: tuple[object, str], mode: str,
) -> None:
    proc, url = redis_proc
    _, admin_secret = bootstrap(url)
    if mode == "grpc":
        keysvc = launch(url, tmp_path)
        shipped, keysvc_port = "envoy.yaml", int(keysvc.addr.rpartition(":")[2])
    else:
        keysvc_port = free_port()
        keysvc = launch(url, tmp_path, "--http-listen", f"127.0.0.1:{keysvc_port}", "--authz-proxy", "envoy",
                        "--authz-trusted-proxy-depth", "1")
        shipped = "envoy-http.yaml"
    upstream = Upstream()
    port, admin = free_port(), free_port()
    config = render(yaml.safe_load((DEPLOY / "envoy" / shipped).read_text()), port, admin, keysvc_port,
                    upstream.port)
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(config))
    envoy = start_envoy(envoy_binary(), tmp_path / "envoy.yaml", tmp_path / "envoy.log", port)
    try:
        wait_for(lambda: host_health(admin, "keysvc") == ["healthy"], "keysvc healthy in Envoy", 30)
        created = keysvc.stub().CreateKey(pb.CreateKeyRequest(owner_id="acme"),
                                          metadata=[("authorization", f"Bearer {admin_secret}")], timeout=5)
        proc.send_signal(signal.SIGSTOP)  # type: ignore[attr-defined]
        paused = time.monotonic()
        # keysvc probes its store every 2 s; Envoy asks `readiness` every second: seconds, not a
        # minute. The deadline is generous for a loaded machine (the bound is the config's comment).
        wait_for(lambda: host_health(admin, "keysvc") != ["healthy"], "keysvc marked unhealthy", 20)
        print(f"{mode}: keysvc unhealthy in Envoy {time.monotonic() - paused:.1f} s after its store paused")
        assert "failed_active_hc" in host_health(admin, "keysvc")[0]
        before = len(upstream.seen)
        assert send(port, "GET", "/orders", [("x-api-key", generate().secret)]).status == 503
        assert len(upstream.seen) == before
        proc.send_signal(signal.SIGCONT)  # type: ignore[attr-defined]
        wait_for(lambda: host_health(admin, "keysvc") == ["healthy"], "keysvc healthy again", 30)
        reply = send(port, "GET", "/orders", [("x-api-key", created.secret)])
        assert reply.status == 200, reply.body
        assert created.secret.encode() not in reply.body
    finally:
        stop_envoy(envoy)
        keysvc.stop()
        upstream.close()
    assert created.secret not in (tmp_path / "envoy.log").read_text(errors="replace") + keysvc.logs()
    assert admin_secret not in keysvc.logs()

