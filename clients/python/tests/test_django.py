"""The Django integration with the example app (``examples/django_app``), against a real
worker: publishing after commit, the ``pushfleet_events`` command and its ``push_event``
signal, deduplication, redelivery to failing receivers, settings errors."""

import io
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402
from kombu.connection import Connection  # noqa: E402
from kombu.messaging import Producer  # noqa: E402

import pushfleet  # noqa: E402
from pushfleet import Event, JobState, TopologyMissing  # noqa: E402

EXAMPLE_APP = Path(__file__).resolve().parents[1] / "examples" / "django_app"


@pytest.fixture(scope="module")
def django_fleet(env: dict[str, str], amqp_url: str, workdir: Path) -> Iterator[support.Fleet]:
    """A fleet of its own, so that only these tests' events reach the backend's queue."""
    prefix = support.unique("pytest-django")
    config = support.worker_config(env, prefix, support.base_registries(env))
    worker = support.WorkerProcess.start(workdir, prefix, config)
    try:
        yield support.Fleet(prefix, worker, amqp_url)
    finally:
        code = worker.stop()
        support.delete_topology(amqp_url, prefix, (f"{prefix}.events.django",))
        assert code == 0, f"the worker exited with {code}; log: {worker.log}"


@pytest.fixture(scope="module")
def backend(django_fleet: support.Fleet) -> Iterator[str]:
    """Django configured with the example app and this fleet; yields the events queue."""
    if not settings.configured:
        sys.path.insert(0, str(EXAMPLE_APP))
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "pushfleet.django", "pushes"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            PUSHFLEET={"URL": django_fleet.url, "TOPOLOGY_PREFIX": django_fleet.prefix},
        )
        django.setup()
        call_command("migrate", verbosity=0)
    queue = f"{django_fleet.prefix}.events.django"
    with override_settings(
        PUSHFLEET={
            "URL": django_fleet.url,
            "TOPOLOGY_PREFIX": django_fleet.prefix,
            "EVENTS_QUEUE": queue,
        }
    ):
        out = io.StringIO()
        call_command("pushfleet_events", declare_only=True, stdout=out)
        assert out.getvalue().strip() == f"declared {queue}"
        yield queue


@pytest.fixture
def received(backend: str) -> Iterator[list[Event]]:
    """Every event the signal delivers during the test (queue emptied first)."""
    from pushfleet.django import push_event

    with Connection(settings.PUSHFLEET["URL"]) as conn:
        conn.default_channel.queue_purge(backend)
    events: list[Event] = []

    def collect(sender: type, event: Event, **kwargs: Any) -> None:
        events.append(event)

    push_event.connect(collect, weak=False)
    try:
        yield events
    finally:
        push_event.disconnect(collect)


def run_command(**options: Any) -> str:
    out = io.StringIO()
    call_command("pushfleet_events", stdout=out, **options)
    return out.getvalue()


