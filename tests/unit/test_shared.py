"""SharedValues: equal values become one object, within a bound."""

from __future__ import annotations

import pytest

from keysvc.core.shared import SharedValues

pytestmark = pytest.mark.unit


def test_equal_values_are_one_object() -> None:
    table: SharedValues[tuple[str, ...]] = SharedValues()
    first = tuple("a b".split())  # built at run time: not one shared constant
    again = tuple("a b".split())
    assert first is not again
    assert table.share(first, first) is first
    assert table.share(again, again) is first
    other = ("c",)
    assert table.share(other, other) is other


def test_a_full_table_starts_over_and_stays_bounded() -> None:
    table: SharedValues[dict[str, str]] = SharedValues(max_size=2)
    values = [{"k": str(i)} for i in range(5)]
    for value in values:
        assert table.share(tuple(value.items()), value) is value  # all distinct
    assert len(table._values) <= 2
    late = {"k": "4"}
    assert table.share(tuple(late.items()), late) is values[4]  # the last one is still there
