# shellcheck shell=bash
# shellcheck disable=SC2034 # the PF_* variables are used by the scripts sourcing this file
# Shared functions of the local pushfleet stack (sourced by start.sh, stop.sh, status.sh,
# restart-component.sh, rabbitmqctl.sh, cluster.sh, demo.sh, test.sh and bench/run.sh). Not
# meant to be run on its own.
#
# Everything lives under ONE state directory, ${PUSHFLEET_STACK_DIR:-<repo>/.stack}:
#   settings.env   ports chosen on the first start (env vars override them later)
#   stack.env      what tests and workers read (addresses, user names, password FILE paths)
#   config/        generated configs (registries, dockerd, rabbitmq, token-server users)
#   secrets/       passwords, htpasswd, token signing key + cert, the TLS registry's CA and
#                  server certificate (0600 keys, 0700 dir)
#   logs/  pids/   one log and one pid file per component
#   rabbitmq/ docker/ docker-exec/ docker-b/ docker-b-exec/ registry-basic/ registry-token/ registry-tls/   component data
#   rabbitmq-cluster/  the opt-in three-node cluster (start.sh rabbitmq-cluster): home/ (its
#                  own Erlang cookie) and c1/ c2/ c3/ (one data dir per node)
#
# Outside the state directory, only for the TLS registry (removed by stop.sh): one line in
# /etc/hosts (`::1 registry.test # pushfleet-stack <state dir>`) and the daemon's trust folder
# /etc/docker/certs.d/registry.test:<port>/ (ca.crt, plus an owner file naming the state dir).
#
# Every process we start carries PUSHFLEET_STACK_OWNER=<state dir> in its environment.
# stop.sh only ends processes whose pid file points to a live process carrying that marker
# (so a reused pid or a system daemon is never touched), plus stragglers with the marker
# (e.g. the containerd that dockerd spawns).

