"""The memory bench's keys look like production keys: what the cache keeps differs from key to key."""

from __future__ import annotations

from collections import Counter

import pytest

from keysvc.bench.memory import key_shape

pytestmark = pytest.mark.unit


def test_every_key_has_its_own_metadata_with_three_to_five_entries() -> None:
    shapes = [key_shape(i) for i in range(10_000)]
    metadata = [tuple(sorted(m.items())) for _, _, m in shapes]
    assert len(set(metadata)) == len(metadata)
    assert {len(m) for m in metadata} == {3, 4, 5}
    # Low-cardinality values (plan, region) repeat, as in production; tenant ids do not.
    assert len({dict(m)["plan"] for m in metadata}) <= 5
    assert len({dict(m)["tenant"] for m in metadata}) == len(metadata)


def test_keys_have_two_scopes_and_owners_hold_a_few_keys() -> None:
    shapes = [key_shape(i) for i in range(10_000)]
    assert all(len(scopes) == 2 == len(set(scopes)) for _, scopes, _ in shapes)
    assert len({scopes for _, scopes, _ in shapes}) > 10
    assert set(Counter(owner for owner, _, _ in shapes).values()) == {4}


def test_the_comparison_keys_all_carry_the_same_metadata_and_differ_otherwise() -> None:
    shapes = [key_shape(i, varied=False) for i in range(1000)]
    assert len({tuple(m.items()) for _, _, m in shapes}) == 1
    assert [(o, s) for o, s, _ in shapes] == [key_shape(i)[:2] for i in range(1000)]
