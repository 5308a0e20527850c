"""keysvc.service.checks: bounds on admin request fields."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.keys import generate, new_key_id
from keysvc.service import _requests as requests
from keysvc.service import checks as check

pytestmark = pytest.mark.unit


# -- text --------------------------------------------------------------------------


def test_text_within_limit() -> None:
    assert check.text("name", "n" * check.MAX_NAME) == "n" * check.MAX_NAME
    assert check.text("reason", "r" * 10, limit=10) == "r" * 10
    assert check.text("name", "") == ""


@pytest.mark.parametrize("value", ["n" * (check.MAX_NAME + 1), "line\nbreak", "tab\there", "nul\x00"])
def test_text_errors_name_the_field(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^name: "):
        check.text("name", value)


# -- owner_id ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["o", "team-a@example.com", "svc:billing/prod+x_1.2", "o" * check.MAX_ID])
def test_owner_id_valid(value: str) -> None:
    assert check.owner_id(value) == value


@pytest.mark.parametrize("value", ["", "o" * (check.MAX_ID + 1), "has space", "caf\u00e9", "a;b", "a\nb"])
def test_owner_id_errors_name_the_field(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^owner_id: "):
        check.owner_id(value)


# -- key_id ------------------------------------------------------------------------


def test_key_id_accepts_generated_ids() -> None:
    for _ in range(20):
        key_id = new_key_id()
        assert check.key_id(key_id) == key_id


@pytest.mark.parametrize(
    "value", ["", "key_", "key_" + "a" * 16, "key_" + "a" * 18, "KEY_" + "a" * 17, "key-" + "a" * 17,
              "key_" + "a" * 16 + "-", "ks_" + "a" * 49, " key_" + "a" * 17],
)
def test_key_id_errors_name_the_field(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^key_id: "):
        check.key_id(value)


# -- policy_id ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["p", "0", "default", "team-a.read_only", "p" * 63])
def test_policy_id_valid(value: str) -> None:
    assert check.policy_id(value) == value


def test_empty_policy_id_only_when_not_required() -> None:
    assert check.policy_id("", required=False) == ""
    with pytest.raises(InvalidArgumentError, match=r"^policy_id: "):
        check.policy_id("")


@pytest.mark.parametrize("value", ["p" * 64, "Default", "-p", ".p", "_p", "p q", "p/q", "p\u00e9"])
def test_policy_id_errors_name_the_field(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^policy_id: "):
        check.policy_id(value, required=False)


# -- scopes ------------------------------------------------------------------------


def test_scopes_deduplicated_in_order() -> None:
    assert check.scopes("scopes", ["b", "a", "b", "c:*", "a"]) == ("b", "a", "c:*")
    assert check.scopes("scopes", []) == ()
    assert check.scopes("scopes", iter(["x/y", "Z.z-1_2"])) == ("x/y", "Z.z-1_2")


def test_scopes_count_bound_applies_after_deduplication() -> None:
    many = [f"s{i}" for i in range(check.MAX_SCOPES)]
    assert len(check.scopes("scopes", many + many)) == check.MAX_SCOPES
    with pytest.raises(InvalidArgumentError, match=rf"^scopes: at most {check.MAX_SCOPES}"):
        check.scopes("scopes", [*many, "one-more"])


def test_scope_length_bound() -> None:
    assert check.scopes("scopes", ["s" * check.MAX_SCOPE_LEN]) == ("s" * check.MAX_SCOPE_LEN,)
    with pytest.raises(InvalidArgumentError, match=r"^scopes: "):
        check.scopes("scopes", ["s" * (check.MAX_SCOPE_LEN + 1)])


@pytest.mark.parametrize("bad", ["", "read write", "r\u00e9ad", "a,b", "a\nb", "a+b"])
@pytest.mark.parametrize("field", ["scopes", "required_scopes"])
def test_scope_errors_name_the_field(field: str, bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{field}: "):
        check.scopes(field, ["ok", bad])


# -- metadata ----------------------------------------------------------------------


def test_metadata_within_bounds_is_copied() -> None:
    values = {f"k{i}": "v" * check.MAX_METADATA_VALUE for i in range(check.MAX_METADATA)}
    values["k" * check.MAX_METADATA_KEY] = values.pop("k0")
    result = check.metadata(values)
    assert result == values
    assert result is not values


@pytest.mark.parametrize(
    "values",
    [
        {f"k{i}": "v" for i in range(check.MAX_METADATA + 1)},
        {"": "v"},
        {"k" * (check.MAX_METADATA_KEY + 1): "v"},
        {"bad\nkey": "v"},
        {"team": "v" * (check.MAX_METADATA_VALUE + 1)},
    ],
    ids=["too-many", "empty-key", "long-key", "unprintable-key", "long-value"],
)
def test_metadata_errors_name_the_field(values: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^metadata(\['[^']*'\])?: "):
        check.metadata(values)


def test_metadata_value_error_names_the_rule_not_the_entry() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^metadata: values are at most 512") as info:
        check.metadata({"team": "v" * (check.MAX_METADATA_VALUE + 1)})
    assert "team" not in str(info.value)


# -- cidrs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (["10.1.2.3/8"], ("10.0.0.0/8",)),
        (["192.0.2.7"], ("192.0.2.7/32",)),
        (["2001:db8::1/32"], ("2001:db8::/32",)),
        (["2001:db8::1"], ("2001:db8::1/128",)),
        (["10.0.0.0/8", "10.0.0.0/8", "192.0.2.0/24"], ("10.0.0.0/8", "192.0.2.0/24")),
        ([], ()),
    ],
)
def test_cidrs_are_normalised(given: list[str], normalised: tuple[str, ...]) -> None:
    assert check.cidrs(given) == normalised


def test_cidrs_that_normalise_to_one_network_are_kept_once() -> None:
    assert check.cidrs(["10.0.0.0/8", "10.1.2.3/8", "10.0.0.0/8"]) == ("10.0.0.0/8",)


def test_cidrs_count_bound() -> None:
    many = [f"10.0.{i}.0/24" for i in range(check.MAX_CIDRS)]
    assert len(check.cidrs(many)) == check.MAX_CIDRS
    with pytest.raises(InvalidArgumentError, match=rf"^allowed_cidrs: at most {check.MAX_CIDRS}"):
        check.cidrs([*many, "192.0.2.0/24"])


@pytest.mark.parametrize("bad", ["", "foo", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/8/8", "2001:db8::/129"])
def test_cidr_errors_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^allowed_cidrs: "):
        check.cidrs(["10.0.0.0/8", bad])


# -- page_size ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "clamped"),
    [(0, check.DEFAULT_PAGE), (-5, check.DEFAULT_PAGE), (1, 1), (250, 250),
     (check.MAX_PAGE, check.MAX_PAGE), (check.MAX_PAGE + 1, check.MAX_PAGE), (10**9, check.MAX_PAGE)],
)
def test_page_size_clamp(given: int, clamped: int) -> None:
    assert check.page_size(given) == clamped


# -- duration ----------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 0.5, 600.0, float(check.MAX_GRACE_S)])
def test_duration_within_bounds(seconds: float) -> None:
    assert check.duration("grace_period", seconds) == seconds


@pytest.mark.parametrize("seconds", [-0.001, -1.0, check.MAX_GRACE_S + 0.001])
def test_duration_errors_name_the_field(seconds: float) -> None:
    expected = rf"^grace_period: must be between 0 and {check.MAX_GRACE_S} seconds"
    with pytest.raises(InvalidArgumentError, match=expected):
        check.duration("grace_period", seconds)


def test_duration_custom_maximum() -> None:
    assert check.duration("ttl", 3600.0, maximum=3600) == 3600.0
    with pytest.raises(InvalidArgumentError, match=r"^ttl: must be between 0 and 3600 seconds"):
        check.duration("ttl", 3601.0, maximum=3600)


# -- nothing echoed ----------------------------------------------------------------


SECRET = generate().secret


@pytest.mark.parametrize(
    "call",
    [
        lambda: check.scopes("scopes", ["ok", SECRET + " "]),
        lambda: check.scopes("scopes", [" " + SECRET]),
        lambda: check.scopes("scopes", [SECRET * 3]),
        lambda: check.cidrs([SECRET]),
        lambda: check.cidrs(["10.0.0.0/8", f"{SECRET}/8"]),
        lambda: check.metadata({SECRET: "x" * (check.MAX_METADATA_VALUE + 1)}),
        lambda: check.metadata({SECRET + "\n": "v"}),
        lambda: check.owner_id(SECRET + " "),
        lambda: check.key_id(SECRET),
        lambda: check.policy_id(SECRET),
        lambda: check.text("name", SECRET + "\n"),
    ],
)
def test_errors_never_echo_the_value(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call()
    message = str(info.value)
    assert SECRET not in message and SECRET[:12] not in message
    assert message.split(":", maxsplit=1)[0] in {"scopes", "allowed_cidrs", "metadata", "owner_id", "key_id",
                                      "policy_id", "name"}


# -- a key pasted into a stored field --------------------------------------------------

PASTED = generate().secret


@pytest.mark.parametrize("call", [
    lambda s: check.text("name", s),
    lambda s: check.text("description", f"for {s}!", 512),
    check.owner_id,
    lambda s: check.scopes("scopes", ["read", s]),
    lambda s: check.metadata({"note": s}),
    lambda s: check.metadata({s: "v"}),
    lambda s: requests.request("actor", s, "CreateKey", {}),
], ids=["name", "description", "owner_id", "scopes", "metadata_value", "metadata_key", "request_id"])
def test_a_key_pasted_into_a_stored_field_is_refused(call: Callable[[str], object]) -> None:
    # Stored, returned by GetKey/ListKeys, and (owner_id) sent upstream in x-keysvc-owner-id.
    with pytest.raises(InvalidArgumentError, match="looks like an API key") as refused:
        call(PASTED)
    assert PASTED not in str(refused.value) and PASTED[:16] not in str(refused.value)


def test_key_shaped_values_without_a_key_checksum_are_kept() -> None:
    digest = "sha_" + "ab" * 32  # the shape of a key, not its checksum
    assert check.text("name", digest) == digest
    assert check.owner_id(digest) == digest
    assert check.metadata({"digest": digest}) == {"digest": digest}
    # A revocation's reason is only audited (and redacted there): it may name the leaked key.
    assert check.text("reason", f"leaked {PASTED}", 256, stored=False) == f"leaked {PASTED}"
