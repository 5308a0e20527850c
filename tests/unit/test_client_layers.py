"""The client's import contract holds, and an import of a server package from keysvc.client breaks it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.test_layers import ROOT, _lint

CONTRACT = "The client imports no server package"


@pytest.mark.parametrize("line", [
    "from keysvc.service.validator import Validator  # noqa",
    "from keysvc.app import tls  # noqa",
    "import redis  # noqa",
])
def test_a_server_import_in_the_client_fails_the_lint(tmp_path: Path, line: str) -> None:
    shutil.copytree(ROOT / "keysvc", tmp_path / "keysvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "keysvc" / "client" / "sync.py"
    target.write_text(target.read_text() + f"\n{line}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(CONTRACT in ln for ln in broken), result.stdout
