#!/usr/bin/env bash
# rabbitmqctl against the local stack's RabbitMQ node, with the same environment start.sh uses
# (Erlang cookie under the state dir, private epmd port, node name).
# Example: deploy/local/rabbitmqctl.sh list_queues name messages
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rmqctl "$@"
