"""A bounded table that makes equal immutable values one object. Pure, no I/O.

Cached records repeat a few values across thousands of keys (scope tuples,
metadata such as a team or an environment); keeping one object for each
distinct value is a good part of the per-key memory at 100k+ keys.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SharedValues"]

_V = TypeVar("_V")


class SharedValues(Generic[_V]):
    """Returns the first value seen for each key; starts over when full.

    Starting over costs sharing, never correctness. Safe to use from several
    threads: a lookup takes no lock (one read of a value never changed in
    place); adding and starting over hold one lock, so a race only makes two
    equal values.

    Args:
        max_size: most distinct keys remembered.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self._values: dict[Hashable, _V] = {}
        self._max_size = max_size
        self._lock = threading.Lock()

    def share(self, key: Hashable, value: _V) -> _V:
        """The value first seen under `key` (which must identify `value`), else `value`."""
        values = self._values
        shared = values.get(key)
        if shared is None:
            with self._lock:
                if len(values) >= self._max_size:
                    values.clear()
                shared = values.setdefault(key, value)
        return shared
