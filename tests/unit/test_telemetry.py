from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import types
import warnings
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from keysvc.app import telemetry
from keysvc.app.telemetry import (
    REDACTED,
    audit_span,
    audit_tracer,
    configure_logging,
    configure_tracing,
    redact_value,
)
from keysvc.core import keys
from keysvc.core.errors import ConfigError
from keysvc.testing import capture_logs, capture_spans

pytestmark = pytest.mark.unit

_OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _isolated_telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    # configure_logging installs these process-wide: put pytest's own back after each test.
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    root_level = logging.getLogger().level
    yield
    logging.getLogger().removeHandler(telemetry._STDLIB_HANDLER)
    logging.getLogger().setLevel(root_level)
    logging.captureWarnings(False)
    telemetry.shutdown_tracing()
    telemetry._SINK.stream = None
    structlog.reset_defaults()


@pytest.fixture
def secret() -> str:
    return keys.generate().secret


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- redaction ---------------------------------------------------------------


def test_key_in_a_string_keeps_only_its_prefix(secret: str) -> None:
    assert redact_value(f"presented {secret}, rejected") == "presented ks_[REDACTED], rejected"
    other = keys.generate("acme2").secret
    assert redact_value(f"{other}") == "acme2_[REDACTED]"


def test_nested_values_are_redacted_without_changing_the_input(secret: str) -> None:
    value = {"outer": [secret, (1, f"x{secret}"), {"deep": [secret]}], "n": 3, "none": None}
    original = json.dumps(value)

    cleaned = redact_value(value)

    assert cleaned == {
        "outer": ["ks_[REDACTED]", (1, "xks_[REDACTED]"), {"deep": ["ks_[REDACTED]"]}],
        "n": 3,
        "none": None,
    }
    assert json.dumps(value) == original


@pytest.mark.parametrize(
    "name", ["secret", "key", "authorization", "Authorization", "token", "password", "api_key",
             "x-api-key", "X-Api-Key"],
)
def test_credential_named_fields_are_replaced_whole(name: str) -> None:
    assert redact_value({name: "Bearer not-key-shaped"}) == {name: REDACTED}
    assert redact_value({"headers": {name: 12345}}) == {"headers": {name: REDACTED}}


def test_similar_field_names_are_kept() -> None:
    value = {"key_id": "key_abc", "token_count": 3, "hint": "ks_abcd"}
    assert redact_value(value) == value


def test_objects_whose_repr_holds_a_key_become_redacted_text(secret: str) -> None:
    assert redact_value(ValueError(secret)) == "ValueError('ks_[REDACTED]')"
    plain = ValueError("harmless")
    assert redact_value(plain) is plain


def test_self_referencing_values_terminate(secret: str) -> None:
    loop: list[object] = [secret]
    loop.append(loop)
    assert secret not in repr(redact_value(loop))


# --- logging -----------------------------------------------------------------


def test_json_log_line_redacts_message_fields_and_traceback(secret: str) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = structlog.get_logger()
    try:
        raise ValueError(f"could not parse {secret}")
    except ValueError:
        log.exception(f"rejected {secret}", presented=[secret], headers={"x-api-key": secret})

    output = stream.getvalue()
    assert secret not in output
    (record,) = [json.loads(line) for line in output.splitlines()]
    assert record["event"] == "rejected ks_[REDACTED]"
    assert record["presented"] == ["ks_[REDACTED]"]
    assert record["headers"] == {"x-api-key": REDACTED}
    assert record["level"] == "error"
    assert record["timestamp"].endswith("Z")
    assert "Traceback" in record["exception"]
    assert "ValueError: could not parse ks_[REDACTED]" in record["exception"]


@pytest.mark.parametrize("library", ["_granian", "asyncio", "grpc._cython.cygrpc", "redis", "urllib3"])
def test_other_libraries_stdlib_logging_goes_through_the_same_processors(library: str, secret: str) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        raise ValueError(f"bad header {secret}")
    except ValueError:
        logging.getLogger(library).exception("Error handling %s", f"x-api-key: {secret}")
    logging.getLogger(library).debug("below the level %s", secret)
    output = stream.getvalue()
    assert secret not in output
    (record,) = [json.loads(line) for line in output.splitlines()]
    assert record["logger"] == library and record["level"] == "error"
    assert record["event"] == "Error handling x-api-key: ks_[REDACTED]"
    assert "ValueError: bad header ks_[REDACTED]" in record["exception"]


