# syntax=docker/dockerfile:1
# keysvc: API-key validation sidecar.
#   docker build -t keysvc .
#   docker run --rm -p 50051:50051 -v keysvc-data:/data keysvc            # embedded SQLite store
#   docker run --rm -p 50051:50051 -e KEYSVC_STORE=redis://redis:6379/0 keysvc
# (Written with care but not built here: the development machine has no Docker engine.)

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY keysvc ./keysvc
COPY scripts/fix-otel-proto.sh ./scripts/
RUN python -m venv /opt/keysvc \
 && /opt/keysvc/bin/pip install ".[otlp]" \
 && bash scripts/fix-otel-proto.sh /opt/keysvc/bin/python

FROM python:3.11-slim-bookworm
# A fixed non-root uid, so volume ownership and PodSecurity "restricted" work.
RUN useradd --system --uid 10001 --home-dir /data keysvc \
 && mkdir -p /data /run/keysvc && chown keysvc /data /run/keysvc
COPY --from=build /opt/keysvc /opt/keysvc
ENV PATH=/opt/keysvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    KEYSVC_LISTEN=0.0.0.0:50051 \
    KEYSVC_STORE=sqlite:////data/keysvc.db \
    KEYSVC_LOG_FORMAT=json
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 8080
# `keysvc health` probes the address KEYSVC_LISTEN names (a wildcard host means
# loopback), so it follows any listen setting. Readiness: SERVING once the store
# answers. An orchestrator that restarts unhealthy containers should probe
# `keysvc health --live` instead, which fails only when the process is stuck.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["keysvc", "health", "--timeout", "3"]
# SIGTERM: health flips to NOT_SERVING, in-flight calls drain (KEYSVC_SHUTDOWN_GRACE_S), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["keysvc"]
CMD ["serve"]
