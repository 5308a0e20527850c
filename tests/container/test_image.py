"""The Dockerfile, built with podman on an mmdebstrap base and run: what an operator relies on.

Non-root, read-only root filesystem, healthy by its own HEALTHCHECK, Validate
from the host through a published port, admin RPCs only on the unix socket, the
SQLite store kept on a volume when the container is replaced, and SIGTERM ends
it with exit 0 inside the grace (137 would mean podman had to SIGKILL it).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.container._podman import Container, podman
from tests.e2e._servers import free_port

pytestmark = pytest.mark.container

UID = 10001
GRACE_S = 5


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short, so the socket path stays under the 108 bytes a unix address may have.
    with tempfile.TemporaryDirectory(prefix="ks-") as folder:
        os.chown(folder, UID, UID)
        yield Path(folder)


def _locked_down(volume: str, socket_dir: Path, *extra: str) -> tuple[str, ...]:
    # Nothing writable but the store's volume and the admin socket's folder, as in deploy/k8s.
    return ("--read-only", "--read-only-tmpfs=false", f"--volume={volume}:/data",
            f"--volume={socket_dir}:/run/keysvc", f"--env=KEYSVC_SHUTDOWN_GRACE_S={GRACE_S}", *extra)


def _stub(target: str) -> keysvc_pb2_grpc.KeyServiceStub:
    return keysvc_pb2_grpc.KeyServiceStub(grpc.insecure_channel(target))


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def _ids(container: Container) -> tuple[list[str], list[str]]:
    status = container.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["Uid"].split(), fields["Gid"].split()


def test_container_serves_as_non_root_and_keeps_data_on_its_volume(
        start_container: Callable[..., Container], volume: str, socket_dir: Path) -> None:
    ports = {50051: free_port(), 8080: free_port(), 9464: free_port()}
    first = start_container(ports, *_locked_down(volume, socket_dir))
    first.wait_healthy()
    assert first.inspect()["State"]["Health"]["Status"] == "healthy"
    uids, gids = _ids(first)
    assert uids == [str(UID)] * 4 and gids == [str(UID)] * 4  # real, effective, saved, filesystem
    assert first.exec("touch", "/opt/keysvc/x", check=False).returncode != 0  # root fs is read-only

    admin = json.loads(first.exec("keysvc", "bootstrap", "--json").stdout)["secret"]
    bearer = [("authorization", f"Bearer {admin}")]
    created = _stub(f"unix:{socket_dir}/admin.sock").CreateKey(
        pb.CreateKeyRequest(owner_id="orders"), metadata=bearer, timeout=30)

    # The CLI inside the image reaches the admin socket without being told where it is.
    listed = podman("exec", f"--env=KEYSVC_ADMIN_KEY={admin}", first.name, "keysvc", "keys", "list")
    assert created.key.key_id in listed.stdout

    public = _stub(f"127.0.0.1:{ports[50051]}")
    reply = public.Validate(pb.ValidateRequest(key=created.secret), timeout=30)
    assert reply.valid and reply.key_id == created.key.key_id
    # Admin RPCs are not served on the published port, even with the admin key.
    with pytest.raises(grpc.RpcError) as refused:
        public.CreateKey(pb.CreateKeyRequest(owner_id="x"), metadata=bearer, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # keysvc's other exposed ports answer from the host too.
    assert _get(f"http://127.0.0.1:{ports[8080]}/healthz")[0] == 200
    assert "keysvc_validations_total" in _get(f"http://127.0.0.1:{ports[9464]}/metrics")[1]

    code, seconds = first.stop(timeout_s=GRACE_S + 25)
    print(f"\nSIGTERM to exit: {seconds:.1f} s (grace {GRACE_S} s)")
    assert code == 0, first.logs()
    assert created.secret not in first.logs() and admin not in first.logs()

    # A new container on the same volume still knows the key: the store lives on the volume.
    second = start_container(ports, *_locked_down(volume, socket_dir))
    second.wait_healthy()
    again = _stub(f"127.0.0.1:{ports[50051]}").Validate(pb.ValidateRequest(key=created.secret), timeout=30)
    assert again.valid and again.key_id == created.key.key_id
    code, _ = second.stop(timeout_s=GRACE_S + 25)
    assert code == 0, second.logs()


def test_healthcheck_follows_keysvc_listen(start_container: Callable[..., Container], volume: str,
                                          socket_dir: Path) -> None:
    port = free_port()
    container = start_container({50061: port},
                                *_locked_down(volume, socket_dir, "--env=KEYSVC_LISTEN=0.0.0.0:50061"))
    container.wait_healthy()
    assert container.inspect()["State"]["Health"]["Status"] == "healthy"
    assert container.exec("keysvc", "health", "--live").returncode == 0
    reply = _stub(f"127.0.0.1:{port}").Validate(pb.ValidateRequest(key="garbage"), timeout=30)
    assert reply.code == pb.CODE_MALFORMED