PF_DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PF_REPO_DIR=$(cd "$PF_DEPLOY_DIR/../.." && pwd)
PF_STATE=${PUSHFLEET_STACK_DIR:-$PF_REPO_DIR/.stack}
case $PF_STATE in /*) ;; *) PF_STATE=$PWD/$PF_STATE ;; esac
PF_STATE=${PF_STATE%/}

# All components, in start order; stop goes the other way.
# dockerd-b is a second, independent daemon (own socket, images and containerd): a second
# build host, for pools (jobs whose image only one daemon holds).
PF_COMPONENTS=(rabbitmq dockerd dockerd-b token-server basic-registry token-registry tls-registry)
# Opt-in, not in PF_COMPONENTS (so not started by default): three RabbitMQ nodes clustered on
# loopback, started by `start.sh rabbitmq-cluster`, driven by cluster.sh. Node i (1..3) is
# pushfleet-c<i>@localhost; its pid file is pids/rabbitmq-c<i>.pid.
PF_CLUSTER=rabbitmq-cluster
PF_CLUSTER_INDEXES=(1 2 3)

PF_RABBITMQ_BIN=/usr/lib/rabbitmq/bin # the real scripts, without Debian's `su rabbitmq` wrapper
PF_TOKEN_SERVICE=pushfleet-token-registry
PF_TOKEN_ISSUER=pushfleet-token-server
PF_BASIC_USER=pushfleet
PF_ODD_USER=oddpass
PF_PUSHER_NAMESPACE=team-a

# The TLS registry. dockerd treats every registry on 127.0.0.0/8 (and any name resolving
# there) as insecure and never verifies its certificate, so it listens on IPv6 loopback and is
# reached by a name mapped to ::1 in /etc/hosts; the daemon trusts its CA through certs.d.
PF_TLS_NAME=registry.test
PF_TLS_LISTEN=::1
PF_HOSTS_FILE=/etc/hosts
PF_DOCKER_CERTS_D=/etc/docker/certs.d
# In each certs.d folder we create: names the state dir that owns it. dockerd only reads
# *.crt, *.cert and *.key files there, so it ignores this one.
PF_CERTS_D_OWNER=pushfleet-stack.owner

log() { printf '[pushfleet-stack] %s\n' "$*" >&2; }
die() {
    printf '[pushfleet-stack] ERROR: %s\n' "$*" >&2
    exit 1
}

# Fails unless cargo is on PATH (for the scripts that build pushfleet).
need_cargo() {
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (1.88 or newer) first"
}

# Paths derived from the state directory.
pf_paths() {
    PF_CONFIG=$PF_STATE/config
    PF_SECRETS=$PF_STATE/secrets
    PF_LOGS=$PF_STATE/logs
    PF_PIDS=$PF_STATE/pids
    PF_MARK="PUSHFLEET_STACK_OWNER=$PF_STATE"
    PF_DOCKER_SOCK=$PF_STATE/docker.sock
    PF_DOCKER_B_SOCK=$PF_STATE/docker-b.sock
    PF_RMQ_DIR=$PF_STATE/rabbitmq
    PF_RMQ_PIDFILE=$PF_PIDS/rabbitmq.pid
    PF_CLUSTER_DIR=$PF_STATE/rabbitmq-cluster
    PF_CLUSTER_LOG=$PF_LOGS/rabbitmq-cluster.log # cluster.sh and the join steps of start.sh
    PF_TOKEN_KEY=$PF_SECRETS/token-signing.key
    PF_TOKEN_CERT=$PF_SECRETS/token-signing.crt
    PF_TLS_CA_KEY=$PF_SECRETS/tls-ca.key
    PF_TLS_CA_CERT=$PF_SECRETS/tls-ca.crt
    PF_TLS_WRONG_CA_CERT=$PF_SECRETS/tls-wrong-ca.crt # unrelated CA (its key is discarded)
    PF_TLS_SERVER_KEY=$PF_SECRETS/tls-registry.key
    PF_TLS_SERVER_CERT=$PF_SECRETS/tls-registry.crt
    # Ends the /etc/hosts line of this stack (no spaces: start.sh refuses a state dir with any).
    PF_HOSTS_MARK="# pushfleet-stack $PF_STATE"
}
pf_paths

# The socket, data root and exec root of the daemon component $1 (dockerd or dockerd-b).
dockerd_sock() { if [[ $1 == dockerd-b ]]; then echo "$PF_DOCKER_B_SOCK"; else echo "$PF_DOCKER_SOCK"; fi; }
dockerd_data() { if [[ $1 == dockerd-b ]]; then echo "$PF_STATE/docker-b"; else echo "$PF_STATE/docker"; fi; }
dockerd_exec() { if [[ $1 == dockerd-b ]]; then echo "$PF_STATE/docker-b-exec"; else echo "$PF_STATE/docker-exec"; fi; }

# Ports: environment variable, else the value saved on the first start, else the default.
pf_settings() {
    local saved=$PF_STATE/settings.env
    local -A old=()
    if [[ -f $saved ]]; then
        local k v
        while IFS='=' read -r k v; do [[ -n $k && $k != \#* ]] && old[$k]=$v; done <"$saved"
    fi
    PF_AMQP_PORT=${PUSHFLEET_AMQP_PORT:-${old[PUSHFLEET_AMQP_PORT]:-5672}}
    PF_EPMD_PORT=${PUSHFLEET_EPMD_PORT:-${old[PUSHFLEET_EPMD_PORT]:-4370}}
    PF_BASIC_PORT=${PUSHFLEET_BASIC_PORT:-${old[PUSHFLEET_BASIC_PORT]:-5001}}
    PF_TOKEN_REGISTRY_PORT=${PUSHFLEET_TOKEN_REGISTRY_PORT:-${old[PUSHFLEET_TOKEN_REGISTRY_PORT]:-5002}}
    PF_TOKEN_SERVER_PORT=${PUSHFLEET_TOKEN_SERVER_PORT:-${old[PUSHFLEET_TOKEN_SERVER_PORT]:-5003}}
    PF_TLS_REGISTRY_PORT=${PUSHFLEET_TLS_REGISTRY_PORT:-${old[PUSHFLEET_TLS_REGISTRY_PORT]:-5443}}
    PF_RMQ_NODE=${PUSHFLEET_RABBITMQ_NODENAME:-${old[PUSHFLEET_RABBITMQ_NODENAME]:-pushfleet@localhost}}
    # Erlang distribution port of the node: RabbitMQ's own rule (AMQP port + 20000).
    PF_AMQP_DIST_PORT=$((PF_AMQP_PORT + 20000))
    # The cluster's AMQP ports, nodes 1,2,3 (distribution ports: the same + 20000).
    PF_CLUSTER_AMQP_PORTS=${PUSHFLEET_CLUSTER_AMQP_PORTS:-${old[PUSHFLEET_CLUSTER_AMQP_PORTS]:-5681,5682,5683}}
    [[ $PF_CLUSTER_AMQP_PORTS =~ ^[0-9]{1,5},[0-9]{1,5},[0-9]{1,5}$ ]] ||
        die "PUSHFLEET_CLUSTER_AMQP_PORTS must be three ports separated by commas (e.g. 5681,5682,5683), not '$PF_CLUSTER_AMQP_PORTS'"
    PF_TLS_REGISTRY=$PF_TLS_NAME:$PF_TLS_REGISTRY_PORT
    PF_TLS_CERTS_DIR=$PF_DOCKER_CERTS_D/$PF_TLS_REGISTRY
}

pf_save_settings() {
    cat >"$PF_STATE/settings.env.tmp" <<EOF
# Ports of this stack, chosen on the first start; environment variables of the same name
# override them (then they are saved again).
PUSHFLEET_AMQP_PORT=$PF_AMQP_PORT
PUSHFLEET_EPMD_PORT=$PF_EPMD_PORT
PUSHFLEET_BASIC_PORT=$PF_BASIC_PORT
PUSHFLEET_TOKEN_REGISTRY_PORT=$PF_TOKEN_REGISTRY_PORT
PUSHFLEET_TOKEN_SERVER_PORT=$PF_TOKEN_SERVER_PORT
PUSHFLEET_TLS_REGISTRY_PORT=$PF_TLS_REGISTRY_PORT
PUSHFLEET_RABBITMQ_NODENAME=$PF_RMQ_NODE
PUSHFLEET_CLUSTER_AMQP_PORTS=$PF_CLUSTER_AMQP_PORTS
EOF
    mv -f "$PF_STATE/settings.env.tmp" "$PF_STATE/settings.env"
}

pf_settings

# ---------------------------------------------------------------------------------------------
# Processes

# True if $1 is a live (not zombie) process. Here pid 1 may be slow to reap orphans, and
# `kill -0` succeeds on a zombie, so look at the state in /proc.
proc_alive() {
    local pid=$1 stat state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${stat##*) }
    state=${state%% *}
    [[ $state != Z && $state != X ]]
}

# True if live process $1 carries our marker in its environment.
proc_ours() {
    proc_alive "$1" || return 1
    { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qxF "$PF_MARK"
}

# The number in the pid file of component $1 (alive or not); empty without a file.
pidfile_pid() {
    local file=$PF_PIDS/$1.pid
    [[ -f $file ]] && tr -dc '0-9' <"$file"
    return 0
}

# The pid of component $1 if it runs and is ours; empty otherwise.
pid_of() {
    local pid
    pid=$(pidfile_pid "$1")
    if [[ -n $pid ]] && proc_ours "$pid"; then echo "$pid"; fi
    return 0
}

# All live processes carrying our marker (except this shell and its parents).
pids_with_mark() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid == "$$" || $pid == "$PPID" || $pid == "$BASHPID" ]] && continue
        proc_ours "$pid" && echo "$pid"
    done
    return 0
}

# Sends TERM to $1, waits up to $2 seconds, then KILL; returns when it is gone.
end_pid() {
    local pid=$1 timeout=${2:-15} i
    proc_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        proc_alive "$pid" || return 0
        sleep 0.1
    done
    log "pid $pid did not exit after ${timeout}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        proc_alive "$pid" || return 0
        sleep 0.1
    done
    log "pid $pid is still there after KILL"
    return 1
}

# Runs "$@" detached (own session, stdin from /dev/null, output to log $1), marked as ours.
# Prints the pid.
launch() {
    local logfile=$1
    shift
    env "$PF_MARK" setsid "$@" </dev/null >>"$logfile" 2>&1 &
    echo $!
}

# True if something listens on ${2:-127.0.0.1}:$1 (bash's /dev/tcp also takes ::1).
port_open() {
    (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# Fails clearly if ${4:-127.0.0.1}:$1 is taken (we only call it when our component is not
# running).
require_free_port() {
    local port=$1 what=$2 var=$3 host=${4:-127.0.0.1}
    if port_open "$port" "$host"; then
        local who=""
        if command -v ss >/dev/null 2>&1; then
            who=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/ (\1, pid \2)/p' | head -n1)
        fi
        [[ $host == *:* ]] && host="[$host]"
        die "port $host:$port for $what is taken by a process not started by this stack$who; stop it or choose another port with $var=<port> (the choice is kept in $PF_STATE/settings.env)"
    fi
}

# Polls "$@" every 0.1 s until it succeeds or $1 seconds pass (readiness, not test logic).
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# Like wait_until, but gives up as soon as process $2 (if not empty) is gone.
wait_ready() {
    local timeout=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        if [[ -n $pid ]] && ! proc_alive "$pid"; then
            "$@" >/dev/null 2>&1 # it may have become ready just before exiting
            return
        fi
        sleep 0.1
    done
}

# HTTP status of a GET on loopback (never through a proxy).
http_status() {
    curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" || true
}

# Replaces the content of file $1 with stdin if it differs, in place (same inode, owner and
# mode): a container's /etc/hosts is a bind mount that a rename cannot replace.
rewrite_in_place() {
    local file=$1 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    cmp -s "$tmp" "$file" || cat "$tmp" >"$file"
    rm -f "$tmp"
}

# Mount points below directory $1 (deepest first).
mounts_below() {
    awk -v s="$1/" 'index($2, s) == 1 || $2 == substr(s, 1, length(s) - 1) {print $2}' \
        /proc/self/mounts | sort -r
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ (run as root from /usr/lib/rabbitmq/bin: the /usr/sbin wrappers `su` to the
# rabbitmq user, which would reset HOME (Erlang cookie) and need a rabbitmq-owned state dir).

# Exports the environment rabbitmq-server and rabbitmqctl need (same for both).
rmq_env() {
    export HOME=$PF_RMQ_DIR/home # .erlang.cookie lives here
    export RABBITMQ_NODENAME=$PF_RMQ_NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$PF_AMQP_PORT
    export RABBITMQ_DIST_PORT=$PF_AMQP_DIST_PORT
    export RABBITMQ_MNESIA_BASE=$PF_RMQ_DIR/mnesia
    export RABBITMQ_LOG_BASE=$PF_LOGS/rabbitmq
    export RABBITMQ_PID_FILE=$PF_RMQ_PIDFILE
    export RABBITMQ_CONF_ENV_FILE=$PF_CONFIG/rabbitmq-env.conf       # not /etc/rabbitmq/...
    export RABBITMQ_CONFIG_FILE=$PF_CONFIG/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$PF_CONFIG/rabbitmq-advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$PF_CONFIG/rabbitmq-enabled-plugins
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_PORT=$PF_EPMD_PORT # our own epmd, so stop.sh can end it
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_CRASH_DUMP=$PF_LOGS/rabbitmq-erl_crash.dump
}

# rabbitmqctl against our node, with our environment (in a subshell).
rmqctl() {
    (
        rmq_env
        cd "$PF_RMQ_DIR" 2>/dev/null || cd /
        "$PF_RABBITMQ_BIN/rabbitmqctl" -n "$PF_RMQ_NODE" "$@"
    )
}

# The stack's epmd (shared by the single node and the cluster), unless it runs already.
start_epmd() {
    [[ -n $(pid_of epmd) ]] && return 0
    if port_open "$PF_EPMD_PORT"; then
        log "epmd port $PF_EPMD_PORT is already served by an epmd not started by this stack; sharing it"
        return 0
    fi
    local pid
    pid=$(ERL_EPMD_ADDRESS=127.0.0.1 launch "$PF_LOGS/epmd.log" epmd -port "$PF_EPMD_PORT")
    echo "$pid" >"$PF_PIDS/epmd.pid"
    wait_until 10 port_open "$PF_EPMD_PORT" || die "epmd did not listen on $PF_EPMD_PORT (see $PF_LOGS/epmd.log)"
}

# ---------------------------------------------------------------------------------------------
# The opt-in RabbitMQ cluster (start.sh rabbitmq-cluster, cluster.sh): nodes 1..3 on loopback,
# sharing the stack's epmd and one Erlang cookie of their own ($PF_CLUSTER_DIR/home, not the
# single node's), each with its own data dir, logs, pid file, AMQP and distribution port.
# Node 1 is the seed: on the first start nodes 2 and 3 join it; afterwards each node finds
# the others again from its data dir.

cl_node() { printf 'pushfleet-c%s@localhost\n' "$1"; }
cl_port() {
    local ports
    IFS=, read -ra ports <<<"$PF_CLUSTER_AMQP_PORTS"
    printf '%s\n' "${ports[$1 - 1]}"
}
cl_url() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(cl_port "$1")"; }
cl_pidfile() { printf '%s\n' "$PF_PIDS/rabbitmq-c$1.pid"; }
cl_cookie() { printf '%s\n' "$PF_CLUSTER_DIR/home/.erlang.cookie"; }
# The pid of node $1 if it runs and is ours; empty otherwise.
cl_pid() { pid_of "rabbitmq-c$1"; }
# The index (1..3) of node name $1; fails for any other name.
cl_index() {
    case $1 in
    pushfleet-c[123]@localhost)
        local i=${1#pushfleet-c}
        echo "${i%@localhost}"
        ;;
    *) return 1 ;;
    esac
}
# The indexes of the nodes whose process runs ("1 3"), and whether any / all do.
cl_running() {
    local n out=()
    for n in "${PF_CLUSTER_INDEXES[@]}"; do [[ -n $(cl_pid "$n") ]] && out+=("$n"); done
    echo "${out[*]}"
}
cl_any_running() { [[ -n $(cl_running) ]]; }
cl_all_running() { [[ $(cl_running) == "${PF_CLUSTER_INDEXES[*]}" ]]; }

# Exports the environment rabbitmq-server and the CLI tools need for node $1 (same for both).
cl_env() {
    local n=$1 port
    port=$(cl_port "$n")
    export HOME=$PF_CLUSTER_DIR/home # the cluster's .erlang.cookie
    RABBITMQ_NODENAME=$(cl_node "$n")
    RABBITMQ_PID_FILE=$(cl_pidfile "$n")
    export RABBITMQ_NODENAME RABBITMQ_PID_FILE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$((port + 20000))
    export RABBITMQ_MNESIA_BASE=$PF_CLUSTER_DIR/c$n
    export RABBITMQ_LOG_BASE=$PF_LOGS/rabbitmq-c$n
    export RABBITMQ_CONF_ENV_FILE=$PF_CONFIG/rabbitmq-env.conf # shared with the single node
    export RABBITMQ_CONFIG_FILE=$PF_CONFIG/rabbitmq-cluster.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$PF_CONFIG/rabbitmq-cluster-advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$PF_CONFIG/rabbitmq-enabled-plugins
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_PORT=$PF_EPMD_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_CRASH_DUMP=$PF_LOGS/rabbitmq-c$n-erl_crash.dump
}

# cl_cli TOOL N ARG...: a RabbitMQ CLI tool (rabbitmqctl, rabbitmq-queues, ...) against node N
# with the cluster's environment, in a subshell, ended after PF_CL_CMD_TIMEOUT seconds
# (default 60): a node that is booting or half gone can keep a CLI call waiting.
cl_cli() {
    local tool=$1 n=$2
    shift 2
    (
        cl_env "$n"
        cd "$PF_CLUSTER_DIR" 2>/dev/null || cd /
        timeout "${PF_CL_CMD_TIMEOUT:-60}" "$PF_RABBITMQ_BIN/$tool" -n "$RABBITMQ_NODENAME" "$@"
    )
}
clctl() { cl_cli rabbitmqctl "$@"; }

# The cluster as node $1 sees it: "MEMBERS|RUNNING", each the sorted indexes ("1 2 3|1 3").
# Fails if the node does not answer.
cl_view() {
    local out members running re='^[{][[]([^]]*)[]],[[]([^]]*)[]][}]$'
    out=$(PF_CL_CMD_TIMEOUT=${PF_CL_CMD_TIMEOUT:-20} clctl "$1" -q eval \
        '{rabbit_mnesia:cluster_nodes(all), rabbit_mnesia:cluster_nodes(running)}.' 2>/dev/null) || return 1
    # {['pushfleet-c1@localhost','pushfleet-c2@localhost'],['pushfleet-c1@localhost']}, with
    # line breaks where the term is long.
    out=$(tr -d '[:space:]' <<<"$out")
    [[ $out =~ $re ]] || return 1
    members=$(grep -o 'pushfleet-c[123]@localhost' <<<"${BASH_REMATCH[1]}" | sed 's/pushfleet-c\(.\)@.*/\1/' | sort -u | paste -sd ' ') || true
    running=$(grep -o 'pushfleet-c[123]@localhost' <<<"${BASH_REMATCH[2]}" | sed 's/pushfleet-c\(.\)@.*/\1/' | sort -u | paste -sd ' ') || true
    printf '%s|%s\n' "$members" "$running"
}

