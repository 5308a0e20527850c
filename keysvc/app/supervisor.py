"""Supervises keysvc's background tasks: restart on failure, and say which are up.

Every background loop (the event follower, the last-used write-behind, the
deadline announcer, the store probe) runs under one `TaskSupervisor`. An
unexpected exception is logged with its trace, counted, and the loop is
started again after a capped exponential backoff; a task that ran well for a
while starts over from the shortest backoff. Health and metrics read each
task's `up` and `restarts`.

The supervisor also keeps the liveness heartbeat: a tick on the event loop,
read by the `Watchdog` thread, which fails liveness when the loop stops
ticking (a callback that blocks it, a deadlock), never because the store is
down.

Threads: task states are written on the event loop only; the map of them
grows under a lock, which `snapshot` (the metrics scrape thread's way in)
takes too. The watchdog thread only reads `heartbeat` (one float) and writes
the liveness status through the thread-safe health servicer it is given.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = ["TaskState", "TaskSupervisor", "Watchdog", "cancel_all"]

log = structlog.get_logger("keysvc.supervisor")

_BACKOFF_S = 0.1  # the first restart's delay; doubled per failure in a row
_MAX_BACKOFF_S = 30.0
_HEALTHY_S = 60.0
_TICK_S = 0.25


@dataclass
class TaskState:
    """What health and metrics report about one supervised task."""

    name: str
    up: bool = False
    restarts: int = 0
    last_error: str = ""  # the exception class of the last failure (never its message: it may hold input)


class TaskSupervisor:
    """Runs background coroutines, restarting each one when it fails.

    Args:
        on_change: awaited (on the loop) after any task goes up or down.
        backoff_s: delay before the first restart of a task.
        max_backoff_s: cap of the doubling delay.
        healthy_s: a task that ran this long before failing restarts after `backoff_s` again.
    """

    def __init__(
        self,
        on_change: Callable[[], Awaitable[None]] | None = None,
        *,
        backoff_s: float = _BACKOFF_S,
        max_backoff_s: float = _MAX_BACKOFF_S,
        healthy_s: float = _HEALTHY_S,
    ) -> None:
        self.on_change = on_change
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_s = healthy_s
        self.states: dict[str, TaskState] = {}  # grown under _lock; read it from other threads by snapshot()
        self._lock = threading.Lock()
        self.heartbeat = time.monotonic()  # written by the loop's tick, read by the watchdog

    @property
    def all_up(self) -> bool:
        """True when every supervised task is running."""
        return all(state.up for state in self.snapshot())

    def snapshot(self) -> list[TaskState]:
        """The supervised tasks' states, safe to iterate from any thread."""
        with self._lock:
            return list(self.states.values())

    def spawn(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Start `work()` under supervision as the task `name`; return the asyncio task.

        `work` is called again for every restart, so it must build a fresh coroutine.
        """
        state = TaskState(name)
        with self._lock:
            self.states[name] = state
        return asyncio.create_task(self._supervise(state, work), name=name)

    def ticker(self) -> asyncio.Task[None]:
        """Start the heartbeat the liveness watchdog reads."""
        return asyncio.create_task(self._tick(), name="heartbeat")

    async def _tick(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(_TICK_S)

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def _supervise(self, state: TaskState, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff_s
        while True:
            state.up = True
            await self._changed()
            started = loop.time()
            try:
                await work()
                failure: Exception | None = None
            except asyncio.CancelledError:
                state.up = False
                raise
            except Exception as exc:
                failure = exc
            if loop.time() - started >= self._healthy_s:
                backoff = self._backoff_s
            state.up = False
            state.restarts += 1
            if failure is None:
                state.last_error = "returned"
                log.error("background task returned; restarting", task=state.name,
                          restarts=state.restarts, backoff_s=backoff)
            else:
                state.last_error = type(failure).__name__
                log.error("background task failed; restarting", task=state.name,
                          restarts=state.restarts, backoff_s=backoff, exc_info=failure)
            await self._changed()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)


class Watchdog:
    """A daemon thread that fails liveness while the event loop does not tick.

    Args:
        supervisor: whose `heartbeat` is read.
        stall_s: how long the loop may go without a tick.
        set_live: called from this thread with True/False when liveness changes;
            it must be thread-safe (the sync stack's health servicer is).
    """

    def __init__(self, supervisor: TaskSupervisor, stall_s: float, set_live: Callable[[bool], None]) -> None:
        self._supervisor = supervisor
        self._stall_s = stall_s
        self._set_live = set_live
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keysvc-watchdog", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (returns at once; the thread ends within one check)."""
        self._stopped.set()

    def _run(self) -> None:
        live = True
        interval = min(_TICK_S, self._stall_s / 4)
        while not self._stopped.wait(interval):
            now_live = time.monotonic() - self._supervisor.heartbeat < self._stall_s
            if now_live != live:
                live = now_live
                self._set_live(live)
                # Logging from this thread is safe: structlog's WriteLogger writes under a lock.
                if live:
                    log.info("event loop ticking again: liveness SERVING")
                else:
                    log.error("event loop stalled: liveness NOT_SERVING", stall_s=self._stall_s)


async def cancel_all(tasks: list[asyncio.Task[None]], bound_s: float = 3.0) -> None:
    """Cancel background tasks and wait for them, within a bound.

    On Python 3.11 `asyncio.wait_for` (used by redis-py on every call with a
    socket timeout) can swallow a cancellation that lands as its inner call
    completes, leaving a task running; so cancel again until each one is done,
    and give up (logging it) after `bound_s` rather than hang the shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending and loop.time() >= deadline:
            log.warning("background tasks did not stop", tasks=sorted(t.get_name() for t in pending))
            return
