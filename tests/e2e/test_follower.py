"""The event follower across real server processes and a real redis-server that misbehaves.

Paused (CLIENT PAUSE), trimmed or deleted behind a server's back (SIGSTOP,
XTRIM, DEL), slowed by a delay proxy, or stopped: revocations still reach
every server, and a server that cannot follow stops trusting its cache.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._delay_proxy import DelayProxy
from tests.e2e._servers import ServerProcess, bootstrap, free_port
from tests.e2e.test_store_outage import RedisProcess, wait_until

pytestmark = pytest.mark.e2e

STREAM = "{keysvc}:events"
FAST_STORE = ("--store-timeout-ms", "100", "--cache-ttl-s", "300")
# The README's propagation bound once the store answers again (Operations, Consistency).
RESUME_BOUND_S = 1.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def code(server: ServerProcess, secret: str) -> int:
    return int(server.stub().Validate(pb.ValidateRequest(key=secret), timeout=10).code)


def events_health(server: ServerProcess) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return int(stub.Check(health_pb2.HealthCheckRequest(service="keysvc.events"), timeout=10).status)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def test_a_revocation_right_after_a_pause_is_applied_at_once_and_everywhere(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess, stack: str
) -> None:
    _, admin_secret = bootstrap(own_redis.url)
    md = [("authorization", f"Bearer {admin_secret}")]
    accepting = start_server(own_redis.url, *FAST_STORE, stack=stack)
    other = start_server(own_redis.url, *FAST_STORE, stack=stack)
    made = accepting.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=10)
    for server in (accepting, other):
        for _ in range(2):
            assert code(server, made.secret) == pb.CODE_VALID

    with redis.Redis.from_url(own_redis.url, socket_timeout=30) as client:
        client.execute_command("CLIENT", "PAUSE", "5000", "ALL")
        client.ping()  # blocks until the pause is over: the followers have been failing 5 s
    accepting.stub().RevokeKey(pb.RevokeKeyRequest(key_id=made.key.key_id), metadata=md, timeout=10)
    revoked = time.monotonic()
    # The server that accepted the revocation applies it before answering anything else.
    assert code(accepting, made.secret) == pb.CODE_REVOKED
    # Every other server resumes following as soon as the store answers again.
    wait_until(lambda: code(other, made.secret) == pb.CODE_REVOKED, 15, "REVOKED on the other server")
    print(f"propagation after a 5 s pause: {(time.monotonic() - revoked) * 1000:.0f} ms")
    assert time.monotonic() - revoked < RESUME_BOUND_S, "the README's bound after a pause"


@pytest.mark.parametrize("history", ["trimmed", "deleted before"])
def test_a_log_trimmed_to_empty_while_a_server_was_away_flushes_its_cache(
    start_server: Callable[..., ServerProcess], redis_url: str, history: str
) -> None:
    _, admin_secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {admin_secret}")]
    admin = start_server(redis_url, *FAST_STORE)
    away = start_server(redis_url, *FAST_STORE)
    made = admin.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=10)
    raw = redis.Redis.from_url(redis_url, socket_timeout=10)
    if history == "deleted before":
        # The stream is deleted once (the follower repositions), then written again.
        raw.delete(STREAM)
        other = admin.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=10)
        wait_until(lambda: raw.exists(STREAM) == 1, 15, "stream recreated")
        assert code(away, other.secret) == pb.CODE_VALID
    wait_until(lambda: code(away, made.secret) == pb.CODE_VALID, 15, "cached on the server going away")
    assert code(away, made.secret) == pb.CODE_VALID

    os.kill(away.proc.pid, signal.SIGSTOP)
    try:
        admin.stub().RevokeKey(pb.RevokeKeyRequest(key_id=made.key.key_id), metadata=md, timeout=10)
        raw.xtrim(STREAM, maxlen=0, approximate=False)
    finally:
        os.kill(away.proc.pid, signal.SIGCONT)
    raw.close()
    wait_until(lambda: code(away, made.secret) == pb.CODE_REVOKED, 15, "REVOKED after the lost log")
    assert "event log lost; flushing cache" in away.logs()
    assert made.secret not in away.logs()


def test_unrelated_admin_traffic_leaves_validated_keys_cached(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess, stack: str
) -> None:
    """Keys validated while other keys change stay cached, so they answer once Redis is gone."""
    _, admin_secret = bootstrap(own_redis.url)
    md = [("authorization", f"Bearer {admin_secret}")]
    patient = ("--cache-ttl-s", "300", "--stale-window-s", "300", "--store-timeout-ms", "1000")
    admin = start_server(own_redis.url, *patient)
    serving = start_server(own_redis.url, *patient, stack=stack)
    stub = admin.stub()
    secrets = [stub.CreateKey(pb.CreateKeyRequest(owner_id="v"), metadata=md, timeout=10).secret
               for _ in range(24)]
    churned = [stub.CreateKey(pb.CreateKeyRequest(owner_id="c"), metadata=md, timeout=10).key.key_id
               for _ in range(4)]
    stop = threading.Event()
    updates = [0]

    def churn() -> None:
        churn_stub = admin.stub()
        i = 0
        while not stop.is_set():
            key_id = churned[i % len(churned)]
            churn_stub.UpdateKey(pb.UpdateKeyRequest(
                key_id=key_id, key=pb.Key(name=f"n{i}"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"])), metadata=md, timeout=10)
            i += 1
            updates[0] = i

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        wait_until(lambda: updates[0] >= 3 or not churner.is_alive(), 15, "churning")
        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(lambda s: code(serving, s), secrets))
    finally:
        stop.set()
        churner.join(30)
    assert first == [pb.CODE_VALID] * 24
    assert updates[0] >= 3, "the admin traffic ran"
    own_redis.stop()
    answers = [code(serving, s) for s in secrets]
    uncached = sum(a != pb.CODE_VALID for a in answers)
    assert uncached == 0, f"{uncached} of 24 validated keys were not cached"


def test_a_slow_link_makes_the_follower_behind_and_bounds_stale_answers(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    _, admin_secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {admin_secret}")]
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = DelayProxy(port)
    proxy.start()
    try:
        admin = start_server(redis_url, *FAST_STORE)
        metrics_port = free_port()
        slow = start_server(proxy.url, "--cache-ttl-s", "300", "--stale-window-s", "1",
                            "--store-timeout-ms", "200", "--metrics-listen", f"127.0.0.1:{metrics_port}")
        made = admin.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=10)
        assert code(slow, made.secret) == pb.CODE_VALID
        wait_until(lambda: events_health(slow) == health_pb2.HealthCheckResponse.SERVING, 15,
                   "follower caught up")
        assert metric(metrics_port, "keysvc_events_behind") == 0

        proxy.delay_s = 0.5  # every store call now takes longer than its 200 ms timeout
        admin.stub().RevokeKey(pb.RevokeKeyRequest(key_id=made.key.key_id), metadata=md, timeout=10)
        wait_until(lambda: events_health(slow) == health_pb2.HealthCheckResponse.NOT_SERVING, 15,
                   "follower reported behind")
        assert metric(metrics_port, "keysvc_events_behind") == 1
        # Past the stale window the cache is not trusted: the store cannot answer, so UNAVAILABLE.
        wait_until(lambda: metric(metrics_port, "keysvc_events_lag_seconds") > 1.5, 15, "lag past the window")
        assert code(slow, made.secret) == pb.CODE_UNAVAILABLE

        proxy.delay_s = 0.0
        wait_until(lambda: events_health(slow) == health_pb2.HealthCheckResponse.SERVING, 30,
                   "follower caught up again")
        assert code(slow, made.secret) == pb.CODE_REVOKED
        assert metric(metrics_port, "keysvc_events_behind") == 0
    finally:
        proxy.stop()


def test_a_sqlite_file_moved_in_beside_the_old_wal_flushes_the_cache(
    start_server: Callable[..., ServerProcess], tmp_path: Path, stack: str
) -> None:
    # `mv copy.db keysvc.db` under a running server leaves the old file's -wal and
    # -shm, and SQLite then finds the new file "malformed": the follower never reads
    # the new log, so the replacement alone must flush, or the revoked keys in the
    # copy stay valid from the cache for the whole stale window.
    live, copy = tmp_path / "k.db", tmp_path / "copy.db"
    _, admin_secret = bootstrap(f"sqlite:///{live}")
    md = [("authorization", f"Bearer {admin_secret}")]
    server = start_server(f"sqlite:///{live}", "--cache-ttl-s", "300", stack=stack)
    made = [server.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=10)
            for _ in range(3)]
    for key in made:
        assert code(server, key.secret) == pb.CODE_VALID
    with sqlite3.connect(live) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    restorer = start_server(f"sqlite:///{copy}")
    for key in made:
        restorer.stub().RevokeKey(pb.RevokeKeyRequest(key_id=key.key.key_id), metadata=md, timeout=10)
    for _ in range(5):
        restorer.stub().CreateKey(pb.CreateKeyRequest(owner_id="p"), metadata=md, timeout=10)
    assert restorer.stop() == 0
    copy.replace(live)
    wait_until(lambda: all(code(server, key.secret) != pb.CODE_VALID for key in made), 15,
               "no revoked key answered from the cache")
    assert "event log lost; flushing cache" in server.logs()
