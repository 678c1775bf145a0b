"""pushfleet: the Python client of the pushfleet workers.

Build a push job (:class:`PushJob`, or :func:`from_django_step` from the old Django step
parameters), publish it with publisher confirms (:meth:`Client.publish`), follow its events
(:meth:`Client.subscribe`, :meth:`Client.submit_and_wait`), cancel it (:meth:`Client.cancel`).
The contracts are the repository's: ``schemas/*.schema.json`` (shipped in this package),
``shared/src/django.rs`` (mirrored by :mod:`pushfleet.mapping`, tested against the same vectors)
and ``shared/src/topology.rs`` (:mod:`pushfleet.topology`).

The Django integration is :mod:`pushfleet.django` (``pip install pushfleet[django]``); this
package itself does not need Django.
"""

from .client import Client, EventSubscription, cancel_body
from .credential import CredentialKind
from .errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    ErrorCode,
    PublishError,
    PublishRefused,
    PushfleetError,
    SigningKeyError,
    SubscriptionLost,
    TopologyMissing,
    UnroutableJob,
    WaitTimeout,
)
from .events import (
    CopyInfo,
    Event,
    EventDeduper,
    EventError,
    InvalidEvent,
    JobState,
    PhaseTimings,
    Progress,
    RetryInfo,
    TagPath,
    TraceContext,
)
from .job import JobError, JobOptions, JobTarget, PushJob
from .mapping import DjangoMappingError, from_django_step
from .pool import DEFAULT_POOL, is_valid_pool
from .reference import ImageRef, InRegistry, ReferenceError, parse_in_registry
from .signing import SigningKey, sign
from .topology import Topology

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POOL",
    "BrokerUnavailable",
    "Client",
    "ConfirmTimeout",
    "CopyInfo",
    "CredentialKind",
    "DjangoMappingError",
    "ErrorCode",
    "Event",
    "EventDeduper",
    "EventError",
    "EventSubscription",
    "ImageRef",
    "InRegistry",
    "InvalidEvent",
    "JobError",
    "JobOptions",
    "JobState",
    "JobTarget",
    "PhaseTimings",
    "Progress",
    "PublishError",
    "PublishRefused",
    "PushJob",
    "PushfleetError",
    "ReferenceError",
    "RetryInfo",
    "SigningKey",
    "SigningKeyError",
    "SubscriptionLost",
    "TagPath",
    "Topology",
    "TopologyMissing",
    "TraceContext",
    "UnroutableJob",
    "WaitTimeout",
    "__version__",
    "cancel_body",
    "from_django_step",
    "is_valid_pool",
    "parse_in_registry",
    "sign",
]
