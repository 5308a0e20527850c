"""Attacks on the HTTP forward-auth listener that once broke it, against real `keysvc serve` processes.

Each test is the attack as a hostile client would run it over loopback,
bounded in connections and time, and the answer keysvc documents for it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e._servers import ServerProcess, bootstrap, free_port, keysvc_cmd, launch
from tests.e2e._tls import make_pki
from tests.e2e.test_workers import wait_for

pytestmark = pytest.mark.e2e

_HELD = 300  # more than granian's default of 128 connections per worker, and its 128 backlog


def _check(port: int, secret: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/authz", headers={"x-api-key": secret})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


@pytest.fixture
def held_connections() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for conn in held:
        conn.close()


@pytest.mark.parametrize("opening", [b"", b"GET /authz HTTP/1.1\r\nHost: keysvc\r\nx-api-key: ks_"],
                         ids=["idle", "half-sent-headers"])
def test_a_few_hundred_idle_connections_do_not_lock_other_clients_out(
    sqlite_url: str, tmp_path: Path, held_connections: list[socket.socket], opening: bytes,
) -> None:
    # Was: granian's default backpressure admits 128 connections per worker; the rest waited
    # in the backlog, so 257 silent connections (each dropped only after 30 s, and reopened by
    # the attacker) left every proxy's /authz to time out.
    _, secret = bootstrap(sqlite_url)
    port = free_port()
    server = launch(sqlite_url, tmp_path, "--http-listen", f"127.0.0.1:{port}")
    try:
        wait_for(lambda: _check(port, secret) == 200, timeout=30)
        for _ in range(_HELD):
            conn = socket.create_connection(("127.0.0.1", port), timeout=20)
            held_connections.append(conn)
            if opening:
                conn.sendall(opening)
        assert _check(port, secret) == 200  # answered while all of them are held
        assert _check(port, secret[:-1] + ("A" if secret[-1] != "A" else "B")) == 401
    finally:
        for conn in held_connections:
            conn.close()
        assert server.stop() == 0


def test_a_certificate_reload_answers_the_connections_waiting_to_be_accepted(
    tmp_path: Path, held_connections: list[socket.socket],
) -> None:
    # Was: the reload bound a second socket with SO_REUSEPORT and closed the old one, which
    # reset every connection still in the old one's accept queue: checks refused under load.
    # Here the open-file limit is 400, so granian serves 200 connections at once and the
    # checks below wait in the accept queue while the certificate is rotated.
    store = f"sqlite:///{tmp_path}/keysvc.db"
    _, secret = bootstrap(store)
    pki = make_pki(tmp_path)
    port = free_port()
    addr = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "server.log"
    cmd = ["prlimit", "--nofile=400:400", *keysvc_cmd(
        "serve", "--listen", addr, "--store", store, "--log-format", "json",
        "--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file), "--http-listen", f"127.0.0.1:{port}")]
    with log_path.open("wb") as log:
        server = ServerProcess(addr, store, log_path, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    context = ssl.create_default_context(cafile=str(pki.ca_file))

    def check() -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
        try:
            conn.request("GET", "/authz", headers={"x-api-key": secret})
            reply = conn.getresponse()
            reply.read()
            return reply.status
        finally:
            conn.close()

    def answers() -> bool:
        try:
            return check() == 200
        except OSError:
            return False

    try:
        wait_for(answers, timeout=30)
        for _ in range(max_connections_at(400)):  # TLS connections that never send a request
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            held_connections.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        statuses: list[int | str] = []
        waiting = [threading.Thread(target=lambda: statuses.append(_status_or_error(check))) for _ in range(8)]
        for thread in waiting:
            thread.start()
        pki.rotate_server_cert()
        for thread in waiting:
            thread.join(90)
        assert statuses == [200] * 8
        assert "TLS certificate reloaded" in server.logs()
    finally:
        for conn in held_connections:
            conn.close()
        assert server.stop() == 0


def max_connections_at(open_files: int) -> int:
    """The connections granian serves at once in a process with this open-file limit."""
    return max(128, min(32_768, open_files // 2))


def _status_or_error(check: Callable[[], int]) -> int | str:
    try:
        return check()
    except OSError as exc:
        return type(exc).__name__
