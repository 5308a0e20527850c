"""HTTP forward-auth: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`.

`/authz` (any method) judges the request the proxy is holding: its target
and method from the one header pair the configured proxy writes
(`KEYSVC_AUTHZ_PROXY`: nginx `X-Original-URI` / `X-Original-Method`, Traefik
and Caddy `X-Forwarded-Uri` / `X-Forwarded-Method`; each proxy passes a
client's copy of the other pair through, so the other is never read), the
key from the credential headers. With `KEYSVC_AUTHZ_PROXY=envoy` (Envoy's
ext_authz `http_service`, Istio's `envoyExtAuthzHttp`) the request is
`/authz/<target>` with the held request's own method, and no target header
is read; an allowed answer also names the credential headers in
`x-envoy-auth-headers-to-remove`, so Envoy drops them before the app.
A target header sent twice is refused (400).
200 carries `x-keysvc-key-id` / `x-keysvc-owner-id` for the proxy to copy
upstream; a denial is 400/401/403/429/503 with the headers and JSON body of
`keysvc.api.authz`, plus `x-keysvc-error` (nginx drops the
body of an auth subrequest, so its config reads the code from there).
`/healthz` (readiness) is 200 while the store answers, else 503; `/livez`
(liveness) is 200 whenever the event loop gets to answer it; any other path
is a JSON 404. Paths are matched as sent (still percent-encoded).

`ForwardAuth` is an ASGI application served by granian (`listener.py`).
A header line, or the request target, over 8190 bytes is answered 431
`header_too_large` here, as one line logged naming the status and never
the input. What granian's parser refuses itself (a control character in a
header or the path, more than 100 headers, not HTTP at all) it answers
with an empty 400 or 431 and `connection: close`, and logs nothing: no
answer or line ever quotes the request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import grpc
import structlog

from keysvc.api.authz import ERROR_HEADER, Authorizer, AuthzResult, denial
from keysvc.api.grpc.status import status_for
from keysvc.core.routes import PATH_PREFIX_PROXIES, PROXY_TARGET_HEADERS

__all__ = ["MAX_LINE_BYTES", "ForwardAuth"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_LINE_BYTES = 8190  # a header line or request target longer than this is 431 (as aiohttp, nginx)
_NO_TARGET = denial("missing_original_uri", "the proxy did not send the request's target", 400)
_TWO_TARGETS = denial("invalid_request", "the request's target or method was sent more than once", 400)
_SERVER = (b"server", b"keysvc")  # instead of granian's name, which some proxies pass on
_log = structlog.get_logger("keysvc.http")
_TOO_LARGE = denial("header_too_large", "a request header, or all of them together, is too large", 431)
_NOT_FOUND = denial("not_found", "keysvc serves /authz and /healthz only", 404)
_ENVOY_REMOVE = b"x-envoy-auth-headers-to-remove"  # Envoy's ext_authz HTTP: drop these upstream
_JSON = (b"content-type", b"application/json; charset=utf-8")
_HEALTH_METHODS = ("GET", "HEAD")


def _target_under(raw_path: str, prefix: str) -> str:
    """The target after `prefix` in a raw (still encoded) request path, "" when there is none.

    "/authz/orders/7?x=1" gives "/orders/7?x=1"; "/authz", "/authz?x=1" and
    "/authz%2Forders" give "" (the prefix must end in a literal "/").
    """
    if not raw_path.startswith(prefix + "/"):
        return ""
    return raw_path[len(prefix):]


def _encoded(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI wants them: names ASCII, values UTF-8 (as aiohttp sent them)."""
    return [(name.encode("latin-1"), value.encode()) for name, value in pairs]


