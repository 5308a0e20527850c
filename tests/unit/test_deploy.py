"""deploy/: the Envoy config is a valid v3 Bootstrap wired to keysvc as the docs say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2

# Imported for their descriptors: json_format resolves each "@type" from these.
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

pytestmark = pytest.mark.unit

ENVOY = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


@pytest.fixture(scope="module")
def bootstrap() -> bootstrap_pb2.Bootstrap:
    data = yaml.safe_load(ENVOY.read_text())
    # ignore_unknown_fields=False: a misspelt field fails here, as it would in Envoy.
    return json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def _hcm(bootstrap: bootstrap_pb2.Bootstrap) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_ext_authz_filter_asks_keysvc_over_grpc_v3_and_fails_closed(bootstrap: bootstrap_pb2.Bootstrap) -> None:
    manager = _hcm(bootstrap)
    names = [f.name for f in manager.http_filters]
    # Identity headers are stripped first, so a client's never reach the app on any route.
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz",
                     "envoy.filters.http.router"]
    authz = ext_authz_pb2.ExtAuthz()
    assert manager.http_filters[1].typed_config.Unpack(authz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "keysvc"
    assert authz.transport_api_version == config_source_pb2.V3
    assert authz.failure_mode_allow is False
    assert authz.status_on_error.code == 503
    assert not authz.HasField("with_request_body")
    assert authz.grpc_service.timeout.ToMilliseconds() >= 250  # above keysvc's own store budget
    assert manager.normalize_path.value and manager.merge_slashes


def test_keysvc_cluster_speaks_http2_and_checks_health(bootstrap: bootstrap_pb2.Bootstrap) -> None:
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    assert set(clusters) == {"keysvc", "app"}
    keysvc = clusters["keysvc"]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert keysvc.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert keysvc.health_checks[0].grpc_health_check.service_name == "readiness"


@pytest.mark.parametrize("config", ["envoy.yaml", "envoy-http.yaml"])
def test_health_check_notices_an_unready_keysvc_within_seconds(config: str) -> None:
    shipped = json_format.ParseDict(yaml.safe_load((ENVOY.parent / config).read_text()), bootstrap_pb2.Bootstrap())
    (keysvc,) = [c for c in shipped.static_resources.clusters if c.name == "keysvc"]
    (check,) = keysvc.health_checks
    # Envoy's no_traffic_interval default is 60 s: an idle Envoy would not notice for a minute.
    for name in ("timeout", "interval", "no_traffic_interval", "unhealthy_interval"):
        assert check.HasField(name) and getattr(check, name).ToMilliseconds() <= 2000, name
    assert check.unhealthy_threshold.value <= 3 and check.healthy_threshold.value == 1
    assert check.grpc_health_check.service_name == "readiness" or check.http_health_check.path == "/healthz"


def test_public_route_skips_ext_authz(bootstrap: bootstrap_pb2.Bootstrap) -> None:
    routes = _hcm(bootstrap).route_config.virtual_hosts[0].routes
    per_route = ext_authz_pb2.ExtAuthzPerRoute()
    assert routes[0].typed_per_filter_config["envoy.filters.http.ext_authz"].Unpack(per_route)
    assert per_route.disabled
    assert routes[-1].match.prefix == "/" and not routes[-1].typed_per_filter_config


@pytest.mark.parametrize("shipped", ["caddy/Caddyfile", "traefik/keysvc.yml", "traefik/traefik.yml"])
def test_readme_shows_the_shipped_proxy_config_exactly(shipped: str) -> None:
    # The README's snippet is the tested file itself, not a paraphrase that can drift.
    readme = (ENVOY.parents[2] / "README.md").read_text()
    text = (ENVOY.parents[1] / shipped).read_text().rstrip("\n")
    assert f"\n{text}\n```\n" in readme, f"README's copy of deploy/{shipped} differs from the file"
