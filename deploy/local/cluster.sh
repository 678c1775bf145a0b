#!/usr/bin/env bash
# Drives the opt-in RabbitMQ cluster of the local stack (started by `start.sh rabbitmq-cluster`),
# for fault tests and by hand. N is a node index 1..3: node pushfleet-c<N>@localhost, AMQP port
# N of PUSHFLEET_CLUSTER_AMQP_PORTS (default 5681,5682,5683).
#
# Usage: deploy/local/cluster.sh COMMAND [ARG]
#   status        each node up or down, and the members of the cluster as a running node sees
#                 them; exit 0 if all three run and are clustered, 3 otherwise
#   stop N        stops node N's Erlang VM (rabbitmqctl stop, then TERM/KILL by pid if that
#                 fails) and returns once the process is gone; a node already down is fine
#   start N       starts node N again (its data dir is kept) and returns once it runs and is
#                 back in the cluster (PUSHFLEET_STARTUP_TIMEOUT, default 90 s); a node that
#                 runs already is fine
#   leader QUEUE  prints the index (1..3) of the node leading quorum queue QUEUE of vhost /:
#                 the member whose Raft state is leader (rabbitmq-queues quorum_status, asked
#                 to a running node); while no running member is leader (the election after a
#                 stop), asks again for up to PUSHFLEET_CLUSTER_LEADER_TIMEOUT seconds
#                 (default 30)
# Exit status: 0 done, 1 failure (message on stderr), 2 usage, 3 (status) not all up.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${PUSHFLEET_STARTUP_TIMEOUT:-90}
LEADER_TIMEOUT=${PUSHFLEET_CLUSTER_LEADER_TIMEOUT:-30}

# Prints the usage (to stderr unless asked for) and exits with $1 (default 2).
usage() {
    if [[ ${1:-2} == 0 ]]; then sed -n '2,19p' "$0"; else sed -n '2,19p' "$0" >&2; fi
    exit "${1:-2}"
}

# The node index argument: 1..3.
node_arg() {
    [[ ${1:-} =~ ^[123]$ ]] || {
        printf '[pushfleet-stack] ERROR: node index must be 1, 2 or 3, not %s\n' "'${1:-}'" >&2
        usage
    }
}

# The cluster must have been started once (its cookie and data dirs exist).
require_cluster() {
    [[ -s $(cl_cookie) ]] ||
        die "the cluster was never started in $PF_STATE: run deploy/local/start.sh $PF_CLUSTER"
}

cmd_stop() {
    local n=$1
    [[ -n $(cl_pid "$n") ]] || log "cluster node $(cl_node "$n") is not running"
    cl_stop_node "$n"
    cl_update_stack_env
}

