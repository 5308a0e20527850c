"""`keysvc.client`: a Python client for the KeyService, sync (`Client`) and asyncio (`AsyncClient`).

For other processes: it needs only grpcio and the generated stubs, never the
server's packages. Every call has a deadline; Validate and reads are retried
on UNAVAILABLE, and so are writes, each with one `request_id` for all its
tries, so a retried write acts once. Results are typed (`keysvc.client.types`),
failures are typed exceptions (`keysvc.client.errors`).

    from keysvc.client import Client

    with Client("127.0.0.1:50051") as client:
        result = client.validate(api_key, required_scopes=["orders:read"])
        if not result.valid:
            ...  # result.code says why
"""

from __future__ import annotations

from keysvc.client._calls import Retry
from keysvc.client._channel import Tls
from keysvc.client._convert import to_dict
from keysvc.client.aio import AsyncClient
from keysvc.client.errors import (
    Aborted,
    AlreadyExists,
    ClientClosed,
    ClientConfigError,
    ClientError,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from keysvc.client.sync import Client, EventStream
from keysvc.client.types import (
    Code,
    CreatedKey,
    Event,
    Impact,
    Key,
    KeyStatus,
    Page,
    Policy,
    PolicyChange,
    QuotaRefill,
    RateLimit,
    RateLimitState,
    RotatedKey,
    ValidationResult,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ClientConfigError",
    "ClientError",
    "Code",
    "Conflict",
    "CreatedKey",
    "DeadlineExceeded",
    "Event",
    "EventStream",
    "FailedPrecondition",
    "Impact",
    "InvalidArgument",
    "Key",
    "KeyStatus",
    "NotFound",
    "OutOfRange",
    "Page",
    "PermissionDenied",
    "Policy",
    "PolicyChange",
    "QuotaRefill",
    "RateLimit",
    "RateLimitState",
    "ResourceExhausted",
    "Retry",
    "RotatedKey",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "ValidationResult",
    "to_dict",
]
