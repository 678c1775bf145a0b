#!/usr/bin/env bash
# Builds the release binaries (the worker and the bench) and runs the benchmark against the
# running local stack; prints markdown tables and writes them to bench/results/latest.md.
#
#   bash bench/run.sh            # the full benchmark (about 10-15 minutes on 2 cores)
#   bash bench/run.sh --quick    # a smoke run (about 2 minutes)
#   bash bench/run.sh --help     # every knob (workloads, concurrencies, repetitions, jobs)
#
# The stack must run first: bash deploy/local/start.sh. CARGO_TARGET_DIR is honoured (a
# separate one keeps the benchmark's release build from blocking other builds).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/lib.sh"
cd "$PF_REPO_DIR"

need_cargo
if [[ ! -f .stack/stack.env && -z ${PUSHFLEET_STACK_ENV:-} ]]; then
    echo "the local stack is not running (no .stack/stack.env): start it with bash deploy/local/start.sh" >&2
    exit 1
fi

echo "building release binaries (pushfleet-worker, pushfleet-bench)..." >&2
cargo build --release --quiet -p pushfleet-worker -p pushfleet-bench

# Where cargo put them (CARGO_TARGET_DIR, a .cargo/config target-dir, or ./target).
target=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
exec "$target/release/pushfleet-bench" "$@"
