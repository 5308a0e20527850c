"""Settings: parsed once at start-up from flags and KEYSVC_* variables.

Every field has a default and a one-line docstring (in `doc` metadata); the
README's configuration table is tested against this dataclass. Nothing reads
the environment after `load()`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keysvc.core.errors import ConfigError
from keysvc.core.keys import validate_prefix
from keysvc.core.routes import PATH_PREFIX_PROXIES, PROXY_TARGET_HEADERS

__all__ = [
    "Settings", "env_name", "header_names", "load", "markdown_table", "split_listen",
]


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything keysvc can be told at start-up."""

    listen: str = _f("127.0.0.1:50051", "gRPC address of Validate and ext_authz: host:port or unix:/path.")
    admin_listen: str = _f("", "Separate gRPC address for admin RPCs; empty serves them on `listen`.")
    store: str = _f("sqlite:///keysvc.db", "Store URL: sqlite:///path/to/file.db, redis://host:port/db, "
                    "redis+cluster://host:port[,...] or redis+sentinel://host:port[,...]/service/db.")
    store_timeout_ms: int = _f(
        100, "Timeout of one store call, in milliseconds; a validation's store work gets "
        "this x (1 + retries) in all."
    )
    store_retries: int = _f(1, "Retries of a failed idempotent store read before giving up.")
    redis_namespace: str = _f("keysvc", "Prefix of every Redis key (and the Cluster hash tag).")
    key_prefix: str = _f("ks", "Default prefix of new keys.")
    cache_size: int = _f(100_000, "Most keys held in the in-process cache.")
    cache_ttl_s: float = _f(30.0, "Safety-net lifetime of a cached key or policy, in seconds.")
    negative_cache_size: int = _f(10_000, "Most unknown key hashes remembered (bounded against floods).")
    negative_ttl_s: float = _f(2.0, "How long an unknown key is remembered, in seconds.")
    stale_window_s: float = _f(
        60.0, "Seconds past its TTL a cached key answers while the store is down; also the most "
        "follower lag (at least 1 s) before the cache is not read.")
    fail_open: bool = _f(False, "Answer VALID for uncached keys when the store is down (else fail closed).")
    event_poll_ms: int = _f(50, "How often the SQLite store's event log is polled, in milliseconds.")
    event_retention: int = _f(100_000, "Events kept in the store's event log.")
    log_format: str = _f("auto", "Log format: auto (JSON unless on a terminal), json or console.")
    log_level: str = _f("info", "Lowest log level written: debug, info, warning or error.")
    shutdown_grace_s: float = _f(5.0, "How long SIGTERM waits for in-flight calls before exiting.")
    max_request_bytes: int = _f(65_536, "Largest gRPC request accepted, in bytes.")
    workers: int = _f(1, "Server processes sharing the listen ports (SO_REUSEPORT), each with its own cache.")
    grpc_stack: str = _f(
        "auto", "gRPC server stack: sync (grpc.server, a thread pool), aio (grpc.aio), or auto: "
        "sync when the process may run on one CPU only, else aio."
    )
    grpc_threads: int = _f(16, "Threads of the sync stack's pool: the most calls it runs at once.")
    max_concurrent_rpcs: int = _f(
        1024, "Most gRPC calls (streams included) a server runs or queues at once; "
        "beyond it a call is refused with RESOURCE_EXHAUSTED at once."
    )
    max_store_inflight: int = _f(
        32, "Most validations waiting on the store at once (as many more may wait for a slot "
        "within their budget); beyond that a miss answers UNAVAILABLE at once (or from the stale "
        "cache), counted in keysvc.store.shed."
    )
    http_listen: str = _f(
        "", "HTTP forward-auth address (/authz, /healthz, /livez): host:port or unix:/path; empty: off."
    )
    authz_routes: str = _f(
        "", "Route file (.toml or .json): scopes needed by path and method; empty: any valid key."
    )
    authz_key_headers: str = _f(
        "x-api-key,authorization", "Headers holding the key, tried in order; authorization as Bearer."
    )
    authz_trusted_proxy_depth: int = _f(
        0, "Proxies in front that append X-Forwarded-For; 0 uses the peer address."
    )
    authz_proxy: str = _f(
        "", "The proxy calling /authz: nginx (target from X-Original-URI/-Method), traefik, "
        "caddy (X-Forwarded-Uri/-Method) or envoy (/authz/<path>, its own method); required with route rules."
    )
    metrics_listen: str = _f("", "Prometheus scrape address (/metrics), host:port; empty: off.")
    liveness_stall_s: float = _f(
        10.0, "Seconds the event loop may go without ticking before the `liveness` health check fails."
    )
    tls_cert: str = _f("", "PEM certificate chain: the gRPC, admin and HTTP TCP listeners serve TLS; "
                       "re-read when the file changes. Empty: plaintext.")
    tls_key: str = _f("", "PEM private key of `tls_cert` (required with it).")
    tls_client_ca: str = _f(
        "", "PEM CA bundle: with it, the TLS listeners require a client certificate it signed (mTLS). "
        "Every listener re-reads it when it changes (new connections trust the new bundle only)."
    )

    def __post_init__(self) -> None:
        _check(self)


