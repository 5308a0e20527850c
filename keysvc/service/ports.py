"""What the services need from outside, as Protocols the app layer implements.

The services never import telemetry or read the system clock themselves: the
one wiring module (`keysvc.app.server`) hands them an `Auditor` (implemented
by `keysvc.app.telemetry.SpanAuditor`: a span and a log line per change) and
a `Clock` (`time.time` in production; a settable one in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["AuditRecord", "Auditor", "Clock", "wall_clock"]

Clock = Callable[[], float]
"""Seconds since the epoch, as `time.time`; every expiry and window is judged against it."""

wall_clock: Clock = time.time


class AuditRecord(Protocol):
    """The fields of one audit event in progress."""

    def set(self, name: str, value: str | int | bool) -> None:
        """Add field `name` (redacted by the implementation if it could hold a secret)."""


class Auditor(Protocol):
    """Records one audit event per admin change or refusal.

    `audit(...)` is a context manager around the change: its outcome is "ok"
    unless the block sets `outcome` or raises (then the exception's class name,
    never its message); the exception propagates.
    """

    def audit(
        self, action: str, *, actor: str, target_key_id: str = "", target_policy_id: str = "",
        **attrs: str | int | bool,
    ) -> AbstractContextManager[AuditRecord]:
        """Open the record of `action` by `actor` on the named target."""
