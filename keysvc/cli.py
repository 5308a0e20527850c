"""`keysvc`: serve, bootstrap, and an admin client for keys, policies and events.

Human output on a terminal, `--json` for scripts. Admin commands read the
admin key from KEYSVC_ADMIN_KEY (never from a flag, so it stays out of shell
history and process lists) and the address from --addr / KEYSVC_ADDR.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

# gRPC's C core writes its own lines to stderr, outside structlog and its redaction (an
# invalid metadata value, say); keysvc's processes keep them off unless the operator asks.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from keysvc.errors import ConfigError, KeysvcError

__all__ = ["main", "parse_duration"]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Parse `90s`, `5m`, `1h30m`, `30d` or plain seconds into seconds.

    Raises:
        argparse.ArgumentTypeError: not a duration.
    """
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 5m, 1h30m, 30d)")
    return total


# -- serve / bootstrap ---------------------------------------------------------


def _settings_from(args: argparse.Namespace) -> Any:
    from keysvc import settings

    names = {f.name for f in dataclasses.fields(settings.Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return settings.load(overrides=overrides)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from keysvc import settings

    for f in dataclasses.fields(settings.Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['doc']} [{settings.env_name(f.name)}, default {f.default!r}]"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def _cmd_serve(args: argparse.Namespace) -> int:
    from keysvc import server, telemetry

    settings = _settings_from(args)
    telemetry.configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from keysvc import workers

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


def _cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server on the configured `listen` answers SERVING (readiness, or liveness)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from keysvc.health import LIVENESS, READINESS

    settings = _settings_from(args)
    service = LIVENESS if args.live else READINESS
    with _channel(args, _probe_target(settings.listen)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"keysvc: {service}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{service}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from keysvc import server, telemetry
    from keysvc.service.admin import AdminService

    settings = _settings_from(args)
    telemetry.configure_logging(settings.log_format, "warning")
    telemetry.configure_tracing()

    async def run() -> tuple[Any, str]:
        store = server.make_store(settings)
        try:
            return await AdminService(store, default_prefix=settings.key_prefix).bootstrap(
                force=args.force
            )
        finally:
            await store.close()

    try:
        view, secret = asyncio.run(run())
    finally:
        telemetry.shutdown_tracing()
    if args.json:
        _print_json({"key_id": view.record.key_id, "secret": secret})
    else:
        print(f"admin key {view.record.key_id} created. Its secret is shown once; keep it safe:\n")
        print(f"  export KEYSVC_ADMIN_KEY={secret}\n")
    return 0


# -- admin client ----------------------------------------------------------------


def _stub(args: argparse.Namespace) -> tuple[Any, Any]:

    from keysvc.v1 import keysvc_pb2_grpc

    channel = _channel(args, args.addr)
    return keysvc_pb2_grpc.KeyServiceStub(channel), channel  # type: ignore[no-untyped-call]


def _channel(args: argparse.Namespace, target: str) -> Any:
    """A channel to `target`, over TLS when --tls-ca (KEYSVC_TLS_CA) is given."""
    from keysvc.tls import client_channel

    return client_channel(target, ca=args.tls_ca, cert=args.tls_client_cert, key=args.tls_client_key)


def _tls_flags(p: argparse.ArgumentParser) -> None:
    for flag, env, what in (("--tls-ca", "KEYSVC_TLS_CA", "PEM CA of the server's certificate: use TLS"),
                            ("--tls-client-cert", "KEYSVC_TLS_CLIENT_CERT", "PEM client certificate (mTLS)"),
                            ("--tls-client-key", "KEYSVC_TLS_CLIENT_KEY", "PEM key of that certificate")):
        p.add_argument(flag, default=os.environ.get(env, ""), help=f"{what} [{env}]")


def _auth() -> list[tuple[str, str]]:
    key = os.environ.get("KEYSVC_ADMIN_KEY", "")
    if not key:
        raise ConfigError("KEYSVC_ADMIN_KEY is not set: run `keysvc bootstrap` and export the key it prints")
    return [("authorization", f"Bearer {key}")]


_WRITE_ATTEMPTS = 3  # a write with a request_id is retried this often on UNAVAILABLE


def _call(args: argparse.Namespace, method: str, request: Any, *, admin: bool = True) -> Any:
    """Call `method`; a write carries a request_id (fresh unless --request-id names one).

    With it a write that answered UNAVAILABLE (perhaps applied, perhaps not)
    is retried as the same request, so it never acts twice.
    """
    import grpc

    writes = "request_id" in type(request).DESCRIPTOR.fields_by_name
    if writes and not request.request_id:
        import uuid

        request.request_id = getattr(args, "request_id", None) or str(uuid.uuid4())
    stub, channel = _stub(args)
    try:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return getattr(stub, method)(
                    request, metadata=_auth() if admin else None, timeout=args.timeout
                )
            except grpc.RpcError as exc:
                if not writes or attempt == _WRITE_ATTEMPTS or exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
                ):
                    raise
                import time

                time.sleep(0.25 * attempt)  # give the server's store a moment to come back
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        channel.close()


def _to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _show(args: argparse.Namespace, message: Any, human: Callable[[dict[str, Any]], None]) -> None:
    data = _to_dict(message)
    if args.json:
        _print_json(data)
    else:
        human(data)


def _human_key(key: dict[str, Any]) -> None:
    status = key.get("status", "").removeprefix("KEY_STATUS_").lower()
    print(f"{key['key_id']}  {key.get('hint', '')}…  {status}  owner={key.get('owner_id', '')}")
    for field in ("name", "policy_id", "scopes", "metadata", "expires_at", "revoke_at", "last_used_at",
                  "quota_remaining", "rotated_from", "rotated_to", "revision"):
        if field in key:
            print(f"  {field}: {key[field]}")


def _human_policy(policy: dict[str, Any]) -> None:
    print(f"{policy['policy_id']}  v{policy.get('version', 0)}  {policy.get('description', '')}")
    for field in ("scopes", "allowed_cidrs", "rate_limit", "quota_refill", "max_key_ttl", "updated_at",
                  "updated_by", "change_note"):
        if field in policy:
            print(f"  {field}: {policy[field]}")


def _human_impact(impact: dict[str, Any]) -> None:
    print(f"keys affected: {impact.get('keys_affected', 0)}")
    for field in ("scopes_added", "scopes_removed", "cidrs_added", "cidrs_removed",
                  "limits_tightened", "limits_loosened"):
        for line in impact.get(field, []):
            print(f"  {field.replace('_', ' ')}: {line}")
    if impact.get("sample_key_ids"):
        print(f"  e.g. {', '.join(impact['sample_key_ids'][:5])}")
    print("BREAKING: some calls allowed now would be refused" if impact.get("breaking")
          else "not breaking")


def _print_secret(response: Any) -> None:
    if response.secret_reissued:
        print("\n(a retry of an earlier request: this secret replaces the one it issued)")
    print(f"\nsecret (shown once): {response.secret}")


def _cmd_keys(args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915 - one branch per subcommand
    from google.protobuf import field_mask_pb2

    from keysvc.api._convert import dur
    from keysvc.v1 import keysvc_pb2 as pb

    action = args.keys_action
    if action == "create":
        request = pb.CreateKeyRequest(
            owner_id=args.owner, name=args.name or "", policy_id=args.policy or "",
            scopes=args.scope or [], metadata=dict(args.meta or []), prefix=args.prefix or "",
        )
        if args.ttl is not None:
            request.ttl.CopyFrom(dur(args.ttl))
        if args.quota is not None:
            request.quota = args.quota
        response = _call(args, "CreateKey", request)
        if args.json:
            _print_json(_to_dict(response))
        else:
            _human_key(_to_dict(response.key))
            _print_secret(response)
        return 0
    if action == "get":
        _show(args, _call(args, "GetKey", pb.GetKeyRequest(key_id=args.key_id)).key, _human_key)
        return 0
    if action == "list":
        listing = pb.ListKeysRequest(owner_id=args.owner or "", page_size=args.limit,
                                     page_token=args.page_token or "")
        if args.status:
            listing.status = cast(pb.KeyStatus, pb.KeyStatus.Value("KEY_STATUS_" + args.status.upper()))
        if args.unused_for is not None:
            listing.unused_for.CopyFrom(dur(args.unused_for))
        response = _call(args, "ListKeys", listing)
        if args.json:
            _print_json(_to_dict(response))
        else:
            for key in response.keys:
                _human_key(_to_dict(key))
            if response.next_page_token:
                print(f"more: --page-token {response.next_page_token}")
        return 0
    if action == "update":
        key = pb.Key()
        paths: list[str] = []
        if args.name is not None:
            key.name = args.name
            paths.append("name")
        if args.scope is not None:
            key.scopes.extend(args.scope)
            paths.append("scopes")
        if args.meta is not None:
            key.metadata.update(dict(args.meta))
            paths.append("metadata")
        if args.enable is not None:
            key.enabled = args.enable
            paths.append("enabled")
        if args.policy is not None:
            key.policy_id = args.policy
            paths.append("policy_id")
        if args.expires_in is not None:
            import time

            key.expires_at.FromNanoseconds(int((time.time() + args.expires_in) * 1e9))
            paths.append("expires_at")
        if args.quota is not None:
            key.quota_remaining = args.quota
            paths.append("quota_remaining")
        update = pb.UpdateKeyRequest(key_id=args.key_id, key=key,
                                     update_mask=field_mask_pb2.FieldMask(paths=paths))
        _show(args, _call(args, "UpdateKey", update).key, _human_key)
        return 0
    if action == "revoke":
        revoke = pb.RevokeKeyRequest(key_id=args.key_id, grace_period=dur(args.grace or 0),
                                     reason=args.reason or "")
        _show(args, _call(args, "RevokeKey", revoke).key, _human_key)
        return 0
    # rotate
    response = _call(args, "RotateKey", pb.RotateKeyRequest(key_id=args.key_id,
                                                            grace_period=dur(args.grace or 0)))
    if args.json:
        _print_json(_to_dict(response))
    else:
        _human_key(_to_dict(response.key))
        print(f"previous key {response.previous.key_id} stops working at "
              f"{_to_dict(response.previous).get('revoke_at')}")
        _print_secret(response)
    return 0


def _policy_message(args: argparse.Namespace) -> Any:
    from keysvc.api._convert import dur
    from keysvc.v1 import keysvc_pb2 as pb

    policy = pb.Policy(policy_id=args.policy_id, description=args.description or "",
                       scopes=args.scope or [], allowed_cidrs=args.cidr or [])
    if args.rate:
        requests, _, window = args.rate.partition("/")
        try:
            policy.rate_limit.requests = int(requests)
            policy.rate_limit.window.CopyFrom(dur(parse_duration(window or "1s")))
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"--rate {args.rate!r}: want REQUESTS/WINDOW, e.g. 100/1s") from None
    if args.refill:
        amount, _, interval = args.refill.partition("/")
        policy.quota_refill.amount = int(amount)
        policy.quota_refill.interval.CopyFrom(dur(parse_duration(interval or "1d")))
    if args.max_ttl is not None:
        policy.max_key_ttl.CopyFrom(dur(args.max_ttl))
    return policy


def _cmd_policies(args: argparse.Namespace) -> int:  # noqa: PLR0912 - one branch per subcommand
    from keysvc.v1 import keysvc_pb2 as pb

    action = args.policies_action
    if action == "create":
        response = _call(args, "CreatePolicy", pb.CreatePolicyRequest(policy=_policy_message(args)))
        _show(args, response.policy, _human_policy)
    elif action == "get":
        response = _call(args, "GetPolicy", pb.GetPolicyRequest(policy_id=args.policy_id,
                                                                version=args.version or 0))
        _show(args, response.policy, _human_policy)
    elif action == "list":
        response = _call(args, "ListPolicies", pb.ListPoliciesRequest(page_size=args.limit))
        if args.json:
            _print_json(_to_dict(response))
        for policy in [] if args.json else response.policies:
            _human_policy(_to_dict(policy))
    elif action in ("update", "rollback"):
        if action == "update":
            request: Any = pb.UpdatePolicyRequest(
                policy=_policy_message(args), expected_version=args.expected_version,
                dry_run=args.dry_run, allow_breaking=args.allow_breaking, change_note=args.note or "")
            response = _call(args, "UpdatePolicy", request)
        else:
            request = pb.RollbackPolicyRequest(
                policy_id=args.policy_id, to_version=args.to_version, dry_run=args.dry_run,
                allow_breaking=args.allow_breaking)
            response = _call(args, "RollbackPolicy", request)
        if args.json:
            _print_json(_to_dict(response))
        else:
            _human_impact(_to_dict(response.impact))
            if response.applied:
                _human_policy(_to_dict(response.policy))
            else:
                print("dry run: nothing written")
    else:  # history
        response = _call(args, "ListPolicyVersions",
                         pb.ListPolicyVersionsRequest(policy_id=args.policy_id, page_size=args.limit))
        if args.json:
            _print_json(_to_dict(response))
        for policy in [] if args.json else response.versions:
            _human_policy(_to_dict(policy))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from keysvc.v1 import keysvc_pb2 as pb

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    response = _call(args, "Validate", pb.ValidateRequest(
        key=key, required_scopes=args.scope or [], client_ip=args.client_ip or "",
        cost=args.cost), admin=False)
    if args.json:
        _print_json(_to_dict(response))
    else:
        code = pb.Code.Name(response.code).removeprefix("CODE_")
        print(f"{code}" + (f" key={response.key_id} owner={response.owner_id}" if response.key_id else "")
              + (f" ({response.message})" if response.message else ""))
    return 0 if response.valid else 1


def _cmd_watch(args: argparse.Namespace) -> int:
    import grpc

    from keysvc.v1 import keysvc_pb2 as pb

    stub, channel = _stub(args)
    try:
        stream = stub.WatchEvents(
            pb.WatchEventsRequest(since=args.since or "", from_beginning=args.from_beginning),
            metadata=_auth(),
        )
        for count, item in enumerate(stream, start=1):
            if args.json:
                print(json.dumps(_to_dict(item.event), sort_keys=True), flush=True)
            else:
                e = item.event
                target = e.key_id or f"{e.policy_id} v{e.policy_version}"
                print(f"{e.cursor}  {e.type:<20} {target}  by {e.actor or '-'}", flush=True)
            if args.limit and count >= args.limit:
                break
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED:
            return 0
        raise
    finally:
        channel.close()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from keysvc import bench

    return bench.main(args)


# -- parser ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per flag
    parser = argparse.ArgumentParser(prog="keysvc", description="API-key validation sidecar.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _add_settings_flags(serve)
    # Set by `--workers N` on its children only: they share the ports their parent reserved.
    serve.add_argument("--in-worker-set", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    health = sub.add_parser("health", help="probe the server on the configured listen address; exit 0 if "
                                           "SERVING (for container health checks)")
    _add_settings_flags(health)
    health.add_argument("--live", action="store_true",
                        help="probe liveness (the process is not stuck) instead of readiness")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    _tls_flags(health)
    health.set_defaults(func=_cmd_health)

    boot = sub.add_parser("bootstrap", help="create the first admin key (once)")
    _add_settings_flags(boot)
    boot.add_argument("--force", action="store_true", help="make another admin key even if one was made")
    boot.add_argument("--json", action="store_true")
    boot.set_defaults(func=_cmd_bootstrap)

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--addr", default=os.environ.get("KEYSVC_ADDR", "127.0.0.1:50051"),
                       help="server address [KEYSVC_ADDR]")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
        _tls_flags(p)
        p.add_argument("--request-id", help="id of a write, to repeat it safely "
                       "(default: a fresh UUID per command)")
        return p

    def meta(value: str) -> tuple[str, str]:
        k, sep, v = value.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError("want KEY=VALUE")
        return k, v

    keys = sub.add_parser("keys", help="manage keys").add_subparsers(dest="keys_action", required=True)
    p = client(keys.add_parser("create", help="create a key (prints its secret once)"))
    p.add_argument("--owner", required=True)
    p.add_argument("--name")
    p.add_argument("--policy")
    p.add_argument("--scope", action="append", help="repeatable")
    p.add_argument("--meta", action="append", type=meta, help="KEY=VALUE, repeatable")
    p.add_argument("--ttl", type=parse_duration)
    p.add_argument("--prefix")
    p.add_argument("--quota", type=int)
    for name in ("get",):
        client(keys.add_parser(name)).add_argument("key_id")
    p = client(keys.add_parser("list"))
    p.add_argument("--owner")
    p.add_argument("--status", choices=["active", "disabled", "expired", "revoking", "revoked"])
    p.add_argument("--unused-for", type=parse_duration, help="e.g. 30d: not used for that long")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--page-token")
    p = client(keys.add_parser("update"))
    p.add_argument("key_id")
    p.add_argument("--name")
    p.add_argument("--scope", action="append")
    p.add_argument("--meta", action="append", type=meta)
    p.add_argument("--enable", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--policy")
    p.add_argument("--expires-in", type=parse_duration)
    p.add_argument("--quota", type=int)
    p = client(keys.add_parser("revoke"))
    p.add_argument("key_id")
    p.add_argument("--grace", type=parse_duration, help="keep working this long (e.g. 10m)")
    p.add_argument("--reason")
    p = client(keys.add_parser("rotate"))
    p.add_argument("key_id")
    p.add_argument("--grace", type=parse_duration, help="old secret keeps working this long")
    sub.choices["keys"].set_defaults(func=_cmd_keys)

    pol = sub.add_parser("policies", help="manage policies").add_subparsers(
        dest="policies_action", required=True)

    def content(p: argparse.ArgumentParser) -> None:
        p.add_argument("policy_id")
        p.add_argument("--description")
        p.add_argument("--scope", action="append")
        p.add_argument("--cidr", action="append")
        p.add_argument("--rate", help="REQUESTS/WINDOW, e.g. 100/1s or 5000/1m")
        p.add_argument("--refill", help="AMOUNT/INTERVAL quota refill, e.g. 1000/1d")
        p.add_argument("--max-ttl", type=parse_duration)

    content(client(pol.add_parser("create")))
    p = client(pol.add_parser("get"))
    p.add_argument("policy_id")
    p.add_argument("--version", type=int)
    p = client(pol.add_parser("list"))
    p.add_argument("--limit", type=int, default=100)
    p = client(pol.add_parser("update", help="write version N+1 (or --dry-run)"))
    content(p)
    p.add_argument("--expected-version", type=int, required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--allow-breaking", action="store_true")
    p.add_argument("--note")
    p = client(pol.add_parser("rollback"))
    p.add_argument("policy_id")
    p.add_argument("--to-version", type=int, required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--allow-breaking", action="store_true")
    p = client(pol.add_parser("history"))
    p.add_argument("policy_id")
    p.add_argument("--limit", type=int, default=100)
    sub.choices["policies"].set_defaults(func=_cmd_policies)

    p = client(sub.add_parser("validate", help="validate a key (use - to read it from stdin)"))
    p.add_argument("key")
    p.add_argument("--scope", action="append")
    p.add_argument("--client-ip")
    p.add_argument("--cost", type=int, default=1)
    p.set_defaults(func=_cmd_validate)

    p = client(sub.add_parser("watch", help="stream lifecycle events"))
    p.add_argument("--since", help="resume after this cursor")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="stop after N events")
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser("bench", help="measure keysvc against an empty gRPC handler, on loopback")
    p.add_argument("--scenarios", help="comma-separated subset (default: all)")
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test, well under a minute")
    p.add_argument("--duration", type=float, help="seconds of load per scenario (default 5; --quick 1.5)")
    p.add_argument("--concurrency", type=int, default=8, help="h2load connections")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    p.add_argument("--rounds", type=int, help="runs of each scenario, medians shown (default 3; --quick 1)")
    p.add_argument("--memory", action="store_true", help="also measure RSS per cached key")
    p.add_argument("--memory-keys", help="cache sizes for --memory (default 100000,1000000; --quick 10000)")
    p.add_argument("--propagation", action="store_true", help="also time revocations between two servers")
    p.add_argument("--revocations", type=int, help="revocations timed by --propagation (default 200)")
    p.add_argument("--unpinned", action="store_true",
                   help="let the kernel place server, h2load and Redis (default: taskset, a core each)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    import grpc

    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, KeysvcError) as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"keysvc: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
