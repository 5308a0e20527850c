"""The one start-up decision server.py makes without I/O: which gRPC stack to serve on."""

from __future__ import annotations

import pytest

from keysvc.app.startup import grpc_stack

pytestmark = pytest.mark.unit


def test_auto_stack_is_sync_on_one_cpu_and_aio_on_more() -> None:
    assert grpc_stack("auto", cpus=1) == "sync"
    assert grpc_stack("auto", cpus=2) == "aio"
    assert grpc_stack("auto", cpus=64) == "aio"


def test_a_named_stack_is_kept_whatever_the_cpus() -> None:
    assert grpc_stack("sync", cpus=8) == "sync"
    assert grpc_stack("aio", cpus=1) == "aio"
