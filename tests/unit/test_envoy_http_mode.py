"""KEYSVC_AUTHZ_PROXY=envoy: the target is the request's own path after /authz, never a header."""

from __future__ import annotations

import pytest

from keysvc.api.http.forward_auth import _target_under
from keysvc.app.settings import load

pytestmark = pytest.mark.unit


def test_envoy_is_a_proxy_keysvc_can_be_told_about() -> None:
    env = {"KEYSVC_HTTP_LISTEN": "127.0.0.1:8081", "KEYSVC_AUTHZ_ROUTES": "/etc/keysvc/routes.toml",
           "KEYSVC_AUTHZ_PROXY": "envoy"}
    assert load(env=env).authz_proxy == "envoy"


@pytest.mark.parametrize(("raw_path", "target"), [
    ("/authz/orders/7?x=1", "/orders/7?x=1"),
    ("/authz/", "/"),
    ("/authz//orders", "//orders"),  # judged (and refused or merged) by the route rules, as sent
    ("/authz/public%2F..%2Forders", "/public%2F..%2Forders"),  # still encoded: path_problem sees it
    ("/authz", ""),
    ("/authz?x=/orders", ""),
    ("/authz%2Forders", ""),
    ("/authzorders", ""),
    ("/orders", ""),
])
def test_the_target_is_what_follows_the_prefix_in_the_raw_path(raw_path: str, target: str) -> None:
    assert _target_under(raw_path, "/authz") == target
