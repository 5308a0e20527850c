"""`keysvc serve` refuses to run while gRPC's tracers would print call metadata (admin keys)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e._servers import free_port

pytestmark = pytest.mark.e2e


# GRPC_VERBOSITY unset is keysvc's own NONE (keysvc.app.cli), which keeps the tracers quiet.
@pytest.mark.parametrize("verbosity", ["debug", "info"])
def test_serve_refuses_a_grpc_tracer_that_would_print_admin_keys(tmp_path: Path, verbosity: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "KEYSVC_"))}
    env["GRPC_TRACE"] = "api,http"
    env["GRPC_VERBOSITY"] = verbosity
    done = subprocess.run(
        [sys.executable, "-m", "keysvc", "serve", "--store", f"sqlite:///{tmp_path}/k.db",
         "--listen", f"127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "GRPC_TRACE" in done.stderr
