"""keysvc.app.cli.main.parse_duration: the CLI's duration arguments."""

from __future__ import annotations

import argparse

import pytest

from keysvc.app.cli.main import parse_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("30d", 30 * 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("1m500ms", 60.5),
        (" 5m ", 300.0),
    ],
)
def test_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "5x", "1h 30m", "h", "m5", "1h30", "5 m", "1.h", "-1h", "5M", "1h,30m", "30d "
     "x"],
)
def test_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-infinity", "-5", "-1.5"])
def test_rejects_non_finite_and_negative_seconds(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)
