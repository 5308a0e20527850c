"""keysvc.client against a real `keysvc serve` over real gRPC: every method, on Client and AsyncClient."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keysvc.client import (
    Aborted,
    AlreadyExists,
    Client,
    ClientConfigError,
    Code,
    FailedPrecondition,
    InvalidArgument,
    KeyStatus,
    NotFound,
    PermissionDenied,
    Policy,
    QuotaRefill,
    RateLimit,
    Unauthenticated,
    to_dict,
)
from tests.e2e._client_kinds import KINDS, make_client
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(start_server: Callable[..., ServerProcess], sqlite_url: str) -> tuple[ServerProcess, str]:
    _, admin_secret = bootstrap(sqlite_url)
    return start_server(sqlite_url), admin_secret


@pytest.fixture
def client(kind: str, served: tuple[ServerProcess, str]) -> Iterator[Any]:
    server, admin_secret = served
    c = make_client(kind, server.addr, admin_key=admin_secret, timeout=15)
    yield c
    c.close()


def test_keys_lifecycle(client: Any) -> None:
    assert client.health() == "SERVING"
    created = client.create_key("acme", name="ci", scopes=["read", "write"], metadata={"tier": "gold"},
                                ttl=timedelta(days=1), quota=5)
    key = created.key
    assert key.owner_id == "acme" and key.status is KeyStatus.ACTIVE and key.scopes == ("read", "write")
    assert key.metadata == {"tier": "gold"} and key.quota_remaining == 5 and not created.secret_reissued
    assert key.expires_at is not None and key.expires_at > datetime.now(UTC) + timedelta(hours=23)
    assert created.secret.startswith("ks_") and created.secret not in repr(created)

    ok = client.validate(created.secret, required_scopes=["read"], client_ip="10.0.0.1")
    assert ok.valid and ok.code is Code.VALID and ok.key_id == key.key_id and ok.owner_id == "acme"
    assert ok.metadata == {"tier": "gold"} and ok.quota_remaining == 4
    denied = client.validate(created.secret, required_scopes=["admin"])
    assert not denied.valid and denied.code is Code.INSUFFICIENT_SCOPE
    batch = client.batch_validate([created.secret, "ks_typo", created.secret], required_scopes=["read"])
    assert [r.code for r in batch] == [Code.VALID, Code.MALFORMED, Code.VALID]

    got = client.get_key(key.key_id)
    assert got.key_id == key.key_id and got.hint == key.hint
    updated = client.update_key(key.key_id, name="renamed", metadata={"tier": "silver"}, enabled=False,
                                expected_revision=got.revision)
    assert updated.name == "renamed" and updated.metadata == {"tier": "silver"}
    assert updated.status is KeyStatus.DISABLED and updated.scopes == ("read", "write")
    assert client.validate(created.secret).code is Code.DISABLED
    with pytest.raises(Aborted):  # the revision moved on
        client.update_key(key.key_id, enabled=True, expected_revision=got.revision)
    client.update_key(key.key_id, enabled=True)

    rotated = client.rotate_key(key.key_id, grace_period=timedelta(hours=1))
    assert rotated.previous.key_id == key.key_id and rotated.previous.status is KeyStatus.REVOKING
    assert rotated.key.key_id != key.key_id and rotated.key.rotated_from == key.key_id
    assert rotated.secret not in repr(rotated)
    assert client.validate(rotated.secret).valid and client.validate(created.secret).valid

    revoked = client.revoke_key(rotated.key.key_id, reason="done")
    assert revoked.status is KeyStatus.REVOKED
    assert client.validate(rotated.secret).code is Code.REVOKED
    with pytest.raises(FailedPrecondition):
        client.revoke_key(rotated.key.key_id)
    with pytest.raises(NotFound) as missing:
        client.get_key("key_" + "0" * 17)
    assert missing.value.method == "GetKey"
    with pytest.raises(InvalidArgument) as bad:
        client.create_key("acme", request_id="not a valid id!")
    assert bad.value.field == "request_id" and "not a valid id" not in str(bad.value)


def test_listing_follows_page_tokens(client: Any) -> None:
    made = {client.create_key("pager").key.key_id for _ in range(5)}
    page = client.list_keys(owner_id="pager", page_size=2)
    assert len(page) == 2 and page.next_page_token
    assert {k.key_id for k in client.iter_keys(owner_id="pager", page_size=2)} == made
    assert {k.key_id for k in client.iter_keys(owner_id="pager", status=KeyStatus.ACTIVE)} == made
    assert list(client.iter_keys(owner_id="pager", status=KeyStatus.REVOKED)) == []
    assert {k.key_id for k in client.iter_keys(owner_id="pager", unused_for=timedelta(days=30))} == made
    for n in range(3):
        client.create_policy(Policy(f"p{n}", scopes=("read",)))
    ids = [p.policy_id for p in client.iter_policies(page_size=2)]
    assert {"p0", "p1", "p2"} <= set(ids) and len(ids) == len(set(ids))
    assert len(client.list_policies(page_size=2)) == 2


def test_policies_lifecycle(client: Any) -> None:
    made = client.create_policy(Policy(
        "partners", description="partner apps", scopes=("read", "write"), allowed_cidrs=("10.0.0.0/8",),
        rate_limit=RateLimit(100, timedelta(seconds=1)), quota_refill=QuotaRefill(1000, timedelta(days=1)),
        max_key_ttl=timedelta(days=90)))
    assert made.version == 1 and made.rate_limit == RateLimit(100, timedelta(seconds=1))
    assert made.quota_refill == QuotaRefill(1000, timedelta(days=1)) and made.max_key_ttl == timedelta(days=90)
    with pytest.raises(AlreadyExists):
        client.create_policy(Policy("partners"))
    key = client.create_key("acme", policy_id="partners")
    ok = client.validate(key.secret, required_scopes=["read"], client_ip="10.1.2.3")
    assert ok.valid and ok.policy_id == "partners" and ok.policy_version == 1
    assert ok.rate_limit is not None and ok.rate_limit.limit == 100 and ok.rate_limit.remaining == 99
    assert client.validate(key.secret, client_ip="192.0.2.1").code is Code.IP_NOT_ALLOWED

    narrower = Policy("partners", scopes=("read",), allowed_cidrs=("10.0.0.0/8",),
                      rate_limit=RateLimit(100, timedelta(seconds=1)))
    dry = client.update_policy(narrower, expected_version=1, dry_run=True)
    assert not dry.applied and dry.impact.breaking and dry.impact.keys_affected == 1
    assert dry.impact.scopes_removed == ("write",) and key.key.key_id in dry.impact.sample_key_ids
    with pytest.raises(FailedPrecondition):
        client.update_policy(narrower, expected_version=1)
    applied = client.update_policy(narrower, expected_version=1, allow_breaking=True, change_note="narrow")
    assert applied.applied and applied.policy.version == 2 and applied.policy.change_note == "narrow"
    with pytest.raises(Aborted):
        client.update_policy(narrower, expected_version=1, allow_breaking=True)
    assert client.get_policy("partners").version == 2
    assert client.get_policy("partners", version=1).scopes == ("read", "write")
    back = client.rollback_policy("partners", to_version=1, allow_breaking=True)
    assert back.applied and back.policy.version == 3 and back.policy.scopes == ("read", "write")
    assert [p.version for p in client.iter_policy_versions("partners")] == [3, 2, 1]
    page = client.list_policy_versions("partners", page_size=2)
    assert [p.version for p in page] == [3, 2] and page.next_page_token
    assert to_dict(back)["policy"]["version"] == "3"  # the proto3 JSON mapping, as the CLI prints it


def test_watch_events_streams_changes(client: Any) -> None:
    made = client.create_key("watcher")
    client.revoke_key(made.key.key_id)
    events = client.watch_events(from_beginning=True, timeout=30)
    seen = list(itertools.islice(events, 3))
    events.close()
    assert [e.type for e in seen] == ["key.created", "key.created", "key.revoked"]
    assert seen[2].key_id == made.key.key_id and seen[2].cursor and seen[2].at is not None
    resumed = client.watch_events(since=seen[1].cursor, timeout=30)
    assert next(iter(resumed)).cursor == seen[2].cursor
    resumed.close()


def test_admin_calls_need_a_good_admin_key(kind: str, served: tuple[ServerProcess, str]) -> None:
    server, admin_secret = served
    admin = make_client(kind, server.addr, admin_key=admin_secret)
    plain = admin.create_key("nobody", scopes=["read"]).secret
    admin.close()
    for key in ("", plain):
        c = make_client(kind, server.addr, admin_key=plain if key else "")
        try:
            if not key:
                with pytest.raises(ClientConfigError, match="admin_key"):
                    c.list_keys()
            else:
                with pytest.raises((Unauthenticated, PermissionDenied)) as refused:
                    c.list_keys()
                assert plain not in str(refused.value) + repr(refused.value)
            assert c.validate(plain).valid  # Validate needs no admin key
        finally:
            c.close()


def test_a_unix_socket_target(kind: str, start_server: Callable[..., ServerProcess], sqlite_url: str,
                              tmp_path: Path) -> None:
    _, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url, listen=f"unix:{tmp_path}/keysvc.sock")
    c = make_client(kind, server.addr, admin_key=admin_secret)
    try:
        made = c.create_key("sock")
        assert c.validate(made.secret).valid
    finally:
        c.close()


def test_from_env_reads_what_the_cli_reads(served: tuple[ServerProcess, str]) -> None:
    server, admin_secret = served
    with Client.from_env({"KEYSVC_ADDR": server.addr, "KEYSVC_ADMIN_KEY": admin_secret}) as c:
        assert c.create_key("env").key.owner_id == "env"
        assert admin_secret not in repr(c)
    with pytest.raises(ClientConfigError, match="tls"):
        Client.from_env({"KEYSVC_ADDR": server.addr, "KEYSVC_TLS_CLIENT_CERT": "/nonexistent.pem"})
