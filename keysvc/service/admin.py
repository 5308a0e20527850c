"""Key and policy lifecycle.

Each change is one store transaction with one Event, wrapped in one audit
span. Knows no protobuf.
"""

from keysvc.service._admin_base import KeyView, PolicyImpact
from keysvc.service._admin_keys import UPDATABLE_KEY_FIELDS, KeyAdmin
from keysvc.service._admin_policies import PolicyAdmin

__all__ = ["UPDATABLE_KEY_FIELDS", "AdminService", "KeyView", "PolicyImpact"]


class AdminService(KeyAdmin, PolicyAdmin):
    """Admin operations. `actor` is the key_id of the authenticated admin key.

    Args:
        store: the backend.
        auditor: records every change and refusal (the app's telemetry).
        default_prefix: prefix of new keys when the request names none.
        clock: wall clock.
        on_change: called with the event of every change this service wrote,
            once the store took it, so this process applies its own change at
            once instead of waiting for its event follower.
    """