# True if node $1 runs its app, counts all three nodes as members and sees exactly the
# nodes whose process runs as running.
cl_in_cluster() {
    local view
    view=$(cl_view "$1") || return 1
    [[ $view == "${PF_CLUSTER_INDEXES[*]}|$(cl_running)" ]]
}

# Launches node $1 unless it runs, in the background (cl_wait_launched waits for the launch,
# cl_wait_booted for the boot); appends it to PF_CL_STARTED. Needs the cookie and the stack's
# epmd (start_epmd).
PF_CL_STARTED=()
PF_CL_LAUNCHERS=()
cl_start_node() {
    local n=$1 port
    [[ -n $(cl_pid "$n") ]] && return 0
    [[ -s $(cl_cookie) ]] || die "no cluster cookie $(cl_cookie): start the cluster with start.sh $PF_CLUSTER"
    port=$(cl_port "$n")
    require_free_port "$port" "RabbitMQ cluster node $n (AMQP)" PUSHFLEET_CLUSTER_AMQP_PORTS
    require_free_port "$((port + 20000))" "RabbitMQ cluster node $n (Erlang distribution, AMQP port + 20000)" PUSHFLEET_CLUSTER_AMQP_PORTS
    mkdir -p "$PF_CLUSTER_DIR/c$n" "$PF_LOGS/rabbitmq-c$n"
    rm -f "$(cl_pidfile "$n")"
    log "starting RabbitMQ cluster node $(cl_node "$n") on 127.0.0.1:$port"
    (
        cl_env "$n"
        cd "$PF_CLUSTER_DIR" || exit 1
        env "$PF_MARK" "$PF_RABBITMQ_BIN/rabbitmq-server" -detached \
            </dev/null >>"$PF_LOGS/rabbitmq-c$n-startup.log" 2>&1 ||
            die "rabbitmq-server -detached failed for cluster node $n (see $PF_LOGS/rabbitmq-c$n-startup.log)"
    ) &
    PF_CL_LAUNCHERS+=($!)
    PF_CL_STARTED+=("$n")
}

