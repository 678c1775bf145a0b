#!/usr/bin/env bash
# Stops what deploy/local/start.sh started, by pid, and waits for each process to exit.
#
# Usage: deploy/local/stop.sh [--purge] [COMPONENT...]
#   COMPONENT: rabbitmq dockerd dockerd-b token-server basic-registry token-registry
#   tls-registry rabbitmq-cluster (default: all, the cluster's nodes too, plus RabbitMQ's epmd and any other
#   process carrying this stack's marker: first processes started with lib.sh's `launch` that
#   are no component (a demo worker), last stragglers such as the containerd of a killed
#   dockerd)
#   --purge: afterwards remove the whole state directory (data, secrets, logs); only with all
#   components, or with rabbitmq-cluster alone: then only the cluster's data, cookie and logs.
# Stopping the cluster (or everything) drops its keys (PUSHFLEET_CLUSTER_*) from stack.env.
# Idempotent: stopping what is not running does nothing. Only processes whose pid file names a
# live process carrying PUSHFLEET_STACK_OWNER=<this state dir> in its environment are touched.
# Stopping tls-registry (or everything) also removes this stack's line from /etc/hosts (the one
# ending in `# pushfleet-stack <state dir>`) and the /etc/docker/certs.d folders whose owner
# file names this state dir.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=""
wanted=()
for arg in "$@"; do
    case $arg in
    --purge) purge=1 ;;
    -h | --help)
        sed -n '2,17p' "$0"
        exit 0
        ;;
    rabbitmq | dockerd | dockerd-b | token-server | basic-registry | token-registry | tls-registry | "$PF_CLUSTER") wanted+=("$arg") ;;
    *) die "unknown argument '$arg' (--purge, ${PF_COMPONENTS[*]} $PF_CLUSTER)" ;;
    esac
