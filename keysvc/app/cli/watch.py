"""`keysvc watch`: follow the lifecycle event stream."""

from __future__ import annotations

import argparse
import json

from keysvc.app.cli.client import auth, connect, to_dict

__all__ = ["cmd_watch"]


def cmd_watch(args: argparse.Namespace) -> int:
    """`keysvc watch`: print lifecycle events as they happen."""
    import grpc

    from keysvc.v1 import keysvc_pb2 as pb

    stub, channel = connect(args)
    try:
        stream = stub.WatchEvents(
            pb.WatchEventsRequest(since=args.since or "", from_beginning=args.from_beginning),
            metadata=auth(),
        )
        for count, item in enumerate(stream, start=1):
            if args.json:
                print(json.dumps(to_dict(item.event), sort_keys=True), flush=True)
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
