"""Prometheus metrics from a real server: decisions by code, cache, store errors."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import pytest

from keysvc.v1 import keysvc_pb2 as pb
from tests.e2e._servers import ServerProcess, bootstrap, free_port

pytestmark = pytest.mark.e2e


Sample = tuple[str, dict[str, str], float]


def scrape(port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = re.fullmatch(r"(keysvc_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def test_metrics_count_decisions_and_cache(start_server: Callable[..., ServerProcess], sqlite_url: str) -> None:
    _, admin_secret = bootstrap(sqlite_url)
    port = free_port()
    server = start_server(sqlite_url, "--metrics-listen", f"127.0.0.1:{port}")
    stub = server.stub()
    created = stub.CreateKey(pb.CreateKeyRequest(owner_id="o"), metadata=[("authorization", f"Bearer {admin_secret}")], timeout=5)
    before = scrape(port)
    for _ in range(3):
        stub.Validate(pb.ValidateRequest(key=created.secret), timeout=5)
    for _ in range(2):
        stub.Validate(pb.ValidateRequest(key="garbage"), timeout=5)
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("keysvc_validations_total", code="VALID") == 3
    assert delta("keysvc_validations_total", code="MALFORMED") == 2
    assert delta("keysvc_validations_total", code="NOT_FOUND") == 0
    assert delta("keysvc_cache_lookups_total", result="hit") >= 2
    assert value(after, "keysvc_cache_size") >= 1
    assert value(after, "keysvc_validate_store_duration_seconds_count") >= 1
    assert value(after, "keysvc_events_connected") == 1
    assert all(created.secret not in str(sample) for sample in after)
