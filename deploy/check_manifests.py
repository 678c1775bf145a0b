"""Checks the deployment files: the compose file with docker-compose, the Kubernetes manifests
against the Kubernetes and KEDA schemas, and both against the rules a pushfleet deployment
must keep (a worker runs as non-root, is given more time to stop than its shutdown grace, is
probed on its health endpoints, and KEDA counts the jobs it is running).

    check_manifests.py compose FILE   docker-compose FILE config, then the rules
    check_manifests.py k8s DIR        every *.yaml of DIR (not schemas/), then the rules

Run it through deploy/check.sh, which provides the Python packages (kubernetes-validate,
jsonschema, PyYAML). Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# The Kubernetes version the manifests are validated against (native sidecars need 1.29).
KUBERNETES_VERSION = "1.33"
# The worker's `worker.shutdown_grace_s` when its environment does not set it.
DEFAULT_SHUTDOWN_GRACE_S = 60
GRACE_ENV = "PUSHFLEET__WORKER__SHUTDOWN_GRACE_S"
# The worker's `worker.concurrency` when its environment does not set it.
DEFAULT_CONCURRENCY = 4
CONCURRENCY_ENV = "PUSHFLEET__WORKER__CONCURRENCY"
# The pools the worker serves (comma-separated) when its environment sets them; else the
# default pool, whose queue is `<prefix>.jobs`.
POOLS_ENV = "PUSHFLEET__WORKER__POOLS"
DEFAULT_POOL = "default"
# After the grace the worker still returns unfinished jobs and closes its connections.
STOP_MARGIN_S = 10
# KEDA's CRDs, from kedacore/keda (see schemas/README.md).
KEDA_CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml")
JOBS_QUEUE = re.compile(
    r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.jobs(?:\.(?P<pool>[A-Za-z0-9_-]+))?$"
)

Doc = dict[str, Any]


class Problems:
    """Collects problems as `<file>: <what>` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{where}: {what}")


# ---------------------------------------------------------------------------------------------
# Shared rules


def shutdown_grace(env: dict[str, str], where: str, problems: Problems) -> int:
    raw = env.get(GRACE_ENV)
    if raw is None:
        return DEFAULT_SHUTDOWN_GRACE_S
    try:
        return int(raw)
    except ValueError:
        problems.add(where, f"{GRACE_ENV}={raw!r} is not a number of seconds")
        return DEFAULT_SHUTDOWN_GRACE_S


def check_stop_time(
    stop_s: int | None, grace_s: int, where: str, problems: Problems
) -> None:
    if stop_s is None or stop_s < grace_s + STOP_MARGIN_S:
        problems.add(
            where,
            f"the time to stop ({stop_s} s) must be at least the worker's shutdown grace "
            f"({grace_s} s) + {STOP_MARGIN_S} s, or a draining worker is killed",
        )


# ---------------------------------------------------------------------------------------------
# Compose


