"""The sync stack under many threads: write-behind, response memo, negative cache and invalidations together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc

from keysvc.core import keys
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap
from tests.e2e.test_extauthz import check_request

pytestmark = pytest.mark.e2e

THREADS = 8
ROUNDS = 120


def test_sync_stack_threads_and_the_loop_share_state_without_errors(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    _, secret = bootstrap(redis_url)
    md = [("authorization", f"Bearer {secret}")]
    # A tiny cache and negative cache, negative entries expiring at once: pool threads keep
    # finding expired entries while the loop inserts, evicts and drains last uses.
    server = start_server(redis_url, "--cache-size", "8", "--negative-cache-size", "4",
                          "--negative-ttl-s", "0.001", "--grpc-threads", "16", stack="sync")
    stub = server.stub()
    created = [stub.CreateKey(pb.CreateKeyRequest(owner_id=f"o{i}"), metadata=md, timeout=5) for i in range(12)]
    doomed = {c.key.key_id for c in created[:3]}
    unknown = [keys.generate().secret for _ in range(16)]
    errors: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        channel = server.channel()
        own, authz = server.stub(), ea_grpc.AuthorizationStub(channel)
        for n in range(ROUNDS):
            key = created[(worker * 5 + n) % len(created)]
            try:
                code = own.Validate(pb.ValidateRequest(key=key.secret), timeout=10).code
                allowed = authz.Check(check_request("GET", "/", {"x-api-key": key.secret}), timeout=10)
                miss = own.Validate(pb.ValidateRequest(key=unknown[(worker + n) % len(unknown)]), timeout=10)
            except grpc.RpcError as exc:
                with lock:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            expected = (pb.CODE_VALID, pb.CODE_REVOKED) if key.key.key_id in doomed else (pb.CODE_VALID,)
            with lock:
                if code not in expected or miss.code != pb.CODE_NOT_FOUND:
                    errors.append(f"{pb.Code.Name(code)} / {pb.Code.Name(miss.code)}")
                if allowed.status.code not in (0, 16):  # OK, or UNAUTHENTICATED once revoked
                    errors.append(f"Check answered {allowed.status.code}")

    with ThreadPoolExecutor(THREADS) as pool:
        running = [pool.submit(client, w) for w in range(THREADS)]
        for key in created[:3]:
            stub.RevokeKey(pb.RevokeKeyRequest(key_id=key.key.key_id), metadata=md, timeout=5)
        for future in running:
            future.result()
    assert not errors, errors[:5]
    # The write-behind survived: a key used once more now has its last use written. (Uses
    # during the stress may be dropped: the last-use map is bounded by the tiny cache size.)
    deadline = time.monotonic() + 60
    for key in created[3:]:
        assert stub.Validate(pb.ValidateRequest(key=key.secret), timeout=10).code == pb.CODE_VALID
        while not stub.GetKey(pb.GetKeyRequest(key_id=key.key.key_id), metadata=md, timeout=5).key.HasField(
                "last_used_at"):
            assert time.monotonic() < deadline, "a key's last use was never recorded"
            time.sleep(0.1)
    logs = server.logs()
    assert "background task failed" not in logs
    assert "internal error" not in logs and "Exception calling application" not in logs
