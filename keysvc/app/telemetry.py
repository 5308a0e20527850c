"""Telemetry: structlog logging, OpenTelemetry tracing, audit spans, redaction.

Code must never log or trace a key's plaintext; redaction is the last defence if it
does. Every other library's stdlib `logging` (granian, grpc, asyncio, redis...),
`warnings`, and uncaught exceptions (main thread, other threads, unraisable)
go through the same processors, redaction included, so every line keysvc's
process writes is one JSON object (or one console line). `configure_*` may be
called again (tests do): loggers and tracers obtained earlier, even at import,
follow; a logger cached on first use keeps its level.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from structlog.typing import EventDict, Processor, WrappedLogger

from keysvc.core.errors import ConfigError
from keysvc.core.keys import KEY_PATTERN

__all__ = [
    "AUDITOR",
    "REDACTED",
    "SENSITIVE_FIELDS",
    "AuditRecord",
    "SpanAuditor",
    "audit_span",
    "audit_tracer",
    "configure_logging",
    "configure_tracing",
    "logging_to",
    "redact",
    "redact_value",
    "shutdown_tracing",
    "tracing_to",
]

REDACTED = "[REDACTED]"
# Field names (any case, at any depth) whose whole value is a credential.
SENSITIVE_FIELDS = frozenset({"secret", "key", "authorization", "token", "password", "api_key",
                              "x-api-key"})
_MAX_DEPTH = 16  # deeper (or cyclic) structures are redacted as their repr()
# Fields every log line has; an audit field of the same name would clobber them.
_LOG_RESERVED = frozenset({"event", "level", "timestamp", "logger", "trace_id", "span_id"})


def _redact_str(text: str) -> str:
    return KEY_PATTERN.sub(r"\1_" + REDACTED, text)


def redact_value(value: object) -> object:
    """Return `value` with every key-shaped substring and credential field redacted.

    A match of `keysvc.core.keys.KEY_PATTERN` in a string becomes `<prefix>_[REDACTED]`.
    Dicts, lists and tuples are walked into new containers; in a dict, the value of
    a field named in `SENSITIVE_FIELDS` (any case) becomes `[REDACTED]`. Other
    objects are returned as they are, unless their repr() holds a key.
    """
    return _redact(value, 0)


def _redact(value: object, depth: int) -> object:
    if isinstance(value, str):
        return _redact_str(value)
    if value is None or isinstance(value, int | float):
        return value
    if depth >= _MAX_DEPTH:
        return _redact_str(repr(value))
    if isinstance(value, Mapping):
        return {_redact(k, depth + 1): _redact_field(k, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_redact(item, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    text = repr(value)  # what both renderers fall back to
    cleaned = _redact_str(text)
    return value if cleaned == text else cleaned


def _redact_field(name: object, value: object, depth: int) -> object:
    if isinstance(name, str) and name.lower() in SENSITIVE_FIELDS:
        return REDACTED
    return _redact(value, depth)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Structlog processor applying `redact_value` to every field of the event."""
    return {name: _redact_field(name, value, 1) for name, value in event_dict.items()}


class _Sink:
    """What loggers write to; configure_logging swaps its stream, even for cached loggers."""

    stream: TextIO | None = None  # None: sys.stderr at each write (pytest replaces it)

    def write(self, text: str) -> int:
        return (self.stream or sys.stderr).write(text)

    def flush(self) -> None:
        (self.stream or sys.stderr).flush()


_SINK = _Sink()
_PROCESSORS: list[Processor] = []  # changed in place: cached loggers hold this list
_STDLIB_HANDLER = logging.StreamHandler(cast("TextIO", _SINK))  # the one on the root logger
_STDLIB_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """sys.excepthook: the trace as one redacted log line, not Python's raw print-out."""
    structlog.get_logger().bind(logger="keysvc").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger().bind(logger="keysvc").error(
        "uncaught exception in thread", thread=args.thread.name if args.thread else "",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _log_unraisable(unraisable: Any) -> None:
    structlog.get_logger().bind(logger="keysvc").error(
        "exception ignored", where=repr(unraisable.object),
        exc_info=(unraisable.exc_type, unraisable.exc_value or unraisable.exc_type(),
                  unraisable.exc_traceback),
    )


def _route_stdlib(renderer: Processor, level: str) -> None:
    """Send stdlib logging (every library's), warnings and uncaught exceptions through structlog."""
    _STDLIB_HANDLER.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
    ))
    root = logging.getLogger()
    if _STDLIB_HANDLER not in root.handlers:
        root.addHandler(_STDLIB_HANDLER)
    root.setLevel(_STDLIB_LEVELS[level])
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable


