"""Bad configuration stops `keysvc serve` with one line naming the setting, exit 2 (real processes)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e._servers import ServerProcess, free_port, keysvc_cmd

pytestmark = pytest.mark.e2e


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keysvc_cmd("serve", "--log-format", "json", *args), capture_output=True,
                          text=True, timeout=60, check=False)


def assert_one_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2, and stderr is exactly one line naming every one of `names`, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("flag", ["--listen", "--admin-listen", "--http-listen", "--metrics-listen"])
def test_a_port_in_use_is_one_line_naming_the_setting(flag: str, taken: int, tmp_path: Path) -> None:
    args = ["--listen", f"127.0.0.1:{free_port()}", "--store", f"sqlite:///{tmp_path}/k.db"]
    args += [flag, f"127.0.0.1:{taken}"]
    line = assert_one_line(serve(*args), "KEYSVC_" + flag.removeprefix("--").replace("-", "_").upper())
    assert "in use" in line


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "no-such-host.invalid:50051",
                                     "192.0.2.1:50051"])
def test_an_unusable_listen_address_is_one_line(address: str, tmp_path: Path) -> None:
    assert_one_line(serve("--listen", address, "--store", f"sqlite:///{tmp_path}/k.db"), "KEYSVC_LISTEN")


def test_a_second_server_on_a_served_port_exits_2_instead_of_sharing_it(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    first = start_server(f"sqlite:///{tmp_path}/first.db")
    line = assert_one_line(serve("--listen", first.addr, "--store", f"sqlite:///{tmp_path}/second.db"),
                           "KEYSVC_LISTEN")
    assert "in use" in line
    workers = serve("--listen", first.addr, "--store", f"sqlite:///{tmp_path}/second.db", "--workers", "2")
    assert "in use" in assert_one_line(workers, "KEYSVC_LISTEN")
    first.wait_serving()  # and the first one never noticed


def test_a_server_on_a_worker_sets_port_exits_2(start_server: Callable[..., ServerProcess],
                                                tmp_path: Path) -> None:
    workers = start_server(f"sqlite:///{tmp_path}/set.db", "--workers", "2")
    line = assert_one_line(serve("--listen", workers.addr, "--store", f"sqlite:///{tmp_path}/other.db"),
                           "KEYSVC_LISTEN")
    assert "in use" in line


def _not_a_database(tmp_path: Path) -> str:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database, " * 100)
    return str(path)


@pytest.mark.parametrize("make_path", [
    lambda tmp: f"{tmp}/missing/dir/keysvc.db",
    str,  # the directory itself
    _not_a_database,
], ids=["directory_missing", "a_directory", "not_a_database"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_sqlite_store_that_cannot_open_is_one_line_naming_the_store(
    make_path: Callable[[Path], str], workers: str, tmp_path: Path
) -> None:
    done = serve("--listen", f"127.0.0.1:{free_port()}", "--store", f"sqlite:///{make_path(tmp_path)}",
                 "--workers", workers)
    assert_one_line(done, "KEYSVC_STORE")


def test_a_redis_url_that_cannot_be_parsed_is_one_line_without_its_password() -> None:
    done = serve("--listen", f"127.0.0.1:{free_port()}", "--store", "redis://:hunter2-secret@127.0.0.1:abc/0")
    assert_one_line(done, "KEYSVC_STORE")
    assert "hunter2-secret" not in done.stderr + done.stdout


def test_a_unix_socket_in_a_missing_directory_or_held_by_a_server_is_one_line(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/k.db"
    missing = serve("--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"unix:{tmp_path}/no/admin.sock",
                    "--store", store)
    assert "does not exist" in assert_one_line(missing, "KEYSVC_ADMIN_LISTEN")
    path = tmp_path / "held.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.bind(str(path))
        held.listen()
        done = serve("--listen", f"unix:{path}", "--store", store)
    assert "in use" in assert_one_line(done, "KEYSVC_LISTEN")


@pytest.mark.parametrize("database", ["notadb", "-1", "0x1", "\u00b2"])
def test_a_redis_url_whose_database_is_not_a_number_is_one_line(database: str) -> None:
    # redis-py drops a database it cannot read as an int and uses database 0,
    # so a typo would quietly share another deployment's keys.
    done = serve("--listen", f"127.0.0.1:{free_port()}", "--store", f"redis://127.0.0.1:1/{database}")
    assert_one_line(done, "KEYSVC_STORE", "database")


@pytest.mark.parametrize(("flag", "host"), [
    ("--admin-listen", "127.0.0.1"), ("--http-listen", "127.0.0.1"),
    ("--admin-listen", "localhost"), ("--http-listen", "0.0.0.0"),
])
def test_a_worker_set_refuses_two_listeners_on_one_port(flag: str, host: str, tmp_path: Path) -> None:
    # The parent's port holders bind with SO_REUSEADDR and never listen, so the kernel
    # let a second holder share the port: gRPC and HTTP (or the admin listener) then
    # took turns at each new connection, as a single process refuses at once.
    port = free_port()
    done = serve("--listen", f"127.0.0.1:{port}", flag, f"{host}:{port}",
                 "--store", f"sqlite:///{tmp_path}/k.db", "--workers", "2")
    assert_one_line(done, "KEYSVC_" + flag.removeprefix("--").replace("-", "_").upper())