def test_uncaught_exceptions_and_warnings_are_log_lines(secret: str) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        raise RuntimeError(f"main {secret}")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    def fail() -> None:
        raise RuntimeError(f"thread {secret}")

    worker = threading.Thread(target=fail, name="worker")
    worker.start()
    worker.join()
    warnings.warn_explicit(f"careful {secret}", UserWarning, "x.py", 1)
    output = stream.getvalue()
    assert secret not in output
    records = [json.loads(line) for line in output.splitlines()]
    assert [r["event"] for r in records[:2]] == ["uncaught exception", "uncaught exception in thread"]
    assert "RuntimeError: main ks_[REDACTED]" in records[0]["exception"]
    assert records[1]["thread"] == "worker" and "thread ks_[REDACTED]" in records[1]["exception"]
    assert records[2]["logger"] == "py.warnings" and "careful ks_[REDACTED]" in records[2]["event"]


def test_console_output_is_redacted_too(secret: str) -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    try:
        raise RuntimeError(secret)
    except RuntimeError:
        structlog.get_logger().exception("failed", key=secret, note=secret)

    output = stream.getvalue()
    assert secret not in output
    assert "ks_[REDACTED]" in output
    assert "Traceback" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


@pytest.mark.parametrize(
    ("log_format", "stream_type", "want_json"),
    [
        ("json", _Terminal, True),
        ("json", io.StringIO, True),
        ("console", io.StringIO, False),
        ("auto", io.StringIO, True),
        ("auto", _Terminal, False),
    ],
)
def test_renderer_follows_format_and_terminal(
    log_format: str, stream_type: type[io.StringIO], want_json: bool
) -> None:
    stream = stream_type()
    configure_logging(log_format, "info", stream=stream)
    structlog.get_logger().info("hello", n=1)

    line = stream.getvalue().splitlines()[0]
    if want_json:
        assert json.loads(line)["event"] == "hello"
    else:
        assert ("\x1b[" in line) is (stream_type is _Terminal)  # colours only on a terminal
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert "[info     ] hello" in plain
        assert "n=1" in plain
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_level_filter_drops_lower_levels() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


@pytest.mark.parametrize(("log_format", "log_level"), [("xml", "info"), ("json", "verbose")])
def test_unknown_format_or_level_is_rejected(log_format: str, log_level: str) -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(log_format, log_level)


def test_loggers_made_before_a_reconfigure_follow_it() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("console", "info", stream=first)
    log = structlog.get_logger()
    log.info("one")  # cached on first use
    configure_logging("json", "info", stream=second)
    log.info("two")
    assert "one" in first.getvalue()
    assert json.loads(second.getvalue())["event"] == "two"


def test_capture_logs_restores_the_previous_configuration() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = structlog.get_logger()
    log.info("before")
    with capture_logs() as captured:
        log.info("during")
        structlog.get_logger().debug("detail")
    log.info("after")

    assert [r["event"] for r in captured.records()] == ["during", "detail"]
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "before", "after",
    ]


# --- tracing and audit -------------------------------------------------------


def test_audit_span_success_attributes_and_log_line() -> None:
    with capture_spans() as spans, capture_logs() as logs:
        with audit_span("key.create", actor="key_admin", target_policy_id="pol_1", scopes=2) as rec:
            rec.set("target_key_id", "key_new")

    (span,) = spans.get_finished_spans()
    assert span.name == "audit.key.create"
    assert dict(span.attributes or {}) == {
        "keysvc.action": "key.create",
        "keysvc.actor": "key_admin",
        "keysvc.target.key_id": "key_new",
        "keysvc.target.policy_id": "pol_1",
        "keysvc.scopes": 2,
        "keysvc.outcome": "ok",
    }
    assert span.status.status_code is StatusCode.UNSET
    (line,) = logs.records()
    assert line["event"] == "audit"
    assert line["logger"] == "keysvc.audit"
    assert line["level"] == "info"
    assert line["outcome"] == "ok"
    assert line["actor"] == "key_admin"
    assert line["target_key_id"] == "key_new"
    assert line["target_policy_id"] == "pol_1"
    assert line["scopes"] == 2
    assert line["trace_id"] == f"{span.context.trace_id:032x}"


def test_audit_outcome_set_by_the_block_is_kept_and_logged_as_warning() -> None:
    with capture_spans() as spans, capture_logs() as logs:
        with audit_span("policy.update", actor="key_a", target_policy_id="pol_1") as rec:
            rec.set("outcome", "denied")

    assert spans.get_finished_spans()[0].attributes["keysvc.outcome"] == "denied"  # type: ignore[index]
    (line,) = logs.records()
    assert (line["outcome"], line["level"]) == ("denied", "warning")


