"""`keysvc bench --quick` runs end to end: a smoke test that it works, never a timing assertion."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keysvc.bench.command import format_report
from keysvc.bench.scenarios import NAMES
from tests.e2e._servers import keysvc_cmd

pytestmark = pytest.mark.e2e


def bench(*flags: str, timeout: float) -> dict[str, Any]:
    out = subprocess.run(keysvc_cmd("bench", "--quick", "--json", *flags),
                         check=False, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


@pytest.mark.timeout(200)
def test_quick_bench_runs_every_scenario_cleanly() -> None:
    report = bench(timeout=170)
    rows = report["scenarios"]
    assert [row["name"] for row in rows] == list(NAMES)
    for row in rows:
        assert not row["errors"], row
        # extauthz is "n/a" only on a server without the Envoy servicer.
        assert row["status"] == "ok" or (row["name"] == "extauthz" and row["status"] == "n/a"), row
        if row["status"] == "ok":
            assert row["calls"] > 0
            assert row["qps"] > 0
            assert row["cpu_us_per_call"] > 0
    text = format_report(report)
    for name in NAMES:
        assert f"\n{name} " in text


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
