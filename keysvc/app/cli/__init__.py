"""The `keysvc` command line: one module per command group, `main` parses and dispatches."""

import os

# gRPC's C core writes its own lines to stderr, outside structlog and its redaction (an
# invalid metadata value, say); keysvc's processes keep them off unless the operator asks.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
