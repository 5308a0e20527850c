"""keysvc.client under real faults: a lost answer, a stopped server, TLS, and secrets kept out of sight."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keysvc.client import (
    Client,
    ClientClosed,
    ClientConfigError,
    ClientError,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    Retry,
    Tls,
    Unauthenticated,
    Unavailable,
)
from tests.e2e._client_kinds import KINDS, make_client
from tests.e2e._cut_proxy import CutProxy
from tests.e2e._servers import ServerProcess, bootstrap, keysvc_cmd
from tests.e2e._tls import make_pki, wait_serving_tls

pytestmark = pytest.mark.e2e

SLACK_S = 5.0  # a loaded 2-core machine: generous, and still far below a retry of the whole deadline


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(start_server: Callable[..., ServerProcess], sqlite_url: str) -> tuple[ServerProcess, str]:
    _, admin_secret = bootstrap(sqlite_url)
    return start_server(sqlite_url), admin_secret


@pytest.fixture
def stopped(served: tuple[ServerProcess, str]) -> Iterator[tuple[ServerProcess, str]]:
    """The server, warmed up, then SIGSTOPped: it accepts connections and never answers."""
    server, admin_secret = served
    with Client(server.addr, admin_key=admin_secret) as warm:
        warm.list_keys()
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield served
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_create_key_whose_answer_was_lost_is_retried_into_one_key(kind: str,
                                                                    served: tuple[ServerProcess, str]) -> None:
    server, admin_secret = served
    port = int(server.addr.rsplit(":", 1)[1])
    proxy = CutProxy(port)
    direct = Client(server.addr, admin_key=admin_secret)
    client = make_client(kind, proxy.addr, admin_key=admin_secret, timeout=60)
    try:
        client.list_keys()  # connected through the proxy
        proxy.arm(lambda: len(direct.list_keys(owner_id="lost-answer")) > 0)
        created = client.create_key("lost-answer", name="once")  # the client picks the request_id
        assert proxy.cut.is_set(), "the fault did not happen: the first answer was not lost"
        keys = list(direct.iter_keys(owner_id="lost-answer"))
        assert [k.key_id for k in keys] == [created.key.key_id], "a retry made a second key"
        assert created.secret_reissued  # the retry was a replay of the applied first attempt
        assert direct.validate(created.secret).valid
    finally:
        client.close()
        direct.close()
        proxy.close()


def test_a_stopped_server_fails_calls_within_their_deadline(kind: str,
                                                            stopped: tuple[ServerProcess, str]) -> None:
    server, admin_secret = stopped
    client = make_client(kind, server.addr, admin_key=admin_secret, timeout=30)
    try:
        for call in (lambda: client.validate("ks_" + "a" * 49, timeout=1.5),
                     lambda: client.create_key("never", timeout=1.5),
                     lambda: client.get_key("key_" + "0" * 17, timeout=1.5)):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                call()
            assert time.monotonic() - started < 1.5 + SLACK_S
    finally:
        client.close()


class _ResumeOnRetry(logging.Handler):
    """SIGCONTs the server when the client logs its first retry."""

    def __init__(self, pid: int) -> None:
        super().__init__(logging.DEBUG)
        self.pid = pid
        self.codes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.codes.append(str(getattr(record, "code", "")))
        os.kill(self.pid, signal.SIGCONT)


def test_an_attempt_that_timed_out_is_retried_within_the_call_deadline(
        kind: str, stopped: tuple[ServerProcess, str]) -> None:
    server, admin_secret = stopped
    watcher = _ResumeOnRetry(server.proc.pid)
    logger = logging.getLogger("keysvc.client")
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    client = make_client(kind, server.addr, admin_key=admin_secret, timeout=60,
                         retry=Retry(attempts=10, attempt_timeout=1.0))
    try:
        made = client.create_key("patient")
        assert watcher.codes and watcher.codes[0] == "DEADLINE_EXCEEDED"
        assert [k.key_id for k in client.iter_keys(owner_id="patient")] == [made.key.key_id]
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(logging.NOTSET)
        client.close()


def test_the_cli_honours_its_deadline_across_retries(stopped: tuple[ServerProcess, str]) -> None:
    server, admin_secret = stopped
    env = {**os.environ, "KEYSVC_ADMIN_KEY": admin_secret, "KEYSVC_ADDR": server.addr}
    started = time.monotonic()
    result = subprocess.run(keysvc_cmd("keys", "create", "--owner", "x", "--timeout", "4"), env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and "DEADLINE_EXCEEDED" in result.stderr, result.stderr
    assert elapsed < 4 + SLACK_S, f"the CLI took {elapsed:.1f}s for a 4 s deadline"
    assert admin_secret not in result.stderr + result.stdout


def test_tls_and_mtls(kind: str, start_server: Callable[..., ServerProcess], sqlite_url: str,
                      tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path, "other")
    _, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url, "--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file),
                          "--tls-client-ca", str(pki.ca_file), wait=False)
    wait_serving_tls(server, pki, client=pki)
    port = server.addr.rsplit(":", 1)[1]
    mtls = Tls(pki.ca_file, pki.client_cert_file, pki.client_key_file)
    good = make_client(kind, server.addr, tls=mtls, admin_key=admin_secret)
    try:
        made = good.create_key("tls-owner", scopes=["read"])
        assert good.validate(made.secret, required_scopes=["read"]).valid
    finally:
        good.close()
    named = make_client(kind, f"localhost:{port}", admin_key=admin_secret,
                        tls=Tls(pki.ca_file, pki.client_cert_file, pki.client_key_file,
                                server_name="keysvc.internal"))
    try:
        assert named.get_key(made.key.key_id).owner_id == "tls-owner"
    finally:
        named.close()
    with Client.from_env({"KEYSVC_ADDR": f"localhost:{port}", "KEYSVC_ADMIN_KEY": admin_secret,
                          "KEYSVC_TLS_CA": str(pki.ca_file), "KEYSVC_TLS_CLIENT_CERT": str(pki.client_cert_file),
                          "KEYSVC_TLS_CLIENT_KEY": str(pki.client_key_file),
                          "KEYSVC_TLS_SERVER_NAME": "keysvc.internal"}) as from_env:
        assert from_env.get_key(made.key.key_id).owner_id == "tls-owner"
    cli = subprocess.run(keysvc_cmd("keys", "get", made.key.key_id, "--json", "--addr", f"localhost:{port}",
                                    "--tls-ca", str(pki.ca_file), "--tls-client-cert", str(pki.client_cert_file),
                                    "--tls-client-key", str(pki.client_key_file)),
                         env={**os.environ, "KEYSVC_ADMIN_KEY": admin_secret,
                              "KEYSVC_TLS_SERVER_NAME": "keysvc.internal"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0 and "tls-owner" in cli.stdout, cli.stderr
    refused = (Tls(pki.ca_file),  # no client certificate
               Tls(other.ca_file, other.client_cert_file, other.client_key_file),  # another CA
               Tls(pki.ca_file, pki.client_cert_file, pki.client_key_file, server_name="wrong.invalid"),
               None)  # plaintext to a TLS listener
    for tls in refused:
        c = make_client(kind, server.addr, tls=tls, admin_key=admin_secret, timeout=3,
                        retry=Retry(attempts=2))
        try:
            with pytest.raises(Unavailable) as caught:
                c.validate(made.secret)
            assert made.secret not in str(caught.value) + repr(caught.value)
        finally:
            c.close()


def test_secrets_stay_out_of_errors_reprs_and_logs(kind: str, served: tuple[ServerProcess, str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    server, admin_secret = served
    caplog.set_level(logging.DEBUG)  # every library's logger, grpc's included
    admin = make_client(kind, server.addr, admin_key=admin_secret)
    made = admin.create_key("secretive", scopes=["read"])
    rotated = admin.rotate_key(made.key.key_id)
    shown: list[str] = [repr(admin), repr(made), str(made), repr(rotated), str(rotated)]
    not_admin = make_client(kind, server.addr, admin_key=made.secret)
    wrong = make_client(kind, server.addr, admin_key="ks_" + "Z" * 49)
    for c in (not_admin, wrong):
        with pytest.raises((PermissionDenied, Unauthenticated)) as caught:
            c.create_key("x")
        shown += [str(caught.value), repr(caught.value), repr(c), str(caught.value.args)]
        c.close()
    result = admin.validate(made.secret, required_scopes=["nope"])
    shown += [repr(result), str(result)]
    down = make_client(kind, "127.0.0.1:9", admin_key=admin_secret, timeout=2)  # nothing listens there
    with pytest.raises(Unavailable) as unreachable:
        down.create_key("x")
    shown += [str(unreachable.value), repr(unreachable.value)]
    down.close()
    admin.close()
    text = "\n".join([*shown, caplog.text, server.logs()])
    for secret in (admin_secret, made.secret, rotated.secret):
        assert secret not in text
        assert secret[3:20] not in text  # not even a recognisable part of it


class _OnRetry(logging.Handler):
    """Runs `action` once, at the client's first retry; records the codes retried."""

    def __init__(self, action: Callable[[], object]) -> None:
        super().__init__(logging.DEBUG)
        self.action: Callable[[], object] | None = action
        self.codes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.codes.append(str(getattr(record, "code", "")))
        if self.action is not None:
            action, self.action = self.action, None
            action()