def duration_s(value: Any) -> int | None:
    """Seconds of a compose duration ("90s", "1m30s", 90)."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    if not m or not value:
        return None
    h, mi, s = (int(x) if x else 0 for x in m.groups())
    return h * 3600 + mi * 60 + s


def volume_target(volume: Any) -> str:
    """The path in the container of a compose volume (long or short syntax)."""
    if isinstance(volume, dict):
        return str(volume.get("target", ""))
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def check_compose(file: Path, problems: Problems) -> None:
    env = dict(os.environ)
    # The file requires the docker socket's group id; any will do for the check.
    env.setdefault("DOCKER_GID", "999")
    run = subprocess.run(
        ["docker-compose", "-f", str(file), "config"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if run.returncode != 0:
        problems.add(str(file), f"docker-compose config failed: {run.stderr.strip()}")
        return
    config = yaml.safe_load(run.stdout)
    worker = (config.get("services") or {}).get("worker")
    if not isinstance(worker, dict):
        problems.add(str(file), "no service `worker`")
        return
    where = f"{file}: services.worker"
    user = str(worker.get("user", "")).split(":")[0]
    if user in ("", "0", "root"):
        problems.add(
            where,
            f"runs as root (user {worker.get('user')!r}): use the image's user 10001",
        )
    mounts_socket = any(
        volume_target(v).endswith("/docker.sock") for v in worker.get("volumes") or []
    )
    if mounts_socket and not worker.get("group_add"):
        problems.add(
            where, "mounts the Docker socket but is not given its group (group_add)"
        )
    environment = worker.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(e.split("=", 1) for e in environment if "=" in e)
    grace = shutdown_grace({k: str(v) for k, v in environment.items()}, where, problems)
    check_stop_time(
        duration_s(worker.get("stop_grace_period", "10s")), grace, where, problems
    )


# ---------------------------------------------------------------------------------------------
# Kubernetes


def strict(schema: Any) -> Any:
    """The CRD's OpenAPI schema, rejecting unknown properties (the API server prunes them
    silently, which hides typos)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schemas(schemas_dir: Path) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> schema, for every served version of KEDA's CRDs."""
    out = {}
    for name in KEDA_CRDS:
        crd = yaml.safe_load((schemas_dir / name).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = schema
    return out


def validate_schema(doc: Doc, where: str, crds: dict, problems: Problems) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crds:
        validator = jsonschema.Draft7Validator(crds[key])
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path)
            problems.add(where, f"{path}: {error.message}")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problems.add(where, f"{path}: {e.message}")
    except SchemaNotFoundError:
        problems.add(where, f"no schema for {key[0]} {key[1]}: nothing checks it")


