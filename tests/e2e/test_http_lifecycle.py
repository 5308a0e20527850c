"""The HTTP listener's life: unix sockets, SIGTERM drain, `--workers`, a port it may not share, CA reload.

Real `keysvc serve` processes, a real redis-server (paused with CLIENT PAUSE
to hold a request in flight), real TLS handshakes.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.e2e._servers import ServerProcess, bootstrap, free_port, launch
from tests.e2e._tls import make_pki
from tests.e2e.test_tls import https_get
from tests.e2e.test_workers import children_of, established_by, listening, wait_for

pytestmark = pytest.mark.e2e


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("keysvc", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def _get(conn: http.client.HTTPConnection, path: str, key: str = "") -> int:
    conn.request("GET", path, headers={"x-api-key": key} if key else {})
    reply = conn.getresponse()
    reply.read()
    return reply.status


def test_a_unix_socket_serves_and_a_stale_socket_file_is_replaced(sqlite_url: str, tmp_path: Path) -> None:
    _, secret = bootstrap(sqlite_url)
    path = tmp_path / "authz.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file no server holds: what a killed keysvc leaves behind
    stale.close()
    server = launch(sqlite_url, tmp_path, "--http-listen", f"unix:{path}")
    try:
        conn = _UnixConnection(str(path))
        wait_for(lambda: _get(conn, "/healthz") == 200, timeout=30)
        assert _get(conn, "/authz", secret) == 200
        assert _get(conn, "/authz", secret[:-1] + "x") == 401
        conn.close()
    finally:
        assert server.stop() == 0


def test_sigterm_lets_an_in_flight_check_finish(redis_url: str, tmp_path: Path) -> None:
    _, secret = bootstrap(redis_url)
    port = free_port()
    server = launch(redis_url, tmp_path, "--http-listen", f"127.0.0.1:{port}", "--shutdown-grace-s", "20",
                    "--store-timeout-ms", "15000", "--store-retries", "0")
    answers: list[int] = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        assert _get(conn, "/healthz") == 200
        control = redis.Redis.from_url(redis_url)
        control.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # the key is not cached: its read waits
        check = threading.Thread(target=lambda: answers.append(_get(conn, "/authz", secret)))
        check.start()
        wait_for(lambda: sum(established_by([server.proc.pid], port).values()) == 1)
        time.sleep(0.5)  # no assertion rests on it: only gives the request time to reach the handler
        server.proc.send_signal(15)
        check.join(60)
        assert answers == [200]  # answered after the pause, though SIGTERM came first
        assert server.proc.wait(60) == 0
    finally:
        server.stop()


def test_workers_share_the_http_port(redis_url: str, tmp_path: Path) -> None:
    _, secret = bootstrap(redis_url)
    port = free_port()
    server = launch(redis_url, tmp_path, "--workers", "2", "--http-listen", f"127.0.0.1:{port}")
    try:
        wait_for(lambda: len(listening(children_of(server.proc.pid), port)) == 2, timeout=60)
        conns = []
        for _ in range(40):  # SO_REUSEPORT spreads new connections by hash: 40 reach both workers
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert _get(conn, "/authz", secret) == 200
            conns.append(conn)
        held = established_by(children_of(server.proc.pid), port)
        assert len(held) == 2 and all(count > 0 for count in held.values()), held
        for conn in conns:
            conn.close()
    finally:
        assert server.stop() == 0


def test_a_second_keysvc_cannot_share_a_lone_processs_http_port(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    first = launch(sqlite_url, tmp_path, "--http-listen", f"127.0.0.1:{port}")
    try:
        second = launch(sqlite_url, tmp_path / "..", "--http-listen", f"127.0.0.1:{port}", wait=False)
        assert second.proc.wait(60) != 0
        assert "KEYSVC_HTTP_LISTEN" in second.logs()
    finally:
        first.stop()


def test_a_new_client_ca_reaches_new_https_connections(sqlite_url: str, tmp_path: Path) -> None:
    pki, old_clients, new_clients = make_pki(tmp_path), make_pki(tmp_path, "old"), make_pki(tmp_path, "new")
    client_ca = tmp_path / "client-ca.pem"
    shutil.copy(old_clients.ca_file, client_ca)
    _, secret = bootstrap(sqlite_url)
    port = free_port()
    server: ServerProcess = launch(sqlite_url, tmp_path, "--tls-cert", str(pki.cert_file), "--tls-key",
                                   str(pki.key_file), "--tls-client-ca", str(client_ca),
                                   "--http-listen", f"127.0.0.1:{port}", wait=False)
    url = f"https://127.0.0.1:{port}/authz"

    def status(client: object) -> int:
        try:
            return https_get(url, pki, client=client, headers={"x-api-key": secret})[0]  # type: ignore[arg-type]
        except (ssl.SSLError, OSError):
            return 0  # the handshake was refused

    try:
        wait_for(lambda: status(old_clients) == 200, timeout=60)
        assert status(new_clients) == 0
        staged = tmp_path / "client-ca.pem.new"
        shutil.copy(new_clients.ca_file, staged)
        staged.replace(client_ca)  # as a secret mount updates: one rename
        wait_for(lambda: status(new_clients) == 200, timeout=60)
        assert status(old_clients) == 0
    finally:
        server.stop()
