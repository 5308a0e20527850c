"""Admin authentication over real channels on both stacks: fail-closed, the caller's address, the last admin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from keysvc.core import keys
from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, bootstrap
from tests.e2e.test_store_outage import RedisProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def bearer(secret: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")]


def test_fail_open_never_admits_an_admin_call(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess, stack: str
) -> None:
    _, admin_secret = bootstrap(own_redis.url)
    server = start_server(own_redis.url, "--cache-ttl-s", "0.2", "--stale-window-s", "60",
                          "--store-timeout-ms", "100", env={"KEYSVC_FAIL_OPEN": "true"}, stack=stack)
    stub = server.stub()
    stub.ListKeys(pb.ListKeysRequest(), metadata=bearer(admin_secret), timeout=5)  # cached now
    stranger = keys.generate().secret  # well formed, never stored
    own_redis.stop()
    # The data plane fails open, as configured ...
    assert stub.Validate(pb.ValidateRequest(key=stranger), timeout=5).valid
    # ... the control plane does not: neither an unknown key (fail-open) nor a stale-cached admin key.
    for secret in (stranger, admin_secret):
        for method, request in (("ListKeys", pb.ListKeysRequest()),
                                ("CreateKey", pb.CreateKeyRequest(owner_id="o"))):
            code, message = status_of(
                lambda m=method, r=request, s=secret: getattr(stub, m)(r, metadata=bearer(s), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE and "cannot authenticate" in message, (method, message)
    logs = server.logs()
    assert logs.count('"action": "auth.denied"') >= 4 and '"outcome": "unavailable"' in logs
    assert '"action": "key.create"' not in logs and '"action": "key.list", "actor": ""' not in logs


def test_admin_keys_on_a_policy_with_allowed_cidrs(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str, tmp_path: Path
) -> None:
    _, root = bootstrap(sqlite_url)
    socket_path = tmp_path / "admin.sock"
    server = start_server(sqlite_url, "--admin-listen", f"unix:{socket_path}", stack=stack)
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    try:
        admin = keysvc_pb2_grpc.KeyServiceStub(channel)
        secrets = {}
        for policy_id, cidrs in (("loopback", ["127.0.0.0/8"]), ("v6local", ["::1"]),
                                 ("elsewhere", ["10.0.0.0/8"])):
            admin.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(
                policy_id=policy_id, scopes=["keysvc:admin"], allowed_cidrs=cidrs)),
                metadata=bearer(root), timeout=5)
            secrets[policy_id] = admin.CreateKey(pb.CreateKeyRequest(owner_id="ops", policy_id=policy_id),
                                                 metadata=bearer(root), timeout=5).secret
        # A unix socket is local: 127.0.0.1 or ::1.
        for policy_id in ("loopback", "v6local"):
            admin.ListKeys(pb.ListKeysRequest(), metadata=bearer(secrets[policy_id]), timeout=5)
        code, message = status_of(lambda: admin.ListKeys(
            pb.ListKeysRequest(), metadata=bearer(secrets["elsewhere"]), timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "address" in message and "scope" not in message
    finally:
        channel.close()
    # Over TCP from 127.0.0.1, the peer address is the client address.
    tcp_server = start_server(sqlite_url, stack=stack)
    tcp = tcp_server.stub()
    tcp.ListKeys(pb.ListKeysRequest(), metadata=bearer(secrets["loopback"]), timeout=5)
    code, message = status_of(lambda: tcp.ListKeys(
        pb.ListKeysRequest(), metadata=bearer(secrets["v6local"]), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "address" in message
    assert '"outcome": "ip_not_allowed"' in server.logs() + tcp_server.logs()


def test_the_last_admin_key_cannot_revoke_itself_over_grpc(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str
) -> None:
    root_id, root = bootstrap(sqlite_url)
    stub = start_server(sqlite_url, stack=stack).stub()
    code, message = status_of(lambda: stub.RevokeKey(pb.RevokeKeyRequest(key_id=root_id),
                                                     metadata=bearer(root), timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "bootstrap --force" in message
    assert stub.GetKey(pb.GetKeyRequest(key_id=root_id), metadata=bearer(root), timeout=5).key.status == (
        pb.KEY_STATUS_ACTIVE)
