"""A Redis that goes away: cached keys keep answering, nothing else is half-done, recovery is automatic."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, free_port

pytestmark = pytest.mark.e2e


class RedisProcess:
    """A redis-server we can stop and start again on the same port and data directory."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def health(server: ServerProcess) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def store_errors(port: int) -> float:
    """The server's count of failed store reads on the validation path, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^keysvc_store_errors(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert found, "no store errors sample"
    return float(found.group(1))


def wait_until(predicate: Callable[[], bool], bound_s: float, what: str) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} within {bound_s}s"
        time.sleep(0.05)


def test_redis_outage_and_recovery(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess, stack: str
) -> None:
    _, admin_secret = bootstrap(own_redis.url)
    md = [("authorization", f"Bearer {admin_secret}")]
    metrics_port = free_port()
    server = start_server(own_redis.url, "--cache-ttl-s", "0.5", "--stale-window-s", "60",
                          "--store-timeout-ms", "100", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                          stack=stack)
    stub = server.stub()
    cached = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    uncached = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    assert stub.Validate(pb.ValidateRequest(key=cached.secret), timeout=5).code == pb.CODE_VALID
    assert store_errors(metrics_port) == 0

    own_redis.stop()

    def answered_stale() -> bool:
        """Every answer is VALID; true once one came after a failed store read (the TTL passed)."""
        assert stub.Validate(pb.ValidateRequest(key=cached.secret), timeout=5).code == pb.CODE_VALID
        return store_errors(metrics_port) > 0

    wait_until(answered_stale, 30, "answered from the stale window after the TTL")
    reply = stub.Validate(pb.ValidateRequest(key=uncached.secret), timeout=5)
    assert (reply.valid, reply.code) == (False, pb.CODE_UNAVAILABLE)
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateKey(pb.CreateKeyRequest(owner_id="o", name="lost?"), metadata=md, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: health(server) == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "NOT_SERVING")
    assert "internal error" not in server.logs()

    own_redis.start()
    wait_until(lambda: health(server) == health_pb2.HealthCheckResponse.SERVING, 10, "SERVING again")
    assert stub.Validate(pb.ValidateRequest(key=uncached.secret), timeout=5).code == pb.CODE_VALID
    # The refused CreateKey wrote nothing.
    names = [k.name for k in stub.ListKeys(pb.ListKeysRequest(owner_id="o"), metadata=md, timeout=5).keys]
    assert "lost?" not in names and len(names) == 2
    # The event follower resumed: a revocation reaches the cache again.
    stub.RevokeKey(pb.RevokeKeyRequest(key_id=cached.key.key_id), metadata=md, timeout=5)
    wait_until(lambda: stub.Validate(pb.ValidateRequest(key=cached.secret), timeout=5).code == pb.CODE_REVOKED,
               2, "REVOKED after recovery")