# Waits for the launches of cl_start_node (rabbitmq-server -detached returns once the VM is
# detached, long before the boot).
cl_wait_launched() {
    local pid rc=0
    for pid in "${PF_CL_LAUNCHERS[@]}"; do wait "$pid" || rc=1; done
    PF_CL_LAUNCHERS=()
    ((rc == 0)) || die "could not launch every cluster node"
}

# Runs "$@" N (a function that may die) for every node N in parallel; fails if one fails
# (each prints its own error).
cl_parallel() {
    local n pids=() pid rc=0
    for n in "${PF_CLUSTER_INDEXES[@]}"; do
        "$@" "$n" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return "$rc"
}

# Waits up to $1 seconds until node $2 has booted (app running). A node launched just now is
# awaited through its pid file (`wait` also waits for the boot; await_startup would fail at
# once while the node is not registered yet), one that ran already with await_startup. A
# restarted node that was not the last of its cluster to stop waits in its boot for a peer
# that was running when it stopped.
cl_wait_booted() {
    local timeout=$1 n=$2 log=$PF_LOGS/rabbitmq-c$2-startup.log how=(await_startup)
    [[ " ${PF_CL_STARTED[*]} " == *" $n "* ]] && how=(wait "$(cl_pidfile "$n")")
    if ! PF_CL_CMD_TIMEOUT=$((timeout + 15)) clctl "$n" "${how[@]}" --timeout "$timeout" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        tail -n 20 "$PF_LOGS/rabbitmq-c$n/$(cl_node "$n").log" >&2 2>/dev/null || true
        die "RabbitMQ cluster node $n did not boot within ${timeout}s (logs: $log, $PF_LOGS/rabbitmq-c$n/)"
    fi
    [[ -n $(cl_pid "$n") ]] || die "cluster node $n answers but its pid file $(cl_pidfile "$n") does not point to our process"
}

