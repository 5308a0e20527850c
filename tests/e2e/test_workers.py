"""`keysvc serve --workers N`: N processes on one port, stopped together, never half-running."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from keysvc.bench.procs import listening
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, keysvc_cmd, launch

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return state[state.rindex(")") + 2] == "Z"  # a zombie has exited; only its entry is left


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def established_by(pids: list[int], port: int) -> dict[int, int]:
    """How many accepted connections on `port` each process holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        counts[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return counts


@pytest.fixture
def workers2(redis_url: str, tmp_path: Path):
    server = launch(redis_url, tmp_path, "--workers", "2", "--shutdown-grace-s", "2")
    try:
        wait_for(lambda: len(listening(children_of(server.proc.pid), int(server.addr.rsplit(":", 1)[1]))) == 2)
        yield server
    finally:
        server.stop()


def test_both_workers_answer_on_one_port(workers2: ServerProcess) -> None:
    port = int(workers2.addr.rsplit(":", 1)[1])
    children = children_of(workers2.proc.pid)
    assert len(children) == 2
    # A channel of its own per connection: the kernel spreads connections across
    # the workers, so 40 of them all landing on one worker would be a 2**-39 event.
    channels = [grpc.insecure_channel(workers2.addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(40)]
    try:
        for channel in channels:
            answer = keysvc_pb2_grpc.KeyServiceStub(channel).Validate(pb.ValidateRequest(key="garbage"), timeout=5)
            assert answer.code == pb.CODE_MALFORMED
        held = established_by(children, port)
        assert sum(held.values()) >= 40, held
        assert all(count > 0 for count in held.values()), f"a worker took no connection: {held}"
    finally:
        for channel in channels:
            channel.close()


def test_sigterm_stops_every_worker_and_exits_0(workers2: ServerProcess) -> None:
    children = children_of(workers2.proc.pid)
    workers2.proc.send_signal(signal.SIGTERM)
    assert workers2.proc.wait(15) == 0, workers2.logs()
    assert all(gone(pid) for pid in children)
    assert workers2.logs().count('"keysvc stopped"') == 2


def test_a_worker_dying_stops_the_others_and_fails(workers2: ServerProcess) -> None:
    first, second = children_of(workers2.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert workers2.proc.wait(15) != 0
    assert gone(second)
    assert "worker exited unexpectedly" in workers2.logs()


def test_a_killed_parent_takes_its_workers_with_it(workers2: ServerProcess) -> None:
    # SIGKILL (the OOM killer, `kill -9` of the supervised pid) gives the parent no
    # chance to stop its children: orphans would keep serving the port, unsupervised,
    # and the restarted set would find it taken.
    children = children_of(workers2.proc.pid)
    workers2.proc.kill()
    workers2.proc.wait(15)
    try:
        wait_for(lambda: all(gone(pid) for pid in children))
    finally:
        for pid in children:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_port_0_gives_every_worker_the_same_port(redis_url: str, tmp_path: Path) -> None:
    server = launch(redis_url, tmp_path, "--workers", "2", listen="127.0.0.1:0", wait=False)
    try:
        wait_for(lambda: "keysvc starting workers" in server.logs())
        line = next(line for line in server.logs().splitlines() if "keysvc starting workers" in line)
        port = int(json.loads(line)["listen"].rsplit(":", 1)[1])
        assert port != 0
        wait_for(lambda: len(listening(children_of(server.proc.pid), port)) == 2)
    finally:
        server.stop()


@pytest.mark.parametrize("flag", ["--listen", "--admin-listen"])
def test_unix_socket_with_workers_is_refused(flag: str, tmp_path: Path) -> None:
    out = subprocess.run(
        keysvc_cmd("serve", "--workers", "2", "--store", f"sqlite:///{tmp_path}/k.db",
                   flag, f"unix:{tmp_path}/keysvc.sock"),
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    variable = "KEYSVC_" + flag.removeprefix("--").replace("-", "_").upper()
    assert variable in out.stderr and "KEYSVC_WORKERS" in out.stderr


def test_zero_workers_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(keysvc_cmd("serve", "--workers", "0", "--store", f"sqlite:///{tmp_path}/k.db"),
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "KEYSVC_WORKERS" in out.stderr


def test_children_load_exactly_the_parents_settings() -> None:
    # Pure, but it guards the one thing the parent hands its children.
    from keysvc.app.settings import load
    from keysvc.app.workers import child_environment

    parent = load(env={}, overrides={"workers": 3, "cache_ttl_s": 0.1 + 0.2, "fail_open": True,
                                     "listen": "127.0.0.1:7000", "store": "redis://127.0.0.1:1/0"})
    child = load(env=child_environment(parent))
    assert child == dataclasses.replace(parent, workers=1)
