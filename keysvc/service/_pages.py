"""Page tokens: opaque, HMAC-authenticated, bound to their request, expiring.

A token carries the store's position (where the next page starts) and when it
expires, under an HMAC-SHA256 over the listing (the RPC), its filters and page
size. The HMAC key is made once per store, atomically (`Store.ensure_meta`),
so every sidecar on that store accepts the tokens any of them issued, and
racing first users agree on one key. Anything not issued for this very
request (forged, truncated, another filter or page size, another RPC, expired,
oversized) is one INVALID_ARGUMENT naming `page_token`, never echoing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping

from keysvc.core.errors import InvalidArgumentError
from keysvc.store.base import Store

__all__ = ["PAGE_TOKEN_TTL_S", "PageTokens"]

PAGE_TOKEN_TTL_S = 3600
_HMAC_META = "page_token_hmac_key"
_MAX_TOKEN = 1024  # a real token is ~100 characters; anything far larger is refused unread
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_MAC = 32
_REFUSED = (
    f"page_token: not a next_page_token issued for this request (same filters and "
    f"page_size), or older than {PAGE_TOKEN_TTL_S // 60} minutes"
)


class PageTokens:
    """Issues and checks the page tokens of one store.

    Args:
        store: where the HMAC key is kept (made on first use).
        clock: wall clock, for expiry.
    """

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        # Written only by the event loop that runs this service, and every
        # writer writes the store's one value, so a racing first use is harmless.
        self._key: bytes | None = None

    async def _secret(self) -> bytes:
        if self._key is None:
            stored = await self._store.ensure_meta(_HMAC_META, secrets.token_hex(32))
            self._key = bytes.fromhex(stored)
        return self._key

    @staticmethod
    def _signed(listing: str, binding: Mapping[str, object], body: bytes) -> bytes:
        bound = json.dumps(binding, sort_keys=True, separators=(",", ":"))
        return b"\x00".join((b"keysvc-page-v1", listing.encode(), bound.encode(), body))

    async def issue(self, listing: str, binding: Mapping[str, object], position: str) -> str:
        """Return the token of the page after `position` ("" when there is none)."""
        if not position:
            return ""
        body = f"{int(self._clock()) + PAGE_TOKEN_TTL_S}\x00{position}".encode()
        mac = hmac.new(await self._secret(), self._signed(listing, binding, body), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest() + body).decode("ascii").rstrip("=")

    async def open(self, listing: str, binding: Mapping[str, object], token: str) -> str:
        """Return the position a token from `issue` carries ("" for "").

        Raises:
            InvalidArgumentError: the token was not issued for this request, or expired.
        """
        if not token:
            return ""
        if len(token) > _MAX_TOKEN or not _TOKEN_RE.fullmatch(token):
            raise InvalidArgumentError(_REFUSED)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgumentError(_REFUSED) from None
        mac, body = raw[:_MAC], raw[_MAC:]
        expected = hmac.new(await self._secret(), self._signed(listing, binding, body), hashlib.sha256)
        if len(mac) != _MAC or not hmac.compare_digest(mac, expected.digest()):
            raise InvalidArgumentError(_REFUSED)
        expires, _, position = body.decode().partition("\x00")
        if int(expires) < self._clock() or not position:
            raise InvalidArgumentError(_REFUSED)
        return position
