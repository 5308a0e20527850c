"""The issue's walk-through, on real server processes sharing one store."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
import redis
from google.protobuf import duration_pb2

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


def admin_md(secret: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")]


def validate(server: ServerProcess, key: str, *scopes: str) -> pb.ValidateResponse:
    return server.stub().Validate(pb.ValidateRequest(key=key, required_scopes=scopes), timeout=5)


def wait_for_code(server: ServerProcess, key: str, code: int, bound_s: float) -> float:
    """Poll Validate until it answers `code`; return the seconds it took (fail past the bound)."""
    stub = server.stub()
    start = time.monotonic()
    while True:
        reply = stub.Validate(pb.ValidateRequest(key=key), timeout=5)
        elapsed = time.monotonic() - start
        if reply.code == code:
            return elapsed
        assert elapsed < bound_s, f"still {pb.Code.Name(reply.code)} after {elapsed:.3f}s"
        time.sleep(0.002)


def walk(
    first: ServerProcess, second: ServerProcess, admin_secret: str, propagation_bound_s: float
) -> list[str]:
    """Run the walk-through; return every plaintext secret it saw."""
    md = admin_md(admin_secret)
    admin = first.stub()
    policy = admin.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(
        policy_id="partners", description="partner API", scopes=["orders:read", "orders:write"])),
        metadata=md, timeout=5).policy
    assert policy.version == 1
    created = admin.CreateKey(pb.CreateKeyRequest(
        owner_id="acme", name="acme prod", policy_id="partners", scopes=["orders:read"],
        metadata={"tier": "gold"}), metadata=md, timeout=5)
    secret, key_id = created.secret, created.key.key_id
    assert secret.startswith("ks_") and created.key.hint == secret[:7]

    ok = validate(first, secret, "orders:read")
    assert (ok.valid, ok.code, ok.key_id, ok.owner_id) == (True, pb.CODE_VALID, key_id, "acme")
    assert list(ok.scopes) == ["orders:read"] and ok.metadata["tier"] == "gold"
    assert ok.policy_id == "partners" and ok.policy_version == 1
    # Warm the second server's cache, so propagation below is eviction, not a cold read.
    assert validate(second, secret, "orders:read").code == pb.CODE_VALID

    denied = validate(first, secret, "orders:write")
    assert (denied.valid, denied.code) == (False, pb.CODE_INSUFFICIENT_SCOPE)

    rotated = admin.RotateKey(pb.RotateKeyRequest(
        key_id=key_id, grace_period=duration_pb2.Duration(seconds=2)), metadata=md, timeout=5)
    new_secret, new_id = rotated.secret, rotated.key.key_id
    assert new_secret != secret and new_id != key_id
    assert rotated.previous.status == pb.KEY_STATUS_REVOKING and rotated.previous.rotated_to == new_id
    for server in (first, second):
        assert validate(server, secret, "orders:read").code == pb.CODE_VALID
        new_reply = validate(server, new_secret, "orders:read")
        assert (new_reply.code, new_reply.key_id) == (pb.CODE_VALID, new_id)
    # After the grace period the old secret is refused everywhere (clock-evaluated, no event needed).
    time.sleep(2.1)
    for server in (first, second):
        assert validate(server, secret).code == pb.CODE_REVOKED
        assert validate(server, new_secret).code == pb.CODE_VALID

    admin.RevokeKey(pb.RevokeKeyRequest(key_id=new_id, reason="walk-through"), metadata=md, timeout=5)
    took = wait_for_code(second, new_secret, pb.CODE_REVOKED, propagation_bound_s)
    print(f"revocation reached the second server in {took * 1000:.1f} ms")
    assert validate(first, new_secret).code == pb.CODE_REVOKED
    return [secret, new_secret, admin_secret]


def test_walkthrough_on_redis_two_servers(
    start_server: Callable[..., ServerProcess], redis_url: str, stack: str
) -> None:
    _, admin_secret = bootstrap(redis_url)
    first, second = start_server(redis_url, stack=stack), start_server(redis_url, stack=stack)
    secrets = walk(first, second, admin_secret, propagation_bound_s=0.1)

    # No plaintext key anywhere in Redis: every key name and every value of every type.
    client = redis.Redis.from_url(redis_url)
    dump = []
    for name in client.scan_iter(count=1000):
        dump.append(name)
        kind = client.type(name)
        if kind == b"string":
            dump.append(client.get(name) or b"")
        elif kind == b"hash":
            dump.extend(x for kv in client.hgetall(name).items() for x in kv)
        elif kind == b"zset":
            dump.extend(m for m, _ in client.zrange(name, 0, -1, withscores=True))
        elif kind == b"set":
            dump.extend(client.smembers(name))
        elif kind == b"list":
            dump.extend(client.lrange(name, 0, -1))
        elif kind == b"stream":
            dump.extend(x for _, fields in client.xrange(name) for kv in fields.items() for x in kv)
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} for {name!r}")
    blob = b"\n".join(dump)
    assert len(dump) > 10, "the dump should cover the walk-through's data"
    for secret in secrets:
        assert secret.encode() not in blob
        assert secret[3:].encode() not in blob  # not even the body without its prefix
    assert '"action": "key.rotate"' in first.logs()
    for server in (first, second):
        logs = server.logs()
        for secret in secrets:
            assert secret not in logs and secret[3:] not in logs


def test_walkthrough_on_sqlite_two_servers(
    start_server: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    _, admin_secret = bootstrap(sqlite_url)
    first, second = start_server(sqlite_url), start_server(sqlite_url)
    # SQLite followers poll the event table (every 50 ms by default): a looser bound.
    secrets = walk(first, second, admin_secret, propagation_bound_s=1.0)
    path = sqlite_url.removeprefix("sqlite://")
    for server in (first, second):
        server.stop()
    blob = b"".join(
        open(p, "rb").read() for p in (path, path + "-wal") if __import__("os").path.exists(p)
    )
    assert b"partners" in blob, "the file should hold the walk-through's data"
    for secret in secrets:
        assert secret.encode() not in blob and secret[3:].encode() not in blob


def test_admin_auth_refusals_are_audited(
    start_server: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    admin_id, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url)
    stub = server.stub()
    request = pb.ListKeysRequest()

    def code_of(metadata: list[tuple[str, str]] | None) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            stub.ListKeys(request, metadata=metadata, timeout=5)
        return info.value.code()

    assert code_of(None) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of([("authorization", "Basic abc")]) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(admin_md("ks_not-a-key")) == grpc.StatusCode.UNAUTHENTICATED
    md = admin_md(admin_secret)
    plain = stub.CreateKey(pb.CreateKeyRequest(owner_id="bob", scopes=["read"]), metadata=md, timeout=5)
    assert code_of(admin_md(plain.secret)) == grpc.StatusCode.PERMISSION_DENIED
    # A second admin key works until it is revoked, then is refused.
    other = stub.CreateKey(
        pb.CreateKeyRequest(owner_id="ops", scopes=["keysvc:admin"]), metadata=md, timeout=5
    )
    assert stub.ListKeys(request, metadata=admin_md(other.secret), timeout=5).keys
    stub.RevokeKey(pb.RevokeKeyRequest(key_id=other.key.key_id), metadata=md, timeout=5)
    assert code_of(admin_md(other.secret)) == grpc.StatusCode.UNAUTHENTICATED
    logs = server.logs()
    assert logs.count('"action": "auth.denied"') >= 5
    # Reads are audited too: every admin call leaves one audit record.
    assert logs.count('"action": "key.list"') == 1
    assert f'"actor": "{plain.key.key_id}"' in logs
    for secret in (admin_secret, plain.secret, other.secret):
        assert secret not in logs
    assert admin_id


def test_sigterm_exits_zero(start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str) -> None:
    server = start_server(sqlite_url, stack=stack)
    assert server.stop() == 0
    assert "keysvc stopped" in server.logs()
    assert f'"stack": "{stack}"' in server.logs()
