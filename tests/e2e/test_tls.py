"""TLS and mTLS on keysvc's listeners: real server processes, real certificates (trustme), real channels."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._servers import ServerProcess, bootstrap, free_port, keysvc_cmd
from tests.e2e._tls import (
    Pki,
    cert_serial,
    health,
    make_pki,
    served_serial,
    tls_channel,
    wait_serving_tls,
)

pytestmark = pytest.mark.e2e

Start = Callable[..., ServerProcess]


def tls_flags(pki: Pki, *, mutual: bool = False) -> tuple[str, ...]:
    flags = ("--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file))
    return (*flags, "--tls-client-ca", str(pki.ca_file)) if mutual else flags


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The status a health check gets over `channel`, which must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        health(channel, timeout=5)
    return caught.value.code()  # type: ignore[no-any-return, attr-defined]


def test_grpc_serves_tls_and_refuses_plaintext(start_server: Start, sqlite_url: str, tmp_path: Path,
                                               stack: str) -> None:
    pki = make_pki(tmp_path)
    _, secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url, *tls_flags(pki), stack=stack, wait=False)
    wait_serving_tls(server, pki)
    with tls_channel(server.addr, pki) as channel:
        stub = keysvc_pb2_grpc.KeyServiceStub(channel)
        md = [("authorization", f"Bearer {secret}")]
        created = stub.CreateKey(pb.CreateKeyRequest(owner_id="alice", scopes=["read"]), metadata=md, timeout=10)
        answer = stub.Validate(pb.ValidateRequest(key=created.secret, required_scopes=["read"]), timeout=10)
        assert answer.valid and answer.key_id == created.key.key_id
    with grpc.insecure_channel(server.addr) as plain:
        assert refused(plain) is grpc.StatusCode.UNAVAILABLE
    other = make_pki(tmp_path, "other")  # a client that trusts another CA will not talk to this server
    with tls_channel(server.addr, other) as distrusting:
        assert refused(distrusting) is grpc.StatusCode.UNAVAILABLE
    assert secret not in server.logs() and created.secret not in server.logs()


def test_mtls_requires_a_client_certificate_from_the_client_ca(start_server: Start, sqlite_url: str,
                                                                 tmp_path: Path, stack: str) -> None:
    pki, stranger = make_pki(tmp_path), make_pki(tmp_path, "stranger")
    server = start_server(sqlite_url, *tls_flags(pki, mutual=True), stack=stack, wait=False)
    wait_serving_tls(server, pki, client=pki)
    with tls_channel(server.addr, pki) as anonymous:
        assert refused(anonymous) is grpc.StatusCode.UNAVAILABLE
    # A client certificate the server cannot chain to its client CA: refused too.
    credentials = grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), stranger.client_key_file.read_bytes(),
                                               stranger.client_cert_file.read_bytes())
    with grpc.secure_channel(server.addr, credentials) as foreign:
        assert refused(foreign) is grpc.StatusCode.UNAVAILABLE
    with tls_channel(server.addr, pki, client=pki) as known:
        assert health(known) == health_pb2.HealthCheckResponse.SERVING


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keysvc_cmd(*args), capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


def test_admin_listener_and_cli_over_mtls(start_server: Start, sqlite_url: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    _, secret = bootstrap(sqlite_url)
    admin_addr = f"127.0.0.1:{free_port()}"
    server = start_server(sqlite_url, *tls_flags(pki, mutual=True), "--admin-listen", admin_addr, wait=False)
    wait_serving_tls(server, pki, client=pki)
    env = {"KEYSVC_ADMIN_KEY": secret, "KEYSVC_ADDR": admin_addr}
    # Without TLS settings the CLI cannot reach the admin listener at all.
    plain = run_cli("keys", "list", "--json", "--timeout", "5", env=env)
    assert plain.returncode != 0 and secret not in plain.stderr + plain.stdout
    tls_env = {**env, "KEYSVC_TLS_CA": str(pki.ca_file)}
    no_cert = run_cli("keys", "list", "--json", "--timeout", "5", env=tls_env)
    assert no_cert.returncode != 0
    mtls_env = {**tls_env, "KEYSVC_TLS_CLIENT_CERT": str(pki.client_cert_file),
                "KEYSVC_TLS_CLIENT_KEY": str(pki.client_key_file)}
    made = run_cli("keys", "create", "--owner", "bob", "--scope", "read", "--json", env=mtls_env)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    listed = run_cli("keys", "list", "--json", env=mtls_env)
    assert listed.returncode == 0, listed.stderr and key["key"]["key_id"] in listed.stdout
    # The same over flags, on the main listener (Validate needs no admin key).
    checked = run_cli("validate", key["secret"], "--addr", server.addr, "--tls-ca", str(pki.ca_file),
                      "--tls-client-cert", str(pki.client_cert_file),
                      "--tls-client-key", str(pki.client_key_file), "--json", env={})
    assert checked.returncode == 0, checked.stderr
    probe = run_cli("health", "--listen", server.addr, "--tls-ca", str(pki.ca_file), "--tls-client-cert",
                    str(pki.client_cert_file), "--tls-client-key", str(pki.client_key_file), env={})
    assert probe.returncode == 0, probe.stderr
    with tls_channel(admin_addr, pki) as anonymous:
        assert refused(anonymous) is grpc.StatusCode.UNAVAILABLE


def https_get(url: str, pki: Pki, *, client: Pki | None = None, headers: dict[str, str] | None = None,
              ) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if client is not None:
        context.load_cert_chain(str(client.client_cert_file), str(client.client_key_file))
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_http_authz_over_tls_and_mtls(start_server: Start, sqlite_url: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    _, secret = bootstrap(sqlite_url)
    port = free_port()
    server = start_server(sqlite_url, *tls_flags(pki, mutual=True), "--http-listen", f"127.0.0.1:{port}",
                          wait=False)
    wait_serving_tls(server, pki, client=pki)
    base = f"https://127.0.0.1:{port}"
    assert https_get(f"{base}/authz", pki, client=pki, headers={"x-api-key": secret})[0] == 200
    assert https_get(f"{base}/authz", pki, client=pki)[0] == 401
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https_get(f"{base}/healthz", pki)  # no client certificate: the handshake fails
    # Plaintext on the TLS port is never served: the TLS stack answers with an alert record (which
    # http.client reads as a bad status line) or closes.
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: keysvc\r\n\r\n")
        try:
            answer = conn.recv(65536)
        except ConnectionError:
            answer = b""
    assert not answer.startswith(b"HTTP"), answer


def wait_serial(read: Callable[[], int], expected: int, timeout: float = 60.0) -> None:
    """Poll new connections until one presents the certificate `expected`."""
    deadline = time.monotonic() + timeout
    seen = read()
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = read()
    assert seen == expected


def test_a_rotated_certificate_is_served_to_new_connections(start_server: Start, sqlite_url: str,
                                                            tmp_path: Path, stack: str) -> None:
    pki = make_pki(tmp_path)
    http_port = free_port()
    server = start_server(sqlite_url, *tls_flags(pki), "--http-listen", f"127.0.0.1:{http_port}",
                          stack=stack, wait=False)
    wait_serving_tls(server, pki)
    grpc_port = int(server.addr.rpartition(":")[2])
    first = cert_serial(pki.cert_file)
    assert served_serial("127.0.0.1", grpc_port, pki) == first
    assert served_serial("127.0.0.1", http_port, pki, alpn="http/1.1") == first
    with tls_channel(server.addr, pki) as kept:  # a connection opened before the rotation
        assert health(kept) == health_pb2.HealthCheckResponse.SERVING
        second = pki.rotate_server_cert()
        assert second != first
        wait_serial(lambda: served_serial("127.0.0.1", grpc_port, pki), second)
        wait_serial(lambda: served_serial("127.0.0.1", http_port, pki, alpn="http/1.1"), second)
        assert health(kept) == health_pb2.HealthCheckResponse.SERVING  # and it still answers
    # Unusable files (a key of another certificate) are refused: the last good pair keeps serving.
    stranger = make_pki(tmp_path, "stranger")
    staging = pki.key_file.with_suffix(".new")
    staging.write_bytes(stranger.key_file.read_bytes())
    os.replace(staging, pki.key_file)
    with tls_channel(server.addr, pki) as fresh:
        assert health(fresh) == health_pb2.HealthCheckResponse.SERVING
    assert served_serial("127.0.0.1", grpc_port, pki) == second
    assert server.proc.poll() is None
    deadline = time.monotonic() + 30
    while "cannot be used" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cannot be used" in server.logs()
    assert stranger.key_file.read_text() not in server.logs()


def test_a_unix_socket_admin_listener_stays_plaintext(start_server: Start, sqlite_url: str, tmp_path: Path) -> None:
    """The socket file's permissions guard it: the CLI reaches it with no TLS settings."""
    pki = make_pki(tmp_path)
    _, secret = bootstrap(sqlite_url)
    socket_path = tmp_path / "admin.sock"
    server = start_server(sqlite_url, *tls_flags(pki, mutual=True), "--admin-listen", f"unix:{socket_path}",
                          wait=False)
    wait_serving_tls(server, pki, client=pki)
    listed = run_cli("keys", "list", "--json", env={"KEYSVC_ADMIN_KEY": secret, "KEYSVC_ADDR": f"unix:{socket_path}",
                                                     "KEYSVC_TLS_CA": ""})
    assert listed.returncode == 0, listed.stderr


def test_a_worker_set_serves_tls(start_server: Start, sqlite_url: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = start_server(sqlite_url, *tls_flags(pki, mutual=True), "--workers", "2", wait=False)
    wait_serving_tls(server, pki, client=pki, timeout=60)
    with grpc.insecure_channel(server.addr) as plain:
        assert refused(plain) is grpc.StatusCode.UNAVAILABLE