def configure_logging(log_format: str, log_level: str, stream: TextIO | None = None) -> None:
    """Set up structlog: JSON lines or a readable console, filtered by level, redacted.

    Args:
        log_format: "json", "console", or "auto" (JSON unless the stream is a terminal).
        log_level: lowest level written: "debug", "info", "warning" or "error".
        stream: where lines go; None means sys.stderr, keeping stdout for CLI output.

    Raises:
        ValueError: unknown `log_format` or `log_level`.
    """
    levels = ("debug", "info", "warning", "error", "critical")
    if log_format not in ("auto", "json", "console") or log_level.lower() not in levels:
        raise ValueError(f"unknown log format {log_format!r} or level {log_level!r}")
    wrapper_class = structlog.make_filtering_bound_logger(log_level.lower())
    try:
        tty = (sys.stderr if stream is None else stream).isatty()
    except (AttributeError, ValueError):  # not a real file, or closed
        tty = False
    renderer: Processor = structlog.processors.JSONRenderer()
    if log_format == "console" or (log_format == "auto" and tty):
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    _SINK.stream = stream
    _PROCESSORS[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,  # tracebacks become text before `redact`
        redact,
        renderer,
    ]
    _route_stdlib(renderer, log_level.lower())
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=wrapper_class,
        # _Sink has the two methods WriteLogger calls: write and flush.
        logger_factory=structlog.WriteLoggerFactory(file=cast("TextIO", _SINK)),
        cache_logger_on_first_use=True,
    )


class _Current:  # the provider installed last (a namespace, never instantiated)
    provider: TracerProvider | None = None


class _CurrentTracer(Tracer):
    """Starts spans on the provider installed last; a no-op before configure_tracing."""

    def __init__(self, scope: str) -> None:
        self._scope = scope  # (provider, tracer) is replaced whole: no torn reads across threads
        self._resolved: tuple[TracerProvider | None, Tracer] = (None, trace.NoOpTracer())

    def _current(self) -> Tracer:
        provider = _Current.provider
        seen, tracer = self._resolved
        if provider is not seen:
            tracer = provider.get_tracer(self._scope) if provider else trace.NoOpTracer()
            self._resolved = (provider, tracer)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._current().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._current().start_as_current_span(*args, **kwargs)


_AUDIT_TRACER = _CurrentTracer(scope="keysvc.audit")


def audit_tracer() -> Tracer:
    """Return the tracer for audit spans, which are always recorded."""
    return _AUDIT_TRACER


def _build_provider(service_name: str, exporter: SpanExporter | None) -> TracerProvider:
    resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(sampler=ALWAYS_ON, resource=resource)
    env = os.environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint and env.get("OTEL_TRACES_EXPORTER", "").strip().lower() != "none":
        try:  # imported only when used: it pulls in grpc
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # e.g. xds-protos overwrote opentelemetry-proto (grpc#42926)
            raise ConfigError(f"OTEL_EXPORTER_OTLP_*ENDPOINT is set but the OTLP exporter "
                              f"cannot be loaded: {exc}; pip install 'keysvc[otlp]', then run "
                              "scripts/fix-otel-proto.sh") from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_*
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _install(provider: TracerProvider | None, shutdown: bool = True) -> TracerProvider | None:
    old, _Current.provider = _Current.provider, provider
    if shutdown and old is not None:
        old.shutdown()
    return old


def configure_tracing(service_name: str = "keysvc", exporter: SpanExporter | None = None) -> None:
    """Install a tracer provider for audit spans, set up from the standard OTEL_* environment.

    Audit spans are always sampled (OTEL_TRACES_SAMPLER does not apply: keysvc
    traces no requests, see the README's Telemetry notes). They are exported
    over OTLP/gRPC (batched) when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    and OTEL_TRACES_EXPORTER is not "none", and to `exporter` (tests).
    `service_name` applies unless OTEL_* names one. A second call replaces the
    provider, shutting the old one and its exporters down. The global
    OpenTelemetry provider is left alone: use `audit_tracer()`.

    Raises:
        ConfigError: OTLP export is configured but its exporter cannot be loaded.
    """
    _install(_build_provider(service_name, exporter))


