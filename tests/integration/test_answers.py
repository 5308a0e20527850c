"""Validate and Check send kept, pre-serialized answers: they must be the slow path's, byte for byte.

The servicers return the serialized response (registered with no response
serializer), built once per decision shape. Each kept answer must decode to
exactly what `decision_to_pb` / `check_response` build for the same input,
for every Code and for allow and deny Check responses with headers; answers
that count down (rate limit, quota, 429) must never be reused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from keysvc.api.authz import MISSING_CREDENTIALS, Authorizer, AuthzConfig, AuthzResult, result_for
from keysvc.api.envoy.extauthz import AuthorizationServicer, check_response
from keysvc.api.grpc import convert as conv
from keysvc.api.grpc.keyservice import KeyServiceServicer
from keysvc.app.telemetry import AUDITOR
from keysvc.core.cache import KeyCache
from keysvc.core.model import Code, Decision, KeyRecord, Policy, RateLimitState
from keysvc.core.routes import Routes
from keysvc.service.admin import AdminService
from keysvc.service.events import EventLog
from keysvc.service.validator import Validator
from keysvc.store.sqlite.store import SqliteStore
from keysvc.v1 import keysvc_pb2 as pb

pytestmark = pytest.mark.integration

NOW = 1_000_000.0
HEADERS = ("x-api-key", "authorization")
RECORD = KeyRecord(key_id="key_00000000000000001", key_hash="0" * 64, hint="ks_AAAA", owner_id="acme",
                   created_at=NOW, updated_at=NOW, policy_id="partners", expires_at=NOW + 3600,
                   metadata={"team": "a", "tier": "gold"}, scopes=("orders:read",))
POLICY = Policy(policy_id="partners", version=3, created_at=NOW, updated_at=NOW)


def _servicers(tmp_path: Path) -> tuple[KeyServiceServicer, AuthorizationServicer]:
    store = SqliteStore(str(tmp_path / "keysvc.db"))
    validator = Validator(store, KeyCache(max_keys=10, ttl_s=60.0, negative_max=10, negative_ttl_s=1.0, stale_window_s=0.0))
    keys = KeyServiceServicer(validator, AdminService(store, auditor=AUDITOR), EventLog(store))
    return keys, AuthorizationServicer(Authorizer(validator, AuthzConfig(Routes(), HEADERS, 0)))


def _decisions() -> list[Decision]:
    """Every Code, with and without a record, plus the counting shapes."""
    shapes = [Decision(code, message=f"{code.name.lower()} rule") for code in Code]
    shapes += [Decision(code, RECORD, POLICY, ("orders:read",), "m") for code in Code]
    window = RateLimitState(limit=100, remaining=7, reset_at=NOW + 1.5)
    shapes += [Decision(Code.VALID, RECORD, POLICY, ("orders:read",), rate_limit=window),
               Decision(Code.VALID, RECORD, POLICY, ("orders:read",), quota_remaining=41),
               Decision(Code.RATE_LIMITED, RECORD, POLICY, rate_limit=window, message="over")]
    return shapes


def test_validate_answers_decode_to_the_slow_path_for_every_code(tmp_path: Path) -> None:
    keys, _ = _servicers(tmp_path)
    for decision in _decisions():
        slow = conv.decision_to_pb(decision)
        for _ in range(2):  # built, then (where kept) reused
            wire = keys._answer(decision)[2]
            assert isinstance(wire, bytes)
            assert pb.ValidateResponse.FromString(wire) == slow, decision


def test_constant_answers_are_reused_and_counting_answers_never_are(tmp_path: Path) -> None:
    keys, _ = _servicers(tmp_path)
    grant = Decision(Code.VALID, RECORD, POLICY, ("orders:read",))
    assert keys._answer(grant)[2] is keys._answer(grant)[2]
    window = RateLimitState(limit=100, remaining=7, reset_at=NOW + 1.5)
    first = Decision(Code.VALID, RECORD, POLICY, rate_limit=window)
    later = Decision(Code.VALID, RECORD, POLICY, rate_limit=RateLimitState(100, 6, NOW + 1.5))
    assert pb.ValidateResponse.FromString(keys._answer(first)[2]).rate_limit.remaining == 7
    assert pb.ValidateResponse.FromString(keys._answer(later)[2]).rate_limit.remaining == 6
    assert len(keys._answers) == 1  # only the grant was kept
    # An equal but distinct decision object is answered for itself, never from another's entry.
    twin = Decision(Code.VALID, RECORD, POLICY, ("orders:write",))
    assert pb.ValidateResponse.FromString(keys._answer(twin)[2]).scopes == ["orders:write"]


def test_check_answers_decode_to_the_slow_path_for_allow_and_every_denial(tmp_path: Path) -> None:
    _, authz = _servicers(tmp_path)
    results = [result_for(d, HEADERS, NOW) for d in _decisions()] + [MISSING_CREDENTIALS]
    results.append(AuthzResult(200, upstream_headers=(("x-keysvc-key-id", "k"), ("x-keysvc-owner-id", "o")),
                               remove_headers=HEADERS, key_id="k", owner_id="o", policy_id="p"))
    assert any(r.allowed for r in results) and any(r.status == 429 for r in results)
    assert {r.status for r in results} >= {200, 401, 403, 429, 503}
    for result in results:
        slow = check_response(result)
        for _ in range(2):
            wire = authz._response(result)
            assert isinstance(wire, bytes)
            assert CheckResponse.FromString(wire) == slow, result
    kept = [r for r in results if r.status != 429]
    assert authz._response(kept[0]) is authz._response(kept[0])
    assert len(authz._responses) == len(set(kept))  # 429s count down: never kept
