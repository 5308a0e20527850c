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


def test_every_change_to_the_table_holds_its_lock() -> None:
    """Several threads share values: adding and starting over are writers, under one lock."""
    table: SharedValues[str] = SharedValues(max_size=2)
    unlocked: list[str] = []

    class _Guarded(dict[object, str]):
        def _check(self, what: str) -> None:
            if not table._lock.locked():
                unlocked.append(what)

        def __setitem__(self, key: object, value: str) -> None:
            self._check("set")
            super().__setitem__(key, value)

        def setdefault(self, key: object, value: str) -> str:  # type: ignore[override]
            self._check("setdefault")
            return super().setdefault(key, value)

        def clear(self) -> None:
            self._check("clear")
            super().clear()

    table._values = _Guarded()
    for value in "abcde":
        table.share(value, value)
    assert table.share("e", "e") == "e"
    assert unlocked == []
