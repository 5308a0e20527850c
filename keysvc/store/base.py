"""The one Protocol every store backend implements.

Failure behaviour, for every method unless it says otherwise:

- Raises `StoreUnavailableError` when the backend does not answer within its
  configured timeout (after its retry budget) or refuses the connection.
  A write that raises it has either fully happened or not at all (each write
  is one transaction), never half.
- Never returns stale data: reads go to the backend (caching is the
  service layer's job).
- Every lifecycle write appends exactly one `Event` to the event log in the
  same transaction as the change, so a follower never sees a change without
  its event or an event without its change.
- A lifecycle write given a `RequestMark` records it in that same
  transaction: after a timeout, the mark is there exactly when the change is.
  A new mark (`replace=False`) whose (actor, request_id) is recorded and not
  expired refuses the whole write with `DuplicateRequestError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from keysvc.core.model import CounterResult, Event, KeyRecord, Policy, TakeRequest

__all__ = ["KeyPage", "PolicyPage", "RequestMark", "Store"]


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of keys, ordered by key_id; `next_token` is "" on the last page."""

    keys: Sequence[KeyRecord]
    next_token: str


@dataclass(frozen=True, slots=True)
class PolicyPage:
    """One page of policies (or of one policy's versions); "" ends it."""

    policies: Sequence[Policy]
    next_token: str


@dataclass(frozen=True, slots=True)
class RequestMark:
    """A client request_id, recorded with the write it made, so a retry replays it.

    `fingerprint` is a digest of the request's fields (never a secret);
    `outcome` is the service's own JSON, read back to answer a retry; the mark
    is forgotten after `expires_at` (epoch seconds). `replace` overwrites the
    stored mark (a re-issued secret moves its revision on) instead of
    refusing when one exists; `recorded_at` is the writer's clock, by which
    a held mark has expired or not.
    """

    actor: str
    request_id: str
    fingerprint: str
    outcome: str
    expires_at: float
    recorded_at: float = 0.0
    replace: bool = False