def test_a_concurrency_refusal_is_retried_and_an_oversized_request_is_not(
        kind: str, start_server: Callable[..., ServerProcess], sqlite_url: str) -> None:
    _, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url, "--max-concurrent-rpcs", "1", "--max-request-bytes", "4096")
    holder = Client(server.addr, admin_key=admin_secret)
    streams = [holder.watch_events()]  # one open stream: the server's only slot
    client = make_client(kind, server.addr, admin_key=admin_secret, timeout=60,
                         retry=Retry(attempts=50, max_backoff=0.5))
    # Free the slot (from whatever thread retries) once refused.
    watcher = _OnRetry(lambda: streams[-1].cancel())  # noqa: PLW0108 - the stream open at that time
    logger = logging.getLogger("keysvc.client")
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the stream holds the slot: a plain call is refused at once
            try:
                with Client(server.addr, timeout=10, retry=Retry(attempts=1)) as probe:
                    probe.validate("ks_" + "a" * 49)
            except ResourceExhausted:
                break
            except ClientError:
                pass  # e.g. a probe too slow on a loaded machine: ask again
            else:  # the slot was free: the stream was itself refused (the server was still finishing
                # the start-up health call when it came) or is still opening: open one more
                streams[-1].cancel()
                streams.append(holder.watch_events())
            assert time.monotonic() < deadline, "the stream never held the only slot"
            time.sleep(0.05)  # poll interval while the stream opens
        assert client.validate("ks_" + "a" * 49).code.name == "MALFORMED"
        assert watcher.codes[0] == "RESOURCE_EXHAUSTED"
        watcher.codes.clear()
        with pytest.raises(ResourceExhausted):
            client.create_key("big", metadata={"blob": "x" * 8192})
        assert watcher.codes == [], "an oversized request was retried"
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(logging.NOTSET)
        for stream in streams:
            stream.cancel()
        client.close()
        holder.close()