@contextmanager
def tracing_to(exporter: SpanExporter, service_name: str = "keysvc") -> Iterator[None]:
    """Send spans to `exporter` for the block (as `configure_tracing` does), then restore the old provider.

    The previous provider is not shut down (so blocks can nest); the block's is.
    """
    previous = _install(_build_provider(service_name, exporter), shutdown=False)
    try:
        yield
    finally:
        _install(previous)


@contextmanager
def logging_to(stream: TextIO, log_format: str = "json", log_level: str = "debug") -> Iterator[None]:
    """Write every log line to `stream` for the block (see `configure_logging`), then restore the old set-up.

    A logger cached before the block at a higher level keeps that level (structlog's caching).
    """
    saved = structlog.get_config()
    saved_processors = list(saved["processors"])
    saved_stream = _SINK.stream
    configure_logging(log_format, log_level, stream=stream)
    try:
        yield
    finally:
        _SINK.stream = saved_stream
        # In place: loggers cached during the block hold this very list.
        saved["processors"][:] = saved_processors
        structlog.configure(**saved)


def shutdown_tracing() -> None:
    """Flush pending spans and shut the provider down; later spans are dropped."""
    _install(None)


class AuditRecord:
    """The fields of one audit event; `set` adds one to its span and its log line."""

    def __init__(self, span: Span) -> None:
        self._span = span
        self.fields: dict[str, str | int | bool] = {}  # by log name, e.g. "target_key_id"

    def set(self, name: str, value: str | int | bool) -> None:
        """Set field `name`, span attribute `keysvc.<name>` ("target_x" -> "target.x")."""
        field = name.removeprefix("keysvc.").replace(".", "_")
        if field in _LOG_RESERVED:
            raise ValueError(f"audit field {name!r} would clobber the log line's own {field!r}")
        value = REDACTED if field.lower() in SENSITIVE_FIELDS else value
        if isinstance(value, str):
            value = _redact_str(value)
        self.fields[field] = value
        attribute = "target." + field[7:] if field.startswith("target_") else field
        self._span.set_attribute("keysvc." + attribute, value)


@contextmanager
def audit_span(
    action: str, *, actor: str, target_key_id: str = "", target_policy_id: str = "",
    **attrs: str | int | bool,
) -> Iterator[AuditRecord]:
    """Record one admin change as an always-sampled span `audit.<action>` and one log line.

    Span attributes: `keysvc.action`, `.actor`, `.target.key_id`, `.target.policy_id`,
    `.outcome` and `keysvc.<name>` per extra attribute, all redacted. The outcome is
    "ok" unless the block sets one (e.g. "denied") or raises: then it is the
    exception's class name (never its message or traceback, which may quote a
    secret), the status is ERROR and the exception propagates. The log line
    `audit` (logger "keysvc.audit", info if "ok" else warning) has the same
    fields and the trace and span ids. Yields the record, to `set` more fields.
    """
    with _AUDIT_TRACER.start_as_current_span(
        f"audit.{action}", record_exception=False, set_status_on_exception=False
    ) as span:
        record = AuditRecord(span)
        for name, value in {"action": action, "actor": actor, "target_key_id": target_key_id,
                            "target_policy_id": target_policy_id, **attrs}.items():
            record.set(name, value)
        try:
            yield record
        except BaseException as exc:  # cancellation is audited too
            record.set("outcome", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            _log_audit(record, span)
            raise
        if "outcome" not in record.fields:
            record.set("outcome", "ok")
        _log_audit(record, span)


def _log_audit(record: AuditRecord, span: Span) -> None:
    ctx = span.get_span_context()
    ids = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"} if ctx.is_valid else {}
    log = structlog.get_logger().bind(logger="keysvc.audit")  # fresh: current level too
    emit = log.info if record.fields["outcome"] == "ok" else log.warning
    emit("audit", **record.fields, **ids)


class SpanAuditor:
    """The `keysvc.service.ports.Auditor` of a running server: `audit_span` per event."""

    def audit(
        self, action: str, *, actor: str, target_key_id: str = "", target_policy_id: str = "",
        **attrs: str | int | bool,
    ) -> AbstractContextManager[AuditRecord]:
        """Open an always-sampled audit span and its log line (see `audit_span`)."""
        return audit_span(action, actor=actor, target_key_id=target_key_id,
                          target_policy_id=target_policy_id, **attrs)


AUDITOR = SpanAuditor()
"""The one auditor; spans go to whatever provider `configure_tracing` installed."""
