"""Where `RedisStore`'s Redis is: one server, a Redis Cluster, or a master found through Sentinel.

Store URLs:

    redis://host:port/db, rediss://..., unix:///path.sock   one server (redis-py's URL)
    redis+cluster://[user:password@]host:port[,host:port...][?replicas=N]
    redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>][?replicas=N]

Cluster: the listed nodes are only where the client starts; it learns the
slot map from them and follows MOVED/ASK and failovers (`RedisCluster`).
Sentinel: the listed hosts are sentinels; the client asks them for the
master of `<service>` on every new connection, so after a failover it
reconnects to the promoted replica (`Sentinel.master_for`). The password,
if any, is the data nodes'; sentinels are asked without one.

Acknowledged writes (`Replicated`): on a cluster or behind Sentinel a write
the caller is told succeeded has reached `replicas` replicas (default 1): it
is sent with `WAIT replicas <timeout>` on the same connection, and a WAIT
that counts fewer turns into StoreUnavailableError (the write may still have
been applied: a retry with the same request id is answered from its mark).
`?replicas=0` turns that off; a plain redis:// URL never waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from keysvc.core.errors import StoreUnavailableError

__all__ = ["CLUSTER", "SENTINEL", "Client", "Replicated", "Topology", "make_topology_client", "parse"]

CLUSTER = "redis+cluster"
SENTINEL = "redis+sentinel"
Client = Redis | RedisCluster
"""A client `RedisStore` calls: one server's (Sentinel's too) or a cluster's."""
AnyPipeline = Pipeline | ClusterPipeline


@dataclass(frozen=True)
class Topology:
    """A parsed redis+cluster:// or redis+sentinel:// URL.

    Attributes:
        scheme: `CLUSTER` or `SENTINEL`.
        nodes: (host, port) of the cluster's start nodes, or of the sentinels.
        service: the Sentinel service name ("" for a cluster).
        db: the database number behind Sentinel (a cluster has only 0).
        username: of the data nodes, or None.
        password: of the data nodes, or None.
        replicas: replicas a write must reach before it is acknowledged.
    """

    scheme: str
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    replicas: int = 1


def _node(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("each node must be host:port with a port in 1..65535")
    return host, int(port)


def parse(url: str) -> Topology | None:
    """Return the topology a cluster or sentinel URL names, None for any other URL.

    Raises:
        ValueError: the URL is malformed; the message names the rule, never the
            URL (it may hold a password).
    """
    scheme, _, rest = url.partition("://")
    if scheme not in (CLUSTER, SENTINEL):
        return None
    parts = urlsplit("x://" + rest)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    nodes = tuple(_node(h) for h in hosts.split(",") if h) if hosts else ()
    if not nodes:
        raise ValueError(f"{scheme}:// URL: name at least one host:port")
    query = parse_qs(parts.query)
    unknown = set(query) - {"replicas"}
    if unknown:
        raise ValueError(f"{scheme}:// URL: unknown option(s) {sorted(unknown)}; only replicas=N")
    replicas_text = query.get("replicas", ["1"])[-1]
    if not replicas_text.isdigit():
        raise ValueError(f"{scheme}:// URL: replicas must be a whole number >= 0")
    path = [p for p in parts.path.split("/") if p]
    service, db = "", 0
    if scheme == SENTINEL:
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("redis+sentinel:// URL: the path must be /<service>[/<db>]")
        service, db = unquote(path[0]), int(path[1]) if len(path) == 2 else 0
    elif path:
        raise ValueError("redis+cluster:// URL: takes no path (a cluster has only database 0)")
    return Topology(
        scheme, nodes, service, db, unquote(username) or None,
        unquote(password) if userinfo and ":" in userinfo else None, int(replicas_text),
    )


def make_topology_client(
    topology: Topology, *, socket_timeout: float | None, connect_timeout: float, max_connections: int
) -> Client:
    """Return a cluster or Sentinel client with the same explicit timeouts as the plain one.

    redis-py's own retries are off, as for the plain client (`Caller` retries
    reads); the cluster client still follows MOVED/ASK and refreshes its slot
    map after a connection error, within one call's deadline.
    """
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": True,
        "protocol": 2,  # the reply shapes RedisStore parses are RESP2's
        "retry": Retry(NoBackoff(), 0),
        "username": topology.username,
        "password": topology.password,
    }
    if topology.scheme == CLUSTER:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in topology.nodes],
            max_connections=max_connections, **common,
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(topology.nodes),
        sentinel_kwargs={"socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout,
                         "decode_responses": True, "protocol": 2},
        **common,
    )
    client: Redis = sentinel.master_for(
        topology.service, db=topology.db, max_connections=max_connections
    )
    return client


class Replicated:
    """Runs the writes that must survive a failover: each with WAIT on its own connection.

    WAIT counts the replicas that have every write of *its connection*, so the
    write and its WAIT go out in one pipeline (one connection); on a cluster
    the WAIT is sent to the node that owns the write's key.

    Args:
        client: the store's client.
        replicas: replicas a write must reach (0: do not wait).
        timeout_s: how long WAIT may wait for them.
    """

    def __init__(self, client: Client, replicas: int, timeout_s: float) -> None:
        self._client = client
        self.replicas = replicas
        self._timeout_ms = max(1, int(timeout_s * 1000))

    async def command(self, key: str, *args: Any) -> Any:
        """Run one command on `key` (named again in `args`), acknowledged."""
        if self.replicas == 0:
            return await self._client.execute_command(*args)
        return await self._run(key, lambda pipe: pipe.execute_command(*args))

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered Lua script, acknowledged.

        With a WAIT it is sent as EVAL with its source: a promoted replica
        may not have it cached, and a pipeline cannot load it on NOSCRIPT.
        """
        if self.replicas == 0:
            return await script(keys=keys, args=args)
        body = script.script
        return await self._run(keys[0], lambda pipe: pipe.eval(body, len(keys), *keys, *args))  # type: ignore[arg-type]

    async def _run(self, key: str, queue: Callable[[AnyPipeline], object]) -> Any:
        async with self._client.pipeline(transaction=False) as pipe:
            queue(pipe)
            if isinstance(self._client, RedisCluster):
                node = self._client.get_node_from_key(key)
                pipe.execute_command("WAIT", self.replicas, self._timeout_ms, target_nodes=node)
            else:
                pipe.execute_command("WAIT", self.replicas, self._timeout_ms)
            result, acked = await pipe.execute()
        if int(acked) < self.replicas:
            raise StoreUnavailableError(
                f"redis: write not confirmed by {self.replicas} replica(s) within "
                f"{self._timeout_ms} ms (it may have been applied: retry with the same request_id)"
            )
        return result
