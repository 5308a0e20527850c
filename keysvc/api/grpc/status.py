"""The one place typed errors become gRPC statuses."""

from __future__ import annotations

import grpc
import structlog

from keysvc.core import errors

__all__ = ["status_for"]

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
