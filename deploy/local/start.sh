#!/usr/bin/env bash
# Starts the local pushfleet stack on loopback, from nothing, everything under one state
# directory ${PUSHFLEET_STACK_DIR:-<repo>/.stack}:
#   RabbitMQ (+ its own epmd), two private dockerds (dockerd, and dockerd-b: a second build
#   host for pools), an htpasswd registry ("basic"), a token-auth
#   registry ("token") and pushfleet-token-server in front of it, and an htpasswd registry
#   over TLS ("tls": https://registry.test:5443 on [::1], certificate from our own CA).
# Then writes $STATE/stack.env (KEY=value; passwords only as file paths) for tests and workers.
#
# Usage: deploy/local/start.sh [COMPONENT...]
#   COMPONENT: rabbitmq dockerd dockerd-b token-server basic-registry token-registry
#   tls-registry (default: all of these), or rabbitmq-cluster (opt-in, never started by default: three
#   RabbitMQ nodes pushfleet-c1..c3@localhost clustered on 127.0.0.1:5681..5683; see cluster.sh)
# Idempotent: components that already run (live pid of ours) are left alone, missing ones are
# started, so after killing one by pid, running start.sh again restarts just that one.
# tls-registry also adds `::1 registry.test # pushfleet-stack <state dir>` to /etc/hosts and
# the CA as /etc/docker/certs.d/registry.test:<port>/ca.crt (stop.sh removes both).
#
# Ports (env vars; the first choice is kept in $STATE/settings.env):
#   PUSHFLEET_AMQP_PORT=5672 PUSHFLEET_EPMD_PORT=4370 PUSHFLEET_BASIC_PORT=5001
#   PUSHFLEET_TOKEN_REGISTRY_PORT=5002 PUSHFLEET_TOKEN_SERVER_PORT=5003
#   PUSHFLEET_TLS_REGISTRY_PORT=5443 (on ::1) PUSHFLEET_CLUSTER_AMQP_PORTS=5681,5682,5683
# Other knobs: PUSHFLEET_TOKEN_SERVER_BIN (use this binary instead of building it),
#   PUSHFLEET_STARTUP_TIMEOUT (seconds per component, default 90).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${PUSHFLEET_STARTUP_TIMEOUT:-90}
START_TIME=$SECONDS

# ---------------------------------------------------------------------------------------------
# Arguments and preconditions

wanted=()
for arg in "$@"; do
    case $arg in
    -h | --help)
        sed -n '2,25p' "$0"
        exit 0
        ;;
    rabbitmq | dockerd | dockerd-b | token-server | basic-registry | token-registry | tls-registry | "$PF_CLUSTER") wanted+=("$arg") ;;
    *) die "unknown component '$arg' (known: ${PF_COMPONENTS[*]} $PF_CLUSTER)" ;;
    esac
