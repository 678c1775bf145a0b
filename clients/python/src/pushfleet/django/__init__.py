"""Django integration: settings, a client from them, publishing after commit, and the
``pushfleet_events`` management command that turns events into the ``push_event`` signal.

Add ``"pushfleet.django"`` to ``INSTALLED_APPS`` and configure::

    PUSHFLEET = {
        "URL": "amqp://pushfleet@rabbitmq:5672/%2f",   # or a list of a cluster's nodes
        "TOPOLOGY_PREFIX": "pushfleet",                 # the workers' amqp.topology_prefix
        "SIGNING_KEY_FILE": "/run/secrets/pushfleet-signing-key",  # when workers require it
        "EVENTS_QUEUE": "pushfleet.events.django",      # this backend's own durable queue
    }

Then ``publish_on_commit(job)`` in a view or a model method, and run
``manage.py pushfleet_events`` as a long-lived process (one or more: they share the queue).

Needs Django (``pip install "pushfleet[django]"``); :mod:`pushfleet` itself does not.
"""

try:
    import django  # noqa: F401
except ImportError as e:  # pragma: no cover - only without Django
    raise ImportError('pushfleet.django needs Django: pip install "pushfleet[django]"') from e

from .conf import PushfleetSettings, get_client, pushfleet_settings
from .signals import push_event
from .transaction import publish_on_commit

__all__ = [
    "PushfleetSettings",
    "get_client",
    "publish_on_commit",
    "push_event",
    "pushfleet_settings",
]
