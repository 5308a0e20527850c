"""deploy/k8s: schema-valid manifests; keysvc a native sidecar, locked down, admin off the network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysvc.app.health import LIVENESS, READINESS

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# Native sidecars (restartPolicy on an init container) are GA from 1.29 on.
KUBERNETES_VERSION = "1.31"


def _pod_spec() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / "sidecar.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["spec"])


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema_strictly(manifest: Path) -> None:
    # --strict: a field the schema does not know (a typo, or one of a newer release) fails.
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    done = subprocess.run([validator, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(manifest)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INFO" in done.stdout  # it validated something, rather than finding no resource


def test_keysvc_is_a_native_sidecar_that_starts_before_the_app() -> None:
    spec = _pod_spec()
    assert [c["name"] for c in spec["containers"]] == ["app"]
    (keysvc,) = [c for c in spec["initContainers"] if c["name"] == "keysvc"]
    assert keysvc["restartPolicy"] == "Always"
    # The app is started only once keysvc's startup probe passes, on a name that does not
    # wait for the store (a Redis outage at roll-out must not block every pod).
    assert keysvc["startupProbe"]["grpc"]["service"] == LIVENESS
    drain = int(_env(keysvc)["KEYSVC_SHUTDOWN_GRACE_S"])
    assert spec["terminationGracePeriodSeconds"] > drain


def test_liveness_and_readiness_are_separate_grpc_probes() -> None:
    (keysvc,) = [c for c in _pod_spec()["initContainers"] if c["name"] == "keysvc"]
    port = int(_env(keysvc)["KEYSVC_LISTEN"].rsplit(":", 1)[1])
    assert keysvc["readinessProbe"]["grpc"] == {"port": port, "service": READINESS}
    assert keysvc["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}


def test_every_container_is_restricted_and_has_resources() -> None:
    spec = _pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in _all_containers(spec):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]


def test_admin_rpcs_are_on_a_unix_socket_in_a_shared_emptydir() -> None:
    spec = _pod_spec()
    (keysvc,) = [c for c in spec["initContainers"] if c["name"] == "keysvc"]
    admin = _env(keysvc)["KEYSVC_ADMIN_LISTEN"]
    assert admin.startswith("unix:/"), "admin RPCs must not be served in clear on the pod network"
    socket_dir = str(Path(admin.removeprefix("unix:")).parent)
    mounts = {m["mountPath"]: m["name"] for m in keysvc["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts[socket_dir]]
    # The only port keysvc declares is the one KEYSVC_LISTEN serves (Validate, ext_authz, probes).
    assert [p["containerPort"] for p in keysvc["ports"]] == [int(_env(keysvc)["KEYSVC_LISTEN"].rsplit(":", 1)[1])]
