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
is a JSON 404.

Every answer is keysvc's own small JSON, including for requests aiohttp's
parser refuses (its own answer, and its log line, quote the offending
header, key included): a credential header it cannot read is 401
`malformed`, a header over 8190 bytes or more than 128 headers is 431
`header_too_large`, anything else unreadable is 400 `bad_request`. Those are
logged as one line naming the status and the parser's error class, never
the input.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping
from typing import cast

import grpc
import structlog
from aiohttp import http_exceptions, web, web_protocol, web_server
from multidict import CIMultiDict

from keysvc.api.authz import ERROR_HEADER, Authorizer, AuthzResult, denial, result_for
from keysvc.api.grpc.status import status_for
from keysvc.core.model import Code, Decision
from keysvc.core.routes import PATH_PREFIX_PROXIES, PROXY_TARGET_HEADERS

__all__ = ["ForwardAuth", "HttpListener", "make_app"]

_NO_TARGET = denial("missing_original_uri", "the proxy did not send the request's target", 400)
_TWO_TARGETS = denial("invalid_request", "the request's target or method was sent more than once", 400)
_SERVER = ("server", "keysvc")  # instead of aiohttp's name and version, which some proxies pass on
_log = structlog.get_logger("keysvc.http")
# The header line aiohttp quotes in a parse error's message: only its name is read.
_QUOTED_HEADER = re.compile(r"b['\"]([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):")
_TOO_LARGE = denial("header_too_large", "a request header, or all of them together, is too large", 431)
_BAD_REQUEST = denial("bad_request", "the request could not be read", 400)
_NOT_FOUND = denial("not_found", "keysvc serves /authz and /healthz only", 404)
_INTERNAL = denial("internal", "internal error", 500)
_ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"  # Envoy's ext_authz HTTP: drop these upstream
_UNREADABLE_KEY = result_for(Decision(Code.MALFORMED), (), 0.0)  # the 401 of a malformed key


def _unreadable(exc: BaseException | None, status: int, key_headers: tuple[str, ...]) -> AuthzResult:
    """The answer for a request aiohttp could not parse (or, at 500, could not handle)."""
    if status >= 500:
        return _INTERNAL
    if isinstance(exc, http_exceptions.LineTooLong) or (
        isinstance(exc, http_exceptions.BadHttpMessage) and "too many headers" in exc.message.lower()
    ):
        return _TOO_LARGE
    if isinstance(exc, http_exceptions.HttpProcessingError):
        quoted = _QUOTED_HEADER.search(exc.message)
        if quoted is not None and quoted.group(1).lower() in key_headers:
            return _UNREADABLE_KEY
    return _BAD_REQUEST


def _target_under(raw_path: str, prefix: str) -> str:
    """The target after `prefix` in a raw (still encoded) request path, "" when there is none.

    "/authz/orders/7?x=1" gives "/orders/7?x=1"; "/authz", "/authz?x=1" and
    "/authz%2Forders" give "" (the prefix must end in a literal "/").
    """
    if not raw_path.startswith(prefix + "/"):
        return ""
    return raw_path[len(prefix):]