_LOG_FORMATS = ("auto", "json", "console")
_GRPC_STACKS = ("auto", "sync", "aio")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def env_name(name: str) -> str:
    """Return the environment variable for a settings field."""
    return "KEYSVC_" + name.upper()


def _check(s: Settings) -> None:
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{env_name(name)} (--{name.replace('_', '-')}): {why}")

    _check_listen(s, bad)
    redis_schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://")
    if not (s.store.startswith("sqlite://") or s.store.startswith(redis_schemes)):
        raise bad("store", f"unsupported store URL {s.store!r}; use sqlite:///file.db or redis://host:port/db")
    for name in ("store_timeout_ms", "cache_size", "negative_cache_size", "event_poll_ms",
                 "event_retention", "max_request_bytes", "max_concurrent_rpcs", "max_store_inflight"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be > 0")
    for name in ("store_retries",):
        if getattr(s, name) < 0:
            raise bad(name, "must be >= 0")
    if not (s.liveness_stall_s > 0 and math.isfinite(s.liveness_stall_s)):
        raise bad("liveness_stall_s", "must be a finite number > 0")
    for name in ("cache_ttl_s", "negative_ttl_s", "stale_window_s", "shutdown_grace_s"):
        value = getattr(s, name)
        if not (value >= 0 and math.isfinite(value)):  # also refuses nan and inf
            raise bad(name, "must be a finite number >= 0")
    if s.log_format not in _LOG_FORMATS:
        raise bad("log_format", f"must be one of {', '.join(_LOG_FORMATS)}")
    if s.log_level not in _LOG_LEVELS:
        raise bad("log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    try:
        validate_prefix(s.key_prefix)
    except ValueError as exc:
        raise bad("key_prefix", str(exc)) from None
    _check_authz(s, bad)
    _check_workers(s, bad)
    _check_metrics(s, bad)
    _check_stack(s, bad)
    _check_tls(s, bad)


def _check_tls(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    """The TLS settings go together (their files are checked at start-up, by keysvc.app.tls)."""
    if bool(s.tls_cert) != bool(s.tls_key):
        missing, given = ("tls_key", "tls_cert") if s.tls_cert else ("tls_cert", "tls_key")
        raise bad(missing, f"required with {env_name(given)}")
    if s.tls_client_ca and not s.tls_cert:
        raise bad("tls_client_ca", "requires KEYSVC_TLS_CERT and KEYSVC_TLS_KEY (mTLS is TLS first)")


def _check_listen(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    if not s.listen:
        raise bad("listen", "must not be empty")
    for name in ("listen", "admin_listen"):
        try:
            if getattr(s, name):
                split_listen(getattr(s, name))
        except ValueError as exc:
            raise bad(name, str(exc)) from None


def _check_stack(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    if s.grpc_stack not in _GRPC_STACKS:
        raise bad("grpc_stack", f"must be one of {', '.join(_GRPC_STACKS)}")
    if s.grpc_threads < 4:
        raise bad("grpc_threads", "must be >= 4 (calls waiting on the store must not stall the rest)")


def _check_metrics(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    if not s.metrics_listen:
        return
    try:
        address = split_listen(s.metrics_listen)
    except ValueError as exc:
        raise bad("metrics_listen", str(exc)) from None
    if isinstance(address, str):
        raise bad("metrics_listen", "want host:port (the scrape endpoint cannot be a unix socket)")
    if s.workers > 1:
        raise bad("metrics_listen", f"the {s.workers} workers cannot share one scrape port; "
                                    f"run one worker per process ({env_name('workers')}=1)")


def _check_workers(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    if s.workers < 1:
        raise bad("workers", "must be >= 1")
    if s.workers == 1:
        return
    for name in ("listen", "admin_listen", "http_listen"):
        if getattr(s, name, "").startswith("unix:"):
            # SO_REUSEPORT shares TCP ports only: N processes cannot bind one socket path.
            raise bad(name, f"a unix socket cannot be shared by {s.workers} workers "
                            f"({env_name('workers')}); use host:port, or one worker")


_HEADER_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def _check_authz(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    if s.http_listen:
        try:
            split_listen(s.http_listen)
        except ValueError as exc:
            raise bad("http_listen", str(exc)) from None
    if s.authz_routes and not s.authz_routes.lower().endswith((".toml", ".json")):
        raise bad("authz_routes", "must name a .toml or .json file")
    names = header_names(s.authz_key_headers)
    if not names or not all(_HEADER_RE.fullmatch(name) for name in names):
        raise bad("authz_key_headers", "want a comma-separated list of header names")
    if not 0 <= s.authz_trusted_proxy_depth <= 32:
        raise bad("authz_trusted_proxy_depth", "must be between 0 and 32")
    if s.authz_proxy not in ("", *PROXY_TARGET_HEADERS, *PATH_PREFIX_PROXIES):
        raise bad("authz_proxy", f"want one of {', '.join((*PROXY_TARGET_HEADERS, *PATH_PREFIX_PROXIES))}")
    if s.http_listen and s.authz_routes and not s.authz_proxy:
        # Each proxy writes the target into its own header and passes a client's copy of the
        # others through: reading the wrong one lets a client pick the route it is judged by.
        raise bad("authz_proxy", "required when http_listen and authz_routes are set: "
                  "name the proxy that calls /authz, so keysvc reads only the header it writes")


def header_names(value: str) -> tuple[str, ...]:
    """Split a comma-separated list of header names (lower-cased, blanks dropped)."""
    return tuple(dict.fromkeys(name.strip().lower() for name in value.split(",") if name.strip()))


def split_listen(address: str) -> tuple[str, int] | str:
    """Parse `host:port`, `[v6]:port` or `unix:/path` into (host, port) or a socket path.

    Raises:
        ValueError: the address is none of those.
    """
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path:
            raise ValueError(f"{address!r}: want unix:/path/to/socket")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r}: want host:port (port 0-65535) or unix:/path")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _convert(name: str, kind: type, raw: str) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)}: cannot read {raw!r} as {kind.__name__}") from None


def _field_types() -> dict[str, type]:
    kinds = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: kinds[str(f.type)] for f in dataclasses.fields(Settings)}


def load(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from KEYSVC_* variables, then explicit overrides (flags).

    Raises:
        ConfigError: a value cannot be read or is out of range; the message
            names the variable.
    """
    env = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}
    for name, kind in types.items():
        raw = env.get(env_name(name))
        if raw is not None:
            values[name] = _convert(name, kind, raw)
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _convert(name, types[name], value) if isinstance(value, str) else value
    return Settings(**values)


def markdown_table() -> str:
    """Return the README's configuration table, generated from `Settings`."""
    rows = [
        "| Variable | Flag | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else ""
        rows.append(
            f"| `{env_name(f.name)}` | `--{f.name.replace('_', '-')}` | `{default!r}` | {f.metadata['doc']} |"
        )
    return "\n".join(rows)
