"""keysvc's HTTP listener answers every request itself, as small JSON that never echoes input.

Raw bytes over a socket to a real `keysvc serve --http-listen` process: requests
granian's parser refuses (a NUL or control character in a header or the path,
too many headers, not HTTP at all), over-long lines keysvc refuses itself, and
paths it does not serve. The parser's own answer is an empty 400/431 that
closes the connection (it has no hook for a body: the JSON is keysvc's only);
none quotes the request. Then the process's whole output (stdout and stderr)
is read: every line is one JSON object and none holds the key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from keysvc.core.keys import generate
from tests.e2e._servers import ServerProcess, bootstrap, free_port, launch

pytestmark = pytest.mark.e2e

KEY = generate().secret  # key-shaped, and unknown to the store


@dataclass
class Listener:
    server: ServerProcess
    port: int

    def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send `raw` on a fresh connection; return the status, headers and body of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(raw)
            answer = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
                head, sep, body = answer.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        assert KEY.encode() not in answer and KEY[3:20].encode() not in answer
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    tmp = tmp_path_factory.mktemp("http-listener")
    store = f"sqlite:///{tmp}/keysvc.db"
    bootstrap(store)
    port = free_port()
    server = launch(store, tmp, "--http-listen", f"127.0.0.1:{port}", "--authz-proxy", "nginx")
    try:
        yield Listener(server, port)
    finally:
        server.stop()
    output = server.logs()
    assert KEY not in output and KEY[3:20] not in output
    records = [json.loads(line) for line in output.splitlines()]  # every library's line: structlog JSON
    assert all(isinstance(r, dict) and "event" in r and "level" in r for r in records), output
    refused = [r for r in records if r["event"] == "http request refused"]
    assert {r["status"] for r in refused} == {431}  # keysvc's own refusals; granian's parser logs none
    assert {r["reason"] for r in refused} == {"LineTooLong"}


def request(*header_lines: bytes, target: bytes = b"/authz") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: keysvc\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n"


def parser_refusal(listener: Listener, raw: bytes, status: int) -> None:
    """The answer of granian's parser: the status, no body, the connection closed, no server name."""
    got, headers, body = listener.send(raw)
    assert (got, body) == (status, b"")
    assert headers["connection"] == "close" and headers["content-length"] == "0"
    assert "server" not in headers


def json_answer(listener: Listener, raw: bytes, status: int, error: str) -> dict[str, str]:
    got, headers, body = listener.send(raw)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers.get("server") == "keysvc"
    parsed = json.loads(body)
    assert parsed["error"] == error and set(parsed) == {"error", "message"}
    return headers


@pytest.mark.parametrize("header", [
    b"X-Api-Key: " + KEY.encode() + b"\x00zz",
    b"x-api-key: \x01" + KEY.encode(),
    b"Authorization: Bearer " + KEY.encode() + b"\x00",
    b"Authorization: Bearer " + KEY.encode() + b"\x7f",
], ids=["nul-in-x-api-key", "control-in-x-api-key", "nul-in-authorization", "del-in-authorization"])
def test_an_unreadable_credential_is_refused_by_the_parser(listener: Listener, header: bytes) -> None:
    # Was keysvc's 401 `malformed` on aiohttp; granian's parser answers these itself, before keysvc sees them.
    parser_refusal(listener, request(header), 400)


def test_an_over_long_header_is_431(listener: Listener) -> None:
    json_answer(listener, request(b"X-Api-Key: " + KEY.encode() + b"A" * 9000), 431, "header_too_large")
    json_answer(listener, request(b"X-Other: " + KEY.encode() + b"A" * 9000), 431, "header_too_large")


def test_an_over_long_target_is_431(listener: Listener) -> None:
    json_answer(listener, request(b"X-Api-Key: " + KEY.encode(), target=b"/" + KEY.encode() * 200),
                431, "header_too_large")


def test_too_many_headers_is_431(listener: Listener) -> None:
    many = [b"X-Api-Key: " + KEY.encode()] + [b"X-Filler-%d: x" % i for i in range(200)]
    parser_refusal(listener, request(*many), 431)