class Store(Protocol):
    """Durable keys, policies, counters and the event log."""

    async def ping(self) -> None:
        """Return when the backend answers.

        Raises:
            StoreUnavailableError: it does not.
        """

    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- keys -------------------------------------------------------------

    async def create_key(
        self, record: KeyRecord, quota: int | None, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert a new key (and its quota counter when `quota` is not None).

        Raises:
            AlreadyExistsError: the key_id or key_hash exists already.
            DuplicateRequestError: `mark` is recorded already.
        """

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """Return the key with this public id, or None."""

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """Return the key whose secret hashes to `key_hash`, or None (the hot-path read)."""

    async def get_keys_by_hash(self, key_hashes: Sequence[str]) -> Sequence[KeyRecord | None]:
        """Return the key of each hash, in order (None where unknown): one round trip.

        The batched hot-path read (BatchValidate): one MGET in Redis, one
        query in SQLite, within the one timeout and retry budget of a read.

        Raises:
            StoreUnavailableError: for the whole batch; never a partial answer.
        """

    async def list_keys(self, owner_id: str, page_size: int, page_token: str) -> KeyPage:
        """Page through keys ordered by key_id, optionally only `owner_id`'s ("" = all).

        `page_token` is "" or a `next_token` from an earlier page.

        Raises:
            InvalidArgumentError: the page token is not one this store issued.
        """

    async def keys_with_policy(self, policy_id: str, limit: int) -> tuple[int, Sequence[str]]:
        """Return how many keys reference `policy_id` and the first `limit` of their ids."""

    async def due_keys(self, now: float, limit: int) -> Sequence[KeyRecord]:
        """Return up to `limit` keys whose `next_deadline` is <= `now`, soonest first.

        Backed by an index kept in the same transaction as every key write.
        """

    async def update_key(
        self, record: KeyRecord, expected_revision: int, event: Event,
        mark: RequestMark | None = None, *, quota: int | None = None,
    ) -> None:
        """Replace a key's record; `record.revision` must be `expected_revision + 1`.

        With `quota`, also set the remaining quota of the record's budget:
        in the same transaction where the backend can (SQLite); Redis writes
        the counter (another slot) just after the revision-checked record, so
        a failure between leaves the old value, or a missing counter that
        `take` refuses, never an unlimited key.

        Raises:
            NotFoundError: no such key.
            ConflictError: the stored revision is not `expected_revision`.
            AlreadyExistsError: the record's new key_hash belongs to another key.
            DuplicateRequestError: `mark` is recorded already.
        """

    async def rotate_key(
        self,
        old: KeyRecord,
        expected_revision: int,
        new: KeyRecord,
        quota: int | None,
        event: Event,
        mark: RequestMark | None = None,
    ) -> None:
        """Atomically replace `old` (revision-checked, as update_key) and insert `new`.

        `new` normally inherits `old`'s budget (`budget_id`), whose counters
        already exist: `quota` None writes none. A `quota` sets the counter
        of `new`'s budget, as create_key does.

        Raises:
            NotFoundError, ConflictError: as update_key.
            AlreadyExistsError: as create_key, for `new`.
            DuplicateRequestError: `mark` is recorded already.
        """

    # -- counters (hot path for keys with a rate limit or quota) ------------

    async def take(self, request: TakeRequest) -> CounterResult:
        """Atomically take one request from the rate limit and `cost` from the quota.

        `request.budget_id` names the counters: the key's budget (`model.budget_of`),
        which a rotated key shares with its predecessor. Fixed windows aligned
        to multiples of `window_s` since the epoch, on the store's clock where
        it has one shared by every sidecar (Redis's TIME), else on `now`
        (SQLite: one host, one clock); `counted_at` says which. Nothing is
        taken when either would be exceeded. With `refill`, the quota is reset
        to `refill.amount` when `refill.interval_s` has passed since its last
        reset. A quota whose counter is missing refuses (`quota_missing`).
        One round trip (one Lua call in Redis; one transaction in SQLite).
        """

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota."""

    async def get_quota(self, key_id: str) -> int | None:
        """Return a key's remaining quota, or None when it has none."""

    async def touch(self, last_used: Mapping[str, float]) -> None:
        """Record last-use times (key_id -> time); an older time never wins."""

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        """Return the known last-use times of these keys."""

    # -- policies -----------------------------------------------------------

    async def create_policy(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert version 1 of a new policy.

        Raises:
            AlreadyExistsError: the policy_id exists already.
            DuplicateRequestError: `mark` is recorded already.
        """

    async def get_policy(self, policy_id: str, version: int = 0) -> Policy | None:
        """Return the current version (version=0) or a given version, or None."""

    async def list_policies(self, page_size: int, page_token: str) -> PolicyPage:
        """Page through the current version of every policy, ordered by policy_id."""

    async def put_policy_version(
        self, policy: Policy, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Append `policy` as the new current version; it must be current + 1.

        Raises:
            NotFoundError: no such policy.
            ConflictError: the current version is not `policy.version - 1`.
            DuplicateRequestError: `mark` is recorded already.
        """

    async def list_policy_versions(
        self, policy_id: str, page_size: int, page_token: str
    ) -> PolicyPage:
        """Page through one policy's versions, newest first.

        Raises:
            NotFoundError: no such policy.
        """

    # -- meta -----------------------------------------------------------------

    async def get_meta(self, name: str) -> str | None:
        """Return a small named value (e.g. the bootstrap marker), or None."""

    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value."""

    async def ensure_meta(self, name: str, value: str) -> str:
        """Set a small named value unless one is set; return the stored one.

        Atomic: of several processes racing, one value wins and all get it.
        """

    # -- request ids ----------------------------------------------------------

    async def get_request(self, actor: str, request_id: str, now: float) -> RequestMark | None:
        """Return the mark recorded for (actor, request_id), or None (also once expired)."""

    # -- event log ------------------------------------------------------------

    async def append_event(self, event: Event) -> str:
        """Append an event on its own (for changes with no record write); return its cursor."""

    async def read_events(self, after: str, limit: int, block_s: float) -> Sequence[Event]:
        """Return up to `limit` events after cursor `after` ("" = from the oldest retained).

        Waits up to `block_s` for the first one when there is none yet. Only a
        real cursor (from an event or `last_cursor`) can be checked for loss:
        "" reads whatever is retained, so a follower never reads from "".

        Raises:
            CursorExpiredError: any event after `after` is gone (trimmed,
                emptied, deleted), or `after` is past the log's end or does not
                come from this log (reset, recreated): the caller must
                resynchronise. Every loss is reported; a needless report is
                allowed only where a backend says so.
        """

    async def last_cursor(self) -> str:
        """Return the cursor of the log's end: every later event comes after it.

        Never "": an empty or absent log has an end too (the last id ever
        issued, or the backend's origin), so a follower positioned there
        notices when events it has not read are lost.
        """
