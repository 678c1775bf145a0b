"""Publishing and following jobs against the real stack and a real worker process."""

import datetime
import json
import logging
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import support
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer
from support import Fleet

import pushfleet
from pushfleet import (
    BrokerUnavailable,
    ErrorCode,
    Event,
    JobState,
    PublishRefused,
    PushJob,
    TopologyMissing,
    UnroutableJob,
    WaitTimeout,
    from_django_step,
)

WAIT_S = 60


@pytest.mark.timeout(90)
def test_a_published_job_succeeds_and_the_registry_has_the_tag(
    client: pushfleet.Client, images: support.Images, env: dict[str, str]
) -> None:
    name = support.unique("pf-py")
    images.make(f"{name}:0722")
    job = from_django_step(
        {"image": name, "tag": "0722", "registry_id": 5, "project_id": 5},
        "production",
        metadata={"pipeline_run": 812, "step": 129},
    )
    seen: list[Event] = []
    with client.subscribe() as subscription:
        assert client.publish(job) == job.job_id
        event = subscription.wait(job.job_id, WAIT_S, on_event=seen.append)

    assert event.state == JobState.SUCCEEDED, event
    assert event.job_id == job.job_id
    assert event.registry == "basic"
    assert event.targets == (f"{env['PUSHFLEET_BASIC_REGISTRY']}/production/{name}:0722",)
    assert event.metadata["pipeline_run"] == 812
    assert event.metadata["django"]["registry_id"] == 5
    assert event.digest is not None
    assert event.digest.startswith("sha256:")
    assert seen[0].state == JobState.ACCEPTED
    assert len({e.event_id for e in seen}) == len(seen)
    assert support.registry_digest(env, f"production/{name}", "0722") == event.digest


@pytest.mark.timeout(90)
def test_submit_and_wait_and_the_events_iterator(
    client: pushfleet.Client, images: support.Images, env: dict[str, str]
) -> None:
    name = support.unique("pf-py")
    images.make(f"{name}:1")
    job = PushJob.new(f"{name}:1", "5", f"team-a/{name}", ["1", "latest"])
    event = client.submit_and_wait(job, WAIT_S)
    assert event.state == JobState.SUCCEEDED
    assert support.registry_digest(env, f"team-a/{name}", "latest") == event.digest

    other = PushJob.new(f"{name}:1", "5", f"team-a/{name}", ["2"])
    stream = client.events(job_id=other.job_id, timeout=WAIT_S)  # subscribed from here on
    client.publish(other)
    states = []
    for e in stream:
        states.append(e.state)
        if e.is_terminal:
            break
    assert states[0] == JobState.ACCEPTED
    assert states[-1] == JobState.SUCCEEDED
    assert set(states) <= {JobState.ACCEPTED, JobState.PROGRESS, JobState.SUCCEEDED}


@pytest.mark.timeout(90)
def test_a_job_for_an_unknown_registry_fails_with_its_code_and_hint(
    client: pushfleet.Client,
) -> None:
    job = PushJob.new("myapp:0722", "nope", "production/myapp", metadata={"step": 1})
    event = client.submit_and_wait(job, WAIT_S)
    assert event.state == JobState.FAILED
    assert event.error is not None
    assert event.error.code == ErrorCode.UNKNOWN_REGISTRY
    assert event.error.retryable is False
    assert "nope" in event.error.message
    assert event.error.hint
    assert event.metadata == {"step": 1}


@pytest.mark.timeout(90)
def test_a_job_whose_source_image_is_missing_fails_with_its_code_and_hint(
    client: pushfleet.Client,
) -> None:
    name = support.unique("pf-py-missing")
    job = from_django_step({"image": name, "tag": "1", "registry_id": 5}, "production")
    event = client.submit_and_wait(job, WAIT_S)
    assert event.state == JobState.FAILED
    assert event.error is not None
    assert event.error.code == ErrorCode.SOURCE_IMAGE_MISSING
    assert name in event.error.message
    assert event.error.hint


