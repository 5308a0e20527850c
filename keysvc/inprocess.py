"""Validate API keys inside a Python service's own process: the sidecar's data plane, without the hop.

A cached key is answered on the caller's thread by the same code a sidecar
runs (`Validator.check_cached`, about 2 us of CPU), where a Validate call to a
sidecar costs a gRPC round trip (~150 us of CPU on each side). Everything
else is the sidecar's too, built by the same `keysvc.app.dataplane.assemble`:
the store (`KEYSVC_STORE`), the bounded cache and its stale window, the
event follower (a revocation made through any sidecar's admin API reaches
this cache the same way, within milliseconds), rate limits, quotas and
counters in the store, last-use write-behind, fail-closed answers when the
store is down, and the supervised background tasks (restarted with backoff
when they fail).

Two front ends:

- `AsyncKeyValidator` runs on the caller's running asyncio loop::

      async with AsyncKeyValidator.open("redis://127.0.0.1:6379/0") as keys:
          decision = await keys.validate(secret, scopes=["orders:read"], client_ip=ip)

- `KeyValidator` (synchronous, thread-safe) owns a background loop thread:
  hits are answered on the calling thread without touching the loop; misses
  and keys with counters go through the loop and wait at most the store
  budget (plus a margin), then are answered as a sidecar answers a miss it
  cannot ask the store about (stale window, else UNAVAILABLE).

Both answer a `keysvc.core.model.Decision` (`valid`, `code`, `record` with
`key_id`, `owner_id`, `scopes`, `metadata`; `scopes`, `rate_limit`,
`quota_remaining`, `policy`), never the plaintext key, which is hashed and
dropped. Settings come from the same KEYSVC_* variables as the sidecar's,
overridden by keyword arguments (`cache_size=...`).

Fork safety: build validators after forking (e.g. in a pre-fork server's
per-worker hook). A validator inherited through `fork()` has no loop thread or
follower in the child: every call there raises RuntimeError rather than
answering from a cache nothing keeps current.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from keysvc.app import dataplane
from keysvc.app import settings as _settings
from keysvc.app.settings import Settings
from keysvc.app.startup import check_store
from keysvc.app.supervisor import TaskState, cancel_all
from keysvc.core.model import Code, Decision, RateLimitState
from keysvc.service.events import FollowerHealth
from keysvc.service.validator import ValidationRequest
from keysvc.store.base import Store

__all__ = ["AsyncKeyValidator", "Code", "Decision", "KeyValidator", "RateLimitState", "ValidatorHealth"]

_T = TypeVar("_T")
# What ValidationRequest(...) does, minus its Python-level __new__ frame (~0.1 us of a ~2 us hit).
_new_request = tuple.__new__

# A miss waits for the loop at most the store budget plus this (the loop's own scheduling).
_LOOP_MARGIN_S = 1.0
_START_TIMEOUT_S = 30.0
_ASYNC_CLOSED = "this AsyncKeyValidator is closed or was inherited through fork(): open a new one"
_CLOSED = "this KeyValidator is closed or was inherited through fork(): open a new one"


@dataclass(frozen=True, slots=True)
class ValidatorHealth:
    """What an in-process validator's background work is doing (a snapshot).

    `ready` is the sidecar's readiness: the store answers and every
    supervised task runs. A validator that is not ready still answers
    (cached keys within the stale window, others UNAVAILABLE).
    """

    ready: bool
    store_ok: bool
    follower: FollowerHealth
    tasks: tuple[TaskState, ...]
    loop_alive: bool = True
    """`KeyValidator` only: its loop thread is running (always True for the asyncio one)."""


_LIVE: weakref.WeakSet[KeyValidator] = weakref.WeakSet()
_LIVE_ASYNC: weakref.WeakSet[AsyncKeyValidator] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class _Statuses:
    """The health servicer the data plane publishes to: in-process, `health()` reads the states instead."""

    def set(self, service: str, status: Any) -> None:
        """Accept one published status (nothing else reads them here)."""


def _settings_of(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    if settings is not None and not overrides:
        return settings
    if settings is not None:
        return _settings.load({}, {**_as_overrides(settings), **overrides})
    return _settings.load(None, overrides)


def _as_overrides(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


class AsyncKeyValidator:
    """Validates keys on the caller's asyncio loop against the sidecar's store, cache and follower.

    Use as an async context manager (or `await start()` ... `await aclose()`),
    on one loop: every call after `start` must come from that loop.

    Args:
        settings: the resolved settings (`keysvc.app.settings.load`).
        store: a store to use instead of the one the settings name.
    """

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self._plane = dataplane.assemble(settings, store, _Statuses(), ())
        self.validator = self._plane.validator
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Closed, or inherited through fork(): nothing keeps the cache current, so calls are refused.
        self._closed = False
        with _LIVE_LOCK:
            _LIVE_ASYNC.add(self)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Self:
        """Build from `settings` (default: the KEYSVC_* environment), then keyword overrides.

        Raises:
            ConfigError: a setting is invalid (the message names its variable).
        """
        return cls(_settings_of(settings, overrides))

    @classmethod
    def open(cls, store: str, **overrides: Any) -> Self:
        """Build for the store URL `store` (KEYSVC_* settings for the rest, then `overrides`).

        Raises:
            ConfigError: a setting is invalid.
        """
        return cls.from_settings(None, store=store, **overrides)

    async def start(self) -> None:
        """Check the store, position the event follower and start the background tasks.

        A store that is only down now is waited for in the background (answers
        are UNAVAILABLE until it comes back).

        Raises:
            ConfigError: the store can never work (a SQLite file that is not a database).
            RuntimeError: already started.
        """
        if self._loop is not None or self._closed:
            raise RuntimeError("this validator was already started")
        self._loop = asyncio.get_running_loop()
        plane = self._plane
        await check_store(plane.store, self.settings)
        await plane.status.start()
        await dataplane.start_follower(plane)
        self._tasks = dataplane.spawn_tasks(plane)

    async def aclose(self) -> None:
        """Stop the background tasks, write the last uses not yet written, close the store (once)."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        await dataplane.release(self._plane)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def validate(
        self, key: str, scopes: Sequence[str] = (), client_ip: str = "", cost: int = 1
    ) -> Decision:
        """Decide one call as a sidecar's Validate would; never raises for a bad key or a store outage.

        Args:
            key: the secret the caller presented (hashed here, never kept or logged).
            scopes: scopes the call needs; all must be granted.
            client_ip: the caller's address, for policies with allowed CIDRs.
            cost: units taken from the key's quota.

        Raises:
            RuntimeError: called before `start`, after `aclose`, or from another loop than `start`'s.
        """
        if self._closed:
            raise RuntimeError(_ASYNC_CLOSED)
        request = ValidationRequest(key, scopes, client_ip, cost)
        decision = self.validator.check_cached(request)
        if decision is not None:
            return decision
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError("an AsyncKeyValidator answers on the loop it was started on")
        return await self.validator.validate_from_store(request)

    def health(self) -> ValidatorHealth:
        """The store's reachability, the follower's state and each background task's."""
        plane = self._plane
        tasks = tuple(TaskState(t.name, t.up, t.restarts, t.last_error) for t in plane.supervisor.snapshot())
        ready = plane.status.store_ok and bool(tasks) and all(t.up for t in tasks)
        return ValidatorHealth(ready, plane.status.store_ok, plane.follower.health(), tasks)


