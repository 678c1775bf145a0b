"""Exchange and queue names and queue arguments: a mirror of ``shared/src/topology.rs`` (what
``pushfleet topology --prefix P`` prints; a test compares the two).

```text
<p>.jobs    (direct) --"job"--> <p>.jobs    (quorum queue, delivery limit, DLX <p>.dlx)
<p>.retry   (direct) --"delay.<k>"--> <p>.retry.<k> (declared by workers when first used)
<p>.jobs    (direct) --"check.registry"--> <p>.checks (quorum queue, 10 min TTL)
<p>.dlx     (direct) --"job"--> <p>.dead    (quorum queue: dead letters)
<p>.events  (topic)  --"job.<state>", "registry.checked"--> consumers' own queues
<p>.control (fanout) --> <p>.control (stream, 24 h)

and for each other pool P (declared by the workers that serve it):
<p>.jobs    (direct) --"job.P"--> <p>.jobs.P (quorum queue, DLX <p>.dlx with key "job.P")
<p>.retry   (direct) --"delay.P.<k>"--> <p>.retry.P.<k> (DLX <p>.jobs with key "job.P")
<p>.dlx     (direct) --"job.P"--> <p>.dead
```

A job of pool P is published with routing key ``job.P`` (the default pool's is ``job``): if
no worker of P ever declared its queue, the mandatory publish comes back and
:meth:`~pushfleet.Client.publish` raises :class:`~pushfleet.UnroutableJob`.

The client declares none of the workers' queues; it declares exchanges only passively, so a
wrong prefix is an error instead of a new, empty topology. The specs are here so tests (and
operators) can declare the workers' topology identically, e.g. before any worker started.
"""

from dataclasses import dataclass
from typing import Self, overload

from .pool import DEFAULT_POOL

DEFAULT_PREFIX = "pushfleet"
JOB_ROUTING_KEY = "job"
DEFAULT_DELIVERY_LIMIT = 5
CONTROL_MAX_AGE = "24h"
MAX_RETRY_BUCKET = 17
CHECK_ROUTING_KEY = "check.registry"
CHECK_TTL_MS = 600_000
CONTENT_TYPE_JSON = "application/json"

QueueArg = str | int


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange; ``kind`` is ``direct``, ``topic`` or ``fanout``."""

    name: str
    kind: str


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue, its arguments, and its one binding."""

    name: str
    arguments: tuple[tuple[str, QueueArg], ...]
    bound_to: str
    binding_key: str


