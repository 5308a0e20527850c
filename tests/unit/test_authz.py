"""keysvc.api.authz: credentials, client address, and Decision -> AuthzResult, without a server."""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import pytest

from keysvc.api.authz import (
    AMBIGUOUS_CREDENTIALS,
    KEY_ID_HEADER,
    MISSING_CREDENTIALS,
    OWNER_ID_HEADER,
    Authorizer,
    AuthzConfig,
    client_ip,
    find_credential,
    result_for,
)
from keysvc.api.envoy.extauthz import check_response
from keysvc.core.model import Code, Decision, KeyRecord, Policy, QuotaRefill, RateLimitState
from keysvc.core.routes import RouteRule, Routes
from keysvc.service.validator import ValidationRequest

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
KEY = "ks_" + "A" * 49
HEADERS = ("x-api-key", "authorization")
RECORD = KeyRecord(key_id="key_00000000000000001", key_hash="0" * 64, hint="ks_AAAA", owner_id="acme",
                   created_at=NOW, updated_at=NOW, policy_id="partners")
POLICY = Policy(policy_id="partners", version=1, created_at=NOW, updated_at=NOW)


@pytest.mark.parametrize(("headers", "found"), [
    ({"x-api-key": KEY}, ("x-api-key", KEY)),
    ({"x-api-key": f"  {KEY} "}, ("x-api-key", KEY)),
    ({"authorization": f"Bearer {KEY}"}, ("authorization", KEY)),
    ({"authorization": f"bearer   {KEY}"}, ("authorization", KEY)),
    ({"x-api-key": KEY, "authorization": f"Bearer {KEY}"}, ("x-api-key", KEY)),  # the same key twice
    ({"x-api-key": f"{KEY}, {KEY}"}, ("x-api-key", KEY)),
    ({"x-api-key": KEY, "authorization": "Basic dXNlcjpwdw=="}, ("x-api-key", KEY)),
    ({"x-api-key": "", "authorization": f"Bearer {KEY}"}, ("authorization", KEY)),
    ({"authorization": f"Basic {KEY}"}, ("", "")),
    ({"authorization": "Bearer "}, ("", "")),
    ({"authorization": "Bearer"}, ("", "")),
    ({"X-Api-Key": KEY}, ("", "")),  # names arrive lower-cased; this mapping is case-sensitive
    ({}, ("", "")),
])
def test_find_credential(headers: dict[str, str], found: tuple[str, str]) -> None:
    assert find_credential(headers, HEADERS) == found


OTHER = "ks_" + "B" * 49


# Two keys in one request: the app behind may read the other one than keysvc judged.
@pytest.mark.parametrize("headers", [
    {"x-api-key": KEY, "authorization": f"Bearer {OTHER}"},
    {"x-api-key": f"{KEY},{OTHER}"},                       # two x-api-key headers, merged by a proxy
    {"x-api-key": f"{KEY}, "  f"{OTHER}"},
    {"authorization": f"Bearer {KEY}, Bearer {OTHER}"},   # two authorization headers, merged
    {"authorization": f"Bearer {KEY},{OTHER}"},
    {"authorization": f"Bearer {KEY}, Basic dXNlcjpwdw=="},
    {"x-api-key": "", "authorization": f"bearer {KEY}", "x-token": OTHER},
])
def test_find_credential_refuses_several_keys(headers: dict[str, str]) -> None:
    assert find_credential(headers, (*HEADERS, "x-token")) is None


def test_find_credential_follows_the_configured_headers() -> None:
    headers = {"x-api-key": KEY, "x-token": "ks_other"}
    assert find_credential(headers, ("x-token",)) == ("x-token", "ks_other")
    assert find_credential(headers, ("authorization",)) == ("", "")


@pytest.mark.parametrize(("xff", "depth", "ip"), [
    (None, 0, "10.0.0.9"),
    ("1.1.1.1", 0, "10.0.0.9"),             # depth 0: the header is not trusted at all
    ("1.1.1.1", 1, "1.1.1.1"),
    ("6.6.6.6, 1.1.1.1", 1, "1.1.1.1"),     # a client-written entry on the left is ignored
    ("6.6.6.6, 1.1.1.1, 2.2.2.2", 2, "1.1.1.1"),
    ("1.1.1.1", 2, ""),                     # fewer hops than trusted proxies: fail closed
    (None, 1, ""),
    ("[2001:db8::1]:443, 1.1.1.1", 2, "2001:db8::1"),
    ("1.2.3.4:5678", 1, "1.2.3.4"),
    ("2001:db8::2", 1, "2001:db8::2"),
])
def test_client_ip(xff: str | None, depth: int, ip: str) -> None:
    headers = {} if xff is None else {"x-forwarded-for": xff}
    assert client_ip(headers, "10.0.0.9", depth) == ip


