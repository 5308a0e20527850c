"""The shipped probes ask liveness and readiness apart, at the address the settings name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from keysvc.app.health import LIVENESS, READINESS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _keysvc_container() -> dict[str, object]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "sidecar.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    return next(c for c in containers if c["name"] == "keysvc")


def test_k8s_liveness_is_not_readiness() -> None:
    container = _keysvc_container()
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["grpc"]["service"] == READINESS  # type: ignore[index]
    assert live["grpc"]["service"] == LIVENESS  # type: ignore[index]


def test_dockerfile_healthcheck_is_exec_form_keysvc_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.MULTILINE)
    assert match, "no HEALTHCHECK"
    command = yaml.safe_load(match.group(1))  # a JSON array: exec form, no shell
    assert isinstance(command, list) and command[:2] == ["keysvc", "health"]
    assert "50051" not in match.group(0)  # the address comes from KEYSVC_LISTEN
