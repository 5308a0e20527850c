"""The Dockerfile: its base is a build argument, it exposes the ports its settings listen on.

The image itself is built and run by the opt-in tier (scripts/test-container.sh);
these checks hold the file to what that tier and the README rely on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TEXT = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def _env() -> dict[str, str]:
    block = re.search(r"^ENV PATH=.*?(?=^\S)", TEXT, re.MULTILINE | re.DOTALL)
    assert block, "no runtime ENV block"
    return dict(re.findall(r"(KEYSVC_\w+)=(\S+)", block.group(0)))


def test_base_image_is_a_build_argument_used_by_every_stage() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=\S+$", TEXT.split("\nFROM ", 1)[0], re.MULTILINE)
    froms = re.findall(r"^FROM (\S+)", TEXT, re.MULTILINE)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms


def test_exposes_exactly_the_tcp_ports_keysvc_listens_on() -> None:
    env = _env()
    ports = {int(env[name].rsplit(":", 1)[1]) for name in ("KEYSVC_LISTEN", "KEYSVC_HTTP_LISTEN",
                                                            "KEYSVC_METRICS_LISTEN")}
    (exposed,) = re.findall(r"^EXPOSE (.+)$", TEXT, re.MULTILINE)
    assert {int(p) for p in exposed.split()} == ports


def test_admin_rpcs_are_on_a_unix_socket_not_the_network() -> None:
    assert _env()["KEYSVC_ADMIN_LISTEN"].startswith("unix:/run/keysvc/")


def test_runs_as_a_fixed_non_root_user() -> None:
    (user,) = re.findall(r"^USER (\S+)$", TEXT, re.MULTILINE)
    assert all(part.isdigit() and int(part) >= 10000 for part in user.split(":"))