def test_allowed_sets_identity_and_removes_the_credential_header() -> None:
    result = result_for(Decision(Code.VALID, RECORD, POLICY), HEADERS, NOW)
    assert result.allowed and result.status == 200 and not result.error and not result.body
    assert result.upstream_headers == ((KEY_ID_HEADER, RECORD.key_id), (OWNER_ID_HEADER, "acme"))
    assert result.remove_headers == HEADERS  # every credential header, not only the one used
    assert (result.key_id, result.owner_id, result.policy_id) == (RECORD.key_id, "acme", "partners")


def test_fail_open_lets_through_without_any_identity() -> None:
    result = result_for(Decision(Code.VALID, message="fail-open"), HEADERS, NOW)
    assert result.allowed and result.upstream_headers == ()
    assert set(result.remove_headers) == {*HEADERS, KEY_ID_HEADER, OWNER_ID_HEADER}


@pytest.mark.parametrize(("code", "status"), [
    (Code.MALFORMED, 401), (Code.NOT_FOUND, 401), (Code.REVOKED, 401), (Code.EXPIRED, 401),
    (Code.DISABLED, 401), (Code.INSUFFICIENT_SCOPE, 403), (Code.IP_NOT_ALLOWED, 403),
    (Code.RATE_LIMITED, 429), (Code.QUOTA_EXHAUSTED, 429), (Code.UNAVAILABLE, 503),
])
def test_every_code_maps_to_a_status_and_a_safe_body(code: Code, status: int) -> None:
    secret_message = f"key {KEY} lacks scope 'x' (store at redis://10.0.0.1)"
    result = result_for(Decision(code, RECORD, POLICY, message=secret_message), HEADERS, NOW)
    assert result.status == status and not result.allowed
    body = json.loads(result.body)
    assert body["error"] == code.name.lower() == result.error
    assert body["message"] == result.message and result.message
    blob = repr(result)
    assert KEY not in blob and "redis" not in blob and "lacks scope 'x'" not in blob
    headers = dict(result.response_headers)
    assert headers["content-type"] == "application/json"
    assert ("www-authenticate" in headers) == (status == 401)
    assert result.upstream_headers == () and result.remove_headers == ()


def test_missing_credentials_is_a_bare_challenge() -> None:
    assert MISSING_CREDENTIALS.status == 401
    assert dict(MISSING_CREDENTIALS.response_headers)["www-authenticate"] == 'Bearer realm="keysvc"'
    assert json.loads(MISSING_CREDENTIALS.body)["error"] == "missing_credentials"


def test_rate_limited_says_when_to_retry() -> None:
    state = RateLimitState(limit=10, remaining=0, reset_at=NOW + 12.3)
    result = result_for(Decision(Code.RATE_LIMITED, RECORD, POLICY, rate_limit=state), HEADERS, NOW)
    headers = dict(result.response_headers)
    assert headers["retry-after"] == "13"
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"], headers["ratelimit-reset"]) == (
        "10", "0", "13")


def test_rate_limited_at_the_window_edge_still_says_one_second() -> None:
    state = RateLimitState(limit=10, remaining=0, reset_at=NOW - 0.5)
    result = result_for(Decision(Code.RATE_LIMITED, RECORD, POLICY, rate_limit=state), HEADERS, NOW)
    assert dict(result.response_headers)["retry-after"] == "1"


def test_quota_without_refill_has_no_retry_after() -> None:
    result = result_for(Decision(Code.QUOTA_EXHAUSTED, RECORD, POLICY, quota_remaining=0), HEADERS, NOW)
    assert result.status == 429 and "retry-after" not in dict(result.response_headers)


def test_quota_with_refill_retries_within_one_interval() -> None:
    policy = replace(POLICY, quota_refill=QuotaRefill(amount=100, interval_s=3600))
    state = RateLimitState(limit=50, remaining=49, reset_at=NOW + 30)
    result = result_for(Decision(Code.QUOTA_EXHAUSTED, RECORD, policy, rate_limit=state), HEADERS, NOW)
    headers = dict(result.response_headers)
    assert headers["retry-after"] == "3600"
    assert headers["ratelimit-remaining"] == "49"


class StubValidator:
    """Answers from a table; records what it was asked."""

    def __init__(self, cached: Decision | None, stored: Decision) -> None:
        self.cached, self.stored = cached, stored
        self.asked: list[ValidationRequest] = []

    def check_cached(self, request: ValidationRequest) -> Decision | None:
        self.asked.append(request)
        return self.cached

    async def validate_from_store(self, request: ValidationRequest) -> Decision:
        self.asked.append(request)
        return self.stored


def _authorizer(validator: StubValidator, depth: int = 0) -> Authorizer:
    routes = Routes((RouteRule(("orders:write",), path_prefix="/orders", methods=frozenset({"POST"})),))
    return Authorizer(validator, AuthzConfig(routes, HEADERS, depth), clock=lambda: NOW)  # type: ignore[arg-type]


async def test_authorizer_reads_route_scopes_and_client_ip() -> None:
    validator = StubValidator(Decision(Code.VALID, RECORD, POLICY), Decision(Code.UNAVAILABLE))
    result = await _authorizer(validator, depth=1).check(
        {"x-api-key": KEY, "x-forwarded-for": "6.6.6.6, 1.1.1.1"}, "post", "/orders/1?a=b", "10.0.0.9")
    assert result.allowed
    assert validator.asked == [ValidationRequest(KEY, ("orders:write",), "1.1.1.1")]


