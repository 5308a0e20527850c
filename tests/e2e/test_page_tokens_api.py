"""Page tokens over real gRPC, on both stores: bound to their request, refused otherwise."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    return sqlite_url if request.param == "sqlite" else str(request.getfixturevalue("redis_url"))


def test_a_token_works_only_for_its_own_request(
    start_server: Callable[..., ServerProcess], store_url: str,
) -> None:
    _, secret = bootstrap(store_url)
    first, second = start_server(store_url), start_server(store_url)
    md = [("authorization", f"Bearer {secret}")]
    stub = first.stub()
    for owner in ("owner-a", "owner-b"):
        for _ in range(3):
            stub.CreateKey(pb.CreateKeyRequest(owner_id=owner), metadata=md, timeout=10)
    page = stub.ListKeys(pb.ListKeysRequest(owner_id="owner-a", page_size=2), metadata=md, timeout=10)
    token = page.next_page_token
    # Another sidecar on the same store takes it...
    rest = second.stub().ListKeys(pb.ListKeysRequest(owner_id="owner-a", page_size=2, page_token=token),
                                  metadata=md, timeout=10)
    assert [k.owner_id for k in rest.keys] == ["owner-a"] and not rest.next_page_token
    # ...and nothing else does.
    for request in (
        pb.ListKeysRequest(owner_id="owner-b", page_size=2, page_token=token),
        pb.ListKeysRequest(owner_id="owner-a", page_size=2, page_token=token[:-2]),
        pb.ListKeysRequest(owner_id="owner-a", page_size=2, page_token="Zm9v" * 10_000),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.ListKeys(request, metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = info.value.details() or ""
        assert details.startswith("page_token:") and token[:20] not in details
    with pytest.raises(grpc.RpcError) as info:
        stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(policy_id="p", page_token=token),
                                metadata=md, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
