"""Wires keysvc together: the only module that builds concrete classes (with `dataplane.py`).

Listeners, health, reflection, the supervised background tasks (event
follower, last-used writer, deadline announcer, store probe), and graceful
shutdown (SIGTERM: readiness NOT_SERVING, drain, exit 0).
"""

from __future__ import annotations

import asyncio
import gc
import signal
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from keysvc.api.authz import Authorizer, AuthzConfig
from keysvc.api.envoy.extauthz import AUTHORIZATION_SERVICE, AuthorizationServicer
from keysvc.api.grpc.auth import AdminAuth
from keysvc.api.grpc.bridge import Bridge, threaded_servicer
from keysvc.api.grpc.keyservice import KeyServiceServicer
from keysvc.api.grpc.memo import add_service
from keysvc.app import dataplane, telemetry, tls
from keysvc.app import startup as _startup
from keysvc.app.dataplane import DataPlane, make_store
from keysvc.app.health import HealthState
from keysvc.app.settings import Settings, env_name, header_names, split_listen
from keysvc.app.supervisor import TaskSupervisor, Watchdog, cancel_all
from keysvc.core.cache import KeyCache
from keysvc.core.errors import ConfigError
from keysvc.core.routes import Routes
from keysvc.service.admin import AdminService
from keysvc.service.events import EventFollower, EventLog
from keysvc.service.validator import Validator
from keysvc.store.base import Store
from keysvc.v1 import keysvc_pb2

if TYPE_CHECKING:
    from keysvc.api.http.listener import HttpListener
    from keysvc.app.tls import TlsFiles

__all__ = ["EVENTS_HEALTH", "App", "build", "make_store", "serve"]

log = structlog.get_logger("keysvc.server")

KEYSERVICE = keysvc_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
EVENTS_HEALTH = "keysvc.events"
"""gRPC health name of the event follower: NOT_SERVING while its task is down or it is behind."""


@dataclass
class App:
    """A built, not yet started, keysvc process."""

    settings: Settings
    store: Store
    cache: KeyCache
    validator: Validator
    admin: AdminService
    follower: EventFollower
    health: Any
    authorizer: Authorizer
    stack: str  # the gRPC stack, "sync" or "aio" ("auto" decided)
    supervisor: TaskSupervisor
    status: HealthState  # readiness, liveness and per-component health, published to `health`
    plane: DataPlane  # the same store, cache, validator, follower, supervisor and status, as one
    reuse_port: bool = False  # one of a `--workers` set: share the reserved ports
    servers: list[aio.Server | grpc.Server] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    http: HttpListener | None = None  # forward-auth, when `http_listen` is set
    watchdog: Watchdog | None = None  # liveness on the sync stack (grpc.aio answers health on the loop)
    tls: TlsFiles | None = None  # the TCP listeners' certificate, when `tls_cert` is set

    @property
    def serving(self) -> bool:
        """What readiness says now (the HTTP /healthz reads it)."""
        return self.status.ready


def _authz_config(settings: Settings) -> AuthzConfig:
    """Routes (read once, here) and credential settings for ext_authz and forward-auth."""
    routes = Routes()
    if settings.authz_routes:
        try:
            routes = _startup.load_routes(settings.authz_routes)
        except ConfigError as exc:
            raise ConfigError(f"{env_name('authz_routes')}: {exc}") from None
    return AuthzConfig(routes, header_names(settings.authz_key_headers), settings.authz_trusted_proxy_depth)


def build(settings: Settings, store: Store | None = None, *, reuse_port: bool = False) -> App:
    """Assemble the objects of one process (no network I/O yet; reads the routes file).

    Args:
        settings: the resolved settings.
        store: the store to use (default: the one the settings name).
        reuse_port: this process is one of a `--workers` set sharing reserved ports.

    Raises:
        ConfigError: the routes file is missing or invalid, or a TLS file is.
    """
    certificates = tls.from_settings(settings)
    tls.check_store_files(settings.store)
    # The sync stack's health servicer is thread-safe; set() from the loop is a plain call.
    stack = _startup.grpc_stack(settings.grpc_stack)
    checks = health.HealthServicer() if stack == "sync" else health_aio.HealthServicer()
    plane = dataplane.assemble(settings, store, checks, (KEYSERVICE, AUTHORIZATION_SERVICE))
    admin = AdminService(
        plane.store, auditor=telemetry.AUDITOR, default_prefix=settings.key_prefix,
        on_change=plane.follower.apply_local,
    )
    return App(settings, plane.store, plane.cache, plane.validator, admin, plane.follower, checks,
               Authorizer(plane.validator, _authz_config(settings)), stack, plane.supervisor, plane.status,
               plane, reuse_port=reuse_port, tls=certificates)