done
((${#wanted[@]})) || wanted=("${PF_COMPONENTS[@]}")
want() {
    local c
    for c in "${wanted[@]}"; do [[ $c == "$1" ]] && return 0; done
    return 1
}

[[ $(id -u) == 0 ]] || die "run as root (dockerd and apt-get need it)"
[[ $PF_STATE != *[[:space:]]* ]] || die "the state directory must not contain spaces: $PF_STATE"
# containerd puts unix sockets under the exec root; their path must stay below 108 bytes.
sock_probe="$PF_STATE/docker-exec/containerd/containerd.sock.ttrpc"
((${#sock_probe} < 100)) || die "state directory path too long for unix sockets: $PF_STATE"

# ---------------------------------------------------------------------------------------------
# Debian packages (installed only if missing; services they ship are not started)

ensure_packages() {
    local -A need=(
        [rabbitmq-server]=/usr/lib/rabbitmq/bin/rabbitmq-server
        [docker.io]=/usr/sbin/dockerd
        [docker-registry]=/usr/bin/docker-registry
        [apache2-utils]=/usr/bin/htpasswd
        [openssl]=/usr/bin/openssl
        [curl]=/usr/bin/curl
        # For the metrics tests: a real Prometheus scrapes a worker; promtool checks the rules.
        [prometheus]=/usr/bin/prometheus
        # For deploy/check.sh: the compose file's check, and the virtual environment of the
        # Kubernetes manifests' validator (python3-venv ships only a dependency: check python3).
        [docker-compose]=/usr/bin/docker-compose
        [python3-venv]=/usr/bin/python3
    )
    local missing=() pkg
    for pkg in "${!need[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            [[ ! -x ${need[$pkg]} ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    log "installing Debian packages: ${missing[*]}"
    # Keep the packages' own services (system rabbitmq on 5672, system dockerd, registry on
    # 5000) from starting during installation: invoke-rc.d and deb-systemd-invoke honour
    # policy-rc.d. It is removed again right after (only if we created it).
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from pushfleet deploy/local/start.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    {
        apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    } >"$PF_LOGS/apt.log" 2>&1 || rc=$?
    [[ -n $created_policy ]] && rm -f "$policy"
    if ((rc != 0)); then
        tail -n 30 "$PF_LOGS/apt.log" >&2
        die "apt-get failed (full log: $PF_LOGS/apt.log)"
    fi
}

# ---------------------------------------------------------------------------------------------
# State directory, secrets, configs

# Writes stdin to $1 (mode $2) only if the content changed.
write_file() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$path"
    fi
}

# Creates secret file $1 with the output of "${@:2}" if it does not exist yet.
ensure_secret() {
    local path=$1
    shift
    [[ -s $path ]] && return 0
    local value
    value=$("$@")
    (umask 077 && printf '%s' "$value" >"$path.tmp")
    mv -f "$path.tmp" "$path"
}

random_password() { openssl rand -hex 16; }
# A password whose JSON, base64-encoded, contains '+' and '/': a run of six '?' (0x3F) and a run
# of six '>' (0x3E) each hold an aligned 3-byte group at any offset; 0x3F3F3F encodes to
# "Pz8/" and 0x3E3E3E to "Pj4+".
odd_password() { printf 'odd??????>>>>>>%s' "$(openssl rand -hex 6)"; }

init_state() {
    mkdir -p "$PF_STATE"
    chmod 700 "$PF_STATE"
    touch "$PF_STATE/.pushfleet-stack" # stop.sh --purge only removes a directory carrying this
    mkdir -p "$PF_CONFIG" "$PF_LOGS" "$PF_PIDS" "$PF_RMQ_DIR/home" "$PF_STATE/docker" \
        "$PF_STATE/docker-exec" "$PF_STATE/registry-basic" "$PF_STATE/registry-token" \
        "$PF_STATE/registry-tls"
    (umask 077 && mkdir -p "$PF_SECRETS")
    chmod 700 "$PF_SECRETS" "$PF_CONFIG"
}

init_secrets() {
    ensure_secret "$PF_SECRETS/basic-$PF_BASIC_USER.password" random_password
    ensure_secret "$PF_SECRETS/basic-$PF_ODD_USER.password" odd_password
    ensure_secret "$PF_SECRETS/token-pusher.password" random_password
    ensure_secret "$PF_SECRETS/token-reader.password" random_password
    ensure_secret "$PF_SECRETS/token-admin.password" random_password
    ensure_secret "$PF_SECRETS/registry-basic.http-secret" random_password
    ensure_secret "$PF_SECRETS/registry-token.http-secret" random_password
    ensure_secret "$PF_SECRETS/registry-tls.http-secret" random_password
    # Signs refresh tokens (`docker login` stores one as identitytoken): a fixed secret keeps
    # them valid across token-server restarts.
    ensure_secret "$PF_SECRETS/token-refresh.secret" random_password

    # htpasswd (bcrypt) of the basic registry, rebuilt when a password file is newer.
    local htpasswd=$PF_SECRETS/registry-basic.htpasswd
    if [[ ! -s $htpasswd || $PF_SECRETS/basic-$PF_BASIC_USER.password -nt $htpasswd ||
        $PF_SECRETS/basic-$PF_ODD_USER.password -nt $htpasswd ]]; then
        {
            htpasswd -Bbn "$PF_BASIC_USER" "$(cat "$PF_SECRETS/basic-$PF_BASIC_USER.password")"
            htpasswd -Bbn "$PF_ODD_USER" "$(cat "$PF_SECRETS/basic-$PF_ODD_USER.password")"
        } | grep -v '^$' | write_file "$htpasswd" 600
    fi

    # Token signing key and self-signed certificate (the registry's rootcertbundle).
    if [[ ! -s $PF_TOKEN_KEY || ! -s $PF_TOKEN_CERT ]]; then
        (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -subj "/CN=pushfleet local token signer" \
            -keyout "$PF_TOKEN_KEY.tmp" -out "$PF_TOKEN_CERT.tmp" >"$PF_LOGS/openssl.log" 2>&1) ||
            die "openssl failed, see $PF_LOGS/openssl.log"
        mv -f "$PF_TOKEN_KEY.tmp" "$PF_TOKEN_KEY"
        mv -f "$PF_TOKEN_CERT.tmp" "$PF_TOKEN_CERT"
    fi

    init_tls_certs
}

# openssl with its output in the log; dies on failure.
run_openssl() {
    (umask 077 && openssl "$@" >>"$PF_LOGS/openssl.log" 2>&1) ||
        die "openssl $1 failed, see $PF_LOGS/openssl.log"
}

# A self-signed CA certificate $2 (and key $1, or none with /dev/null), subject CN $3.
make_ca() {
    run_openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
        -subj "/CN=$3" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$1" -out "$2"
    chmod 644 "$2" # a CA certificate is public; the directory stays 0700
}

# The TLS registry's CA (made once), its server certificate (remade when missing, older than
# the CA or expiring within a day) for DNS:registry.test and IP:::1, and an unrelated CA for
# negative tests.
init_tls_certs() {
    if [[ ! -s $PF_TLS_CA_KEY || ! -s $PF_TLS_CA_CERT ]]; then
        log "creating the TLS registry's CA ($PF_TLS_CA_CERT)"
        make_ca "$PF_TLS_CA_KEY.tmp" "$PF_TLS_CA_CERT.tmp" "pushfleet local test CA"
        mv -f "$PF_TLS_CA_KEY.tmp" "$PF_TLS_CA_KEY"
        mv -f "$PF_TLS_CA_CERT.tmp" "$PF_TLS_CA_CERT"
    fi
    if [[ ! -s $PF_TLS_WRONG_CA_CERT ]]; then
        make_ca /dev/null "$PF_TLS_WRONG_CA_CERT.tmp" "pushfleet unrelated CA (signs nothing)"
        mv -f "$PF_TLS_WRONG_CA_CERT.tmp" "$PF_TLS_WRONG_CA_CERT"
    fi
    if [[ ! -s $PF_TLS_SERVER_KEY || ! -s $PF_TLS_SERVER_CERT ||
        $PF_TLS_CA_CERT -nt $PF_TLS_SERVER_CERT ]] ||
        ! openssl x509 -checkend 86400 -noout -in "$PF_TLS_SERVER_CERT" >/dev/null 2>&1; then
        log "creating the TLS registry's certificate for $PF_TLS_NAME and $PF_TLS_LISTEN"
        local csr=$PF_SECRETS/tls-registry.csr
        run_openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=$PF_TLS_NAME" -keyout "$PF_TLS_SERVER_KEY.tmp" -out "$csr"
        run_openssl x509 -req -in "$csr" -CA "$PF_TLS_CA_CERT" -CAkey "$PF_TLS_CA_KEY" \
            -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
            -extfile <(printf '%s\n' \
                "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" \
                "extendedKeyUsage=serverAuth" \
                "subjectAltName=DNS:$PF_TLS_NAME,IP:$PF_TLS_LISTEN" \
                "subjectKeyIdentifier=hash" \
                "authorityKeyIdentifier=keyid") \
            -out "$PF_TLS_SERVER_CERT.tmp"
        rm -f "$csr"
        run_openssl verify -CAfile "$PF_TLS_CA_CERT" -verify_hostname "$PF_TLS_NAME" \
            -verify_ip "$PF_TLS_LISTEN" "$PF_TLS_SERVER_CERT.tmp"
        mv -f "$PF_TLS_SERVER_KEY.tmp" "$PF_TLS_SERVER_KEY"
        mv -f "$PF_TLS_SERVER_CERT.tmp" "$PF_TLS_SERVER_CERT"
        [[ -z $(pid_of tls-registry) ]] ||
            log "the running TLS registry still serves its old certificate: deploy/local/restart-component.sh tls-registry"
    fi
}

# JSON string literal of the content of file $1 (passwords are hex or [?>a-f0-9]; escape
# anyway).
json_string_of_file() {
    local s
    s=$(cat "$1")
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

write_configs() {
    # --- token server users: pusher may push in team-a/ and pull everywhere, reader pulls,
    # admin may do everything (push, pull, delete, `*`, and the catalog).
    write_file "$PF_CONFIG/token-users.json" 600 <<EOF
{
  "users": [
    {"name": "pusher", "password": $(json_string_of_file "$PF_SECRETS/token-pusher.password"),
     "grants": [{"name": "$PF_PUSHER_NAMESPACE/*", "actions": ["pull", "push"]},
                {"name": "*", "actions": ["pull"]}]},
    {"name": "reader", "password": $(json_string_of_file "$PF_SECRETS/token-reader.password"),
     "grants": [{"name": "*", "actions": ["pull"]}]},
    {"name": "admin", "password": $(json_string_of_file "$PF_SECRETS/token-admin.password"),
     "grants": [{"name": "*", "actions": ["*"]},
                {"type": "registry", "name": "catalog", "actions": ["*"]}]}
  ]
}
EOF

    write_registry_config basic "127.0.0.1:$PF_BASIC_PORT" <<EOF
auth:
  htpasswd:
    realm: pushfleet-basic-registry
    path: $PF_SECRETS/registry-basic.htpasswd
EOF
    write_registry_config token "127.0.0.1:$PF_TOKEN_REGISTRY_PORT" <<EOF
auth:
  token:
    realm: http://127.0.0.1:$PF_TOKEN_SERVER_PORT/token
    service: $PF_TOKEN_SERVICE
    issuer: $PF_TOKEN_ISSUER
    rootcertbundle: $PF_TOKEN_CERT
    autoredirect: false
EOF
    # Same users as the basic registry (same htpasswd), over TLS only.
    write_registry_config tls "[$PF_TLS_LISTEN]:$PF_TLS_REGISTRY_PORT" <<EOF
  tls:
    certificate: $PF_TLS_SERVER_CERT
    key: $PF_TLS_SERVER_KEY
auth:
  htpasswd:
    realm: pushfleet-tls-registry
    path: $PF_SECRETS/registry-basic.htpasswd
EOF

    # --- dockerd: our own (empty) daemon.json instead of /etc/docker/daemon.json.
    write_file "$PF_CONFIG/dockerd.json" 600 <<<'{}'

    # --- RabbitMQ: empty env file (instead of /etc/rabbitmq/rabbitmq-env.conf), no plugins
    # (instead of /etc/rabbitmq/enabled_plugins), a config file of our own.
    write_file "$PF_CONFIG/rabbitmq-env.conf" 600 <<<'# pushfleet: intentionally empty'
    write_file "$PF_CONFIG/rabbitmq-enabled-plugins" 600 <<<'[].'
    write_file "$PF_CONFIG/rabbitmq.conf" 600 <<EOF
# pushfleet local stack; the listener comes from RABBITMQ_NODE_IP_ADDRESS/PORT.
log.file.level = info
log.console = false
EOF
    # The opt-in cluster's nodes: the same, plus a name for the cluster. Forming it is start.sh's
    # job (nodes 2 and 3 join node 1), not peer discovery's. guest stays limited to loopback
    # connections (RabbitMQ's default), which is all there is here.
    write_file "$PF_CONFIG/rabbitmq-cluster.conf" 600 <<EOF
# pushfleet local stack, nodes of the opt-in cluster (start.sh $PF_CLUSTER); each node's
# listener comes from RABBITMQ_NODE_IP_ADDRESS/PORT.
log.file.level = info
log.console = false
cluster_name = pushfleet-cluster
EOF
}

# write_registry_config NAME HOST:PORT < rest (optional further `http:` keys, indented, then
# the `auth:` section)
write_registry_config() {
    local name=$1 addr=$2 auth
    auth=$(cat)
    write_file "$PF_CONFIG/registry-$name.yml" 600 <<EOF
# docker-registry (distribution 2.8) "$name" of the pushfleet local stack.
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry-$name
storage:
  filesystem:
    rootdirectory: $PF_STATE/registry-$name
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: "$addr"
  secret: $(cat "$PF_SECRETS/registry-$name.http-secret")
  headers:
    X-Content-Type-Options: [nosniff]
$auth
EOF
}

# ---------------------------------------------------------------------------------------------
# Components. start_* launch without waiting; wait_* wait for readiness.

STARTED=()

start_rabbitmq() {
    [[ -n $(pid_of rabbitmq) ]] && return 0
    require_free_port "$PF_AMQP_PORT" "RabbitMQ (AMQP)" PUSHFLEET_AMQP_PORT
    require_free_port "$PF_AMQP_DIST_PORT" "RabbitMQ (Erlang distribution, AMQP port + 20000)" PUSHFLEET_AMQP_PORT
    start_epmd
    rm -f "$PF_RMQ_PIDFILE"
    log "starting RabbitMQ node $PF_RMQ_NODE on 127.0.0.1:$PF_AMQP_PORT"
    (
        rmq_env
        cd "$PF_RMQ_DIR"
        env "$PF_MARK" "$PF_RABBITMQ_BIN/rabbitmq-server" -detached \
            </dev/null >>"$PF_LOGS/rabbitmq-startup.log" 2>&1
    ) || die "rabbitmq-server -detached failed (see $PF_LOGS/rabbitmq-startup.log)"
    STARTED+=(rabbitmq)
}

wait_rabbitmq() {
    # `await_startup` fails at once while the node is not yet registered, so first `wait`
    # for the pid file (it also waits for the boot), then `await_startup`.
    local started=""
    [[ " ${STARTED[*]} " == *" rabbitmq "* ]] && started=1
    if { [[ -n $started ]] && ! rmqctl wait --timeout "$TIMEOUT" "$PF_RMQ_PIDFILE" >>"$PF_LOGS/rabbitmq-startup.log" 2>&1; } ||
        ! rmqctl await_startup --timeout "$TIMEOUT" >>"$PF_LOGS/rabbitmq-startup.log" 2>&1; then
        tail -n 20 "$PF_LOGS/rabbitmq-startup.log" >&2
        tail -n 20 "$PF_LOGS/rabbitmq/$PF_RMQ_NODE.log" >&2 2>/dev/null || true
        die "RabbitMQ did not start within ${TIMEOUT}s (logs: $PF_LOGS/rabbitmq-startup.log, $PF_LOGS/rabbitmq/)"
    fi
    [[ -n $(pid_of rabbitmq) ]] || die "RabbitMQ answers but its pid file $PF_RMQ_PIDFILE does not point to our process"
}

# The cluster: its cookie (made once), the stack's epmd, then every node that does not run
# (launched together: a restarted node may wait in its boot for the others).
start_cluster() {
    mkdir -p "$PF_CLUSTER_DIR/home"
    chmod 700 "$PF_CLUSTER_DIR"
    ensure_secret "$(cl_cookie)" erlang_cookie
    chmod 400 "$(cl_cookie)" # what Erlang itself would make
    start_epmd
    local n
    for n in "${PF_CLUSTER_INDEXES[@]}"; do cl_start_node "$n"; done
    cl_wait_launched
    ((${#PF_CL_STARTED[@]} == 0)) || STARTED+=("$PF_CLUSTER(${PF_CL_STARTED[*]})")
}

# Erlang cookies are atoms: upper-case letters, as Erlang generates them.
erlang_cookie() { openssl rand -hex 16 | tr 'a-f0-9' 'A-P'; }

# Every node booted, then nodes 2 and 3 joined to node 1 unless they are members already (a
# restarted node rejoins by itself from its data dir), then all three running in one cluster.
wait_cluster() {
    local n view joined=""
    # Nothing launched now and node 1 sees all three running: nothing to wait for.
    ((${#PF_CL_STARTED[@]} == 0)) && cl_in_cluster 1 && return 0
    cl_parallel cl_wait_booted "$TIMEOUT" || die "the cluster did not boot"
    for n in "${PF_CLUSTER_INDEXES[@]:1}"; do
        view=$(cl_view "$n") || die "cluster node $n does not answer (log: $PF_LOGS/rabbitmq-c$n/)"
        if [[ " ${view%|*} " != *" 1 "* ]]; then
            cl_join "$n"
            joined=1
        fi
    done
    cl_parallel cl_wait_clustered "$TIMEOUT" any || die "the cluster did not form"
    # A fresh 3.10 node enables every feature flag (quorum_queue among them); make sure the
    # joined cluster has them too.
    if [[ -n $joined ]]; then
        clctl 1 enable_feature_flag all >>"$PF_CLUSTER_LOG" 2>&1 ||
            die "could not enable the feature flags of the cluster (log: $PF_CLUSTER_LOG)"
    fi
}

# Starts the daemon component $1 (dockerd or dockerd-b); each has its own socket, data root,
# exec root (so its own containerd) and pid file.
start_dockerd() {
    local name=$1 sock data exec_root
    sock=$(dockerd_sock "$name")
    data=$(dockerd_data "$name")
    exec_root=$(dockerd_exec "$name")
    [[ -n $(pid_of "$name") ]] && return 0
    if [[ -S $sock ]] && docker -H "unix://$sock" version >/dev/null 2>&1; then
        die "a docker daemon not started by this stack (no live pid in $PF_PIDS/$name.pid) answers on $sock"
    fi
    rm -f "$PF_PIDS/$name.pid" "$sock"
    log "starting $name on unix://$sock"
    # --exec-root keeps its runtime state and the containerd it spawns (sockets, pid) apart
    # from a system dockerd; --data-root keeps images (and containerd's root) under the state
    # dir; --config-file avoids /etc/docker/daemon.json; no bridge, iptables, ip_forward or
    # masquerading, so the host network setup is not touched. dockerd writes its own pid file.
    DOCKERD_LAUNCH_PIDS[$name]=$(launch "$PF_LOGS/$name.log" dockerd \
        --config-file="$PF_CONFIG/dockerd.json" \
        --host="unix://$sock" \
        --data-root="$data" \
        --exec-root="$exec_root" \
        --pidfile="$PF_PIDS/$name.pid" \
        --storage-driver=vfs \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false)
    STARTED+=("$name")
}
declare -A DOCKERD_LAUNCH_PIDS=()

docker_ready() { docker -H "unix://$(dockerd_sock "$1")" version >/dev/null 2>&1; }

wait_dockerd() {
    local name=$1
    if ! wait_ready "$TIMEOUT" "${DOCKERD_LAUNCH_PIDS[$name]:-}" docker_ready "$name"; then
        tail -n 20 "$PF_LOGS/$name.log" >&2
        die "$name did not answer within ${TIMEOUT}s (log: $PF_LOGS/$name.log)"
    fi
    [[ -n $(pid_of "$name") ]] || die "$name answers but $PF_PIDS/$name.pid does not point to our process"
}

token_server_bin() {
    if [[ -n ${PUSHFLEET_TOKEN_SERVER_BIN:-} ]]; then
        [[ -x $PUSHFLEET_TOKEN_SERVER_BIN ]] || die "PUSHFLEET_TOKEN_SERVER_BIN=$PUSHFLEET_TOKEN_SERVER_BIN is not executable"
        echo "$PUSHFLEET_TOKEN_SERVER_BIN"
        return
    fi
    local bin=${CARGO_TARGET_DIR:-$PF_REPO_DIR/target}/debug/pushfleet-token-server
    # Reuse a binary newer than every source file of the crate; otherwise build it.
    if [[ -x $bin && -z $(find "$PF_DEPLOY_DIR/token-server" -type f -newer "$bin" -print -quit) ]]; then
        echo "$bin"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) to build the token server, or set PUSHFLEET_TOKEN_SERVER_BIN"
    log "building pushfleet-token-server (cargo build -p pushfleet-token-server; log: $PF_LOGS/token-server-build.log)"
    if ! (cd "$PF_REPO_DIR" && cargo build -p pushfleet-token-server) >"$PF_LOGS/token-server-build.log" 2>&1; then
        tail -n 30 "$PF_LOGS/token-server-build.log" >&2
        die "cargo build -p pushfleet-token-server failed"
    fi
    [[ -x $bin ]] || die "cargo built, but $bin is missing (CARGO_TARGET_DIR elsewhere? set PUSHFLEET_TOKEN_SERVER_BIN)"
    echo "$bin"
}

start_token_server() {
    [[ -n $(pid_of token-server) ]] && return 0
    local bin pid
    bin=$(token_server_bin)
    require_free_port "$PF_TOKEN_SERVER_PORT" "the token server" PUSHFLEET_TOKEN_SERVER_PORT
    log "starting token server on 127.0.0.1:$PF_TOKEN_SERVER_PORT"
    pid=$(launch "$PF_LOGS/token-server.log" "$bin" \
        --listen "127.0.0.1:$PF_TOKEN_SERVER_PORT" \
        --issuer "$PF_TOKEN_ISSUER" --service "$PF_TOKEN_SERVICE" \
        --key "$PF_TOKEN_KEY" --cert "$PF_TOKEN_CERT" \
        --users "$PF_CONFIG/token-users.json" \
        --refresh-secret-file "$PF_SECRETS/token-refresh.secret")
    echo "$pid" >"$PF_PIDS/token-server.pid"
    STARTED+=(token-server)
}

token_server_ready() { [[ $(http_status "http://127.0.0.1:$PF_TOKEN_SERVER_PORT/healthz") == 200 ]]; }

wait_token_server() {
    if ! wait_ready "$TIMEOUT" "$(pidfile_pid token-server)" token_server_ready ||
        [[ -z $(pid_of token-server) ]]; then
        tail -n 20 "$PF_LOGS/token-server.log" >&2
        die "token server not ready (log: $PF_LOGS/token-server.log)"
    fi
}

# start_registry basic|token|tls PORT PORTVAR [HOST]
start_registry() {
    local name=$1 port=$2 var=$3 host=${4:-127.0.0.1} pid
    [[ -n $(pid_of "$name-registry") ]] && return 0
    require_free_port "$port" "the $name registry" "$var" "$host"
    [[ $host == *:* ]] && host="[$host]"
    log "starting $name registry on $host:$port"
    pid=$(launch "$PF_LOGS/registry-$name.log" docker-registry serve "$PF_CONFIG/registry-$name.yml")
    echo "$pid" >"$PF_PIDS/$name-registry.pid"
    STARTED+=("$name-registry")
}

# Every registry demands authentication: /v2/ answers 401 once it listens.
# registry_ready BASE-URL [CURL-OPTION...]
registry_ready() { [[ $(http_status "${@:2}" "$1/v2/") == 401 ]]; }

# wait_registry NAME BASE-URL [CURL-OPTION...]
wait_registry() {
    local name=$1 url=$2
    if ! wait_ready "$TIMEOUT" "$(pidfile_pid "$name-registry")" registry_ready "$url" "${@:3}" ||
        [[ -z $(pid_of "$name-registry") ]]; then
        tail -n 20 "$PF_LOGS/registry-$name.log" >&2
        # What curl itself says (e.g. a certificate problem) helps more than a bare status.
        curl --noproxy '*' -sS -o /dev/null --max-time 2 "${@:3}" "$url/v2/" 2>&1 | tail -n 1 >&2 || true
        die "$name registry not ready at $url (log: $PF_LOGS/registry-$name.log)"
    fi
}

# The TLS registry needs IPv6 loopback: on 127.0.0.1 dockerd would never check its certificate.
require_ipv6_loopback() {
    grep -qE '^0{31}1 .* lo$' /proc/net/if_inet6 2>/dev/null ||
        die "the TLS registry needs IPv6 loopback (::1 on lo; see 'ip -6 addr show lo'): dockerd treats registries on 127.0.0.0/8 as insecure and never verifies their certificate, so a TLS registry there would prove nothing. Enable IPv6 on lo (sysctl net.ipv6.conf.lo.disable_ipv6=0) or start the other components only: start.sh rabbitmq dockerd token-server basic-registry token-registry"
}

# `::1 registry.test # pushfleet-stack <state dir>` in /etc/hosts, exactly once (an outdated
# line of ours is replaced). Refuses when a line not ours maps the name elsewhere.
tls_hosts_install() {
    local line other
    line=$(tls_hosts_line)
    other=$(hosts_others | awk -v n="$PF_TLS_NAME" -v a="$PF_TLS_LISTEN" '
        { sub(/#.*/, "") }
        NF >= 2 && $1 != a { for (i = 2; i <= NF; i++) if (tolower($i) == n) { print; next } }')
    [[ -z $other ]] ||
        die "$PF_HOSTS_FILE maps $PF_TLS_NAME elsewhere in a line not written by this stack ($other): remove that line"
    [[ $(hosts_ours) == "$line" ]] && return 0
    log "adding '$PF_TLS_LISTEN $PF_TLS_NAME' to $PF_HOSTS_FILE"
    cp -p "$PF_HOSTS_FILE" "$PF_STATE/hosts.before-start"
    { hosts_others; echo "$line"; } | rewrite_in_place "$PF_HOSTS_FILE"
}

# The CA for the daemon: $PF_TLS_CERTS_DIR/ca.crt (dockerd reads certs.d on every push; the
# name must end in .crt), with an owner file naming the state dir so stop.sh removes only ours.
tls_certs_d_install() {
    local dir=$PF_TLS_CERTS_DIR
    if [[ -d $dir ]] && ! certs_dir_ours "$dir"; then
        [[ -f $dir/$PF_CERTS_D_OWNER ]] ||
            die "$dir exists and was not created by this stack: remove it, or choose another port with PUSHFLEET_TLS_REGISTRY_PORT=<port>"
        # Another stack's, left behind: its registry does not run (the port was free).
        log "taking over $dir from the stack in $(cat "$dir/$PF_CERTS_D_OWNER")"
    fi
    if ! certs_dir_ours "$dir" || ! cmp -s "$PF_TLS_CA_CERT" "$dir/ca.crt"; then
        log "installing the TLS registry's CA for the daemon: $dir/ca.crt"
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    printf '%s\n' "$PF_STATE" | write_file "$dir/$PF_CERTS_D_OWNER" 644
    write_file "$dir/ca.crt" 644 <"$PF_TLS_CA_CERT"
}

# The TLS registry plus its name and trust (ensured again even when it already runs).
start_tls_registry() {
    require_ipv6_loopback
    if [[ -z $(pid_of tls-registry) ]]; then
        require_free_port "$PF_TLS_REGISTRY_PORT" "the TLS registry" PUSHFLEET_TLS_REGISTRY_PORT "$PF_TLS_LISTEN"
    fi
    tls_hosts_install
    tls_certs_d_install
    start_registry tls "$PF_TLS_REGISTRY_PORT" PUSHFLEET_TLS_REGISTRY_PORT "$PF_TLS_LISTEN"
}

# ---------------------------------------------------------------------------------------------
# stack.env

# The cluster's keys (PUSHFLEET_CLUSTER_*) are there only while one of its nodes runs, whatever
# components this run started.
write_stack_env() {
    local s=$PF_SECRETS
    {
        cat <<EOF
# Written by deploy/local/start.sh. Passwords are never here, only the paths of 0600 files.
PUSHFLEET_STACK_DIR=$PF_STATE
PUSHFLEET_STACK_ENV=$PF_STATE/stack.env
PUSHFLEET_DEPLOY_DIR=$PF_DEPLOY_DIR
PUSHFLEET_LOGS_DIR=$PF_LOGS
PUSHFLEET_PIDS_DIR=$PF_PIDS
PUSHFLEET_AMQP_URL=amqp://guest:guest@127.0.0.1:$PF_AMQP_PORT/%2f
PUSHFLEET_AMQP_PORT=$PF_AMQP_PORT
PUSHFLEET_RABBITMQ_NODENAME=$PF_RMQ_NODE
PUSHFLEET_DOCKER_HOST=unix://$PF_DOCKER_SOCK
PUSHFLEET_DOCKER_B_HOST=unix://$PF_DOCKER_B_SOCK
PUSHFLEET_BASIC_REGISTRY=127.0.0.1:$PF_BASIC_PORT
PUSHFLEET_BASIC_USER=$PF_BASIC_USER
PUSHFLEET_BASIC_PASSWORD_FILE=$s/basic-$PF_BASIC_USER.password
PUSHFLEET_ODD_USER=$PF_ODD_USER
PUSHFLEET_ODD_PASSWORD_FILE=$s/basic-$PF_ODD_USER.password
PUSHFLEET_TOKEN_REGISTRY=127.0.0.1:$PF_TOKEN_REGISTRY_PORT
PUSHFLEET_TOKEN_SERVER=http://127.0.0.1:$PF_TOKEN_SERVER_PORT
PUSHFLEET_TOKEN_REALM=http://127.0.0.1:$PF_TOKEN_SERVER_PORT/token
PUSHFLEET_TOKEN_SERVICE=$PF_TOKEN_SERVICE
PUSHFLEET_TOKEN_ISSUER=$PF_TOKEN_ISSUER
PUSHFLEET_TOKEN_CERT=$PF_TOKEN_CERT
PUSHFLEET_TOKEN_PUSHER_USER=pusher
PUSHFLEET_TOKEN_PUSHER_PASSWORD_FILE=$s/token-pusher.password
PUSHFLEET_TOKEN_PUSHER_NAMESPACE=$PF_PUSHER_NAMESPACE
PUSHFLEET_TOKEN_READER_USER=reader
PUSHFLEET_TOKEN_READER_PASSWORD_FILE=$s/token-reader.password
PUSHFLEET_TOKEN_ADMIN_USER=admin
PUSHFLEET_TOKEN_ADMIN_PASSWORD_FILE=$s/token-admin.password
PUSHFLEET_TLS_REGISTRY=$PF_TLS_REGISTRY
PUSHFLEET_TLS_REGISTRY_URL=https://$PF_TLS_REGISTRY
PUSHFLEET_TLS_REGISTRY_PORT=$PF_TLS_REGISTRY_PORT
PUSHFLEET_TLS_CA_FILE=$PF_TLS_CA_CERT
PUSHFLEET_TLS_WRONG_CA_FILE=$PF_TLS_WRONG_CA_CERT
PUSHFLEET_TLS_CERTS_D=$PF_TLS_CERTS_DIR
EOF
        cl_stack_env_lines
    } | write_file "$PF_STATE/stack.env" 644
}

# A running component keeps its port: refuse to write a stack.env with another one.
check_port_changes() {
    local saved=$PF_STATE/settings.env k v comp now
    [[ -f $saved ]] || return 0
    while IFS='=' read -r k v; do
        case $k in
        PUSHFLEET_AMQP_PORT | PUSHFLEET_RABBITMQ_NODENAME) comp=rabbitmq ;;
        PUSHFLEET_EPMD_PORT) comp=epmd ;;
        PUSHFLEET_BASIC_PORT) comp=basic-registry ;;
        PUSHFLEET_TOKEN_REGISTRY_PORT) comp=token-registry ;;
        PUSHFLEET_TOKEN_SERVER_PORT) comp=token-server ;;
        PUSHFLEET_TLS_REGISTRY_PORT) comp=tls-registry ;;
        PUSHFLEET_CLUSTER_AMQP_PORTS) comp=$PF_CLUSTER ;;
        *) continue ;;
        esac
        case $k in
        PUSHFLEET_AMQP_PORT) now=$PF_AMQP_PORT ;;
        PUSHFLEET_RABBITMQ_NODENAME) now=$PF_RMQ_NODE ;;
        PUSHFLEET_EPMD_PORT) now=$PF_EPMD_PORT ;;
        PUSHFLEET_BASIC_PORT) now=$PF_BASIC_PORT ;;
        PUSHFLEET_TOKEN_REGISTRY_PORT) now=$PF_TOKEN_REGISTRY_PORT ;;
        PUSHFLEET_TOKEN_SERVER_PORT) now=$PF_TOKEN_SERVER_PORT ;;
        PUSHFLEET_TLS_REGISTRY_PORT) now=$PF_TLS_REGISTRY_PORT ;;
        PUSHFLEET_CLUSTER_AMQP_PORTS) now=$PF_CLUSTER_AMQP_PORTS ;;
        esac
        [[ $v != "$now" ]] || continue
        if [[ $comp == "$PF_CLUSTER" ]] && cl_any_running ||
            [[ $comp != "$PF_CLUSTER" && -n $(pid_of "$comp") ]]; then
            [[ $comp == epmd ]] && comp=rabbitmq
            die "$comp runs with $k=$v; stop it first (deploy/local/stop.sh $comp) to change it to $now"
        fi
    done <"$saved"
}

