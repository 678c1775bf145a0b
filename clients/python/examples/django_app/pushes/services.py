"""Enqueueing a push from the old step parameters, after the transaction commits."""

from typing import Any

from django.db import transaction

from pushfleet import PublishError, from_django_step
from pushfleet.django import get_client

from .models import PushRecord


def enqueue_push(
    params: dict[str, Any], project: str, metadata: dict[str, Any] | None = None
) -> PushRecord:
    """Records the push and publishes its job once the surrounding transaction commits.

    An invalid step raises ``pushfleet.DjangoMappingError`` here (code, message, hint), before
    anything is written. A publish that fails after the commit marks the row
    ``publish_failed`` and re-raises.
    """
    job = from_django_step(params, project, metadata=metadata)
    record = PushRecord.objects.create(
        job_id=job.job_id,
        source=job.source,
        target=f"{job.target.registry}:{job.target.repository}:{','.join(job.target.tags)}",
    )

    def publish() -> None:
        try:
            get_client().publish(job)
        except PublishError:
            PushRecord.objects.filter(pk=record.pk).update(state="publish_failed")
            raise

    transaction.on_commit(publish)
    return record
