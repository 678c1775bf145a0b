#!/usr/bin/env bash
# The main job, end to end on this machine: start the local stack, build pushfleet, start a
# worker, create a small sample image `myapp:0722` in the stack's Docker daemon (no pulls are
# possible here: it is imported from a tarball), submit the seed 000 job exactly as the Django
# step had it ({"image":"myapp","tag":"0722","registry_id":5} into project `production`), and
# print its events up to the `succeeded` one, then the digest the registry itself reports.
#
# Usage: deploy/local/demo.sh            (idempotent: runs again fine)
# Stop everything afterwards with: deploy/local/stop.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PF_REPO_DIR"

need_cargo
bash "$PF_DEPLOY_DIR/start.sh"
# shellcheck disable=SC1091
source "$PF_STATE/stack.env"

log "building pushfleet"
cargo build --quiet --bin pushfleet
bin=$PF_REPO_DIR/target/debug/pushfleet

demo=$PF_STATE/demo
mkdir -p "$demo"
config=$demo/pushfleet.toml
cat >"$config" <<TOML
# The demo worker's configuration (written by deploy/local/demo.sh).
[amqp]
url = "$PUSHFLEET_AMQP_URL"

[worker]
id = "demo-worker"
concurrency = 2

[docker]
host = "$PUSHFLEET_DOCKER_HOST"

# Django's registry 5 is the basic-auth registry of the stack; jobs may push under production/.
[registries.harbor]
url = "http://$PUSHFLEET_BASIC_REGISTRY"
username = "$PUSHFLEET_BASIC_USER"
password_file = "$PUSHFLEET_BASIC_PASSWORD_FILE"
aliases = ["5"]
namespaces = ["production"]

TOML
"$bin" check-config -c "$config" >"$demo/check-config.txt"
log "configuration OK ($config)"

docker_cli=(docker -H "$PUSHFLEET_DOCKER_HOST")
if ! "${docker_cli[@]}" image inspect myapp:0722 >/dev/null 2>&1; then
    log "creating the sample image myapp:0722 from a tarball"
    rootfs=$demo/rootfs
    mkdir -p "$rootfs"
    printf 'pushfleet demo image, made %s\n' "$(date -u +%FT%TZ)" >"$rootfs/hello.txt"
    tar -C "$rootfs" -cf "$demo/myapp.tar" .
    "${docker_cli[@]}" import "$demo/myapp.tar" myapp:0722 >/dev/null
fi

pidfile=$PF_PIDS/demo-worker.pid
if [[ -z $(pid_of demo-worker) ]]; then
    log "starting a worker (log: $PF_LOGS/demo-worker.log)"
    launch "$PF_LOGS/demo-worker.log" "$bin" worker -c "$config" >"$pidfile"
fi

log "submitting the seed 000 job: image myapp, tag 0722, registry_id 5, project production"
"$bin" submit -c "$config" \
    --django '{"tag":"0722","image":"myapp","project_id":5,"registry_id":5,"docker_config":{}}' \
    --project production --metadata '{"pipeline_run":812,"step":129}' \
    --wait --wait-timeout-s 120

password=$(cat "$PUSHFLEET_BASIC_PASSWORD_FILE")
digest=$(curl -fsS -I -u "$PUSHFLEET_BASIC_USER:$password" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$PUSHFLEET_BASIC_REGISTRY/v2/production/myapp/manifests/0722" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
cat <<TXT

The registry itself says $PUSHFLEET_BASIC_REGISTRY/production/myapp:0722 is $digest
(compare with "digest" in the succeeded event above).

The worker keeps running (pid $(cat "$pidfile"), log $PF_LOGS/demo-worker.log). Try:
  $bin submit -c $config --source myapp --registry 5 --repository production/myapp --tag 0722 --wait
    (no tag: Docker reads myapp as myapp:latest -> source_image_missing, hint names 0722)
  $bin submit -c $config --source myapp:0722 --registry 5 --repository myapp --dry-run
Stop everything: bash deploy/local/stop.sh
TXT
