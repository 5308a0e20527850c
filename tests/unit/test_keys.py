"""keysvc.core.keys: key format, checksum and hashing."""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path

import pytest

from keysvc.core import keys

pytestmark = pytest.mark.unit

BAD_KEYS = Path(__file__).parent.parent / "data" / "bad_keys"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
BODY_LEN = 43
CHECK_LEN = 6
MAX_KEY_LEN = 16 + 1 + BODY_LEN + CHECK_LEN


def _split(secret: str) -> tuple[str, str, str]:
    prefix, _, rest = secret.partition("_")
    return prefix, rest[:BODY_LEN], rest[BODY_LEN:]


def refused_for(presented: str) -> str | None:
    """Why the hot path refuses `presented` ("length", "form" or "checksum"), None when it takes it."""
    if keys.well_formed_hash(presented) is not None:
        return None
    if len(presented) > MAX_KEY_LEN:
        return "length"
    return "form" if keys.KEY_PATTERN.fullmatch(presented) is None else "checksum"


def _bad_key_files() -> list[Path]:
    files = sorted(BAD_KEYS.glob("*.key"))
    assert files, f"no cases in {BAD_KEYS}"
    return files


# -- generate and check -----------------------------------------------------------


def test_generate_then_check_round_trips() -> None:
    generated = keys.generate()
    assert generated.prefix == keys.DEFAULT_PREFIX == generated.secret.partition("_")[0]
    assert keys.well_formed_hash(generated.secret) == generated.key_hash


def test_default_key_format() -> None:
    secret = keys.generate().secret
    prefix, body, checksum = _split(secret)
    assert prefix == "ks"
    assert len(body) == BODY_LEN
    assert len(checksum) == CHECK_LEN
    assert set(body + checksum) <= set(BASE62)
    assert len(secret) == len("ks_") + BODY_LEN + CHECK_LEN == 52
    assert re.fullmatch(r"ks_[0-9A-Za-z]{49}", secret)