done
all=""
if ((${#wanted[@]} == 0)); then
    all=1
    wanted=(tls-registry token-registry basic-registry token-server dockerd-b dockerd "$PF_CLUSTER" rabbitmq)
fi
if [[ -n $purge && -z $all && ${wanted[*]} != "$PF_CLUSTER" ]]; then
    die "--purge only together with stopping everything, or with $PF_CLUSTER alone"
fi

# Removes what start.sh put outside the state directory for the TLS registry: this stack's
# /etc/hosts line and its certs.d folders (any port: the port may have changed since).
remove_tls_trust() {
    if [[ -n $(hosts_ours) ]]; then
        log "removing '$(hosts_ours | head -n 1)' from $PF_HOSTS_FILE"
        hosts_others | rewrite_in_place "$PF_HOSTS_FILE"
    fi
    local dir removed=""
    for dir in "$PF_DOCKER_CERTS_D"/*/; do
        dir=${dir%/}
        if [[ ! -d $dir ]] || ! certs_dir_ours "$dir"; then continue; fi
        log "removing $dir"
        rm -f "$dir/ca.crt" "$dir/$PF_CERTS_D_OWNER"
        rmdir "$dir" 2>/dev/null || log "$dir holds files not written by this stack; left in place"
        removed=1
    done
    # The parent too, if that left it empty (start.sh created it when it was missing).
    if [[ -n $removed ]]; then rmdir "$PF_DOCKER_CERTS_D" 2>/dev/null || true; fi
}

if [[ ! -d $PF_STATE ]]; then
    # The state dir may have been deleted by hand: still undo our system changes.
    if [[ -n $all || " ${wanted[*]} " == *" tls-registry "* ]]; then remove_tls_trust; fi
    log "no state directory $PF_STATE: nothing to stop"
    exit 0
fi

# Ends component $1 (TERM, wait up to $2 s, then KILL) and removes its pid file.
stop_simple() {
    local name=$1 timeout=${2:-15} pid
    pid=$(pid_of "$name")
    if [[ -n $pid ]]; then
        log "stopping $name (pid $pid)"
        end_pid "$pid" "$timeout" || die "could not stop $name (pid $pid)"
    fi
    rm -f "$PF_PIDS/$name.pid"
}

stop_rabbitmq() {
    local pid
    pid=$(pid_of rabbitmq)
    if [[ -n $pid ]]; then
        log "stopping RabbitMQ node $PF_RMQ_NODE (pid $pid)"
        # `stop <pidfile>` returns once the OS process has exited.
        if ! PUSHFLEET_STACK_DIR=$PF_STATE timeout 60 "$PF_DEPLOY_DIR/rabbitmqctl.sh" stop "$PF_RMQ_PIDFILE" \
            >>"$PF_LOGS/rabbitmq-stop.log" 2>&1; then
            log "rabbitmqctl stop failed (see $PF_LOGS/rabbitmq-stop.log); ending pid $pid"
        fi
        end_pid "$pid" 30 || die "could not stop RabbitMQ (pid $pid)"
    fi
    rm -f "$PF_RMQ_PIDFILE"
}

# The cluster's nodes, 3 then 2 then 1 (node 1, the seed, goes last), one at a time: a node
# remembers which peers ran when it stopped, and the last one to stop needs none to boot.
stop_cluster() {
    local n
    for n in 3 2 1; do cl_stop_node "$n"; done
    cl_update_stack_env
}

# Removes the cluster's data dirs, cookie and logs (its nodes are stopped).
purge_cluster() {
    [[ -z $(cl_running) ]] || die "cluster nodes still run ($(cl_running)); not purging"
    log "removing $PF_CLUSTER_DIR and the cluster's logs"
    rm -rf "$PF_CLUSTER_DIR" "$PF_CLUSTER_LOG"
    local n
    for n in "${PF_CLUSTER_INDEXES[@]}"; do
        rm -rf "$PF_LOGS/rabbitmq-c$n" "$PF_LOGS/rabbitmq-c$n-startup.log" "$PF_LOGS/rabbitmq-c$n-erl_crash.dump"
        rm -f "$(cl_pidfile "$n")"
    done
}

# Stops the daemon component $1 (dockerd or dockerd-b).
stop_dockerd() {
    local name=$1 pid exec_root
    exec_root=$(dockerd_exec "$name")
    pid=$(pid_of "$name")
    if [[ -n $pid ]]; then
        log "stopping $name (pid $pid)"
        # dockerd stops its containers (10 s grace each) and its containerd on TERM.
        end_pid "$pid" 60 || die "could not stop $name (pid $pid)"
    fi
    rm -f "$PF_PIDS/$name.pid"
    # A killed dockerd may leave its containerd (and shims) behind; they carry our marker.
    # Only this daemon's: its containerd's command line names its exec root (the other
    # daemon's containerd keeps running).
    local p
    for p in $(pids_with_mark); do
        case $(cat "/proc/$p/comm" 2>/dev/null) in
        containerd*)
            { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -qF "$exec_root/" || continue
            log "stopping leftover $(cat "/proc/$p/comm") (pid $p)"
            end_pid "$p" 15 || true
            ;;
        esac
    done
    # dockerd bind-mounts its data root (and mounts below it); a clean exit undoes that, a
    # killed dockerd does not.
    local dir mnt
    for dir in "$(dockerd_data "$name")" "$exec_root"; do
        while read -r mnt; do
            [[ -n $mnt ]] || continue
            log "unmounting leftover $mnt"
            umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
        done < <(mounts_below "$dir")
    done
}

# True if process $1 is, or descends from, one of the pids in $2 (space separated).
within() {
    local pid=$1 known=" $2 " i
    for ((i = 0; i < 64 && pid > 1; i++)); do
        [[ $known == *" $pid "* ]] && return 0
        pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) || return 1
        [[ -n $pid ]] || return 1
    done
    return 1
}

if [[ -n $all ]]; then
    # First whatever else carries our marker and is no component nor a child of one (e.g. a
    # worker launched with lib.sh's `launch`, as demo.sh does): it may need the broker and
    # the daemon to shut down cleanly, so it goes before them.
    known=""
    for c in epmd "${PF_COMPONENTS[@]}"; do known+=" $(pid_of "$c")"; done
    for n in "${PF_CLUSTER_INDEXES[@]}"; do known+=" $(cl_pid "$n")"; done
    for p in $(pids_with_mark); do
        within "$p" "$known" && continue
        log "stopping pid $p (not a component): $({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | cut -c1-100)"
        end_pid "$p" 15 || true
    done
fi

for c in "${wanted[@]}"; do
    case $c in
    rabbitmq) stop_rabbitmq ;;
    "$PF_CLUSTER") stop_cluster ;;
    dockerd | dockerd-b) stop_dockerd "$c" ;;
    tls-registry)
        stop_simple "$c" 15
        remove_tls_trust
        ;;
    *) stop_simple "$c" 15 ;;
    esac
done

if [[ -n $all ]]; then
    stop_simple epmd 10
    # Anything else still carrying our marker (should be nothing).
    for p in $(pids_with_mark); do
        log "stopping straggler pid $p: $({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | cut -c1-120)"
        end_pid "$p" 10 || true
    done
fi

if [[ -n $purge && -z $all ]]; then
    purge_cluster
elif [[ -n $purge ]]; then
    [[ -f $PF_STATE/.pushfleet-stack ]] || die "$PF_STATE has no .pushfleet-stack marker; not removing it"
    leftover=$(pids_with_mark)
    [[ -z $leftover ]] || die "processes of this stack still run ($leftover); not purging"
    # stop_dockerd already unmounted dockerd's leftovers; anything else below is unexpected.
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        log "unmounting leftover $mnt"
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    done < <(mounts_below "$PF_STATE")
    [[ -z $(mounts_below "$PF_STATE") ]] || die "mounts remain below $PF_STATE; not purging"
    log "removing $PF_STATE"
    rm -rf "$PF_STATE"
fi
log "stopped"
