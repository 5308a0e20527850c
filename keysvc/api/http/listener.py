"""The forward-auth HTTP listener: granian's embedded server on keysvc's own event loop.

granian (a Rust HTTP server; PyPI `granian`) parses HTTP/1.1 on its own
thread and runs the ASGI application on the loop that runs everything else,
so `/authz` shares the gRPC server's cache, validator and event follower.
It was chosen by measurement over aiohttp (scripts/bench_http_server.py;
the README's "Choosing the HTTP server, by measurement").

- Drain: `stop` closes the listening socket and lets in-flight requests
  finish; those still running after the grace period are cancelled.
- TLS: granian reads the certificate, key and client CA when a server
  starts. `reload` starts a second server accepting from the same listening
  socket, then drains the old one: new connections get the new files,
  client CA included; open ones finish on the old. One socket, not two bound
  with SO_REUSEPORT: closing one of those resets every connection still
  waiting in its accept queue, so a reload under load refused checks.
- `--workers`: every worker binds the shared port with SO_REUSEPORT; a lone
  process binds without it, so a port another process holds is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.server.embed import Server

from keysvc.api.http.forward_auth import ForwardAuth

__all__ = ["HttpListener", "TlsPaths", "max_connections"]

# granian's own lines are its start/stop chatter ("Embedded server is experimental!"); its errors stay.
logging.getLogger("_granian").setLevel(logging.ERROR)
_HEADER_READ_TIMEOUT_MS = 30_000  # a client that never finishes its headers is dropped (slowloris)
_BACKLOG = 1024  # connections the kernel queues before granian accepts them (capped by somaxconn)
_MAX_CONNECTIONS_CAP = 32_768


def max_connections() -> int:
    """Open connections granian serves at once: half the open-file limit, at most 32768.

    granian's default (its backlog, 128, per worker) let 128 silent connections,
    each held for the 30 s header timeout, lock every other client out. The
    other half of the descriptors stays for gRPC, the store and the logs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_CONNECTIONS_CAP
    return max(128, min(_MAX_CONNECTIONS_CAP, soft // 2))


@dataclass(frozen=True, slots=True)
class TlsPaths:
    """The PEM files the HTTPS listener reads each time a server starts."""

    cert: str
    key: str
    client_ca: str | None = None  # mTLS: client certificates must chain to it


class _OnSocket(Server):
    """granian's embedded server accepting from a listening socket it is lent (a duplicate of it)."""

    def __init__(self, listening: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listening = listening

    def _init_shared_socket(self) -> None:
        # granian closes its socket when this server stops: lend it a duplicate, keep ours open.
        self._ssp = None
        # The stub declares no constructor; granian's pickling calls it as (fd, is_uds, backlog).
        lent = os.dup(self._listening.fileno())
        self._shd = SocketHolder(lent, False, _BACKLOG)  # type: ignore[call-arg,assignment]


def _listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on (host, port) (port 0: a free one).

    Raises:
        OSError: the address cannot be bound (held by another process, unless both reuse the port).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a previous run
        if reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((host or "0.0.0.0", port))  # noqa: S104
        listening.listen(_BACKLOG)
        listening.setblocking(False)  # granian's runtime accepts from duplicates of it (one file status)
    except OSError:
        listening.close()
        raise
    return listening


class HttpListener:
    """Serves a ForwardAuth application on one address until stopped.

    Args:
        app: the application.
        address: (host, port), or a unix socket path (as `keysvc.app.settings.split_listen` parses).
        shutdown_grace_s: how long `stop` waits for in-flight requests.
        tls: serve HTTPS on a TCP address with these files (`reload` re-reads them).
        reuse_port: bind a TCP port with SO_REUSEPORT (one of a `--workers` set sharing it).
    """

    def __init__(
        self, app: ForwardAuth, address: tuple[str, int] | str, *, shutdown_grace_s: float,
        tls: TlsPaths | None = None, reuse_port: bool = False,
    ) -> None:
        self._app = app
        self._address = address
        self.tls = tls if not isinstance(address, str) else None
        self._grace_s = shutdown_grace_s
        self._reuse_port = reuse_port
        self._port = 0
        self._listening: socket.socket | None = None  # TCP: the one socket every server accepts from
        self._running: tuple[Server, asyncio.Task[None]] | None = None

    def _server(self) -> Server:
        tls = self.tls
        options: dict[str, Any] = {}
        if isinstance(self._address, str):
            options["uds"] = Path(self._address)
        else:
            options["address"], options["port"] = self._address[0] or "0.0.0.0", self._port  # noqa: S104
        if tls is not None:
            options.update(ssl_cert=Path(tls.cert), ssl_key=Path(tls.key),
                           ssl_protocol_min=SSLProtocols.tls12,
                           ssl_ca=Path(tls.client_ca) if tls.client_ca else None,
                           ssl_client_verify=tls.client_ca is not None)
        options.update(interface=Interfaces.ASGINL, http=HTTPModes.http1, websockets=False, log_enabled=False,
                       backlog=_BACKLOG, backpressure=max_connections(),
                       http1_settings=HTTP1Settings(header_read_timeout=_HEADER_READ_TIMEOUT_MS))
        listening = self._listening
        server = Server(self._app, **options) if listening is None else \
            _OnSocket(listening, self._app, **options)
        server.workers_kill_timeout = self._grace_s  # type: ignore[assignment]  # granian times a join
        return server

    async def _launch(self) -> tuple[Server, asyncio.Task[None]]:
        server = self._server()
        task = asyncio.get_running_loop().create_task(server.serve())
        await asyncio.sleep(0)  # serve() binds and spawns its worker before its first await
        if task.done():
            exc = task.exception()
            raise exc if isinstance(exc, OSError) else OSError(str(exc))
        return server, task

    async def start(self) -> int:
        """Bind and serve; return the TCP port (0 for a unix socket).

        Raises:
            OSError: the address cannot be bound.
        """
        if isinstance(self._address, str):
            with contextlib.suppress(FileNotFoundError):  # the caller checked no live server holds it
                if stat.S_ISSOCK(os.stat(self._address).st_mode):
                    os.unlink(self._address)
        else:
            host, port = self._address
            self._listening = _listen(host, port, reuse_port=self._reuse_port)
            self._port = self._listening.getsockname()[1]
        try:
            self._running = await self._launch()
        except OSError:
            self._close_listening()
            raise
        return self._port

    def _close_listening(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.close()

    async def reload(self) -> None:
        """Serve new connections with the TLS files as they are now; drain the previous server.

        Raises:
            OSError: the new server could not start (the previous one keeps serving).
        """
        previous = self._running
        self._running = await self._launch()
        if previous is not None:
            await self._drain(*previous)

    async def _drain(self, server: Server, task: asyncio.Task[None]) -> None:
        server.stop()  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait_for(asyncio.shield(task), self._grace_s + 1)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:  # noqa: S110  # a worker that died is stopped all the same
            pass

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        running, self._running = self._running, None
        if running is not None:
            await self._drain(*running)
        self._close_listening()
