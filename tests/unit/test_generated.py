"""The generated stubs in keysvc/v1 are exactly what protos/ produces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = gen
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "keysvc" / "v1").iterdir())
    committed = sorted(
        p.relative_to(ROOT) for p in (ROOT / "keysvc" / "v1").iterdir() if p.suffix in (".py", ".pyi")
    )
    assert fresh == committed
    for rel in fresh:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), (
            f"{rel} is stale: run python scripts/gen_protos.py"
        )
