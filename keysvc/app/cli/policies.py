"""`keysvc policies ...`: the policy commands of the admin client."""

from __future__ import annotations

import argparse
from typing import Any

from keysvc.app.cli.client import (
    call,
    human_impact,
    human_policy,
    parse_duration,
    print_json,
    show,
    to_dict,
)
from keysvc.core.errors import ConfigError

__all__ = ["cmd_policies"]


def _policy_message(args: argparse.Namespace) -> Any:
    from keysvc.api.grpc.convert import dur
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


def cmd_policies(args: argparse.Namespace) -> int:  # noqa: PLR0912 - one branch per subcommand
    """`keysvc policies create|get|list|update|rollback|versions`."""
    from keysvc.v1 import keysvc_pb2 as pb

    action = args.policies_action
    if action == "create":
        response = call(args, "CreatePolicy", pb.CreatePolicyRequest(policy=_policy_message(args)))
        show(args, response.policy, human_policy)
    elif action == "get":
        response = call(args, "GetPolicy", pb.GetPolicyRequest(policy_id=args.policy_id,
                                                                version=args.version or 0))
        show(args, response.policy, human_policy)
    elif action == "list":
        response = call(args, "ListPolicies", pb.ListPoliciesRequest(page_size=args.limit))
        if args.json:
            print_json(to_dict(response))
        for policy in [] if args.json else response.policies:
            human_policy(to_dict(policy))
    elif action in ("update", "rollback"):
        if action == "update":
            request: Any = pb.UpdatePolicyRequest(
                policy=_policy_message(args), expected_version=args.expected_version,
                dry_run=args.dry_run, allow_breaking=args.allow_breaking, change_note=args.note or "")
            response = call(args, "UpdatePolicy", request)
        else:
            request = pb.RollbackPolicyRequest(
                policy_id=args.policy_id, to_version=args.to_version, dry_run=args.dry_run,
                allow_breaking=args.allow_breaking)
            response = call(args, "RollbackPolicy", request)
        if args.json:
            print_json(to_dict(response))
        else:
            human_impact(to_dict(response.impact))
            if response.applied:
                human_policy(to_dict(response.policy))
            else:
                print("dry run: nothing written")
    else:  # history
        response = call(args, "ListPolicyVersions",
                         pb.ListPolicyVersionsRequest(policy_id=args.policy_id, page_size=args.limit))
        if args.json:
            print_json(to_dict(response))
        for policy in [] if args.json else response.versions:
            human_policy(to_dict(policy))
    return 0
