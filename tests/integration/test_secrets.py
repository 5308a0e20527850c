"""The plaintext key exists only in CreateKey/RotateKey responses: not in spans, logs or stores."""

from __future__ import annotations

import json

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core.cache import KeyCache
from keysvc.core.errors import NotFoundError
from keysvc.core.model import Code, Policy
from keysvc.service.admin import AdminService
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.testing import capture_logs, capture_spans

pytestmark = pytest.mark.integration


def span_text(span: object) -> str:
    """Everything a span exporter would send, as text."""
    from opentelemetry.sdk.trace import ReadableSpan

    assert isinstance(span, ReadableSpan)
    return span.to_json()


async def test_no_secret_in_spans_or_logs(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    validator = Validator(store, KeyCache(max_keys=10, ttl_s=30, negative_max=10, negative_ttl_s=1,
                                          stale_window_s=5))
    with capture_spans() as spans, capture_logs() as logs:
        await admin.create_policy("key_admin", Policy("p", 0, 0.0, 0.0, scopes=("a", "b")))
        view, secret = await admin.create_key("key_admin", owner_id="o", policy_id="p", name="n")
        key_id = view.record.key_id
        assert (await validator.validate(ValidationRequest(secret, ["a"]))).code is Code.VALID
        await admin.update_key("key_admin", key_id, {"scopes": ["a"]})
        new_view, new_secret, _ = await admin.rotate_key("key_admin", key_id, grace_s=60)
        await admin.revoke_key("key_admin", new_view.record.key_id, reason=f"leaked {new_secret}")
        with pytest.raises(NotFoundError):
            await admin.get_key("key_00000000000000000")
    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    for action in ("policy.create", "key.create", "key.update", "key.rotate", "key.revoke"):
        assert f"audit.{action}" in names
    create = next(s for s in finished if s.name == "audit.key.create")
    assert create.attributes is not None
    assert create.attributes["keysvc.actor"] == "key_admin"
    assert create.attributes["keysvc.target.key_id"] == key_id
    assert create.attributes["keysvc.outcome"] == "ok"
    revoke = next(s for s in finished if s.name == "audit.key.revoke")
    assert revoke.attributes is not None and "[REDACTED]" in str(revoke.attributes["keysvc.reason"])

    records = logs.records()
    assert [r["action"] for r in records if r.get("event") == "audit"] == [
        "policy.create", "key.create", "key.update", "key.rotate", "key.revoke"]
    text = "\n".join(span_text(s) for s in finished) + "\n" + logs.getvalue()
    for plaintext in (secret, new_secret):
        assert plaintext not in text
        assert plaintext[3:] not in text
    assert json.dumps(key_id)[1:-1] in text
