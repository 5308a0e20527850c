"""Generated from protos/keysvc/v1 by scripts/gen_protos.py: do not edit."""
