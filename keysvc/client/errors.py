"""Typed errors of `keysvc.client`: one class per gRPC status a caller acts on differently.

Each carries the server's message, which names the field and the rule and
never echoes a value; none carries the request, its metadata or the admin key.
"""

from __future__ import annotations

import re

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ClientClosed",
    "ClientConfigError",
    "ClientError",
    "Conflict",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_from",
]


class ClientError(Exception):
    """A call failed; `code` is the gRPC status, `message` the server's (value-free) explanation."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, method: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code.name}, method={self.method!r}, "
                f"message={self.message!r})")


class InvalidArgument(ClientError):
    """INVALID_ARGUMENT: a request field broke a rule; `field` names it ("" when the message does not)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, method: str = "") -> None:
        super().__init__(message, code=code, method=method)
        match = _FIELD_RE.match(message)
        self.field = match.group(1) if match else ""


class NotFound(ClientError):
    """NOT_FOUND: no such key, policy or version."""

    code = grpc.StatusCode.NOT_FOUND


class Conflict(ClientError):
    """The write met another state: ALREADY_EXISTS, or ABORTED (a concurrent change won)."""


class AlreadyExists(Conflict):
    """ALREADY_EXISTS: e.g. a policy id that is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(Conflict):
    """ABORTED: a concurrent change won (expected_version/revision is stale): re-read, then decide."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ClientError):
    """FAILED_PRECONDITION: refused in the current state (a breaking change, the last admin key...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ClientError):
    """OUT_OF_RANGE: an event cursor older than the retained log: resynchronise."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unauthenticated(ClientError):
    """UNAUTHENTICATED: no admin key, or one the server does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClientError):
    """PERMISSION_DENIED: the admin key may not do this (scope or authority)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ClientError):
    """RESOURCE_EXHAUSTED: request too large, or the server's concurrency limit (after retries)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ClientError):
    """UNAVAILABLE after every retry: the server or its store did not answer (a write may have happened)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Unavailable, TimeoutError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline (a write may have happened)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ClientClosed(ClientError):
    """The client was closed (`close()`): make a new one. Raised for every call after it, never retried."""

    code = grpc.StatusCode.CANCELLED


class ClientConfigError(ValueError):
    """The client was configured wrongly (TLS files, target): raised before any call."""


_FIELD_RE = re.compile(r"([a-z_][a-z0-9_.]*):\s")

_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    kind.code: kind
    for kind in (InvalidArgument, NotFound, AlreadyExists, Aborted, FailedPrecondition, OutOfRange,
                 Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable, DeadlineExceeded)
}


def error_from(code: grpc.StatusCode, details: str | None, method: str) -> ClientError:
    """The typed error for a failed call's status and details."""
    kind = _BY_CODE.get(code, ClientError)
    return kind(details or "", code=code, method=method)
