"""Background tasks are supervised, and health tells liveness from readiness (real servers, real Redis)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.app import server as keysvc_server
from keysvc.app.settings import Settings
from keysvc.store.redis.store import RedisStore
from keysvc.testing import FaultyStore, capture_logs
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, bootstrap, free_port, keysvc_cmd
from tests.e2e.test_metrics import scrape, value

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.05)


def status(channel: grpc.Channel, service: str) -> int | None:
    """The health status of `service`, or None when the server does not know that name."""
    try:
        return int(health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    except grpc.RpcError:
        return None


def health_cli(addr: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keysvc_cmd("health", "--listen", addr, *flags), capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_follower_failing_on_an_unexpected_error_is_restarted_and_reported(
    start_server: Callable[..., ServerProcess], redis_url: str, stack: str
) -> None:
    """The event stream turns into a string: every read answers WRONGTYPE, an error the follower
    does not expect. It is logged with its trace and retried; health and metrics say so; once the
    log is back, changes made by another sidecar reach this one again."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    _, secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {secret}")]
    metrics_port = free_port()
    # A cache TTL far beyond the test: only the follower can evict what this server cached.
    server = start_server(redis_url, "--metrics-listen", f"127.0.0.1:{metrics_port}",
                          "--cache-ttl-s", "3600", stack=stack)
    writer = start_server(redis_url, stack=stack)  # another sidecar: its changes reach `server` by the log
    created = writer.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    stub = server.stub()
    assert stub.Validate(pb.ValidateRequest(key=created.secret), timeout=5).code == pb.CODE_VALID
    channel = server.channel()
    wait_for(lambda: status(channel, "keysvc.events") == SERVING, what="keysvc.events SERVING")

    client.delete("{keysvc}:events")
    client.set("{keysvc}:events", "not a stream")
    wait_for(lambda: value(scrape(metrics_port), "keysvc_task_restarts_total", task="events") >= 2,
             what="the follower restarted twice")
    wait_for(lambda: status(channel, "keysvc.events") == NOT_SERVING, what="keysvc.events NOT_SERVING")
    wait_for(lambda: value(scrape(metrics_port), "keysvc_events_connected") == 0,
             what="keysvc_events_connected 0 while the follower waits to restart")
    wait_for(lambda: status(channel, "") == NOT_SERVING, what="readiness NOT_SERVING")
    assert status(channel, "liveness") == SERVING  # a failing task is not a stuck process
    assert status(channel, "keysvc.store") == SERVING  # the store itself answers
    logs = server.logs()
    assert "background task failed; restarting" in logs
    assert "Traceback" in logs and "WRONGTYPE" in logs  # the trace, through structlog

    client.delete("{keysvc}:events")  # the log is back (empty): the follower resumes
    wait_for(lambda: status(channel, "keysvc.events") == SERVING and status(channel, "") == SERVING,
             what="keysvc.events and readiness SERVING again")
    samples = scrape(metrics_port)
    assert value(samples, "keysvc_task_up", task="events") == 1
    assert value(samples, "keysvc_task_up", task="last_used") == 1
    wait_for(lambda: value(scrape(metrics_port), "keysvc_events_connected") == 1, what="connected again")
    writer.stub().RevokeKey(pb.RevokeKeyRequest(key_id=created.key.key_id), metadata=md, timeout=5)
    wait_for(lambda: stub.Validate(pb.ValidateRequest(key=created.secret), timeout=5).code == pb.CODE_REVOKED,
             what="the revocation made elsewhere reached this server")


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Settings of `faulty_app` beyond its defaults (a test may override this fixture)."""
    return {}


@pytest.fixture
async def faulty_app(
    redis_url: str, stack: str, app_settings: dict[str, Any]
) -> AsyncIterator[tuple[keysvc_server.App, FaultyStore]]:
    """An in-process server on a real Redis whose store can be told to raise unexpected errors."""
    redis.Redis.from_url(redis_url).flushall()
    settings = Settings(listen="127.0.0.1:0", store=redis_url, grpc_stack=stack, store_timeout_ms=1000,
                        **app_settings)
    faulty = FaultyStore(RedisStore(redis_url, timeout_s=1.0))
    app = keysvc_server.build(settings, store=faulty.as_store())
    await keysvc_server.start(app)
    try:
        yield app, faulty
    finally:
        await keysvc_server.stop(app)


async def test_the_last_used_writer_survives_an_unexpected_store_error(
    faulty_app: tuple[keysvc_server.App, FaultyStore], redis_url: str
) -> None:
    app, faulty = faulty_app
    _, secret = await asyncio.to_thread(bootstrap, redis_url)
    md = [("authorization", f"Bearer {secret}")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports[0]}") as channel:
        stub = keysvc_pb2_grpc.KeyServiceStub(channel)
        created = await stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
        faulty.fail("touch", ValueError("injected: not a StoreUnavailableError"), times=2)
        with capture_logs() as logs:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while faulty.raised("touch") < 2:  # each flush of a use meets the fault, twice
                assert loop.time() < deadline, "the write-behind never flushed twice"
                await stub.Validate(pb.ValidateRequest(key=created.secret), timeout=5)
                await asyncio.sleep(0.1)
            # Healed: the next use is written behind again, by the restarted task.
            while True:
                await stub.Validate(pb.ValidateRequest(key=created.secret), timeout=5)
                got = await stub.GetKey(pb.GetKeyRequest(key_id=created.key.key_id), metadata=md, timeout=5)
                if got.key.HasField("last_used_at"):
                    break
                assert loop.time() < deadline, "no last use was recorded after the faults"
                await asyncio.sleep(0.1)
    assert app.supervisor.states["last_used"].restarts == 2
    assert app.supervisor.states["last_used"].up
    failures = [r for r in logs.records() if r.get("event") == "background task failed; restarting"]
    assert len(failures) == 2 and all(r["task"] == "last_used" for r in failures)
    assert all("ValueError: injected" in r["exception"] for r in failures)


@pytest.mark.parametrize("app_settings", [{"liveness_stall_s": 1.0}])
async def test_a_stuck_loop_fails_liveness_and_a_ticking_one_passes(
    faulty_app: tuple[keysvc_server.App, FaultyStore],
) -> None:
    """`keysvc health --live` passes while the loop ticks, fails while a callback blocks it
    (the sync stack answers NOT_SERVING from its threads; grpc.aio cannot answer at all)."""
    app, _ = faulty_app
    addr = f"127.0.0.1:{app.ports[0]}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (await asyncio.to_thread(health_cli, addr)).returncode != 0:
        assert loop.time() < deadline, "readiness never SERVING"
    assert (await asyncio.to_thread(health_cli, addr, "--live")).returncode == 0

    release = threading.Event()
    answers: list[str] = []

    def probe_until_failing() -> None:
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                done = health_cli(addr, "--live", "--timeout", "2")
                if done.returncode != 0:
                    answers.append(done.stdout + done.stderr)
                    return
        finally:
            release.set()

    probing = loop.run_in_executor(None, probe_until_failing)
    loop.call_soon(release.wait, 120)  # blocks the loop until the probe saw liveness fail
    await probing
    assert answers, "liveness never failed while the loop was blocked"
    while (await asyncio.to_thread(health_cli, addr, "--live")).returncode != 0:
        assert loop.time() < deadline + 120, "liveness never SERVING again after the loop was released"


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_store_down_fails_readiness_not_liveness_and_says_why(tmp_path: Path) -> None:
    """Redis is not up: the server stays up, NOT_SERVING, liveness SERVING, and every
    "store unreachable" line carries the reason, never the password of the URL."""
    addr = f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    store = f"redis://:s3cr3t-pa55@127.0.0.1:{free_port()}/0"  # nothing listens there
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(keysvc_cmd("serve", "--listen", addr, "--store", store, "--log-format", "json",
                                           "--http-listen", http),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (done := health_cli(addr, "--live")).returncode != 0:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, done.stderr
        ready = health_cli(addr)
        assert ready.returncode == 1 and "NOT_SERVING" in ready.stdout
        assert http_status(f"http://{http}/livez") == 200
        assert http_status(f"http://{http}/healthz") == 503
        wait_for(lambda: "store unreachable" in log_path.read_text(), what="a store unreachable line")
        lines = [line for line in log_path.read_text().splitlines() if "store unreachable" in line]
        assert all('"reason": "ConnectionError: redis: ' in line for line in lines), lines
        assert "s3cr3t-pa55" not in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_health_cli_probes_the_address_keysvc_listen_names(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """What the Dockerfile's HEALTHCHECK runs: no address flag, the same settings as `serve`."""
    server = start_server(f"sqlite:///{tmp_path}/k.db")
    env = {"PATH": os.environ.get("PATH", ""), "KEYSVC_LISTEN": server.addr}
    for flags, answer in (((), "readiness: SERVING"), (("--live",), "liveness: SERVING")):
        done = subprocess.run(keysvc_cmd("health", *flags), capture_output=True, text=True, timeout=60,
                              check=False, env=env)
        assert done.returncode == 0 and done.stdout.strip() == answer, done.stderr
    server.stop()
    done = subprocess.run(keysvc_cmd("health", "--timeout", "2"), capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert done.returncode == 1  # nothing answers there any more


def test_a_follower_that_cannot_start_does_not_stop_the_server(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    """The event stream is of the wrong type before start-up: the server serves, not ready, and
    becomes ready once the log is usable."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.set("{keysvc}:events", "not a stream")
    server = start_server(redis_url, wait=False)
    channel = server.channel()
    wait_for(lambda: status(channel, "liveness") == SERVING, what="liveness SERVING")
    assert server.proc.poll() is None, server.logs()
    wait_for(lambda: "background task failed; restarting" in server.logs(), what="the follower's failure logged")
    assert status(channel, "") == NOT_SERVING
    client.delete("{keysvc}:events")
    server.wait_serving(timeout=60)
    # keysvc.events also needs the follower caught up, published by the next probe round.
    wait_for(lambda: status(channel, "keysvc.events") == SERVING, what="keysvc.events SERVING")


def test_a_busy_sqlite_lock_at_start_up_is_waited_for_not_an_error(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    bootstrap(url)  # the file and its schema exist
    holder = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock
    try:
        server = start_server(url, wait=False)
        channel = server.channel()
        wait_for(lambda: status(channel, "liveness") == SERVING, what="liveness SERVING")
        assert server.proc.poll() is None, server.logs()
        # Reads go on beside another process's write lock (WAL, a reader connection of
        # their own), so the store answers its probe: ready, though writes must wait.
        server.wait_serving(timeout=60)
        assert "Traceback" not in server.logs()
    finally:
        holder.rollback()
        holder.close()
    server.wait_serving(timeout=60)