# Node $1 (2 or 3) joins node 1's cluster (resets node $1 first: only for a node that is no
# member yet).
cl_join() {
    local n=$1 seed
    seed=$(cl_node 1)
    log "joining $(cl_node "$n") to the cluster of $seed"
    {
        clctl "$n" stop_app && clctl "$n" join_cluster "$seed" && clctl "$n" start_app
    } >>"$PF_CLUSTER_LOG" 2>&1 || {
        tail -n 20 "$PF_CLUSTER_LOG" >&2
        die "cluster node $n could not join $seed (log: $PF_CLUSTER_LOG)"
    }
}

# Waits up to $1 seconds until node $3 is in the cluster (cl_in_cluster). With $2 = member,
# fails at once if the node answers with other members than all three (membership comes from
# the data dir: a node that is no member would never get there); $2 = any does not.
cl_wait_clustered() {
    local timeout=$1 mode=$2 n=$3 deadline=$((SECONDS + $1)) view=""
    while :; do
        if view=$(cl_view "$n"); then
            [[ $view == "${PF_CLUSTER_INDEXES[*]}|$(cl_running)" ]] && return 0
            [[ $mode != member || ${view%|*} == "${PF_CLUSTER_INDEXES[*]}" ]] ||
                die "cluster node $n runs, but its cluster members are '${view%|*}', not '${PF_CLUSTER_INDEXES[*]}' (start afresh: stop.sh --purge $PF_CLUSTER; start.sh $PF_CLUSTER)"
        else
            view="no answer"
        fi
        ((SECONDS < deadline)) ||
            die "cluster node $n runs but is not clustered after ${timeout}s: its view (members|running) is '$view', running processes: '$(cl_running)' (log: $PF_LOGS/rabbitmq-c$n/)"
        sleep 0.2
    done
}