class _Name:
    """A fixed name of a :class:`Topology`, read as an attribute: ``<prefix>.<suffix>``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    @overload
    def __get__(self, topology: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, topology: "Topology", owner: type | None = None) -> str: ...

    def __get__(self, topology: "Topology | None", owner: type | None = None) -> "str | Self":
        if topology is None:
            return self
        return f"{topology.prefix}.{self.suffix}"


@dataclass(frozen=True)
class Topology:
    """The names of one fleet, all derived from ``prefix``."""

    prefix: str = DEFAULT_PREFIX
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    replicas: int | None = None

    jobs_exchange = _Name("jobs")
    retry_exchange = _Name("retry")
    dead_letter_exchange = _Name("dlx")
    dead_letter_queue = _Name("dead")
    checks_queue = _Name("checks")
    events_exchange = _Name("events")
    control_exchange = _Name("control")
    control_queue = _Name("control")

    @property
    def jobs_queue(self) -> str:
        return self.pool_queue(DEFAULT_POOL)

    def pool_queue(self, pool: str) -> str:
        """The queue of ``pool``'s jobs (``<p>.jobs`` for the default pool)."""
        if pool == DEFAULT_POOL:
            return f"{self.prefix}.jobs"
        return f"{self.prefix}.jobs.{pool}"

    @staticmethod
    def pool_routing_key(pool: str) -> str:
        """The routing key of ``pool``'s jobs (``job`` for the default pool)."""
        if pool == DEFAULT_POOL:
            return JOB_ROUTING_KEY
        return f"{JOB_ROUTING_KEY}.{pool}"

    def retry_queue(self, bucket: int) -> str:
        return self.pool_retry_queue(DEFAULT_POOL, bucket)

    def pool_retry_queue(self, pool: str, bucket: int) -> str:
        if pool == DEFAULT_POOL:
            return f"{self.prefix}.retry.{bucket}"
        return f"{self.prefix}.retry.{pool}.{bucket}"

    @staticmethod
    def pool_retry_routing_key(pool: str, bucket: int) -> str:
        if pool == DEFAULT_POOL:
            return f"delay.{bucket}"
        return f"delay.{pool}.{bucket}"

    def _quorum_arguments(self) -> list[tuple[str, QueueArg]]:
        args: list[tuple[str, QueueArg]] = [("x-queue-type", "quorum")]
        if self.replicas is not None:
            args.append(("x-quorum-initial-group-size", self.replicas))
        return args

    def exchanges(self) -> list[ExchangeSpec]:
        """Every exchange, in the workers' declaration order."""
        return [
            ExchangeSpec(self.jobs_exchange, "direct"),
            ExchangeSpec(self.retry_exchange, "direct"),
            ExchangeSpec(self.dead_letter_exchange, "direct"),
            ExchangeSpec(self.events_exchange, "topic"),
            ExchangeSpec(self.control_exchange, "fanout"),
        ]

    def queues(self) -> list[QueueSpec]:
        """Every durable queue the workers declare at start, in their order."""
        stream: list[tuple[str, QueueArg]] = [
            ("x-queue-type", "stream"),
            ("x-max-age", CONTROL_MAX_AGE),
            ("x-stream-max-segment-size-bytes", 1_000_000),
        ]
        if self.replicas is not None:
            stream.append(("x-initial-cluster-size", self.replicas))
        return [
            self._jobs_queue_spec(DEFAULT_POOL),
            QueueSpec(self.control_queue, tuple(stream), self.control_exchange, ""),
            QueueSpec(
                self.checks_queue,
                (*self._quorum_arguments(), ("x-message-ttl", CHECK_TTL_MS)),
                self.jobs_exchange,
                CHECK_ROUTING_KEY,
            ),
            QueueSpec(
                self.dead_letter_queue,
                tuple(self._quorum_arguments()),
                self.dead_letter_exchange,
                JOB_ROUTING_KEY,
            ),
        ]

    def _jobs_queue_spec(self, pool: str) -> QueueSpec:
        key = self.pool_routing_key(pool)
        return QueueSpec(
            self.pool_queue(pool),
            (
                *self._quorum_arguments(),
                ("x-delivery-limit", self.delivery_limit),
                ("x-dead-letter-exchange", self.dead_letter_exchange),
                ("x-dead-letter-routing-key", key),
                ("x-dead-letter-strategy", "at-least-once"),
                ("x-overflow", "reject-publish"),
            ),
            self.jobs_exchange,
            key,
        )

    def pool_queues(self, pool: str) -> list[QueueSpec]:
        """What the workers of ``pool`` declare beyond :meth:`queues`: its queue and the
        dead-letter queue's binding for its key (nothing for the default pool)."""
        if pool == DEFAULT_POOL:
            return []
        return [
            self._jobs_queue_spec(pool),
            QueueSpec(
                self.dead_letter_queue,
                tuple(self._quorum_arguments()),
                self.dead_letter_exchange,
                self.pool_routing_key(pool),
            ),
        ]

    def retry_queue_spec(self, bucket: int) -> QueueSpec:
        """The default pool's delay queue of ``bucket`` (declared by workers on first use)."""
        return self.pool_retry_queue_spec(DEFAULT_POOL, bucket)

    def pool_retry_queue_spec(self, pool: str, bucket: int) -> QueueSpec:
        """``pool``'s delay queue of ``bucket``: expired messages return to ``pool``'s queue."""
        return QueueSpec(
            self.pool_retry_queue(pool, bucket),
            (
                *self._quorum_arguments(),
                ("x-dead-letter-exchange", self.jobs_exchange),
                ("x-dead-letter-routing-key", self.pool_routing_key(pool)),
                ("x-dead-letter-strategy", "at-least-once"),
                ("x-overflow", "reject-publish"),
            ),
            self.retry_exchange,
            self.pool_retry_routing_key(pool, bucket),
        )
