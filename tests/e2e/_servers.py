"""Helpers for end-to-end tests: real server processes on loopback, real gRPC channels."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc.v1 import keysvc_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keysvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "keysvc", *args]


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




def bootstrap(store: str, *extra: str) -> tuple[str, str]:
    """Run `keysvc bootstrap --json`; return (key_id, secret)."""
    out = subprocess.run(keysvc_cmd("bootstrap", "--store", store, "--json", *extra),
                         check=True, capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    return data["key_id"], data["secret"]


STACKS = ("sync", "aio")  # the gRPC server stacks keysvc can run on


def launch(store: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None,
           listen: str = "", wait: bool = True, stack: str = "", cpus: str = "") -> ServerProcess:
    """Start `keysvc serve` on a free loopback port (or `listen`), JSON logs to a file.

    `stack` picks the gRPC server stack (default: keysvc's default, auto);
    `cpus` confines the process to those CPUs (taskset -c).
    """
    addr = listen or f"127.0.0.1:{free_port()}"
    log_path = log_dir / f"server-{addr.replace(':', '_').replace('/', '_')}.log"
    cmd = keysvc_cmd("serve", "--listen", addr, "--store", store,
                     "--log-format", "json", "--log-level", "debug", *extra,
                     *(("--grpc-stack", stack) if stack else ()))
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    server = ServerProcess(addr, store, log_path, proc)
    if wait:
        server.wait_serving()
    return server
