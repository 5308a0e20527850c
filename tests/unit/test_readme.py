"""The README cannot drift from the code it documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from keysvc.app.settings import markdown_table

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_matches_settings() -> None:
    text = README.read_text()
    start, end = "<!-- settings:start -->\n", "\n<!-- settings:end -->"
    assert start in text and end in text
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), "regenerate with: python -c 'from keysvc.app.settings import markdown_table as t; print(t())'"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "bash scripts/test.sh" in README.read_text()