async def test_authorizer_asks_the_store_only_on_a_miss() -> None:
    validator = StubValidator(None, Decision(Code.REVOKED, RECORD, POLICY))
    result = await _authorizer(validator).check({"authorization": f"Bearer {KEY}"}, "GET", "/x", "10.0.0.9")
    assert result.status == 401 and result.error == "revoked" and result.key_id == RECORD.key_id
    assert validator.asked == [ValidationRequest(KEY, (), "10.0.0.9")] * 2


async def test_authorizer_without_a_key_never_asks_the_validator() -> None:
    validator = StubValidator(None, Decision(Code.VALID, RECORD))
    assert await _authorizer(validator).check({}, "GET", "/", "10.0.0.9") is MISSING_CREDENTIALS
    assert validator.asked == []


async def test_authorizer_refuses_several_keys_without_asking_the_validator() -> None:
    validator = StubValidator(Decision(Code.VALID, RECORD, POLICY), Decision(Code.VALID, RECORD, POLICY))
    headers = {"x-api-key": KEY, "authorization": f"Bearer {OTHER}"}
    result = await _authorizer(validator).check(headers, "GET", "/", "10.0.0.9")
    assert result is AMBIGUOUS_CREDENTIALS and result.status == 401 and result.error == "invalid_request"
    assert KEY not in result.body and OTHER not in result.body
    assert dict(result.response_headers)["www-authenticate"].endswith('error="invalid_request"')
    assert validator.asked == []


@pytest.mark.parametrize("target", [
    "/admin%2F..%2Fpublic", "/admin%2f..%2fpublic", "/a%5Cb", "/a%5c..%5cb", "/a/%2E%2E/b", "/a/%2e/b",
    "/admin%252F..%252Fpublic", "/a%255cb", "/a%00b", "/a%0Ab", "/a\\..\\b", "/a\x00b", "/a#/../b",
    "/" + "a" * 9000,
])
async def test_authorizer_refuses_targets_it_cannot_judge_as_the_upstream_will(target: str) -> None:
    validator = StubValidator(Decision(Code.VALID, RECORD, POLICY), Decision(Code.VALID, RECORD, POLICY))
    result = await _authorizer(validator).check({"x-api-key": KEY}, "GET", target, "10.0.0.9")
    assert result.status == 400 and result.error == "invalid_path"
    assert target not in result.body and "admin" not in result.body
    assert validator.asked == []


def test_check_response_for_allow_and_deny() -> None:
    allowed = check_response(result_for(Decision(Code.VALID, RECORD, POLICY), HEADERS, NOW))
    assert allowed.status.code == 0 and allowed.HasField("ok_response")
    assert {h.header.key: h.header.value for h in allowed.ok_response.headers} == {
        KEY_ID_HEADER: RECORD.key_id, OWNER_ID_HEADER: "acme"}
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in allowed.ok_response.headers)
    assert list(allowed.ok_response.headers_to_remove) == list(HEADERS)
    assert dict(allowed.dynamic_metadata) == {"key_id": RECORD.key_id, "owner_id": "acme", "policy_id": "partners"}

    denied = check_response(MISSING_CREDENTIALS)
    assert denied.status.code == 16 and denied.denied_response.status.code == 401
    assert json.loads(denied.denied_response.body)["error"] == "missing_credentials"
    assert not denied.HasField("dynamic_metadata")


# Every refusal, as each listener answers it: (HTTP status, gRPC status name).
_REFUSED = {
    Code.MALFORMED: (401, "UNAUTHENTICATED"), Code.NOT_FOUND: (401, "UNAUTHENTICATED"),
    Code.DISABLED: (401, "UNAUTHENTICATED"), Code.EXPIRED: (401, "UNAUTHENTICATED"),
    Code.REVOKED: (401, "UNAUTHENTICATED"), Code.INSUFFICIENT_SCOPE: (403, "PERMISSION_DENIED"),
    Code.IP_NOT_ALLOWED: (403, "PERMISSION_DENIED"), Code.RATE_LIMITED: (429, "RESOURCE_EXHAUSTED"),
    Code.QUOTA_EXHAUSTED: (429, "RESOURCE_EXHAUSTED"), Code.UNAVAILABLE: (503, "UNAVAILABLE"),
}


@pytest.mark.parametrize("code", [c for c in Code if c is not Code.VALID])
def test_every_refusal_has_one_status_on_every_listener(code: Code) -> None:
    from keysvc.api.grpc.status import status_of_decision

    http, rpc = _REFUSED[code]
    result = result_for(Decision(code), (), 0.0)
    assert result.status == http  # forward-auth
    assert check_response(result).status.code == getattr(grpc.StatusCode, rpc).value[0]  # ext_authz
    assert status_of_decision(code) is getattr(grpc.StatusCode, rpc)  # admin auth
