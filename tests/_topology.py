"""Real Redis topologies on loopback: a 3+3 Redis Cluster and a Sentinel set (1 master, 1 replica, 3 sentinels).

Each server runs in its own temporary folder with persistence off. The
session fixtures `redis_cluster` and `redis_sentinel` start one of each
for the whole run; failover tests start their own (they kill a node).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

__all__ = ["Cluster", "SentinelSet", "redis_cluster", "redis_sentinel", "wait_until"]

SERVICE = "keysvc-main"


def wait_until(check: Callable[[], bool], bound_s: float, what: str) -> None:
    """Poll `check` until it is true; fail naming `what` past `bound_s`."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound_s:.0f} s")
        time.sleep(0.05)


def _free_port(bus: bool = False) -> int:
    """A loopback port nothing listens on (and, for a cluster node, its bus port + 10000 too)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _replica_online(info: dict[str, object]) -> bool:
    """Whether a master's INFO replication shows a replica done syncing."""
    replica = info.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class _Node:
    """One redis-server (or sentinel) process in its own folder."""

    def __init__(self, workdir: Path, port: int, args: list[str], sentinel: bool = False) -> None:
        self.dir, self.port, self._args, self._sentinel = workdir, port, args, sentinel
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart, with the same folder and port) the process."""
        conf = self.dir / "node.conf"
        if not conf.exists():
            lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "save \"\"",
                     "appendonly no", "loglevel notice", f"logfile {self.dir / 'redis.log'}",
                     *self._args]
            conf.write_text("\n".join(lines) + "\n")
        sentinel = shutil.which("redis-sentinel") if self._sentinel else None
        if sentinel:  # Debian's redis-sentinel
            cmd = [sentinel, str(conf)]
        else:  # the same program, told to be a sentinel
            cmd = ["redis-server", str(conf), *(("--sentinel",) if self._sentinel else ())]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), 20, f"redis on port {self.port} answering PING")

    def client(self) -> redis.Redis:
        """A plain client of this one process."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def pause(self) -> None:
        """SIGSTOP the process: it holds its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process: the fault a failover test injects."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process (kill after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    """A Redis Cluster of 3 masters + 3 replicas on loopback (node timeout 1 s, so failovers are quick)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes: list[_Node] = []
        try:
            for i in range(6):
                port = _free_port(bus=True)
                self.nodes.append(_Node(workdir / f"node{i}", port, [
                    "cluster-enabled yes", "cluster-config-file nodes.conf",
                    "cluster-node-timeout 1000", "cluster-replica-validity-factor 0",
                ]))
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            wait_until(self._settled, 60, "cluster state ok with 3 masters and 3 replicas")
        except BaseException:
            self.stop()
            raise

    def _settled(self) -> bool:
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            client = node.client()
            if client.cluster("info")["cluster_state"] != "ok":  # type: ignore[index]
                return False
            roles = [n.client().info("replication") for n in self.alive()]
            masters = [r for r in roles if r["role"] == "master"]
            if len(masters) != 3 or not all(_replica_online(r) for r in masters):
                return False
        return True

    def alive(self) -> list[_Node]:
        """Nodes whose process runs."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @property
    def url(self) -> str:
        """keysvc's store URL of this cluster (two start nodes: either may be down)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def master_of(self, key: str) -> _Node:
        """The live node that CLUSTER SLOTS names as master of `key`'s slot."""
        client = self.alive()[0].client()
        slot = int(client.cluster("keyslot", key))  # type: ignore[arg-type]
        for start, end, master, *_ in client.cluster("slots"):  # type: ignore[misc]
            if int(start) <= slot <= int(end):
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"no node holds {key}'s slot")

    def replica_of(self, master: _Node) -> _Node:
        """The node replicating `master`."""
        replica = master.client().info("replication")["slave0"]
        return next(n for n in self.nodes if n.port == int(replica["port"]))

    def flush(self) -> None:
        """FLUSHALL every master, and wait until the replicas have it too."""
        for node in self.alive():
            client = node.client()
            if client.info("replication")["role"] == "master":
                client.flushall()
                client.execute_command("WAIT", 1, 5000)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """One master, one replica and 3 sentinels watching them as `SERVICE` (down after 1 s)."""

    def __init__(self, workdir: Path) -> None:
        self.servers: list[_Node] = []
        self.sentinels: list[_Node] = []
        try:
            master = _Node(workdir / "master", _free_port(), [])
            self.servers.append(master)
            self.servers.append(_Node(workdir / "replica", _free_port(),
                                      [f"replicaof 127.0.0.1 {master.port}"]))
            wait_until(lambda: _replica_online(master.client().info("replication")), 30,
                       "the replica in sync with the master")
            for i in range(3):
                self.sentinels.append(_Node(workdir / f"sentinel{i}", _free_port(), [
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 10000",
                ], sentinel=True))
            wait_until(self._watching, 30, "every sentinel sees the replica and the other sentinels")
        except BaseException:
            self.stop()
            raise

    def _watching(self) -> bool:
        for node in self.sentinels:
            state = node.client().sentinel_master(SERVICE)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    @property
    def url(self) -> str:
        """keysvc's store URL: every sentinel, the service, database 0."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{n.port}" for n in self.sentinels) + f"/{SERVICE}/0"

    def master(self) -> _Node:
        """The server the sentinels name as master now."""
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return next(n for n in self.servers if n.port == int(port))

    def replica(self) -> _Node:
        """The server that is not the master now."""
        master = self.master()
        return next(n for n in self.servers if n is not master)

    def flush(self) -> None:
        """FLUSHALL the master and wait until the replica has it too."""
        client = self.master().client()
        client.flushall()
        client.execute_command("WAIT", 1, 5000)

    def stop(self) -> None:
        """Stop every sentinel, then every server."""
        for node in [*self.sentinels, *self.servers]:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster for the whole run (tests FLUSHALL it)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel-watched master and replica for the whole run (tests FLUSHALL it)."""
    sentinels = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        yield sentinels
    finally:
        sentinels.stop()



