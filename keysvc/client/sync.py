"""`Client`: the synchronous KeyService client (grpc channel, deadlines, retries, typed results)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from keysvc.client import _calls as calls
from keysvc.client import _convert as conv
from keysvc.client._calls import Retry, Span
from keysvc.client._channel import DEFAULT_TARGET, Connection, Tls
from keysvc.client.errors import ClientClosed, DeadlineExceeded, error_from
from keysvc.client.types import (
    CreatedKey,
    Event,
    Key,
    KeyStatus,
    Page,
    Policy,
    PolicyChange,
    RotatedKey,
    ValidationResult,
)
from keysvc.v1 import keysvc_pb2_grpc

__all__ = ["Client", "EventStream"]

T = TypeVar("T")
log = logging.getLogger("keysvc.client")


class Client:
    """A synchronous client for one keysvc server; thread-safe (grpc channels are), close it when done.

    Every call has a deadline (`timeout` seconds, overridable per call) that
    covers all its retries. Failures raise `keysvc.client.errors.ClientError`
    subclasses; a Validate denial is a `ValidationResult`, not an error.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, tls: Tls | None = None, admin_key: str = "",
                 timeout: float = 10.0, retry: Retry | None = None) -> None:
        self._connection = Connection(target, tls, admin_key)
        self._timeout = timeout
        self._retry = retry or Retry()
        options = self._connection.options()
        self._channel = (grpc.secure_channel(target, tls.credentials(), options) if tls is not None
                         else grpc.insecure_channel(target, options))
        self._stub = keysvc_pb2_grpc.KeyServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._stubs = {"keys": self._stub, "health": health_pb2_grpc.HealthStub(self._channel)}
        self._closed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, timeout: float = 10.0,
                 retry: Retry | None = None) -> Client:
        """A client configured as the CLI is (KEYSVC_ADDR, KEYSVC_ADMIN_KEY, KEYSVC_TLS_*)."""
        connection = Connection.from_env(env)
        return cls(connection.target, tls=connection.tls, admin_key=connection.admin_key,
                   timeout=timeout, retry=retry)

    @classmethod
    def connect(cls, target: str, *, ca: str | Path = "", cert: str | Path = "", key: str | Path = "",
                server_name: str = "", admin_key: str = "", timeout: float = 10.0,
                retry: Retry | None = None) -> Client:
        """A client from flat TLS options (TLS when `ca` is given), as the CLI's flags give them."""
        connection = Connection.of(target, ca=ca, cert=cert, key=key, server_name=server_name,
                                   admin_key=admin_key)
        return cls(target, tls=connection.tls, admin_key=admin_key, timeout=timeout, retry=retry)

    def __repr__(self) -> str:
        return f"Client({self._connection.target!r}, tls={self._connection.tls is not None})"

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._closed = True  # later calls raise ClientClosed, not grpc's own usage error
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, call: calls.Call[T], timeout: float | None) -> T:
        metadata = self._connection.metadata(call.admin)
        rpc = getattr(self._stubs[call.service], call.method)
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("deadline exceeded before an answer", method=call.method)
            per_attempt = min(remaining, self._retry.attempt_timeout or remaining)
            if self._closed:  # also between two attempts
                raise ClientClosed("client: closed; make a new one", method=call.method)
            try:
                reply = rpc(call.request, timeout=per_attempt, metadata=metadata)
            except ValueError:  # the channel was closed as the attempt began
                if not self._closed:
                    raise
                raise ClientClosed("client: closed; make a new one", method=call.method) from None
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                wait = (self._retry.delay(code, details, attempt, deadline - time.monotonic())
                        if call.retried else None)
                if wait is None:
                    raise error_from(code, details, call.method) from None
                log.debug("keysvc.client retry", extra={"method": call.method, "code": code.name,
                                                        "attempt": attempt, "wait_s": round(wait, 3)})
                time.sleep(wait)
                continue
            return call.parse(reply)

    # -- hot path -----------------------------------------------------------------

    def validate(self, key: str, *, required_scopes: Iterable[str] = (), client_ip: str = "",
                 cost: int = 1, timeout: float | None = None) -> ValidationResult:
        """Is `key` good for a call needing `required_scopes` from `client_ip`? A denial is a result."""
        return self._run(calls.validate(key, required_scopes, client_ip, cost), timeout)

    def batch_validate(self, keys: Iterable[str], *, required_scopes: Iterable[str] = (),
                       client_ip: str = "", cost: int = 1,
                       timeout: float | None = None) -> list[ValidationResult]:
        """Validate up to 100 keys in one call; the answers are in order."""
        return self._run(calls.batch_validate(keys, required_scopes, client_ip, cost), timeout)

    # -- keys ---------------------------------------------------------------------

    def create_key(self, owner_id: str, *, name: str = "", policy_id: str = "",
                   scopes: Iterable[str] = (),
                   metadata: Mapping[str, str] | None = None, expires_at: datetime | None = None,
                   ttl: Span | None = None, prefix: str = "", quota: int | None = None,
                   request_id: str | None = None, timeout: float | None = None) -> CreatedKey:
        """Create a key; the result holds the only copy of its secret."""
        return self._run(calls.create_key(owner_id, name=name, policy_id=policy_id, scopes=scopes,
                                          metadata=metadata, expires_at=expires_at, ttl=ttl, prefix=prefix,
                                          quota=quota, request_id=request_id), timeout)

    def get_key(self, key_id: str, *, timeout: float | None = None) -> Key:
        """Read one key."""
        return self._run(calls.get_key(key_id), timeout)

    def list_keys(self, *, owner_id: str = "", status: KeyStatus | None = None,
                  unused_for: Span | None = None,
                  page_size: int = 0, page_token: str = "", timeout: float | None = None) -> Page[Key]:
        """One page of keys (`page_size` 0: the server's default)."""
        return self._run(calls.list_keys(owner_id, status, unused_for, page_size, page_token), timeout)

    def iter_keys(self, *, owner_id: str = "", status: KeyStatus | None = None,
                  unused_for: Span | None = None, page_size: int = 0,
                  timeout: float | None = None) -> Iterator[Key]:
        """Every matching key, page after page (`timeout` is per page)."""
        token = ""
        while True:
            page = self.list_keys(owner_id=owner_id, status=status, unused_for=unused_for,
                                  page_size=page_size, page_token=token,
                                             timeout=timeout)
            yield from page
            if not (token := page.next_page_token):
                return

    def update_key(self, key_id: str, *, name: str | None = None,
                   metadata: Mapping[str, str] | None = None,
                   scopes: Iterable[str] | None = None, expires_at: datetime | None = None,
                   enabled: bool | None = None, policy_id: str | None = None,
                   quota_remaining: int | None = None, expected_revision: int = 0,
                   request_id: str | None = None, timeout: float | None = None) -> Key:
        """Change the fields given (None: unchanged); `expected_revision` guards against a lost update."""
        changes = calls.changes(name=name, metadata=metadata, scopes=scopes, expires_at=expires_at,
                           enabled=enabled, policy_id=policy_id, quota_remaining=quota_remaining)
        return self._run(calls.update_key(key_id, changes=changes, expected_revision=expected_revision,
                                          request_id=request_id), timeout)

    def revoke_key(self, key_id: str, *, grace_period: Span = 0, reason: str = "",
                   request_id: str | None = None, timeout: float | None = None) -> Key:
        """Revoke a key now, or when `grace_period` has passed (status REVOKING until then)."""
        return self._run(calls.revoke_key(key_id, grace_period, reason, request_id), timeout)

    def rotate_key(self, key_id: str, *, grace_period: Span = 0, request_id: str | None = None,
                   timeout: float | None = None) -> RotatedKey:
        """A new secret with the same owner, policy and metadata; the old one works for `grace_period`."""
        return self._run(calls.rotate_key(key_id, grace_period, request_id), timeout)

    # -- policies -----------------------------------------------------------------

    def create_policy(self, policy: Policy, *, request_id: str | None = None,
                      timeout: float | None = None) -> Policy:
        """Create `policy` (version 1)."""
        return self._run(calls.create_policy(policy, request_id), timeout)

    def get_policy(self, policy_id: str, *, version: int = 0, timeout: float | None = None) -> Policy:
        """Read a policy: its latest version, or `version`."""
        return self._run(calls.get_policy(policy_id, version), timeout)

    def list_policies(self, *, page_size: int = 0, page_token: str = "",
                      timeout: float | None = None) -> Page[Policy]:
        """One page of policies."""
        return self._run(calls.list_policies(page_size, page_token), timeout)

    def iter_policies(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[Policy]:
        """Every policy, page after page."""
        token = ""
        while True:
            page = self.list_policies(page_size=page_size, page_token=token,
                                             timeout=timeout)
            yield from page
            if not (token := page.next_page_token):
                return

    def update_policy(self, policy: Policy, *, expected_version: int, dry_run: bool = False,
                      allow_breaking: bool = False, change_note: str = "", request_id: str | None = None,
                      timeout: float | None = None) -> PolicyChange:
        """Write `policy` as version `expected_version + 1` (or report the impact with `dry_run`)."""
        return self._run(calls.update_policy(policy, expected_version=expected_version, dry_run=dry_run,
                                             allow_breaking=allow_breaking, change_note=change_note,
                                             request_id=request_id), timeout)

    def rollback_policy(self, policy_id: str, *, to_version: int, expected_version: int = 0,
                        dry_run: bool = False, allow_breaking: bool = False, request_id: str | None = None,
                        timeout: float | None = None) -> PolicyChange:
        """Write version `to_version`'s content as a new version."""
        return self._run(calls.rollback_policy(policy_id, to_version=to_version,
                                               expected_version=expected_version, dry_run=dry_run,
                                               allow_breaking=allow_breaking, request_id=request_id), timeout)

    def list_policy_versions(self, policy_id: str, *, page_size: int = 0, page_token: str = "",
                             timeout: float | None = None) -> Page[Policy]:
        """One page of a policy's versions, newest first."""
        return self._run(calls.list_policy_versions(policy_id, page_size, page_token), timeout)

    def iter_policy_versions(self, policy_id: str, *, page_size: int = 0,
                             timeout: float | None = None) -> Iterator[Policy]:
        """Every version of a policy, newest first."""
        token = ""
        while True:
            page = self.list_policy_versions(policy_id, page_size=page_size, page_token=token,
                                             timeout=timeout)
            yield from page
            if not (token := page.next_page_token):
                return

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's health ("" overall, or a service name): "SERVING", "NOT_SERVING"; one attempt."""
        return self._run(calls.health(service), timeout)

    # -- events -------------------------------------------------------------------

    def watch_events(self, *, since: str = "", from_beginning: bool = False,
                     timeout: float | None = None) -> EventStream:
        """Lifecycle events as they happen, after cursor `since` (no retries: resume from the last cursor).

        `timeout` bounds the whole stream (None: no deadline). `cancel()` on
        the stream ends it from any thread.
        """
        if self._closed:
            raise ClientClosed("client: closed; make a new one", method="WatchEvents")
        call = self._stub.WatchEvents(calls.watch_events(since, from_beginning), timeout=timeout,
                                      metadata=self._connection.metadata(admin=True))
        return EventStream(call)


class EventStream:
    """An iterator of `Event`s from WatchEvents; `cancel()` (or `close()`) may be called from any thread."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        try:
            item = next(self._call)
        except grpc.RpcError as exc:
            raise error_from(exc.code(), exc.details(), "WatchEvents") from None
        return conv.event_from(item.event)

    def cancel(self) -> None:
        """End the stream: the iteration raises a CANCELLED `ClientError`, or stops if it was idle."""
        self._call.cancel()

    close = cancel

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cancel()
