"""Key format: generate, checksum, parse, hash. Pure, no I/O.

A key reads `<prefix>_<body><checksum>`: `body` is 32 random bytes in
fixed-width base62 (43 chars) and `checksum` is the CRC32 of
`<prefix>_<body>` in 6 base62 chars. A typo or garbage is rejected here,
offline, without a store round trip, and secret scanners can match the shape.
Only the SHA-256 of the whole key is ever kept.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_PREFIX",
    "KEY_PATTERN",
    "GeneratedKey",
    "generate",
    "hash_key",
    "holds_key",
    "lookup_hash",
    "new_key_id",
    "validate_prefix",
    "well_formed",
    "well_formed_hash",
]

DEFAULT_PREFIX = "ks"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_BYTES = 32
_BODY_LEN = 43  # ceil(256 / log2(62))
_CHECK_LEN = 6  # 62**6 > 2**32
_HINT_LEN = 4
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_MAX_KEY_LEN = 16 + 1 + _BODY_LEN + _CHECK_LEN
# Anything shaped like a key; also used by the log redaction processor.
KEY_PATTERN = re.compile(rf"([a-z][a-z0-9]{{0,15}})_[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}")


def _b62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    if number:
        raise ValueError("number does not fit the width")
    return "".join(reversed(chars))


def _checksum(head: str) -> str:
    return _b62(zlib.crc32(head.encode("ascii")), _CHECK_LEN)


# Two base62 digits per entry: a 32-bit checksum is three divmods and lookups.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _checksum_bytes(head: bytes) -> str:
    high, low = divmod(zlib.crc32(head), 3844)
    high, mid = divmod(high, 3844)
    return _PAIRS[high] + _PAIRS[mid] + _PAIRS[low]


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is a valid key prefix.

    Raises:
        ValueError: not 1-16 chars of lower-case letters and digits, starting
            with a letter.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"invalid key prefix {prefix!r}: want 1-16 lower-case letters or digits, "
            "starting with a letter"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A freshly made key. `secret` must leave the process only in a response."""

    secret: str = field(repr=False)
    key_hash: str
    hint: str
    prefix: str


def hash_key(secret: str) -> str:
    """Return the hex SHA-256 of a key, the only form keysvc stores."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _hint(prefix: str, body: str) -> str:
    return f"{prefix}_{body[:_HINT_LEN]}"


def generate(prefix: str = DEFAULT_PREFIX) -> GeneratedKey:
    """Make a new random key with `prefix`.

    Raises:
        ValueError: the prefix is invalid.
    """
    validate_prefix(prefix)
    body = _b62(int.from_bytes(secrets.token_bytes(_BODY_BYTES), "big"), _BODY_LEN)
    head = f"{prefix}_{body}"
    secret = head + _checksum(head)
    return GeneratedKey(secret=secret, key_hash=hash_key(secret), hint=_hint(prefix, body), prefix=prefix)


def well_formed_hash(secret: str) -> str | None:
    """The hash of a key whose shape and checksum are right; None for anything else.

    The hot path's one call: it raises nothing (an exception costs more than
    the checks), and a refusal never says more than "malformed", so it cannot
    help anyone guess a key a character at a time.
    """
    if len(secret) > _MAX_KEY_LEN or KEY_PATTERN.fullmatch(secret) is None:
        return None
    raw = secret.encode("ascii")  # the pattern admits ASCII only
    if _checksum_bytes(raw[:-_CHECK_LEN]) != secret[-_CHECK_LEN:]:
        return None
    return hashlib.sha256(raw).hexdigest()


_fullmatch = KEY_PATTERN.fullmatch
_sha256 = hashlib.sha256


def lookup_hash(secret: str) -> str | None:
    """The hash to look a presented key up by, having checked only its length; None when too long.

    For the cache-hit path: only `generate` makes the keys whose hashes are
    stored, so a hash found in the cache is that very key, shape and checksum
    right by construction, and a hit needs no other check. A string not found
    must pass `well_formed` before it is answered from anywhere else
    (`well_formed_hash` checks first, then hashes). Raises nothing.
    """
    if len(secret) > _MAX_KEY_LEN:
        return None
    try:
        return _sha256(secret.encode()).hexdigest()  # UTF-8: the same bytes as ASCII for any key
    except UnicodeEncodeError:  # a lone surrogate: no key has one
        return None


def well_formed(secret: str) -> bool:
    """True when `secret` has a key's shape and checksum (no store needed to refuse anything else)."""
    if len(secret) > _MAX_KEY_LEN or _fullmatch(secret) is None:
        return False
    return _checksum_bytes(secret[:-_CHECK_LEN].encode("ascii")) == secret[-_CHECK_LEN:]


def holds_key(text: str) -> bool:
    """True when `text` contains a well-formed key (shape and checksum), e.g. one pasted by mistake."""
    for match in KEY_PATTERN.finditer(text):
        prefix = match.group(1)
        # The match may start inside a longer word: try every start within its prefix.
        if any(well_formed_hash(match.group(0)[i:]) for i in range(len(prefix))):
            return True
    return False


def new_key_id() -> str:
    """Return a new public key id (random, unrelated to the secret)."""
    return "key_" + _b62(int.from_bytes(secrets.token_bytes(12), "big"), 17)
