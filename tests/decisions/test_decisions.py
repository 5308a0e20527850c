"""The same calls get the same answers from the sidecar and from the in-process library (sync, asyncio)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from keysvc.core.keys import generate
from keysvc.v1 import keysvc_pb2 as pb
from tests.decisions.conftest import IMPLEMENTATIONS, STORE_TIMEOUT_MS, Answer, Env, Impl
from tests.e2e._servers import bootstrap, launch
from tests.e2e.test_store_outage import RedisProcess

pytestmark = pytest.mark.e2e


def _policy(env: Env, **fields: object) -> str:
    policy_id = f"p-{uuid.uuid4().hex[:12]}"
    env.call("CreatePolicy", pb.CreatePolicyRequest(policy=pb.Policy(policy_id=policy_id, **fields)))
    return policy_id


def test_valid_key_answers_its_identity(env: Env, impl: Impl) -> None:
    created = env.create_key(owner_id="team-a", scopes=["orders:read", "orders:write"],
                             metadata={"team": "a", "tier": "gold"})
    want = Answer("VALID", created.key.key_id, "team-a", ("orders:read", "orders:write"),
                  {"team": "a", "tier": "gold"})
    assert impl.check(created.secret) == want  # a miss: from the store
    assert impl.check(created.secret) == want  # a hit: from the cache


def test_unknown_key_is_not_found(impl: Impl) -> None:
    secret = generate().secret
    assert impl.check(secret).code == "NOT_FOUND"
    assert impl.check(secret).code == "NOT_FOUND"  # the negative cache answers the same


@pytest.mark.parametrize("text", ["", "garbage", "ks_" + "A" * 49, "x" * 5000])
def test_malformed_key_is_refused_offline(impl: Impl, text: str) -> None:
    assert impl.check(text) == Answer("MALFORMED")


def test_wrong_checksum_is_malformed(env: Env, impl: Impl) -> None:
    secret = env.create_key().secret
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert impl.check(typo) == Answer("MALFORMED")


def test_revocation_by_another_server_reaches_the_cache(env: Env, impl: Impl) -> None:
    created = env.create_key()
    assert impl.check(created.secret).code == "VALID"
    assert impl.check(created.secret).code == "VALID"  # cached now
    env.call("RevokeKey", pb.RevokeKeyRequest(key_id=created.key.key_id))
    assert impl.wait_for(created.secret, "REVOKED").key_id == created.key.key_id


def test_disabling_by_another_server_reaches_the_cache(env: Env, impl: Impl) -> None:
    created = env.create_key()
    assert impl.check(created.secret).code == "VALID"
    env.call("UpdateKey", pb.UpdateKeyRequest(key_id=created.key.key_id, key=pb.Key(enabled=False),
                                              update_mask=field_mask_pb2.FieldMask(paths=["enabled"])))
    impl.wait_for(created.secret, "DISABLED")


def test_expiry_needs_no_event(env: Env, impl: Impl) -> None:
    created = env.create_key(ttl=duration_pb2.Duration(seconds=2))
    assert impl.check(created.secret).code == "VALID"
    impl.wait_for(created.secret, "EXPIRED")


def test_scopes(env: Env, impl: Impl) -> None:
    secret = env.create_key(scopes=["orders:read", "orders:write"]).secret
    assert impl.check(secret, scopes=("orders:read",)).code == "VALID"
    assert impl.check(secret, scopes=("orders:read", "orders:write")).code == "VALID"
    denied = impl.check(secret, scopes=("orders:read", "billing:read"))
    assert denied.code == "INSUFFICIENT_SCOPE"
    assert denied.scopes == ("orders:read", "orders:write")


def test_policy_scopes_narrowed_by_the_key(env: Env, impl: Impl) -> None:
    policy = _policy(env, scopes=["a:read", "a:write", "b:read"])
    secret = env.create_key(policy_id=policy, scopes=["a:read"]).secret
    assert impl.check(secret, scopes=("a:read",)).scopes == ("a:read",)
    assert impl.check(secret, scopes=("a:write",)).code == "INSUFFICIENT_SCOPE"


def test_allowed_cidrs(env: Env, impl: Impl) -> None:
    policy = _policy(env, allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"])
    secret = env.create_key(policy_id=policy).secret
    assert impl.check(secret, client_ip="10.1.2.3").code == "VALID"
    assert impl.check(secret, client_ip="2001:db8::1").code == "VALID"
    assert impl.check(secret, client_ip="::ffff:10.9.9.9").code == "VALID"
    assert impl.check(secret, client_ip="192.168.1.1").code == "IP_NOT_ALLOWED"
    assert impl.check(secret, client_ip="").code == "IP_NOT_ALLOWED"
    assert impl.check(secret, client_ip="not-an-ip").code == "IP_NOT_ALLOWED"


def test_rate_limit(env: Env, impl: Impl) -> None:
    policy = _policy(env, rate_limit=pb.RateLimit(requests=2, window=duration_pb2.Duration(seconds=3600)))
    secret = env.create_key(policy_id=policy).secret
    answers = [impl.check(secret) for _ in range(4)]
    assert [(a.code, a.remaining) for a in answers] == [
        ("VALID", 1), ("VALID", 0), ("RATE_LIMITED", 0), ("RATE_LIMITED", 0)]


def test_quota(env: Env, impl: Impl) -> None:
    secret = env.create_key(quota=3).secret
    assert [(a.code, a.quota_remaining) for a in (impl.check(secret, cost=2), impl.check(secret),
                                                   impl.check(secret))] == [
        ("VALID", 1), ("VALID", 0), ("QUOTA_EXHAUSTED", 0)]


def test_rotation_keeps_the_old_secret_for_its_grace_period(env: Env, impl: Impl) -> None:
    created = env.create_key(owner_id="rot", metadata={"env": "prod"})
    assert impl.check(created.secret).code == "VALID"
    rotated = env.call("RotateKey", pb.RotateKeyRequest(key_id=created.key.key_id,
                                                        grace_period=duration_pb2.Duration(seconds=2)))
    new = impl.check(rotated.secret)
    assert (new.code, new.key_id, new.owner_id, new.metadata) == (
        "VALID", rotated.key.key_id, "rot", {"env": "prod"})
    assert impl.check(created.secret).code == "VALID"  # within the grace period
    impl.wait_for(created.secret, "REVOKED")
    assert impl.check(rotated.secret).code == "VALID"


def test_rotation_without_grace_revokes_at_once(env: Env, impl: Impl) -> None:
    created = env.create_key()
    assert impl.check(created.secret).code == "VALID"
    rotated = env.call("RotateKey", pb.RotateKeyRequest(key_id=created.key.key_id))
    impl.wait_for(created.secret, "REVOKED")
    assert impl.check(rotated.secret).code == "VALID"


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_store_down_answers_cached_keys_and_fails_closed(
    kind: str, tmp_path: Path, own_impl: Callable[..., Impl]
) -> None:
    """Redis SIGSTOPped: a cached key answers for the stale window, anything else UNAVAILABLE."""
    redis_proc = RedisProcess(tmp_path)
    redis_proc.start()
    try:
        _, secret = bootstrap(redis_proc.url)
        admin = launch(redis_proc.url, tmp_path, "--store-timeout-ms", str(STORE_TIMEOUT_MS))
        try:
            env = Env(redis_proc.url, admin, secret)
            cached, uncached = env.create_key(owner_id="o"), env.create_key(owner_id="o")
            limited = env.create_key(quota=100)
        finally:
            admin.stop()
        impl = own_impl(kind, redis_proc.url)
        assert impl.check(cached.secret).code == "VALID"
        assert impl.check(limited.secret).code == "VALID"
        assert redis_proc.proc is not None
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            assert impl.check(cached.secret) == Answer("VALID", cached.key.key_id, "o")
            assert impl.check(uncached.secret) == Answer("UNAVAILABLE")
            # Counters live only in the store: a key with a quota cannot be counted, so it is refused.
            assert impl.check(limited.secret).code == "UNAVAILABLE"
            assert impl.check(generate().secret) == Answer("UNAVAILABLE")
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
        assert impl.wait_for(uncached.secret, "VALID").key_id == uncached.key.key_id
    finally:
        redis_proc.stop()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_fail_open_answers_uncached_keys_valid(kind: str, tmp_path: Path, own_impl: Callable[..., Impl]) -> None:
    """With fail-open chosen, a store that does not answer lets uncached keys through (admin stays closed)."""
    redis_proc = RedisProcess(tmp_path)
    redis_proc.start()
    try:
        impl = own_impl(kind, redis_proc.url, "--fail-open", fail_open=True)
        assert redis_proc.proc is not None
        redis_proc.proc.send_signal(signal.SIGSTOP)
        try:
            assert impl.check(generate().secret).code == "VALID"
            assert impl.check("garbage").code == "MALFORMED"
        finally:
            redis_proc.proc.send_signal(signal.SIGCONT)
    finally:
        redis_proc.stop()
