#!/usr/bin/env bash
# Checks the deployment files (deploy/check_manifests.py): the compose file with Debian's
# docker-compose, the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate
# from PyPI) and KEDA's CRD schemas (deploy/k8s/schemas/), and both against pushfleet's rules.
#
#   deploy/check.sh                    deploy/compose.yaml and deploy/k8s/
#   deploy/check.sh compose FILE       one compose file
#   deploy/check.sh k8s DIR            the manifests of one folder (KEDA schemas in DIR/schemas/)
#
# The Python packages (deploy/requirements-check.txt) live in a virtual environment,
# ${PUSHFLEET_CHECK_VENV:-deploy/.venv}, made on first use (python3 -m venv). docker-compose
# comes from Debian (deploy/local/start.sh installs it). Exit status 1 when a check fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${PUSHFLEET_CHECK_VENV:-$here/.venv}
requirements=$here/requirements-check.txt
python=${PYTHON:-python3}

fail() {
    echo "deploy/check.sh: $*" >&2
    exit 2
}
command -v "$python" >/dev/null || fail "no $python on PATH (apt-get install python3-venv)"
command -v flock >/dev/null || fail "flock not found (apt-get install util-linux)"

# One installer at a time (tests may call this in parallel); reinstalled when the requirements
# change.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements" >&2 ||
        fail "pip install -r $requirements failed"
    echo "$want" >"$stamp"
fi
flock -u 9

check() { "$venv/bin/python" "$here/check_manifests.py" "$@"; }
if (($#)); then
    check "$@"
else
    status=0
    check compose "$here/compose.yaml" || status=1
    check k8s "$here/k8s" || status=1
    exit "$status"
fi
