"""A non-editable install (the README quick start's `pip install .`) carries the Lua scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LUA = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "keysvc/store/redis/lua").glob("*.lua"))


def test_the_scripts_are_files() -> None:
    assert {Path(p).stem for p in LUA} >= {"put_keys", "put_policy", "take", "create_quota", "touch",
                                          "ensure_meta", "mark_check", "mark_write"}


def test_the_wheel_ships_every_script(tmp_path: Path) -> None:
    # Built from a clean copy: setuptools builds in place and would reuse (and leave) build/.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "keysvc", src / "keysvc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, timeout=300, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("keysvc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert set(LUA) <= names, sorted(set(LUA) - names)
        # and the loader finds them there: run it from the unpacked wheel alone
        archive.extractall(tmp_path / "site")
    probe = "from keysvc.store.redis import scripts; print(len(scripts.TAKE) > 100)"
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {probe}"
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.stdout.strip() == "True"
