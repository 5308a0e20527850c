"""Input limits for admin requests: every field bounded, every error named.

Messages name the field, the rule and at most an entry's position: never the
value, which may be a secret pasted in the wrong field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.keys import holds_key
from keysvc.core.policy import parse_cidrs

MAX_NAME = 128
MAX_ID = 128
MAX_SCOPES = 64
MAX_SCOPE_LEN = 128
MAX_METADATA = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_CIDRS = 64
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_GRACE_S = 90 * 86400

_SCOPE_RE = re.compile(r"[A-Za-z0-9:._*/-]+")
_OWNER_RE = re.compile(r"[A-Za-z0-9:._@/+-]+")
_POLICY_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_KEY_ID_RE = re.compile(r"key_[0-9A-Za-z]{17}")


def no_key(field: str, value: str) -> str:
    """Return `value` unless it holds a key: one pasted in the wrong field would be stored in plain."""
    if holds_key(value):
        raise InvalidArgumentError(
            f"{field}: looks like an API key; keys are never stored, send it nowhere but where a key goes"
        )
    return value


def text(field: str, value: str, limit: int = MAX_NAME, *, stored: bool = True) -> str:
    """Return `value` if printable, at most `limit` chars and (when `stored`) holding no key.

    A text only audited (redacted there), not stored, may name a key: "revoked: leaked ks_...".
    """
    if len(value) > limit or not value.isprintable():
        raise InvalidArgumentError(f"{field}: at most {limit} printable characters")
    return no_key(field, value) if stored else value


def owner_id(value: str) -> str:
    """Return a valid, non-empty owner id."""
    if not value:
        raise InvalidArgumentError("owner_id: required")
    if len(value) > MAX_ID or not _OWNER_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"owner_id: at most {MAX_ID} of letters, digits and : . _ @ / + -"
        )
    return no_key("owner_id", value)


def key_id(value: str) -> str:
    """Return `value` if it has the shape of a key id."""
    if not _KEY_ID_RE.fullmatch(value):
        raise InvalidArgumentError("key_id: not a key id (key_ followed by 17 letters or digits)")
    return value


def policy_id(value: str, *, required: bool = True) -> str:
    """Return a valid policy id ("" allowed when not required)."""
    if not value and not required:
        return value
    if not _POLICY_ID_RE.fullmatch(value):
        raise InvalidArgumentError(
            "policy_id: 1-63 of lower-case letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return value


def scopes(field: str, values: Iterable[str]) -> tuple[str, ...]:
    """Return de-duplicated, order-preserving valid scopes."""
    result = tuple(dict.fromkeys(values))
    if len(result) > MAX_SCOPES:
        raise InvalidArgumentError(f"{field}: at most {MAX_SCOPES} scopes")
    for position, scope in enumerate(result):
        if len(scope) > MAX_SCOPE_LEN or not _SCOPE_RE.fullmatch(scope):
            raise InvalidArgumentError(
                f"{field}: entry {position} is not a scope (1-{MAX_SCOPE_LEN} of letters, digits "
                "and : . _ * / -)"
            )
        no_key(field, scope)
    return result


def metadata(values: Mapping[str, str]) -> dict[str, str]:
    """Return bounded metadata."""
    if len(values) > MAX_METADATA:
        raise InvalidArgumentError(f"metadata: at most {MAX_METADATA} entries")
    for k, v in values.items():
        if not k or len(k) > MAX_METADATA_KEY or not k.isprintable():
            raise InvalidArgumentError(f"metadata: keys are 1-{MAX_METADATA_KEY} printable characters")
        if len(v) > MAX_METADATA_VALUE:
            raise InvalidArgumentError(f"metadata: values are at most {MAX_METADATA_VALUE} characters")
        no_key("metadata", k)
        no_key("metadata", v)
    return dict(values)


def cidrs(values: Iterable[str]) -> tuple[str, ...]:
    """Return normalised CIDRs (as the network they denote)."""
    result = tuple(dict.fromkeys(values))
    if len(result) > MAX_CIDRS:
        raise InvalidArgumentError(f"allowed_cidrs: at most {MAX_CIDRS}")
    for position, value in enumerate(result):
        try:
            parse_cidrs((value,))
        except ValueError:
            raise InvalidArgumentError(
                f"allowed_cidrs: entry {position} is not an IP address or network"
            ) from None
    return tuple(dict.fromkeys(str(n) for n in parse_cidrs(result)))


def page_size(value: int) -> int:
    """Clamp a page size: 0 means the default."""
    if value <= 0:
        return DEFAULT_PAGE
    return min(value, MAX_PAGE)


def duration(field: str, seconds: float, maximum: float = MAX_GRACE_S) -> float:
    """Return a non-negative duration within `maximum`."""
    if not 0 <= seconds <= maximum:  # also refuses nan
        raise InvalidArgumentError(f"{field}: must be between 0 and {int(maximum)} seconds")
    return seconds


def plain_key_fields(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The checked key update fields that need no store read: name, metadata, scopes, enabled."""
    fields: dict[str, Any] = {}
    if "name" in changes:
        fields["name"] = text("name", changes["name"])
    if "metadata" in changes:
        fields["metadata"] = metadata(changes["metadata"])
    if "scopes" in changes:
        fields["scopes"] = scopes("scopes", changes["scopes"])
    if "enabled" in changes:
        fields["enabled"] = bool(changes["enabled"])
    return fields
