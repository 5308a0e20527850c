"""Regenerate keysvc/v1 (Python stubs and type stubs) from protos/.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: the repository root)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    """Write keysvc/v1/*_pb2*.py(i) under `out`."""
    (out / "keysvc" / "v1").mkdir(parents=True, exist_ok=True)
    wkt = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    init = out / "keysvc" / "v1" / "__init__.py"
    init.write_text('"""Generated from protos/keysvc/v1 by scripts/gen_protos.py: do not edit."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
