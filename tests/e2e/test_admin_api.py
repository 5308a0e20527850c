"""Admin RPCs over a real channel: clear statuses for bad requests, nothing half-written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, bootstrap, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def admin(
    start_server: Callable[..., ServerProcess], sqlite_url: str, stack: str
) -> tuple[ServerProcess, list[tuple[str, str]]]:
    _, secret = bootstrap(sqlite_url)
    return start_server(sqlite_url, stack=stack), [("authorization", f"Bearer {secret}")]


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_bad_requests_get_clear_statuses(admin: tuple[ServerProcess, list[tuple[str, str]]]) -> None:
    server, md = admin
    stub = server.stub()

    def call(method: str, request: object) -> tuple[grpc.StatusCode, str]:
        return status_of(lambda: getattr(stub, method)(request, metadata=md, timeout=5))

    code, message = call("CreateKey", pb.CreateKeyRequest(owner_id=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "owner_id" in message
    code, message = call("CreateKey", pb.CreateKeyRequest(owner_id="o", scopes=["has space"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "scope" in message
    code, message = call("CreateKey", pb.CreateKeyRequest(owner_id="o", metadata={f"k{i}": "v" for i in range(40)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in message
    code, message = call("CreateKey", pb.CreateKeyRequest(owner_id="o", prefix="Bad_Prefix"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "prefix" in message
    code, message = call("CreateKey", pb.CreateKeyRequest(
        owner_id="o", expires_at=timestamp_pb2.Timestamp(seconds=1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expires_at" in message
    code, message = call("CreateKey", pb.CreateKeyRequest(owner_id="o", policy_id="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in message
    code, _ = call("GetKey", pb.GetKeyRequest(key_id="key_00000000000000000"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = call("GetKey", pb.GetKeyRequest(key_id="../etc/passwd"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "key_id" in message
    code, message = call("ListKeys", pb.ListKeysRequest(page_token="garbage!"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    assert call("CreatePolicy", pb.CreatePolicyRequest(policy=pb.Policy(policy_id="Bad Id")))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)
    assert call("CreatePolicy", pb.CreatePolicyRequest(
        policy=pb.Policy(policy_id="p", allowed_cidrs=["10.0.0.0/33"])))[0] == grpc.StatusCode.INVALID_ARGUMENT
    stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(policy_id="p", scopes=["a"])), metadata=md, timeout=5)
    assert call("CreatePolicy", pb.CreatePolicyRequest(policy=pb.Policy(policy_id="p")))[0] == (
        grpc.StatusCode.ALREADY_EXISTS)
    assert call("GetPolicy", pb.GetPolicyRequest(policy_id="p", version=9))[0] == grpc.StatusCode.NOT_FOUND

    created = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    key_id = created.key.key_id
    code, message = call("UpdateKey", pb.UpdateKeyRequest(
        key_id=key_id, update_mask=field_mask_pb2.FieldMask(paths=["owner_id"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "owner_id" in message
    code, _ = call("UpdateKey", pb.UpdateKeyRequest(
        key_id=key_id, key=pb.Key(name="x"), update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        expected_revision=7))
    assert code == grpc.StatusCode.ABORTED
    updated = stub.UpdateKey(pb.UpdateKeyRequest(
        key_id=key_id, key=pb.Key(name="renamed"), update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        expected_revision=1), metadata=md, timeout=5).key
    assert (updated.name, updated.revision) == ("renamed", 2)
    code, _ = call("RevokeKey", pb.RevokeKeyRequest(
        key_id=key_id, grace_period=duration_pb2.Duration(seconds=-5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    stub.RevokeKey(pb.RevokeKeyRequest(key_id=key_id), metadata=md, timeout=5)
    assert call("RevokeKey", pb.RevokeKeyRequest(key_id=key_id))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert call("RotateKey", pb.RotateKeyRequest(key_id=key_id))[0] == grpc.StatusCode.FAILED_PRECONDITION

    # Nothing half-written: the refused requests left exactly the keys made on purpose.
    keys = stub.ListKeys(pb.ListKeysRequest(owner_id="o"), metadata=md, timeout=5).keys
    assert [k.key_id for k in keys] == [key_id]
    assert keys[0].status == pb.KEY_STATUS_REVOKED


def test_validate_bad_input_is_an_answer_or_a_clear_status(
    admin: tuple[ServerProcess, list[tuple[str, str]]],
) -> None:
    server, _ = admin
    stub = server.stub()
    reply = stub.Validate(pb.ValidateRequest(key="\x00" * 300), timeout=5)
    assert (reply.valid, reply.code) == (False, pb.CODE_MALFORMED)
    code, message = status_of(lambda: stub.Validate(
        pb.ValidateRequest(key="k", required_scopes=[f"s{i}" for i in range(65)]), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "required_scopes" in message
    code, _ = status_of(lambda: stub.Validate(pb.ValidateRequest(key="k" * 70_000), timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The server is still fine afterwards.
    assert stub.Validate(pb.ValidateRequest(key="k"), timeout=5).code == pb.CODE_MALFORMED


def test_admin_on_its_own_unix_socket(
    start_server: Callable[..., ServerProcess], sqlite_url: str, tmp_path: Path
) -> None:
    _, secret = bootstrap(sqlite_url)
    md = [("authorization", f"Bearer {secret}")]
    socket_path = tmp_path / "admin.sock"
    server = start_server(sqlite_url, "--admin-listen", f"unix:{socket_path}")
    public = server.stub()
    code, message = status_of(lambda: public.ListKeys(pb.ListKeysRequest(), metadata=md, timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin listener" in message
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    try:
        admin = keysvc_pb2_grpc.KeyServiceStub(channel)
        created = admin.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=md, timeout=5)
    finally:
        channel.close()
    assert public.Validate(pb.ValidateRequest(key=created.secret), timeout=5).code == pb.CODE_VALID


def test_validate_on_a_unix_socket(start_server: Callable[..., ServerProcess], sqlite_url: str,
                                   tmp_path: Path) -> None:
    server = start_server(sqlite_url, listen=f"unix:{tmp_path}/keysvc.sock")
    reply = server.stub().Validate(pb.ValidateRequest(key="ks_nope"), timeout=5)
    assert reply.code == pb.CODE_MALFORMED
    assert free_port() > 0