def _server(app: App, *, admin_enabled: bool) -> aio.Server | grpc.Server:
    """One gRPC server on the configured stack, serving every service keysvc has."""
    s = app.settings
    # SO_REUSEPORT only within a worker set: a lone process shares its port with nobody.
    options = [("grpc.max_receive_message_length", s.max_request_bytes),
               ("grpc.so_reuseport", int(app.reuse_port))]
    auth = AdminAuth(app.validator, app.admin.authority, telemetry.AUDITOR, admin_enabled=admin_enabled)
    keyservice = auth.protect(
        KeyServiceServicer(app.validator, app.admin, EventLog(app.store))
    )
    authorization = AuthorizationServicer(app.authorizer)
    served_keys: Any = keyservice
    served_authz: Any = authorization
    keys_service = keysvc_pb2.DESCRIPTOR.services_by_name["KeyService"]
    authz_service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    server: aio.Server | grpc.Server
    if app.stack == "sync":
        # No interceptors on either stack: they would run on every Validate.
        server = grpc.server(futures.ThreadPoolExecutor(s.grpc_threads, thread_name_prefix="grpc"),
                             options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        # WatchEvents streams hold a thread each: they may take at most a quarter of the pool;
        # streams and calls waiting on the loop (misses, admin RPCs) together at most three
        # quarters: the last quarter always answers hits.
        bridge = Bridge(asyncio.get_running_loop(), max_streams=max(1, s.grpc_threads // 4),
                        max_held=s.grpc_threads - max(1, s.grpc_threads // 4))
        keyservice.bridge = authorization.bridge = bridge
        served_keys = threaded_servicer(keyservice, keys_service, bridge,
                                        {"Validate": keyservice.validate_blocking})
        served_authz = threaded_servicer(authorization, authz_service, bridge,
                                         {"Check": authorization.check_blocking})
    else:
        server = aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
    # Validate and Check return their answers serialized (kept per decision): no serializer.
    add_service(server, keys_service, served_keys, KeyServiceServicer.RAW_RESPONSES)
    # Public like Validate: only the KeyService admin methods are wrapped by AdminAuth.
    add_service(server, authz_service, served_authz, AuthorizationServicer.RAW_RESPONSES)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    names = (KEYSERVICE, AUTHORIZATION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")
    reflection.enable_server_reflection(names, server)
    # grpcio-reflection ships only v1alpha; v1 is the same messages under a new name (grpcurl asks it first).
    v1 = (reflection_aio if isinstance(server, aio.Server) else reflection).ReflectionServicer(names)
    info = grpc.stream_stream_rpc_method_handler(v1.ServerReflectionInfo,
                                                 reflection_pb2.ServerReflectionRequest.FromString,
                                                 reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(names[-1], {"ServerReflectionInfo": info}),))
    return server


def _bind(app: App, server: aio.Server | grpc.Server, name: str) -> int:
    """Bind the address of setting `name`; a failure is a ConfigError naming it and why."""
    address = getattr(app.settings, name)
    if not app.reuse_port:  # a worker set's parent checked (and holds) its ports
        _startup.check_free(name, address)
    try:
        if app.tls is not None and not address.startswith("unix:"):  # a socket file has permissions instead
            port = server.add_secure_port(address, app.tls.grpc_credentials())
        else:
            port = server.add_insecure_port(address)  # 1 for a unix socket, 0 when it failed (aio)
    except RuntimeError:  # the sync stack's way of saying it failed
        port = 0
    if port == 0:
        raise ConfigError(f"{env_name(name)}: cannot listen on {address}")
    return port


def _store_kind(settings: Settings) -> str:
    return settings.store.split(":", 1)[0]


async def start(app: App) -> None:
    """Bind every listener (each failure a ConfigError naming its setting), then start background work.

    Raises:
        ConfigError: a listen address cannot be bound.
    """
    s = app.settings
    await app.status.start()
    main = _server(app, admin_enabled=not s.admin_listen)
    app.ports.append(_bind(app, main, "listen"))
    app.servers.append(main)
    if s.admin_listen:
        admin = _server(app, admin_enabled=True)
        app.ports.append(_bind(app, admin, "admin_listen"))
        app.servers.append(admin)
    if s.metrics_listen:
        from keysvc.app import metrics

        provider = metrics.serve_prometheus(s.metrics_listen)
        metrics.install(provider, app.validator, app.cache, app.follower)
        metrics.install_tasks(provider, app.supervisor, app.follower)
    http_port = await _start_http(app) if s.http_listen else None
    await dataplane.start_follower(app.plane)
    for server in app.servers:
        started = server.start()
        if started is not None:  # grpc.aio's start is a coroutine; grpc.server's returns None
            await started
    sup = app.supervisor
    app.tasks += dataplane.spawn_tasks(app.plane)
    if app.tls is not None and app.http is not None and app.http.tls is not None:
        files, reload = app.tls, app.http.reload
        app.tasks.append(sup.spawn("tls_reload", lambda: tls.watch(files, reload)))
    if app.stack == "sync":  # grpc.aio answers health on the loop: a stuck loop answers nothing
        app.watchdog = Watchdog(sup, s.liveness_stall_s, app.status.set_live)
        app.watchdog.start()
    log.info("keysvc serving", listen=s.listen, admin_listen=s.admin_listen or s.listen, stack=app.stack,
             ports=app.ports, store=_store_kind(s), http_listen=s.http_listen, http_port=http_port)


async def _start_http(app: App) -> int:
    """Start the forward-auth HTTP listener; return its port (0 on a unix socket)."""
    from keysvc.api.http.forward_auth import ForwardAuth  # granian only when used
    from keysvc.api.http.listener import HttpListener, TlsPaths

    handlers = ForwardAuth(app.authorizer, lambda: app.serving,
                           require_target=bool(app.authorizer.routes.rules), proxy=app.settings.authz_proxy)
    if not app.reuse_port:  # a worker set's parent checked its ports; a lone process checks its own
        _startup.check_free("http_listen", app.settings.http_listen)
    files = TlsPaths(app.tls.cert_path, app.tls.key_path, app.tls.client_ca_path) if app.tls else None
    app.http = HttpListener(handlers, split_listen(app.settings.http_listen),
                            shutdown_grace_s=app.settings.shutdown_grace_s, tls=files,
                            reuse_port=app.reuse_port)
    try:
        return await app.http.start()
    except OSError as exc:
        raise ConfigError(f"{env_name('http_listen')}: cannot listen on {app.settings.http_listen}: "
                          f"{exc.strerror or type(exc).__name__}") from None


async def _stop_server(server: aio.Server | grpc.Server, grace_s: float) -> None:
    """Drain one server within `grace_s`; the loop keeps running meanwhile.

    The sync stack's in-flight calls may be waiting for coroutines on this loop
    (misses, admin RPCs), so its drain is waited for on a thread, never here.
    """
    if isinstance(server, aio.Server):
        await server.stop(grace_s)
    else:
        await asyncio.to_thread(server.stop(grace_s).wait)


async def stop(app: App) -> None:
    """Flip readiness, drain in-flight calls within the grace period, release the store."""
    app.status.stopping = True
    await app.status.publish()
    grace = app.settings.shutdown_grace_s
    await asyncio.gather(*(_stop_server(server, grace) for server in app.servers),
                         *([app.http.stop()] if app.http is not None else []))
    await cancel_all(app.tasks)
    if app.watchdog is not None:
        app.watchdog.stop()
    await dataplane.release(app.plane)
    log.info("keysvc stopped")


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    Raises:
        ConfigError: a listener cannot be bound, or the store can never work.
    """
    app = build(settings, reuse_port=reuse_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await _startup.check_store(app.store, settings)
    except ConfigError:
        await app.store.close()
        raise
    try:
        await start(app)
    except ConfigError:
        await _abandon(app)
        raise
    # Everything made so far (modules, servicers, clients) lives as long as the process:
    # freezing it keeps the collector's full passes from walking it again and again
    # (measured: ~2.5% of a hit's CPU spent in generation-2 passes before, none after).
    gc.collect()
    gc.freeze()
    await stopping.wait()
    log.info("shutting down", grace_s=settings.shutdown_grace_s)
    await stop(app)




async def _abandon(app: App) -> None:
    """Release what a failed start had bound, quietly: the caller reports the one error."""
    for server in app.servers:
        if isinstance(server, aio.Server):
            await server.stop(None)
        else:
            server.stop(None)
    if app.http is not None:
        await app.http.stop()
    await app.store.close()
