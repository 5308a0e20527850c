"""The stores' JSON forms cover every field, so adding one to the model cannot drop it silently."""

from __future__ import annotations

import dataclasses

import pytest

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.model import Event, EventType, KeyRecord, Policy, QuotaRefill, RateLimit
from keysvc.store import codec as _codec

pytestmark = pytest.mark.unit

RECORD = KeyRecord(
    key_id="k1", key_hash="h", hint="ks_abcd", owner_id="o", created_at=1.5, updated_at=2.5,
    name="n", policy_id="p", scopes=("a", "b"), metadata={"x": "y"}, enabled=False,
    expires_at=3.5, revoke_at=4.5, rotated_from="k0", rotated_to="k2", has_quota=True, revision=7,
)
POLICY = Policy(
    policy_id="p", version=3, created_at=1.0, updated_at=2.0, description="d", scopes=("a",),
    allowed_cidrs=("10.0.0.0/8",), rate_limit=RateLimit(5, 60), quota_refill=QuotaRefill(9, 3600),
    max_key_ttl_s=86400, updated_by="admin", change_note="why",
)
EVENT = Event(type=EventType.KEY_ROTATED, at=1.0, actor="a", key_id="k", key_hash="h",
              policy_id="p", policy_version=2, cursor="")


def test_every_field_round_trips() -> None:
    assert set(_codec.record_to_dict(RECORD)) == {f.name for f in dataclasses.fields(KeyRecord)}
    assert set(_codec.policy_to_dict(POLICY)) == {f.name for f in dataclasses.fields(Policy)}
    assert set(_codec.event_to_dict(EVENT)) | {"cursor"} == {f.name for f in dataclasses.fields(Event)}
    assert _codec.record_from_dict(_codec.loads(_codec.dumps(_codec.record_to_dict(RECORD)))) == RECORD
    assert _codec.policy_from_dict(_codec.loads(_codec.dumps(_codec.policy_to_dict(POLICY)))) == POLICY
    event = _codec.event_from_dict(_codec.loads(_codec.dumps(_codec.event_to_dict(EVENT))), "7")
    assert event == dataclasses.replace(EVENT, cursor="7")


def test_unknown_fields_are_ignored() -> None:
    data = _codec.record_to_dict(RECORD) | {"added_later": 1}
    assert _codec.record_from_dict(data) == RECORD


def test_page_tokens_are_checked() -> None:
    token = _codec.encode_token("keys", "k/ü")
    assert _codec.decode_token("keys", token) == "k/ü"
    for bad in ("", "!!!", "Zm9v", _codec.encode_token("policies", "k")):
        with pytest.raises(InvalidArgumentError):
            _codec.decode_token("keys", bad)
    with pytest.raises(InvalidArgumentError):
        _codec.decode_int_token("v", _codec.encode_token("v", "x1"))
    assert _codec.paginate([1, 2, 3], 2, "n", str) == ([1, 2], _codec.encode_token("n", "2"))
    assert _codec.paginate([1, 2], 2, "n", str) == ([1, 2], "")
