"""Which HTTP server should keysvc's forward-auth listener run on? Measure, interleaved.

Each candidate runs in its own keysvc process (`keysvc.app.server.build` and
`start`: the real store, cache, validator, Authorizer and gRPC server, gRPC
idle), pinned to one core (`--server-cpu`, default 0), serving `/authz` with
nginx's target headers. h2load --h1 (pinned to `--client-cpu`, default 1)
sends a valid, cached key. Rounds are interleaved (A, B, C, A, B, C, ...) so
that load from other work on the machine falls on every candidate alike; the
CPU per check is the server process's user+system time from /proc (all its
threads: granian's Rust threads count) divided by the checks answered.

Candidates:
  aiohttp           the listener keysvc had before this measurement: web.Application + router, uvloop
  aiohttp-lowlevel  aiohttp tuned: its `web.Server` with one handler dispatching by path (no router, no app)
  granian           keysvc's listener as shipped: granian's embedded server (ASGI) on keysvc's event loop,
                    its Rust parser on its own thread (keysvc.api.http.listener)
aiohttp is no longer a keysvc dependency: `pip install aiohttp` to run its candidates.

Run: .venv/bin/python scripts/bench_http_server.py [--rounds 4] [--seconds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("aiohttp", "aiohttp-lowlevel", "granian")


def _aiohttp_handler(app: Any) -> Any:
    """The aiohttp listener's /authz as keysvc shipped it before granian (nginx mode, same Authorizer)."""
    from aiohttp import web
    from multidict import CIMultiDict

    from keysvc.api.authz import ERROR_HEADER

    authorizer = app.authorizer
    joined = ("x-forwarded-for", *authorizer.key_headers)

    async def authz(request: web.BaseRequest) -> web.Response:
        raw = request.headers
        targets, methods = raw.getall("x-original-uri", ()), raw.getall("x-original-method", ())
        if len(targets) > 1 or len(methods) > 1:
            return web.Response(status=400)
        target, method = (targets[0] if targets else "/"), (methods[0] if methods else request.method)
        headers: Any = raw
        for name in joined:
            values = raw.getall(name, ())
            if len(values) > 1:
                headers = CIMultiDict(raw) if headers is raw else headers
                headers[name] = ",".join(values)
        result = await authorizer.check(headers, method, target, request.remote or "")
        if result.allowed:
            return web.Response(status=200, headers=dict((("server", "keysvc"), *result.upstream_headers)))
        answer = dict((("server", "keysvc"), *result.response_headers))
        answer[ERROR_HEADER] = result.error
        return web.Response(status=result.status, headers=answer, body=result.body.encode())

    return authz


