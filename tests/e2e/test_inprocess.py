"""keysvc.inprocess beyond the shared decisions: health, restarts, threads, write-behind, fork, logs."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keysvc.core.keys import generate
from keysvc.inprocess import AsyncKeyValidator, KeyValidator
from keysvc.testing import capture_logs
from keysvc.v1 import keysvc_pb2 as pb
from tests.decisions.conftest import STORE_TIMEOUT_MS, Env
from tests.e2e._servers import bootstrap, launch

pytestmark = pytest.mark.e2e

TASKS = {"store_probe", "events", "last_used", "deadlines"}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> Iterator[Env]:
    _, secret = bootstrap(redis_url)
    admin = launch(redis_url, tmp_path, "--store-timeout-ms", str(STORE_TIMEOUT_MS))
    try:
        yield Env(redis_url, admin, secret)
    finally:
        admin.stop()


def test_health_shows_the_supervised_tasks_and_a_failing_follower_restarts(env: Env) -> None:
    """The event log turns into a string (WRONGTYPE on every read, an error the follower does not
    expect): the follower is restarted, health says so; once the log is back, revocations reach
    the in-process cache again."""
    client = redis.Redis.from_url(env.store)
    created = env.create_key()
    with KeyValidator.open(env.store, cache_ttl_s=3600, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
        wait_for(lambda: keys.health().ready, "ready")
        health = keys.health()
        assert {t.name for t in health.tasks} == TASKS and health.store_ok and health.loop_alive
        assert health.follower.state == "following"
        assert keys.validate(created.secret).valid

        client.delete("{keysvc}:events")
        client.set("{keysvc}:events", "not a stream")
        wait_for(lambda: any(t.name == "events" and t.restarts >= 2 for t in keys.health().tasks),
                 "the follower restarted twice")
        wait_for(lambda: not keys.health().ready, "not ready while the follower is down")
        assert keys.health().store_ok  # the store itself answers
        events = next(t for t in keys.health().tasks if t.name == "events")
        assert events.last_error == "ResponseError"  # the class, never the message

        client.delete("{keysvc}:events")
        wait_for(lambda: keys.health().ready, "ready again")
        env.call("RevokeKey", pb.RevokeKeyRequest(key_id=created.key.key_id))
        wait_for(lambda: keys.validate(created.secret).code.name == "REVOKED", "the revocation reached the cache")


def test_store_down_shows_in_health(tmp_path: Path) -> None:
    from tests.e2e.test_store_outage import RedisProcess

    own = RedisProcess(tmp_path)
    own.start()
    try:
        with KeyValidator.open(own.url) as keys:
            wait_for(lambda: keys.health().store_ok, "store reachable")
            own.stop()
            wait_for(lambda: not keys.health().store_ok and not keys.health().ready, "store down in health")
            assert keys.validate(generate().secret).code.name == "UNAVAILABLE"
            own.start()
            wait_for(lambda: keys.health().ready, "ready once the store is back")
    finally:
        own.stop()


def test_many_threads_share_one_validator_and_every_use_is_written_behind(env: Env) -> None:
    """Hits on the callers' threads, misses and counters through the loop, all at once."""
    plain = [env.create_key() for _ in range(4)]
    quota = env.create_key(quota=300)
    answers: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.time()

    with KeyValidator.open(env.store, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
        def caller(n: int) -> None:
            mine: Counter[str] = Counter()
            for i in range(200):
                mine[keys.validate(plain[(n + i) % len(plain)].secret).code.name] += 1
                if i % 4 == 0:
                    mine["quota:" + keys.validate(quota.secret).code.name] += 1
                if i % 50 == 0:
                    mine[keys.validate(generate().secret).code.name] += 1
            with lock:
                answers.update(mine)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        decisions = list(keys.validator.decisions)
    assert answers["VALID"] == 8 * 200
    assert answers["NOT_FOUND"] == 8 * 4
    assert answers["quota:VALID"] == 300 and answers["quota:QUOTA_EXHAUSTED"] == 8 * 50 - 300
    assert sum(decisions) == 8 * 200 + 8 * 50 + 8 * 4  # every answer counted once, under the lock
    # close() wrote the last uses behind: the admin API sees them.
    for created in plain:
        key = env.call("GetKey", pb.GetKeyRequest(key_id=created.key.key_id)).key
        assert key.last_used_at.seconds >= int(started)


def test_asyncio_validator_answers_on_its_loop_only(redis_url: str) -> None:
    elsewhere: list[BaseException] = []

    def on_another_loop(keys: AsyncKeyValidator) -> None:
        try:
            asyncio.run(keys.validate(generate().secret))  # a miss needs the loop it was started on
        except RuntimeError as error:
            elsewhere.append(error)

    async def main() -> AsyncKeyValidator:
        keys = AsyncKeyValidator.open(redis_url, store_timeout_ms=STORE_TIMEOUT_MS)
        async with keys:
            assert (await keys.validate("garbage")).code.name == "MALFORMED"
            assert (await keys.validate(generate().secret)).code.name == "NOT_FOUND"
            assert {t.name for t in keys.health().tasks} == TASKS
            other = threading.Thread(target=on_another_loop, args=(keys,))
            other.start()
            other.join(60)
        return keys

    asyncio.run(main())
    assert len(elsewhere) == 1 and "loop" in str(elsewhere[0])


def test_a_closed_validator_refuses_calls(redis_url: str) -> None:
    keys = KeyValidator.open(redis_url)
    keys.close()
    with pytest.raises(RuntimeError, match="closed"):
        keys.validate(generate().secret)
    keys.close()  # twice is fine


def test_a_validator_inherited_through_fork_refuses_calls(redis_url: str) -> None:
    keys = KeyValidator.open(redis_url)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no loop thread here
            try:
                keys.validate(generate().secret)
                os.write(write, b"answered")
            except RuntimeError:
                os.write(write, b"refused")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 100) == b"refused"
        os.waitpid(pid, 0)
        assert keys.validate("garbage").code.name == "MALFORMED"  # the parent's still works
    finally:
        keys.close()