@pytest.mark.timeout(90)
def test_a_push_enqueued_in_a_transaction_is_published_after_commit_and_tracked(
    received: list[Event],
    images: support.Images,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pushes.services import enqueue_push

    from pushfleet.django import get_client

    client = get_client()
    published: list[str] = []
    real_publish = client.publish

    def spy(job: pushfleet.PushJob) -> str:
        published.append(real_publish(job))
        return job.job_id

    monkeypatch.setattr(client, "publish", spy)

    name = support.unique("pf-py-django")
    images.make(f"{name}:0722")
    with client.subscribe() as watcher:
        with transaction.atomic():
            record = enqueue_push(
                {"image": name, "tag": "0722", "registry_id": 5}, "production", {"run": 1}
            )
            assert published == []  # not before the commit
        assert published == [record.job_id]
        # How many events the job produced, from a private subscription.
        seen = []
        for event in watcher.events(job_id=record.job_id, timeout=60):
            seen.append(event)
            if event.is_terminal:
                break
    outcome = seen[-1]
    assert outcome.state == JobState.SUCCEEDED

    output = run_command(max_events=len(seen), idle_timeout=30)
    assert f"signalled {len(seen)} event(s)" in output
    assert "stopped by max_events" in output
    assert [e.event_id for e in received] == [e.event_id for e in seen]
    record.refresh_from_db()
    assert record.state == "succeeded"
    assert record.digest == outcome.digest
    assert support.registry_digest(env, f"production/{name}", "0722") == outcome.digest


def synthetic_event(job_id: str, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "event_id": str(uuid.uuid4()),
        "job_id": job_id,
        "state": state,
        "attempt": 1,
        "worker": "w",
        "at": "2026-01-01T00:00:00Z",
        "metadata": {},
        **extra,
    }


def publish_events(bodies: list[dict[str, Any] | bytes]) -> None:
    client = pushfleet.Client(settings.PUSHFLEET["URL"], settings.PUSHFLEET["TOPOLOGY_PREFIX"])
    with Connection(settings.PUSHFLEET["URL"]) as conn:
        producer = Producer(conn.default_channel)
        for body in bodies:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            state = body["state"] if isinstance(body, dict) else "x"
            producer.publish(
                data,
                exchange=client.topology.events_exchange,
                routing_key=f"job.{state}",
                content_type="application/json",
                delivery_mode=2,
            )


@pytest.mark.timeout(60)
def test_duplicates_are_signalled_once_and_a_failing_receiver_gets_the_event_again(
    received: list[Event],
) -> None:
    from pushes.models import PushRecord

    from pushfleet.django import push_event

    job_id = support.unique("synthetic")
    PushRecord.objects.create(job_id=job_id, source="s", target="t")
    accepted = synthetic_event(job_id, "accepted")
    failed = synthetic_event(
        job_id,
        "failed",
        error={"code": "push_failed", "message": "m", "retryable": False, "hint": "h"},
    )
    late = synthetic_event(job_id, "succeeded", digest="sha256:" + "1" * 64)
    publish_events([accepted, accepted, b"not an event", failed, late])

    attempts: list[str] = []

    def flaky(sender: type, event: Event, **kwargs: Any) -> None:
        attempts.append(event.event_id)
        if event.state == JobState.FAILED and attempts.count(event.event_id) == 1:
            raise RuntimeError("the database is away")

    push_event.connect(flaky, weak=False)
    try:
        output = run_command(max_events=3, idle_timeout=30)
    finally:
        push_event.disconnect(flaky)

    assert "signalled 3 event(s), 1 duplicate(s), 1 invalid, 1 requeued" in output
    # `failed` is delivered again after `flaky` raised (where in the order depends on the
    # broker and on what was prefetched); everything else once.
    ids = [e.event_id for e in received]
    assert ids[:2] == [accepted["event_id"], failed["event_id"]]
    assert sorted(ids) == sorted(
        [accepted["event_id"], failed["event_id"], failed["event_id"], late["event_id"]]
    )
    assert attempts.count(failed["event_id"]) == 2
    # The example receiver keeps the first terminal state.
    record = PushRecord.objects.get(job_id=job_id)
    assert record.state == "failed"
    assert record.error_code == "push_failed"
    assert record.digest == ""


@pytest.mark.timeout(30)
def test_the_command_ends_when_idle(received: list[Event]) -> None:
    output = run_command(idle_timeout=0.5)
    assert "signalled 0 event(s)" in output
    assert "stopped by idle_timeout" in output


@pytest.mark.timeout(30)
def test_a_publish_that_fails_after_the_commit_marks_the_row(backend: str) -> None:
    from pushes.services import enqueue_push

    with override_settings(
        PUSHFLEET={"URL": settings.PUSHFLEET["URL"], "TOPOLOGY_PREFIX": "pytest-no-such-fleet"}
    ):
        with pytest.raises(TopologyMissing), transaction.atomic():
            record = enqueue_push({"image": "myapp", "tag": "1", "registry_id": 5}, "production")
        record.refresh_from_db()
        assert record.state == "publish_failed"


def test_an_invalid_step_fails_before_anything_is_written(backend: str) -> None:
    from pushes.models import PushRecord
    from pushes.services import enqueue_push

    before = PushRecord.objects.count()
    with pytest.raises(pushfleet.DjangoMappingError) as caught:
        enqueue_push({"image": "MyApp", "tag": "0722", "registry_id": 5}, "production")
    assert caught.value.code == "invalid_reference"
    assert "must be lowercase" in caught.value.message
    assert PushRecord.objects.count() == before


def test_settings_are_checked(backend: str) -> None:
    from pushfleet.django import get_client, pushfleet_settings

    typo = {"URL": "amqp://x", "TOPOLOGY_PREFX": "typo"}
    with override_settings(PUSHFLEET=typo), pytest.raises(ImproperlyConfigured, match="PREFX"):
        pushfleet_settings()
    no_url = {"TOPOLOGY_PREFIX": "p"}
    with override_settings(PUSHFLEET=no_url), pytest.raises(ImproperlyConfigured, match="URL"):
        pushfleet_settings()
    with override_settings(PUSHFLEET={"URL": ["amqp://a", "amqp://b"], "TOPOLOGY_PREFIX": "p"}):
        s = pushfleet_settings()
        assert s.url == ("amqp://a", "amqp://b")
        assert s.events_queue_name == "p.events.django"
        assert get_client().topology.prefix == "p"
    assert get_client().topology.prefix == settings.PUSHFLEET["TOPOLOGY_PREFIX"]


def test_an_events_queue_declared_with_other_arguments_is_a_clear_error(backend: str) -> None:
    from django.core.management.base import CommandError

    changed = {**settings.PUSHFLEET, "EVENTS_DELIVERY_LIMIT": 3}
    with override_settings(PUSHFLEET=changed), pytest.raises(CommandError, match="other arguments"):
        run_command(idle_timeout=0.1)
