#!/usr/bin/env bash
# The one test command (README "Quick start", and .ci/run): installs what the tests
# need, runs the linters (ruff, mypy, import-linter, buf, hadolint,
# kubernetes-validate), starts redis-server on a free loopback port, runs every
# test tier (the tests start Redis Cluster, Sentinel and the proxies they need), and stops Redis after.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_install.sh
source scripts/_install.sh

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)  # Sentinel tests
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v caddy >/dev/null || missing+=(caddy)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
install_debian "${missing[@]}"

install_python

echo "== lint: ruff, mypy, import layers, buf, hadolint, kubernetes-validate"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/buf lint
.venv/bin/hadolint Dockerfile
.venv/bin/kubernetes-validate --strict --kubernetes-version 1.31 deploy/k8s/*.yaml

echo "== starting redis-server on loopback"
redis_dir=$(mktemp -d)
redis_port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$redis_dir" \
  --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
stop_redis() {
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$redis_dir"
}
trap stop_redis EXIT
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
export KEYSVC_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"

echo "== tests"
.venv/bin/pytest "$@"
