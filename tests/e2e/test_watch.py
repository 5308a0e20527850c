"""WatchEvents: resumable from a cursor, nothing lost or repeated; a lost cursor is OUT_OF_RANGE."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


def make_keys(stub: object, md: list[tuple[str, str]], owner: str, count: int) -> list[str]:
    return [
        stub.CreateKey(pb.CreateKeyRequest(owner_id=owner), metadata=md, timeout=5).key.key_id  # type: ignore[attr-defined]
        for _ in range(count)
    ]


@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
def test_resume_after_disconnect_loses_and_repeats_nothing(
    start_server: Callable[..., ServerProcess], store_kind: str, request: pytest.FixtureRequest, stack: str
) -> None:
    store = request.getfixturevalue("redis_url" if store_kind == "redis" else "sqlite_url")
    _, admin_secret = bootstrap(store)
    md = [("authorization", f"Bearer {admin_secret}")]
    server = start_server(store, stack=stack)
    stub = server.stub()
    start = stub.CreateKey(pb.CreateKeyRequest(owner_id="marker"), metadata=md, timeout=5)
    # Find the cursor of the marker event, then watch from it.
    history = stub.WatchEvents(pb.WatchEventsRequest(from_beginning=True), metadata=md, timeout=10)
    since = next(e.event.cursor for e in history if e.event.key_id == start.key.key_id)
    history.cancel()

    first_batch = make_keys(stub, md, "o", 10)
    stream = stub.WatchEvents(pb.WatchEventsRequest(since=since), metadata=md, timeout=30)
    seen: list[pb.Event] = []
    for item in stream:
        seen.append(item.event)
        if len(seen) == 4:
            break
    stream.cancel()  # disconnect mid-stream

    second_batch = make_keys(stub, md, "o", 10)
    resumed = stub.WatchEvents(pb.WatchEventsRequest(since=seen[-1].cursor), metadata=md, timeout=30)
    for item in resumed:
        seen.append(item.event)
        if len(seen) == 20:
            break
    resumed.cancel()
    assert [e.key_id for e in seen] == first_batch + second_batch
    assert all(e.type == "key.created" for e in seen)
    assert len({e.cursor for e in seen}) == 20


def test_live_events_arrive_and_old_cursors_are_out_of_range(
    start_server: Callable[..., ServerProcess], redis_url: str, stack: str
) -> None:
    _, admin_secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {admin_secret}")]
    server = start_server(redis_url, "--event-retention", "5", stack=stack)
    stub = server.stub()
    live = stub.WatchEvents(pb.WatchEventsRequest(), metadata=md, timeout=30)
    received: list[pb.Event] = []
    done = threading.Event()

    def consume() -> None:
        for item in live:
            received.append(item.event)
            if len(received) == 3:
                done.set()
                return

    # The headers leave once the stream's start is fixed: changes made after them are all seen.
    start = dict(live.initial_metadata())["x-keysvc-cursor"]
    thread = threading.Thread(target=consume)
    thread.start()
    first = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5).key.key_id
    stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(policy_id="p", scopes=["a"])), metadata=md, timeout=5)
    stub.RevokeKey(pb.RevokeKeyRequest(key_id=first), metadata=md, timeout=5)
    assert done.wait(10)
    live.cancel()
    thread.join(5)
    assert [e.type for e in received] == ["key.created", "policy.created", "key.revoked"]
    assert received[0].actor and received[2].key_id == first
    assert start and start not in {e.cursor for e in received}  # bootstrap made the first event

    old_cursor = received[0].cursor
    make_keys(stub, md, "o", 300)  # far past the retention of 5 (trimming is approximate)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.WatchEvents(pb.WatchEventsRequest(since=old_cursor), metadata=md, timeout=10)))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
