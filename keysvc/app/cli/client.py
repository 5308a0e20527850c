"""Talking to a keysvc server from the CLI: the stub, retried calls, and output."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from typing import Any

from keysvc.core.errors import ConfigError

__all__ = [
    "auth", "call", "channel_to", "connect", "human_impact", "human_key", "human_policy", "parse_duration",
    "print_json", "print_secret", "show", "tls_flags", "to_dict",
]

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


def connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """A KeyService stub on a channel to `--addr` (TLS with --tls-ca), and the channel to close."""
    from keysvc.v1 import keysvc_pb2_grpc

    channel = channel_to(args, args.addr)
    return keysvc_pb2_grpc.KeyServiceStub(channel), channel  # type: ignore[no-untyped-call]


def channel_to(args: argparse.Namespace, target: str) -> Any:
    """A channel to `target`, over TLS when --tls-ca (KEYSVC_TLS_CA) is given."""
    from keysvc.app.tls import client_channel

    return client_channel(target, ca=args.tls_ca, cert=args.tls_client_cert, key=args.tls_client_key)


def tls_flags(p: argparse.ArgumentParser) -> None:
    """Add the client-side TLS flags (--tls-ca, --tls-client-cert, --tls-client-key) to `p`."""
    for flag, env, what in (("--tls-ca", "KEYSVC_TLS_CA", "PEM CA of the server's certificate: use TLS"),
                            ("--tls-client-cert", "KEYSVC_TLS_CLIENT_CERT", "PEM client certificate (mTLS)"),
                            ("--tls-client-key", "KEYSVC_TLS_CLIENT_KEY", "PEM key of that certificate")):
        p.add_argument(flag, default=os.environ.get(env, ""), help=f"{what} [{env}]")


def auth() -> list[tuple[str, str]]:
    """The admin key's call metadata, from KEYSVC_ADMIN_KEY (exits 2 when unset)."""
    key = os.environ.get("KEYSVC_ADMIN_KEY", "")
    if not key:
        raise ConfigError("KEYSVC_ADMIN_KEY is not set: run `keysvc bootstrap` and export the key it prints")
    return [("authorization", f"Bearer {key}")]


_WRITE_ATTEMPTS = 3  # a write with a request_id is retried this often on UNAVAILABLE


def call(args: argparse.Namespace, method: str, request: Any, *, admin: bool = True) -> Any:
    """Call `method`; a write carries a request_id (fresh unless --request-id names one).

    With it a write that answered UNAVAILABLE (perhaps applied, perhaps not)
    is retried as the same request, so it never acts twice.
    """
    import grpc

    writes = "request_id" in type(request).DESCRIPTOR.fields_by_name
    if writes and not request.request_id:
        import uuid

        request.request_id = getattr(args, "request_id", None) or str(uuid.uuid4())
    stub, channel = connect(args)
    try:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return getattr(stub, method)(
                    request, metadata=auth() if admin else None, timeout=args.timeout
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


def to_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as JSON-ready data (proto field names, defaults kept)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    """Print `value` as sorted, indented JSON."""
    print(json.dumps(value, indent=2, sort_keys=True))


def show(args: argparse.Namespace, message: Any, human: Callable[[dict[str, Any]], None]) -> None:
    """Print `message` as JSON with --json, else through `human`."""
    data = to_dict(message)
    if args.json:
        print_json(data)
    else:
        human(data)


def human_key(key: dict[str, Any]) -> None:
    """Print a key for a terminal."""
    status = key.get("status", "").removeprefix("KEY_STATUS_").lower()
    print(f"{key['key_id']}  {key.get('hint', '')}…  {status}  owner={key.get('owner_id', '')}")
    for field in ("name", "policy_id", "scopes", "metadata", "expires_at", "revoke_at", "last_used_at",
                  "quota_remaining", "rotated_from", "rotated_to", "revision"):
        if field in key:
            print(f"  {field}: {key[field]}")


def human_policy(policy: dict[str, Any]) -> None:
    """Print a policy for a terminal."""
    print(f"{policy['policy_id']}  v{policy.get('version', 0)}  {policy.get('description', '')}")
    for field in ("scopes", "allowed_cidrs", "rate_limit", "quota_refill", "max_key_ttl", "updated_at",
                  "updated_by", "change_note"):
        if field in policy:
            print(f"  {field}: {policy[field]}")


def human_impact(impact: dict[str, Any]) -> None:
    """Print a policy change's impact for a terminal."""
    print(f"keys affected: {impact.get('keys_affected', 0)}")
    for field in ("scopes_added", "scopes_removed", "cidrs_added", "cidrs_removed",
                  "limits_tightened", "limits_loosened"):
        for line in impact.get(field, []):
            print(f"  {field.replace('_', ' ')}: {line}")
    if impact.get("sample_key_ids"):
        print(f"  e.g. {', '.join(impact['sample_key_ids'][:5])}")
    print("BREAKING: some calls allowed now would be refused" if impact.get("breaking")
          else "not breaking")


def print_secret(response: Any) -> None:
    """Print a new key's secret, shown once."""
    if response.secret_reissued:
        print("\n(a retry of an earlier request: this secret replaces the one it issued)")
    print(f"\nsecret (shown once): {response.secret}")
