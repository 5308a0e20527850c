"""One decision suite, three implementations: the sidecar over gRPC and the in-process library (sync, asyncio).

Every case runs against each implementation on each store (a real
redis-server, a real SQLite file). Keys and policies are made, changed and
revoked through the admin API of a separate `keysvc serve` process, so the
in-process caches learn of changes only as a sidecar would: from the event
log their followers read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from keysvc.core.model import Decision
from keysvc.inprocess import AsyncKeyValidator, KeyValidator
from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, launch

IMPLEMENTATIONS = ("sidecar", "sync", "async")
DEADLINE_S = 20.0  # generous: two cores shared with other test runs


@dataclass(frozen=True)
class Answer:
    """What every implementation is compared on."""

    code: str
    key_id: str = ""
    owner_id: str = ""
    scopes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    remaining: int | None = None  # rate-limit window
    quota_remaining: int | None = None


def _from_decision(d: Decision) -> Answer:
    record = d.record
    return Answer(
        d.code.name, record.key_id if record else "", record.owner_id if record else "", tuple(d.scopes),
        dict(record.metadata) if record else {}, d.rate_limit.remaining if d.rate_limit else None,
        d.quota_remaining,
    )


def _from_response(r: pb.ValidateResponse) -> Answer:
    return Answer(
        pb.Code.Name(r.code).removeprefix("CODE_"), r.key_id, r.owner_id, tuple(r.scopes), dict(r.metadata),
        r.rate_limit.remaining if r.HasField("rate_limit") else None,
        r.quota_remaining if r.HasField("quota_remaining") else None,
    )


class Impl:
    """One implementation under test, driven synchronously by the tests."""

    name: str

    def check(self, key: str, scopes: tuple[str, ...] = (), client_ip: str = "", cost: int = 1) -> Answer:
        raise NotImplementedError

    def idle(self, seconds: float) -> None:
        """Let background work (the follower) run for a moment between polls."""
        time.sleep(seconds)

    def close(self) -> None:
        raise NotImplementedError

    def wait_for(self, key: str, code: str, **kwargs: Any) -> Answer:
        """Poll until `key` answers `code` (an event applied, a deadline passed); fail after DEADLINE_S."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            answer = self.check(key, **kwargs)
            if answer.code == code or time.monotonic() > deadline:
                assert answer.code == code, f"{self.name}: still {answer.code} after {DEADLINE_S}s"
                return answer
            self.idle(0.05)


class Sidecar(Impl):
    name = "sidecar"

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.stub = server.stub()

    def check(self, key: str, scopes: tuple[str, ...] = (), client_ip: str = "", cost: int = 1) -> Answer:
        request = pb.ValidateRequest(key=key, required_scopes=scopes, client_ip=client_ip, cost=cost)
        return _from_response(self.stub.Validate(request, timeout=10))

    def close(self) -> None:
        assert self.server.stop() == 0


class Sync(Impl):
    name = "sync"

    def __init__(self, store: str, **overrides: Any) -> None:
        self.validator = KeyValidator.open(store, **overrides)

    def check(self, key: str, scopes: tuple[str, ...] = (), client_ip: str = "", cost: int = 1) -> Answer:
        return _from_decision(self.validator.validate(key, scopes, client_ip, cost))

    def close(self) -> None:
        self.validator.close()


class Async(Impl):
    """The asyncio validator on a loop of the test's own thread (run only while a call runs)."""

    name = "async"

    def __init__(self, store: str, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.validator = AsyncKeyValidator.open(store, **overrides)
        self.loop.run_until_complete(self.validator.start())

    def check(self, key: str, scopes: tuple[str, ...] = (), client_ip: str = "", cost: int = 1) -> Answer:
        return _from_decision(self.loop.run_until_complete(self.validator.validate(key, scopes, client_ip, cost)))

    def idle(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        self.loop.run_until_complete(self.validator.aclose())
        self.loop.close()


# Two cores shared with other test runs can hold a store call past keysvc's 100 ms default:
# these tests are about decisions, not timeouts (the store-down cases stop the store outright).
STORE_TIMEOUT_MS = 1000


def make_impl(kind: str, store: str, log_dir: Path, *flags: str, **overrides: Any) -> Impl:
    """Start implementation `kind` on `store`; `flags`/`overrides` are the same settings two ways."""
    if kind == "sidecar":
        return Sidecar(launch(store, log_dir, "--store-timeout-ms", str(STORE_TIMEOUT_MS), *flags))
    overrides.setdefault("store_timeout_ms", STORE_TIMEOUT_MS)
    return Sync(store, **overrides) if kind == "sync" else Async(store, **overrides)


@dataclass
class Env:
    """A store, a separate admin server on it, and its admin key."""

    store: str
    admin: ServerProcess
    secret: str

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.secret}")]

    def create_key(self, **fields: Any) -> pb.CreateKeyResponse:
        fields.setdefault("owner_id", "owner-1")
        return self.admin.stub().CreateKey(pb.CreateKeyRequest(**fields), metadata=self.auth, timeout=10)

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.admin.stub(), method)(request, metadata=self.auth, timeout=10)


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp(f"decisions-{request.param}")
    if request.param == "redis":
        store = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(store, socket_timeout=2)
        client.flushall()
        client.close()
    else:
        store = f"sqlite:///{workdir}/keysvc.db"
    _, secret = bootstrap(store)
    admin = launch(store, workdir, "--store-timeout-ms", str(STORE_TIMEOUT_MS))
    try:
        yield Env(store, admin, secret)
    finally:
        admin.stop()


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest, env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Impl]:
    made = make_impl(str(request.param), env.store, tmp_path_factory.mktemp("impl"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def own_impl(tmp_path: Path) -> Iterator[Callable[..., Impl]]:
    """Start implementations on a store of the test's own; closed after the test."""
    made: list[Impl] = []

    def start(kind: str, store: str, *flags: str, **overrides: Any) -> Impl:
        impl = make_impl(kind, store, tmp_path, *flags, **overrides)
        made.append(impl)
        return impl

    yield start
    for impl in made:
        impl.close()


__all__ = ["DEADLINE_S", "IMPLEMENTATIONS", "Answer", "Env", "Impl", "grpc"]
