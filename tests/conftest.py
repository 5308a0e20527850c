"""Shared fixtures: a real redis-server on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests._topology import redis_cluster, redis_sentinel  # noqa: F401 (session fixtures)


def free_port() -> int:
    """Return a loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning",
         "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break  # exited: most likely the port was taken in between
            try:
                if client.ping():
                    return proc, url
            except redis.ConnectionError:
                time.sleep(0.02)
    finally:
        client.close()
    proc.kill()
    proc.wait(timeout=5)
    logfile = workdir / "redis.log"
    log = logfile.read_text(errors="replace")[-500:] if logfile.exists() else ""
    raise RuntimeError(f"redis-server did not answer PING on port {port}: {log}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a redis-server dedicated to this test run.

    `scripts/test.sh` starts one on a free loopback port and exports
    KEYSVC_TEST_REDIS_URL (tests FLUSHALL it, so never point this at a Redis
    that holds anything); without it, the fixture starts its own.
    """
    url = os.environ.get("KEYSVC_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: integration tests need a real Redis "
            "(apt-get install redis-server, or brew install redis)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis")
    try:
        proc, url = _start_redis(binary, workdir)
    except RuntimeError:  # the free port may have been taken in between: try once more
        proc, url = _start_redis(binary, workdir)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def free_tcp_port() -> int:
    """A loopback port with nothing listening on it (a closed port)."""
    return free_port()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """Yield the session's Redis URL with an empty database (FLUSHALL before each test)."""
    client = redis.Redis.from_url(redis_server, socket_timeout=2)
    try:
        client.flushall()
        yield redis_server
    finally:
        client.close()