# Stops node $1 (rabbitmqctl stop, which returns when the VM has exited; TERM then KILL by pid
# if that fails) and returns once the process is gone.
cl_stop_node() {
    local n=$1 pid
    pid=$(cl_pid "$n")
    if [[ -n $pid ]]; then
        log "stopping RabbitMQ cluster node $(cl_node "$n") (pid $pid)"
        if ! PF_CL_CMD_TIMEOUT=60 clctl "$n" stop "$(cl_pidfile "$n")" >>"$PF_CLUSTER_LOG" 2>&1; then
            log "rabbitmqctl stop failed for cluster node $n (see $PF_CLUSTER_LOG); ending pid $pid"
        fi
        end_pid "$pid" 30 || die "could not stop cluster node $n (pid $pid)"
    fi
    rm -f "$(cl_pidfile "$n")"
}

# The stack.env lines of the cluster: only while one of its nodes runs (a node stopped on
# purpose, e.g. by cluster.sh stop, keeps them; a cluster with no node running drops them).
cl_stack_env_lines() {
    cl_any_running || return 0
    local n urls=() nodes=()
    for n in "${PF_CLUSTER_INDEXES[@]}"; do
        urls+=("$(cl_url "$n")")
        nodes+=("$(cl_node "$n")")
    done
    local IFS=,
    printf 'PUSHFLEET_CLUSTER_AMQP_URLS=%s\nPUSHFLEET_CLUSTER_NODES=%s\n' "${urls[*]}" "${nodes[*]}"
}

