"""Lua scripts of `RedisStore`, each one atomic round trip, read from `lua/*.lua` (package data).

Every key a script touches is passed in KEYS (Redis Cluster routes on them);
the lifecycle scripts only ever receive keys of the namespace's one hash tag,
the counter scripts only keys of one key_id's tag. A script checks everything
before its first write, because Redis does not roll back a script that fails
half-way. Each file documents its KEYS, ARGV and reply.

The lifecycle scripts share the request-mark check and write: a line
`-- @mark_check N` is replaced by `mark_check.lua` (with N, the count of KEYS
before the optional mark), and `-- @mark_write` by `mark_write.lua`.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["CREATE_QUOTA", "ENSURE_META", "PUT_KEYS", "PUT_POLICY", "TAKE", "TOUCH", "load"]

_MARK_CHECK_LINE = re.compile(r"^-- @mark_check (.+)$", re.M)


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def load(name: str) -> str:
    """The text of script `name` (a file stem under lua/), the shared mark snippets filled in.

    Raises:
        FileNotFoundError: no such script shipped with the package.
    """
    text = _read(name)
    mark_check = _read("mark_check").rstrip("\n")
    text = _MARK_CHECK_LINE.sub(lambda m: mark_check.replace("{keys}", m.group(1)), text)
    return text.replace("-- @mark_write", _read("mark_write").rstrip("\n"))


PUT_KEYS = load("put_keys")
PUT_POLICY = load("put_policy")
TAKE = load("take")
CREATE_QUOTA = load("create_quota")
TOUCH = load("touch")
ENSURE_META = load("ensure_meta")
