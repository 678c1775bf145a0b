"""Fixtures: the stack's addresses, test images, and worker processes each on a unique
topology prefix (so these tests never meet other tests on the shared broker), torn down with
their exchanges and queues at the end."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from support import Fleet

import pushfleet


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    return support.stack_env()


@pytest.fixture(scope="session")
def amqp_url(env: dict[str, str]) -> str:
    return env["PUSHFLEET_AMQP_URL"]


@pytest.fixture(scope="session")
def images(env: dict[str, str]) -> Iterator[support.Images]:
    made = support.Images(env["PUSHFLEET_DOCKER_HOST"])
    yield made
    made.remove_all()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pushfleet")


@pytest.fixture(scope="session")
def fleet(env: dict[str, str], amqp_url: str, workdir: Path) -> Iterator[Fleet]:
    """The main fleet: one worker with the basic registry (alias ``5``, namespaces
    ``production`` and ``team-a``)."""
    prefix = support.unique("pytest")
    config = support.worker_config(env, prefix, support.base_registries(env))
    worker = support.WorkerProcess.start(workdir, prefix, config)
    try:
        yield Fleet(prefix, worker, amqp_url)
    finally:
        code = worker.stop()
        support.delete_topology(amqp_url, prefix, (f"{prefix}.events.django",))
        assert code == 0, f"the worker exited with {code}; log: {worker.log}"


@pytest.fixture
def client(fleet: Fleet) -> pushfleet.Client:
    return fleet.client(max_retries=2, retry_interval=0.1)


@pytest.fixture
def quiet_prefix(amqp_url: str) -> Iterator[pushfleet.Topology]:
    """A fleet's topology declared from Python (exactly as its workers declare it), with no
    worker: what is published stays in its queues."""
    topology = pushfleet.Topology(support.unique("pytest-quiet"))
    support.declare_topology(amqp_url, topology)
    try:
        yield topology
    finally:
        support.delete_topology(amqp_url, topology.prefix)
