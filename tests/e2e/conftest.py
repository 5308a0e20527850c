"""Real server processes on loopback, reached over real gRPC channels."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.v1 import keysvc_pb2_grpc

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keysvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "keysvc.cli", *args]


@dataclass
class ServerProcess:
    addr: str
    store: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.addr)
        self.channels.append(channel)
        return channel

    def stub(self) -> keysvc_pb2_grpc.KeyServiceStub:
        return keysvc_pb2_grpc.KeyServiceStub(self.channel())

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 15.0) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early ({self.proc.returncode}):\n{self.logs()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not SERVING within {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 15.0) -> int:
        for channel in self.channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(store: str, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        cmd = keysvc_cmd("serve", "--listen", f"127.0.0.1:{port}", "--store", store,
                         "--log-format", "json", "--log-level", "debug", *extra)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        server = ServerProcess(f"127.0.0.1:{port}", store, log_path, proc)
        started.append(server)
        server.wait_serving()
        return server

    yield start
    for server in started:
        server.stop()


def bootstrap(store: str, *extra: str) -> tuple[str, str]:
    """Run `keysvc bootstrap --json`; return (key_id, secret)."""
    out = subprocess.run(keysvc_cmd("bootstrap", "--store", store, "--json", *extra),
                         check=True, capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    return data["key_id"], data["secret"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keysvc.db"
