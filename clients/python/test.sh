#!/usr/bin/env bash
# The Python client's checks: lint (ruff), format (ruff format), types (mypy --strict), then
# the test suite against the real local stack and a real worker process.
#
#   bash clients/python/test.sh [pytest arguments...]
#
# Needs: python3 (3.11+) with pip; the local stack running (bash deploy/local/start.sh); the
# worker binary built (cargo build -p pushfleet-worker --bin pushfleet), found at
# $PUSHFLEET_BIN (default: target/debug/pushfleet of this repository). Creates a virtual
# environment in clients/python/.venv (python3 -m venv; on Debian without python3-venv it
# installs that package with apt-get when run as root, else falls back to virtualenv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

fail() {
    echo "clients/python/test.sh: $*" >&2
    exit 1
}

command -v "$python" >/dev/null || fail "no $python on PATH: install Python 3.11 or newer"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$("$python" --version 2>&1) is too old: the client needs Python 3.11 or newer"

# --- the stack and the worker binary, before spending time on anything else ------------------
stack_env="${PUSHFLEET_STACK_ENV:-$repo/.stack/stack.env}"
[[ -f "$stack_env" ]] || fail "$stack_env is missing: start the local stack first (bash deploy/local/start.sh)"
amqp_port="$(sed -n 's/^PUSHFLEET_AMQP_PORT=//p' "$stack_env")"
docker_host="$(sed -n 's/^PUSHFLEET_DOCKER_HOST=//p' "$stack_env")"
"$python" - "$amqp_port" <<'EOF' || fail "RabbitMQ does not answer on 127.0.0.1:$amqp_port: start the local stack (bash deploy/local/start.sh)"
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
EOF
[[ -S "${docker_host#unix://}" ]] || fail "no Docker daemon socket at ${docker_host#unix://}: start the local stack (bash deploy/local/start.sh)"
export PUSHFLEET_BIN="${PUSHFLEET_BIN:-$repo/target/debug/pushfleet}"
[[ -x "$PUSHFLEET_BIN" ]] || fail "no worker binary at $PUSHFLEET_BIN: build it first (cargo build -p pushfleet-worker --bin pushfleet), or set PUSHFLEET_BIN"
command -v docker >/dev/null || fail "the docker CLI is needed to create test images (apt-get install docker.io)"
export PUSHFLEET_STACK_ENV="$stack_env"

# --- the virtual environment ------------------------------------------------------------
make_venv() {
    if "$python" -m venv "$venv" >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$venv"
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
        echo "python3 -m venv failed (python3-venv missing?): installing python3-venv" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null; } \
            || true
        if "$python" -m venv "$venv" >/dev/null 2>&1; then
            return 0
        fi
        rm -rf "$venv"
    fi
    echo "python3 -m venv is unavailable: using virtualenv" >&2
    "$python" -m pip install --quiet --user virtualenv 2>/dev/null \
        || "$python" -m pip install --quiet --user --break-system-packages virtualenv \
        || fail "cannot create a virtual environment: install python3-venv (apt-get install python3-venv)"
    "$python" -m virtualenv --quiet "$venv" || fail "virtualenv could not create $venv"
}

if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    echo "creating $venv" >&2
    make_venv
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install --upgrade pip
# The package as users install it (not editable: the schemas must ship in it), with the test
# tools; then again without dependencies, so that every run tests the current sources.
"${pip[@]}" install "$here[test]"
"${pip[@]}" install --force-reinstall --no-deps "$here"

# --- checks -------------------------------------------------------------------------------
cd "$here"
bin="$venv/bin"
echo "== ruff check" >&2
"$bin/ruff" check .
echo "== ruff format --check" >&2
"$bin/ruff" format --check .
echo "== mypy --strict (src/pushfleet)" >&2
"$bin/mypy" --strict
echo "== pytest (worker: $PUSHFLEET_BIN)" >&2
status=0
"$bin/python" -m pytest "$@" || status=$?
if [[ $status == 5 ]]; then
    fail "pytest collected no tests"
fi
exit "$status"
