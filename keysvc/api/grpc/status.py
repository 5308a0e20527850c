"""The one place typed errors, refused decisions and HTTP refusals become gRPC statuses."""

from __future__ import annotations

import grpc
import structlog

from keysvc.api.authz import refusal_status
from keysvc.core import errors
from keysvc.core.model import Code

__all__ = ["status_for", "status_of_decision", "status_of_http"]

log = structlog.get_logger("keysvc.api")

_CODES: dict[type[errors.KeysvcError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConflictError: grpc.StatusCode.ABORTED,
    errors.CursorExpiredError: grpc.StatusCode.OUT_OF_RANGE,
    errors.StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}

# A refusal's HTTP status -> its gRPC status (ext_authz's CheckResponse, admin auth).
_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_of_http(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP refusal (UNAVAILABLE for any other status)."""
    return _BY_HTTP.get(status, grpc.StatusCode.UNAVAILABLE)


def status_of_decision(code: Code) -> grpc.StatusCode:
    """The gRPC status of a refused decision: the class its HTTP status names."""
    return status_of_http(refusal_status(code))


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """Map an exception to a status and a message safe to send to the caller.

    Typed errors carry messages written for callers (never a secret). Anything
    else is INTERNAL: logged here with its traceback, and answered with a
    generic message.
    """
    for kind in type(exc).__mro__:
        code = _CODES.get(kind)
        if code is not None:
            return code, str(exc)
    log.error("internal error", method=method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"
