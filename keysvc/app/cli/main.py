"""`keysvc`: serve, bootstrap, and an admin client for keys, policies and events.

Human output on a terminal, `--json` for scripts. Admin commands read the
admin key from KEYSVC_ADMIN_KEY (never from a flag, so it stays out of shell
history and process lists) and the address from --addr / KEYSVC_ADDR.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from keysvc.app.cli.client import parse_duration, tls_flags
from keysvc.app.cli.keys import cmd_keys, cmd_validate
from keysvc.app.cli.policies import cmd_policies
from keysvc.app.cli.serve import add_settings_flags, cmd_bootstrap, cmd_health, cmd_serve
from keysvc.app.cli.watch import cmd_watch
from keysvc.core.errors import ConfigError, KeysvcError
from keysvc.core.keys import KEY_PATTERN

__all__ = ["main", "parse_duration"]


def _cmd_bench(args: argparse.Namespace) -> int:
    from keysvc.bench import command as bench

    return bench.main(args)


# -- parser ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, except that its usage errors never show a key.

    argparse quotes what it could not use ("invalid int value: '...'", "unrecognized
    arguments: ..."): a key pasted after the wrong flag went to the terminal and to CI
    logs. Subparsers are made of this class too (argparse's default).
    """

    def error(self, message: str) -> NoReturn:
        """Print usage and the message, any key-shaped text in it redacted; exit 2."""
        super().error(KEY_PATTERN.sub(r"\1_[REDACTED]", message))



def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per flag
    parser = _Parser(prog="keysvc", description="API-key validation sidecar.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    add_settings_flags(serve)
    # Set by `--workers N` on its children only: they share the ports their parent reserved.
    serve.add_argument("--in-worker-set", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    health = sub.add_parser("health", help="probe the server on the configured listen address; exit 0 if "
                                           "SERVING (for container health checks)")
    add_settings_flags(health)
    health.add_argument("--live", action="store_true",
                        help="probe liveness (the process is not stuck) instead of readiness")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    tls_flags(health)
    health.set_defaults(func=cmd_health)

    boot = sub.add_parser("bootstrap", help="create the first admin key (once)")
    add_settings_flags(boot)
    boot.add_argument("--force", action="store_true", help="make another admin key even if one was made")
    boot.add_argument("--json", action="store_true")
    boot.set_defaults(func=cmd_bootstrap)

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--addr", default=os.environ.get("KEYSVC_ADDR", "127.0.0.1:50051"),
                       help="server address [KEYSVC_ADDR]")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
        p.add_argument("--request-id", help="id of a write, to repeat it safely "
                       "(default: a fresh UUID per command)")
        tls_flags(p)
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
    sub.choices["keys"].set_defaults(func=cmd_keys)

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
    sub.choices["policies"].set_defaults(func=cmd_policies)

    p = client(sub.add_parser("validate", help="validate a key (use - to read it from stdin)"))
    p.add_argument("key")
    p.add_argument("--scope", action="append")
    p.add_argument("--client-ip")
    p.add_argument("--cost", type=int, default=1)
    p.set_defaults(func=cmd_validate)

    p = client(sub.add_parser("watch", help="stream lifecycle events"))
    p.add_argument("--since", help="resume after this cursor")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="stop after N events")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("bench", help="measure keysvc against an empty gRPC handler, on loopback")
    p.add_argument("--scenarios", help="comma-separated subset (default: all)")
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test, well under a minute")
    p.add_argument("--duration", type=float, help="seconds of load per scenario (default 5; --quick 1.5)")
    p.add_argument("--concurrency", type=int, default=8, help="h2load connections")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    p.add_argument("--http-concurrency", type=int, default=16,
                   help="h2load --h1 connections of the Envoy and http rows (one request in flight each)")
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
    from keysvc.client import ClientConfigError, ClientError

    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, KeysvcError, ClientConfigError) as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
