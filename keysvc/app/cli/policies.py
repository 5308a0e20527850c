"""`keysvc policies ...`: the policy commands of the admin client."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from keysvc.app.cli.client import (
    connect,
    human_impact,
    human_policy,
    page_dict,
    parse_duration,
    print_json,
    show,
    to_dict,
)
from keysvc.core.errors import ConfigError

if TYPE_CHECKING:
    from keysvc.client import Policy, PolicyChange

__all__ = ["cmd_policies"]


def _policy(args: argparse.Namespace) -> Policy:
    from keysvc.client import Policy, QuotaRefill, RateLimit

    rate = refill = None
    if args.rate:
        requests, _, window = args.rate.partition("/")
        try:
            rate = RateLimit(int(requests), timedelta(seconds=parse_duration(window or "1s")))
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"--rate {args.rate!r}: want REQUESTS/WINDOW, e.g. 100/1s") from None
    if args.refill:
        amount, _, interval = args.refill.partition("/")
        refill = QuotaRefill(int(amount), timedelta(seconds=parse_duration(interval or "1d")))
    return Policy(args.policy_id, description=args.description or "", scopes=tuple(args.scope or ()),
                  allowed_cidrs=tuple(args.cidr or ()), rate_limit=rate, quota_refill=refill,
                  max_key_ttl=timedelta(seconds=args.max_ttl) if args.max_ttl is not None else None)


def _print_change(args: argparse.Namespace, change: PolicyChange) -> None:
    if args.json:
        print_json(to_dict(change))
        return
    human_impact(to_dict(change.impact))
    if change.applied:
        human_policy(to_dict(change.policy))
    else:
        print("dry run: nothing written")


def cmd_policies(args: argparse.Namespace) -> int:
    """`keysvc policies create|get|list|update|rollback|history`."""
    action, request_id = args.policies_action, getattr(args, "request_id", None)
    with connect(args) as client:
        if action == "create":
            show(args, client.create_policy(_policy(args), request_id=request_id), human_policy)
        elif action == "get":
            show(args, client.get_policy(args.policy_id, version=args.version or 0), human_policy)
        elif action == "list":
            page = client.list_policies(page_size=args.limit)
            if args.json:
                print_json(page_dict("policies", page))
            for policy in [] if args.json else page:
                human_policy(to_dict(policy))
        elif action == "update":
            _print_change(args, client.update_policy(
                _policy(args), expected_version=args.expected_version, dry_run=args.dry_run,
                allow_breaking=args.allow_breaking, change_note=args.note or "", request_id=request_id))
        elif action == "rollback":
            _print_change(args, client.rollback_policy(
                args.policy_id, to_version=args.to_version, dry_run=args.dry_run,
                allow_breaking=args.allow_breaking, request_id=request_id))
        else:  # history
            page = client.list_policy_versions(args.policy_id, page_size=args.limit)
            if args.json:
                print_json(page_dict("versions", page))
            for policy in [] if args.json else page:
                human_policy(to_dict(policy))
    return 0
