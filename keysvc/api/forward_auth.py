"""HTTP forward-auth: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`.

`/authz` (any method) judges the request the proxy is holding: its target
and method from the one header pair the configured proxy writes
(`KEYSVC_AUTHZ_PROXY`: nginx `X-Original-URI` / `X-Original-Method`, Traefik
and Caddy `X-Forwarded-Uri` / `X-Forwarded-Method`; each proxy passes a
client's copy of the other pair through, so the other is never read), the
key from the credential headers. A target header sent twice is refused (400).
200 carries `x-keysvc-key-id` / `x-keysvc-owner-id` for the proxy to copy
upstream; a denial is 400/401/403/429/503 with the headers and JSON body of
`keysvc.api._authz`, plus `x-keysvc-error` (nginx drops the
body of an auth subrequest, so its config reads the code from there).
`/healthz` is 200 while the store answers, else 503.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
from aiohttp import web
from multidict import CIMultiDict

from keysvc.api._authz import ERROR_HEADER, Authorizer, AuthzResult, denial
from keysvc.api._status import status_for
from keysvc.settings import PROXY_TARGET_HEADERS, split_listen

__all__ = ["ForwardAuth", "HttpListener", "make_app"]

_NO_TARGET = denial("missing_original_uri", "the proxy did not send the request's target", 400)
_TWO_TARGETS = denial("invalid_request", "the request's target or method was sent more than once", 400)
_SERVER = ("server", "keysvc")  # instead of aiohttp's name and version, which some proxies pass on


def _response(result: AuthzResult) -> web.Response:
    if result.allowed:
        return web.Response(status=200, headers=dict((_SERVER, *result.upstream_headers)))
    headers = dict((_SERVER, *result.response_headers))
    headers[ERROR_HEADER] = result.error
    return web.Response(status=result.status, headers=headers, body=result.body.encode())


class ForwardAuth:
    """The forward-auth handlers.

    Args:
        authorizer: the shared proxy authorizer.
        serving: True while the store answers (drives /healthz).
        require_target: refuse requests without an original URI (set when route
            rules exist: judging such a request by the default rule could let
            it through a stricter route).
        proxy: the proxy calling (a key of `PROXY_TARGET_HEADERS`); "" reads no
            target header (allowed only without route rules: every request is
            then judged by the default rule).
    """

    def __init__(
        self, authorizer: Authorizer, serving: Callable[[], bool], *, require_target: bool, proxy: str = ""
    ) -> None:
        self._authorizer = authorizer
        self._serving = serving
        self._require_target = require_target
        self._target_headers = PROXY_TARGET_HEADERS.get(proxy, ())
        # Headers whose repeats are joined for the Authorizer, which reads one value per name.
        self._joined = ("x-forwarded-for", *authorizer.key_headers)

    async def authz(self, request: web.Request) -> web.Response:
        """Judge the request the proxy is holding."""
        try:
            raw = request.headers
            target, method = "", request.method
            if self._target_headers:
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
            return _response(result)
        except Exception as exc:  # an unknown error is logged by status_for; the proxy fails closed
            code, _ = status_for(exc, "ForwardAuth")
            unavailable = code is grpc.StatusCode.UNAVAILABLE
            return web.json_response(
                {"error": "unavailable" if unavailable else "internal",
                 "message": "authorization is temporarily unavailable" if unavailable else "internal error"},
                status=503 if unavailable else 500,
            )

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the store answers, 503 otherwise."""
        if self._serving():
            return web.json_response({"status": "SERVING"})
        return web.json_response({"status": "NOT_SERVING"}, status=503)


def make_app(handlers: ForwardAuth) -> web.Application:
    """The aiohttp application: `/authz` (any method) and `GET /healthz`."""
    app = web.Application()
    app.router.add_route("*", "/authz", handlers.authz)
    app.router.add_get("/healthz", handlers.healthz)
    return app


class HttpListener:
    """Runs an aiohttp application on one address until stopped.

    Args:
        app: the application.
        address: host:port or unix:/path (see `keysvc.settings.split_listen`).
        shutdown_grace_s: how long `stop` waits for in-flight requests.
    """

    def __init__(self, app: web.Application, address: str, *, shutdown_grace_s: float) -> None:
        self._address = split_listen(address)
        # No access log: one line per proxied request would dwarf the work itself.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_grace_s)

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
        # reuse_port: `--workers N` processes share the port, as they share the gRPC one.
        tcp = web.TCPSite(self._runner, host or None, port, reuse_port=True)
        await tcp.start()
        return tcp.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        await self._runner.cleanup()
