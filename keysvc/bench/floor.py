"""The bench's `floor`: an empty KeyService.Validate on keysvc's own stack.

grpc.aio + uvloop, the generated servicer registration (so the request is
parsed and the response serialized like keysvc's), no interceptor, no cache,
no policy: whatever keysvc costs above this is keysvc's. The handler returns
a fixed ValidateResponse read from a file, so its size is exactly that of
keysvc's VALID answer for the bench's key.

`--stack sync` serves the same handler on the synchronous `grpc.server` with
a thread pool instead (the `floor-sync` scenario), to choose the stack by
measurement.

Run as `python -m keysvc.bench.floor --listen 127.0.0.1:PORT --response FILE`;
it exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc as pb_grpc

__all__ = ["FloorServicer", "SyncFloorServicer", "main"]


class FloorServicer(pb_grpc.KeyServiceServicer):
    """Answers every Validate with the same prebuilt response."""

    def __init__(self, response: pb.ValidateResponse) -> None:
        self._response = response

    async def Validate(self, request: pb.ValidateRequest, context: Any) -> pb.ValidateResponse:
        """Return the fixed answer: the floor under any Python handler."""
        return self._response


class SyncFloorServicer(pb_grpc.KeyServiceServicer):
    """The same fixed answer, for the synchronous grpc.server."""

    def __init__(self, response: pb.ValidateResponse) -> None:
        self._response = response

    def Validate(self, request: pb.ValidateRequest, context: Any) -> pb.ValidateResponse:
        """Return the fixed answer."""
        return self._response


_OPTIONS = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 65_536)]


def _serve_sync(listen: str, response: pb.ValidateResponse, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=_OPTIONS)
    pb_grpc.add_KeyServiceServicer_to_server(SyncFloorServicer(response), server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server.start()
    sys.stdout.write(f"floor (sync, {threads} threads) serving on {listen}\n")
    sys.stdout.flush()
    while not stopping.wait(0.5):
        pass
    server.stop(1.0).wait()


async def _serve(listen: str, response: pb.ValidateResponse) -> None:
    server = aio.server(options=_OPTIONS)
    pb_grpc.add_KeyServiceServicer_to_server(FloorServicer(response), server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    sys.stdout.write(f"floor serving on {listen}\n")
    sys.stdout.flush()
    await stopping.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the floor until SIGTERM; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m keysvc.bench.floor")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--response", required=True, help="file holding a serialized ValidateResponse")
    parser.add_argument("--stack", choices=["aio", "sync"], default="aio", help="gRPC server stack")
    parser.add_argument("--threads", type=int, default=8, help="thread pool size of --stack sync")
    args = parser.parse_args(argv)
    response = pb.ValidateResponse.FromString(Path(args.response).read_bytes())
    if args.stack == "sync":
        _serve_sync(args.listen, response, args.threads)
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with keysvc on Linux
        pass
    asyncio.run(_serve(args.listen, response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
