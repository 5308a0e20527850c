"""keysvc.client's pure parts: the retry rule, error typing, and result <-> JSON conversion."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from keysvc.client import (
    Aborted,
    ClientError,
    Code,
    CreatedKey,
    DeadlineExceeded,
    InvalidArgument,
    Key,
    KeyStatus,
    Retry,
    Unavailable,
    ValidationResult,
    to_dict,
)
from keysvc.client import _calls as calls
from keysvc.client._channel import grpc_traces_calls
from keysvc.client.errors import error_from
from keysvc.core.keys import generate

U = grpc.StatusCode


def test_backoff_is_jittered_grows_to_its_cap_and_is_bounded() -> None:
    retry = Retry(attempts=6, initial_backoff=0.1, max_backoff=0.4, multiplier=2.0)
    for attempt, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.4), (5, 0.4)):
        waits = {retry.delay(U.UNAVAILABLE, "", attempt, remaining=60.0) for _ in range(50)}
        assert all(w is not None and cap / 2 <= w <= cap for w in waits), (attempt, waits)
        assert len(waits) > 1  # jittered: retries from many clients do not arrive in step
    assert retry.delay(U.UNAVAILABLE, "", 6, remaining=60.0) is None  # the attempt bound
    assert retry.delay(U.UNAVAILABLE, "", 1, remaining=0.01) is None  # never past the deadline


@pytest.mark.parametrize(("code", "details", "remaining", "retried"), [
    (U.UNAVAILABLE, "", 5.0, True),
    (U.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", 5.0, True),
    (U.RESOURCE_EXHAUSTED, "Received message larger than max (70000 vs. 65536)", 5.0, False),
    (U.DEADLINE_EXCEEDED, "", 5.0, True),   # an attempt_timeout ended the try; the call has time
    (U.DEADLINE_EXCEEDED, "", 0.0, False),  # the call's own deadline is spent
    (U.ABORTED, "", 5.0, False),            # a concurrent change won: the caller re-reads
    (U.INVALID_ARGUMENT, "", 5.0, False),
    (U.FAILED_PRECONDITION, "", 5.0, False),
    (U.PERMISSION_DENIED, "", 5.0, False),
])
def test_what_is_retried(code: grpc.StatusCode, details: str, remaining: float, retried: bool) -> None:
    assert (Retry().delay(code, details, 1, remaining) is not None) is retried


def test_errors_are_typed_and_name_the_field() -> None:
    bad = error_from(U.INVALID_ARGUMENT, "request_id: 1-64 of letters, digits", "CreateKey")
    assert isinstance(bad, InvalidArgument) and bad.field == "request_id" and bad.method == "CreateKey"
    assert str(bad) == "INVALID_ARGUMENT: request_id: 1-64 of letters, digits"
    assert isinstance(error_from(U.ABORTED, "", "UpdateKey"), Aborted)
    late = error_from(U.DEADLINE_EXCEEDED, "Deadline Exceeded", "Validate")
    assert isinstance(late, DeadlineExceeded) and isinstance(late, Unavailable) and isinstance(late, TimeoutError)
    other = error_from(U.INTERNAL, "internal error", "GetKey")
    assert type(other) is ClientError and other.code is U.INTERNAL


def test_to_dict_is_the_proto3_json_mapping_and_secrets_stay_out_of_repr() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    key = Key("key_abc", owner_id="acme", status=KeyStatus.REVOKING, revoke_at=when, quota_remaining=0,
              revision=7)
    data = to_dict(key)
    assert data["status"] == "KEY_STATUS_REVOKING" and data["revoke_at"] == "2030-01-02T03:04:05.678Z"
    assert data["quota_remaining"] == "0" and data["revision"] == "7"  # int64: strings, presence kept
    assert "name" not in data and "expires_at" not in data
    created = CreatedKey(key, "ks_supersecretvalue", secret_reissued=True)
    assert "ks_supersecretvalue" not in repr(created) and "ks_supersecretvalue" not in str(created)
    assert to_dict(created)["secret"] == "ks_supersecretvalue"
    result = ValidationResult(False, Code.RATE_LIMITED, key_id="key_abc", expires_at=when + timedelta(days=1))
    assert to_dict(result)["code"] == "CODE_RATE_LIMITED" and "valid" not in to_dict(result)


@pytest.mark.parametrize(("trace", "verbosity", "printed"), [
    ("", "", False), ("", "DEBUG", False), ("api", "", True), ("api", "debug", True),
    ("all", "INFO", True), (" http , tcp", "", True), ("-all", "", False), ("-api,-http", "debug", False),
    ("none", "", False), ("api", "NONE", False), ("all", "error", False), ("-all,api", "", True),
])
def test_which_grpc_tracing_would_print_the_admin_key(trace: str, verbosity: str, printed: bool) -> None:
    assert grpc_traces_calls(trace, verbosity) is printed


def test_a_request_protobuf_refuses_is_an_invalid_argument_naming_the_field_never_quoting_it() -> None:
    """Protobuf refuses a lone surrogate with a UnicodeEncodeError holding the whole string (the
    key, in its repr and args) and an out-of-range number with a ValueError naming no field:
    the client raises InvalidArgument naming the argument, with no such error as its context."""
    secret = generate().secret
    cases: list[tuple[str, Callable[[], object]]] = [
        ("key", lambda: calls.validate(secret + "\ud800", (), "", 1)),
        ("required_scopes", lambda: calls.validate(secret, ["\ud800" + secret], "", 1)),
        ("client_ip", lambda: calls.validate(secret, (), secret + "\udfff", 1)),
        ("cost", lambda: calls.validate(secret, (), "", -1)),
        ("cost", lambda: calls.validate(secret, (), "", 2**40)),
        ("keys", lambda: calls.batch_validate([secret, secret + "\ud800"], (), "", 1)),
        ("owner_id", lambda: calls.create_key(secret + "\ud800", name="", policy_id="", scopes=(), metadata=None,
                                              expires_at=None, ttl=None, prefix="", quota=None, request_id=None)),
        ("metadata", lambda: calls.create_key("o", name="", policy_id="", scopes=(), metadata={"n": secret + "\ud800"},
                                              expires_at=None, ttl=None, prefix="", quota=None, request_id=None)),
        ("changes", lambda: calls.update_key("key_x", changes={"name": secret + "\ud800"}, expected_revision=0,
                                             request_id=None)),
    ]
    for field, build in cases:
        with pytest.raises(InvalidArgument) as caught:
            build()
        error = caught.value
        assert str(error).startswith(f"INVALID_ARGUMENT: {field}: "), str(error)
        assert error.__context__ is None and error.__cause__ is None
        shown = str(error) + repr(error) + repr(error.args)
        assert secret[3:20] not in shown
