"""The bench's processes: redis-server, keysvc and floor servers, pinned with taskset.

Everything listens on 127.0.0.1 on a free port and is stopped by the bench.
Keys and policies are made through the real admin API, with an admin key from
`keysvc bootstrap`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc as pb_grpc

__all__ = [
    "BenchError",
    "Redis",
    "Server",
    "bootstrap",
    "free_port",
    "listening",
    "pinned",
    "start_floor",
    "start_keysvc",
    "start_redis",
]


class BenchError(RuntimeError):
    """The bench could not set something up (the message says what)."""


def free_port() -> int:
    """Return a loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | str | None, cmd: Sequence[str]) -> list[str]:
    """Prefix `cmd` with `taskset -c cpu` (taskset exec()s it: same pid)."""
    return list(cmd) if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Redis:
    """A throwaway redis-server on loopback."""

    url: str
    proc: subprocess.Popen[bytes]

    def counters(self) -> tuple[int, int]:
        """Return Redis's (total_reads_processed, total_commands_processed) so far.

        A read is one request arriving on a connection: a round trip, whether
        it carries one command, a pipeline or a script call. Commands run
        inside a Lua script are not counted.
        """
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            stats = client.info("stats")
            return int(stats["total_reads_processed"]), int(stats["total_commands_processed"])
        finally:
            client.close()

    def stop(self) -> None:
        """Stop it (nothing is saved)."""
        _stop(self.proc, 10)


def start_redis(workdir: Path, cpu: int | None) -> Redis:
    """Start redis-server on a free loopback port, pinned to `cpu`.

    Raises:
        BenchError: redis-server is not installed or does not answer.
    """
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install redis-server)")
    for _ in range(3):  # the free port may be taken in between
        port = free_port()
        proc = subprocess.Popen(
            pinned(cpu, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning",
                         "--logfile", str(workdir / "redis.log")]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return Redis(url, proc)
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        _stop(proc, 5)
    raise BenchError("redis-server did not answer PING")


@dataclass
class Server:
    """A server process under test (keysvc or the floor)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def addr(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server's process and its workers, if any."""
        from keysvc.bench.load import descendants

        return descendants(self.proc.pid)

    def stub(self) -> Any:
        """A KeyService stub on a channel closed by `stop`."""
        channel = grpc.insecure_channel(self.addr)
        self.channels.append(channel)
        return pb_grpc.KeyServiceStub(channel)  # type: ignore[no-untyped-call]

    def channel(self) -> grpc.Channel:
        """A channel closed by `stop`."""
        channel = grpc.insecure_channel(self.addr)
        self.channels.append(channel)
        return channel

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the server's output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Return once a Validate call gets any answer (generous: a pinned start on a busy core is slow).

        Raises:
            BenchError: the process exited or did not answer in time.
        """
        stub = self.stub()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                stub.Validate(pb.ValidateRequest(key="x"), timeout=1)
            except grpc.RpcError:
                time.sleep(0.05)
            else:
                return
        raise BenchError(f"{self.name} did not answer within {timeout_s}s:\n{self.log_tail()}")

    def pin_workers(self, cpus: Sequence[int], workers: int, timeout_s: float = 90.0) -> list[int]:
        """Wait until `workers` children serve, then pin child i, every thread, to cpus[i % len].

        Returns:
            the children's pids, in the order they were pinned.

        Raises:
            BenchError: they did not all report serving in time.
        """
        deadline = time.monotonic() + timeout_s
        children: list[int] = []
        while len(children) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError(f"{self.name}: {workers} workers did not start:\n{self.log_tail()}")
            time.sleep(0.05)
            children = sorted(listening([p for p in self.pids() if p != self.proc.pid], self.port))
        for i, pid in enumerate(children):
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {cpus[i % len(cpus)]})
        return children

    def stop(self) -> int:
        """SIGTERM, wait (kill after 20 s); return the exit code."""
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        return _stop(self.proc, 20)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the inode.
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listening(pids: Sequence[int], port: int) -> list[int]:
    """Return those of `pids` that hold a listening TCP socket on `port` (from /proc)."""
    inodes = _listening_inodes(port)
    found = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, PermissionError, ProcessLookupError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        found.append(pid)
                        break
    return found


def _launch(name: str, cmd: list[str], port: int, workdir: Path, env: dict[str, str] | None) -> Server:
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    server = Server(name, port, proc, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_keysvc(
    name: str, store: str, workdir: Path, cpu: int | str | None, *extra: str,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `keysvc serve` on a free loopback port, pinned to `cpu`, and wait until it answers."""
    port = free_port()
    cmd = pinned(cpu, [sys.executable, "-m", "keysvc", "serve", "--listen", f"127.0.0.1:{port}",
                       "--store", store, "--log-format", "json", "--log-level", "warning",
                       "--shutdown-grace-s", "2", *extra])
    return _launch(name, cmd, port, workdir, env)


def start_floor(name: str, workdir: Path, cpu: int | None, response: bytes, *extra: str) -> Server:
    """Start a floor server (keysvc.bench.floor) answering `response` to every Validate."""
    port = free_port()
    response_file = workdir / "floor-response.bin"
    response_file.write_bytes(response)
    cmd = pinned(cpu, [sys.executable, "-m", "keysvc.bench.floor", "--listen", f"127.0.0.1:{port}",
                       "--response", str(response_file), *extra])
    return _launch(name, cmd, port, workdir, None)


def bootstrap(store: str) -> str:
    """Run `keysvc bootstrap --json` against `store`; return the admin secret.

    Raises:
        BenchError: it failed.
    """
    out = subprocess.run(
        [sys.executable, "-m", "keysvc", "bootstrap", "--store", store, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"keysvc bootstrap failed: {out.stderr.strip()[-500:]}")
    return str(json.loads(out.stdout)["secret"])
