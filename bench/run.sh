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
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

command -v cargo >/dev/null || {
    echo "cargo not found: install the Rust toolchain (1.88 or newer) first" >&2
    exit 1
}
if [[ ! -f .stack/stack.env && -z ${PUSHFLEET_STACK_ENV:-} ]]; then
    echo "the local stack is not running (no .stack/stack.env): start it with bash deploy/local/start.sh" >&2
    exit 1
fi

echo "building release binaries (pushfleet-worker, pushfleet-bench)..." >&2
cargo build --release --quiet -p pushfleet-worker -p pushfleet-bench

# Where cargo put them (CARGO_TARGET_DIR, a .cargo/config target-dir, or ./target).
target=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
exec "$target/release/pushfleet-bench" "$@"
