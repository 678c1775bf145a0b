#!/usr/bin/env bash
# Prints which components of the local pushfleet stack run (pid, address).
# Exit status: 0 if all run, 3 if some or all are stopped.
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
exit 0
