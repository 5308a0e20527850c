"""`keysvc keys ...` and `keysvc validate`: the key commands of the admin client."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from keysvc.app.cli.client import (
    connect,
    human_key,
    page_dict,
    print_json,
    print_secret,
    show,
    to_dict,
)

__all__ = ["cmd_keys", "cmd_validate"]


def cmd_keys(args: argparse.Namespace) -> int:  # noqa: PLR0912 - one branch per subcommand
    """`keysvc keys create|get|list|update|revoke|rotate`."""
    from keysvc.client import KeyStatus

    action, request_id = args.keys_action, getattr(args, "request_id", None)
    with connect(args) as client:
        if action == "create":
            created = client.create_key(
                args.owner, name=args.name or "", policy_id=args.policy or "", scopes=args.scope or [],
                metadata=dict(args.meta or []), prefix=args.prefix or "", ttl=args.ttl, quota=args.quota,
                request_id=request_id)
            if args.json:
                print_json(to_dict(created))
            else:
                human_key(to_dict(created.key))
                print_secret(created)
        elif action == "get":
            show(args, client.get_key(args.key_id), human_key)
        elif action == "list":
            page = client.list_keys(owner_id=args.owner or "", page_size=args.limit,
                                    page_token=args.page_token or "", unused_for=args.unused_for,
                                    status=KeyStatus[args.status.upper()] if args.status else None)
            if args.json:
                print_json(page_dict("keys", page))
            else:
                for key in page:
                    human_key(to_dict(key))
                if page.next_page_token:
                    print(f"more: --page-token {page.next_page_token}")
        elif action == "update":
            expires_at = (datetime.now(UTC) + timedelta(seconds=args.expires_in)
                          if args.expires_in is not None else None)
            key = client.update_key(
                args.key_id, name=args.name, scopes=args.scope,
                metadata=dict(args.meta) if args.meta is not None else None, enabled=args.enable,
                policy_id=args.policy, expires_at=expires_at, quota_remaining=args.quota,
                request_id=request_id)
            show(args, key, human_key)
        elif action == "revoke":
            show(args, client.revoke_key(args.key_id, grace_period=args.grace or 0, reason=args.reason or "",
                                         request_id=request_id), human_key)
        else:  # rotate
            rotated = client.rotate_key(args.key_id, grace_period=args.grace or 0, request_id=request_id)
            if args.json:
                print_json(to_dict(rotated))
            else:
                human_key(to_dict(rotated.key))
                print(f"previous key {rotated.previous.key_id} stops working at "
                      f"{to_dict(rotated.previous).get('revoke_at')}")
                print_secret(rotated)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """`keysvc validate`: exit 0 when the key is valid, 1 when refused."""
    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    with connect(args, admin=False) as client:
        result = client.validate(key, required_scopes=args.scope or [], client_ip=args.client_ip or "",
                                 cost=args.cost)
    if args.json:
        print_json(to_dict(result))
    else:
        who = f" key={result.key_id} owner={result.owner_id}" if result.key_id else ""
        print(f"{result.code.name}{who}" + (f" ({result.message})" if result.message else ""))
    return 0 if result.valid else 1
