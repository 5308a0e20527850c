"""`keysvc watch`: follow the lifecycle event stream."""

from __future__ import annotations

import argparse
import json

from keysvc.app.cli.client import connect, to_dict

__all__ = ["cmd_watch"]


def cmd_watch(args: argparse.Namespace) -> int:
    """`keysvc watch`: print lifecycle events as they happen."""
    import grpc

    from keysvc.client import ClientError

    with connect(args) as client:
        events = client.watch_events(since=args.since or "", from_beginning=args.from_beginning)
        try:
            for count, event in enumerate(events, start=1):
                if args.json:
                    print(json.dumps(to_dict(event), sort_keys=True), flush=True)
                else:
                    target = event.key_id or f"{event.policy_id} v{event.policy_version}"
                    print(f"{event.cursor}  {event.type:<20} {target}  by {event.actor or '-'}", flush=True)
                if args.limit and count >= args.limit:
                    break
        except ClientError as exc:
            if exc.code is grpc.StatusCode.CANCELLED:
                return 0
            raise
        finally:
            events.close()
    return 0
