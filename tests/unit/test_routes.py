"""keysvc.core.routes: matching, normalization, and refusing bad route files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keysvc.app.startup import load_routes
from keysvc.core.errors import ConfigError
from keysvc.core.routes import RouteRule, Routes, normalize_path, parse_routes, path_problem

pytestmark = pytest.mark.unit

BAD_ROUTES = Path(__file__).parent.parent / "data" / "bad_routes"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

TOML = """
[default]
scopes = ["api"]

[[rules]]
path = "/orders/export"
scopes = ["orders:export"]

[[rules]]
path_prefix = "/orders"
methods = ["post", "DELETE"]
scopes = ["orders:write"]

[[rules]]
path_prefix = "/orders"
scopes = ["orders:read"]

[[rules]]
path_prefix = "/public/"
scopes = []
"""


@pytest.fixture
def routes(tmp_path: Path) -> Routes:
    path = tmp_path / "routes.toml"
    path.write_text(TOML)
    return load_routes(path)


@pytest.mark.parametrize(("method", "target", "scopes"), [
    ("GET", "/orders/export", ("orders:export",)),
    ("POST", "/orders/export", ("orders:export",)),       # exact path wins: it comes first
    ("GET", "/orders/export/", ("orders:read",)),         # exact means exact; the prefix rule takes it
    ("POST", "/orders", ("orders:write",)),
    ("post", "/orders/17", ("orders:write",)),            # methods are case-insensitive
    ("DELETE", "/orders/17?force=1", ("orders:write",)),  # query strings are ignored
    ("GET", "/orders", ("orders:read",)),
    ("GET", "/orders/17?x=/admin", ("orders:read",)),
    ("HEAD", "/orders/", ("orders:read",)),
    ("GET", "/ordersx", ("api",)),                        # prefixes match whole segments
    ("GET", "/public/docs", ()),
    ("GET", "/publicity", ("api",)),
    ("GET", "/public", ("api",)),                         # "/public/" is a raw prefix: needs the slash
    ("GET", "/", ("api",)),
    ("GET", "", ("api",)),
    ("GET", "/other", ("api",)),
])
def test_first_match_wins_else_default(routes: Routes, method: str, target: str, scopes: tuple[str, ...]) -> None:
    assert routes.required_scopes(target, method) == scopes


@pytest.mark.parametrize(("target", "scopes"), [
    ("/public/../orders/1", ("orders:read",)),    # dot segments cannot dodge a stricter rule
    ("/public/%2e%2e/orders", ("orders:read",)),  # nor can escaped ones
    ("//orders//1", ("orders:read",)),
    ("/./orders", ("orders:read",)),
    ("/%6Frders/1", ("orders:read",)),
    ("/orders/../public/x", ()),
    ("/../../orders", ("orders:read",)),
    ("http://example.com/orders/1?a=b", ("orders:read",)),  # absolute-form targets
    ("/orders#frag", ("orders:read",)),
])
def test_paths_are_normalized_before_matching(routes: Routes, target: str, scopes: tuple[str, ...]) -> None:
    assert routes.required_scopes(target, "GET") == scopes


@pytest.mark.parametrize(("target", "path"), [
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),
    ("/.", "/"),
    ("///", "/"),
    ("/a%20b", "/a b"),
    ("/a?b=../c", "/a"),
    ("a/b", "/a/b"),
    ("", "/"),
    ("https://h:8443", "/"),
    ("/admin;x=1", "/admin"),        # path parameters are dropped, as Tomcat and Jetty do
    ("/public/..;/admin", "/admin"),
    ("/a;b/c;d/", "/a/c/"),
])
def test_normalize_path(target: str, path: str) -> None:
    assert normalize_path(target) == path


@pytest.mark.parametrize("target", [
    "/admin;x", "/admin;jsessionid=1/x", "/public/..;/admin", "/public/%3B/../admin",
])
def test_path_parameters_cannot_dodge_a_rule(target: str) -> None:
    routes = Routes((RouteRule(("admin",), path_prefix="/admin"),))
    assert routes.required_scopes(target, "GET") == ("admin",)


@pytest.mark.parametrize("target", [
    "/admin%2F..%2Fpublic", "/admin%2f..%2fpublic", "/a%5Cb", "/a%5cb", "/a/%2E%2E/b", "/a/%2e",
    "/admin%252F..%252Fpublic", "/a%252e%252e/b", "/a%255Cb", "/a%2500", "/a%00b", "/a%1fb", "/a%7Fb",
    "/a\\b", "/a\x00b", "/a\tb", "/a\nb", "/a#b", "/a?b#c", "/" + "a" * 8192,
])
def test_path_problem_refuses_ambiguous_targets(target: str) -> None:
    reason = path_problem(target)
    assert reason and target not in reason


@pytest.mark.parametrize("target", [
    "/a/b", "/a%20b", "/%6Frders/1", "/a?next=%2F..%2F", "/a?x=\\", "/a%25", "/a%25zz", "/a%41", "/" + "a" * 8191,
])
def test_path_problem_accepts_plain_targets(target: str) -> None:
    assert path_problem(target) == ""


def test_no_rules_needs_only_the_default() -> None:
    assert Routes().required_scopes("/anything", "GET") == ()
    assert Routes(default_scopes=("a",)).required_scopes("/x", "PUT") == ("a",)


def test_rule_matching_directly() -> None:
    rule = RouteRule(("s",), path_prefix="/v1", methods=frozenset({"GET"}))
    assert rule.matches("/v1/x", "GET")
    assert not rule.matches("/v1/x", "POST")
    assert not rule.matches("/v10", "GET")
    assert RouteRule((), path_prefix="/").matches("/anything", "PATCH")


def test_json_and_toml_give_the_same_routes(tmp_path: Path, routes: Routes) -> None:
    data = {
        "default": {"scopes": ["api"]},
        "rules": [
            {"path": "/orders/export", "scopes": ["orders:export"]},
            {"path_prefix": "/orders", "methods": ["post", "DELETE"], "scopes": ["orders:write"]},
            {"path_prefix": "/orders", "scopes": ["orders:read"]},
            {"path_prefix": "/public/", "scopes": []},
        ],
    }
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(data))
    assert load_routes(path) == routes


def test_defaults_and_duplicates() -> None:
    routes = parse_routes({"rules": [{"path": "/a", "scopes": ["x", "y", "x"]}]})
    assert routes.default_scopes == ()
    assert routes.rules[0].scopes == ("x", "y")
    assert routes.rules[0].methods == frozenset()
    assert parse_routes({}) == Routes()


def test_routes_are_frozen(routes: Routes) -> None:
    with pytest.raises(AttributeError):
        routes.rules = ()  # type: ignore[misc]


def test_shipped_example_loads() -> None:
    routes = load_routes(DEPLOY / "routes.example.toml")
    assert routes.rules, "the example should show rules"


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read route file"):
        load_routes(missing)


def _bad_cases() -> list[object]:
    files = sorted(p for p in BAD_ROUTES.iterdir() if p.name != "README.md")
    assert files, f"no cases in {BAD_ROUTES}"
    return [pytest.param(p, id=p.name) for p in files]


@pytest.mark.parametrize("path", _bad_cases())
def test_bad_route_files_are_refused_naming_file_and_rule(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_routes(path)
    message = str(caught.value)
    assert str(path) in message
    first = path.read_text().splitlines()[0]
    if first.startswith("# expect: "):
        assert first.removeprefix("# expect: ") in message