@pytest.mark.parametrize("prefix", ["a", "sk", "acme2", "p" * 16, "a1b2c3d4e5f6g7h8"])
def test_custom_prefix_round_trips(prefix: str) -> None:
    generated = keys.generate(prefix)
    assert generated.prefix == prefix
    assert generated.secret.startswith(prefix + "_")
    assert len(generated.secret) == len(prefix) + 1 + BODY_LEN + CHECK_LEN
    assert generated.secret.partition("_")[0] == prefix
    assert keys.well_formed_hash(generated.secret) == generated.key_hash
    assert keys.validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    ["", "A", "Ks", "1ks", "a" * 17, "k-s", "k_s", "k s", " ks", "ks\n", "\u00e9", "k\u0455"],
)
def test_invalid_prefix_raises_value_error(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid key prefix"):
        keys.validate_prefix(prefix)
    with pytest.raises(ValueError, match="invalid key prefix"):
        keys.generate(prefix)


def test_secrets_and_hashes_differ() -> None:
    generated = [keys.generate() for _ in range(200)]
    assert len({g.secret for g in generated}) == 200
    assert len({g.key_hash for g in generated}) == 200
    assert len({_split(g.secret)[1] for g in generated}) == 200


def test_well_formed_hash_is_the_hash_for_good_keys_and_none_for_near_misses() -> None:
    for prefix in ("ks", "a", "live0"):
        secret = keys.generate(prefix).secret
        assert keys.well_formed_hash(secret) == keys.hash_key(secret)
        for near_miss in _near_misses(secret).values():
            assert keys.well_formed_hash(near_miss) is None


def test_hash_is_sha256_hex_of_the_whole_key() -> None:
    generated = keys.generate("acme")
    expected = hashlib.sha256(generated.secret.encode("ascii")).hexdigest()
    assert generated.key_hash == expected
    assert keys.hash_key(generated.secret) == expected
    assert keys.well_formed_hash(generated.secret) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_hint_is_prefix_and_first_four_body_chars() -> None:
    generated = keys.generate("acme")
    _, body, _ = _split(generated.secret)
    assert generated.hint == f"acme_{body[:4]}"
    assert generated.secret.startswith(generated.hint)
    assert len(generated.hint) < len(generated.secret)


def test_generated_key_repr_hides_the_secret() -> None:
    generated = keys.generate()
    _, body, _ = _split(generated.secret)
    for text in (repr(generated), str(generated)):
        assert generated.secret not in text
        assert body not in text
        assert body[4:] not in text  # only the hint's 4 chars may show
        assert generated.key_hash in text


def test_key_pattern_finds_a_key_inside_text() -> None:
    secret = keys.generate("acme").secret
    match = keys.KEY_PATTERN.search(f"authorization: Bearer {secret}, retry")
    assert match is not None
    assert match.group(0) == secret
    assert match.group(1) == "acme"


# -- the checksum catches typos ----------------------------------------------------


@pytest.mark.parametrize("prefix", ["ks", "acme", "z" * 16])
def test_every_single_character_substitution_is_rejected(prefix: str) -> None:
    secret = keys.generate(prefix).secret
    start = len(prefix) + 1
    tried = 0
    for position in range(start, len(secret)):
        for char in BASE62:
            if char == secret[position]:
                continue
            typo = secret[:position] + char + secret[position + 1 :]
            assert refused_for(typo) == "checksum"
            tried += 1
    assert tried == (BODY_LEN + CHECK_LEN) * 61


def test_substitution_in_the_prefix_is_rejected() -> None:
    secret = keys.generate("acme").secret
    for position in range(4):
        for char in string.ascii_lowercase:
            if char == secret[position]:
                continue
            assert refused_for(secret[:position] + char + secret[position + 1 :]) == "checksum"


def test_adjacent_transpositions_are_rejected() -> None:
    secret = keys.generate().secret
    swapped = 0
    for position in range(3, len(secret) - 1):
        a, b = secret[position], secret[position + 1]
        if a == b:
            continue
        assert refused_for(secret[:position] + b + a + secret[position + 2 :]) == "checksum"
        swapped += 1
    assert swapped > 40


def test_every_truncation_is_rejected() -> None:
    secret = keys.generate().secret
    for length in range(len(secret)):
        assert refused_for(secret[:length]) is not None


@pytest.mark.parametrize("char", list(BASE62[::7]))
def test_extension_is_rejected(char: str) -> None:
    secret = keys.generate().secret
    assert refused_for(secret + char) is not None
    # A longer prefix keeps the shape valid; the checksum still catches it.
    assert refused_for(char.lower() + secret if char.isalpha() else "k" + secret) == "checksum"


# -- bad keys from tests/data/bad_keys ---------------------------------------------


@pytest.mark.parametrize("path", _bad_key_files(), ids=lambda p: p.stem)
def test_bad_key_is_rejected_for_its_reason(path: Path) -> None:
    reason = path.stem.split("_", 1)[0]
    assert reason in ("form", "length", "checksum"), f"{path.name}: name must start with form, length or checksum"
    presented = path.read_bytes().decode("utf-8")
    assert refused_for(presented) == reason


def _near_misses(secret: str) -> dict[str, str]:
    return {
        "checksum": secret[:-1] + ("0" if secret[-1] != "0" else "1"),
        "form": secret[:-1],
        "too long": secret + secret,
        "space": secret + " ",
    }


# -- key ids ---------------------------------------------------------------------


def test_new_key_id_shape() -> None:
    key_id = keys.new_key_id()
    assert re.fullmatch(r"key_[0-9A-Za-z]{17}", key_id)
    assert len(key_id) == 21


def test_new_key_ids_are_unique_and_not_keys() -> None:
    ids = {keys.new_key_id() for _ in range(1000)}
    assert len(ids) == 1000
    for key_id in list(ids)[:50]:
        assert refused_for(key_id) is not None


# -- the cache-hit path's split: lookup_hash, then well_formed for what is not cached ---


@pytest.mark.parametrize("path", _bad_key_files(), ids=lambda p: p.stem)
def test_every_bad_key_fails_well_formed_and_no_lookup_hash_is_a_key_s(path: Path) -> None:
    """A hit skips the checks only because no bad key can hash to a stored (generated) key's hash."""
    presented = path.read_bytes().decode("utf-8")
    assert not keys.well_formed(presented)
    found = keys.lookup_hash(presented)
    assert found is None or found != keys.hash_key(keys.generate().secret)


@pytest.mark.parametrize("prefix", ["ks", "a", "prod2", "a" * 16])
def test_lookup_hash_is_the_stored_hash_and_well_formed_agrees(prefix: str) -> None:
    made = keys.generate(prefix)
    assert keys.lookup_hash(made.secret) == made.key_hash == keys.well_formed_hash(made.secret)
    assert keys.well_formed(made.secret)
    for why, near in _near_misses(made.secret).items():
        assert not keys.well_formed(near), why
        assert keys.lookup_hash(near) != made.key_hash, why


def test_lookup_hash_refuses_what_cannot_be_a_key_without_raising() -> None:
    assert keys.lookup_hash("x" * (MAX_KEY_LEN + 1)) is None
    assert keys.lookup_hash("ks_\ud800" + "A" * 48) is None  # a lone surrogate cannot be encoded
    assert keys.lookup_hash("ks_é" + "A" * 48) == hashlib.sha256(("ks_é" + "A" * 48).encode()).hexdigest()
    assert not keys.well_formed("ks_é" + "A" * 48)
