"""Overload with a stalled store: misses cannot hold up hits, batches cost one budget, RPCs are capped.

The store is a real redis-server frozen with SIGSTOP (it accepts connections
and never answers, the worst case for a client), the servers real processes,
the calls real gRPC over loopback. Bounds here are generous pass/fail limits
against a clearly broken mechanism; the latencies themselves are measured by
`keysvc bench` (the `stall` scenario).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from keysvc.api.grpc.keyservice import CURSOR_METADATA
from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc as pb_grpc
from tests.e2e._servers import ServerProcess, bootstrap
from tests.e2e.test_store_outage import RedisProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server the test may SIGSTOP; always resumed and stopped afterwards."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def _freeze(redis_process: RedisProcess) -> None:
    assert redis_process.proc is not None
    os.kill(redis_process.proc.pid, signal.SIGSTOP)


def _unknown_keys(count: int) -> list[str]:
    """Well-formed keys no store holds: each one is a miss that must ask the store."""
    return [generate().secret for _ in range(count)]


class _Flood:
    """Keeps `outstanding` unknown-key Validate calls in flight over a few channels until stopped."""

    def __init__(self, server: ServerProcess, outstanding: int, channels: int = 4, limit: int = 6000) -> None:
        self._stubs = [pb_grpc.KeyServiceStub(server.channel()) for _ in range(channels)]
        self._outstanding = outstanding
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> _Flood:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "flood did not finish"

    def _note(self, future: grpc.Future) -> None:
        try:
            outcome = pb.Code.Name(future.result().code)
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _run(self) -> None:
        pending: list[grpc.Future] = []
        keys = iter(_unknown_keys(self._limit))
        while not self._stop.is_set() and self.sent < self._limit:
            pending = [f for f in pending if not f.done()]
            while len(pending) < self._outstanding and self.sent < self._limit:
                stub = self._stubs[self.sent % len(self._stubs)]
                future = stub.Validate.future(pb.ValidateRequest(key=next(keys)), timeout=30)
                future.add_done_callback(self._note)
                pending.append(future)
                self.sent += 1
            time.sleep(0.005)
        for future in pending:
            try:
                future.result()
            except grpc.RpcError:
                pass


def test_cached_keys_answer_while_a_miss_flood_waits_on_a_stopped_store(
    start_server: Callable[..., ServerProcess], frozen_redis: RedisProcess, stack: str
) -> None:
    _, admin_secret = bootstrap(frozen_redis.url)
    server = start_server(frozen_redis.url, stack=stack)
    stub = server.stub()
    assert stub.Validate(pb.ValidateRequest(key=admin_secret), timeout=5).code == pb.CODE_VALID
    _freeze(frozen_redis)
    refused: list[str] = []
    with _Flood(server, outstanding=300) as flood:
        deadline = time.monotonic() + 60
        while flood.sent < 300:  # the flood is in flight before the hits start
            assert time.monotonic() < deadline, "flood did not start"
            time.sleep(0.01)
        for _ in range(40):
            try:
                reply = stub.Validate(pb.ValidateRequest(key=admin_secret), timeout=2)
                if reply.code != pb.CODE_VALID:
                    refused.append(pb.Code.Name(reply.code))
            except grpc.RpcError as exc:
                refused.append(exc.code().name)
    assert not refused, f"cached key not answered during the flood: {refused[:5]} ({len(refused)}/40)"
    # Every miss was answered: UNAVAILABLE (fail closed) in time, or refused at once.
    assert sum(flood.outcomes.values()) == flood.sent
    assert set(flood.outcomes) <= {"CODE_UNAVAILABLE", "RESOURCE_EXHAUSTED"}, flood.outcomes
    assert "internal error" not in server.logs()


def test_batch_of_unknown_keys_costs_one_store_budget_on_a_stopped_store(
    start_server: Callable[..., ServerProcess], frozen_redis: RedisProcess, stack: str
) -> None:
    bootstrap(frozen_redis.url)
    server = start_server(frozen_redis.url, "--store-timeout-ms", "100", stack=stack)
    stub = server.stub()
    keys = _unknown_keys(100)
    _freeze(frozen_redis)
    started = time.monotonic()
    reply = stub.BatchValidate(
        pb.BatchValidateRequest(requests=[pb.ValidateRequest(key=k) for k in keys]), timeout=30
    )
    took = time.monotonic() - started
    assert [r.code for r in reply.responses] == [pb.CODE_UNAVAILABLE] * 100
    # 100 serial misses cost 100 budgets (20 s at 100 ms x 2); one budget is 0.2 s.
    assert took < 5, f"a batch of 100 misses took {took:.1f}s: entries asked the store one by one"


def _open_streams(server: ServerProcess, count: int, md: list[tuple[str, str]]) -> tuple[list[grpc.Future], list[grpc.StatusCode]]:
    """Open `count` WatchEvents streams; return the open ones and the refusals' codes."""
    stub = server.stub()
    calls = [stub.WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=60) for _ in range(count)]
    opened: list[grpc.Future] = []
    refused: list[grpc.StatusCode] = []
    for call in calls:
        # An open stream's headers carry its cursor; a refused call has ended with none.
        headers = dict(call.initial_metadata())  # type: ignore[attr-defined]
        if CURSOR_METADATA in headers:
            opened.append(call)
        else:
            refused.append(call.code())  # type: ignore[attr-defined]
    return opened, refused


def test_concurrent_rpc_limit_refuses_the_excess_at_once_wave_after_wave(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str
) -> None:
    _, secret = bootstrap(sqlite_url)
    md = [("authorization", f"Bearer {secret}")]
    # 64 threads: the sync stack's own stream cap (a quarter of the pool) is 16, above the limit.
    server = start_server(sqlite_url, "--max-concurrent-rpcs", "6", "--grpc-threads", "64", stack=stack)
    stub = server.stub()
    for wave in range(3):
        # Slots of the last wave's cancelled streams come back as their calls end on the server.
        deadline = time.monotonic() + 15
        while True:
            opened, refused = _open_streams(server, 10, md)
            if len(opened) == 6 or time.monotonic() > deadline:
                break
            for call in opened:
                call.cancel()
            time.sleep(0.1)
        assert len(opened) == 6, f"wave {wave}: {len(opened)} streams open, want 6 ({refused})"
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4, f"wave {wave}: {refused}"
        # At the limit, a Validate is refused at once too, not queued.
        with pytest.raises(grpc.RpcError) as info:
            stub.Validate(pb.ValidateRequest(key=secret), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in opened:
            call.cancel()
    # Under the limit again, calls are served.
    deadline = time.monotonic() + 15
    codes: list[grpc.StatusCode] = []
    while True:
        try:
            assert stub.Validate(pb.ValidateRequest(key=secret), timeout=5).code == pb.CODE_VALID
            break
        except grpc.RpcError as exc:
            codes.append(exc.code())
        assert time.monotonic() < deadline, "slots not given back"
        time.sleep(0.05)
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