def test_a_publish_nobody_can_receive_raises(amqp_url: str) -> None:
    prefix = support.unique("pytest-unroutable")
    topology = pushfleet.Topology(prefix)
    with Connection(amqp_url) as conn:
        Exchange(topology.jobs_exchange, type="direct", durable=True)(
            conn.default_channel
        ).declare()
    try:
        client = pushfleet.Client(amqp_url, topology_prefix=prefix)
        with pytest.raises(UnroutableJob) as caught:
            client.publish(PushJob.new("myapp:1", "5", "production/myapp"))
        assert caught.value.reply_code == 312
        assert "NO_ROUTE" in caught.value.reply_text
    finally:
        support.delete_topology(amqp_url, prefix)


def test_a_job_of_a_pool_goes_to_that_pool_s_queue_only(amqp_url: str) -> None:
    topology = pushfleet.Topology(support.unique("pytest-pools"))
    support.declare_topology(amqp_url, topology, pools=("build-01",))
    try:
        client = pushfleet.Client(amqp_url, topology_prefix=topology.prefix)
        job = from_django_step(
            {"image": "myapp", "tag": "0722", "registry_id": 5, "build_host": "build-01"},
            "production",
        )
        assert job.pool == "build-01"
        client.publish(job)
        assert support.queue_depth(amqp_url, topology.jobs_queue) == 0
        with Connection(amqp_url) as conn:
            message = conn.default_channel.basic_get(topology.pool_queue("build-01"), no_ack=True)
        assert message is not None
        assert json.loads(message.body)["pool"] == "build-01"
        assert message.delivery_info["routing_key"] == "job.build-01"

        # A pool no worker ever declared: the broker returns the job instead of dropping it.
        with pytest.raises(UnroutableJob, match=r"job\.build-02"):
            client.publish(PushJob.new("myapp:1", "5", "production/myapp", pool="build-02"))
    finally:
        support.delete_topology(
            amqp_url, topology.prefix, extra_queues=(topology.pool_queue("build-01"),)
        )


def test_a_publish_the_broker_refuses_raises(amqp_url: str) -> None:
    """A full queue with ``x-overflow: reject-publish`` (as the jobs queue is declared) makes
    the broker answer ``basic.nack``."""
    prefix = support.unique("pytest-full")
    topology = pushfleet.Topology(prefix)
    with Connection(amqp_url) as conn:
        exchange = Exchange(topology.jobs_exchange, type="direct", durable=True)
        Queue(
            topology.jobs_queue,
            exchange=exchange,
            routing_key="job",
            queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        )(conn.default_channel).declare()
    try:
        client = pushfleet.Client(amqp_url, topology_prefix=prefix)
        with pytest.raises(PublishRefused, match=r"basic\.nack"):
            client.publish(PushJob.new("myapp:1", "5", "production/myapp"))
    finally:
        support.delete_topology(amqp_url, prefix)


def test_a_publish_to_a_prefix_without_a_fleet_raises(amqp_url: str) -> None:
    client = pushfleet.Client(amqp_url, topology_prefix=support.unique("pytest-absent"))
    with pytest.raises(TopologyMissing, match="does not exist"):
        client.publish(PushJob.new("myapp:1", "5", "production/myapp"))
    with pytest.raises(TopologyMissing):
        client.cancel("some-job")
    with pytest.raises(TopologyMissing):
        client.subscribe().open()


def test_the_job_message_carries_what_the_worker_expects(
    amqp_url: str, quiet_prefix: pushfleet.Topology, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 40 + b"\n")
    client = pushfleet.Client(amqp_url, quiet_prefix.prefix, signing_key_file=key_file)
    job = from_django_step({"image": "myapp", "tag": "0722", "registry_id": 5}, "production")
    before = int(time.time())
    client.publish(job)
    with Connection(amqp_url) as conn:
        message = conn.default_channel.basic_get(quiet_prefix.jobs_queue, no_ack=True)
    assert message is not None
    # py-amqp hands over a body with a content_encoding as text.
    assert message.body == job.to_json().decode("utf-8")
    props = message.properties
    assert props["content_type"] == "application/json"
    assert props["content_encoding"] == "utf-8"
    assert props["delivery_mode"] == 2
    assert props["message_id"] == job.job_id
    stamp = props["timestamp"]
    seconds = stamp.timestamp() if isinstance(stamp, datetime.datetime) else stamp
    assert before <= int(seconds) <= int(time.time())
    headers = dict(props["application_headers"])
    headers.pop("x-delivery-count", None)  # the quorum queue's own
    assert headers == {"x-pushfleet-signature": pushfleet.sign(b"k" * 40, job.to_json())}


