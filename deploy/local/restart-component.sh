#!/usr/bin/env bash
# Stops and starts single components of the local stack (fault tests).
# Usage: deploy/local/restart-component.sh COMPONENT...
#   COMPONENT: rabbitmq dockerd dockerd-b token-server basic-registry token-registry tls-registry
# Same as `stop.sh COMPONENT...` then `start.sh COMPONENT...`. To only stop one, use
# `stop.sh COMPONENT`; `start.sh` (no argument) starts whatever is missing.
set -euo pipefail
dir=$(dirname "${BASH_SOURCE[0]}")
(($#)) || {
    sed -n '2,6p' "$0" >&2
    exit 2
}
"$dir/stop.sh" "$@"
"$dir/start.sh" "$@"
