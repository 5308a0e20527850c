"""A real Prometheus (Debian's) scrapes keysvc's --metrics-listen; promtool lints the exposition.

scripts/test.sh installs Debian's `prometheus` (it brings `promtool`). The test
starts Prometheus in the foreground on a free loopback port with a one-target
config and a one-second scrape interval, and asks its HTTP API, as a dashboard
or an alert rule would, for `up` and for keysvc's decision counter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, free_port
from tests.e2e.test_metrics import scrape, value

pytestmark = pytest.mark.e2e


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: scripts/test.sh installs it (apt-get install prometheus)",
                    pytrace=False)
    return found


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


@pytest.fixture
def metrics_server(start_server: Callable[..., ServerProcess], sqlite_url: str) -> tuple[ServerProcess, int, str]:
    _, admin_secret = bootstrap(sqlite_url)
    port = free_port()
    server = start_server(sqlite_url, "--metrics-listen", f"127.0.0.1:{port}")
    created = server.stub().CreateKey(pb.CreateKeyRequest(owner_id="o"),
                                      metadata=[("authorization", f"Bearer {admin_secret}")], timeout=5)
    return server, port, created.secret


@pytest.fixture
def prometheus(tmp_path: Path, metrics_server: tuple[ServerProcess, int, str]) -> Iterator[str]:
    _, metrics_port, _ = metrics_server
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "keysvc", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{web}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        assert proc.returncode == 0, (tmp_path / "prometheus.log").read_text(errors="replace")


def _query(base: str, expr: str) -> list[dict[str, object]]:
    body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _wait_for_value(base: str, expr: str, want: float, timeout: float = 60.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            result = _query(base, expr)
        except OSError:  # not listening yet
            result = []
        if result and float(result[0]["value"][1]) == want:  # type: ignore[index]
            return result
        time.sleep(0.2)
    raise AssertionError(f"{expr} did not reach {want} within {timeout}s: {result}")


def test_prometheus_scrapes_keysvc(prometheus: str, metrics_server: tuple[ServerProcess, int, str]) -> None:
    server, port, secret = metrics_server
    stub = server.stub()
    for _ in range(3):
        assert stub.Validate(pb.ValidateRequest(key=secret), timeout=5).valid
    stub.Validate(pb.ValidateRequest(key="garbage"), timeout=5)
    direct = scrape(port)  # what keysvc says now; the admin call's own authentication counts too

    up = _wait_for_value(prometheus, 'up{job="keysvc"}', 1)
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"  # type: ignore[index]
    for code in ("VALID", "MALFORMED"):
        want = value(direct, "keysvc_validations_total", code=code)
        assert want >= {"VALID": 3, "MALFORMED": 1}[code]
        _wait_for_value(prometheus, f'sum(keysvc_validations_total{{job="keysvc",code="{code}"}})', want)
    # Prometheus found no fault in what it ingested (a malformed line fails the whole scrape).
    targets = json.loads(_get(f"{prometheus}/api/v1/targets"))["data"]["activeTargets"]
    assert [t["lastError"] for t in targets] == [""]


def test_promtool_finds_no_lint_problem_in_metrics(metrics_server: tuple[ServerProcess, int, str]) -> None:
    server, port, secret = metrics_server
    server.stub().Validate(pb.ValidateRequest(key=secret), timeout=5)
    exposition = _get(f"http://127.0.0.1:{port}/metrics")
    assert b"keysvc_validations_total" in exposition
    done = subprocess.run([_binary("promtool"), "check", "metrics"], input=exposition,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout.strip(), (done.stdout + done.stderr).decode()
