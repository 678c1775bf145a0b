"""Publishing a job after the database transaction that records it commits."""

from django.db import transaction

from ..job import PushJob
from .conf import get_client


def publish_on_commit(job: PushJob, *, using: str | None = None) -> str:
    """Publishes ``job`` once the current transaction commits (at once outside one) and
    returns its ``job_id``.

    The job is validated now, so an invalid one fails the request that makes it. If the
    publish itself fails after the commit, the :class:`pushfleet.PublishError` propagates from
    the commit (Django runs ``on_commit`` callbacks right after it): the data is committed but
    no job is queued. Catch it in your own callback to record that (see the example app).
    """
    job.validate()
    transaction.on_commit(lambda: get_client().publish(job), using=using)
    return job.job_id