def test_audit_failure_records_only_the_exception_type(secret: str) -> None:
    with capture_spans() as spans, capture_logs() as logs:
        with pytest.raises(KeyError), audit_span("key.rotate", actor="key_a", target_key_id="key_b"):
            raise KeyError(f"no such key {secret}")

    (span,) = spans.get_finished_spans()
    assert span.attributes["keysvc.outcome"] == "KeyError"  # type: ignore[index]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyError"
    assert span.events == ()
    assert secret not in repr(span.to_json())
    (line,) = logs.records()
    assert (line["outcome"], line["level"]) == ("KeyError", "warning")
    assert secret not in logs.getvalue()
    assert "exception" not in line


def test_audit_attributes_are_redacted(secret: str) -> None:
    with capture_spans() as spans, capture_logs() as logs:
        with audit_span("key.update", actor=secret, note=f"from {secret}", token="plain") as rec:
            rec.set("password", "hunter2")

    attributes = spans.get_finished_spans()[0].attributes or {}
    assert attributes["keysvc.actor"] == "ks_[REDACTED]"
    assert attributes["keysvc.note"] == "from ks_[REDACTED]"
    assert attributes["keysvc.token"] == REDACTED
    assert attributes["keysvc.password"] == REDACTED
    assert secret not in logs.getvalue()
    assert "hunter2" not in logs.getvalue()


@pytest.mark.parametrize("name", ["event", "level", "timestamp", "logger", "trace_id"])
def test_audit_fields_cannot_clobber_the_log_lines_own(name: str) -> None:
    with capture_spans(), pytest.raises(ValueError, match="clobber"):
        with audit_span("key.create", actor="key_a", **{name: "x"}):
            pass


def test_audit_spans_are_recorded_when_the_sampler_drops_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter)

    with audit_span("key.revoke", actor="key_a", target_key_id="key_b"):
        pass

    assert [span.name for span in exporter.get_finished_spans()] == ["audit.key.revoke"]


def test_tracers_taken_before_configure_follow_every_reconfigure() -> None:
    tracer = audit_tracer()
    with tracer.start_as_current_span("before") as span:
        assert not span.is_recording()  # nothing configured yet: no-op

    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    configure_tracing(exporter=first)
    with tracer.start_as_current_span("one"):
        pass
    configure_tracing(exporter=second)
    with tracer.start_as_current_span("two"):
        pass

    assert [s.name for s in first.get_finished_spans()] == ["one"]
    assert [s.name for s in second.get_finished_spans()] == ["two"]


def test_capture_spans_puts_the_previous_provider_back() -> None:
    outer = InMemorySpanExporter()
    configure_tracing(exporter=outer)
    with capture_spans() as inner:
        with audit_tracer().start_as_current_span("inside"):
            pass
    with audit_tracer().start_as_current_span("outside"):
        pass

    assert [s.name for s in inner.get_finished_spans()] == ["inside"]
    assert [s.name for s in outer.get_finished_spans()] == ["outside"]


def test_service_name_defaults_to_the_argument_and_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    configure_tracing("keysvc-test", exporter=exporter)
    with audit_tracer().start_as_current_span("a"):
        pass
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "keysvc-test"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    configure_tracing("keysvc-test", exporter=(exporter := InMemorySpanExporter()))
    with audit_tracer().start_as_current_span("b"):
        pass
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "from-env"


_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


class _FakeOTLPExporter(InMemorySpanExporter):
    """Stands in for OTLPSpanExporter: no grpc import, no network."""


@pytest.mark.parametrize(
    ("env", "want_otlp"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
         False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_otlp_exporter_only_when_an_endpoint_is_set(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], want_otlp: bool
) -> None:
    monkeypatch.setitem(sys.modules, _OTLP_MODULE,
                        types.SimpleNamespace(OTLPSpanExporter=_FakeOTLPExporter))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = telemetry._build_provider("keysvc", None)
    try:
        processors = provider._active_span_processor._span_processors
        batched = [p for p in processors if isinstance(p, BatchSpanProcessor)]
        assert bool(batched) is want_otlp
        assert all(isinstance(p.span_exporter, _FakeOTLPExporter) for p in batched)
    finally:
        provider.shutdown()


def test_an_unloadable_otlp_exporter_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, _OTLP_MODULE, None)  # makes the import fail
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    with pytest.raises(ConfigError, match="OTLP exporter cannot be loaded"):
        configure_tracing()
