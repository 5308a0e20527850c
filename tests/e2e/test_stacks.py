"""Both gRPC server stacks: drain with open streams, the sync stack's stream cap, thread safety."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


def test_sigterm_ends_open_streams_and_exits_zero_within_the_grace(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str
) -> None:
    _, secret = bootstrap(sqlite_url)
    md = [("authorization", f"Bearer {secret}")]
    server = start_server(sqlite_url, "--shutdown-grace-s", "1", stack=stack)
    streams = [server.stub().WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=60) for _ in range(2)]
    for stream in streams:
        stream.initial_metadata()  # open: the server is serving them
    ended: list[grpc.StatusCode] = []

    def drain(stream: grpc.Future) -> None:
        try:
            for _ in stream:  # type: ignore[attr-defined]
                pass
        except grpc.RpcError as exc:
            ended.append(exc.code())

    readers = [threading.Thread(target=drain, args=(s,)) for s in streams]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    assert server.stop(timeout=15) == 0
    took = time.monotonic() - started
    for reader in readers:
        reader.join(5)
    assert took < 10, f"SIGTERM took {took:.1f}s with open streams"
    assert len(ended) == 2 and all(c in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                                   for c in ended), ended
    assert "keysvc stopped" in server.logs()


def test_sync_stack_caps_streams_and_frees_a_slot_on_cancel(
    start_server: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    _, secret = bootstrap(sqlite_url)
    md = [("authorization", f"Bearer {secret}")]
    # 4 threads: at most one WatchEvents stream (a quarter of the pool).
    server = start_server(sqlite_url, "--grpc-threads", "4", stack="sync")
    stub = server.stub()
    first = stub.WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=30)
    first.initial_metadata()
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=5)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "KEYSVC_GRPC_THREADS" in (info.value.details() or "")
    # Validate and admin calls still have threads.
    assert stub.Validate(pb.ValidateRequest(key=secret), timeout=5).code == pb.CODE_VALID
    created = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    assert next(iter(first)).event.key_id == created.key.key_id
    # A cancelled stream gives its slot back (its coroutine on the loop is cancelled).
    first.cancel()
    deadline = time.monotonic() + 5
    while True:
        again = stub.WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=10)
        refused: grpc.StatusCode | None = None
        try:
            again.initial_metadata()
            stub.CreateKey(pb.CreateKeyRequest(owner_id="o2"), metadata=md, timeout=5)
            event = next(iter(again)).event
        except grpc.RpcError as exc:
            refused = exc.code()
        if refused is None:
            assert event.type == "key.created"
            again.cancel()
            break
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() < deadline, "the cancelled stream's slot was never freed"
        time.sleep(0.05)


def test_concurrent_hits_misses_evictions_and_revocations_answer_consistently(
    start_server: Callable[..., ServerProcess], redis_url: str, stack: str
) -> None:
    """Many client threads on a tiny cache: hits on pool threads race inserts and evictions on the loop."""
    _, secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {secret}")]
    server = start_server(redis_url, "--cache-size", "8", stack=stack)
    stub = server.stub()
    keys = [stub.CreateKey(pb.CreateKeyRequest(owner_id=f"o{i}"), metadata=md, timeout=5) for i in range(24)]
    doomed = keys[:4]
    errors: list[str] = []
    answers: list[int] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        own = server.stub()
        for n in range(150):
            created = keys[(worker * 7 + n) % len(keys)]
            try:
                code = own.Validate(pb.ValidateRequest(key=created.secret), timeout=10).code
            except grpc.RpcError as exc:
                with lock:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            with lock:
                answers.append(code)
            if created in doomed:
                assert code in (pb.CODE_VALID, pb.CODE_REVOKED)
            else:
                assert code == pb.CODE_VALID, pb.Code.Name(code)

    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(client, w) for w in range(8)]
        for key in doomed:
            stub.RevokeKey(pb.RevokeKeyRequest(key_id=key.key.key_id), metadata=md, timeout=5)
        for future in running:
            future.result()
    assert not errors, errors[:5]
    assert len(answers) == 8 * 150
    for key in doomed:  # revocations reached this server whatever was cached meanwhile
        assert stub.Validate(pb.ValidateRequest(key=key.secret), timeout=5).code == pb.CODE_REVOKED
    assert "internal error" not in server.logs() and "Exception calling application" not in server.logs()


def test_auto_serves_on_sync_when_confined_to_one_cpu_else_on_aio(
    start_server: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    _, secret = bootstrap(sqlite_url)
    cpus = sorted(os.sched_getaffinity(0))
    confined = start_server(sqlite_url, cpus=str(cpus[0]))
    assert confined.stub().Validate(pb.ValidateRequest(key=secret), timeout=5).code == pb.CODE_VALID
    confined.stop()
    assert '"stack": "sync"' in confined.logs()
    free = start_server(sqlite_url)
    assert free.stub().Validate(pb.ValidateRequest(key=secret), timeout=5).code == pb.CODE_VALID
    free.stop()
    expected = "sync" if len(cpus) == 1 else "aio"
    assert f'"stack": "{expected}"' in free.logs()
