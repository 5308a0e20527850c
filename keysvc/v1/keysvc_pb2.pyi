import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODE_UNSPECIFIED: _ClassVar[Code]
    CODE_VALID: _ClassVar[Code]
    CODE_MALFORMED: _ClassVar[Code]
    CODE_NOT_FOUND: _ClassVar[Code]
    CODE_DISABLED: _ClassVar[Code]
    CODE_EXPIRED: _ClassVar[Code]
    CODE_REVOKED: _ClassVar[Code]
    CODE_INSUFFICIENT_SCOPE: _ClassVar[Code]
    CODE_IP_NOT_ALLOWED: _ClassVar[Code]
    CODE_RATE_LIMITED: _ClassVar[Code]
    CODE_QUOTA_EXHAUSTED: _ClassVar[Code]
    CODE_UNAVAILABLE: _ClassVar[Code]

class KeyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATUS_UNSPECIFIED: _ClassVar[KeyStatus]
    KEY_STATUS_ACTIVE: _ClassVar[KeyStatus]
    KEY_STATUS_DISABLED: _ClassVar[KeyStatus]
    KEY_STATUS_EXPIRED: _ClassVar[KeyStatus]
    KEY_STATUS_REVOKING: _ClassVar[KeyStatus]
    KEY_STATUS_REVOKED: _ClassVar[KeyStatus]
CODE_UNSPECIFIED: Code
CODE_VALID: Code
CODE_MALFORMED: Code
CODE_NOT_FOUND: Code
CODE_DISABLED: Code
CODE_EXPIRED: Code
CODE_REVOKED: Code
CODE_INSUFFICIENT_SCOPE: Code
CODE_IP_NOT_ALLOWED: Code
CODE_RATE_LIMITED: Code
CODE_QUOTA_EXHAUSTED: Code
CODE_UNAVAILABLE: Code
KEY_STATUS_UNSPECIFIED: KeyStatus
KEY_STATUS_ACTIVE: KeyStatus
KEY_STATUS_DISABLED: KeyStatus
KEY_STATUS_EXPIRED: KeyStatus
KEY_STATUS_REVOKING: KeyStatus
KEY_STATUS_REVOKED: KeyStatus

class ValidateRequest(_message.Message):
    __slots__ = ("key", "required_scopes", "client_ip", "cost")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    key: str
    required_scopes: _containers.RepeatedScalarFieldContainer[str]
    client_ip: str
    cost: int
    def __init__(self, key: _Optional[str] = ..., required_scopes: _Optional[_Iterable[str]] = ..., client_ip: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class RateLimitStatus(_message.Message):
    __slots__ = ("limit", "remaining", "reset_at")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_AT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    remaining: int
    reset_at: _timestamp_pb2.Timestamp
    def __init__(self, limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("valid", "code", "key_id", "owner_id", "scopes", "metadata", "expires_at", "policy_id", "policy_version", "rate_limit", "quota_remaining", "message")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_REMAINING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    code: Code
    key_id: str
    owner_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    policy_id: str
    policy_version: int
    rate_limit: RateLimitStatus
    quota_remaining: int
    message: str
    def __init__(self, valid: _Optional[bool] = ..., code: _Optional[_Union[Code, str]] = ..., key_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., rate_limit: _Optional[_Union[RateLimitStatus, _Mapping]] = ..., quota_remaining: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchValidateRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ValidateRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ValidateRequest, _Mapping]]] = ...) -> None: ...

class BatchValidateResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ValidateResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ValidateResponse, _Mapping]]] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("key_id", "hint", "name", "owner_id", "policy_id", "scopes", "metadata", "enabled", "status", "created_at", "updated_at", "expires_at", "revoke_at", "last_used_at", "quota_remaining", "rotated_from", "rotated_to", "revision")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_REMAINING_FIELD_NUMBER: _ClassVar[int]
    ROTATED_FROM_FIELD_NUMBER: _ClassVar[int]
    ROTATED_TO_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    hint: str
    name: str
    owner_id: str
    policy_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    enabled: bool
    status: KeyStatus
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoke_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    quota_remaining: int
    rotated_from: str
    rotated_to: str
    revision: int
    def __init__(self, key_id: _Optional[str] = ..., hint: _Optional[str] = ..., name: _Optional[str] = ..., owner_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., enabled: _Optional[bool] = ..., status: _Optional[_Union[KeyStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quota_remaining: _Optional[int] = ..., rotated_from: _Optional[str] = ..., rotated_to: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "owner_id", "policy_id", "scopes", "metadata", "expires_at", "ttl", "prefix", "quota", "request_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner_id: str
    policy_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    prefix: str
    quota: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., owner_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., prefix: _Optional[str] = ..., quota: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret", "secret_reissued")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    SECRET_REISSUED_FIELD_NUMBER: _ClassVar[int]
    key: Key
    secret: str
    secret_reissued: bool
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., secret: _Optional[str] = ..., secret_reissued: _Optional[bool] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("owner_id", "status", "page_size", "page_token", "unused_for")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNUSED_FOR_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    status: KeyStatus
    page_size: int
    page_token: str
    unused_for: _duration_pb2.Duration
    def __init__(self, owner_id: _Optional[str] = ..., status: _Optional[_Union[KeyStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., unused_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "key", "update_mask", "expected_revision", "request_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key: Key
    update_mask: _field_mask_pb2.FieldMask
    expected_revision: int
    request_id: str
    def __init__(self, key_id: _Optional[str] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., expected_revision: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id", "grace_period", "reason", "request_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grace_period: _duration_pb2.Duration
    reason: str
    request_id: str
    def __init__(self, key_id: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: Key
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id", "grace_period", "request_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grace_period: _duration_pb2.Duration
    request_id: str
    def __init__(self, key_id: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("key", "secret", "previous", "secret_reissued")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    SECRET_REISSUED_FIELD_NUMBER: _ClassVar[int]
    key: Key
    secret: str
    previous: Key
    secret_reissued: bool
    def __init__(self, key: _Optional[_Union[Key, _Mapping]] = ..., secret: _Optional[str] = ..., previous: _Optional[_Union[Key, _Mapping]] = ..., secret_reissued: _Optional[bool] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("requests", "window")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    requests: int
    window: _duration_pb2.Duration
    def __init__(self, requests: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class QuotaRefill(_message.Message):
    __slots__ = ("amount", "interval")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    amount: int
    interval: _duration_pb2.Duration
    def __init__(self, amount: _Optional[int] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("policy_id", "version", "description", "scopes", "allowed_cidrs", "rate_limit", "quota_refill", "max_key_ttl", "created_at", "updated_at", "updated_by", "change_note")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_REFILL_FIELD_NUMBER: _ClassVar[int]
    MAX_KEY_TTL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    version: int
    description: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    rate_limit: RateLimit
    quota_refill: QuotaRefill
    max_key_ttl: _duration_pb2.Duration
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    change_note: str
    def __init__(self, policy_id: _Optional[str] = ..., version: _Optional[int] = ..., description: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., allowed_cidrs: _Optional[_Iterable[str]] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., quota_refill: _Optional[_Union[QuotaRefill, _Mapping]] = ..., max_key_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., change_note: _Optional[str] = ...) -> None: ...

class CreatePolicyRequest(_message.Message):
    __slots__ = ("policy", "request_id")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    request_id: str
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreatePolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("policy_id", "version")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    version: int
    def __init__(self, policy_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "next_page_token")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    next_page_token: str
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("policy", "expected_version", "dry_run", "allow_breaking", "change_note", "request_id")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_BREAKING_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    expected_version: int
    dry_run: bool
    allow_breaking: bool
    change_note: str
    request_id: str
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., expected_version: _Optional[int] = ..., dry_run: _Optional[bool] = ..., allow_breaking: _Optional[bool] = ..., change_note: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PolicyImpact(_message.Message):
    __slots__ = ("keys_affected", "sample_key_ids", "scopes_added", "scopes_removed", "cidrs_added", "cidrs_removed", "limits_tightened", "limits_loosened", "breaking")
    KEYS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_ADDED_FIELD_NUMBER: _ClassVar[int]
    SCOPES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CIDRS_ADDED_FIELD_NUMBER: _ClassVar[int]
    CIDRS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_TIGHTENED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_LOOSENED_FIELD_NUMBER: _ClassVar[int]
    BREAKING_FIELD_NUMBER: _ClassVar[int]
    keys_affected: int
    sample_key_ids: _containers.RepeatedScalarFieldContainer[str]
    scopes_added: _containers.RepeatedScalarFieldContainer[str]
    scopes_removed: _containers.RepeatedScalarFieldContainer[str]
    cidrs_added: _containers.RepeatedScalarFieldContainer[str]
    cidrs_removed: _containers.RepeatedScalarFieldContainer[str]
    limits_tightened: _containers.RepeatedScalarFieldContainer[str]
    limits_loosened: _containers.RepeatedScalarFieldContainer[str]
    breaking: bool
    def __init__(self, keys_affected: _Optional[int] = ..., sample_key_ids: _Optional[_Iterable[str]] = ..., scopes_added: _Optional[_Iterable[str]] = ..., scopes_removed: _Optional[_Iterable[str]] = ..., cidrs_added: _Optional[_Iterable[str]] = ..., cidrs_removed: _Optional[_Iterable[str]] = ..., limits_tightened: _Optional[_Iterable[str]] = ..., limits_loosened: _Optional[_Iterable[str]] = ..., breaking: _Optional[bool] = ...) -> None: ...

class UpdatePolicyResponse(_message.Message):
    __slots__ = ("policy", "impact", "applied")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    impact: PolicyImpact
    applied: bool
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., impact: _Optional[_Union[PolicyImpact, _Mapping]] = ..., applied: _Optional[bool] = ...) -> None: ...

class RollbackPolicyRequest(_message.Message):
    __slots__ = ("policy_id", "to_version", "expected_version", "dry_run", "allow_breaking", "request_id")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_BREAKING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    to_version: int
    expected_version: int
    dry_run: bool
    allow_breaking: bool
    request_id: str
    def __init__(self, policy_id: _Optional[str] = ..., to_version: _Optional[int] = ..., expected_version: _Optional[int] = ..., dry_run: _Optional[bool] = ..., allow_breaking: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackPolicyResponse(_message.Message):
    __slots__ = ("policy", "impact", "applied")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    impact: PolicyImpact
    applied: bool
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., impact: _Optional[_Union[PolicyImpact, _Mapping]] = ..., applied: _Optional[bool] = ...) -> None: ...

class ListPolicyVersionsRequest(_message.Message):
    __slots__ = ("policy_id", "page_size", "page_token")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    page_size: int
    page_token: str
    def __init__(self, policy_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPolicyVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Policy]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("since", "from_beginning")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    FROM_BEGINNING_FIELD_NUMBER: _ClassVar[int]
    since: str
    from_beginning: bool
    def __init__(self, since: _Optional[str] = ..., from_beginning: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "type", "at", "actor", "key_id", "policy_id", "policy_version")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    type: str
    at: _timestamp_pb2.Timestamp
    actor: str
    key_id: str
    policy_id: str
    policy_version: int
    def __init__(self, cursor: _Optional[str] = ..., type: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., key_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...
