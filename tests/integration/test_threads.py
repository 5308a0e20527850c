"""Structures the sync stack's threads share with the event loop stay consistent under contention.

Pool threads answer hits (noting last uses, reading negative entries and the
ext_authz response memo) while one "loop" thread does what the event loop
does: drain and write the last uses, insert and evict negative entries,
invalidate keys. A short GIL switch interval makes the interleavings the
sync stack meets under load frequent enough to hit.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from keysvc.api.authz import Authorizer, AuthzConfig, AuthzResult
from keysvc.api.envoy.extauthz import _MAX_RESPONSES, AuthorizationServicer
from keysvc.app.telemetry import AUDITOR
from keysvc.core import keys
from keysvc.core.cache import KeyCache
from keysvc.core.model import Code
from keysvc.core.routes import Routes
from keysvc.service.admin import AdminService
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.redis.store import RedisStore

pytestmark = pytest.mark.integration

THREADS = 12
ROUNDS = 3000


@pytest.fixture
def busy_gil() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


async def test_hits_write_behind_negative_entries_and_memo_eviction_under_threads(
    redis_url: str, busy_gil: None
) -> None:
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        await store.ping()
        admin = AdminService(store, auditor=AUDITOR)
        secrets = [(await admin.create_key("t", owner_id=f"o{i}"))[1] for i in range(16)]
        # A negative TTL of zero-ish: threads keep finding expired entries and dropping them.
        cache = KeyCache(max_keys=1000, ttl_s=3600.0, negative_max=8, negative_ttl_s=1e-4,
                         stale_window_s=0.0)
        validator = Validator(store, cache)
        for secret in secrets:
            assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
        key_ids = {(await store.get_key_by_hash(keys.hash_key(s))).key_id for s in secrets}  # type: ignore[union-attr]
    finally:
        await store.close()
    unknown = [keys.generate() for _ in range(32)]
    servicer = AuthorizationServicer(Authorizer(validator, AuthzConfig(Routes(), ("x-api-key",), 0)))
    # More distinct answers than the response memo keeps: past the first fill, most calls evict.
    results = [AuthzResult(200, key_id=f"k{i}", upstream_headers=(("x-keysvc-key-id", f"k{i}"),))
               for i in range(_MAX_RESPONSES + 64)]
    for result in results[:_MAX_RESPONSES]:
        servicer._response(result)
    errors: list[BaseException] = []
    drained: dict[str, float] = {}
    noted: dict[str, float] = {}  # the latest use each thread saw answered, per key
    stop = threading.Event()
    lock = threading.Lock()

    def hits(worker: int) -> None:
        latest: dict[str, float] = {}
        try:
            for n in range(ROUNDS):
                secret = secrets[(worker + n) % len(secrets)]
                before = validator._clock()
                decision = validator.check_cached(ValidationRequest(secret))
                assert decision is not None and decision.code is Code.VALID
                assert decision.record is not None
                latest[decision.record.key_id] = before
                probe = unknown[(worker * 5 + n) % len(unknown)]
                miss = validator.check_cached(ValidationRequest(probe.secret))
                assert miss is None or miss.code is Code.NOT_FOUND
                result = results[(worker * 997 + n * 13) % len(results)]
                response = CheckResponse.FromString(servicer._response(result))
                assert response.ok_response.headers[0].header.value == result.key_id
        except BaseException as exc:
            errors.append(exc)
        with lock:
            for key_id, at in latest.items():
                noted[key_id] = max(noted.get(key_id, 0.0), at)

    def loop_work() -> None:
        try:
            n = 0
            while not stop.is_set():
                batch = validator.drain_last_used()
                for key_id, at in batch.items():  # what store.touch does with it
                    drained[key_id] = max(drained.get(key_id, 0.0), at)
                probe = unknown[n % len(unknown)]
                cache.put_unknown(probe.key_hash, validator._monotonic(), cache.epoch)
                if n % 7 == 0:
                    cache.evict_key(unknown[(n * 3) % len(unknown)].key_hash)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    loop_thread = threading.Thread(target=loop_work)
    loop_thread.start()
    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(hits, w) for w in range(THREADS)]:
            future.result()
    stop.set()
    loop_thread.join(60)
    for key_id, at in validator.drain_last_used().items():
        drained[key_id] = max(drained.get(key_id, 0.0), at)
    assert not errors, [repr(e) for e in errors[:5]]
    assert len(servicer._responses) <= _MAX_RESPONSES
    assert set(drained) == key_ids
    # No use was lost: every key's latest use reached a drained batch.
    for key_id, seen in noted.items():
        assert drained[key_id] >= seen, key_id
