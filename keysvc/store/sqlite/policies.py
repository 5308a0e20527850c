"""Policies, meta values and request marks of `SqliteStore`."""

from __future__ import annotations

import sqlite3
from functools import partial

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.model import (
    Event,
    Policy,
)
from keysvc.store.base import PolicyPage, RequestMark
from keysvc.store.codec import (
    check_page_size,
    decode_int_token,
    decode_token,
    paginate,
)
from keysvc.store.sqlite import ops
from keysvc.store.sqlite.base import SqliteBase

__all__ = ["SqlitePolicies"]


class SqlitePolicies(SqliteBase):
    """The policy, meta and request-mark half of `SqliteStore`."""

    async def create_policy(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert version 1 of a new policy and its event in one transaction."""
        if policy.version != 1:
            raise InvalidArgumentError("a new policy starts at version 1")
        await self._change(partial(ops.insert_policy, policy=policy), event, mark)

    async def get_policy(self, policy_id: str, version: int = 0) -> Policy | None:
        """Return the current version (version=0) or a given version, or None."""
        return await self._run(partial(ops.get_policy, policy_id=policy_id, version=version))

    async def list_policies(self, page_size: int, page_token: str) -> PolicyPage:
        """Page through the current version of every policy, ordered by policy_id."""
        check_page_size(page_size)
        after = decode_token("policies", page_token) if page_token else ""
        rows = await self._run(partial(ops.policies_page, after=after, limit=page_size + 1))
        policies, token = paginate(rows, page_size, "policies", lambda p: p.policy_id)
        return PolicyPage(policies, token)

    async def put_policy_version(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Append `policy` as the new current version if the current one is `version - 1`."""
        await self._change(partial(ops.put_policy_version, policy=policy), event, mark)

    async def list_policy_versions(
        self, policy_id: str, page_size: int, page_token: str
    ) -> PolicyPage:
        """Page through one policy's versions, newest first."""
        check_page_size(page_size)
        kind = "versions:" + policy_id
        before = decode_int_token(kind, page_token) if page_token else 2**62
        rows = await self._run(partial(ops.policy_versions_page, policy_id=policy_id,
                                       before=before, limit=page_size + 1))
        policies, token = paginate(rows, page_size, kind, lambda p: str(p.version))
        return PolicyPage(policies, token)

    # -- meta -------------------------------------------------------------------

    async def get_meta(self, name: str) -> str | None:
        """Return a small named value, or None."""
        row = await self._run(
            lambda conn: conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value."""
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )

    async def ensure_meta(self, name: str, value: str) -> str:
        """Set a small named value unless one is set; return the stored one."""

        def work(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
            return str(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

        return await self._write(work)

    # -- request ids --------------------------------------------------------------

    async def get_request(self, actor: str, request_id: str, now: float) -> RequestMark | None:
        """Return the unexpired mark of (actor, request_id), or None."""
        return await self._run(
            partial(ops.get_request, actor=actor, request_id=request_id, now=now)
        )
