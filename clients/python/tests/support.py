"""Helpers for tests against the real local stack (``deploy/local/start.sh``): its addresses,
worker processes, test images in its Docker daemon, manifests in its registry, topology
clean-up, and a TCP proxy that drops connections on cue.

Mirrors ``tests/support/fleet.rs`` and ``tests/support/process.rs`` of the Rust suite.
"""

import base64
import contextlib
import http.client
import io
import json
import os
import select
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

import pushfleet
from pushfleet.topology import Topology

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Fleet:
    """A worker process on its own topology prefix."""

    prefix: str
    worker: "WorkerProcess"
    url: str

    def client(self, **kwargs: Any) -> pushfleet.Client:
        return pushfleet.Client(self.url, topology_prefix=self.prefix, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stack_env() -> dict[str, str]:
    """``.stack/stack.env`` (or ``$PUSHFLEET_STACK_ENV``), with the process environment's
    ``PUSHFLEET_*`` values on top."""
    path = Path(os.environ.get("PUSHFLEET_STACK_ENV", REPO_ROOT / ".stack" / "stack.env"))
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: start the local stack first (bash deploy/local/start.sh)"
        )
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    for key, value in os.environ.items():
        if key.startswith("PUSHFLEET_") and not key.startswith("PUSHFLEET__"):
            env[key] = value
    return env


