"""Podman for the container tier: a private configuration, networking that leaves the host alone.

scripts/test-container.sh exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
CONTAINERS_REGISTRIES_CONF and the XDG folders, all in one temporary folder, and
KEYSVC_TEST_BASE_IMAGE, the base it imported from an mmdebstrap tarball. Build
steps share the host's network namespace (`--network host`: nothing is created
or rewritten; podman 4.3's build cannot use slirp4netns), and containers run on
slirp4netns, a user-mode network stack whose published ports listen on host
loopback: no bridge, no NAT rule, no sysctl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETWORK = "slirp4netns:port_handler=slirp4netns"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def require_private_podman() -> None:
    """Fail unless podman is installed and pointed at the tier's own configuration."""
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: run scripts/test-container.sh", pytrace=False)
    for name in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "KEYSVC_TEST_BASE_IMAGE"):
        if not os.environ.get(name):
            pytest.fail(f"{name} is not set: run the container tier with scripts/test-container.sh",
                        pytrace=False)


def build_image(tag: str) -> tuple[float, int]:
    """Build the Dockerfile on the mmdebstrap base; return (seconds taken, image size in bytes)."""
    started = time.monotonic()
    volume = [f"--volume={HOST_CA}:{HOST_CA}:ro"] if HOST_CA.exists() else []
    # docker format: the OCI image format has no HEALTHCHECK, and podman would drop it.
    podman("build", "--format=docker", "--pull=never", "--network=host", *volume,
           f"--build-arg=PYTHON_IMAGE={os.environ['KEYSVC_TEST_BASE_IMAGE']}",
           f"--tag={tag}", str(ROOT), timeout=1200)
    seconds = time.monotonic() - started
    size = int(podman("image", "inspect", "--format={{.Size}}", tag).stdout.strip())
    return seconds, size


@dataclass
class Container:
    """One `podman run -d`; published ports are host loopback ports."""

    name: str
    ports: dict[int, int]  # container port -> host loopback port

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(podman("inspect", self.name).stdout)[0])

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, check=check)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Run the image's HEALTHCHECK (no systemd here to time it) until it passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.inspect()["State"]["Running"]:
                raise AssertionError(f"container {self.name} exited:\n{self.logs()}")
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"container {self.name} not healthy within {timeout}s:\n{self.logs()}")

    def stop(self, timeout_s: int) -> tuple[int, float]:
        """SIGTERM (the image's STOPSIGNAL), SIGKILL after timeout_s; return (exit code, seconds)."""
        started = time.monotonic()
        podman("stop", f"--time={timeout_s}", self.name, timeout=timeout_s + 60)
        return int(self.inspect()["State"]["ExitCode"]), time.monotonic() - started


def run(image: str, name: str, ports: dict[int, int], *args: str) -> Container:
    published = [f"--publish=127.0.0.1:{host}:{inside}" for inside, host in ports.items()]
    podman("run", "--detach", f"--name={name}", f"--network={NETWORK}", *published, *args, image)
    return Container(name, ports)
