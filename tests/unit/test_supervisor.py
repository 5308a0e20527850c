"""TaskSupervisor: restarts with a doubling, capped backoff that starts over after a healthy run."""

from __future__ import annotations

import asyncio

import pytest

from keysvc.app.supervisor import TaskSupervisor
from keysvc.testing import capture_logs

pytestmark = pytest.mark.unit


async def test_backoff_doubles_to_its_cap_and_restarts_short_after_a_healthy_run() -> None:
    runs = 0
    ninth = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 7:  # the seventh run is healthy (longer than healthy_s), then fails
            await asyncio.sleep(0.2)
        if runs <= 8:
            raise RuntimeError(f"injected failure {runs}")
        ninth.set()
        await asyncio.Event().wait()  # the ninth run stays up

    changes: list[bool] = []
    supervisor = TaskSupervisor(backoff_s=0.01, max_backoff_s=0.08, healthy_s=0.1)

    async def changed() -> None:
        changes.append(supervisor.states["t"].up)

    supervisor.on_change = changed
    with capture_logs() as logs:
        task = supervisor.spawn("t", work)
        async with asyncio.timeout(60):
            await ninth.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [r for r in logs.records() if r["event"] == "background task failed; restarting"]
    assert [r["backoff_s"] for r in failures] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.01, 0.02]
    assert [r["restarts"] for r in failures] == list(range(1, 9))
    assert all("RuntimeError: injected failure" in r["exception"] for r in failures)
    assert supervisor.states["t"].restarts == 8
    assert supervisor.states["t"].last_error == "RuntimeError"
    assert changes == [True, False] * 8 + [True]
    assert not supervisor.states["t"].up  # cancelled: no longer running
