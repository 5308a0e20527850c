"""Reading a running Envoy through its admin interface (loopback): stats and cluster health."""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e._proxies import wait_port


def admin_get(admin_port: int, path: str) -> str:
    """GET one admin page from Envoy on loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (path, response.status, body[:500])
        return body
    finally:
        conn.close()


def stats(admin_port: int, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names match `pattern` (a regex), by name."""
    found: dict[str, int] = {}
    for line in admin_get(admin_port, f"/stats?filter={pattern}").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            found[name.strip()] = int(value)
    return found


def host_health(admin_port: int, cluster: str) -> list[str]:
    """The health flags of each host of `cluster` (from /clusters): "healthy" or e.g. "/failed_active_hc"."""
    return [line.rpartition("::health_flags::")[2] for line in admin_get(admin_port, "/clusters").splitlines()
            if line.startswith(f"{cluster}::") and "::health_flags::" in line]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds, or fail naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_envoy(binary: str, config: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    """Run Envoy on `config` (one worker, no hot restart), its output (access log included) to `log`."""
    envoy = subprocess.Popen(
        [binary, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=config.parent)
    try:
        wait_port(port, lambda: envoy.poll() is None, "envoy", log.read_text)
    except BaseException:
        stop_envoy(envoy)
        raise
    return envoy


def stop_envoy(envoy: subprocess.Popen[bytes]) -> None:
    """Stop an Envoy started by `start_envoy`."""
    envoy.terminate()
    try:
        envoy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        envoy.kill()
        envoy.wait(timeout=30)
