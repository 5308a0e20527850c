# Sourced by scripts/test.sh and scripts/test-container.sh: the installs both need.

# install_debian PACKAGE...: install the named Debian packages (nothing when none is named).
install_debian() {
  if (($#)); then
    echo "== installing $* from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  fi
}

# install_python: .venv (made with $PYTHON, default python3) with keysvc and its test extra.
install_python() {
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  echo "== installing Python dependencies from pyproject.toml"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  bash scripts/fix-otel-proto.sh .venv/bin/python
}
