"""Proxy authorization shared by Envoy ext_authz and HTTP forward-auth. Transport-free.

In: a request's headers (lower-case names), method, target and source
address. Out: an `AuthzResult` with the HTTP status, the headers to add to or
remove from the upstream request, and, for a denial, the response headers and
a small JSON body. Both transports (`extauthz.py`, `forward_auth.py`) only
translate it; every decision is made here and in the Validator.

Status mapping: a target `keysvc.core.routes.path_problem` refuses is 400; more
than one credential in a request (two key headers, or one header holding
several comma-joined values, as proxies merge repeated headers) is 401
`invalid_request`, since the app behind might read a different one than
keysvc judged; a missing, malformed, unknown, revoked, expired or disabled
key is 401; a missing scope or a refused client address is 403; a rate limit
or an exhausted quota is 429; UNAVAILABLE (the store cannot answer for an
uncached key) is 503. Bodies and headers never hold the key, the Validator's
own messages, or anything about the store.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from keysvc.core.model import Code, Decision
from keysvc.core.routes import Routes, path_problem
from keysvc.service.validator import ValidationRequest, Validator

__all__ = [
    "AMBIGUOUS_CREDENTIALS",
    "ERROR_HEADER",
    "KEY_ID_HEADER",
    "MISSING_CREDENTIALS",
    "OWNER_ID_HEADER",
    "Authorizer",
    "AuthzConfig",
    "AuthzRequest",
    "AuthzResult",
    "client_ip",
    "denial",
    "find_credential",
    "refusal_status",
    "result_for",
]

KEY_ID_HEADER = "x-keysvc-key-id"
OWNER_ID_HEADER = "x-keysvc-owner-id"
ERROR_HEADER = "x-keysvc-error"  # the error code on forward-auth denials, for proxies that drop bodies
_Headers = tuple[tuple[str, str], ...]

# The HTTP status of each refusal: the one Decision-code table (gRPC statuses follow
# from it, `keysvc.api.grpc.status.status_of_decision`).
_STATUS = {
    Code.MALFORMED: 401, Code.NOT_FOUND: 401, Code.REVOKED: 401, Code.EXPIRED: 401, Code.DISABLED: 401,
    Code.INSUFFICIENT_SCOPE: 403, Code.IP_NOT_ALLOWED: 403,
    Code.RATE_LIMITED: 429, Code.QUOTA_EXHAUSTED: 429,
    Code.UNAVAILABLE: 503,
}
# Written for the caller; deliberately not the Validator's messages (which may grow detail).
_MESSAGES = {
    Code.MALFORMED: "the API key is malformed",
    Code.NOT_FOUND: "the API key is not known",
    Code.REVOKED: "the API key has been revoked",
    Code.EXPIRED: "the API key has expired",
    Code.DISABLED: "the API key is disabled",
    Code.INSUFFICIENT_SCOPE: "the API key lacks a scope this route requires",
    Code.IP_NOT_ALLOWED: "the API key may not be used from this address",
    Code.RATE_LIMITED: "rate limit exceeded",
    Code.QUOTA_EXHAUSTED: "quota exhausted",
    Code.UNAVAILABLE: "authorization is temporarily unavailable",
}
_CHALLENGE = 'Bearer realm="keysvc"'
_CHALLENGE_INVALID = 'Bearer realm="keysvc", error="invalid_token"'
_JSON = ("content-type", "application/json")


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """How proxied requests are read.

    Args:
        routes: route rules giving each request's required scopes.
        key_headers: lower-case header names tried in order; `authorization`
            is read as `Bearer <key>`, any other header as the bare key.
        trusted_proxy_depth: 0 takes the client address from the connection;
            N > 0 takes the N-th address from the right of `x-forwarded-for`,
            the one the outermost of N trusted proxies saw.
    """

    routes: Routes = field(default_factory=Routes)
    key_headers: tuple[str, ...] = ("x-api-key", "authorization")
    trusted_proxy_depth: int = 0


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """A proxied request read into a validation.

    `refusal` is the answer when the request cannot be judged at all (a bad
    target, several credentials); else `validation` is None when no key was sent.
    """

    validation: ValidationRequest | None
    refusal: AuthzResult | None = None


@dataclass(frozen=True, slots=True)
class AuthzResult:
    """The answer for the proxy.

    Attributes:
        status: 200 to let the request through, else the HTTP status to answer.
        error: "" when allowed, else the lower-case code (e.g. "revoked").
        message: a short text for the caller ("" when allowed).
        upstream_headers: headers to set (overwrite) on the upstream request.
        remove_headers: headers to strip from the upstream request.
        response_headers: headers of the denial response.
        body: the denial's JSON body.
        key_id, owner_id, policy_id: the key's identity when known (for logs).
    """

    status: int
    error: str = ""
    message: str = ""
    upstream_headers: _Headers = ()
    remove_headers: tuple[str, ...] = ()
    response_headers: _Headers = ()
    body: str = ""
    key_id: str = ""
    owner_id: str = ""
    policy_id: str = ""

    @property
    def allowed(self) -> bool:
        """True when the request may go on to the upstream."""
        return self.status == 200


def find_credential(headers: Mapping[str, str], key_headers: Sequence[str]) -> tuple[str, str] | None:
    """Return (header name, key) of the one key the request holds, ("", "") for none, None for several.

    Every header in `key_headers` is read, and each value is split at commas
    (repeated headers arrive joined by ","; a key never holds one). The same
    key sent twice is one key; two different ones are ambiguous: None.
    `authorization` counts only with the Bearer scheme (any case); another
    scheme alone is ignored, but beside other values it is ambiguous too.
    Empty values are skipped.
    """
    found_name, found = "", ""
    for name in key_headers:
        value = headers.get(name)
        if not value:
            continue
        parts = value.split(",") if "," in value else (value,)
        for part in parts:
            key = part.strip()
            if key and name == "authorization":
                scheme, _, key = key.partition(" ")
                if scheme.lower() != "bearer":
                    if len(parts) > 1:
                        return None
                    continue
                key = key.strip()
            if not key:
                continue
            if found and key != found:
                return None
            found_name, found = found_name or name, key
    return found_name, found


def client_ip(headers: Mapping[str, str], source_address: str, trusted_proxy_depth: int) -> str:
    """Return the client address to check against a policy's CIDRs.

    With a depth of 0 it is the connection's source address. With N > 0 it is
    the N-th entry from the right of `x-forwarded-for`; when there are fewer
    entries the header was not written by the trusted proxies, and "" is
    returned (a policy with CIDRs then refuses: fail closed).
    """
    if trusted_proxy_depth <= 0:
        return source_address
    hops = headers.get("x-forwarded-for", "").split(",")
    if len(hops) < trusted_proxy_depth:
        return ""
    return _bare_address(hops[-trusted_proxy_depth].strip())


def _bare_address(hop: str) -> str:
    """Drop a port or brackets some proxies add: `[::1]:80` -> `::1`, `1.2.3.4:5` -> `1.2.3.4`."""
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop


def refusal_status(code: Code) -> int:
    """The HTTP status that answers a refused decision (503 for any code not listed)."""
    return _STATUS.get(code, 503)


def denial(error: str, message: str, status: int, headers: _Headers = ()) -> AuthzResult:
    """A denial with a JSON body `{"error": error, "message": message}`."""
    body = json.dumps({"error": error, "message": message}, separators=(",", ":"))
    return AuthzResult(status, error, message, response_headers=(_JSON, *headers), body=body)


def _fixed_denial(code: Code) -> AuthzResult:
    extra = (("www-authenticate", _CHALLENGE_INVALID),) if _STATUS[code] == 401 else ()
    return denial(code.name.lower(), _MESSAGES[code], _STATUS[code], extra)


MISSING_CREDENTIALS = denial(
    "missing_credentials", "an API key is required", 401, (("www-authenticate", _CHALLENGE),)
)
AMBIGUOUS_CREDENTIALS = denial(
    "invalid_request", "send exactly one API key, in one header", 401,
    (("www-authenticate", 'Bearer realm="keysvc", error="invalid_request"'),),
)
# Denials whose headers do not depend on the key: built once.
_FIXED = {code: _fixed_denial(code) for code in _STATUS if _STATUS[code] != 429}


def _limit_headers(decision: Decision, now: float) -> _Headers:
    """`retry-after` and `ratelimit-*` for a 429."""
    headers: list[tuple[str, str]] = []
    retry_after: int | None = None
    state = decision.rate_limit
    if state is not None:
        reset = max(0, math.ceil(state.reset_at - now))
        headers += [("ratelimit-limit", str(state.limit)),
                    ("ratelimit-remaining", str(max(state.remaining, 0))),
                    ("ratelimit-reset", str(reset))]
        if decision.code is Code.RATE_LIMITED:
            retry_after = max(1, reset)
    if decision.code is Code.QUOTA_EXHAUSTED:
        refill = decision.policy.quota_refill if decision.policy is not None else None
        # The store does not say when the next refill is due; one interval is the
        # latest it can be. Without a refill, waiting does not help: no retry-after.
        retry_after = refill.interval_s if refill is not None else None
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return tuple(headers)


def result_for(decision: Decision, key_headers: tuple[str, ...], now: float) -> AuthzResult:
    """Turn a Validator decision into the proxy's answer.

    Args:
        decision: the Validator's answer.
        key_headers: every configured credential header (all removed upstream,
            not only the one the key came in: the app must see no key at all).
        now: wall clock, for `retry-after` and `ratelimit-reset`.
    """
    record = decision.record
    if decision.code is Code.VALID:
        if record is None:  # fail-open: no identity to vouch for, so none may pass through
            return AuthzResult(200, remove_headers=(*key_headers, KEY_ID_HEADER, OWNER_ID_HEADER))
        return AuthzResult(
            200,
            upstream_headers=((KEY_ID_HEADER, record.key_id), (OWNER_ID_HEADER, record.owner_id)),
            remove_headers=key_headers,
            key_id=record.key_id, owner_id=record.owner_id, policy_id=record.policy_id,
        )
    status = refusal_status(decision.code)
    if status == 429:
        base = denial(decision.code.name.lower(), _MESSAGES[decision.code], 429,
                      _limit_headers(decision, now))
    else:
        base = _FIXED.get(decision.code) or _FIXED[Code.UNAVAILABLE]
    if record is None:
        return base
    return AuthzResult(
        base.status, base.error, base.message, response_headers=base.response_headers, body=base.body,
        key_id=record.key_id, owner_id=record.owner_id, policy_id=record.policy_id,
    )


class Authorizer:
    """Decides proxied requests with the process's Validator.

    Args:
        validator: answers from the cache, then the store.
        config: routes, credential headers and proxy depth.
        clock: wall clock for the rate-limit headers.
    """

    def __init__(
        self, validator: Validator, config: AuthzConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._validator = validator
        self._routes = config.routes
        self._key_headers = config.key_headers
        self._depth = config.trusted_proxy_depth
        self._clock = clock

    @property
    def routes(self) -> Routes:
        """The route rules requests are judged by."""
        return self._routes

    @property
    def key_headers(self) -> tuple[str, ...]:
        """The lower-case names of the credential headers."""
        return self._key_headers

    def read(
        self, headers: Mapping[str, str], method: str, target: str, source_address: str
    ) -> AuthzRequest:
        """Read a proxied request: its key, the scopes its route needs, its client address.

        Args:
            headers: request headers by lower-case name (repeated ones joined by ",").
            method: HTTP method.
            target: path as sent, query string included.
            source_address: IP address of the connection's peer ("" if none).
        """
        problem = path_problem(target)
        if problem:
            return AuthzRequest(None, denial("invalid_path", problem, 400))
        credential = find_credential(headers, self._key_headers)
        if credential is None:
            return AuthzRequest(None, AMBIGUOUS_CREDENTIALS)
        if not credential[1]:
            return AuthzRequest(None, MISSING_CREDENTIALS)
        return AuthzRequest(ValidationRequest(
            credential[1], self._routes.required_scopes(target, method),
            client_ip(headers, source_address, self._depth),
        ))

    def check_cached(self, request: AuthzRequest) -> AuthzResult | None:
        """Answer without I/O, or None when the store must be asked."""
        if request.validation is None:
            return request.refusal or MISSING_CREDENTIALS
        decision = self._validator.check_cached(request.validation)
        if decision is None:
            return None
        return result_for(decision, self._key_headers, self._clock())

    async def check_from_store(self, request: AuthzRequest) -> AuthzResult:
        """Answer a request `check_cached` could not."""
        assert request.validation is not None  # check_cached answered the keyless ones
        decision = await self._validator.validate_from_store(request.validation)
        return result_for(decision, self._key_headers, self._clock())

    async def check(
        self, headers: Mapping[str, str], method: str, target: str, source_address: str
    ) -> AuthzResult:
        """Read and answer one proxied request; a cache hit never suspends."""
        request = self.read(headers, method, target, source_address)
        result = self.check_cached(request)
        if result is None:
            result = await self.check_from_store(request)
        return result
