"""Route rules for proxied requests: which scopes a method and path need. Pure.

A route file (JSON or TOML, chosen by its extension) holds an ordered list of
rules and a default::

    [default]                    # optional; applies when no rule matches
    scopes = []                  # a valid key, no particular scope

    [[rules]]
    path_prefix = "/orders"      # or: path = "/orders/export" (exact)
    methods = ["GET", "HEAD"]    # optional; every method when left out
    scopes = ["orders:read"]

The first rule that matches wins. Every route needs a valid key: a rule only
adds the scopes that key must hold. A prefix matches whole path segments
(`/orders` matches `/orders` and `/orders/7`, not `/ordersx`); end it with
`/` to match a raw string prefix. Paths are compared after dropping the query
string, percent-decoding, dropping `;` path parameters, removing dot segments
and merging slashes, so `/public/../admin` and `/admin;x/` are judged as
`/admin`, as the upstream will most likely see it.

Some targets cannot be judged the way every upstream will read them, and
`path_problem` names them so the transports refuse them (400): an encoded
`/`, backslash or `.` (`%2F`, `%5C`, `%2E`: one server decodes it before splitting
segments, the next after), a double-encoded one (`%252F`), a backslash, a NUL
or other control character (raw or encoded), a fragment, or a target longer
than `MAX_TARGET`. Only `load_routes` does I/O (it reads the file once, at
start-up).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from keysvc.core.errors import ConfigError

__all__ = [
    "MAX_TARGET", "PATH_PREFIX_PROXIES", "PROXY_TARGET_HEADERS", "RouteRule", "Routes", "normalize_path",
    "parse_route_file", "parse_routes", "path_problem",
]

# The scopes CreateKey accepts (keysvc.service.checks): a route cannot ask for
# a scope that no key could ever hold.
_SCOPE_RE = re.compile(r"[A-Za-z0-9:._*/-]{1,128}")
_METHOD_RE = re.compile(r"[A-Z][A-Z-]{0,31}")
_MAX_SCOPES = 64  # as many as Validate takes in required_scopes
_RULE_FIELDS = frozenset({"path", "path_prefix", "methods", "scopes"})
_TOP_FIELDS = frozenset({"rules", "default"})


MAX_TARGET = 8192  # longest request target judged, in characters (nginx's large buffers hold 8k)
# Encodings of a separator (`/`, `\\`, `.`) or a control character: servers disagree on
# whether they split segments or end strings, so no target holding one is judged.
_AMBIGUOUS_ESCAPE = re.compile(r"%(?:2[eEfF]|5[cC]|[01][0-9a-fA-F]|7[fF])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and the backslash


def path_problem(target: str) -> str:
    """Return "" when `target` can be judged, else why it is refused (a message for a 400).

    The message never quotes the target.
    """
    if len(target) > MAX_TARGET:
        return f"the request target is longer than {MAX_TARGET} characters"
    if "#" in target:
        return "the request target holds a fragment ('#')"
    path = target.partition("?")[0]
    if _CONTROL.search(path):
        return "the path holds a backslash or a control character"
    if "%" in path:
        if _AMBIGUOUS_ESCAPE.search(path):
            return "the path holds an encoded '/', '\\', '.' or control character"
        decoded = unquote(path)
        if _AMBIGUOUS_ESCAPE.search(decoded) or _CONTROL.search(decoded):
            return "the path holds a double-encoded '/', '\\', '.' or control character"
    return ""


def normalize_path(target: str) -> str:
    """Return the path of a request target as route rules see it.

    Drops the query string and fragment, turns an absolute URI into its path,
    percent-decodes, drops each segment's `;` parameters (as Tomcat and Jetty
    do: `/admin;x` is `/admin`), removes `.` and `..` segments and merges
    repeated slashes. A trailing slash is kept. Targets `path_problem`
    refuses are not meant to reach here (their result is unspecified).
    """
    path = target.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):
        _, sep, rest = path.partition("://")
        path = "/" + (rest.partition("/")[2] if sep else path)
    if "%" in path:
        path = unquote(path)
    if "//" not in path and "/." not in path and ";" not in path:
        return path  # the common case: nothing to resolve
    segments: list[str] = []
    for part in path.split("/"):
        segment = part.partition(";")[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    resolved = "/" + "/".join(segments)
    last = path.rpartition("/")[2].partition(";")[0]
    if resolved != "/" and (path.endswith("/") or last in (".", "..")):
        resolved += "/"
    return resolved


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One rule: an exact path or a path prefix, optional methods, and the scopes needed.

    Exactly one of `path` and `path_prefix` is set. `methods` empty means every
    method; names are upper-case.
    """

    scopes: tuple[str, ...]
    path: str = ""
    path_prefix: str = ""
    methods: frozenset[str] = field(default_factory=frozenset)

    def matches(self, path: str, method: str) -> bool:
        """True when this rule applies to a normalized `path` and upper-case `method`."""
        if self.methods and method not in self.methods:
            return False
        if self.path:
            return path == self.path
        prefix = self.path_prefix
        if not path.startswith(prefix):
            return False
        return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


