"""Talking to a keysvc server from the CLI: a `keysvc.client.Client` from flags, and output."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keysvc.core.errors import ConfigError

if TYPE_CHECKING:
    from keysvc.client import Client, CreatedKey, Page, RotatedKey

__all__ = [
    "connect", "human_impact", "human_key", "human_policy", "page_dict", "parse_duration", "print_json",
    "print_secret", "show", "tls_flags", "to_dict",
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
        raise argparse.ArgumentTypeError("not a duration (e.g. 90s, 5m, 1h30m, 30d)")  # never echoes it
    return total


def connect(args: argparse.Namespace, *, admin: bool = True) -> Client:
    """A `keysvc.client.Client` to `--addr` (TLS with --tls-ca), its deadline from --timeout.

    Raises:
        ConfigError: an admin command without KEYSVC_ADMIN_KEY.
    """
    from keysvc.client import Client

    admin_key = os.environ.get("KEYSVC_ADMIN_KEY", "")
    if admin and not admin_key:
        raise ConfigError("KEYSVC_ADMIN_KEY is not set: run `keysvc bootstrap` and export the key it prints")
    return Client.connect(args.addr, ca=args.tls_ca, cert=args.tls_client_cert, key=args.tls_client_key,
                          server_name=args.tls_server_name, admin_key=admin_key,
                          timeout=getattr(args, "timeout", 10.0))


def tls_flags(p: argparse.ArgumentParser) -> None:
    """Add the client-side TLS flags (--tls-ca, --tls-client-cert, --tls-client-key, --tls-server-name)."""
    for flag, env, what in (("--tls-ca", "KEYSVC_TLS_CA", "PEM CA of the server's certificate: use TLS"),
                            ("--tls-client-cert", "KEYSVC_TLS_CLIENT_CERT", "PEM client certificate (mTLS)"),
                            ("--tls-client-key", "KEYSVC_TLS_CLIENT_KEY", "PEM key of that certificate"),
                            ("--tls-server-name", "KEYSVC_TLS_SERVER_NAME",
                             "name the server's certificate must carry, if not the address's host")):
        p.add_argument(flag, default=os.environ.get(env, ""), help=f"{what} [{env}]")


def to_dict(result: Any) -> dict[str, Any]:
    """A client result as JSON-ready data: the proto3 JSON of its message (proto field names)."""
    from keysvc.client import to_dict as as_dict

    return as_dict(result)


def page_dict(field: str, page: Page[Any]) -> dict[str, Any]:
    """A page as its List* response's JSON: `field` (left out when empty) and `next_page_token`."""
    data: dict[str, Any] = {field: [to_dict(item) for item in page]} if len(page) else {}
    if page.next_page_token:
        data["next_page_token"] = page.next_page_token
    return data


def print_json(value: Any) -> None:
    """Print `value` as sorted, indented JSON."""
    print(json.dumps(value, indent=2, sort_keys=True))


def show(args: argparse.Namespace, result: Any, human: Callable[[dict[str, Any]], None]) -> None:
    """Print `result` as JSON with --json, else through `human`."""
    data = to_dict(result)
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


def print_secret(response: CreatedKey | RotatedKey) -> None:
    """Print a new key's secret, shown once."""
    if response.secret_reissued:
        print("\n(a retry of an earlier request: this secret replaces the one it issued)")
    print(f"\nsecret (shown once): {response.secret}")
