"""rediss:// against a real TLS-enabled redis-server that requires client certificates."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from keysvc.core import keys
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, free_port
from tests.e2e._tls import Pki, make_pki

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[Pki, int]]:
    """A redis-server with TLS only (no plaintext port), client certificates required."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs it)")
    pki = make_pki(tmp_path, "redis-pki")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.cert_file), "--tls-key-file", str(pki.key_file),
         "--tls-ca-cert-file", str(pki.ca_file), "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(pki.ca_file),
                         ssl_certfile=str(pki.client_cert_file), ssl_keyfile=str(pki.client_key_file),
                         socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield pki, port
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=15)


def store_url(port: int, ca: Path, pki: Pki | None = None) -> str:
    query = f"ssl_ca_certs={ca}"
    if pki is not None:
        query += f"&ssl_certfile={pki.client_cert_file}&ssl_keyfile={pki.client_key_file}"
    return f"rediss://127.0.0.1:{port}/0?{query}"


def test_keysvc_serves_from_a_tls_redis(tls_redis: tuple[Pki, int],
                                        start_server: Callable[..., ServerProcess]) -> None:
    pki, port = tls_redis
    url = store_url(port, pki.ca_file, pki)
    _, secret = bootstrap(url)
    server = start_server(url)  # waits for SERVING: the store answered over TLS
    md = [("authorization", f"Bearer {secret}")]
    created = server.stub().CreateKey(pb.CreateKeyRequest(owner_id="alice"), metadata=md, timeout=10)
    assert server.stub().Validate(pb.ValidateRequest(key=created.secret), timeout=10).valid


def wait_log(server: ServerProcess, needle: str, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.logs().splitlines():
            if needle in line:
                return dict(json.loads(line))
        time.sleep(0.1)
    raise AssertionError(f"no log line with {needle!r}:\n{server.logs()}")


def test_a_wrong_ca_is_a_store_unreachable_with_its_reason(
        tls_redis: tuple[Pki, int], tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    pki, port = tls_redis
    stranger = make_pki(tmp_path, "stranger")
    server = start_server(store_url(port, stranger.ca_file, pki), wait=False)
    line = wait_log(server, "store unreachable")
    assert "certificate verify failed" in str(line["reason"])
    answer = server.stub().Validate(pb.ValidateRequest(key=keys.generate().secret), timeout=10)
    assert answer.code == pb.CODE_UNAVAILABLE  # fail closed: the store cannot answer


def test_no_client_certificate_is_refused_by_redis(
        tls_redis: tuple[Pki, int], start_server: Callable[..., ServerProcess]) -> None:
    pki, port = tls_redis
    server = start_server(store_url(port, pki.ca_file), wait=False)
    line = wait_log(server, "store unreachable")
    assert line["reason"]
    assert server.proc.poll() is None  # a store that is down is waited for, not an exit