# ---------------------------------------------------------------------------------------------
# Main: RabbitMQ boots slowest, so it goes first and is awaited last.

init_state
ensure_packages
check_port_changes
init_secrets
write_configs
pf_save_settings

want rabbitmq && start_rabbitmq
want "$PF_CLUSTER" && start_cluster
want dockerd && start_dockerd dockerd
want dockerd-b && start_dockerd dockerd-b
want token-server && start_token_server
want basic-registry && start_registry basic "$PF_BASIC_PORT" PUSHFLEET_BASIC_PORT
want token-registry && start_registry token "$PF_TOKEN_REGISTRY_PORT" PUSHFLEET_TOKEN_REGISTRY_PORT
want tls-registry && start_tls_registry

want dockerd && wait_dockerd dockerd
want dockerd-b && wait_dockerd dockerd-b
want token-server && wait_token_server
want basic-registry && wait_registry basic "http://127.0.0.1:$PF_BASIC_PORT"
want token-registry && wait_registry token "http://127.0.0.1:$PF_TOKEN_REGISTRY_PORT"
# Through the real name, /etc/hosts and the CA: ready means a client with the CA can use it.
want tls-registry && wait_registry tls "https://$PF_TLS_REGISTRY" --cacert "$PF_TLS_CA_CERT"
want rabbitmq && wait_rabbitmq
want "$PF_CLUSTER" && wait_cluster

write_stack_env

if ((${#STARTED[@]})); then
    log "started: ${STARTED[*]} in $((SECONDS - START_TIME))s"
else
    log "everything was already running"
fi
echo "pushfleet local stack ($PF_STATE):"
print_status
echo "env file: $PF_STATE/stack.env   logs: $PF_LOGS   stop: $PF_DEPLOY_DIR/stop.sh [--purge]"