def labels_match(selector: Doc, labels: Doc) -> bool:
    wanted = (selector or {}).get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_deployment(doc: Doc, where: str, problems: Problems) -> None:
    pod = doc["spec"]["template"]["spec"]
    workers = [c for c in pod.get("containers", []) if c.get("name") == "worker"]
    if not workers:
        problems.add(where, "no container named `worker`")
        return
    worker = workers[0]
    env = {
        e["name"]: str(e.get("value")) for e in worker.get("env", []) if "value" in e
    }
    grace = shutdown_grace(env, where, problems)
    check_stop_time(
        pod.get("terminationGracePeriodSeconds", 30), grace, where, problems
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = (worker.get(probe) or {}).get("httpGet", {}).get("path")
        if got != path:
            problems.add(where, f"worker {probe} must GET {path} (has {got!r})")
    security = worker.get("securityContext") or {}
    if security.get("runAsNonRoot") is not True or security.get("runAsUser") in (
        None,
        0,
    ):
        problems.add(
            where, "the worker container must set runAsNonRoot and a non-root runAsUser"
        )
    resources = worker.get("resources") or {}
    if not resources.get("requests") or not (resources.get("limits") or {}).get(
        "memory"
    ):
        problems.add(
            where, "the worker container needs resource requests and a memory limit"
        )


def worker_env(deployment: Doc) -> dict[str, str]:
    """The literal environment values of a Deployment's `worker` container."""
    for container in deployment["spec"]["template"]["spec"].get("containers", []):
        if container.get("name") == "worker":
            return {
                e["name"]: str(e["value"])
                for e in container.get("env", [])
                if "value" in e
            }
    return {}


def check_scaled_object(
    doc: Doc, where: str, deployments: dict[str, Doc], problems: Problems
) -> None:
    target = doc["spec"]["scaleTargetRef"]["name"]
    concurrency = DEFAULT_CONCURRENCY
    pools: list[str] | None = None
    if target not in deployments:
        problems.add(where, f"scales {target!r}, which is no Deployment here")
    else:
        env = worker_env(deployments[target])
        raw = env.get(CONCURRENCY_ENV, str(DEFAULT_CONCURRENCY))
        concurrency = int(raw) if raw.isdigit() else DEFAULT_CONCURRENCY
        pools = [
            p.strip() for p in env.get(POOLS_ENV, DEFAULT_POOL).split(",") if p.strip()
        ]
    for trigger in doc["spec"].get("triggers", []):
        if trigger.get("type") != "rabbitmq":
            continue
        meta = trigger.get("metadata") or {}
        if meta.get("protocol") != "http" or meta.get("mode") != "QueueLength":
            problems.add(
                where,
                "the rabbitmq trigger must use protocol: http and mode: QueueLength "
                f"(has {meta.get('protocol')!r}, {meta.get('mode')!r}): in AMQP mode running, "
                "unacknowledged jobs do not count and a scale-down can strand a push",
            )
        if str(meta.get("excludeUnacknowledged", "false")).lower() == "true":
            problems.add(where, "excludeUnacknowledged would not count running jobs")
        queue = JOBS_QUEUE.match(str(meta.get("queueName", "")))
        if not queue:
            problems.add(where, f"queueName {meta.get('queueName')!r} is no jobs queue")
        elif pools is not None and (queue.group("pool") or DEFAULT_POOL) not in pools:
            # Scaling on another pool's queue adds workers that never take those jobs.
            problems.add(
                where,
                f"queueName {meta.get('queueName')!r} is the queue of pool "
                f"{queue.group('pool') or DEFAULT_POOL!r}, which {target!r} does not serve "
                f"(its pools: {', '.join(pools)})",
            )
        # Jobs per worker above the concurrency would let KEDA ask for fewer workers than are
        # busy (each holds `concurrency` unacknowledged jobs).
        try:
            value = float(meta.get("value", "nan"))
        except ValueError:
            value = float("nan")
        if not 0 < value <= concurrency:
            problems.add(
                where,
                f"value {meta.get('value')!r} must be a number of jobs per worker from 1 to the "
                f"workers' concurrency ({concurrency}), or busy workers are scaled away",
            )


def check_k8s(directory: Path, problems: Problems) -> None:
    crds = crd_schemas(directory / "schemas")
    docs: list[tuple[str, Doc]] = []
    files = sorted(directory.glob("*.yaml"))
    if not files:
        problems.add(str(directory), "no manifests")
    for file in files:
        for i, doc in enumerate(yaml.safe_load_all(file.read_text())):
            if doc is None:
                continue
            name = (doc.get("metadata") or {}).get("name", f"#{i}")
            where = f"{file.name}: {doc.get('kind')}/{name}"
            validate_schema(copy.deepcopy(doc), where, crds, problems)
            docs.append((where, doc))
    by_kind: dict[str, list[tuple[str, Doc]]] = {}
    for where, doc in docs:
        by_kind.setdefault(doc.get("kind", ""), []).append((where, doc))
    try:
        deployments = {
            d["metadata"]["name"]: d for _, d in by_kind.get("Deployment", [])
        }
        for where, doc in by_kind.get("Deployment", []):
            check_deployment(doc, where, problems)
            pod_labels = doc["spec"]["template"]["metadata"].get("labels", {})
            if not any(
                labels_match(p["spec"].get("selector"), pod_labels)
                for _, p in by_kind.get("PodDisruptionBudget", [])
            ):
                problems.add(where, "no PodDisruptionBudget selects its pods")
            if not any(
                s["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]
                for _, s in by_kind.get("ScaledObject", [])
            ):
                problems.add(where, "no ScaledObject scales it")
        for where, doc in by_kind.get("ScaledObject", []):
            check_scaled_object(doc, where, deployments, problems)
    except (KeyError, TypeError) as e:
        # A manifest too broken for the rules; the schema problems above say why.
        problems.add(str(directory), f"rules not checked: missing {e}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("compose", "k8s"):
        print(__doc__, file=sys.stderr)
        return 2
    problems = Problems()
    target = Path(argv[2])
    if argv[1] == "compose":
        check_compose(target, problems)
    else:
        check_k8s(target, problems)
    for line in problems.lines:
        print(f"PROBLEM {line}")
    if problems.lines:
        return 1
    print(f"ok: {target} ({argv[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
