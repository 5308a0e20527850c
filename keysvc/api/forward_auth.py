"""HTTP forward-auth: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`.

`/authz` (any method) judges the request the proxy is holding: its target
from `X-Original-URI` (nginx) or `X-Forwarded-Uri` (Traefik, Caddy), its
method from `X-Original-Method` / `X-Forwarded-Method`, the key from the
credential headers. 200 carries `x-keysvc-key-id` / `x-keysvc-owner-id` for
the proxy to copy upstream; a denial is 401/403/429/503 with the headers and
JSON body of `keysvc.api._authz`, plus `x-keysvc-error` (nginx drops the
body of an auth subrequest, so its config reads the code from there).
`/healthz` (readiness) is 200 while the store answers, else 503; `/livez`
(liveness) is 200 whenever the event loop gets to answer it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
from aiohttp import web
from multidict import CIMultiDict

from keysvc.api._authz import ERROR_HEADER, Authorizer, AuthzResult, denial
from keysvc.api._status import status_for
from keysvc.settings import split_listen

__all__ = ["ForwardAuth", "HttpListener", "make_app"]

_NO_TARGET = denial(
    "missing_original_uri", "the proxy must send X-Original-URI or X-Forwarded-Uri", 400
)
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
    """

    def __init__(self, authorizer: Authorizer, serving: Callable[[], bool], *, require_target: bool) -> None:
        self._authorizer = authorizer
        self._serving = serving
        self._require_target = require_target

    async def authz(self, request: web.Request) -> web.Response:
        """Judge the request the proxy is holding."""
        try:
            headers: Mapping[str, str] = request.headers
            target = headers.get("x-original-uri") or headers.get("x-forwarded-uri")
            if not target:
                if self._require_target:
                    return _response(_NO_TARGET)
                target = "/"
            method = headers.get("x-original-method") or headers.get("x-forwarded-method") or request.method
            forwarded = request.headers.getall("x-forwarded-for", ())
            if len(forwarded) > 1:  # the nearest proxy's entry is in the last header
                merged = CIMultiDict(request.headers)
                merged["x-forwarded-for"] = ",".join(forwarded)
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

    async def livez(self, request: web.Request) -> web.Response:
        """200 whenever the loop answers: a stuck loop answers nothing, a store outage is not fatal."""
        return web.json_response({"status": "SERVING"})


def make_app(handlers: ForwardAuth) -> web.Application:
    """The aiohttp application: `/authz` (any method), `GET /healthz` and `GET /livez`."""
    app = web.Application()
    app.router.add_route("*", "/authz", handlers.authz)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/livez", handlers.livez)
    return app


class HttpListener:
    """Runs an aiohttp application on one address until stopped.

    Args:
        app: the application.
        address: host:port or unix:/path (see `keysvc.settings.split_listen`).
        shutdown_grace_s: how long `stop` waits for in-flight requests.
        reuse_port: share the port by SO_REUSEPORT (only the workers of one `--workers` set do).
    """

    def __init__(
        self, app: web.Application, address: str, *, shutdown_grace_s: float, reuse_port: bool = False
    ) -> None:
        self._address = split_listen(address)
        self._reuse_port = reuse_port
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
        tcp = web.TCPSite(self._runner, host or None, port, reuse_port=self._reuse_port)
        await tcp.start()
        return tcp.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        await self._runner.cleanup()
