# syntax=docker/dockerfile:1
# keysvc: API-key validation sidecar (README "Container").
#   docker build -t keysvc .
#   docker run --rm -p 127.0.0.1:50051:50051 -v keysvc-data:/data keysvc          # embedded SQLite store
#   docker run --rm -p 127.0.0.1:50051:50051 -e KEYSVC_STORE=redis://redis:6379/0 keysvc
# PYTHON_IMAGE is any image with python3 (>= 3.11, with venv), bash and useradd:
# the official python image by default; scripts/test-container.sh builds on a
# Debian base made by mmdebstrap, with no registry involved.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY keysvc ./keysvc
COPY scripts/fix-otel-proto.sh ./scripts/
RUN python3 -m venv /opt/keysvc \
 && /opt/keysvc/bin/pip install ".[otlp]" \
 && bash scripts/fix-otel-proto.sh /opt/keysvc/bin/python \
 && find /opt/keysvc -name __pycache__ -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
# A fixed non-root uid, so volume ownership and PodSecurity "restricted" work.
RUN groupadd --gid 10001 keysvc \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin keysvc \
 && mkdir -p /data /run/keysvc && chown keysvc:keysvc /data /run/keysvc
COPY --from=build /opt/keysvc /opt/keysvc
# Validate and ext_authz on 50051, HTTP forward-auth on 8080, Prometheus on 9464;
# admin RPCs only on a unix socket, never in clear on the network: the CLI in the
# image talks to it (KEYSVC_ADDR), as in `docker exec ... keysvc keys list`.
# The root filesystem may be read-only: keysvc writes only /data (the SQLite
# store) and /run/keysvc (the admin socket).
ENV PATH=/opt/keysvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    KEYSVC_LISTEN=0.0.0.0:50051 \
    KEYSVC_HTTP_LISTEN=0.0.0.0:8080 \
    KEYSVC_METRICS_LISTEN=0.0.0.0:9464 \
    KEYSVC_ADMIN_LISTEN=unix:/run/keysvc/admin.sock \
    KEYSVC_ADDR=unix:/run/keysvc/admin.sock \
    KEYSVC_STORE=sqlite:////data/keysvc.db \
    KEYSVC_LOG_FORMAT=json
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 8080 9464
# `keysvc health` probes the address KEYSVC_LISTEN names (a wildcard host means
# loopback), so it follows any listen setting. Readiness: SERVING once the store
# answers. An orchestrator that restarts unhealthy containers should probe
# `keysvc health --live` instead, which fails only when the process is stuck.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["keysvc", "health", "--timeout", "3"]
# SIGTERM: health flips to NOT_SERVING, in-flight calls drain (KEYSVC_SHUTDOWN_GRACE_S), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["keysvc"]
CMD ["serve"]