_TRACED_CHILD = """
import sys
from keysvc.client import Client, ClientConfigError
client = Client(sys.argv[1], admin_key=sys.argv[2], timeout=20)
print("valid:", client.validate(sys.argv[3]).valid)
try:
    client.create_key("traced")
    print("admin call made")
except ClientConfigError as exc:
    print("refused:", exc)
client.close()
"""


@pytest.mark.parametrize(("trace", "verbosity"), [("all", "debug"), ("api", "info"), ("http,api", ""),
                                                 ("-all,api", "DEBUG")])
def test_the_admin_key_never_reaches_grpcs_own_tracing(served: tuple[ServerProcess, str], trace: str,
                                                       verbosity: str) -> None:
    """GRPC_TRACE makes gRPC's C core print each call's metadata to stderr, outside any
    redaction: an admin call is refused then (naming the variable), so the admin key is never
    printed; a Validate still works and its key is not printed either."""
    server, admin_secret = served
    with Client(server.addr, admin_key=admin_secret) as admin:
        made = admin.create_key("someone")
    env = {**os.environ, "GRPC_TRACE": trace, "GRPC_VERBOSITY": verbosity}
    if not verbosity:  # unset: gRPC still prints its trace lines
        del env["GRPC_VERBOSITY"]
    out = subprocess.run([sys.executable, "-c", _TRACED_CHILD, server.addr, admin_secret, made.secret],
                         check=False, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    for secret in (admin_secret, made.secret):
        assert secret[3:20] not in text
        assert secret[3:20].encode().hex(" ") not in text  # gRPC also prints values as hex bytes
    assert "valid: True" in out.stdout, text[-2000:]
    assert "refused: GRPC_TRACE:" in out.stdout, out.stdout


def test_unusable_tls_material_is_a_config_error_naming_the_field(kind: str, tmp_path: Path) -> None:
    """A CA that is no certificate, or a client certificate and key that are swapped or not a
    pair, fail at construction naming the field, not at connect time as a retried
    UNAVAILABLE outage ("Failed to create security handshaker"); no file's content is quoted."""
    pki, other = make_pki(tmp_path), make_pki(tmp_path, "other")
    garbage, empty = tmp_path / "garbage.pem", tmp_path / "empty.pem"
    garbage.write_text("not a pem at all\n")
    empty.write_text("")
    cases = {
        "tls.ca": [Tls(garbage), Tls(empty), Tls(pki.client_key_file, pki.client_cert_file, pki.client_key_file)],
        "tls.cert, tls.key": [Tls(pki.ca_file, pki.client_key_file, pki.client_cert_file),  # swapped
                              Tls(pki.ca_file, pki.client_cert_file, garbage),
                              Tls(pki.ca_file, pki.client_cert_file, other.client_key_file)],  # not a pair
    }
    key_text = pki.client_key_file.read_text()
    body = "".join(key_text.splitlines()[1:3])
    for field, material in cases.items():
        for tls in material:
            with pytest.raises(ClientConfigError) as caught:
                make_client(kind, "127.0.0.1:9", tls=tls, admin_key="", timeout=3)
            assert str(caught.value).startswith(field + ":"), str(caught.value)
            assert body not in str(caught.value)
    fine = make_client(kind, "127.0.0.1:9", tls=Tls(pki.ca_file, pki.client_cert_file, pki.client_key_file))
    fine.close()


def test_a_closed_client_raises_client_closed(served: tuple[ServerProcess, str]) -> None:
    """Every call after close() raises the typed ClientClosed, for both clients (grpc's own
    errors differ: a ValueError for the sync channel, a UsageError for the asyncio one)."""
    import asyncio

    from keysvc.client import AsyncClient

    server, admin_secret = served
    client = Client(server.addr, admin_key=admin_secret)
    made = client.create_key("closing")
    client.close()
    for call in (lambda: client.validate(made.secret), lambda: client.get_key(made.key.key_id),
                 lambda: client.create_key("again"), client.watch_events):
        with pytest.raises(ClientClosed) as caught:
            call()
        assert caught.value.method and made.secret not in repr(caught.value)

    async def closed_async() -> None:
        aio = AsyncClient(server.addr, admin_key=admin_secret)
        await aio.get_key(made.key.key_id)
        await aio.close()
        for name in ("validate", "get_key"):
            with pytest.raises(ClientClosed):
                await getattr(aio, name)(made.secret if name == "validate" else made.key.key_id)
        with pytest.raises(ClientClosed):
            await aio.watch_events().__anext__()

    asyncio.run(closed_async())
