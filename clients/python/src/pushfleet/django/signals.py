"""The signal the ``pushfleet_events`` command sends for every new event.

Receivers get ``sender=pushfleet.Event`` and ``event`` (a :class:`pushfleet.Event`)::

    from django.dispatch import receiver
    from pushfleet.django import push_event

    @receiver(push_event)
    def on_push_event(sender, event, **kwargs):
        ...

The command acks the event only after every receiver returned; if one raises, the event is
delivered again (to every receiver), so receivers must be idempotent. Events are deduped by
``event_id`` within the process, but a redelivered job can still produce a second terminal
event with another ``event_id``: keep the first terminal state of a job (see the example app).
"""

from django.dispatch import Signal

push_event = Signal()