async def _serve(candidate: str, store: str, port: int) -> None:
    """Child: a keysvc process (HTTP listener off) plus the candidate listener on `port`."""
    from keysvc.app import server
    from keysvc.app.settings import Settings

    settings = Settings(store=store, listen="127.0.0.1:0", authz_proxy="nginx", log_level="warning")
    app = server.build(settings)
    await server.start(app)
    stop: Any
    if candidate == "granian":  # keysvc's listener as shipped
        from keysvc.api.http.forward_auth import ForwardAuth
        from keysvc.api.http.listener import HttpListener

        listener = HttpListener(ForwardAuth(app.authorizer, lambda: app.serving, require_target=False,
                                            proxy="nginx"), ("127.0.0.1", port), shutdown_grace_s=1)
        await listener.start()
        stop = listener.stop
    else:  # aiohttp (not a keysvc dependency any more: pip install aiohttp to re-run these)
        from aiohttp import web

        authz = _aiohttp_handler(app)
        runner: web.BaseRunner
        if candidate == "aiohttp":  # web.Application and its router, as keysvc had it
            application = web.Application()
            application.router.add_route("*", "/authz", authz)
            runner = web.AppRunner(application, access_log=None)
        else:  # the low-level server: one handler, no router, no application

            async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
                if request.path == "/authz":
                    response: web.StreamResponse = await authz(request)
                    return response
                return web.Response(status=404)

            runner = web.ServerRunner(web.Server(dispatch, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = runner.cleanup
    print("READY", flush=True)
    await asyncio.get_running_loop().create_future()  # until killed
    await stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _h2load(port: int, key: str, seconds: int, connections: int, cpu: int) -> tuple[int, int]:
    """Run h2load --h1 for `seconds`; return (2xx answers, all answers)."""
    cmd = ["taskset", "-c", str(cpu), "h2load", "--h1", "-c", str(connections), "-m", "1",
           "-D", str(seconds), "-H", f"x-api-key: {key}", "-H", "x-original-uri: /orders/7",
           f"http://127.0.0.1:{port}/authz"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if statuses is None:
        raise RuntimeError(out)
    ok, *rest = (int(n) for n in statuses.groups())
    return ok, ok + sum(rest)


def main() -> int:  # noqa: PLR0915  # one linear script: argument parsing, runs, table
    """Parent: start every candidate, run interleaved rounds, print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        from keysvc.app import telemetry

        telemetry.configure_logging("json", "warning")
        uvloop.run(_serve(args.serve, args.store, args.port))
        return 0
    if shutil.which("h2load") is None:
        print("h2load is not installed (Debian: nghttp2-client)", file=sys.stderr)
        return 2
    candidates = args.candidates.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="keysvc-http-bench-"))
    store = f"sqlite:///{tmp}/keysvc.db"
    boot = subprocess.run([sys.executable, "-m", "keysvc", "bootstrap", "--store", store, "--json"],
                          check=True, capture_output=True, text=True, timeout=60)
    key = json.loads(boot.stdout)["secret"]
    children: dict[str, tuple[subprocess.Popen[str], int]] = {}
    try:
        for name in candidates:
            port = _free_port()
            child = subprocess.Popen(
                ["taskset", "-c", str(args.server_cpu), sys.executable, __file__, "--serve", name,
                 "--store", store, "--port", str(port)], stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            if child.stdout.readline().strip() != "READY":
                raise RuntimeError(f"{name} did not start")
            children[name] = (child, port)
            _h2load(port, key, 1, args.connections, args.client_cpu)  # warm: the key is cached now
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
        for round_no in range(args.rounds):
            for name in (candidates if round_no % 2 == 0 else candidates[::-1]):
                child, port = children[name]
                cpu0, t0 = _cpu_s(child.pid), time.monotonic()
                ok, total = _h2load(port, key, args.seconds, args.connections, args.client_cpu)
                cpu1, t1 = _cpu_s(child.pid), time.monotonic()
                if ok != total:
                    raise RuntimeError(f"{name}: {total - ok} of {total} checks were not allowed")
                if ok == 0:  # the machine gave neither process a slice: nothing to count
                    print(f"round {round_no + 1} {name:18} no answers (the machine is starved)", flush=True)
                    continue
                results[name].append((ok / (t1 - t0), (cpu1 - cpu0) / ok * 1e6))
                print(f"round {round_no + 1} {name:18} {ok / (t1 - t0):9.0f} checks/s "
                      f"{(cpu1 - cpu0) / ok * 1e6:6.1f} us CPU/check", flush=True)
    finally:
        for child, _ in children.values():
            child.kill()
            child.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average: {os.getloadavg()}")
    print(f"{'server':18} {'checks/s (median)':>18} {'us CPU/check (median)':>22} {'checks/s per core':>18}")
    summary = {}
    for name, rows in results.items():
        if not rows:
            continue
        qps = sorted(r[0] for r in rows)[len(rows) // 2]
        cpu = sorted(r[1] for r in rows)[len(rows) // 2]
        summary[name] = {"qps": round(qps), "cpu_us_per_check": round(cpu, 1), "per_core": round(1e6 / cpu)}
        print(f"{name:18} {qps:18.0f} {cpu:22.1f} {1e6 / cpu:18.0f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
