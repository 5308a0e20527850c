"""Test helpers for code that uses keysvc: capture its spans and its log lines."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from keysvc import telemetry

__all__ = ["CapturedLogs", "capture_logs", "capture_spans"]


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Record every span (request and audit) in memory for the block.

    Providers are built as `configure_tracing(exporter=...)` builds them, then
    the previous ones are put back (not shut down), so captures can nest.
    """
    exporter = InMemorySpanExporter()
    previous = telemetry._install(telemetry._build_providers("keysvc", exporter), shutdown=False)
    try:
        yield exporter
    finally:
        telemetry._install(previous)  # shuts down the capture's providers


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
    saved = structlog.get_config()
    saved_processors = list(saved["processors"])
    saved_stream = telemetry._SINK.stream
    captured = CapturedLogs()
    telemetry.configure_logging("json", "debug", stream=captured)
    try:
        yield captured
    finally:
        telemetry._SINK.stream = saved_stream
        # In place: loggers cached during the block hold this very list.
        saved["processors"][:] = saved_processors
        structlog.configure(**saved)
