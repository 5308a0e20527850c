"""Policies, meta values and request marks of `RedisStore`: each write one lifecycle script."""

from __future__ import annotations

from keysvc.core.errors import (
    InvalidArgumentError,
    NotFoundError,
)
from keysvc.core.model import (
    Event,
    Policy,
)
from keysvc.store.base import PolicyPage, RequestMark
from keysvc.store.codec import (
    check_page_size,
    decode_int_token,
    dumps,
    event_to_dict,
    loads,
    mark_from_json,
    paginate,
    policy_from_dict,
    policy_to_dict,
)
from keysvc.store.redis.io import text
from keysvc.store.redis.keyspace import RedisKeyspace, refused

__all__ = ["RedisPolicies"]


class RedisPolicies(RedisKeyspace):
    """The policy, meta and request-mark half of `RedisStore`."""

    async def _put_policy_version(
        self, policy: Policy, event: Event, mode: str, mark: RequestMark | None
    ) -> None:
        keys = [
            self._events,
            self._k("policies"),
            self._k("policy", policy.policy_id),
            self._k("policy", policy.policy_id, "versions"),
        ]
        args: list[str | int] = [
            self._retention,
            dumps(event_to_dict(event)),
            policy.policy_id,
            policy.version,
            dumps(policy_to_dict(policy)),
            mode,
        ]
        self._with_mark(keys, args, mark)
        reply = await self._call.write(self._ack.script(self._put_policy, keys, args))
        if reply[0] != "OK":
            raise refused(str(reply[0]), f"policy {policy.policy_id}")

    async def create_policy(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert version 1 of a new policy and its event in one script."""
        if policy.version != 1:
            raise InvalidArgumentError("a new policy starts at version 1")
        await self._put_policy_version(policy, event, "create", mark)

    async def get_policy(self, policy_id: str, version: int = 0) -> Policy | None:
        """Return the current version (version=0) or a given version, or None."""
        if version == 0:
            body = await self._call.read(lambda: self._client.get(self._k("policy", policy_id)))
        else:
            versions = self._k("policy", policy_id, "versions")
            body = await self._call.read(lambda: self._client.hget(versions, str(version)))
        return None if body is None else policy_from_dict(loads(body))

    async def list_policies(self, page_size: int, page_token: str) -> PolicyPage:
        """Page through the current version of every policy, ordered by policy_id."""
        check_page_size(page_size)
        ids, token = await self._page_ids(self._k("policies"), "policies", page_size, page_token)
        bodies = await self._mget([self._k("policy", i) for i in ids])
        return PolicyPage([policy_from_dict(loads(b)) for b in bodies if b is not None], token)

    async def put_policy_version(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Append `policy` as the new current version if the current one is `version - 1`."""
        await self._put_policy_version(policy, event, "put", mark)

    async def list_policy_versions(
        self, policy_id: str, page_size: int, page_token: str
    ) -> PolicyPage:
        """Page through one policy's versions, newest first (they are 1..current)."""
        check_page_size(page_size)
        kind = "versions:" + policy_id
        before = decode_int_token(kind, page_token) if page_token else 0
        current = await self.get_policy(policy_id)
        if current is None:
            raise NotFoundError(f"policy {policy_id} not found")
        top = current.version if before == 0 else min(before - 1, current.version)
        wanted, token = paginate(
            [str(v) for v in range(top, max(0, top - page_size - 1), -1)], page_size, kind, str
        )
        versions = self._k("policy", policy_id, "versions")
        bodies = await self._call.read(lambda: self._client.hmget(versions, wanted)) if wanted else []
        return PolicyPage([policy_from_dict(loads(b)) for b in bodies if b is not None], token)

    # -- meta -------------------------------------------------------------------

    async def get_meta(self, name: str) -> str | None:
        """Return a small named value, or None."""
        value = await self._call.read(lambda: self._client.hget(self._k("meta"), name))
        return None if value is None else text(value)

    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value."""
        await self._call.write(self._ack.command(self._k("meta"), "HSET", self._k("meta"), name, value))

    async def ensure_meta(self, name: str, value: str) -> str:
        """Set a small named value unless one is set (HSETNX); return the stored one."""
        stored = await self._call.write(
            self._ack.script(self._ensure_meta, [self._k("meta")], [name, value])
        )
        return text(stored)

    # -- request ids ------------------------------------------------------------

    async def get_request(self, actor: str, request_id: str, now: float) -> RequestMark | None:
        """Return the unexpired mark of (actor, request_id), or None."""
        body = await self._call.read(lambda: self._client.get(self._k("req", actor, request_id)))
        if body is None:
            return None
        mark = mark_from_json(actor, request_id, body)
        return mark if mark.expires_at > now else None
