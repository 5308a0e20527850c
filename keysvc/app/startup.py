"""Start-up checks: settings that can never work stop the start with one line, never a traceback.

The store: a SQLite file that cannot be opened, or is not a database, will
not heal by waiting (a busy lock will, and so will a Redis that is not up
yet: the server then starts NOT_SERVING and waits for it).

Listen addresses are checked before binding. Route files are read here and
parsed by the pure `keysvc.core.routes`.

gRPC reports a failed bind as a bare failure (and logs C-core lines of its
own), so each TCP address is first bound here with a plain socket, which
says why: in use, not an address of this host, permission denied, no such
host. A single process binds without SO_REUSEPORT, so a second keysvc (or
anything else) on its port is refused. A `--workers` set shares its ports
through `reserve`: the parent binds each port exclusively (which fails if
anyone holds it), then turns SO_REUSEPORT on for that bound socket so only
its own children, started afterwards with SO_REUSEPORT, can join.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from keysvc.app.health import redact_url
from keysvc.app.settings import Settings, env_name, split_listen
from keysvc.core.errors import ConfigError, StoreUnavailableError
from keysvc.core.routes import Routes, parse_route_file

if TYPE_CHECKING:
    from keysvc.store.base import Store

__all__ = [
    "check_apart", "check_free", "check_store", "grpc_stack", "load_routes", "reserve", "sqlite_path",
]


def load_routes(path: str | Path) -> Routes:
    """Read a route file (`.json` or `.toml`) and parse it.

    Raises:
        ConfigError: the file cannot be read or parsed, or a rule is invalid;
            the message names the file and the rule's index.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read route file: {exc}") from None
    return parse_route_file(text, source.suffix, str(source))


def _bound(name: str, address: str, *, keep: bool) -> socket.socket | None:
    """Bind every address `address` resolves to, exclusively, as gRPC would.

    Returns:
        With `keep`, the first bound socket (the others are not tried); else
        None, every socket closed again. None for a unix socket.

    Raises:
        ConfigError: naming the setting and why: an address in use, or none bindable.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{env_name(name)}: cannot listen on {address}: {why}")

    try:
        parsed = split_listen(address)
    except ValueError as exc:
        raise ConfigError(f"{env_name(name)}: {exc}") from None
    if isinstance(parsed, str):
        _check_unix(name, address, parsed)
        return None
    host, port = parsed
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise bad(_reason(exc)) from None
    failure: OSError | None = None
    bound_any = False
    for family, _, _, _, sockaddr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Like gRPC's own bind: connections in TIME_WAIT do not hold the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise bad(_reason(exc)) from None
            failure = failure or exc
            continue
        if keep:
            return sock
        sock.close()
        bound_any = True
    if not bound_any:
        raise bad(_reason(failure) if failure else "no address to bind")
    return None


def _check_unix(name: str, address: str, path: str) -> None:
    """A socket path binds when its directory exists and no live server holds it."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{env_name(name)}: cannot listen on {address}: {why}")

    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise bad(f"directory {directory} does not exist")
    if not os.path.exists(path):
        return
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        raise bad("the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # a stale socket file: binding replaces it
    raise bad("Address already in use")


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_free(name: str, address: str) -> None:
    """Check that `address` (the setting `name`) can be bound now, by this process alone.

    Raises:
        ConfigError: it cannot; the message names the setting and the reason.
    """
    _bound(name, address, keep=False)


_WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 (compared against, never bound)


def _hosts(host: str, port: int) -> set[str]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return {host}
    return {str(info[4][0]) for info in infos}


def check_apart(name: str, address: str, reserved: dict[str, str]) -> None:
    """Refuse `address` when it shares a port with one already `reserved` (setting -> address).

    The holders of `reserve` bind with SO_REUSEADDR and never listen, so the
    kernel lets a second one share their port; the set's listeners would then
    take turns at each new connection. A wildcard host counts as every address.

    Raises:
        ConfigError: naming the setting and the one it collides with.
    """
    parsed = split_listen(address)
    if isinstance(parsed, str) or parsed[1] == 0:
        return
    mine = _hosts(*parsed)
    for other, held in reserved.items():
        theirs = split_listen(held)
        if isinstance(theirs, str) or theirs[1] != parsed[1]:
            continue
        if mine & _hosts(*theirs) or (mine | _hosts(*theirs)) & _WILDCARDS:
            raise ConfigError(f"{env_name(name)}: cannot listen on {address}: "
                              f"Address already in use (by {env_name(other)})")


def reserve(name: str, address: str) -> tuple[str, socket.socket | None]:
    """Hold `address` for one worker set; return it with port 0 resolved, and the holder.

    The holder is bound, never listening (it takes no connections), and
    shares the port by SO_REUSEPORT with sockets bound after it.

    Raises:
        ConfigError: the address is taken or cannot be bound.
    """
    sock = _bound(name, address, keep=True)
    if sock is None:
        return address, None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    host = address.rpartition(":")[0]
    return f"{host}:{sock.getsockname()[1]}", sock


def sqlite_path(settings: Settings) -> str:
    """The file a sqlite:// store URL names."""
    # sqlite:///rel.db -> rel.db ; sqlite:////abs/path.db -> /abs/path.db
    return settings.store.removeprefix("sqlite://").removeprefix("/") or "keysvc.db"


def _sqlite_problem(path: str) -> str:
    """Say why SQLite cannot open `path`, when the file system tells (SQLite's own message is vague)."""
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable"
    return ""


async def check_store(store: Store, settings: Settings) -> None:
    """Refuse, at start-up, a store that can never work; let one that is only down now wait.

    A SQLite file that cannot be opened or is not a database will not heal by
    waiting; a busy lock will, and so will a Redis that is not up yet.

    Raises:
        ConfigError: naming KEYSVC_STORE and the reason (credentials redacted).
    """
    if not settings.store.startswith("sqlite://"):
        return
    try:
        await store.ping()
    except StoreUnavailableError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return
        reason = _sqlite_problem(sqlite_path(settings)) or redact_url(str(exc), settings.store)
        raise ConfigError(f"{env_name('store')}: cannot open the SQLite store: {reason}") from None
    except ConfigError as exc:  # written by a newer keysvc
        raise ConfigError(f"{env_name('store')}: {exc}") from None


def grpc_stack(choice: str, cpus: int | None = None) -> str:
    """The gRPC stack to serve on: `choice`, with "auto" decided by the CPUs this process may use.

    Measured (README, Performance): confined to one CPU, the synchronous
    grpc.server carries a call for less CPU than grpc.aio; free to run on
    several, its threads hand the GIL from core to core and grpc.aio wins.

    Args:
        choice: the `grpc_stack` setting: auto, sync or aio.
        cpus: CPUs in this process's affinity mask (default: read it).
    """
    if choice != "auto":
        return choice
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    return "sync" if cpus == 1 else "aio"
