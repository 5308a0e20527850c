"""The bench's propagation figure: RevokeKey on one server, denial seen on another.

Two keysvc servers share the bench's Redis. For each of N fresh keys: Validate
it twice on server B (the second answer comes from B's cache), revoke it
through server A's admin API, and from the moment RevokeKey returns, call
Validate on B in a tight loop until it stops answering VALID (bounded at 2 s).
The time measured includes one Validate round trip (its resolution).

Then the same after Redis was paused (CLIENT PAUSE ALL, `_PAUSE_S`): the
revocation is made as soon as Redis answers again, when both followers have
been failing for the whole pause; server A must deny at once (it applies its
own change), server B once its follower resumes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import grpc
import redis

from keysvc.bench.load import percentile
from keysvc.bench.procs import BenchError, Server, start_keysvc
from keysvc.bench.scenarios import Fixture
from keysvc.v1 import keysvc_pb2 as pb

__all__ = ["format_propagation", "measure_propagation"]

_BOUND_S = 2.0
_TIMEOUT_S = 5.0
_PAUSE_S = 5.0
_PAUSES = 3


def measure_propagation(fixture: Fixture, workdir: Path, revocations: int) -> dict[str, Any]:
    """Return p50/p99/max of revocation propagation over `revocations` keys (failures in `errors`)."""
    samples: list[float] = []
    paused: list[float] = []
    polls = 0
    errors: list[str] = []
    servers: list[Server] = []
    try:
        admin_server = start_keysvc("propagation-a", fixture.store, workdir, None)
        servers.append(admin_server)
        validate_server = start_keysvc("propagation-b", fixture.store, workdir, None)
        servers.append(validate_server)
        admin, validate = admin_server.stub(), validate_server.stub()
        md = fixture.admin_metadata
        for i in range(revocations + _PAUSES):
            made = admin.CreateKey(pb.CreateKeyRequest(owner_id="bench-propagation", name=f"p{i}"),
                                   metadata=md, timeout=_TIMEOUT_S)
            request = pb.ValidateRequest(key=made.secret)
            for _ in range(2):
                if validate.Validate(request, timeout=_TIMEOUT_S).code != pb.CODE_VALID:
                    errors.append(f"key {made.key.key_id} was not VALID on server B before revocation")
            if i >= revocations:
                _pause(fixture.store)
            admin.RevokeKey(pb.RevokeKeyRequest(key_id=made.key.key_id), metadata=md, timeout=_TIMEOUT_S)
            revoked = time.perf_counter()
            if i >= revocations and admin.Validate(request, timeout=_TIMEOUT_S).code != pb.CODE_REVOKED:
                errors.append("server A answered VALID right after its own RevokeKey")
            elapsed_ms, calls = _until_denied(validate, request, revoked, errors)
            polls += calls
            if elapsed_ms is not None:
                (samples if i < revocations else paused).append(elapsed_ms)
    except BenchError as exc:
        errors.append(str(exc))
    except grpc.RpcError as exc:
        errors.append(f"{exc.code().name}: {exc.details()}")
    finally:
        for server in servers:
            if server.stop() != 0:
                errors.append(f"{server.name} exited {server.proc.returncode}:\n{server.log_tail()}")
    samples.sort()
    paused.sort()
    return {
        "after_pause": {"pause_s": _PAUSE_S, "revocations": _PAUSES, "measured": len(paused),
                        "max_ms": paused[-1] if paused else float("nan")},
        "revocations": revocations, "measured": len(samples),
        "p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99),
        "max_ms": samples[-1] if samples else float("nan"),
        "validate_calls_per_revocation": polls / max(revocations + _PAUSES, 1),
        "errors": errors[:10],
    }


def _until_denied(
    validate: Any, request: pb.ValidateRequest, revoked: float, errors: list[str]
) -> tuple[float | None, int]:
    """Poll Validate until it stops answering VALID; return (ms since `revoked` or None, polls)."""
    polls = 0
    while True:
        answer = validate.Validate(request, timeout=_TIMEOUT_S)
        polls += 1
        elapsed = time.perf_counter() - revoked
        if answer.code != pb.CODE_VALID:
            if answer.code != pb.CODE_REVOKED:
                errors.append(f"revoked key answered {pb.Code.Name(answer.code)}, want REVOKED")
            return elapsed * 1000, polls
        if elapsed > _BOUND_S:
            errors.append(f"a key was still VALID {_BOUND_S} s after RevokeKey returned")
            return None, polls


def _pause(store: str) -> None:
    """Pause every client of the bench's Redis for `_PAUSE_S`; return when it answers again."""
    with redis.Redis.from_url(store, socket_timeout=_PAUSE_S + _TIMEOUT_S) as client:
        client.execute_command("CLIENT", "PAUSE", str(int(_PAUSE_S * 1000)), "ALL")
        client.ping()  # blocks until the pause is over


def format_propagation(result: dict[str, Any]) -> list[str]:
    """Lines of text for the report."""
    def ms(name: str) -> str:
        value = result[name]
        return "-" if value is None or math.isnan(value) else f"{value:.2f} ms"  # none measured

    lines = [
        f"propagation: RevokeKey on server A -> denied by server B (same Redis), {result['measured']} of "
        f"{result['revocations']} revocations: p50 {ms('p50_ms')}, p99 {ms('p99_ms')}, max {ms('max_ms')} "
        f"({result['validate_calls_per_revocation']:.1f} Validate polls each, each poll one round trip)",
    ]
    pause = result["after_pause"]
    worst = pause["max_ms"]
    lines.append(
        f"propagation right after a {pause['pause_s']:.0f} s Redis pause (CLIENT PAUSE ALL), "
        f"{pause['measured']} of {pause['revocations']}: max "
        f"{'-' if math.isnan(worst) else f'{worst:.0f} ms'} on server B; server A denies at once"
    )
    lines += [f"    ERROR: {e}" for e in result["errors"]]
    return lines