# Brings the cluster lines of an existing stack.env up to date (see cl_stack_env_lines);
# replaces the file atomically, and only if it changes.
cl_update_stack_env() {
    local file=$PF_STATE/stack.env tmp
    [[ -f $file ]] || return 0
    tmp=$(mktemp "$file.XXXXXX")
    { grep -v '^PUSHFLEET_CLUSTER_' "$file" || true; cl_stack_env_lines; } >"$tmp"
    chmod 644 "$tmp"
    if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv -f "$tmp" "$file"; fi
}

# ---------------------------------------------------------------------------------------------
# TLS registry: its name in /etc/hosts and the daemon's trust in certs.d. start.sh installs
# both, stop.sh removes exactly what carries this stack's marker.

# This stack's /etc/hosts line.
tls_hosts_line() { printf '%s %s %s\n' "$PF_TLS_LISTEN" "$PF_TLS_NAME" "$PF_HOSTS_MARK"; }

# hosts_lines 1: the lines of /etc/hosts written by this stack (they end with
# " $PF_HOSTS_MARK"); hosts_lines 0: all the others (unchanged, in order).
hosts_lines() {
    [[ -f $PF_HOSTS_FILE ]] || return 0
    PF_M=" $PF_HOSTS_MARK" awk -v want="$1" '
        { m = ENVIRON["PF_M"]; n = length($0) - length(m)
          ours = n >= 0 && substr($0, n + 1) == m }
        ours == want { print }' "$PF_HOSTS_FILE"
}
hosts_ours() { hosts_lines 1; }
hosts_others() { hosts_lines 0; }