def _response(result: AuthzResult) -> web.Response:
    if result.allowed:
        return web.Response(status=200, headers=dict((_SERVER, *result.upstream_headers)))
    headers = dict((_SERVER, *result.response_headers))
    headers[ERROR_HEADER] = result.error
    return web.Response(status=result.status, headers=headers, body=result.body.encode())


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses with keysvc's JSON."""

    key_headers: tuple[str, ...] = ()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer and log a request that failed before (or outside) a handler, echoing nothing."""
        result = _unreadable(exc, status, self.key_headers)
        if status >= 500:  # an unknown error: its trace is logged (and redacted)
            _log.error("http request failed", status=result.status, exc_info=exc)
        else:
            _log.info("http request refused", status=result.status, error=result.error,
                      reason=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent")  # as aiohttp: the connection is closed
        response = _response(result)
        response.force_close()
        return response


class _Server(web_server.Server):
    """An aiohttp Server whose connections use `_RequestHandler`."""

    key_headers: tuple[str, ...] = ()

    def __call__(self) -> web_protocol.RequestHandler:
        handler = _RequestHandler(self, loop=self._loop, **self._kwargs)
        handler.key_headers = self.key_headers
        return handler


class _Runner(web.AppRunner):
    """AppRunner serving through `_Server`."""

    def __init__(self, app: web.Application, key_headers: tuple[str, ...], **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self._key_headers = key_headers

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # adds no state: only which handler class connections get
        cast("_Server", server).key_headers = self._key_headers
        return server


class ForwardAuth:
    """The forward-auth handlers.

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
        # Headers whose repeats are joined for the Authorizer, which reads one value per name.
        self._joined = ("x-forwarded-for", *authorizer.key_headers)

    async def authz(self, request: web.Request) -> web.Response:
        """Judge the request the proxy is holding."""
        try:
            raw = request.headers
            target, method = "", request.method
            if self.path_prefix:
                target = _target_under(request.raw_path, self.path_prefix)
                if not target:
                    return _response(_NO_TARGET)
            elif self._target_headers:
                uri_header, method_header = self._target_headers
                targets, methods = raw.getall(uri_header, ()), raw.getall(method_header, ())
                if len(targets) > 1 or len(methods) > 1:
                    return _response(_TWO_TARGETS)
                target = targets[0] if targets else ""
                method = methods[0] if methods else method
            if not target:
                if self._require_target:
                    return _response(_NO_TARGET)
                target = "/"
            headers: Mapping[str, str] = raw
            merged: CIMultiDict[str] | None = None
            for name in self._joined:
                values = raw.getall(name, ())
                if len(values) > 1:  # x-forwarded-for: the nearest proxy's entry is in the last header
                    merged = merged if merged is not None else CIMultiDict(raw)
                    merged[name] = ",".join(values)
            if merged is not None:
                headers = merged
            result = await self._authorizer.check(headers, method, target, request.remote or "")
            response = _response(result)
        except Exception as exc:  # an unknown error is logged by status_for; the proxy fails closed
            code, _ = status_for(exc, "ForwardAuth")
            unavailable = code is grpc.StatusCode.UNAVAILABLE
            return web.json_response(
                {"error": "unavailable" if unavailable else "internal",
                 "message": "authorization is temporarily unavailable" if unavailable else "internal error"},
                status=503 if unavailable else 500, headers=dict((_SERVER,)),
            )
        if self.path_prefix and result.allowed and result.remove_headers:
            response.headers[_ENVOY_REMOVE] = ",".join(result.remove_headers)
        return response

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path: a JSON 404."""
        return _response(_NOT_FOUND)

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the store answers, 503 otherwise."""
        if self._serving():
            return web.json_response({"status": "SERVING"}, headers=dict((_SERVER,)))
        return web.json_response({"status": "NOT_SERVING"}, status=503, headers=dict((_SERVER,)))

    async def livez(self, request: web.Request) -> web.Response:
        """200 whenever the loop answers: a stuck loop answers nothing, a store outage is not fatal."""
        return web.json_response({"status": "SERVING"})


def make_app(handlers: ForwardAuth) -> web.Application:
    """The aiohttp application: `/authz` (any method), `GET /healthz` and `/livez`, a JSON 404 else.

    In Envoy mode (`ForwardAuth.path_prefix` set) `/authz/<target>` is judged too.
    """
    app = web.Application()
    app.router.add_route("*", "/authz", handlers.authz)
    if handlers.path_prefix:
        app.router.add_route("*", handlers.path_prefix + "/{target:.*}", handlers.authz)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/livez", handlers.livez)
    app.router.add_route("*", "/{any:.*}", handlers.not_found)
    return app


class HttpListener:
    """Runs an aiohttp application on one address until stopped.

    Args:
        app: the application.
        address: (host, port), or a unix socket path (as `keysvc.app.settings.split_listen` parses).
        shutdown_grace_s: how long `stop` waits for in-flight requests.
        key_headers: the credential headers (an unreadable one is answered 401).
        reuse_port: share the port by SO_REUSEPORT (only the workers of one `--workers` set do).
        ssl_context: serve HTTPS on a TCP address with it (keysvc.app.tls reloads its certificate).
    """

    def __init__(
        self, app: web.Application, address: tuple[str, int] | str, *, shutdown_grace_s: float,
        key_headers: tuple[str, ...] = ("x-api-key", "authorization"), reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._address = address
        self.ssl_context = ssl_context if not isinstance(self._address, str) else None
        self._reuse_port = reuse_port
        # No access log: one line per proxied request would dwarf the work itself.
        self._runner = _Runner(app, key_headers, access_log=None, shutdown_timeout=shutdown_grace_s)

    async def start(self) -> int:
        """Bind and serve; return the TCP port (0 for a unix socket).

        Raises:
            OSError: the address cannot be bound.
        """
        await self._runner.setup()
        if isinstance(self._address, str):
            await web.UnixSite(self._runner, self._address).start()
            return 0
        host, port = self._address
        tcp = web.TCPSite(self._runner, host or None, port, reuse_port=self._reuse_port,
                          ssl_context=self.ssl_context)
        await tcp.start()
        return tcp.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        await self._runner.cleanup()
