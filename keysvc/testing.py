"""Test helpers for code that uses keysvc: capture its spans and its log lines, inject store faults."""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from keysvc.app import telemetry
from keysvc.store.base import Store

__all__ = ["AuditEvent", "CapturedLogs", "FaultyStore", "RecordingAuditor", "capture_logs", "capture_spans"]


@dataclass
class AuditEvent:
    """One audit event as a `RecordingAuditor` saw it: the action and every field, outcome included."""

    action: str
    fields: dict[str, str | int | bool] = field(default_factory=dict)

    def set(self, name: str, value: str | int | bool) -> None:
        """Record field `name` under its log name, as telemetry does ("target.key_id" -> "target_key_id")."""
        self.fields[name.removeprefix("keysvc.").replace(".", "_")] = value


class RecordingAuditor:
    """A `keysvc.service.ports.Auditor` that keeps every event in `events`, with no tracing SDK.

    Pass it as `AdminService(store, auditor=RecordingAuditor())` to assert what
    was audited. Outcomes follow the real auditor: "ok", the value the block
    set, or the class name of the exception that left the block.
    """

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    @contextmanager
    def audit(
        self, action: str, *, actor: str, target_key_id: str = "", target_policy_id: str = "",
        **attrs: str | int | bool,
    ) -> Iterator[AuditEvent]:
        """Record one event around the block."""
        event = AuditEvent(action, {"actor": actor, "target_key_id": target_key_id,
                                    "target_policy_id": target_policy_id, **attrs})
        self.events.append(event)
        try:
            yield event
        except BaseException as exc:
            event.fields["outcome"] = type(exc).__name__
            raise
        event.fields.setdefault("outcome", "ok")


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Record every (audit) span in memory for the block.

    A provider is built as `configure_tracing(exporter=...)` builds one, then
    the previous one is put back (not shut down), so captures can nest.
    """
    exporter = InMemorySpanExporter()
    with telemetry.tracing_to(exporter):
        yield exporter


class CapturedLogs(io.StringIO):
    """The rendered JSON log lines written during a `capture_logs` block."""

    def lines(self) -> list[str]:
        """Return the rendered lines, one per event."""
        return self.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        """Return each line parsed from JSON."""
        return [json.loads(line) for line in self.lines()]


@contextmanager
def capture_logs() -> Iterator[CapturedLogs]:
    """Capture every log event, at debug level and above, as JSON lines.

    The previous logging configuration is restored afterwards. A logger cached
    before the block at a higher level keeps that level (structlog's caching).
    """
    captured = CapturedLogs()
    with telemetry.logging_to(captured):
        yield captured


class FaultyStore:
    """A real store whose chosen methods raise a given error, for testing what survives it.

    Every call goes to `store`, except calls of a method told to `fail`, which
    raise that error instead, `times` times (or until `heal`). Faults may be
    set from any thread (a test's) while the event loop calls the store.

    Args:
        store: the real backend to forward to.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[Exception, int]] = {}  # method -> (error, calls left; -1: forever)
        self._raised: dict[str, int] = {}  # method -> errors raised so far

    def as_store(self) -> Store:
        """Return this object, typed as the Store it stands in for."""
        return cast("Store", self)

    def fail(self, method: str, error: Exception, times: int = -1) -> None:
        """Make the next `times` calls of `method` (-1: every call until `heal`) raise `error`."""
        getattr(self.store, method)  # a typo fails here, not silently later
        with self._lock:
            self._faults[method] = (error, times)

    def heal(self, method: str | None = None) -> None:
        """Stop failing `method` (None: every method)."""
        with self._lock:
            if method is None:
                self._faults.clear()
            else:
                self._faults.pop(method, None)

    def raised(self, method: str) -> int:
        """Return how many calls of `method` raised an injected error so far."""
        with self._lock:
            return self._raised.get(method, 0)

    def _fault(self, method: str) -> Exception | None:
        with self._lock:
            fault = self._faults.get(method)
            if fault is None:
                return None
            error, left = fault
            if left > 0:
                if left == 1:
                    del self._faults[method]
                else:
                    self._faults[method] = (error, left - 1)
            self._raised[method] = self._raised.get(method, 0) + 1
            return error

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if not callable(target) or name.startswith("_"):
            return target

        @functools.wraps(target)
        async def call(*args: Any, **kwargs: Any) -> Any:
            error = self._fault(name)
            if error is not None:
                raise error
            return await target(*args, **kwargs)

        return call