# True if certs.d folder $1 was created by this stack (its owner file names our state dir).
certs_dir_ours() {
    [[ -f $1/$PF_CERTS_D_OWNER && $(cat "$1/$PF_CERTS_D_OWNER" 2>/dev/null) == "$PF_STATE" ]]
}

# ---------------------------------------------------------------------------------------------
# Status

# One line per component: name, state, pid, address.
print_status() {
    local c pid addr
    for c in epmd "${PF_COMPONENTS[@]}"; do
        case $c in
        epmd) addr="127.0.0.1:$PF_EPMD_PORT (Erlang port mapper for RabbitMQ)" ;;
        rabbitmq) addr="amqp://127.0.0.1:$PF_AMQP_PORT node $PF_RMQ_NODE" ;;
        dockerd) addr="unix://$PF_DOCKER_SOCK" ;;
        dockerd-b) addr="unix://$PF_DOCKER_B_SOCK (a second build host)" ;;
        token-server) addr="http://127.0.0.1:$PF_TOKEN_SERVER_PORT/token" ;;
        basic-registry) addr="http://127.0.0.1:$PF_BASIC_PORT (htpasswd)" ;;
        token-registry) addr="http://127.0.0.1:$PF_TOKEN_REGISTRY_PORT (token auth)" ;;
        tls-registry) addr="https://$PF_TLS_REGISTRY ([$PF_TLS_LISTEN]:$PF_TLS_REGISTRY_PORT, htpasswd, own CA)" ;;
        esac
        status_row "$c" "$(pid_of "$c")" "$addr"
    done
    local hosts="missing" trust="missing"
    [[ $(hosts_ours) == "$(tls_hosts_line)" ]] && hosts="ok"
    certs_dir_ours "$PF_TLS_CERTS_DIR" && [[ -f $PF_TLS_CERTS_DIR/ca.crt ]] && trust="ok"
    printf '  %-15s %-8s %-12s %s\n' "" "" "" "$PF_HOSTS_FILE '$PF_TLS_LISTEN $PF_TLS_NAME': $hosts; daemon CA $PF_TLS_CERTS_DIR/ca.crt: $trust"
    # The opt-in cluster, once it has been started (its directory exists).
    [[ -d $PF_CLUSTER_DIR ]] || return 0
    local n
    for n in "${PF_CLUSTER_INDEXES[@]}"; do
        c=rabbitmq-c$n
        addr="amqp://127.0.0.1:$(cl_port "$n") node $(cl_node "$n") ($PF_CLUSTER)"
        status_row "$c" "$(cl_pid "$n")" "$addr"
    done
}

# One line of the status table: NAME, PID (empty when stopped), ADDRESS.
status_row() {
    if [[ -n $2 ]]; then
        printf '  %-15s running  pid %-8s %s\n' "$1" "$2" "$3"
    else
        printf '  %-15s stopped  %-12s %s\n' "$1" "" "$3"
    fi
}
