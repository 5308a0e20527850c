"""The Redis clients, key names and helpers every part of `RedisStore` shares (schema: `store`)."""

from __future__ import annotations

from keysvc.core.errors import (
    AlreadyExistsError,
    ConfigError,
    ConflictError,
    DuplicateRequestError,
    NotFoundError,
)
from keysvc.store.base import RequestMark
from keysvc.store.codec import (
    decode_token,
    mark_to_json,
    paginate,
)
from keysvc.store.redis import scripts as lua
from keysvc.store.redis.counters import RedisCounters
from keysvc.store.redis.io import Caller, make_client, text
from keysvc.store.redis.topology import Replicated, parse

__all__ = ["RedisKeyspace", "refused"]


def refused(status: str, what: str) -> Exception:
    """The typed error of a lifecycle script's refusal `status` about `what`."""
    if status == "DUPLICATE":
        return DuplicateRequestError(f"request_id: already used by this admin key ({what})")
    if status == "EXISTS":
        return AlreadyExistsError(f"{what} exists already")
    if status == "NOT_FOUND":
        return NotFoundError(f"{what} not found")
    if status == "CONFLICT":
        return ConflictError(f"{what} was changed by someone else")
    return RuntimeError(f"unexpected script status {status!r}")


class RedisKeyspace:
    """Clients, scripts and key names under one namespace; see `RedisStore` for the arguments."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "keysvc",
        timeout_s: float = 0.1,
        retries: int = 1,
        event_retention: int = 100_000,
        max_connections: int = 64,
        store_clock: bool = True,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ConfigError("KEYSVC_REDIS_NAMESPACE: must be non-empty and hold no '{' or '}'")
        if event_retention < 1:
            raise ValueError("event_retention must be >= 1")
        self._client = make_client(
            url, socket_timeout=timeout_s, connect_timeout=timeout_s,
            max_connections=max_connections,
        )
        self._blocking = make_client(
            url, socket_timeout=None, connect_timeout=timeout_s, max_connections=max_connections
        )
        topology = parse(url)
        self._call = Caller(retries, timeout_s, limit=None if topology is None else max_connections)
        # Lifecycle writes reach a replica before they are acknowledged (`topology`);
        # WAIT's own timeout stays inside the socket timeout of its reply.
        self._ack = Replicated(
            self._client, 0 if topology is None else topology.replicas, timeout_s / 2
        )
        self._timeout_s = timeout_s
        self._retention = event_retention
        self._closed = False
        self._ns = "{" + namespace + "}"
        self._events = self._ns + ":events"
        self._counters = RedisCounters(
            self._client, namespace, self._call, store_clock=store_clock, ack=self._ack
        )
        self._eviction_checked = False
        self._put_keys = self._client.register_script(lua.PUT_KEYS)
        self._put_policy = self._client.register_script(lua.PUT_POLICY)
        self._ensure_meta = self._client.register_script(lua.ENSURE_META)

    def _k(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def _with_mark(
        self, keys: list[str], args: list[str | int], mark: RequestMark | None
    ) -> None:
        """Append a request mark to a lifecycle script's KEYS and ARGV (see lua/mark_check.lua)."""
        if mark is not None:
            keys.append(self._k("req", mark.actor, mark.request_id))
            args += ["replace" if mark.replace else "new", mark_to_json(mark),
                     int(mark.expires_at * 1000), repr(mark.recorded_at)]

    async def _page_ids(
        self, index: str, kind: str, page_size: int, token: str
    ) -> tuple[list[str], str]:
        start = "(" + decode_token(kind, token) if token else "-"
        ids = await self._call.read(
            lambda: self._client.zrangebylex(index, start, "+", start=0, num=page_size + 1)
        )
        return paginate([text(i) for i in ids], page_size, kind, str)

    async def _mget(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        values = await self._call.read(lambda: self._client.mget(keys))
        return [None if v is None else text(v) for v in values]
