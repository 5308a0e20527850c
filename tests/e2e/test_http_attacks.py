"""Attacks on the HTTP forward-auth listener that once broke it, against real `keysvc serve` processes.

Each test is the attack as a hostile client would run it over loopback,
bounded in connections and time, and the answer keysvc documents for it.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._servers import bootstrap, free_port, launch
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
        assert _check(port, secret[:-1] + "x") == 401
    finally:
        for conn in held_connections:
            conn.close()
        assert server.stop() == 0
