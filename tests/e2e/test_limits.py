"""Quotas and rate limits held exactly across two server processes sharing one store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


async def hammer(addrs: list[str], key: str, callers_per_server: int, calls_per_caller: int) -> list[pb.ValidateResponse]:
    """`callers_per_server` concurrent callers on each server, each making `calls_per_caller` calls."""
    replies: list[pb.ValidateResponse] = []
    channels = [grpc.aio.insecure_channel(addr) for addr in addrs]

    async def caller(stub: keysvc_pb2_grpc.KeyServiceStub) -> None:
        for _ in range(calls_per_caller):
            replies.append(await stub.Validate(pb.ValidateRequest(key=key), timeout=10))

    try:
        stubs = [keysvc_pb2_grpc.KeyServiceStub(c) for c in channels]
        await asyncio.gather(*(caller(s) for s in stubs for _ in range(callers_per_server)))
    finally:
        for channel in channels:
            await channel.close()
    return replies


@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
def test_quota_is_exact_across_two_servers(
    start_server: Callable[..., ServerProcess], store_kind: str, request: pytest.FixtureRequest
) -> None:
    store = request.getfixturevalue("redis_url" if store_kind == "redis" else "sqlite_url")
    _, admin_secret = bootstrap(store)
    # 100 callers and two servers on two cores starve the event loops: give store calls
    # room, since this test is about exact counting, not about timeouts (UNAVAILABLE).
    relaxed = ("--store-timeout-ms", "2000")
    first, second = start_server(store, *relaxed), start_server(store, *relaxed)
    created = first.stub().CreateKey(pb.CreateKeyRequest(owner_id="o", quota=1000),
                                     metadata=[("authorization", f"Bearer {admin_secret}")], timeout=5)
    replies = asyncio.run(hammer([first.addr, second.addr], created.secret, 50, 30))
    codes = Counter(pb.Code.Name(r.code) for r in replies)
    assert codes == {"CODE_VALID": 1000, "CODE_QUOTA_EXHAUSTED": 2000}
    remaining = sorted(r.quota_remaining for r in replies if r.code == pb.CODE_VALID)
    assert remaining == list(range(1000)), "each use is counted once: 999 down to 0"
    key = first.stub().GetKey(pb.GetKeyRequest(key_id=created.key.key_id),
                              metadata=[("authorization", f"Bearer {admin_secret}")], timeout=5).key
    assert key.quota_remaining == 0


def test_rate_limit_holds_per_window_across_two_servers(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    """Guarantee: within every fixed window, accepted calls <= limit, exactly (tolerance 0).

    Windows are aligned to the epoch on the sidecars' clocks; the counter is one
    atomic Lua call, so two processes can never both take the last unit.
    """
    _, admin_secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {admin_secret}")]
    relaxed = ("--store-timeout-ms", "2000")
    first, second = start_server(redis_url, *relaxed), start_server(redis_url, *relaxed)
    stub = first.stub()
    stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(
        policy_id="tight", rate_limit=pb.RateLimit(requests=25, window=duration_pb2.Duration(seconds=1))),
    ), metadata=md, timeout=5)
    created = stub.CreateKey(pb.CreateKeyRequest(owner_id="o", policy_id="tight"), metadata=md, timeout=5)

    async def overload(seconds: float) -> list[pb.ValidateResponse]:
        replies: list[pb.ValidateResponse] = []
        deadline = time.monotonic() + seconds
        channels = [grpc.aio.insecure_channel(a) for a in (first.addr, second.addr)]

        async def caller(s: keysvc_pb2_grpc.KeyServiceStub) -> None:
            while time.monotonic() < deadline:
                replies.append(await s.Validate(pb.ValidateRequest(key=created.secret), timeout=10))
                await asyncio.sleep(0.002)

        stubs = [keysvc_pb2_grpc.KeyServiceStub(c) for c in channels]
        await asyncio.gather(*(caller(s) for s in stubs for _ in range(8)))
        for channel in channels:
            await channel.close()
        return replies

    replies = asyncio.run(overload(3.5))
    accepted = Counter(r.rate_limit.reset_at.seconds for r in replies if r.code == pb.CODE_VALID)
    refused = Counter(r.rate_limit.reset_at.seconds for r in replies if r.code == pb.CODE_RATE_LIMITED)
    assert {r.code for r in replies} == {pb.CODE_VALID, pb.CODE_RATE_LIMITED}
    assert max(accepted.values()) <= 25, accepted
    # Windows under overload the whole time are filled exactly to the limit.
    full = [w for w in accepted if refused[w] > 0 and w != min(accepted) and w != max(accepted)]
    assert full, f"no window was overloaded throughout: {accepted} {refused}"
    assert all(accepted[w] == 25 for w in full), accepted
    limited = next(r for r in replies if r.code == pb.CODE_RATE_LIMITED)
    assert (limited.rate_limit.limit, limited.rate_limit.remaining) == (25, 0)


@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
def test_rotation_grace_shares_one_quota_across_two_servers(
    start_server: Callable[..., ServerProcess], store_kind: str, request: pytest.FixtureRequest
) -> None:
    """During a rotation's grace period the old and new secret spend one quota, never two."""
    store = request.getfixturevalue("redis_url" if store_kind == "redis" else "sqlite_url")
    _, admin_secret = bootstrap(store)
    md = [("authorization", f"Bearer {admin_secret}")]
    relaxed = ("--store-timeout-ms", "2000")
    first, second = start_server(store, *relaxed), start_server(store, *relaxed)
    created = first.stub().CreateKey(pb.CreateKeyRequest(owner_id="o", quota=300), metadata=md, timeout=5)
    rotated = second.stub().RotateKey(pb.RotateKeyRequest(
        key_id=created.key.key_id, grace_period=duration_pb2.Duration(seconds=3600)), metadata=md, timeout=5)
    addrs = [first.addr, second.addr]

    async def both() -> list[pb.ValidateResponse]:
        old, new = await asyncio.gather(hammer(addrs, created.secret, 10, 25),
                                        hammer(addrs, rotated.secret, 10, 25))
        return old + new

    replies = asyncio.run(both())
    codes = Counter(pb.Code.Name(r.code) for r in replies)
    assert codes == {"CODE_VALID": 300, "CODE_QUOTA_EXHAUSTED": 700}, codes
    remaining = sorted(r.quota_remaining for r in replies if r.code == pb.CODE_VALID)
    assert remaining == list(range(300)), "one counter for both secrets"
