"""`keysvc bench --scenarios hit,inprocess`: the in-process row runs and is set beside the sidecar's hit."""

from __future__ import annotations

import pytest

from keysvc.bench.command import format_report
from tests.e2e.test_bench import bench

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(200)
def test_inprocess_row_is_measured_beside_the_sidecar_hit() -> None:
    report = bench("--scenarios", "hit,inprocess", "--duration", "0.5", timeout=170)
    rows = {row["name"]: row for row in report["scenarios"]}
    inprocess = rows["inprocess"]
    assert inprocess["status"] == "ok" and not inprocess["errors"], inprocess
    assert inprocess["cpu_us_per_call"] > 0 and inprocess["calls"] > 0
    assert any("cheaper than a sidecar hit" in note for note in inprocess["notes"]), inprocess["notes"]
    assert any("asyncio:" in note for note in inprocess["notes"]), inprocess["notes"]
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["inprocess CPU/call <= 3 us"]["measured"] == inprocess["cpu_us_per_call"]
    assert targets["hit CPU/call / inprocess CPU/call >= 50"]["measured"] is not None
    assert "\ninprocess " in format_report(report)
