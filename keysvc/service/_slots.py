"""Store slots: a bound on the answers waiting on the store, with a bounded, deadline-limited queue."""

from __future__ import annotations

import asyncio

__all__ = ["StoreSlots"]


class StoreSlots:
    """At most `size` holders at once; at most `size` more wait for a slot, each until its deadline.

    A burst against a healthy store waits a moment for a slot (slots free in
    about a round trip) instead of being refused; against a stalled store the
    waiters give up at their deadline without touching it, and anything
    beyond the queue is refused at once. Used on the loop's thread only.

    Args:
        size: the most holders, and the most waiters, at once.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = asyncio.Semaphore(size)
        self._waiting = 0

    async def acquire(self, deadline: float) -> bool:
        """Take a slot, waiting until `deadline` (loop time) at most; False when refused or late."""
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # free: returns without suspending
            return True
        if self._waiting >= self.size:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await semaphore.acquire()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self._semaphore.release()
