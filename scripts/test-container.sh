#!/usr/bin/env bash
# The opt-in container tier (README "Container"): builds the Dockerfile with
# podman on a Debian base made by mmdebstrap (no container registry involved)
# and runs tests/container against the image. Takes minutes: the build installs
# keysvc's dependencies from PyPI.
#
# Podman gets a configuration of its own in a temporary folder (containers.conf,
# storage.conf, registries.conf, XDG folders), removed after. Build steps share
# the host's network namespace; containers run on slirp4netns, publishing ports
# on host loopback only. Nothing touches the host's firewall, NAT tables or
# sysctls (podman's default bridge network would: it is never used here).
#
# Usage: bash scripts/test-container.sh [pytest args]
#   KEYSVC_CONTAINER_SUITE   Debian suite of the base (default: bookworm)
#   KEYSVC_CONTAINER_CACHE   where the base tarball is kept between runs
#                            (default: ~/.cache/keysvc-container)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_install.sh
source scripts/_install.sh

missing=()
for tool in podman mmdebstrap runc slirp4netns; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
install_debian "${missing[@]}"

install_python
.venv/bin/hadolint Dockerfile

suite=${KEYSVC_CONTAINER_SUITE:-bookworm}
cache=${KEYSVC_CONTAINER_CACHE:-$HOME/.cache/keysvc-container}
base_tar="$cache/base-$suite.tar"
if [ ! -s "$base_tar" ]; then
  echo "== mmdebstrap: a $suite base with python3 from Debian's packages"
  mkdir -p "$cache"
  start=$(date +%s)
  # Check-Valid-Until off: a mirror snapshot's Release file may be past its date.
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' "$suite" "$base_tar.part"
  mv "$base_tar.part" "$base_tar"
  echo "   made in $(($(date +%s) - start)) s: $(du -h "$base_tar" | cut -f1)"
fi

work=$(mktemp -d /tmp/keysvc-podman.XXXXXX)
cleanup() {
  podman rm --all --force --time 0 >/dev/null 2>&1 || true
  podman volume prune --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/run" "$work/storage" "$work/xdg/run" "$work/xdg/config" "$work/xdg/data" "$work/tmp"
chmod 700 "$work/xdg/run"
# Explicit ulimits: runc may not set podman's defaults (the host's hard limits) in
# a sandbox without CAP_SYS_RESOURCE; these fit under any host's.
cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "$work/tmp"
CONF
cat >"$work/storage.conf" <<CONF
[storage]
driver = "overlay"
runroot = "$work/run"
graphroot = "$work/storage"
CONF
echo 'unqualified-search-registries = []' >"$work/registries.conf"
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf" \
  CONTAINERS_REGISTRIES_CONF="$work/registries.conf" XDG_RUNTIME_DIR="$work/xdg/run" \
  XDG_CONFIG_HOME="$work/xdg/config" XDG_DATA_HOME="$work/xdg/data" TMPDIR="$work/tmp"

export KEYSVC_TEST_BASE_IMAGE="localhost/keysvc-base:$suite"
podman import --quiet "$base_tar" "$KEYSVC_TEST_BASE_IMAGE" >/dev/null

echo "== container tier (podman $(podman version --format '{{.Client.Version}}'))"
# The first test waits for the image build (minutes): past the 120 s default.
KEYSVC_TEST_CONTAINER=1 .venv/bin/pytest tests/container -s -p no:cacheprovider --timeout=1800 "$@"
