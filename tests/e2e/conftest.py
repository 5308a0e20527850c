"""Fixtures for end-to-end tests: real `keysvc serve` processes, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e._servers import STACKS, ServerProcess, launch


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(store: str, *extra: str, **kwargs: Any) -> ServerProcess:
        try:
            server = launch(store, tmp_path, *extra, **kwargs)
        except AssertionError:
            raise
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keysvc.db"


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    """Each gRPC server stack in turn, for the tests that must hold on both."""
    return str(request.param)
