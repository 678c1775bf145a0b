"""A fleet that requires signed jobs accepts the client's signatures and refuses the rest."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

from pushfleet import ErrorCode, JobState, PushJob


@pytest.fixture(scope="module")
def key_file(workdir: Path) -> Path:
    path = workdir / "signing.key"
    # As `openssl rand -hex 32 > FILE` writes it: 64 characters and a newline.
    path.write_text(os.urandom(32).hex() + "\n")
    return path


@pytest.fixture(scope="module")
def signing_fleet(
    env: dict[str, str], amqp_url: str, workdir: Path, key_file: Path
) -> Iterator[support.Fleet]:
    prefix = support.unique("pytest-signed")
    config = support.worker_config(
        env, prefix, support.base_registries(env), signing_key_file=key_file
    )
    worker = support.WorkerProcess.start(workdir, prefix, config)
    try:
        yield support.Fleet(prefix, worker, amqp_url)
    finally:
        code = worker.stop()
        support.delete_topology(amqp_url, prefix)
        assert code == 0, f"the worker exited with {code}; log: {worker.log}"


@pytest.mark.timeout(90)
def test_signed_jobs_are_accepted_and_unsigned_ones_refused(
    signing_fleet: support.Fleet,
    key_file: Path,
    images: support.Images,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    name = support.unique("pf-py-signed")
    images.make(f"{name}:1")
    signed = signing_fleet.client(signing_key_file=key_file)
    event = signed.submit_and_wait(PushJob.new(f"{name}:1", "5", f"production/{name}"), 60)
    assert event.state == JobState.SUCCEEDED, event.error
    assert support.registry_digest(env, f"production/{name}", "1") == event.digest

    unsigned = signing_fleet.client()
    job = PushJob.new(f"{name}:1", "5", f"production/{name}", ["2"])
    event = unsigned.submit_and_wait(job, 60)
    assert event.state == JobState.FAILED
    assert event.error is not None
    assert event.error.code == ErrorCode.INVALID_SIGNATURE
    assert "not signed" in event.error.message

    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    wrong = signing_fleet.client(signing_key_file=other_key)
    event = wrong.submit_and_wait(PushJob.new(f"{name}:1", "5", f"production/{name}", ["3"]), 60)
    assert event.state == JobState.FAILED
    assert event.error is not None
    assert event.error.code == ErrorCode.INVALID_SIGNATURE
    assert "does not match" in event.error.message
    assert support.registry_digest(env, f"production/{name}", "2") is None
