#!/usr/bin/env bash
# Prints which components of the local pushfleet stack run (pid, address), and the nodes of
# the opt-in cluster once it has been started (start.sh rabbitmq-cluster).
# Exit status: 0 if all run, 3 if some or all are stopped. The cluster counts while one of its
# nodes runs: then all three must (a cluster stopped with stop.sh rabbitmq-cluster does not).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "pushfleet local stack ($PF_STATE):"
if [[ ! -d $PF_STATE ]]; then
    echo "  not initialised (run deploy/local/start.sh)"
    exit 3
fi
print_status
[[ -f $PF_STATE/stack.env ]] && echo "env file: $PF_STATE/stack.env"
for c in "${PF_COMPONENTS[@]}"; do
    [[ -n $(pid_of "$c") ]] || exit 3
done
if cl_any_running && ! cl_all_running; then exit 3; fi
exit 0
