"""The layer contracts in pyproject.toml [tool.importlinter] hold, and a crossing import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", str(root / "pyproject.toml")], cwd=root, capture_output=True, text=True,
        timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break on purpose."""
    shutil.copytree(ROOT / "keysvc", tmp_path / "keysvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("core/keys.py", "import sqlite3  # noqa", "The pure core does no I/O"),
    ("core/policy.py", "from keysvc.store.base import Store  # noqa", "Layers: app > api"),
    ("api/grpc/keyservice.py", "from keysvc.store.base import Store  # noqa", "never reaches into a store"),
    ("service/admin.py", "from keysvc.app import telemetry  # noqa", "Layers: app > api"),
    ("service/validator.py", "from keysvc.v1 import keysvc_pb2  # noqa", "Services know no protobuf"),
    ("api/authz.py", "from keysvc.app.settings import split_listen  # noqa", "Only the entry points"),
])
def test_a_crossing_import_fails_the_lint(tree: Path, module: str, line: str, contract: str) -> None:
    _append(tree / "keysvc" / module, line)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), result.stdout


def test_the_readme_map_is_the_enforced_one() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("```", 2)[1]
    shown = [line.split("/", 1)[0] for line in section.splitlines() if line and not line.startswith(" ")]
    assert ["keysvc." + name for name in shown] == layers
    for package in shown:  # every layer it names exists
        assert (ROOT / "keysvc" / package / "__init__.py").is_file()


def _private_uses(path: Path) -> list[str]:
    """Underscore names `path` takes from keysvc modules: imported, or read off an imported module."""
    import ast

    tree = ast.parse(path.read_text())
    modules: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keysvc"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name.startswith("keysvc"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_public_test_helpers_use_only_public_api(tmp_path: Path) -> None:
    assert _private_uses(ROOT / "keysvc" / "testing.py") == []
    # The check itself sees a private use.
    (probe := tmp_path / "probe.py").write_text("from keysvc.app import telemetry\ntelemetry._SINK.stream = None\n")
    assert _private_uses(probe) == ["telemetry._SINK"]


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "keysvc").rglob("*.py")
            if "v1" not in p.relative_to(ROOT / "keysvc").parts
            and (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
