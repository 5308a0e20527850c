"""keysvc.app.cli.main: usage errors never show a key pasted after the wrong flag."""

from __future__ import annotations

import pytest

from keysvc.app.cli.main import main
from keysvc.core.keys import generate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("where", [
    ["keys", "create", "--owner", "o", "--ttl", "{}"],
    ["keys", "create", "--owner", "o", "--quota", "{}"],
    ["keys", "list", "--limit", "{}"],
    ["keys", "list", "--status", "{}"],
    ["keys", "revoke", "key_x", "--grace", "{}"],
    ["keys", "get", "key_x", "{}"],  # one argument too many
    ["{}"],  # not a command
])
def test_a_key_in_the_wrong_place_is_never_echoed(where: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    secret = generate().secret
    with pytest.raises(SystemExit) as exited:
        main([part.format(secret) for part in where])
    assert exited.value.code == 2
    shown = capsys.readouterr()
    assert "error:" in shown.err
    assert secret[3:20] not in shown.out + shown.err
