"""Envoy -> keysvc over mutual TLS: the shipped deploy/envoy/envoy-mtls.yaml, real Envoy, real keysvc.

The config is loaded as YAML; only its addresses and the two SDS file paths
change (to files naming certificates made here by trustme).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysvc.v1 import keysvc_pb2 as pb
from keysvc.v1 import keysvc_pb2_grpc
from tests.e2e._proxies import Upstream, send, wait_port
from tests.e2e._servers import ServerProcess, bootstrap, free_port, launch
from tests.e2e._tls import Pki, make_pki, tls_channel, wait_serving_tls
from tests.e2e.test_envoy import DEPLOY, envoy_binary, render

pytestmark = pytest.mark.e2e

CONFIG = DEPLOY / "envoy" / "envoy-mtls.yaml"


def _sds(path: Path, secret: dict[str, Any]) -> None:
    secret["@type"] = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    path.write_text(yaml.safe_dump({"resources": [secret]}))


def render_mtls(tmp: Path, envoy_pki: Pki, keysvc_ca: Path, ports: tuple[int, int, int, int]) -> Path:
    """The shipped mTLS config with its addresses and SDS files moved to `tmp`."""
    config = render(yaml.safe_load(CONFIG.read_text()), *ports)
    tls_dir = tmp / "envoy-tls"
    tls_dir.mkdir()
    _sds(tls_dir / "envoy-client-sds.yaml", {"name": "envoy_client", "tls_certificate": {
        "certificate_chain": {"filename": str(envoy_pki.client_cert_file)},
        "private_key": {"filename": str(envoy_pki.client_key_file)}}})
    _sds(tls_dir / "keysvc-ca-sds.yaml", {"name": "keysvc_ca", "validation_context": {
        "trusted_ca": {"filename": str(keysvc_ca)}}})
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "keysvc"]
    context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    sources = [context["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"],
               context["combined_validation_context"]["validation_context_sds_secret_config"]["sds_config"][
                   "path_config_source"]]
    for source, name in zip(sources, ("envoy-client-sds.yaml", "keysvc-ca-sds.yaml"), strict=True):
        assert source["path"] == f"/etc/envoy/tls/{name}"  # the shipped config names them so
        source["path"] = str(tls_dir / name)
        source["watched_directory"]["path"] = str(tls_dir)
    rendered = tmp / "envoy-mtls.yaml"
    rendered.write_text(yaml.safe_dump(config))
    return rendered


@dataclass
class MtlsWorld:
    port: int
    admin: int
    keysvc: ServerProcess
    pki: Pki
    admin_md: list[tuple[str, str]]
    log: Path


def start_envoy(config: Path, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                             "--log-level", "warning"], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd)


@pytest.fixture(scope="module")
def mtls_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsWorld]:
    tmp = tmp_path_factory.mktemp("envoy-mtls")
    pki = make_pki(tmp)  # one CA signs keysvc's certificate and Envoy's client certificate
    store = f"sqlite:///{tmp}/keysvc.db"
    _, admin_secret = bootstrap(store)
    keysvc = launch(store, tmp, "--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file),
                    "--tls-client-ca", str(pki.ca_file), wait=False)
    upstream = Upstream()
    port, admin = free_port(), free_port()
    envoy: subprocess.Popen[bytes] | None = None
    try:
        wait_serving_tls(keysvc, pki, client=pki)
        config = render_mtls(tmp, pki, pki.ca_file,
                             (port, admin, int(keysvc.addr.rpartition(":")[2]), upstream.port))
        check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
                               check=False, capture_output=True, text=True, timeout=120, cwd=tmp)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        log = tmp / "envoy.log"
        envoy = start_envoy(config, log, tmp)
        wait_port(port, lambda: envoy is not None and envoy.poll() is None, "envoy", log.read_text)
        yield MtlsWorld(port, admin, keysvc, pki, [("authorization", f"Bearer {admin_secret}")], log)
    finally:
        if envoy is not None:
            envoy.terminate()
            envoy.wait(timeout=30)
        keysvc.stop()
        upstream.close()


def envoy_stat(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=^{name}$", timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def test_envoy_asks_keysvc_over_mtls(mtls_world: MtlsWorld) -> None:
    w = mtls_world
    with tls_channel(w.keysvc.addr, w.pki, client=w.pki) as channel:
        created = keysvc_pb2_grpc.KeyServiceStub(channel).CreateKey(
            pb.CreateKeyRequest(owner_id="acme"), metadata=w.admin_md, timeout=10)
    deadline = time.monotonic() + 60
    reply = send(w.port, "GET", "/orders", [("x-api-key", created.secret)])
    while reply.status != 200 and time.monotonic() < deadline:  # until Envoy's first health check passed
        time.sleep(0.2)
        reply = send(w.port, "GET", "/orders", [("x-api-key", created.secret)])
    assert reply.status == 200, (reply.status, reply.body)
    assert send(w.port, "GET", "/orders", []).status == 401  # keysvc's answer, through the mTLS hop
    assert envoy_stat(w.admin, "cluster.keysvc.ssl.handshake") >= 1
    assert envoy_stat(w.admin, "cluster.keysvc.ssl.connection_error") == 0


def test_envoy_without_keysvcs_ca_cannot_reach_it(mtls_world: MtlsWorld, tmp_path: Path) -> None:
    """An Envoy whose client certificate another CA signed is refused by keysvc: fail closed, 503."""
    w = mtls_world
    stranger = make_pki(tmp_path, "stranger")
    port, admin, app = free_port(), free_port(), Upstream()
    config = render_mtls(tmp_path, stranger, w.pki.ca_file,
                         (port, admin, int(w.keysvc.addr.rpartition(":")[2]), app.port))
    log = tmp_path / "envoy.log"
    envoy = start_envoy(config, log, tmp_path)
    try:
        wait_port(port, lambda: envoy.poll() is None, "envoy", log.read_text)
        deadline = time.monotonic() + 60
        reply = send(port, "GET", "/orders", [("x-api-key", "ks_x")])
        while reply.status != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            reply = send(port, "GET", "/orders", [("x-api-key", "ks_x")])
        assert reply.status == 503  # fail closed: status_on_error, keysvc never answered
        # keysvc refused the handshake: no TLS session was ever set up, and the connection failed.
        assert envoy_stat(admin, "cluster.keysvc.ssl.handshake") == 0
        assert envoy_stat(admin, "cluster.keysvc.upstream_cx_connect_fail") >= 1
        assert not app.seen
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
        app.close()
