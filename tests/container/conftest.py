"""The opt-in container tier: collected only under KEYSVC_TEST_CONTAINER=1 (scripts/test-container.sh).

It builds the Dockerfile with podman (minutes, and PyPI downloads), so the
ordinary test command leaves it out; scripts/test-container.sh sets up podman
and runs it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.container._podman import Container, build_image, podman, require_private_podman, run

if os.environ.get("KEYSVC_TEST_CONTAINER") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def image() -> str:
    require_private_podman()
    tag = "localhost/keysvc:container-test"
    seconds, size = build_image(tag)
    print(f"\nimage {tag}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    return tag


@pytest.fixture
def start_container(image: str) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(ports: dict[int, int], *args: str) -> Container:
        container = run(image, f"keysvc-test-{uuid.uuid4().hex[:8]}", ports, *args)
        started.append(container)
        return container

    yield start
    for container in started:
        podman("rm", "--force", "--time=0", container.name, check=False)


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"keysvc-data-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "--force", name, check=False)