def test_no_plaintext_key_in_any_log_line(env: Env, tmp_path: Path) -> None:
    from tests.e2e.test_store_outage import RedisProcess

    own = RedisProcess(tmp_path)
    own.start()
    try:
        _, secret = bootstrap(own.url)
        admin = launch(own.url, tmp_path, "--store-timeout-ms", str(STORE_TIMEOUT_MS))
        try:
            created = Env(own.url, admin, secret).create_key()
        finally:
            admin.stop()
        unknown = generate().secret
        with capture_logs() as logs, KeyValidator.open(own.url) as keys:
            keys.validate(created.secret)
            own.stop()  # errors and warnings now: none may carry a key
            for key in (created.secret, unknown, created.secret[:-1] + "x"):
                keys.validate(key)
            wait_for(lambda: not keys.health().store_ok, "store down")
        text = logs.getvalue()
        assert "store unreachable" in text  # the capture saw the library's lines
        for key in (created.secret, unknown):
            assert key not in text and key[3:20] not in text
    finally:
        own.stop()


def test_a_held_loop_delays_no_hit_and_bounds_every_miss(env: Env) -> None:
    """The loop thread is stuck in a callback: hits still answer (they never touch it), and a
    miss is answered as a shed miss once its wait is over, while the loop is still stuck."""
    cached, uncached = env.create_key(), env.create_key()
    with KeyValidator.open(env.store, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
        assert keys.validate(cached.secret).valid
        held, release = threading.Event(), threading.Event()

        def stuck() -> None:
            held.set()
            release.wait(60)

        keys._loop.call_soon_threadsafe(stuck)
        assert held.wait(30)
        try:
            assert keys.validate(cached.secret).valid
            assert keys.validate("garbage").code.name == "MALFORMED"
            assert keys.validate(uncached.secret).code.name == "UNAVAILABLE"
            assert not release.is_set()  # answered while the loop was still held
            assert keys.validator.store_shed == 1
        finally:
            release.set()
        wait_for(lambda: keys.validate(uncached.secret).valid, "the miss answered once the loop is free")


def test_readme_example_runs(env: Env, tmp_path: Path) -> None:
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## In-process validation (Python)", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    created = env.create_key(scopes=["orders:read"], metadata={"team": "a"})
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KEYSVC_STORE": env.store, "API_KEY": created.secret,
                               "KEYSVC_STORE_TIMEOUT_MS": str(STORE_TIMEOUT_MS)},
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert created.key.key_id in done.stdout and "VALID" in done.stdout
    assert created.secret not in done.stdout + done.stderr


def test_a_store_that_can_never_work_fails_at_open_naming_the_setting(tmp_path: Path) -> None:
    from keysvc.core.errors import ConfigError

    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not a SQLite database" * 100)
    before = threading.active_count()
    with pytest.raises(ConfigError, match="KEYSVC_STORE"):
        KeyValidator.open(f"sqlite:///{garbage}")
    wait_for(lambda: threading.active_count() <= before, "the loop thread of the failed open ended")


