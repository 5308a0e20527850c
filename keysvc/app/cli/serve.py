"""`keysvc serve`, `keysvc health` and `keysvc bootstrap`: the commands that run or reach a store."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from keysvc.app.cli.client import connect, print_json

__all__ = ["add_settings_flags", "cmd_bootstrap", "cmd_health", "cmd_serve"]


def _settings_from(args: argparse.Namespace) -> Any:
    from keysvc.app import settings

    names = {f.name for f in dataclasses.fields(settings.Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return settings.load(overrides=overrides)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field (flags win over KEYSVC_* variables)."""
    from keysvc.app import settings

    for f in dataclasses.fields(settings.Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['doc']} [{settings.env_name(f.name)}, default {f.default!r}]"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def cmd_serve(args: argparse.Namespace) -> int:
    """`keysvc serve`: run the server until SIGTERM or SIGINT."""
    import os

    from keysvc.app import server, telemetry
    from keysvc.client._channel import grpc_traces_calls
    from keysvc.core.errors import ConfigError

    if grpc_traces_calls(os.environ.get("GRPC_TRACE", ""), os.environ.get("GRPC_VERBOSITY", "")):
        # The C core would print every admin call's metadata (its key) where no redaction reaches.
        raise ConfigError("GRPC_TRACE: gRPC's tracers print each call's metadata, admin keys among it, "
                          "outside keysvc's logging; unset GRPC_TRACE, or set GRPC_VERBOSITY=NONE, to serve")
    settings = _settings_from(args)
    telemetry.configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from keysvc.app import workers

        return workers.run(settings)
    telemetry.configure_tracing()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(server.serve(settings, reuse_port=args.in_worker_set))
    finally:
        telemetry.shutdown_tracing()  # flush spans still in the batch processor
    return 0


def _probe_target(listen: str) -> str:
    """The address to probe a server listening on `listen` at (a wildcard host means loopback)."""
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, not a bind
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"


def cmd_health(args: argparse.Namespace) -> int:
    """`keysvc health`: exit 0 when the server on `listen` answers SERVING (readiness, or liveness)."""
    from keysvc.app.health import LIVENESS, READINESS
    from keysvc.client import ClientError

    settings = _settings_from(args)
    service = LIVENESS if args.live else READINESS
    args.addr = _probe_target(settings.listen)
    with connect(args, admin=False) as client:
        try:
            status = client.health(service, timeout=args.timeout)
        except ClientError as exc:
            print(f"keysvc: {service}: {exc.code.name}", file=sys.stderr)
            return 1
    print(f"{service}: {status}")
    return 0 if status == "SERVING" else 1


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """`keysvc bootstrap`: make the first admin key, straight in the store."""
    from keysvc.app import server, telemetry
    from keysvc.service.admin import AdminService

    settings = _settings_from(args)
    telemetry.configure_logging(settings.log_format, "warning")
    telemetry.configure_tracing()

    async def run() -> tuple[Any, str]:
        store = server.make_store(settings)
        try:
            admin = AdminService(store, auditor=telemetry.AUDITOR, default_prefix=settings.key_prefix)
            return await admin.bootstrap(force=args.force)
        finally:
            await store.close()

    try:
        view, secret = asyncio.run(run())
    finally:
        telemetry.shutdown_tracing()
    if args.json:
        print_json({"key_id": view.record.key_id, "secret": secret})
    else:
        print(f"admin key {view.record.key_id} created. Its secret is shown once; keep it safe:\n")
        print(f"  export KEYSVC_ADMIN_KEY={secret}\n")
    return 0
