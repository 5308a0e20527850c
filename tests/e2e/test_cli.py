"""The `keysvc` CLI against a real server: human output, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e._servers import ServerProcess, bootstrap, keysvc_cmd

pytestmark = pytest.mark.e2e


def test_cli_walkthrough(start_server: Callable[..., ServerProcess], sqlite_url: str) -> None:
    _, admin_secret = bootstrap(sqlite_url)
    server = start_server(sqlite_url)
    env = {**os.environ, "KEYSVC_ADMIN_KEY": admin_secret, "KEYSVC_ADDR": server.addr}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(keysvc_cmd(*args), env=env, capture_output=True, text=True, timeout=30, check=False)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    run("policies", "create", "partners", "--scope", "read", "--scope", "write", "--rate", "100/1s",
        "--cidr", "10.0.0.0/8")
    created = json.loads(run("keys", "create", "--owner", "acme", "--policy", "partners",
                             "--meta", "tier=gold", "--json").stdout)
    secret, key_id = created["secret"], created["key"]["key_id"]
    assert run("validate", secret, "--scope", "read", "--client-ip", "10.1.1.1").stdout.startswith("VALID")
    denied = run("validate", secret, "--scope", "admin", "--client-ip", "10.1.1.1", ok=False)
    assert denied.returncode == 1 and denied.stdout.startswith("INSUFFICIENT_SCOPE")
    assert run("validate", "ks_typo", ok=False).stdout.startswith("MALFORMED")

    impact = run("policies", "update", "partners", "--scope", "read", "--expected-version", "1",
                 "--dry-run").stdout
    assert "keys affected: 1" in impact and "scopes removed: write" in impact
    assert "BREAKING" in impact and "dry run: nothing written" in impact
    refused = run("policies", "update", "partners", "--scope", "read", "--expected-version", "1", ok=False)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    run("policies", "update", "partners", "--scope", "read", "--expected-version", "1", "--allow-breaking",
        "--cidr", "10.0.0.0/8", "--rate", "100/1s")
    stale = run("policies", "update", "partners", "--scope", "read", "--expected-version", "1", ok=False)
    assert "ABORTED" in stale.stderr
    run("policies", "rollback", "partners", "--to-version", "1")
    history = json.loads(run("policies", "history", "partners", "--json").stdout)
    assert [v["version"] for v in history["versions"]] == ["3", "2", "1"]

    rotated = json.loads(run("keys", "rotate", key_id, "--grace", "1h", "--json").stdout)
    assert rotated["previous"]["status"] == "KEY_STATUS_REVOKING"
    listed = json.loads(run("keys", "list", "--owner", "acme", "--json").stdout)
    assert {k["key_id"] for k in listed["keys"]} == {key_id, rotated["key"]["key_id"]}
    unused = json.loads(run("keys", "list", "--owner", "acme", "--unused-for", "30d", "--json").stdout)
    assert [k["key_id"] for k in unused["keys"]] == [rotated["key"]["key_id"]], "the old key was used"
    run("keys", "update", rotated["key"]["key_id"], "--no-enable")
    disabled = json.loads(run("keys", "get", rotated["key"]["key_id"], "--json").stdout)
    assert disabled["status"] == "KEY_STATUS_DISABLED"
    run("keys", "revoke", key_id, "--reason", "done")
    events = run("watch", "--from-beginning", "--limit", "8", "--json").stdout.splitlines()
    types = [json.loads(line)["type"] for line in events]
    assert types[:3] == ["key.created", "policy.created", "key.created"]
    assert types[3:] == ["policy.updated", "policy.rolled_back", "key.rotated", "key.updated", "key.revoked"]

    no_key = subprocess.run(keysvc_cmd("keys", "list"), env={**env, "KEYSVC_ADMIN_KEY": ""},
                            capture_output=True, text=True, timeout=30, check=False)
    assert no_key.returncode == 2 and "KEYSVC_ADMIN_KEY" in no_key.stderr
    for output in (server.logs(),):
        assert secret not in output and admin_secret not in output