def _forked() -> None:
    """In a forked child: no inherited validator has its loop thread, or its follower (the parent's tasks).

    Inherited asyncio ones are closed without touching the parent's store connections.
    """
    for validator in list(_LIVE):
        validator._forked = validator._unusable = True  # the child's only thread writes them
    for inherited in list(_LIVE_ASYNC):
        inherited._closed = True


os.register_at_fork(after_in_child=_forked)


class KeyValidator:
    """Synchronous, thread-safe in-process validation, with a background loop thread of its own.

    Cache hits are answered on the calling thread (`Validator.check_cached`,
    which takes only its short counting locks); misses and keys with counters
    run on the loop thread, and the caller waits at most the store budget plus
    a margin. Use as a context manager, or call `close()`.

    Args:
        settings: the resolved settings.
        store: a store to use instead of the one the settings name.
        start_timeout_s: the most `__init__` waits for the start-up checks.

    Raises:
        ConfigError: the store can never work.
    """

    def __init__(self, settings: Settings, *, store: Store | None = None,
                 start_timeout_s: float = _START_TIMEOUT_S) -> None:
        self._forked = False
        self._closed = False
        self._unusable = False  # closed or forked: one flag for the hot path to read
        # Work on the loop not yet answered: close() lets it finish, refuses what never ran.
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._loop_gone = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="keysvc-validator", daemon=True)
        self._thread.start()
        try:
            self._inner: AsyncKeyValidator = self._call(self._make(settings, store), start_timeout_s)
        except BaseException:
            self._stop_loop()
            raise
        try:
            self._call(self._inner.start(), start_timeout_s)
        except BaseException:
            try:  # release the store the failed start opened, then the loop
                self._call(self._inner.aclose(), start_timeout_s)
            finally:
                self._stop_loop()
            raise
        self.validator = self._inner.validator
        self._check_cached = self.validator.check_cached
        self._wait_s = settings.store_timeout_ms / 1000 * (1 + settings.store_retries) + _LOOP_MARGIN_S
        with _LIVE_LOCK:
            _LIVE.add(self)

    @staticmethod
    async def _make(settings: Settings, store: Store | None) -> AsyncKeyValidator:
        # Built on the loop's thread: asyncio objects inside bind to the loop that runs them.
        return AsyncKeyValidator(settings, store=store)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Self:
        """Build from `settings` (default: the KEYSVC_* environment), then keyword overrides.

        Raises:
            ConfigError: a setting is invalid, or the store can never work.
        """
        return cls(_settings_of(settings, overrides))

    @classmethod
    def open(cls, store: str, **overrides: Any) -> Self:
        """Build for the store URL `store` (KEYSVC_* settings for the rest, then `overrides`).

        Raises:
            ConfigError: a setting is invalid, or the store can never work.
        """
        return cls.from_settings(None, store=store, **overrides)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, work: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        with self._pending_lock:
            if self._loop_gone:  # a call that passed the closed check as close() ran
                work.close()
                raise RuntimeError(_CLOSED)
            future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(work, self._loop)
            self._pending.add(future)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise
        finally:
            with self._pending_lock:
                self._pending.discard(future)

    def validate(self, key: str, scopes: Sequence[str] = (), client_ip: str = "", cost: int = 1) -> Decision:
        """Decide one call as a sidecar's Validate would; never raises for a bad key or a store outage.

        Args:
            key: the secret the caller presented (hashed here, never kept or logged).
            scopes: scopes the call needs; all must be granted.
            client_ip: the caller's address, for policies with allowed CIDRs.
            cost: units taken from the key's quota.

        Raises:
            RuntimeError: the validator is closed, inherited through fork(), or
                called from its own loop thread (that would wait on itself).
        """
        if self._unusable:
            raise RuntimeError(_CLOSED)
        request = _new_request(ValidationRequest, (key, scopes, client_ip, cost))
        decision = self._check_cached(request)
        if decision is not None:
            return decision
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("KeyValidator.validate called on its own loop thread")
        try:
            decision = self._call(self.validator.validate_from_store(request), self._wait_s)
        except TimeoutError:  # the loop is held up: answer as a sidecar sheds a miss
            return self.validator.shed(request)
        return decision

    def health(self) -> ValidatorHealth:
        """The store's reachability, the follower's and background tasks' states, the loop thread's."""
        found = self._inner.health()
        alive = self._thread.is_alive() and not self._forked
        return ValidatorHealth(found.ready and alive, found.store_ok, found.follower, found.tasks, alive)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the background work (last uses written, store closed) and the loop thread."""
        if self._closed or self._forked:
            return
        self._closed = self._unusable = True
        # Calls on the loop finish first (bounded): one abandoned there was answered as
        # shed (UNAVAILABLE, or VALID failing open) although the store was up.
        with self._pending_lock:
            in_flight = list(self._pending)
        concurrent.futures.wait(in_flight, min(timeout_s, self._wait_s))
        try:
            self._call(self._inner.aclose(), timeout_s)
        finally:
            self._stop_loop()
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        with self._pending_lock:
            self._loop_gone = True
            abandoned, self._pending = self._pending, set()
        for future in abandoned:  # handed over as close() ran: the loop never answers them
            if not self._thread.is_alive() and not future.done() and future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(_CLOSED))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