REDIS_KINDS = ("redis", "cluster", "sentinel")
"""The Redis store kinds every store test runs on: one server, the cluster, behind Sentinel."""


def store_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The Redis of `kind` ("redis", "cluster" or "sentinel") for this test, as a store URL.

    Flushed on the test's first call (the `redis_url` fixture flushes its server
    once per test; a topology is flushed when first asked for in a test).
    """
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    topology: Cluster | SentinelSet = request.getfixturevalue("redis_" + kind)
    marker = "_keysvc_flushed_" + kind
    if not getattr(request.node, marker, False):
        setattr(request.node, marker, True)
        topology.flush()
    return topology.url


def current_store_url(request: pytest.FixtureRequest) -> str:
    """The store URL of the test's `store` fixture parameter (the Redis it runs on)."""
    return store_url(request, str(request.node.callspec.params["store"]))


def client_of(url: str) -> redis.Redis | redis.RedisCluster:
    """A synchronous client of any store URL (a cluster's routes each command to its slot)."""
    if url.startswith("redis+cluster://"):
        host, _, port = url.removeprefix("redis+cluster://").split(",")[0].rpartition(":")
        return redis.RedisCluster(host=host, port=int(port), socket_timeout=5)
    if url.startswith("redis+sentinel://"):
        hosts, service, _db = url.removeprefix("redis+sentinel://").split("/")
        nodes = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts.split(",")]
        master: redis.Redis = redis.Sentinel(nodes, socket_timeout=5).master_for(service)
        return master
    return redis.Redis.from_url(url, socket_timeout=5)


def flush(url: str) -> None:
    """FLUSHALL the Redis behind any store URL (every master of a cluster)."""
    client = client_of(url)
    try:
        client.flushall()
    finally:
        client.close()