def _answer(result: AuthzResult) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of an AuthzResult."""
    if result.allowed:
        return 200, [_SERVER, *_encoded(result.upstream_headers)], b""
    headers = [_SERVER, *_encoded(result.response_headers), (ERROR_HEADER.encode(), result.error.encode())]
    return result.status, headers, result.body.encode()


# Answers that depend on nothing in the request: built once (never mutated: only granian reads them).
_NO_TARGET_ANSWER, _TWO_TARGETS_ANSWER = _answer(_NO_TARGET), _answer(_TWO_TARGETS)
_TOO_LARGE_ANSWER, _NOT_FOUND_ANSWER = _answer(_TOO_LARGE), _answer(_NOT_FOUND)


def _json(status: int, document: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [_SERVER, _JSON], json.dumps(document, separators=(",", ":")).encode()


async def _send(send: Send, answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ForwardAuth:
    """The forward-auth ASGI application: `/authz`, `/authz/<target>` (Envoy mode), `/healthz`, `/livez`.

    Args:
        authorizer: the shared proxy authorizer.
        serving: True while the store answers (drives /healthz).
        require_target: refuse requests without an original URI (set when route
            rules exist: judging such a request by the default rule could let
            it through a stricter route).
        proxy: the proxy calling (a key of `PROXY_TARGET_HEADERS` or of
            `PATH_PREFIX_PROXIES`); "" reads no target header (allowed only
            without route rules: every request is then judged by the default rule).
    """

    def __init__(
        self, authorizer: Authorizer, serving: Callable[[], bool], *, require_target: bool, proxy: str = ""
    ) -> None:
        self._authorizer = authorizer
        self._serving = serving
        self._require_target = require_target
        self._target_headers = PROXY_TARGET_HEADERS.get(proxy, ())
        self.path_prefix = PATH_PREFIX_PROXIES.get(proxy, "")  # "/authz": the target is the path after it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (granian serves HTTP only: no lifespan, no websockets)."""
        await _send(send, await self._answer(scope))

    async def _answer(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raw_path: bytes = scope["raw_path"]
        query: bytes = scope["query_string"]
        if len(raw_path) + len(query) > MAX_LINE_BYTES or any(
            len(name) + len(value) + 2 > MAX_LINE_BYTES for name, value in scope["headers"]
        ):
            _log.info("http request refused", status=431, error=_TOO_LARGE.error, reason="LineTooLong")
            return _TOO_LARGE_ANSWER
        path = raw_path.decode("latin-1")
        method: str = scope["method"]
        if path == "/authz" or (self.path_prefix and path.startswith(self.path_prefix + "/")):
            target = path + ("?" + query.decode("latin-1") if query else "")
            return await self._authz(scope, method, target)
        if path == "/healthz" and method in _HEALTH_METHODS:
            if self._serving():
                return _json(200, {"status": "SERVING"})
            return _json(503, {"status": "NOT_SERVING"})
        if path == "/livez" and method in _HEALTH_METHODS:
            # 200 whenever the loop answers: a stuck loop answers nothing, a store outage is not fatal.
            return _json(200, {"status": "SERVING"})
        return _NOT_FOUND_ANSWER

    async def _authz(
        self, scope: Scope, method: str, raw_target: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Judge the request the proxy is holding."""
        try:
            # By lower-case name (ASGI's), repeats joined by "," as the Authorizer reads them:
            # x-forwarded-for's nearest proxy entry stays last.
            headers: dict[str, str] = {}
            repeated: set[str] = set()
            for raw_name, raw_value in scope["headers"]:
                name = raw_name.decode("latin-1")
                value = raw_value.decode("utf-8", "surrogateescape")
                if name in headers:
                    repeated.add(name)
                    headers[name] = headers[name] + "," + value
                else:
                    headers[name] = value
            target = ""
            if self.path_prefix:
                target = _target_under(raw_target, self.path_prefix)
                if not target:
                    return _NO_TARGET_ANSWER
            elif self._target_headers:
                uri_header, method_header = self._target_headers
                if uri_header in repeated or method_header in repeated:
                    return _TWO_TARGETS_ANSWER
                target = headers.get(uri_header, "")
                method = headers.get(method_header, method)
            if not target:
                if self._require_target:
                    return _NO_TARGET_ANSWER
                target = "/"
            client = scope.get("client")
            result = await self._authorizer.check(headers, method, target, client[0] if client else "")
        except Exception as exc:  # an unknown error is logged by status_for; the proxy fails closed
            code, _ = status_for(exc, "ForwardAuth")
            if code is grpc.StatusCode.UNAVAILABLE:
                return _json(503, {"error": "unavailable",
                                   "message": "authorization is temporarily unavailable"})
            return _json(500, {"error": "internal", "message": "internal error"})
        status, response_headers, body = _answer(result)
        if self.path_prefix and result.allowed and result.remove_headers:
            response_headers.append((_ENVOY_REMOVE, ",".join(result.remove_headers).encode()))
        return status, response_headers, body
