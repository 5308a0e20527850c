"""keysvc.app.settings: defaults, KEYSVC_* parsing, overrides, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keysvc.app import settings
from keysvc.app.settings import Settings, env_name, load
from keysvc.core.errors import ConfigError

pytestmark = pytest.mark.unit

BAD_CONFIG = Path(__file__).parent.parent / "data" / "bad_config"


def _bad_config_cases() -> list[object]:
    files = sorted(BAD_CONFIG.glob("*.env"))
    assert files, f"no cases in {BAD_CONFIG}"
    return [
        pytest.param(path, id=path.stem)
        for path in files
    ]


def _read_case(path: Path) -> tuple[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1, f"{path.name}: want exactly one line KEYSVC_NAME=value"
    name, sep, value = lines[0].partition("=")
    assert sep, f"{path.name}: want KEYSVC_NAME=value"
    assert name.startswith("KEYSVC_"), path.name
    return name, value


# -- defaults ----------------------------------------------------------------------


def test_empty_environment_gives_the_defaults() -> None:
    loaded = load(env={})
    assert loaded == Settings()
    assert loaded.listen == "127.0.0.1:50051"
    assert loaded.store == "sqlite:///keysvc.db"
    assert loaded.key_prefix == "ks"
    assert loaded.cache_size == 100_000
    assert loaded.cache_ttl_s == 30.0
    assert loaded.fail_open is False
    assert loaded.log_format == "auto"


def test_every_field_has_a_default_and_a_one_line_doc() -> None:
    for f in dataclasses.fields(Settings):
        assert f.default is not dataclasses.MISSING, f.name
        doc = f.metadata.get("doc", "")
        assert doc, f.name
        assert "\n" not in doc, f.name
        assert str(f.type) in ("str", "int", "float", "bool"), f.name


def test_settings_are_frozen() -> None:
    loaded = load(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.cache_size = 1  # type: ignore[misc]


def test_env_name() -> None:
    assert env_name("cache_ttl_s") == "KEYSVC_CACHE_TTL_S"


# -- environment -------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "on", " on ", "YES"])
def test_bool_true_spellings(raw: str) -> None:
    assert load(env={"KEYSVC_FAIL_OPEN": raw}).fail_open is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off", "", " Off "])
def test_bool_false_spellings(raw: str) -> None:
    assert load(env={"KEYSVC_FAIL_OPEN": raw}).fail_open is False


def test_int_float_and_str_are_parsed() -> None:
    loaded = load(env={
        "KEYSVC_CACHE_SIZE": "500",
        "KEYSVC_CACHE_TTL_S": "1.5",
        "KEYSVC_NEGATIVE_TTL_S": "3",
        "KEYSVC_STORE": "redis://127.0.0.1:6379/2",
        "KEYSVC_KEY_PREFIX": "acme",
    })
    assert loaded.cache_size == 500
    assert type(loaded.cache_size) is int
    assert loaded.cache_ttl_s == 1.5
    assert loaded.negative_ttl_s == 3.0
    assert type(loaded.negative_ttl_s) is float
    assert loaded.store == "redis://127.0.0.1:6379/2"
    assert loaded.key_prefix == "acme"


@pytest.mark.parametrize(
    "store", ["sqlite:///tmp/k.db", "redis://h:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock"]
)
def test_supported_store_urls(store: str) -> None:
    assert load(env={"KEYSVC_STORE": store}).store == store


def test_unrelated_variables_are_ignored() -> None:
    assert load(env={"PATH": "/bin", "CACHE_SIZE": "0", "keysvc_cache_size": "0"}) == Settings()


def test_load_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSVC_CACHE_SIZE", "1234")
    assert load().cache_size == 1234


# -- overrides ---------------------------------------------------------------------


def test_overrides_beat_the_environment() -> None:
    env = {"KEYSVC_CACHE_SIZE": "5", "KEYSVC_LOG_LEVEL": "debug"}
    loaded = load(env=env, overrides={"cache_size": 7, "log_level": None})
    assert loaded.cache_size == 7
    assert loaded.log_level == "debug"  # None means "flag not given"


def test_string_overrides_are_converted() -> None:
    loaded = load(env={}, overrides={"cache_size": "9", "fail_open": "yes", "cache_ttl_s": "2.5"})
    assert (loaded.cache_size, loaded.fail_open, loaded.cache_ttl_s) == (9, True, 2.5)


def test_unknown_override_name() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'cache_sise'"):
        load(env={}, overrides={"cache_sise": 10})


def test_invalid_override_names_the_variable_and_flag() -> None:
    with pytest.raises(ConfigError, match=r"KEYSVC_CACHE_SIZE \(--cache-size\)"):
        load(env={}, overrides={"cache_size": 0})


def test_invalid_value_given_directly_is_refused() -> None:
    with pytest.raises(ConfigError, match="KEYSVC_LOG_FORMAT"):
        Settings(log_format="yaml")


# -- bad values from tests/data/bad_config -----------------------------------------


@pytest.mark.parametrize("path", _bad_config_cases())
def test_bad_config_names_the_variable(path: Path) -> None:
    name, value = _read_case(path)
    assert name in {env_name(f.name) for f in dataclasses.fields(Settings)}, f"{path.name}: unknown {name}"
    with pytest.raises(ConfigError) as caught:
        load(env={name: value})
    assert name in str(caught.value)


def test_bad_value_among_good_ones_is_still_reported() -> None:
    env = {"KEYSVC_CACHE_SIZE": "10", "KEYSVC_LOG_FORMAT": "xml", "KEYSVC_FAIL_OPEN": "on"}
    with pytest.raises(ConfigError, match="KEYSVC_LOG_FORMAT"):
        settings.load(env=env)
