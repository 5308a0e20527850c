"""The bench's `stall` scenarios: a cached key under load while the store is frozen and misses flood in.

Around the h2load run of a `stall` row, the bench's redis-server is stopped
with SIGSTOP (it keeps its connections and never answers: the worst case for
a client) and a flood of Validate calls for unknown, well-formed keys is
offered at `FLOOD_RATE` a second, up to `FLOOD` in flight at once, over a
few channels. h2load meanwhile drives the cached key one call at a time
(-c 1 -m 1), so the row's p50/p99 are what a hit waits during the stall.
Before the flood starts, misses are timed a few at a time with the store
stopped: the miss budget, store timeout x (1 + retries), by default 200 ms,
as the caller sees it (one Python gRPC round trip included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from keysvc.bench.load import percentile
from keysvc.bench.procs import Redis, Server
from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc as pb_grpc

__all__ = ["FLOOD", "Stall"]

FLOOD = 300  # most misses in flight at once during the h2load run
FLOOD_RATE = 1000  # misses offered a second
_CHANNELS = 4
_PARALLEL = 4  # misses timed at once (below the sync stack's waiting bound: none is shed)
_TIMEOUT_S = 10.0


class Stall:
    """Freezes `redis` and floods `server` with misses between `start` and `stop`.

    Args:
        redis: the bench's redis-server (resumed by `stop`, whatever happened).
        server: the keysvc server under test.
        samples: misses to time with the store stopped, before the flood.
    """

    def __init__(self, redis: Redis, server: Server, samples: int) -> None:
        self._redis = redis
        self._samples = samples

        self._stubs = [pb_grpc.KeyServiceStub(server.channel()) for _ in range(_CHANNELS)]  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flood, name="bench-flood", daemon=True)
        self._lock = threading.Lock()
        self.outcomes: dict[str, int] = {}
        self.miss_ms: list[float] = []

    def start(self) -> None:
        """Stop the store, time misses against it, then start the flood."""
        os.kill(self._redis.proc.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(_PARALLEL) as pool:
            self.miss_ms = sorted(pool.map(lambda _: self._time_miss(), range(self._samples)))
        self._thread.start()

    def stop(self) -> list[str]:
        """End the flood, resume the store; return notes for the row (errors start with '!')."""
        self._stop.set()
        self._thread.join(60)
        os.kill(self._redis.proc.pid, signal.SIGCONT)
        flooded = sum(self.outcomes.values())
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        notes = [f"store SIGSTOPped; unknown-key misses offered at {FLOOD_RATE}/s, at most {FLOOD} "
                 "in flight: "
                 f"{flooded} sent ({outcomes})"]
        wrong = {k: v for k, v in self.outcomes.items() if k not in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")}
        if wrong:
            notes.append(f"! miss answers other than UNAVAILABLE / RESOURCE_EXHAUSTED: {wrong}")
        if self._thread.is_alive():
            notes.append("! the flood did not finish within 60 s")
        return notes

    @property
    def miss_p50_ms(self) -> float:
        """Median time of a miss with the store stopped."""
        return percentile(self.miss_ms, 0.5)

    @property
    def miss_p99_ms(self) -> float:
        """99th percentile time of a miss with the store stopped."""
        return percentile(self.miss_ms, 0.99)

    @property
    def miss_max_ms(self) -> float:
        """Slowest miss with the store stopped."""
        return self.miss_ms[-1] if self.miss_ms else float("nan")

    def _time_miss(self) -> float:
        request = pb.ValidateRequest(key=generate().secret)
        started = time.perf_counter()
        try:
            answer = self._stubs[0].Validate(request, timeout=_TIMEOUT_S)
            outcome = pb.Code.Name(answer.code).removeprefix("CODE_")
        except grpc.RpcError as exc:
            outcome = exc.code().name
        took = (time.perf_counter() - started) * 1000
        if outcome != "UNAVAILABLE":
            self._count(f"timed miss {outcome}")
        return took

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _done(self, future: Any) -> None:
        try:
            outcome = pb.Code.Name(future.result().code).removeprefix("CODE_")
        except grpc.RpcError as exc:
            outcome = exc.code().name
        self._count(outcome)

    def _flood(self) -> None:
        pending: list[Any] = []
        sent = 0
        started = time.monotonic()
        call: Callable[..., Any]
        while not self._stop.is_set():
            pending = [f for f in pending if not f.done()]
            due = int((time.monotonic() - started) * FLOOD_RATE)
            while sent < due and len(pending) < FLOOD:
                call = self._stubs[sent % _CHANNELS].Validate.future
                future = call(pb.ValidateRequest(key=generate().secret), timeout=_TIMEOUT_S)
                future.add_done_callback(self._done)
                pending.append(future)
                sent += 1
            time.sleep(0.002)
        for future in pending:
            with contextlib.suppress(grpc.RpcError):
                future.result()