def test_a_registry_source_job_is_the_bytes_pushfleet_submit_publishes(
    env: dict[str, str], amqp_url: str, quiet_prefix: pushfleet.Topology, tmp_path: Path
) -> None:
    """`pushfleet submit --from-registry` publishes `serde_json::to_vec(&PushJob)`: the
    client's wire form of the same job is the same bytes (`source_registry` after `source`,
    before `pool`)."""
    digest = "sha256:" + "5a1e0c2b" * 8
    config = tmp_path / "submit.toml"
    config.write_text(support.worker_config(env, quiet_prefix.prefix, support.base_registries(env)))
    job = PushJob.new(
        f"ci/myapp@{digest}",
        "5",
        "production/myapp",
        ["0722", "stable"],
        job_id=support.unique("copy"),
        timeout_s=900,
        metadata={"step": 131, "pipeline_run": 812},
        pool="copy",
        source_registry="ci",
    )
    queue = quiet_prefix.pool_queue("copy")
    try:
        subprocess.run(
            [
                str(support.worker_binary()),
                *("submit", "--config", str(config), "--job-id", job.job_id),
                *("--source", job.source, "--from-registry", "ci", "--pool", "copy"),
                *("--registry", "5", "--repository", "production/myapp"),
                *("--tag", "0722", "--tag", "stable", "--timeout-s", "900"),
                *("--metadata", json.dumps(job.metadata)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with Connection(amqp_url) as conn:
            message = conn.default_channel.basic_get(queue, no_ack=True)
        assert message is not None
        body = message.body if isinstance(message.body, bytes) else message.body.encode("utf-8")
        assert body == job.to_json()
        assert json.loads(body)["source_registry"] == "ci"
    finally:
        with Connection(amqp_url) as conn:
            conn.default_channel.queue_delete(queue)


@pytest.mark.timeout(60)
def test_a_connection_lost_before_the_confirm_is_published_again(
    amqp_url: str,
    env: dict[str, str],
    quiet_prefix: pushfleet.Topology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = support.DroppingProxy(("127.0.0.1", int(env["PUSHFLEET_AMQP_PORT"])))
    try:
        job = PushJob.new("myapp:1", "5", "production/myapp")
        # The broker gets the publish; the client never gets its confirm.
        proxy.drop_on(job.job_id.encode(), times=1, forward_first=True)
        url = amqp_url.replace(f":{env['PUSHFLEET_AMQP_PORT']}/", f":{proxy.port}/")
        client = pushfleet.Client(url, quiet_prefix.prefix, max_retries=3, retry_interval=0.1)
        with caplog.at_level(logging.WARNING, logger="pushfleet"):
            assert client.publish(job) == job.job_id
        assert proxy.drops == 1
        assert any("publishing again" in r.getMessage() for r in caplog.records)
        # At least once: the job is queued, possibly twice (harmless: the second run finds
        # the digest in place and pushes nothing).
        depth = support.queue_depth(amqp_url, quiet_prefix.jobs_queue)
        assert depth in (1, 2)
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_a_publish_that_is_never_confirmed_raises(
    amqp_url: str, env: dict[str, str], quiet_prefix: pushfleet.Topology
) -> None:
    proxy = support.DroppingProxy(("127.0.0.1", int(env["PUSHFLEET_AMQP_PORT"])))
    try:
        job = PushJob.new("myapp:1", "5", "production/myapp")
        proxy.drop_on(job.job_id.encode(), times=1000, forward_first=False)
        url = amqp_url.replace(f":{env['PUSHFLEET_AMQP_PORT']}/", f":{proxy.port}/")
        client = pushfleet.Client(url, quiet_prefix.prefix, max_retries=2, retry_interval=0.05)
        with pytest.raises(BrokerUnavailable, match="not confirmed") as caught:
            client.publish(job)
        assert "guest:guest" not in str(caught.value)
        assert proxy.drops == 3  # the first attempt and two retries
        assert support.queue_depth(amqp_url, quiet_prefix.jobs_queue) == 0
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_a_broker_that_drops_every_connection_raises_promptly() -> None:
    with support.closing_tcp_server() as port:
        client = pushfleet.Client(
            f"amqp://guest:secret-pw@127.0.0.1:{port}/%2f",
            max_retries=2,
            retry_interval=0.05,
            connect_timeout=2,
        )
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            client.publish(PushJob.new("myapp:1", "5", "production/myapp"))
        assert time.monotonic() - started < 30
        assert "secret-pw" not in str(caught.value)


@pytest.mark.timeout(30)
def test_events_are_deduped_and_the_first_terminal_event_wins(fleet: Fleet) -> None:
    """Events published twice (a worker that died after publishing) and a second outcome (a
    redelivered job) are seen once, and the first outcome counts."""
    client = fleet.client()
    job_id = support.unique("synthetic")

    def event(state: str, **extra: object) -> bytes:
        body = {
            "version": 1,
            "event_id": str(uuid.uuid4()),
            "job_id": job_id,
            "state": state,
            "attempt": 1,
            "worker": "w",
            "at": "2026-01-01T00:00:00.123456789Z",
            "metadata": {},
            **extra,
        }
        return json.dumps(body).encode()

    accepted = event("accepted")
    failed = event(
        "failed",
        error={"code": "push_failed", "message": "m", "retryable": False, "hint": "h"},
    )
    succeeded = event("succeeded", digest="sha256:" + "0" * 64)
    sentinel_job = support.unique("sentinel")
    sentinel = json.dumps(
        {**json.loads(accepted), "event_id": str(uuid.uuid4()), "job_id": sentinel_job}
    ).encode()
    bodies = [accepted, accepted, b"not json", failed, failed, succeeded, accepted, sentinel]
    with client.subscribe() as subscription, Connection(fleet.url) as conn:
        producer = Producer(conn.default_channel)
        for body in bodies:
            state = json.loads(body)["state"] if body.startswith(b"{") else "x"
            producer.publish(
                body,
                exchange=client.topology.events_exchange,
                routing_key=f"job.{state}",
                content_type="application/json",
                content_encoding="utf-8",
            )
        outcome = subscription.wait(job_id, 10)
        assert outcome.state == JobState.FAILED
        assert outcome.event_id == json.loads(failed)["event_id"]
        assert outcome.at.microsecond == 123456
        # The duplicate, the second outcome and the late `accepted` are not yielded: the next
        # event is the sentinel, published last (one publisher, one queue: order is kept).
        following = subscription.next_event(10)
        assert following is not None
        assert following.job_id == sentinel_job
        assert subscription.wait(job_id, 0) == outcome


def test_waiting_for_a_job_that_never_ends_times_out(client: pushfleet.Client) -> None:
    with pytest.raises(WaitTimeout):
        client.wait("no-such-job", timeout=0.5)


def test_a_list_of_nodes_fails_over_to_one_that_answers(
    amqp_url: str, quiet_prefix: pushfleet.Topology
) -> None:
    with support.closing_tcp_server() as port:
        dead = f"amqp://guest:guest@127.0.0.1:{port}/%2f"
        client = pushfleet.Client([dead, amqp_url], quiet_prefix.prefix, retry_interval=0.05)
        client.publish(PushJob.new("myapp:1", "5", "production/myapp"))
    assert support.queue_depth(amqp_url, quiet_prefix.jobs_queue) == 1
