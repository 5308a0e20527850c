"""keysvc.app.settings: the forward-auth and ext_authz settings and their parsers."""

from __future__ import annotations

import pytest

from keysvc.app.settings import Settings, header_names, load, split_listen
from keysvc.core.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_keep_http_off_and_read_the_usual_headers() -> None:
    s = Settings()
    assert (s.http_listen, s.authz_routes, s.authz_trusted_proxy_depth) == ("", "", 0)
    assert header_names(s.authz_key_headers) == ("x-api-key", "authorization")


def test_values_from_the_environment() -> None:
    s = load(env={"KEYSVC_HTTP_LISTEN": "unix:/run/keysvc.sock", "KEYSVC_AUTHZ_ROUTES": "/etc/keysvc/routes.TOML",
                  "KEYSVC_AUTHZ_KEY_HEADERS": " X-Token , authorization,x-token", "KEYSVC_AUTHZ_TRUSTED_PROXY_DEPTH": "2",
                  "KEYSVC_AUTHZ_PROXY": "caddy"})
    assert s.http_listen == "unix:/run/keysvc.sock" and s.authz_trusted_proxy_depth == 2
    assert s.authz_proxy == "caddy"
    assert header_names(s.authz_key_headers) == ("x-token", "authorization")


@pytest.mark.parametrize(("address", "parsed"), [
    ("127.0.0.1:8081", ("127.0.0.1", 8081)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    (":8081", ("", 8081)),
    ("[::1]:8081", ("::1", 8081)),
    ("localhost:65535", ("localhost", 65535)),
    ("unix:/run/keysvc.sock", "/run/keysvc.sock"),
])
def test_split_listen(address: str, parsed: object) -> None:
    assert split_listen(address) == parsed


@pytest.mark.parametrize("address", ["8081", "host:", "host:http", "host:65536", "unix:", "host:-1"])
def test_split_listen_refuses(address: str) -> None:
    with pytest.raises(ValueError, match="want"):
        split_listen(address)


def test_flags_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"KEYSVC_AUTHZ_TRUSTED_PROXY_DEPTH \(--authz-trusted-proxy-depth\)"):
        load(env={}, overrides={"authz_trusted_proxy_depth": 33})


def test_route_rules_over_http_need_the_proxy_named() -> None:
    # Which header carries the target depends on the proxy; guessing lets a client pick it.
    env = {"KEYSVC_HTTP_LISTEN": "127.0.0.1:8081", "KEYSVC_AUTHZ_ROUTES": "/etc/keysvc/routes.toml"}
    with pytest.raises(ConfigError, match=r"KEYSVC_AUTHZ_PROXY \(--authz-proxy\): required"):
        load(env=env)
    with pytest.raises(ConfigError, match=r"KEYSVC_AUTHZ_PROXY \(--authz-proxy\): want one of nginx, traefik"):
        load(env={**env, "KEYSVC_AUTHZ_PROXY": "apache"})
    assert load(env={**env, "KEYSVC_AUTHZ_PROXY": "nginx"}).authz_proxy == "nginx"
    assert load(env={"KEYSVC_HTTP_LISTEN": "127.0.0.1:8081"}).authz_proxy == ""  # no rules: no target read