@dataclass(frozen=True, slots=True)
class Routes:
    """The ordered rules of a route file and the scopes needed when none matches."""

    rules: tuple[RouteRule, ...] = ()
    default_scopes: tuple[str, ...] = ()

    def required_scopes(self, target: str, method: str) -> tuple[str, ...]:
        """Return the scopes a request needs (first matching rule, else the default).

        Args:
            target: the request target as sent (path, maybe with a query string).
            method: the HTTP method, any case.
        """
        if not self.rules:
            return self.default_scopes
        path = normalize_path(target)
        method = method.upper()
        for rule in self.rules:
            if rule.matches(path, method):
                return rule.scopes
        return self.default_scopes


# The headers each forward-auth proxy writes the held request's target and method into.
PROXY_TARGET_HEADERS: Mapping[str, tuple[str, str]] = {
    "nginx": ("x-original-uri", "x-original-method"),
    "traefik": ("x-forwarded-uri", "x-forwarded-method"),
    "caddy": ("x-forwarded-uri", "x-forwarded-method"),
}
# The proxies that send the held request's target as the path under a prefix, with its own method
# (Envoy's ext_authz `http_service` with `path_prefix`, Istio's envoyExtAuthzHttp): no header is read.
PATH_PREFIX_PROXIES: Mapping[str, str] = {"envoy": "/authz"}


def parse_route_file(text: str, suffix: str, source: str) -> Routes:
    """Parse the text of a route file whose name ends in `suffix` (".json" or ".toml").

    The app layer reads the file (`keysvc.app.startup.load_routes`); this stays pure.

    Raises:
        ConfigError: the text cannot be parsed, or a rule is invalid; the
            message names `source` and the rule's index.
    """
    suffix = suffix.lower()
    try:
        if suffix == ".json":
            data: Any = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"{source}: route files are .json or .toml, not {suffix or 'no extension'!r}")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid {suffix[1:].upper()}: {exc}") from None
    return parse_routes(data, source)


def parse_routes(data: Any, source: str = "<routes>") -> Routes:
    """Build Routes from parsed JSON/TOML data.

    Raises:
        ConfigError: the data does not describe valid routes; the message
            starts with `source` and names the rule's index.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: want a table with `rules` and an optional `default`")
    unknown = sorted(set(data) - _TOP_FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; want `rules` and `default`")
    default = data.get("default", {})
    if not isinstance(default, Mapping) or set(default) - {"scopes"}:
        raise ConfigError(f"{source}: default: want a table with only `scopes`")
    default_scopes = _scopes(default.get("scopes", []), f"{source}: default")
    rules = data.get("rules", [])
    if not isinstance(rules, Sequence) or isinstance(rules, str):
        raise ConfigError(f"{source}: rules: want a list of tables")
    return Routes(
        tuple(_rule(rule, f"{source}: rules[{index}]") for index, rule in enumerate(rules)),
        default_scopes,
    )


def _rule(raw: Any, where: str) -> RouteRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: want a table with path or path_prefix, methods and scopes")
    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                          f"want path or path_prefix, methods, scopes")
    if ("path" in raw) == ("path_prefix" in raw):
        raise ConfigError(f"{where}: set exactly one of `path` (exact) and `path_prefix`")
    name = "path" if "path" in raw else "path_prefix"
    value = raw[name]
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{where}: {name} must be a string starting with '/'")
    if path_problem(value) or normalize_path(value) != value:
        raise ConfigError(f"{where}: {name} {value!r} is not a plain path "
                          f"(no query, dot segments, '//' or %-escapes); "
                          f"did you mean {normalize_path(value)!r}?")
    if "scopes" not in raw:
        raise ConfigError(f"{where}: `scopes` is required (use [] for any valid key)")
    methods: frozenset[str] = frozenset()
    if "methods" in raw:
        listed = raw["methods"]
        if not isinstance(listed, list) or not listed:
            raise ConfigError(f"{where}: methods must be a non-empty list (leave it out for every method)")
        for method in listed:
            if not isinstance(method, str) or not _METHOD_RE.fullmatch(method.upper()):
                raise ConfigError(f"{where}: {method!r} is not an HTTP method")
        methods = frozenset(m.upper() for m in listed)
    scopes = _scopes(raw["scopes"], where)
    if name == "path":
        return RouteRule(scopes, path=value, methods=methods)
    return RouteRule(scopes, path_prefix=value, methods=methods)


def _scopes(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: scopes must be a list of strings")
    if len(raw) > _MAX_SCOPES:
        raise ConfigError(f"{where}: at most {_MAX_SCOPES} scopes")
    for scope in raw:
        if not isinstance(scope, str) or not _SCOPE_RE.fullmatch(scope):
            raise ConfigError(f"{where}: {scope!r} is not a scope (letters, digits and : . _ * / -)")
    return tuple(dict.fromkeys(raw))