def test_a_quota_is_exact_across_a_sidecar_and_an_inprocess_validator_together(env: Env) -> None:
    """Counters live in the store: calls through the admin server's Validate and through the
    library, at the same time, spend one quota exactly once each."""
    created = env.create_key(quota=200)
    answers: Counter[str] = Counter()
    lock = threading.Lock()
    stub = env.admin.stub()

    with KeyValidator.open(env.store, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
        def inprocess() -> None:
            mine = Counter(keys.validate(created.secret).code.name for _ in range(75))
            with lock:
                answers.update(mine)

        def sidecar() -> None:
            mine = Counter(pb.Code.Name(stub.Validate(pb.ValidateRequest(key=created.secret), timeout=30).code)
                           .removeprefix("CODE_") for _ in range(75))
            with lock:
                answers.update(mine)

        threads = [threading.Thread(target=f) for f in (inprocess, inprocess, sidecar, sidecar)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
    assert answers == {"VALID": 200, "QUOTA_EXHAUSTED": 100}


class _SlowReads:
    """A real SQLite store whose key reads take a moment (well within the store budget)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reading = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_key_by_hash(self, key_hash: str) -> Any:
        self.reading.set()
        await asyncio.sleep(0.1)
        return await self.inner.get_key_by_hash(key_hash)

    async def get_keys_by_hash(self, key_hashes: Any) -> Any:
        self.reading.set()
        await asyncio.sleep(0.1)
        return await self.inner.get_keys_by_hash(key_hashes)


@pytest.mark.parametrize("fail_open", [False, True])
def test_close_lets_calls_already_on_the_loop_finish(tmp_path: Path, fail_open: bool) -> None:
    """close() while other threads' misses wait on the store: each gets the store's answer (or,
    if it came too late, 'closed'), never the shed answer of a loop stopped under it
    (UNAVAILABLE, or VALID for an unknown key when failing open)."""
    from keysvc.app import settings as _settings
    from keysvc.store.sqlite.store import SqliteStore

    path = tmp_path / "keys.db"
    settings = _settings.load(None, {"store": f"sqlite:///{path}", "fail_open": fail_open})
    store = _SlowReads(SqliteStore(str(path), poll_interval_s=0.01))
    keys = KeyValidator(settings, store=store)  # type: ignore[arg-type]
    answers: list[str] = []
    lock = threading.Lock()

    def miss() -> None:
        try:
            answer = keys.validate(generate().secret).code.name
        except RuntimeError as error:
            answer = "closed" if "closed" in str(error) else f"error: {error}"
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=miss) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert store.reading.wait(60)
    keys.close()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert answers and set(answers) <= {"NOT_FOUND", "closed"}, Counter(answers)


def test_threads_see_admin_changes_whole_and_never_go_back(env: Env) -> None:
    """Many threads validate keys while a separate server's admin API updates scopes and
    metadata together, rotates and revokes: every answer names the key asked about, carries
    one version of it (never new metadata with old scopes), and once a thread has seen a
    revocation it never sees the key valid again."""
    from google.protobuf import field_mask_pb2

    created = [env.create_key(scopes=["read"], metadata={"v": "1", "tenant": "t"}) for _ in range(4)]
    secrets = {c.secret: c.key.key_id for c in created}
    with KeyValidator.open(env.store, cache_ttl_s=3600, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
        wait_for(lambda: keys.health().ready, "ready")
        stop = threading.Event()
        problems: list[str] = []
        revoked_seen: set[tuple[int, str]] = set()
        seen_v2: set[str] = set()

        def hammer(worker: int) -> None:
            while not stop.is_set():
                for secret, key_id in secrets.items():
                    decision = keys.validate(secret, ["read"])
                    record = decision.record
                    if record is not None and record.key_id != key_id:
                        problems.append(f"asked {key_id}, answered {record.key_id}")
                    if decision.valid and record is not None:
                        version = record.metadata.get("v")
                        if (version == "2") != ("v2" in record.scopes):
                            problems.append(f"mixed versions: {dict(record.metadata)} {record.scopes}")
                        if version == "2":
                            seen_v2.add(key_id)
                        if (worker, key_id) in revoked_seen:
                            problems.append(f"{key_id} valid again after its revocation")
                    elif decision.code.name == "REVOKED":
                        revoked_seen.add((worker, key_id))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        try:
            for c in created:
                env.call("UpdateKey", pb.UpdateKeyRequest(
                    key_id=c.key.key_id, key=pb.Key(scopes=["read", "v2"], metadata={"v": "2", "tenant": "t"}),
                    update_mask=field_mask_pb2.FieldMask(paths=["scopes", "metadata"])))
            wait_for(lambda: seen_v2 == set(secrets.values()), "every thread's answers show the update")
            rotated = env.call("RotateKey", pb.RotateKeyRequest(key_id=created[0].key.key_id))
            assert keys.validate(rotated.secret, ["read"]).valid
            for c in created[1:]:
                env.call("RevokeKey", pb.RevokeKeyRequest(key_id=c.key.key_id))
            want = {(n, c.key.key_id) for n in range(8) for c in created[1:]}
            wait_for(lambda: want <= revoked_seen, "every thread sees every revocation")
            time.sleep(0.5)  # keep hammering a while: nothing may come back
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not problems, problems[:5]


def test_a_closed_asyncio_validator_refuses_calls_and_never_answers_a_revoked_key(env: Env) -> None:
    """After aclose() the follower is gone, so nothing cached is kept current: a key revoked
    since must not be answered VALID from the cache; every call is refused, as KeyValidator's."""
    created = env.create_key()

    async def main() -> None:
        keys = AsyncKeyValidator.open(env.store, cache_ttl_s=3600, store_timeout_ms=STORE_TIMEOUT_MS)
        async with keys:
            assert (await keys.validate(created.secret)).valid  # cached now
        env.call("RevokeKey", pb.RevokeKeyRequest(key_id=created.key.key_id))
        for key in (created.secret, generate().secret, "garbage"):
            with pytest.raises(RuntimeError, match="closed"):
                await keys.validate(key)
        await keys.aclose()  # twice is fine

    asyncio.run(main())


def test_a_frozen_store_shows_in_health_and_revocations_flow_again_after_it_thaws(tmp_path: Path) -> None:
    """redis-server SIGSTOPped (accepts, never answers): health says so, cached keys are still
    answered; once it runs again the background tasks recover and a revocation reaches the cache."""
    import signal

    from tests.e2e.test_store_outage import RedisProcess

    own = RedisProcess(tmp_path)
    own.start()
    try:
        _, secret = bootstrap(own.url)
        admin = launch(own.url, tmp_path, "--store-timeout-ms", str(STORE_TIMEOUT_MS))
        try:
            env = Env(own.url, admin, secret)
            created = env.create_key()
            with KeyValidator.open(own.url, cache_ttl_s=3600, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
                wait_for(lambda: keys.health().ready, "ready")
                assert keys.validate(created.secret).valid
                assert own.proc is not None
                os.kill(own.proc.pid, signal.SIGSTOP)
                try:
                    wait_for(lambda: not keys.health().store_ok, "a frozen store shows in health")
                    assert keys.validate(created.secret).valid  # within the stale window
                    assert keys.validate(generate().secret).code.name == "UNAVAILABLE"
                finally:
                    os.kill(own.proc.pid, signal.SIGCONT)
                wait_for(lambda: keys.health().ready and keys.health().follower.state == "following",
                         "ready and following again")
                env.call("RevokeKey", pb.RevokeKeyRequest(key_id=created.key.key_id))
                wait_for(lambda: keys.validate(created.secret).code.name == "REVOKED", "the revocation arrived")
        finally:
            admin.stop()
    finally:
        own.stop()


def test_an_asyncio_validator_inherited_through_fork_refuses_calls(env: Env) -> None:
    """A child forked from a process with a running AsyncKeyValidator has no follower (its tasks
    are the parent's) and shares the parent's store connections: nothing keeps its inherited
    cache current (a key revoked after the fork would be answered VALID from it), so the child's
    calls are refused, even for a cached key."""
    created = env.create_key()

    async def main() -> None:
        async with AsyncKeyValidator.open(env.store, cache_ttl_s=3600, store_timeout_ms=STORE_TIMEOUT_MS) as keys:
            assert (await keys.validate(created.secret)).valid  # cached now
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child, inside the inherited running loop
                try:
                    outcome = (await keys.validate(created.secret)).code.name
                except RuntimeError as error:
                    outcome = "refused" if "fork" in str(error) else "other error"
                finally:
                    os.write(write, outcome.encode() if "outcome" in locals() else b"crashed")
                    os._exit(0)
            os.close(write)
            answer = os.read(read, 100)
            await asyncio.to_thread(os.waitpid, pid, 0)
            assert answer == b"refused"
            assert (await keys.validate(created.secret)).valid  # the parent's still works

    asyncio.run(main())