cmd_start() {
    local n=$1
    require_cluster
    [[ -d $PF_CLUSTER_DIR/c$n ]] ||
        die "cluster node $n has no data dir $PF_CLUSTER_DIR/c$n: run deploy/local/start.sh $PF_CLUSTER"
    local t0=$SECONDS
    if [[ -z $(cl_pid "$n") && -z $(cl_running) ]]; then
        log "no other cluster node runs: node $n boots only if it was the last to stop (else it waits for that one); the whole cluster: start.sh $PF_CLUSTER"
    fi
    start_epmd
    cl_start_node "$n"
    cl_wait_launched
    cl_wait_booted "$TIMEOUT" "$n"
    cl_wait_clustered "$TIMEOUT" member "$n"
    cl_update_stack_env
    if ((${#PF_CL_STARTED[@]})); then
        log "cluster node $(cl_node "$n") started and back in the cluster in $((SECONDS - t0))s"
    else
        log "cluster node $(cl_node "$n") was already running"
    fi
}

# The Raft state of each member of quorum queue $1 (vhost /), asked to the first running node
# that answers: one "NODE STATE TERM" line per member (STATE leader, follower, candidate,
# pre_vote, ..., or nodedown). Not list_queues: RabbitMQ 3.10 leaves a quorum queue out of it
# (even with --offline) while the node its metadata names as leader is down.
# Returns 3 if the queue does not exist, 4 (printing RabbitMQ's message) if it is no quorum
# queue, 1 if no node answers.
member_states() {
    local n out
    for n in $(cl_running); do
        if out=$(PF_CL_CMD_TIMEOUT=20 cl_cli rabbitmq-queues "$n" -q quorum_status -p / "$1" --formatter json 2>&1); then
            # [{"Node Name":"pushfleet-c1@localhost","Raft State":"leader",...,"Term":1,...},
            #  {"Node Name":"pushfleet-c2@localhost","Raft State":["nodedown","pushfleet-c2@localhost"],...}]
            tr -d '\n' <<<"$out" | sed 's/},{/}\n{/g' | sed -n \
                -e 's/.*"Node Name":"\([^"]*\)","Raft State":\["nodedown".*/\1 nodedown -/p' \
                -e 's/.*"Node Name":"\([^"]*\)","Raft State":"\([^"]*\)".*"Term":\([0-9]*\).*/\1 \2 \3/p'
            return 0
        fi
        case $out in
        *not_found*) return 3 ;;
        *"of a classic queue"* | *"of a stream queue"* | *"not a quorum queue"*)
            printf '%s\n' "${out##*$'\n'}"
            return 4
            ;;
        esac
        printf '%s\n' "$out" >>"$PF_CLUSTER_LOG"
    done
    return 1
}

cmd_leader() {
    local queue=$1 deadline=$((SECONDS + LEADER_TIMEOUT)) states leader idx rc
    [[ -n $queue ]] || usage
    require_cluster
    while :; do
        [[ -n $(cl_running) ]] || die "no cluster node runs (start one: cluster.sh start N)"
        rc=0
        states=$(member_states "$queue") || rc=$?
        case $rc in
        0)
            # A leader cut off from the others may still call itself leader: take the newest term.
            leader=$(awk '$2 == "leader" { print $3, $1 }' <<<"$states" | sort -rn | awk 'NR == 1 { print $2 }')
            if [[ -n $leader ]] && idx=$(cl_index "$leader") && [[ -n $(cl_pid "$idx") ]]; then
                echo "$idx"
                return 0
            fi
            ;;
        3) die "no queue '$queue' on vhost / of the cluster" ;;
        4) die "queue '$queue' is not a quorum queue ($states)" ;;
        *) states="(no running node answered)" ;;
        esac
        ((SECONDS < deadline)) ||
            die "quorum queue '$queue' has no leader on a running node after ${LEADER_TIMEOUT}s (members: $(paste -sd ',' <<<"$states" | sed 's/,/, /g'); running nodes: '$(cl_running)')"
        sleep 0.5
    done
}

cmd_status() {
    local n pid asked="" view=""
    echo "pushfleet RabbitMQ cluster ($PF_STATE):"
    if [[ ! -d $PF_CLUSTER_DIR ]]; then
        echo "  never started (deploy/local/start.sh $PF_CLUSTER)"
        return 3
    fi
    for n in "${PF_CLUSTER_INDEXES[@]}"; do
        pid=$(cl_pid "$n")
        if [[ -n $pid ]]; then
            printf '  %s  up    pid %-8s %s\n' "$n" "$pid" "$(cl_node "$n") $(cl_url "$n")"
        else
            printf '  %s  down  %-12s %s\n' "$n" "" "$(cl_node "$n") $(cl_url "$n")"
        fi
    done
    for n in $(cl_running); do
        if view=$(cl_view "$n"); then
            asked=$n
            break
        fi
    done
    if [[ -z $asked ]]; then
        echo "  members: unknown (no running node answers)"
        return 3
    fi
    echo "  members (as node $asked sees them): ${view%|*}; running: ${view#*|}"
    cl_all_running && cl_in_cluster "$asked" && return 0
    return 3
}

(($# >= 1)) || usage
[[ $(id -u) == 0 ]] || die "run as root (the cluster's Erlang cookie and data belong to root)"
case $1 in
-h | --help) usage 0 ;;
status)
    (($# == 1)) || usage
    rc=0
    cmd_status || rc=$?
    exit "$rc"
    ;;
stop | start)
    (($# == 2)) || usage
    node_arg "$2"
    "cmd_$1" "$2"
    ;;
leader)
    (($# == 2)) || usage
    cmd_leader "$2"
    ;;
*)
    printf '[pushfleet-stack] ERROR: unknown command %s\n' "'$1'" >&2
    usage
    ;;
esac