@pytest.mark.parametrize("raw", [
    request(b"X-Api-Key: " + KEY.encode(), b"X-Other: a\x00b"),
    request(b"X-Api-Key: " + KEY.encode(), target=b"/au\x01thz?k=" + KEY.encode()),
    request(b"X-Api-Key: " + KEY.encode(), target=b"/" + KEY.encode() * 200),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + KEY.encode() + b"\r\n\r\n",  # TLS to a clear port
    b"G\x00T / HTTP/1.1\r\nX-Api-Key: " + KEY.encode() + b"\r\n\r\n",
], ids=["nul-in-other-header", "control-in-path", "over-long-path", "tls-hello", "nul-in-method"])
def test_other_unreadable_requests_are_400_or_431(listener: Listener, raw: bytes) -> None:
    got, headers, body = listener.send(raw)
    assert got in (400, 431), body
    if body:  # keysvc's own refusal (an over-long line)
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == "header_too_large"
    else:  # granian's parser
        assert headers["connection"] == "close" and "server" not in headers


def test_an_http2_preface_is_closed_without_an_answer(listener: Listener) -> None:
    """HTTP/2 prior knowledge on the HTTP/1.1 port: nothing comes back, the connection is closed."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as conn:
        conn.sendall(preface + b"x-api-key: " + KEY.encode())
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer == b""
    assert listener.server.proc.poll() is None
    assert KEY not in listener.server.logs()


def test_other_paths_are_a_json_404(listener: Listener) -> None:
    for target in (b"/nope", b"/" + KEY.encode(), b"/healthz/x"):
        json_answer(listener, request(b"X-Api-Key: " + KEY.encode(), target=target), 404, "not_found")


def test_readable_requests_still_get_their_answer(listener: Listener) -> None:
    json_answer(listener, request(b"X-Api-Key: " + KEY.encode()), 401, "not_found")
    json_answer(listener, request(b"X-Api-Key: " + KEY.encode() + b"\xff"), 401, "malformed")
    status, headers, body = listener.send(request(target=b"/healthz"))
    assert status == 200 and json.loads(body) == {"status": "SERVING"}
    assert headers["server"] == "keysvc"  # never granian's name


def test_the_target_comes_only_from_the_configured_proxys_header(listener: Listener) -> None:
    key = b"X-Api-Key: " + KEY.encode()
    json_answer(listener, request(key, b"X-Original-URI: /a", b"X-Original-URI: /b"), 400, "invalid_request")
    json_answer(listener, request(key, b"X-Original-Method: GET", b"X-Original-Method: POST"),
                400, "invalid_request")
    json_answer(listener, request(key, b"X-Original-URI: /a%2F..%2Fb"), 400, "invalid_path")
    # Another proxy's header is not read: this one is judged by its key alone.
    json_answer(listener, request(key, b"X-Forwarded-Uri: /a%2F..%2Fb"), 401, "not_found")


def test_the_grpc_port_prints_nothing_but_json_for_garbage(listener: Listener) -> None:
    host, _, port = listener.server.addr.rpartition(":")
    for raw in (request(b"X-Api-Key: " + KEY.encode()),
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + KEY.encode() * 4,
                b"\x16\x03\x01\x02\x00" + KEY.encode()):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(raw)
            conn.settimeout(2)
            try:
                while conn.recv(65536):
                    pass
            except TimeoutError:
                pass


_C_CORE_LOGS = """
import sys
if sys.argv[1] == "keysvc":
    import keysvc.app.cli.main  # what every keysvc process imports first
import grpc
from keysvc.v1 import keysvc_pb2, keysvc_pb2_grpc
channel = grpc.insecure_channel("127.0.0.1:9")
try:  # an illegal metadata value: gRPC's C core prints an error line, value context included
    keysvc_pb2_grpc.KeyServiceStub(channel).Validate(
        keysvc_pb2.ValidateRequest(), metadata=[("authorization", "Bearer " + sys.argv[2] + "\\x7f")], timeout=5)
except grpc.RpcError as exc:
    print(exc.code().name)
"""


@pytest.mark.parametrize("importer", ["keysvc", "plain"])
def test_grpc_c_core_lines_stay_off_in_keysvc_processes(importer: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", _C_CORE_LOGS, importer, KEY], env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "INTERNAL", done.stderr
    if importer == "keysvc":
        assert done.stderr == ""
    else:  # the control: without keysvc's default the C core does print (so the check above can fail)
        assert "Metadata value for key authorization is invalid" in done.stderr
