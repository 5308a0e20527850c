"""keysvc on a real Redis Cluster and behind real Sentinels: the walk-through, and a master killed under it.

A failover test starts its own topology (it kills a node), runs a real
`keysvc serve` on it, and shows: cached keys answer throughout; once the
replica is promoted, cache misses are answered again; every admin write that
was acknowledged is still there (writes wait for a replica, `WAIT`); the
event follower carries on across the failover (a revocation made after it
reaches the server's cache).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests._topology import Cluster, SentinelSet, wait_until
from tests.e2e._servers import ServerProcess, bootstrap
from tests.e2e.test_walkthrough import admin_md, validate, wait_for_code, walk

pytestmark = pytest.mark.e2e

# Generous: a loaded 2-core machine, and WAIT for a replica inside each admin write.
_SERVE = ("--store-timeout-ms", "1000", "--cache-ttl-s", "300")
FAILOVER_BOUND_S = 90


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_walkthrough_on_a_redis_topology(
    start_server: Callable[..., ServerProcess], request: pytest.FixtureRequest, kind: str
) -> None:
    topology: Cluster | SentinelSet = request.getfixturevalue("redis_" + kind)
    topology.flush()
    _, admin_secret = bootstrap(topology.url, *_SERVE[:2])
    first, second = start_server(topology.url, *_SERVE), start_server(topology.url, *_SERVE)
    secrets = walk(first, second, admin_secret, propagation_bound_s=5.0)
    for server in (first, second):
        logs = server.logs()
        for secret in secrets:
            assert secret not in logs and secret[3:] not in logs


class Writer(threading.Thread):
    """Creates keys one after another until stopped; remembers the secrets of those acknowledged."""

    def __init__(self, server: ServerProcess, admin_secret: str) -> None:
        super().__init__(daemon=True)
        self._stub = server.stub()
        self._md = admin_md(admin_secret)
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.refused = 0

    def run(self) -> None:
        for i in range(2000):  # bounded: about 0.05 s apart, stopped long before
            if self.stop.is_set():
                return
            try:
                reply = self._stub.CreateKey(pb.CreateKeyRequest(
                    owner_id="writer", name=f"w{i}", request_id=f"w{i}"), metadata=self._md, timeout=10)
                self.acked.append(reply.secret)
            except grpc.RpcError:
                self.refused += 1
            self.stop.wait(0.05)


def _failover(
    start_server: Callable[..., ServerProcess], url: str,
    kill: Callable[[], None], promoted: Callable[[], bool], rejoin: Callable[[], None],
) -> None:
    _, admin_secret = bootstrap(url, *_SERVE[:2])
    server = start_server(url, *_SERVE)
    md = admin_md(admin_secret)
    admin = server.stub()

    def create(name: str) -> str:
        return str(admin.CreateKey(pb.CreateKeyRequest(owner_id="acme", name=name),
                                   metadata=md, timeout=10).secret)

    cached = create("cached")
    assert validate(server, cached).code == pb.CODE_VALID  # now in the server's cache
    unread = [create(f"unread{i}") for i in range(3)]  # acknowledged, never validated
    writer = Writer(server, admin_secret)
    writer.start()
    wait_until(lambda: len(writer.acked) >= 3, 30, "the writer's first acknowledged keys")

    kill()

    def cached_answers_until_promoted() -> bool:
        # The cached key answers from the cache all the while the store fails over.
        assert validate(server, cached).code == pb.CODE_VALID
        return promoted()

    wait_until(cached_answers_until_promoted, FAILOVER_BOUND_S, "a replica promoted")
    # After the failover a cache miss is answered from the new master again.
    wait_until(lambda: validate(server, unread[0]).code == pb.CODE_VALID, FAILOVER_BOUND_S,
               "a cache miss answered after the failover")
    writer.stop.set()
    writer.join(timeout=30)
    print(f"writer: {len(writer.acked)} creates acknowledged, {writer.refused} refused")

    # No acknowledged admin write was lost.
    for secret in [*unread, *writer.acked]:
        assert validate(server, secret).code == pb.CODE_VALID, "an acknowledged key was lost"

    # The killed node comes back as a replica, so writes can be acknowledged again,
    # and the event follower, still on the same log, evicts a revoked key.
    rejoin()
    key_id = validate(server, cached).key_id

    def revoke() -> bool:
        try:
            # A refusal may follow a write that was applied but not yet replicated:
            # the retry with the same request_id is answered from its mark.
            admin.RevokeKey(pb.RevokeKeyRequest(key_id=key_id, reason="after failover",
                                                request_id="revoke-after-failover"),
                            metadata=md, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:  # only "not now" is waited out
                raise
            return False
        return True

    wait_until(revoke, FAILOVER_BOUND_S, "a revocation acknowledged after the failover")
    took = wait_for_code(server, cached, pb.CODE_REVOKED, bound_s=30)
    print(f"revocation after the failover reached the cache in {took * 1000:.0f} ms")
    for secret in cached, *unread:
        assert secret not in server.logs()


def test_cluster_master_killed(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    try:
        victim = cluster.master_of("{keysvc}")

        def promoted() -> bool:
            return cluster.master_of("{keysvc}") is not victim

        def rejoin() -> None:
            victim.start()
            wait_until(lambda: victim.client().info("replication")["role"] == "slave"
                       and victim.client().info("replication")["master_link_status"] == "up",
                       FAILOVER_BOUND_S, "the killed master back as a replica")

        _failover(start_server, cluster.url, victim.kill, promoted, rejoin)
    finally:
        cluster.stop()


def test_sentinel_master_killed(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    sentinels = SentinelSet(tmp_path / "sentinel")
    try:
        victim = sentinels.master()

        def promoted() -> bool:
            return sentinels.master() is not victim

        def rejoin() -> None:
            victim.start()
            # The sentinels turn the old master into a replica of the new one.
            wait_until(lambda: sentinels.master().client().info("replication")["connected_slaves"] >= 1,
                       FAILOVER_BOUND_S, "the killed master back as a replica")

        _failover(start_server, sentinels.url, victim.kill, promoted, rejoin)
    finally:
        sentinels.stop()

