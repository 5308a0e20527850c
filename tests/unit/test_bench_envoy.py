"""The bench's Envoy rows without running anything: the configs it makes, the n/a path, the report."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysvc.bench.command import BenchOptions, _Context, _run_scenario
from keysvc.bench.envoy import DEPLOY_ENVOY, KINDS, envoy_binary, envoy_config
from keysvc.bench.load import LoadPlan, _command
from keysvc.bench.report import format_report, targets
from keysvc.bench.scenarios import NAMES, Fixture, scenarios

pytestmark = pytest.mark.unit

KEY = "ks_benchbenchbenchbenchbenchbenchbenchbe000000"
ENVOY_ROWS = ("envoy-none", "envoy-native", "envoy-grpc", "envoy-http", "envoy-grpc-workers2",
              "envoy-http-workers2")


def _shipped(kind: str) -> dict[str, Any]:
    name = "envoy-http.yaml" if kind == "http" else "envoy.yaml"
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY_ENVOY / name).read_text())
    return loaded


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    return hcm


def _filters(config: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f["typed_config"] for f in _hcm(config)["http_filters"]}


@pytest.mark.parametrize("kind", KINDS)
def test_each_config_is_the_shipped_one_with_addresses_and_the_app_swapped(kind: str) -> None:
    shipped = _shipped(kind)
    config = envoy_config(kind, listen=1001, admin=1002, keysvc=1003, key=KEY)
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 1002}
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 1001}
    # Everything the connection manager does for users (path rules, header rules, access log) stays.
    hcm, shipped_hcm = _hcm(config), _hcm(shipped)
    assert {k: v for k, v in hcm.items() if k not in ("route_config", "http_filters")} == {
        k: v for k, v in shipped_hcm.items() if k not in ("route_config", "http_filters")}
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"] for r in routes] == [r["match"] for r in shipped_hcm["route_config"]["virtual_hosts"][0]
                                            ["routes"]]
    assert all("route" not in r and r["direct_response"]["status"] == 200 for r in routes)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert "app" not in clusters  # no upstream: Envoy answers itself
    filters, shipped_filters = _filters(config), _filters(shipped)
    assert filters["envoy.filters.http.header_mutation"] == shipped_filters["envoy.filters.http.header_mutation"]
    assert list(filters)[-1] == "envoy.filters.http.router"
    if kind in ("grpc", "http"):
        expected = copy.deepcopy(shipped_filters["envoy.filters.http.ext_authz"])
        if kind == "http":
            expected["http_service"]["server_uri"]["uri"] = "http://127.0.0.1:1003"
        assert filters["envoy.filters.http.ext_authz"] == expected
        endpoint = clusters["keysvc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 1003}
        shipped_keysvc = next(c for c in shipped["static_resources"]["clusters"] if c["name"] == "keysvc")
        assert clusters["keysvc"]["health_checks"] == shipped_keysvc["health_checks"]
        assert routes[0]["typed_per_filter_config"] == shipped_hcm["route_config"]["virtual_hosts"][0][
            "routes"][0]["typed_per_filter_config"]
    else:
        assert "envoy.filters.http.ext_authz" not in filters
        assert clusters == {}
        assert all("envoy.filters.http.ext_authz" not in r.get("typed_per_filter_config", {}) for r in routes)
    if kind == "native":
        native = filters["envoy.filters.http.api_key_auth"]
        assert native["credentials"] == [{"key": KEY, "client": "bench"}]
        assert native["key_sources"] == [{"header": "x-api-key"}]
        # In the ext_authz slot: after the identity headers are stripped, before the router.
        assert list(filters) == ["envoy.filters.http.header_mutation", "envoy.filters.http.api_key_auth",
                                 "envoy.filters.http.router"]
    else:
        assert KEY not in repr(config)  # the key is in Envoy's config only where Envoy checks it


def _fixture() -> Fixture:
    return Fixture("redis://127.0.0.1:1/0", "admin", KEY, KEY, KEY[:-1] + "A", b"")


def test_envoy_rows_are_na_with_a_note_when_envoy_is_not_installed(tmp_path: Path) -> None:
    ctx = _Context(BenchOptions(scenarios=NAMES), tmp_path, "h2load", None, _fixture(), scenarios(_fixture()),
                   envoy=None)
    rows = [_run_scenario(name, ctx) for name in ENVOY_ROWS]  # starts nothing: Envoy is checked first
    for row in rows:
        assert (row.status, row.errors) == ("n/a", []), row
        assert any("Envoy is not installed" in note for note in row.notes), row
    from dataclasses import asdict

    report = {"meta": {"command": "keysvc bench", "pinning": "p", "load": "l", "cpus": 2, "machine": "m",
                       "kernel": "k", "python": "3", "grpcio": "1", "h2load": "h", "elapsed_s": 0.1,
                       "envoy": "not installed"},
              "scenarios": [asdict(row) for row in rows]}
    report["targets"] = targets(report)
    text = format_report(report)
    for name in ENVOY_ROWS:
        assert f"\n{name} " in text  # a row in the HTTP table, saying n/a
        assert f"\n{name}: " in text  # its meaning, with the note
    assert "Envoy is not installed" in text
    assert all(t["met"] is None for t in report["targets"] if "envoy" in t["target"])


def test_envoy_is_found_next_to_python_or_on_the_path_given(tmp_path: Path) -> None:
    assert envoy_binary(str(tmp_path)) is None
    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert envoy_binary(os.pathsep.join(("/nonexistent", str(tmp_path)))) == str(fake)


def test_http_rows_drive_h2load_in_http1_with_their_headers(tmp_path: Path) -> None:
    plan = LoadPlan(port=8080, path="/", body=None, duration_s=1.5, connections=16, streams=1, client_cpu=1,
                    server_cpu=0, server_pids=[], log_file=tmp_path / "log", expected_response_bytes=0,
                    headers=("x-api-key: k",))
    cmd = _command(plan, "h2load", 1.5, None)
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert "--h1" in cmd and "-d" not in cmd and "te: trailers" not in cmd
    assert cmd[cmd.index("-c", 3) + 1] == "16" and cmd[cmd.index("-m") + 1] == "1"
    assert cmd[cmd.index("-H") + 1] == "x-api-key: k"
    assert cmd[-1] == "http://127.0.0.1:8080/"


def test_http_scenarios_say_what_a_bad_key_gets() -> None:
    rows = scenarios(_fixture())
    assert rows["envoy-none"].expect == "200"  # no auth at all: a bad key passes too
    for name in (*ENVOY_ROWS[1:], "http"):
        assert rows[name].expect == "401"
        assert ("x-api-key", KEY) in rows[name].headers
    assert rows["http"].method == "/authz"
    assert {"x-original-uri", "x-original-method"} <= {n for n, _ in rows["http"].headers}
    assert rows["envoy-grpc-workers2"].workers == rows["envoy-http-workers2"].workers == 2
