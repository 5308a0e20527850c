"""Shared by the real-proxy e2e tests: a recording upstream, replies, waiting for a port."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.e2e._servers import ServerProcess


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    names: list[str] = field(default_factory=list)  # every header name as received, repeats included


@dataclass
class Upstream:
    """A tiny HTTP server that records every request it receives."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream block asks

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                 [k.lower() for k in self.headers]))
                body = b'{"upstream":"ok"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, str]:
        return json.loads(self.body)  # type: ignore[no-any-return]


def wait_http(port: int, server: ServerProcess) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"keysvc's HTTP listener never answered:\n{server.logs()}")


def wait_port(port: int, alive: object, what: str, logs: object = "") -> None:
    """Wait until something listens on loopback `port`; `alive()` False means it died."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise AssertionError(f"{what} exited:\n{logs() if callable(logs) else logs}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}:\n{logs() if callable(logs) else logs}")


def send(port: int, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    """One request with exactly these headers, repeats included, on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or ():
            conn.putheader(name, value)
        body = b"{}" if method in ("POST", "PUT") else b""
        if body:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


# Targets that some server along the way may read as the public /healthz while the
# app reads them as a protected path: they must never reach the app without a check.
SMUGGLED_PUBLIC = ("/orders/..%2F..%2Fhealthz", "/orders/..%2f..%2fhealthz", "/orders/%2e%2e/healthz",
                   "/orders%2F..%2Fhealthz", "/orders/..%5C..%5Chealthz", "/orders/..%252F..%252Fhealthz",
                   "/orders/..\\..\\healthz", "/orders%00/../../healthz", "/orders/..;/..;/healthz")


def check_smuggled_public(port: int, upstream: Upstream, path: str) -> Reply:
    """Send `path` without a key: refused (4xx, never reaching the app), or the proxy itself
    normalized it to the public /healthz and the app was told exactly that."""
    before = len(upstream.seen)
    reply = send(port, "GET", path)
    if reply.status == 200:
        assert len(upstream.seen) == before + 1
        assert upstream.seen[-1].path == "/healthz", (path, upstream.seen[-1].path)
    else:
        assert 400 <= reply.status < 500, (path, reply.status, reply.body)
        assert len(upstream.seen) == before, (path, "reached the app unchecked")
    return reply
