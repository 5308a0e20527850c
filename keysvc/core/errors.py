"""Typed errors raised below the transport edge.

The api layer maps each of them to one gRPC status in one place
(`keysvc.api.grpc.status`); anything else is INTERNAL.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "ConflictError",
    "CursorExpiredError",
    "DuplicateRequestError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "KeysvcError",
    "NotFoundError",
    "PermissionDeniedError",
    "StoreUnavailableError",
    "UnauthenticatedError",
]


class KeysvcError(Exception):
    """Base of every error keysvc raises on purpose.

    Args:
        message: for the caller: names the field and the rule, never a value
            that could be a secret.
        rule: a short stable name of the rule that refused (e.g. "actor_scopes"),
            recorded on the audit span of the refused change.
    """

    def __init__(self, message: str = "", *, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


class InvalidArgumentError(KeysvcError):
    """A request field is missing, too large or out of range."""


class NotFoundError(KeysvcError):
    """The named key or policy (or policy version) does not exist."""


class AlreadyExistsError(KeysvcError):
    """A key or policy with that id exists already."""


class DuplicateRequestError(AlreadyExistsError):
    """A write's request_id is recorded already: the request was made before."""


class FailedPreconditionError(KeysvcError):
    """The request is valid but the target's state refuses it."""


class ConflictError(KeysvcError):
    """An optimistic-concurrency check failed: someone else changed it first."""


class CursorExpiredError(KeysvcError):
    """An event cursor is older than the retained event log."""


class StoreUnavailableError(KeysvcError):
    """The store did not answer in time or refused the connection."""


class UnauthenticatedError(KeysvcError):
    """Admin credentials are missing or not a working key."""


class PermissionDeniedError(KeysvcError):
    """The credentials are good but lack the needed scope."""


class ConfigError(KeysvcError):
    """A setting is invalid; the message names the variable."""
