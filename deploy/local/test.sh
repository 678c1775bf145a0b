#!/usr/bin/env bash
# The whole test suite against the real local stack: starts what is missing (installing
# Debian packages on a fresh machine), then runs every test of the workspace, then the Python
# client's lint, types and tests. The stack suite also builds the worker image with the stack's
# daemon (deploy/image/build.sh, Debian packages, no pulls) and runs a job through it, and
# checks the compose file and the Kubernetes manifests (deploy/check.sh, whose Python tools
# come from PyPI).
# This is the README's test command and what CI runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
repo=$PF_REPO_DIR
cd "$repo"

need_cargo
bash deploy/local/start.sh
# The three-node RabbitMQ cluster for tests/cluster (a node is stopped and started there).
bash deploy/local/start.sh rabbitmq-cluster
export PUSHFLEET_STACK_ENV=${PUSHFLEET_STACK_ENV:-${PUSHFLEET_STACK_DIR:-$repo/.stack}/stack.env}
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?
# The Python client (clients/python) against the same stack and a real worker process.
cargo build -p pushfleet-worker --bin pushfleet
PUSHFLEET_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/pushfleet" bash clients/python/test.sh || status=$?
exit "$status"
