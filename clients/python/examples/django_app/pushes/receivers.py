"""Keeps ``PushRecord`` rows up to date from ``push_event``.

One conditional ``UPDATE`` per event: a row already in a terminal state is never changed, so
the first terminal event of a job wins even with several ``pushfleet_events`` processes, a
redelivered job's second outcome, or events arriving twice.
"""

from typing import Any

from django.dispatch import receiver

from pushfleet import Event
from pushfleet.django import push_event

from .models import TERMINAL_STATES, PushRecord


@receiver(push_event)
def record_push_event(sender: type, event: Event, **kwargs: Any) -> None:
    if event.job_id is None:
        return  # a message too broken to name its job
    changes: dict[str, Any] = {"state": event.state.value}
    if event.digest:
        changes["digest"] = event.digest
    if event.error is not None:
        changes["error_code"] = event.error.code.value
        changes["error_message"] = event.error.message
    PushRecord.objects.filter(job_id=event.job_id).exclude(state__in=TERMINAL_STATES).update(
        **changes
    )
