"""Page tokens through AdminService on both stores: authenticated, bound, expiring.

A token is only good for the very request it was issued for (same RPC,
filters and page size), for an hour, on any sidecar of the same store.
Everything else is one INVALID_ARGUMENT naming page_token, echoing nothing.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core.errors import InvalidArgumentError
from keysvc.core.model import KeyStatus, Policy
from keysvc.service._pages import PAGE_TOKEN_TTL_S
from keysvc.service.admin import AdminService
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from tests._topology import REDIS_KINDS, store_url

pytestmark = pytest.mark.integration

ACTOR = "operator-a"  # an in-process operator (not a key id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """Makes stores on one shared backend, as several sidecars on one store would have."""
    opened: list[Store] = []
    url = store_url(request, request.param) if request.param != "sqlite" else ""

    def make() -> Store:
        store: Store = (SqliteStore(str(tmp_path / "keysvc.db"), poll_interval_s=0.01)
                        if request.param == "sqlite" else RedisStore(url, timeout_s=2.0))
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def seeded(store: Store, clock: Clock) -> AdminService:
    admin = AdminService(store, auditor=AUDITOR, clock=clock)
    for i in range(5):
        await admin.create_key(ACTOR, owner_id="owner-a", name=f"a{i}")
        await admin.create_key(ACTOR, owner_id="owner-b", name=f"b{i}")
    for i in range(4):
        await admin.create_policy(ACTOR, Policy(policy_id=f"p{i}", version=0, created_at=0, updated_at=0))
    for i in range(4):
        current = await admin.get_policy("p0")
        await admin.update_policy(ACTOR, Policy(policy_id="p0", version=0, created_at=0, updated_at=0, description=f"v{i}"),
                                  expected_version=current.version)
    return admin


async def refused(call: Awaitable[Any], token: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await call
    message = str(info.value)
    assert message.startswith("page_token:")
    if len(token) >= 4:
        assert token not in message


async def test_paging_walks_every_listing(stores: Callable[[], Store]) -> None:
    admin = await seeded(stores(), Clock())
    names: list[str] = []
    token = ""
    while True:
        views, token = await admin.list_keys(owner_id="owner-a", page_size=2, page_token=token)
        names += [v.record.name for v in views]
        if not token:
            break
    assert sorted(names) == [f"a{i}" for i in range(5)]
    versions, token = await admin.list_policy_versions("p0", 2)
    rest, end = await admin.list_policy_versions("p0", 2, token)
    more, last = await admin.list_policy_versions("p0", 2, end)
    assert [p.version for p in versions + rest + more] == [5, 4, 3, 2, 1] and last == ""
    policies, token = await admin.list_policies(3)
    rest_p, end = await admin.list_policies(3, token)
    assert [p.policy_id for p in policies + rest_p] == ["p0", "p1", "p2", "p3"] and end == ""


async def test_a_token_is_bound_to_its_filter_rpc_and_page_size(stores: Callable[[], Store]) -> None:
    admin = await seeded(stores(), Clock())
    _, token = await admin.list_keys(owner_id="owner-a", page_size=2)
    assert token
    # Another owner's filter must not silently skip that owner's first keys.
    await refused(admin.list_keys(owner_id="owner-b", page_size=2, page_token=token), token)
    await refused(admin.list_keys(page_size=2, page_token=token), token)
    await refused(admin.list_keys(owner_id="owner-a", page_size=3, page_token=token), token)
    await refused(admin.list_keys(owner_id="owner-a", page_size=2, page_token=token,
                                  status=KeyStatus.ACTIVE), token)
    await refused(admin.list_keys(owner_id="owner-a", page_size=2, page_token=token,
                                  unused_for_s=60), token)
    await refused(admin.list_policies(2, token), token)
    _, versions_token = await admin.list_policy_versions("p0", 2)
    await refused(admin.list_policy_versions("p1", 2, versions_token), versions_token)
    await refused(admin.list_policies(2, versions_token), versions_token)
    _, policies_token = await admin.list_policies(2)
    await refused(admin.list_keys(owner_id="owner-a", page_size=2, page_token=policies_token),
                  policies_token)
    await refused(admin.list_policy_versions("p0", 2, policies_token), policies_token)
    # The right request still works.
    views, _ = await admin.list_keys(owner_id="owner-a", page_size=2, page_token=token)
    assert [v.record.owner_id for v in views] == ["owner-a", "owner-a"]


def _old_style(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}\x00{value}".encode()).decode().rstrip("=")


async def test_forged_truncated_huge_and_garbage_tokens_are_refused(
    stores: Callable[[], Store],
) -> None:
    admin = await seeded(stores(), Clock())
    _, token = await admin.list_keys(owner_id="owner-a", page_size=2)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    bad = [
        token[:-3], token[:10], flipped, token + "AAAA", "garbage!", "====", "é" * 8,
        _old_style("keys", "key_zzzzzzzzzzzzzzzzz"),
        _old_style("keys", "x" * 100_000),
        _old_style("versions:p0", "9" * 400),  # used to reach SQLite as an integer: OverflowError
        "A" * 200_000,
    ]
    for candidate in bad:
        await refused(admin.list_keys(owner_id="owner-a", page_size=2, page_token=candidate),
                      candidate)
        await refused(admin.list_policies(2, candidate), candidate)
        await refused(admin.list_policy_versions("p0", 2, candidate), candidate)


async def test_a_token_expires_after_an_hour(stores: Callable[[], Store]) -> None:
    clock = Clock()
    admin = await seeded(stores(), clock)
    _, token = await admin.list_keys(owner_id="owner-a", page_size=2)
    _, versions_token = await admin.list_policy_versions("p0", 2)
    clock.now += PAGE_TOKEN_TTL_S - 5
    assert (await admin.list_keys(owner_id="owner-a", page_size=2, page_token=token))[0]
    clock.now += 10
    await refused(admin.list_keys(owner_id="owner-a", page_size=2, page_token=token), token)
    await refused(admin.list_policy_versions("p0", 2, versions_token), versions_token)


async def test_every_sidecar_on_a_store_shares_one_token_key(stores: Callable[[], Store]) -> None:
    clock = Clock()
    await seeded(stores(), clock)
    # Fresh services, racing to make the key on first use: they must agree on one.
    sidecars = [AdminService(stores(), auditor=AUDITOR, clock=clock) for _ in range(4)]
    pages = await asyncio.gather(*(s.list_keys(owner_id="owner-a", page_size=2) for s in sidecars))
    for i, (_, token) in enumerate(pages):
        other = sidecars[(i + 1) % len(sidecars)]
        views, _ = await other.list_keys(owner_id="owner-a", page_size=2, page_token=token)
        assert len(views) == 2


async def test_ensure_meta_race_has_one_winner(stores: Callable[[], Store]) -> None:
    contenders = [stores() for _ in range(6)]
    got = await asyncio.gather(*(s.ensure_meta("shared", f"value-{i}")
                                 for i, s in enumerate(contenders)))
    assert len(set(got)) == 1 and got[0].startswith("value-")
    assert await contenders[0].get_meta("shared") == got[0]
    assert await contenders[1].ensure_meta("shared", "late") == got[0]
