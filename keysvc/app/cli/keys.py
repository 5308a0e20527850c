"""`keysvc keys ...` and `keysvc validate`: the key commands of the admin client."""

from __future__ import annotations

import argparse
import sys
from typing import cast

from keysvc.app.cli.client import (
    call,
    human_key,
    print_json,
    print_secret,
    show,
    to_dict,
)

__all__ = ["cmd_keys", "cmd_validate"]


def cmd_keys(args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915 - one branch per subcommand
    """`keysvc keys create|get|list|update|revoke|rotate`."""
    from google.protobuf import field_mask_pb2

    from keysvc.api.grpc.convert import dur
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
        response = call(args, "CreateKey", request)
        if args.json:
            print_json(to_dict(response))
        else:
            human_key(to_dict(response.key))
            print_secret(response)
        return 0
    if action == "get":
        show(args, call(args, "GetKey", pb.GetKeyRequest(key_id=args.key_id)).key, human_key)
        return 0
    if action == "list":
        listing = pb.ListKeysRequest(owner_id=args.owner or "", page_size=args.limit,
                                     page_token=args.page_token or "")
        if args.status:
            listing.status = cast(pb.KeyStatus, pb.KeyStatus.Value("KEY_STATUS_" + args.status.upper()))
        if args.unused_for is not None:
            listing.unused_for.CopyFrom(dur(args.unused_for))
        response = call(args, "ListKeys", listing)
        if args.json:
            print_json(to_dict(response))
        else:
            for key in response.keys:
                human_key(to_dict(key))
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
        show(args, call(args, "UpdateKey", update).key, human_key)
        return 0
    if action == "revoke":
        revoke = pb.RevokeKeyRequest(key_id=args.key_id, grace_period=dur(args.grace or 0),
                                     reason=args.reason or "")
        show(args, call(args, "RevokeKey", revoke).key, human_key)
        return 0
    # rotate
    response = call(args, "RotateKey", pb.RotateKeyRequest(key_id=args.key_id,
                                                            grace_period=dur(args.grace or 0)))
    if args.json:
        print_json(to_dict(response))
    else:
        human_key(to_dict(response.key))
        print(f"previous key {response.previous.key_id} stops working at "
              f"{to_dict(response.previous).get('revoke_at')}")
        print_secret(response)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """`keysvc validate`: exit 0 when the key is valid, 1 when refused."""
    from keysvc.v1 import keysvc_pb2 as pb

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    response = call(args, "Validate", pb.ValidateRequest(
        key=key, required_scopes=args.scope or [], client_ip=args.client_ip or "",
        cost=args.cost), admin=False)
    if args.json:
        print_json(to_dict(response))
    else:
        code = pb.Code.Name(response.code).removeprefix("CODE_")
        print(f"{code}" + (f" key={response.key_id} owner={response.owner_id}" if response.key_id else "")
              + (f" ({response.message})" if response.message else ""))
    return 0 if response.valid else 1
