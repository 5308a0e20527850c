"""The original fault: an admin write answered UNAVAILABLE after Redis applied it.

A real loopback proxy between `keysvc serve` and a real redis-server holds
back the reply to one lifecycle script (EVALSHA of PUT_KEYS) past the store
timeout: Redis has applied the write, keysvc answers UNAVAILABLE. The retry
with the same request_id must make no second key or rotation and end with a
working secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis

from keysvc.store.redis import scripts as lua
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, free_port

pytestmark = pytest.mark.e2e

_PUT_KEYS_SHA = hashlib.sha1(lua.PUT_KEYS.encode()).hexdigest().encode()


class DelayProxy:
    """TCP proxy on loopback; once armed, delays the reply to the next PUT_KEYS call."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.port = free_port()
        self._target = target_port
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self._armed = False
        self.fired = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self.fired.clear()

    def _take_trigger(self, chunk: bytes) -> bool:
        with self._lock:
            if self._armed and _PUT_KEYS_SHA in chunk:
                self._armed = False
                return True
            return False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        hold = asyncio.Event()

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                if self._take_trigger(chunk):
                    hold.set()
                up_writer.write(chunk)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while chunk := await up_reader.read(65536):
                if hold.is_set():
                    hold.clear()
                    await asyncio.sleep(self._delay_s)
                    self.fired.set()
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[DelayProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    p = DelayProxy(port, delay_s=0.6)  # the store timeout is 0.1 s
    yield p
    p.close()


def _md(secret: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {secret}")]


def _valid(server: ServerProcess, secret: str) -> bool:
    return server.stub().Validate(pb.ValidateRequest(key=secret), timeout=10).valid


def _owner_keys(client: redis.Redis, owner: str) -> list[str]:
    return [k.decode() for k in client.zrange(f"{{keysvc}}:owner:{owner}", 0, -1)]


def _unavailable(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()


def test_a_write_applied_behind_a_timeout_is_retried_safely(
    start_server: Callable[..., ServerProcess], redis_url: str, proxy: DelayProxy, stack: str,
) -> None:
    _, admin_secret = bootstrap(redis_url)
    proxied = f"redis://127.0.0.1:{proxy.port}/0"
    server = start_server(proxied, "--store-timeout-ms", "100", stack=stack)
    stub, md = server.stub(), _md(admin_secret)
    stub.ListKeys(pb.ListKeysRequest(), metadata=md, timeout=10)  # admin key now cached
    direct = redis.Redis.from_url(redis_url)

    create = pb.CreateKeyRequest(owner_id="retry-owner", name="n", request_id=str(uuid.uuid4()))
    proxy.arm()
    _unavailable(lambda: stub.CreateKey(create, metadata=md, timeout=10))
    assert proxy.fired.wait(10)
    made = _owner_keys(direct, "retry-owner")
    assert len(made) == 1  # the fault: written, though the caller was told UNAVAILABLE

    deadline = time.monotonic() + 30
    while True:  # the server's pool reconnects after the timed-out call
        try:
            reply = stub.CreateKey(create, metadata=md, timeout=10)
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
    assert reply.key.key_id == made[0] and reply.secret_reissued
    assert _owner_keys(direct, "retry-owner") == made
    assert _valid(server, reply.secret)

    rotate = pb.RotateKeyRequest(key_id=made[0], request_id=str(uuid.uuid4()))
    rotate.grace_period.FromSeconds(3600)
    proxy.arm()
    _unavailable(lambda: stub.RotateKey(rotate, metadata=md, timeout=10))
    assert proxy.fired.wait(10)
    assert len(_owner_keys(direct, "retry-owner")) == 2  # applied

    deadline = time.monotonic() + 30
    while True:
        try:
            rotated = stub.RotateKey(rotate, metadata=md, timeout=10)
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
    assert rotated.secret_reissued and rotated.previous.key_id == made[0]
    assert rotated.previous.status == pb.KEY_STATUS_REVOKING
    assert sorted(_owner_keys(direct, "retry-owner")) == sorted([made[0], rotated.key.key_id])
    assert _valid(server, rotated.secret)
    assert _valid(server, reply.secret)  # the old secret keeps its grace

    dump = b"".join(
        (direct.get(k) or b"") if direct.type(k) == b"string" else repr(direct.dump(k)).encode()
        for k in direct.scan_iter(count=1000)
    )
    for plain in (reply.secret, rotated.secret, admin_secret):
        assert plain.encode() not in dump
    direct.close()


def test_the_cli_sends_a_request_id_per_command(
    start_server: Callable[..., ServerProcess], sqlite_url: str,
) -> None:
    import json
    import os
    import sqlite3
    import subprocess

    from tests.e2e._servers import keysvc_cmd

    _, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url)
    env = {**os.environ, "KEYSVC_ADMIN_KEY": admin_secret, "KEYSVC_ADDR": server.addr}

    def run(*args: str) -> dict[str, object]:
        out = subprocess.run(keysvc_cmd(*args, "--json"), env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        return dict(json.loads(out.stdout))

    first = run("keys", "create", "--owner", "cli-owner")
    second = run("keys", "create", "--owner", "cli-owner")
    assert first["key"] != second["key"]  # a fresh id per command: two keys
    rid = str(uuid.uuid4())
    made = run("keys", "create", "--owner", "cli-owner", "--request-id", rid)
    again = run("keys", "create", "--owner", "cli-owner", "--request-id", rid)
    assert again["key"]["key_id"] == made["key"]["key_id"]  # type: ignore[index]
    assert again["secret_reissued"] is True
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        (recorded,) = db.execute("SELECT COUNT(*) FROM requests").fetchone()
    assert recorded == 3  # every write command carried one


def test_the_cli_retries_a_timed_out_write_as_the_same_request(
    start_server: Callable[..., ServerProcess], redis_url: str, proxy: DelayProxy,
) -> None:
    import json
    import os
    import subprocess

    from tests.e2e._servers import keysvc_cmd

    _, admin_secret = bootstrap(redis_url)
    server = start_server(f"redis://127.0.0.1:{proxy.port}/0", "--store-timeout-ms", "100")
    server.stub().ListKeys(pb.ListKeysRequest(), metadata=_md(admin_secret), timeout=10)
    env = {**os.environ, "KEYSVC_ADMIN_KEY": admin_secret, "KEYSVC_ADDR": server.addr}
    proxy.arm()
    out = subprocess.run(keysvc_cmd("keys", "create", "--owner", "cli-retry", "--json"), env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert proxy.fired.wait(10)  # the first attempt did time out behind the proxy
    created = json.loads(out.stdout)
    assert created["secret_reissued"] is True
    direct = redis.Redis.from_url(redis_url)
    assert _owner_keys(direct, "cli-retry") == [created["key"]["key_id"]]
    direct.close()
    assert _valid(server, created["secret"])