def worker_binary() -> Path:
    path = Path(os.environ.get("PUSHFLEET_BIN", REPO_ROOT / "target" / "debug" / "pushfleet"))
    if not path.is_file():
        raise RuntimeError(
            f"no worker binary at {path}: build it (cargo build -p pushfleet-worker --bin "
            "pushfleet) or point PUSHFLEET_BIN at one"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def base_registries(env: dict[str, str]) -> str:
    """The catalogue of the Rust suite's ``base_registries``, basic registry first."""
    return f"""
[registries.basic]
url = "http://{env["PUSHFLEET_BASIC_REGISTRY"]}"
username = "{env["PUSHFLEET_BASIC_USER"]}"
password_file = "{env["PUSHFLEET_BASIC_PASSWORD_FILE"]}"
aliases = ["5"]
namespaces = ["production", "team-a"]
"""


def worker_config(
    env: dict[str, str],
    prefix: str,
    registries: str,
    *,
    concurrency: int = 4,
    signing_key_file: Path | None = None,
) -> str:
    signing = f'signing_key_file = "{signing_key_file}"\n' if signing_key_file else ""
    return f"""
[amqp]
url = "{env["PUSHFLEET_AMQP_URL"]}"
topology_prefix = "{prefix}"
{signing}
[worker]
id = "{prefix}-worker"
concurrency = {concurrency}
job_timeout_s = 120
shutdown_grace_s = 10

[docker]
host = "{env["PUSHFLEET_DOCKER_HOST"]}"
{registries}
"""


@dataclass
class WorkerProcess:
    """One ``pushfleet worker`` process with its own config, log and health port."""

    prefix: str
    config: Path
    log: Path
    health_port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, directory: Path, prefix: str, config_text: str) -> "WorkerProcess":
        config = directory / f"{prefix}.toml"
        config.write_text(config_text)
        log = directory / f"{prefix}.log"
        port = free_port()
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PUSHFLEET__")
            and k not in ("PUSHFLEET_CONFIG", "PUSHFLEET_HEALTH_LISTEN")
        }
        environ.update({"RUST_LOG": "info", "NO_COLOR": "1"})
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    str(worker_binary()),
                    "worker",
                    "-c",
                    str(config),
                    "--health-listen",
                    f"127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        worker = cls(prefix, config, log, port, process)
        worker.wait_ready(60)
        return worker

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/readyz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, limit: float) -> None:
        """Polls ``/readyz`` (as the Rust suite does) until the worker consumes."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.prefix} exited with {self.process.returncode}:\n"
                    + self.log.read_text()[-4000:]
                )
            if self.is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"worker {self.prefix} not ready within {limit} s:\n{self.log.read_text()[-4000:]}"
        )

    def stop(self) -> int:
        """SIGTERM (the worker drains and exits 0), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def topology_names(prefix: str) -> tuple[list[str], list[str]]:
    """Exchanges and queues of ``prefix`` as ``pushfleet topology`` prints them, plus every
    delay queue a worker may have declared."""
    out = subprocess.run(
        [str(worker_binary()), "topology", "--prefix", prefix],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    data = json.loads(out)
    exchanges = [e["name"] for e in data["exchanges"]]
    queues = [q["name"] for q in data["queues"]]
    queues += [f"{prefix}.retry.{k}" for k in range(18)]
    return exchanges, queues


def delete_topology(url: str, prefix: str, extra_queues: tuple[str, ...] = ()) -> None:
    exchanges, queues = topology_names(prefix)
    with Connection(url, connect_timeout=10) as conn:
        for name in [*queues, *extra_queues]:
            conn.default_channel.queue_delete(name)
        for name in exchanges:
            conn.default_channel.exchange_delete(name)


def declare_topology(url: str, topology: Topology, pools: tuple[str, ...] = ()) -> None:
    """Declares a fleet's exchanges and queues exactly as its workers do (the arguments of
    :class:`pushfleet.topology.Topology`, which a test checks against ``pushfleet topology``),
    with the queues of ``pools`` as workers serving them declare them."""
    with Connection(url, connect_timeout=10) as conn:
        channel = conn.default_channel
        exchanges = {
            e.name: Exchange(e.name, type=e.kind, durable=True) for e in topology.exchanges()
        }
        for exchange in exchanges.values():
            exchange(channel).declare()
        for spec in [*topology.queues(), *(q for p in pools for q in topology.pool_queues(p))]:
            Queue(
                spec.name,
                exchange=exchanges[spec.bound_to],
                routing_key=spec.binding_key,
                durable=True,
                queue_arguments=dict(spec.arguments),
            )(channel).declare()


def queue_depth(url: str, name: str) -> int:
    with Connection(url, connect_timeout=10) as conn:
        _, count, _ = conn.default_channel.queue_declare(name, passive=True)
        return int(count)


@dataclass
class Images:
    """Test images in the stack's Docker daemon, removed at the end with every tag the
    workers gave them (by image id)."""

    docker_host: str
    created: list[str] = field(default_factory=list)

    def _docker(self, *args: str, stdin: bytes | None = None) -> bytes:
        result = subprocess.run(
            ["docker", *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, "DOCKER_HOST": self.docker_host},
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout

    def make(self, reference: str) -> str:
        """``docker import`` of a one-file tarball with unique content as ``reference``."""
        content = unique("content").encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("pushfleet-test.txt")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        image_id = self._docker("import", "-", reference, stdin=buffer.getvalue()).decode().strip()
        self.created.append(image_id)
        return image_id

    def remove_all(self) -> None:
        for image_id in self.created:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._docker("rmi", "--force", image_id)


def registry_digest(env: dict[str, str], repository: str, tag: str) -> str | None:
    """The manifest digest of ``repository:tag`` in the basic registry (HEAD with basic auth),
    or None when the tag is absent."""
    password = Path(env["PUSHFLEET_BASIC_PASSWORD_FILE"]).read_text().rstrip("\r\n")
    auth = base64.b64encode(f"{env['PUSHFLEET_BASIC_USER']}:{password}".encode()).decode()
    host, _, port = env["PUSHFLEET_BASIC_REGISTRY"].partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=10)
    try:
        conn.request(
            "HEAD",
            f"/v2/{repository}/manifests/{tag}",
            headers={
                "Authorization": f"Basic {auth}",
                "Accept": ", ".join(
                    [
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.oci.image.index.v1+json",
                    ]
                ),
            },
        )
        response = conn.getresponse()
        response.read()
        if response.status == 404:
            return None
        if response.status != 200:
            raise RuntimeError(f"HEAD manifest answered {response.status}")
        return response.getheader("Docker-Content-Digest")
    finally:
        conn.close()


class DroppingProxy:
    """A TCP proxy to the broker that cuts both sides of a connection when the client sends
    ``marker`` (e.g. a job id, which a publish carries), ``times`` times; after that, or
    without a marker, it forwards everything.

    ``forward_first``: the cut comes after forwarding the marked bytes (the broker got the
    publish, the client never gets its confirm), or before (the broker never got it).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.marker: bytes | None = None
        self.times = 0
        self.forward_first = False
        self.drops = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def drop_on(self, marker: bytes, *, times: int, forward_first: bool) -> None:
        with self._lock:
            self.marker, self.times, self.forward_first = marker, times, forward_first

    def _should_drop(self, window: bytes) -> bool:
        with self._lock:
            if self.marker is None or self.times <= 0 or self.marker not in window:
                return False
            self.times -= 1
            self.drops += 1
            return True

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        tail = b""
        with client, upstream:
            sockets = [client, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                if self._closing:
                    return
                for s in readable:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if s is client:
                        window = tail + data
                        tail = window[-256:]
                        if self._should_drop(window):
                            if self.forward_first:
                                upstream.sendall(data)
                            return
                        upstream.sendall(data)
                    else:
                        client.sendall(data)

    def close(self) -> None:
        self._closing = True
        self._server.close()


@contextlib.contextmanager
def silent_tcp_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers:
    a registry that hangs every request."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@contextlib.contextmanager
def closing_tcp_server() -> Iterator[int]:
    """A port that accepts connections and closes them at once (a broker that drops every
    connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()
