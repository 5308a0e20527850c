#!/usr/bin/env bash
# xds-protos (Envoy's protos) bundles an old copy of opentelemetry/proto that
# overwrites opentelemetry-proto's files (grpc/grpc#42926), which breaks the
# OTLP exporter's import. Reinstall opentelemetry-proto at the version the
# exporter wants, without touching anything else. Idempotent.
# Usage: scripts/fix-otel-proto.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
py=${1:-.venv/bin/python}
version=$("$py" -c 'import importlib.metadata as m; print(m.version("opentelemetry-exporter-otlp-proto-common"))')
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "opentelemetry-proto==$version"
"$py" -c 'from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter; import envoy.service.auth.v3.external_auth_pb2'
