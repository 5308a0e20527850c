"""`Caller`: one deadline per call; retries only inside it; writes never retried."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from keysvc.core.errors import StoreUnavailableError
from keysvc.store.redis.io import Caller

pytestmark = pytest.mark.unit


async def test_a_read_is_retried_within_its_budget() -> None:
    caller = Caller(retries=2, timeout_s=1.0)
    attempts = 0

    async def refused() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RedisConnectionError("refused")
        return "ok"

    assert await caller.read(refused) == "ok"
    assert attempts == 3
    assert caller.budget_s == 3.0


async def test_a_read_that_fails_every_time_gives_up_after_its_retries() -> None:
    caller = Caller(retries=1, timeout_s=1.0)
    attempts = 0

    async def refused() -> str:
        nonlocal attempts
        attempts += 1
        raise RedisConnectionError("refused")

    with pytest.raises(StoreUnavailableError):
        await caller.read(refused)
    assert attempts == 2


async def test_a_read_that_hangs_is_cut_at_the_deadline_and_not_retried_past_it() -> None:
    """An attempt that never answers uses the whole budget: no retry can start after it."""
    caller = Caller(retries=3, timeout_s=0.02)
    attempts = 0

    async def hangs() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(3600)
        return "never"

    with pytest.raises(StoreUnavailableError):
        await caller.read(hangs)
    assert attempts == 1


async def test_a_write_is_one_attempt_cut_at_the_budget() -> None:
    caller = Caller(retries=3, timeout_s=0.02)
    attempts = 0

    async def hangs() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(3600)
        return "never"

    with pytest.raises(StoreUnavailableError):
        await caller.write(hangs())
    assert attempts == 1
