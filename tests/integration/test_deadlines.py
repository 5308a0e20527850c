"""Scheduled expiry and revocation become events exactly once, whichever process sees them first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core.model import EventType
from keysvc.service.admin import AdminService
from keysvc.service.deadlines import DeadlineAnnouncer
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from tests._topology import REDIS_KINDS, store_url

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two store clients on one database, as two server processes would have."""
    pair: tuple[Store, Store]
    if request.param == "sqlite":
        pair = (SqliteStore(str(tmp_path / "d.db")), SqliteStore(str(tmp_path / "d.db")))
    else:
        url = store_url(request, request.param)
        pair = (RedisStore(url, timeout_s=1.0), RedisStore(url, timeout_s=1.0))
    yield pair
    for store in pair:
        await store.close()


async def test_each_deadline_is_announced_once(stores: tuple[Store, Store]) -> None:
    clock = [T0]
    first, second = stores
    admin = AdminService(first, auditor=AUDITOR, clock=lambda: clock[0])
    expiring, _ = await admin.create_key("a", owner_id="o", expires_at=T0 + 10)
    revoking, _ = await admin.create_key("a", owner_id="o")
    await admin.revoke_key("a", revoking.record.key_id, grace_s=20)
    both, _ = await admin.create_key("a", owner_id="o", expires_at=T0 + 15)
    await admin.revoke_key("a", both.record.key_id, grace_s=30)
    steady, _ = await admin.create_key("a", owner_id="o")
    start = await first.last_cursor()

    announcers = [DeadlineAnnouncer(s, clock=lambda: clock[0]) for s in (first, second)]
    assert sum(await asyncio.gather(*(a.run_once() for a in announcers))) == 0
    clock[0] = T0 + 16  # expiring and both have expired; nothing revoked yet
    assert sum(await asyncio.gather(*(a.run_once() for a in announcers))) == 2
    assert sum(await asyncio.gather(*(a.run_once() for a in announcers))) == 0
    clock[0] = T0 + 31  # both revocations took effect
    assert sum(await asyncio.gather(*(a.run_once() for a in announcers))) == 2
    clock[0] = T0 + 10_000
    assert sum(await asyncio.gather(*(a.run_once() for a in announcers))) == 0

    events = [(e.type, e.key_id) for e in await first.read_events(start, 100, 0.1)]
    assert sorted(events) == sorted([
        (EventType.KEY_EXPIRED, expiring.record.key_id),
        (EventType.KEY_EXPIRED, both.record.key_id),
        (EventType.KEY_REVOKED_BY_SCHEDULE, revoking.record.key_id),
        (EventType.KEY_REVOKED_BY_SCHEDULE, both.record.key_id),
    ])
    assert steady.record.key_id not in {key_id for _, key_id in events}


async def test_a_new_expiry_is_announced_again(stores: tuple[Store, Store]) -> None:
    clock = [T0]
    store, _ = stores
    admin = AdminService(store, auditor=AUDITOR, clock=lambda: clock[0])
    view, _ = await admin.create_key("a", owner_id="o", expires_at=T0 + 5)
    announcer = DeadlineAnnouncer(store, clock=lambda: clock[0])
    clock[0] = T0 + 6
    assert await announcer.run_once() == 1
    await admin.update_key("a", view.record.key_id, {"expires_at": T0 + 60})
    assert await announcer.run_once() == 0
    clock[0] = T0 + 61
    assert await announcer.run_once() == 1


async def test_an_immediate_revocation_is_announced_once_not_again_by_schedule(
    stores: tuple[Store, Store],
) -> None:
    clock = [T0]
    store, _ = stores
    admin = AdminService(store, auditor=AUDITOR, clock=lambda: clock[0])
    view, _ = await admin.create_key("a", owner_id="o", expires_at=T0 + 50)
    start = await store.last_cursor()
    await admin.revoke_key("a", view.record.key_id)
    announcer = DeadlineAnnouncer(store, clock=lambda: clock[0])
    clock[0] = T0 + 100  # past the revocation and the (now moot) expiry
    assert await announcer.run_once() == 0
    events = [e.type for e in await store.read_events(start, 100, 0.1)]
    assert events == [EventType.KEY_REVOKED]
