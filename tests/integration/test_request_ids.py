"""request_id (AIP-155) through AdminService on both stores.

A retry with the same request_id never acts twice and answers with the first
outcome; a lost CreateKey/RotateKey answer is recovered by a re-issued secret
for the same key. The plaintext secrets never reach the store.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core import keys
from keysvc.core.cache import KeyCache
from keysvc.core.errors import ConflictError, FailedPreconditionError, InvalidArgumentError
from keysvc.core.model import Code, EventType, KeyStatus, Policy
from keysvc.service._requests import REQUEST_WINDOW_S
from keysvc.service.admin import AdminService
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from tests._topology import client_of, current_store_url

pytestmark = pytest.mark.integration

ADMIN = "operator-a"  # in-process operators (not key ids): unbounded, as `keysvc bootstrap`
OTHER_ADMIN = "operator-b"
RID = "0b7c4d52-7a51-4c1e-9a43-7f7f4f7f2a10"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def validator(store: Store) -> Validator:
    # No cache to speak of: every answer comes from the store.
    return Validator(store, KeyCache(max_keys=1, ttl_s=0.001, negative_max=1, negative_ttl_s=0.001,
                                     stale_window_s=0))


async def works(store: Store, secret: str) -> bool:
    decision = await validator(store).validate(ValidationRequest(secret, []))
    return decision.code is Code.VALID


async def stored_text(store: Store, request: pytest.FixtureRequest, tmp_path: Path) -> bytes:
    """Every byte the store holds: the SQLite files, or every Redis value."""
    if isinstance(store, RedisStore):
        client = client_of(current_store_url(request))  # every node of a cluster
        try:
            out = b""
            for name in client.scan_iter(count=1000):
                out += name + b"=" + (client.dump(name) or b"") + b"\n"
                kind = client.type(name)
                if kind == b"string":
                    out += client.get(name) or b""
                elif kind == b"hash":
                    out += repr(client.hgetall(name)).encode()
                elif kind == b"zset":
                    out += repr(client.zrange(name, 0, -1)).encode()
                elif kind == b"stream":
                    out += repr(client.xrange(name)).encode()
            return out
        finally:
            client.close()
    files = await asyncio.to_thread(lambda: [p.read_bytes() for p in tmp_path.glob("keysvc.db*")])
    return b"".join(files)


async def test_a_retried_create_makes_no_second_key_and_reissues_the_secret(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    first, lost_secret = await admin.create_key(ADMIN, owner_id="o", name="n", request_id=RID)
    assert not first.secret_reissued
    again, secret = await admin.create_key(ADMIN, owner_id="o", name="n", request_id=RID)
    assert again.record.key_id == first.record.key_id and again.secret_reissued
    assert secret != lost_secret
    assert await works(store, secret) and not await works(store, lost_secret)
    # A retry of the retry (its answer lost too) still ends with a working secret.
    third, latest = await admin.create_key(ADMIN, owner_id="o", name="n", request_id=RID)
    assert third.record.key_id == first.record.key_id and third.secret_reissued
    assert await works(store, latest) and not await works(store, secret)
    views, _ = await admin.list_keys(owner_id="o")
    assert [v.record.key_id for v in views] == [first.record.key_id]
    created = [e for e in await store.read_events("", 1000, 0) if e.type is EventType.KEY_CREATED]
    assert len(created) == 1
    dump = await stored_text(store, request, tmp_path)
    for plain in (lost_secret, secret, latest):
        assert plain.encode() not in dump
    assert keys.hash_key(latest).encode() in dump  # the dump is real: the hash is in it


async def test_same_id_different_request_is_refused(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    await admin.create_key(ADMIN, owner_id="o", name="n", request_id=RID)
    with pytest.raises(FailedPreconditionError) as info:
        await admin.create_key(ADMIN, owner_id="o", name="other", request_id=RID)
    assert str(info.value).startswith("request_id:") and RID not in str(info.value)
    with pytest.raises(FailedPreconditionError):  # another operation with the same id
        await admin.create_policy(ADMIN, Policy("p", 0, 0.0, 0.0), request_id=RID)
    assert len((await admin.list_keys(owner_id="o"))[0]) == 1
    assert (await admin.list_policies())[0] == []


async def test_request_ids_are_scoped_to_the_actor_and_validated(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    mine, _ = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
    theirs, _ = await admin.create_key(OTHER_ADMIN, owner_id="o", request_id=RID)
    assert mine.record.key_id != theirs.record.key_id and not theirs.secret_reissued
    for bad in ("x" * 65, "has space", "semi;colon", "ü"):
        with pytest.raises(InvalidArgumentError) as info:
            await admin.create_key(ADMIN, owner_id="o", request_id=bad)
        assert str(info.value).startswith("request_id:") and bad not in str(info.value)
    assert len((await admin.list_keys(owner_id="o"))[0]) == 2


async def test_a_request_id_is_forgotten_after_its_window(store: Store) -> None:
    clock = Clock(time.time())  # Redis expires marks by its own clock
    admin = AdminService(store, auditor=AUDITOR, clock=clock)
    first, _ = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
    clock.now += REQUEST_WINDOW_S - 60
    assert (await admin.create_key(ADMIN, owner_id="o", request_id=RID))[0].secret_reissued
    clock.now += 120
    later, _ = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
    assert later.record.key_id != first.record.key_id and not later.secret_reissued


async def test_a_retried_rotation_makes_no_second_rotation(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    key, old_secret = await admin.create_key(ADMIN, owner_id="o")
    new, lost_secret, previous = await admin.rotate_key(ADMIN, key.record.key_id, 3600, RID)
    # Today's failure: a retry without the mark is refused ("being revoked") and
    # the caller would hold neither secret. With it: the same new key, re-keyed.
    again, secret, previous_again = await admin.rotate_key(ADMIN, key.record.key_id, 3600, RID)
    assert again.record.key_id == new.record.key_id and again.secret_reissued
    assert previous_again.record.key_id == key.record.key_id
    assert previous_again.record.revoke_at == previous.record.revoke_at  # grace unchanged
    assert previous_again.status is KeyStatus.REVOKING
    assert await works(store, secret) and not await works(store, lost_secret)
    assert await works(store, old_secret)  # the old key keeps its grace
    views, _ = await admin.list_keys(owner_id="o")
    assert sorted(v.record.key_id for v in views) == sorted([key.record.key_id, new.record.key_id])
    rotated = [e for e in await store.read_events("", 1000, 0) if e.type is EventType.KEY_ROTATED]
    assert len(rotated) == 1


async def test_no_reissue_once_the_key_changed(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    first, secret = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
    await admin.update_key(ADMIN, first.record.key_id, {"name": "used"})
    with pytest.raises(FailedPreconditionError):
        await admin.create_key(ADMIN, owner_id="o", request_id=RID)
    assert await works(store, secret)


async def test_retried_revoke_and_update_return_the_first_outcome(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    key, _ = await admin.create_key(ADMIN, owner_id="o")
    key_id = key.record.key_id
    updated = await admin.update_key(ADMIN, key_id, {"name": "x"}, request_id="upd-1")
    assert (await admin.update_key(ADMIN, key_id, {"name": "x"}, request_id="upd-1")).record.revision \
        == updated.record.revision
    revoked = await admin.revoke_key(ADMIN, key_id, reason="r", request_id="rev-1")
    again = await admin.revoke_key(ADMIN, key_id, reason="r", request_id="rev-1")  # not "already revoked"
    assert again.status is KeyStatus.REVOKED and again.record.revoke_at == revoked.record.revoke_at
    revokes = [e for e in await store.read_events("", 1000, 0) if e.type is EventType.KEY_REVOKED]
    assert len(revokes) == 1


async def test_retried_policy_writes_make_no_second_version(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    created = await admin.create_policy(ADMIN, Policy("p", 0, 0.0, 0.0, scopes=("a",)), "pc-1")
    assert (await admin.create_policy(ADMIN, Policy("p", 0, 0.0, 0.0, scopes=("a",)), "pc-1")) == created
    proposed = Policy("p", 0, 0.0, 0.0, scopes=("a", "b"))
    v2, impact = await admin.update_policy(ADMIN, proposed, expected_version=1, request_id="pu-1")
    assert v2 is not None and v2.version == 2
    again, again_impact = await admin.update_policy(ADMIN, proposed, expected_version=1,
                                                    request_id="pu-1")
    assert again == v2 and again_impact.diff == impact.diff
    back, _ = await admin.rollback_policy(ADMIN, "p", 1, allow_breaking=True, request_id="pr-1")
    assert back is not None and back.version == 3
    assert (await admin.rollback_policy(ADMIN, "p", 1, allow_breaking=True,
                                       request_id="pr-1"))[0] == back
    assert (await admin.get_policy("p")).version == 3
    with pytest.raises(FailedPreconditionError):
        await admin.update_policy(ADMIN, proposed, expected_version=3, request_id="pu-1")


async def test_concurrent_attempts_of_one_request_make_one_key(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    results = await asyncio.gather(
        *(admin.create_key(ADMIN, owner_id="o", request_id=RID) for _ in range(5)),
        return_exceptions=True,
    )
    made = {r[0].record.key_id for r in results if isinstance(r, tuple)}
    assert len(made) == 1
    assert len((await admin.list_keys(owner_id="o"))[0]) == 1


async def test_concurrent_attempts_of_one_rotation_make_one_rotation(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    key, _ = await admin.create_key(ADMIN, owner_id="o")
    results = await asyncio.gather(
        *(admin.rotate_key(ADMIN, key.record.key_id, 60, RID) for _ in range(5)),
        return_exceptions=True,
    )
    answers = [r for r in results if isinstance(r, tuple)]
    # A loser is either answered with the winner's rotation or told to retry (ABORTED).
    assert all(isinstance(r, ConflictError) for r in results if not isinstance(r, tuple)), results
    assert answers and len({r[0].record.key_id for r in answers}) == 1
    rotated = [e for e in await store.read_events("", 1000, 0) if e.type is EventType.KEY_ROTATED]
    assert len(rotated) == 1
    assert len((await admin.list_keys(owner_id="o"))[0]) == 2


async def test_replays_are_audited_and_their_secrets_never_logged(store: Store) -> None:
    from opentelemetry.sdk.trace import ReadableSpan

    from keysvc.testing import capture_logs, capture_spans

    admin = AdminService(store, auditor=AUDITOR)
    with capture_spans() as spans, capture_logs() as logs:
        key, lost = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
        _, reissued = await admin.create_key(ADMIN, owner_id="o", request_id=RID)
        new, lost_new, _ = await admin.rotate_key(ADMIN, key.record.key_id, 60, "rot-1")
        _, reissued_new, _ = await admin.rotate_key(ADMIN, key.record.key_id, 60, "rot-1")
        await admin.revoke_key(ADMIN, new.record.key_id, request_id="rev-1")
        await admin.revoke_key(ADMIN, new.record.key_id, request_id="rev-1")
    finished = [s for s in spans.get_finished_spans() if s.name.startswith("audit.")]
    outcomes = [(s.name, (s.attributes or {}).get("keysvc.outcome")) for s in finished]
    assert outcomes == [
        ("audit.key.create", "ok"), ("audit.key.create", "secret_reissued"),
        ("audit.key.rotate", "ok"), ("audit.key.rotate", "secret_reissued"),
        ("audit.key.revoke", "ok"), ("audit.key.revoke", "replayed"),
    ]
    assert all((s.attributes or {}).get("keysvc.request_id") for s in finished)
    text = "\n".join(s.to_json() for s in finished if isinstance(s, ReadableSpan)) + logs.getvalue()
    for plain in (lost, reissued, lost_new, reissued_new):
        assert plain not in text and plain[3:] not in text
