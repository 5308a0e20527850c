"""Shared by the real-proxy e2e tests: a recording upstream, replies, waiting for a port,
and `ProxyWorld`, a keysvc behind a proxy in front of the upstream."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from keysvc.v1 import keysvc_pb2 as pb
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


IDENTITY = ("x-keysvc-key-id", "x-keysvc-owner-id")  # the headers keysvc writes upstream on allow
# Identity headers a client forges, the underscore form included (WSGI reads it as the dashed one).
FORGED_IDENTITY = [("X-Keysvc-Key-Id", "key_00000000000000000"), ("x-keysvc-owner-id", "someone-else"),
                   ("X_Keysvc_Key_Id", "key_00000000000000000")]
# The route rules of the proxy tests: reads need orders:read, writes orders:write.
ORDERS_ROUTES = """
[[rules]]
path_prefix = "/orders"
methods = ["POST", "PUT", "DELETE"]
scopes = ["orders:write"]

[[rules]]
path_prefix = "/orders"
scopes = ["orders:read"]
"""


def create_policies(keysvc: ServerProcess, admin_md: list[tuple[str, str]], policies: Sequence[pb.Policy]) -> None:
    """Make `policies` through keysvc's admin API."""
    for policy in policies:
        keysvc.stub().CreatePolicy(pb.CreatePolicyRequest(policy=policy), metadata=admin_md, timeout=5)


@dataclass
class ProxyWorld:
    """A keysvc asked by a proxy on `port`, in front of a recording upstream.

    Every reply is checked to hold none of the secrets made so far.
    """

    port: int
    upstream: Upstream
    keysvc: ServerProcess
    admin_md: list[tuple[str, str]]
    secrets: list[str]

    def key(self, **fields: object) -> tuple[str, str]:
        """A new key of owner acme: (key_id, secret)."""
        created = self.keysvc.stub().CreateKey(pb.CreateKeyRequest(owner_id="acme", **fields),  # type: ignore[arg-type]
                                               metadata=self.admin_md, timeout=5)
        self.secrets.append(created.secret)
        return created.key.key_id, created.secret

    def send(self, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        reply = send(self.port, method, path, headers)
        raw = reply.body + str(reply.headers).encode()
        for secret in self.secrets:
            assert secret.encode() not in raw
        return reply

    def reached(self, method: str, path: str, headers: list[tuple[str, str]]) -> Seen:
        """Assert the request reached the app once, with no credential, keysvc's identity at most once,
        no forged identity and no secret; return what the app saw."""
        before = len(self.upstream.seen)
        reply = self.send(method, path, headers)
        assert reply.status == 200, (reply.status, reply.body)
        assert len(self.upstream.seen) == before + 1
        seen = self.upstream.seen[-1]
        assert "x-api-key" not in seen.names and "authorization" not in seen.names
        assert not any(name.replace("_", "-") in IDENTITY and name not in IDENTITY for name in seen.names)
        assert all(seen.names.count(name) <= 1 for name in IDENTITY)
        for secret in self.secrets:
            assert secret not in json.dumps(seen.headers)
        return seen

    def passed(self, method: str, path: str, headers: list[tuple[str, str]]) -> dict[str, str]:
        """`reached`, returning the headers the app saw."""
        return self.reached(method, path, headers).headers

    def stopped(self, method: str, path: str, headers: list[tuple[str, str]], status: int) -> Reply:
        """Assert the proxy answered `status` and the request never reached the app."""
        before = len(self.upstream.seen)
        reply = self.send(method, path, headers)
        assert reply.status == status, (reply.status, reply.body)
        assert len(self.upstream.seen) == before, "a refused request reached the app"
        return reply
