"""Cancelling a running and a queued job, and the control message next to ``pushfleet cancel``'s.

The fleet here has one worker with concurrency 1 and a catalogue registry that accepts TCP
connections and never answers, so a job for it stays running (in its preflight) until it is
cancelled, and the next job waits in the queue behind it.
"""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from kombu.connection import Connection

import pushfleet
from pushfleet import ErrorCode, JobState, PushJob


@pytest.fixture(scope="module")
def hanging_fleet(
    env: dict[str, str], amqp_url: str, workdir: Path, images: support.Images
) -> Iterator[support.Fleet]:
    with support.silent_tcp_server() as port:
        prefix = support.unique("pytest-cancel")
        # Declared from the Python mirror first: the worker then declares the same again,
        # which the broker refuses if any argument differs.
        support.declare_topology(amqp_url, pushfleet.Topology(prefix))
        registries = f"""
[registries.hanging]
url = "http://127.0.0.1:{port}"
anonymous = true
aliases = ["9"]
namespaces = ["production"]
"""
        config = support.worker_config(env, prefix, registries, concurrency=1)
        worker = support.WorkerProcess.start(workdir, prefix, config)
        try:
            yield support.Fleet(prefix, worker, amqp_url)
        finally:
            code = worker.stop()
            support.delete_topology(amqp_url, prefix)
            assert code == 0, f"the worker exited with {code}; log: {worker.log}"


@pytest.mark.timeout(60)
def test_a_running_and_a_queued_job_are_cancelled(
    hanging_fleet: support.Fleet, images: support.Images
) -> None:
    client = hanging_fleet.client()
    name = support.unique("pf-py-cancel")
    images.make(f"{name}:1")
    running = PushJob.new(f"{name}:1", "9", f"production/{name}", ["1"])
    queued = PushJob.new(f"{name}:1", "9", f"production/{name}", ["2"])
    with client.subscribe() as subscription:
        client.publish(running)
        accepted = next(subscription.events(job_id=running.job_id, timeout=30))
        assert accepted.state == JobState.ACCEPTED
        # The worker's only slot is taken: `queued` waits in the queue.
        client.publish(queued)
        # Control requests are read in order: once `running` ends as cancelled, the worker
        # has also read the request for `queued`, published before.
        client.cancel(queued.job_id)
        client.cancel(running.job_id)

        first = subscription.wait(running.job_id, 30)
        assert first.state == JobState.FAILED
        assert first.error is not None
        assert first.error.code == ErrorCode.CANCELLED
        second = subscription.wait(queued.job_id, 30)
        assert second.state == JobState.FAILED
        assert second.error is not None
        assert second.error.code == ErrorCode.CANCELLED
        assert second.error.hint == ErrorCode.CANCELLED.default_hint


def control_messages(url: str, queue: str, count: int) -> list[tuple[bytes, dict[str, object]]]:
    """The first ``count`` messages of a control stream (read from its start)."""
    got: list[tuple[bytes, dict[str, object]]] = []
    with Connection(url) as conn:
        channel = conn.channel()
        channel.basic_qos(0, count, False)

        def on_message(message: object) -> None:
            got.append((pushfleet.client.message_body(message), dict(message.properties)))  # type: ignore[arg-type,attr-defined]
            channel.basic_ack(message.delivery_tag)  # type: ignore[attr-defined]

        channel.basic_consume(queue, callback=on_message, arguments={"x-stream-offset": "first"})
        while len(got) < count:
            conn.drain_events(timeout=10)
    return got


@pytest.mark.timeout(60)
def test_cancel_publishes_what_pushfleet_cancel_publishes(
    amqp_url: str, quiet_prefix: pushfleet.Topology, workdir: Path, env: dict[str, str]
) -> None:
    config = workdir / f"{quiet_prefix.prefix}-cancel.toml"
    config.write_text(support.worker_config(env, quiet_prefix.prefix, support.base_registries(env)))
    subprocess.run(
        [str(support.worker_binary()), "cancel", "-c", str(config), "job-from-rust"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pushfleet.Client(amqp_url, quiet_prefix.prefix).cancel("job-from-rust")

    (rust_body, rust_props), (py_body, py_props) = control_messages(
        amqp_url, quiet_prefix.control_queue, 2
    )
    assert py_body == rust_body == b'{"version":1,"action":"cancel","job_id":"job-from-rust"}'
    assert json.loads(py_body)["action"] == "cancel"
    for props in (rust_props, py_props):
        assert props["content_type"] == "application/json"
        assert props["delivery_mode"] == 2
    # The Python client adds the publication time, which the workers read to ignore requests
    # older than a day; `pushfleet cancel` sends none.
    assert "timestamp" in py_props
