"""Publishing jobs and cancel requests, and following events, over AMQP with kombu.

**Publishing** (:meth:`Client.publish`) opens a connection per call, puts its channel in
confirm mode (``confirm_publish``), checks that the exchange exists (a passive declare: a
wrong prefix is an error, not a new empty topology), and publishes the job ``mandatory``,
persistent, ``content_type=application/json``, ``content_encoding=utf-8``, ``message_id`` =
``job_id``, with the publication ``timestamp`` (the workers' queue-wait metric reads it) and,
when a signing key is configured, ``x-pushfleet-signature``. It returns only after the broker's
``basic.ack``; a ``basic.return`` (no queue bound), a ``basic.nack``, a missing exchange or a
connection that cannot be (re)established raise a :class:`~pushfleet.PublishError`. A
connection lost before the confirm is retried on a new connection (``max_retries``), so a job
can be queued twice: that is harmless, the fleet's effect is idempotent (``already_present``)
and consumers dedupe events.

Why a connection per call: a backend publishes a few jobs per pipeline, from web workers,
threads or Celery tasks, after a database commit. A fresh connection costs a few
milliseconds, needs no heartbeats serviced between requests, is safe in any thread or after a
``fork``, and never starts with a half-dead socket from an idle pool.

**Events** are read through an :class:`EventSubscription`: a server-named, exclusive,
auto-delete queue bound to ``<prefix>.events`` with ``job.*`` that lives as long as its
connection. Subscribe *before* publishing, or a fast job's events go by unseen
(:meth:`Client.submit_and_wait` does it in that order). For a durable follower that survives
restarts, use the Django command ``pushfleet_events`` (its own quorum queue).
"""

import logging
import os
import socket
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import amqp.exceptions
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.messaging import Consumer, Producer

from . import _json
from .errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    PublishRefused,
    SubscriptionLost,
    TopologyMissing,
    UnroutableJob,
    WaitTimeout,
)
from .events import Event, EventDeduper, InvalidEvent
from .job import MAX_JOB_ID_LEN, PushJob
from .schema import validate_job_data
from .signing import SIGNATURE_HEADER, SigningKey
from .topology import CONTENT_TYPE_JSON, Topology

log = logging.getLogger("pushfleet")

# How long one wait for the broker lasts: heartbeats are checked between waits.
_TICK_S = 1.0


def redact_url(url: str) -> str:
    """``amqp://user:***@host/vhost``: an AMQP URL fit for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


class Client:
    """A connection-per-call publisher and an event subscriber for one fleet.

    ``url`` is an AMQP URL (``amqp://user:password@host:5672/%2f``) or a list of them for a
    cluster (tried in order). ``topology_prefix`` selects the fleet (``amqp.topology_prefix`` of
    its workers); ``signing_key_file`` is the fleet's ``amqp.signing_key_file``, when jobs must be
    signed. Thread-safe: every call opens its own connection.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        topology_prefix: str = "pushfleet",
        signing_key_file: str | os.PathLike[str] | None = None,
        *,
        connect_timeout: float = 10.0,
        confirm_timeout: float = 15.0,
        max_retries: int = 3,
        retry_interval: float = 0.5,
        heartbeat: float = 30.0,
        connection_name: str = "pushfleet-python",
    ) -> None:
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls:
            raise ValueError("give at least one AMQP URL")
        self.topology = Topology(topology_prefix)
        self.signing_key = (
            SigningKey.from_file(signing_key_file) if signing_key_file is not None else None
        )
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.heartbeat = heartbeat
        self.connection_name = connection_name

    def __repr__(self) -> str:
        urls = ", ".join(redact_url(u) for u in self._urls)
        return f"Client([{urls}], topology_prefix={self.topology.prefix!r})"

    # -- connections ---------------------------------------------------------------------

    def connection(self, *, confirm: bool = False, heartbeat: float | None = None) -> Connection:
        """A new (not yet connected) kombu connection to the fleet's broker."""
        options: dict[str, Any] = {"client_properties": {"connection_name": self.connection_name}}
        if confirm:
            options["confirm_publish"] = True
        return Connection(
            self._urls if len(self._urls) > 1 else self._urls[0],
            connect_timeout=self.connect_timeout,
            heartbeat=heartbeat or 0,
            transport_options=options,
            failover_strategy="round-robin",
        )

    def _connect(self, conn: Connection) -> None:
        def errback(exc: Exception, interval: float) -> None:
            log.warning(
                "cannot reach the broker (%s): %s; trying again in %.1f s",
                redact_url(conn.as_uri()),
                exc,
                interval,
            )

        try:
            conn.ensure_connection(
                errback=errback,
                max_retries=self.max_retries,
                interval_start=self.retry_interval,
                interval_step=self.retry_interval,
                interval_max=max(self.retry_interval, 5.0),
                timeout=self.connect_timeout * (self.max_retries + 1),
            )
        except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
            raise BrokerUnavailable(
                f"cannot connect to the broker at {redact_url(conn.as_uri())}: {e}"
            ) from e

    # -- publishing ----------------------------------------------------------------------

    def publish(self, job: PushJob) -> str:
        """Publishes ``job`` to ``<prefix>.jobs`` with its pool's routing key (``job``, or
        ``job.<pool>`` when the job names a pool) and returns its ``job_id`` once the broker
        confirmed it.

        The job is checked first as a worker will check it and against
        ``schemas/job.schema.json`` (:class:`~pushfleet.JobError`). Safe to call from Django's
        ``transaction.on_commit``: nothing here touches the database.

        Raises :class:`~pushfleet.PublishError` (:class:`~pushfleet.UnroutableJob`,
        :class:`~pushfleet.TopologyMissing`, :class:`~pushfleet.PublishRefused`,
        :class:`~pushfleet.ConfirmTimeout`, :class:`~pushfleet.BrokerUnavailable`) unless the
        broker confirmed it.
        """
        job.validate()
        body = job.to_json()
        validate_job_data(job.to_dict())
        headers: dict[str, Any] = {}
        if self.signing_key is not None:
            headers[SIGNATURE_HEADER] = self.signing_key.sign(body)
        self._publish(
            exchange=self.topology.jobs_exchange,
            kind="direct",
            routing_key=Topology.pool_routing_key(job.pool_name),
            body=body,
            headers=headers,
            message_id=job.job_id,
        )
        log.info(
            "published job %s to %s (pool %s)",
            job.job_id,
            self.topology.jobs_exchange,
            job.pool_name,
        )
        return job.job_id

    def cancel(self, job_id: str) -> None:
        """Asks every worker to cancel ``job_id``, queued or running, as ``pushfleet cancel``
        does: ``{"version":1,"action":"cancel","job_id":...}`` to the fanout exchange
        ``<prefix>.control`` (kept in the control stream for 24 hours). The job then ends as
        ``failed`` with code ``cancelled``, unless it finished first."""
        if not 0 < len(job_id) <= MAX_JOB_ID_LEN:
            raise ValueError(f"a job id has 1 to {MAX_JOB_ID_LEN} characters")
        body = cancel_body(job_id)
        self._publish(
            exchange=self.topology.control_exchange,
            kind="fanout",
            routing_key="",
            body=body,
            headers={},
            message_id=None,
        )
        log.info("asked every worker to cancel job %s", job_id)

    def _publish(
        self,
        *,
        exchange: str,
        kind: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        message_id: str | None,
    ) -> None:
        returned: list[tuple[int, str]] = []

        def on_return(exc: Exception, _exchange: str, _key: str, _message: object) -> None:
            returned.append((getattr(exc, "reply_code", 0), getattr(exc, "reply_text", str(exc))))

        properties: dict[str, Any] = {"timestamp": int(time.time())}
        if message_id is not None:
            properties["message_id"] = message_id
        conn = self.connection(confirm=True)
        try:
            self._connect(conn)
            target = Exchange(exchange, type=kind, durable=True, passive=True)
            producer = Producer(
                conn.channel(), exchange=target, auto_declare=False, on_return=on_return
            )

            def attempt() -> None:
                returned.clear()
                target.declare(channel=producer.channel)
                producer.publish(
                    body,
                    routing_key=routing_key,
                    mandatory=True,
                    delivery_mode=2,
                    content_type=CONTENT_TYPE_JSON,
                    content_encoding="utf-8",
                    headers=dict(headers),
                    timeout=self.confirm_timeout,
                    confirm_timeout=self.confirm_timeout,
                    **properties,
                )

            def errback(exc: Exception, interval: float) -> None:
                log.warning(
                    "publish to %s interrupted (%s); publishing again on a new connection",
                    exchange,
                    exc,
                )

            ensured = conn.ensure(
                producer,
                attempt,
                errback=errback,
                max_retries=self.max_retries,
                interval_start=self.retry_interval,
                interval_step=self.retry_interval,
                interval_max=max(self.retry_interval, 5.0),
            )
            ensured()
        except amqp.exceptions.NotFound as e:
            raise topology_missing(exchange, self.topology, e) from e
        except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
            # kombu counts a basic.nack as recoverable: it was published again (max_retries)
            # before this.
            if _caused_by(e, amqp.exceptions.MessageNacked):
                raise PublishRefused(
                    f"the broker refused the message to {exchange} (basic.nack, "
                    f"{self.max_retries + 1} times; a full queue?)"
                ) from e
            if _caused_by(e, socket.timeout, TimeoutError):
                raise ConfirmTimeout(
                    f"the broker did not confirm the message to {exchange} within "
                    f"{self.confirm_timeout} s (tried {self.max_retries + 1} times)"
                ) from e
            raise BrokerUnavailable(
                f"the message to {exchange} was not confirmed: {e} (tried {self.max_retries + 1} "
                "times)"
            ) from e
        finally:
            _close_quietly(conn)
        if returned:
            code, text = returned[0]
            raise UnroutableJob(
                f"the broker returned the message to {exchange} ({code} {text}): no queue is "
                f"bound for routing key {routing_key!r}; are the workers of prefix "
                f"{self.topology.prefix!r} deployed?",
                code,
                text,
            )

    # -- events --------------------------------------------------------------------------

    def subscribe(self, binding_key: str = "job.*") -> "EventSubscription":
        """A new event subscription (use it as a context manager); events published from now
        on reach it."""
        return EventSubscription(self, binding_key)

    def submit_and_wait(self, job: PushJob, timeout: float) -> Event:
        """Subscribes, publishes ``job``, and returns its first terminal event."""
        with self.subscribe() as subscription:
            self.publish(job)
            return subscription.wait(job.job_id, timeout)

    def wait(self, job_id: str, timeout: float) -> Event:
        """The first terminal event of ``job_id`` published from now on (within ``timeout``
        seconds). Events published before this call are not seen: to follow a job you publish,
        subscribe first (:meth:`submit_and_wait`, or :meth:`subscribe` then :meth:`publish`)."""
        with self.subscribe() as subscription:
            return subscription.wait(job_id, timeout)

    def events(self, *, job_id: str | None = None, timeout: float | None = None) -> Iterator[Event]:
        """Events published from this call on, deduped (see :meth:`EventSubscription.events`);
        the subscription is open when this returns and closes with the iterator."""
        subscription = self.subscribe()
        subscription.open()
        return _closing(subscription, subscription.events(job_id=job_id, timeout=timeout))


class EventSubscription:
    """A private view of the events exchange: an exclusive, auto-delete, server-named queue
    bound with ``job.*``, consumed with automatic acks. Open it (``with``) before publishing
    the jobs to follow.

    Events are deduped by ``event_id``; once a job's first terminal event was seen, later
    events of that job (a redelivered job's second ``accepted`` or second outcome) are not
    yielded. A message that is not a v1 event is logged and skipped. One subscription
    belongs to one thread.
    """

    def __init__(self, client: Client, binding_key: str = "job.*") -> None:
        self._client = client
        self._binding_key = binding_key
        self._conn: Connection | None = None
        self._consumer: Consumer | None = None
        self._inbox: deque[bytes] = deque()
        self.deduper = EventDeduper()
        self.queue_name: str | None = None

    def __enter__(self) -> "EventSubscription":
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connects and starts consuming; idempotent."""
        if self._conn is not None:
            return
        client = self._client
        conn = client.connection(heartbeat=client.heartbeat)
        client._connect(conn)
        try:
            channel = conn.channel()
            exchange = Exchange(
                client.topology.events_exchange, type="topic", durable=True, passive=True
            )
            queue = Queue(
                "",
                exchange=exchange,
                routing_key=self._binding_key,
                exclusive=True,
                auto_delete=True,
                durable=False,
            )
            consumer = Consumer(channel, queues=[queue], no_ack=True, on_message=self._on_message)
            consumer.consume()
        except amqp.exceptions.NotFound as e:
            _close_quietly(conn)
            raise topology_missing(client.topology.events_exchange, client.topology) from e
        except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
            _close_quietly(conn)
            raise SubscriptionLost(f"cannot subscribe to events: {e}") from e
        self.queue_name = queue.name
        self._conn = conn
        self._consumer = consumer

    def close(self) -> None:
        """Ends the subscription (its queue goes with the connection)."""
        conn, self._conn, self._consumer = self._conn, None, None
        if conn is not None:
            _close_quietly(conn)

    def _on_message(self, message: Message) -> None:
        self._inbox.append(message_body(message))

    def _receive(self, deadline: float | None) -> bytes | None:
        """The next raw message, or None at the deadline."""
        while not self._inbox:
            conn = self._conn
            if conn is None:
                raise SubscriptionLost("the subscription is closed")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            tick = _TICK_S if deadline is None else min(_TICK_S, deadline - now)
            try:
                conn.drain_events(timeout=tick)
            except TimeoutError:
                pass
            except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
                self.close()
                raise SubscriptionLost(f"the event subscription lost its connection: {e}") from e
            try:
                conn.heartbeat_check()
            except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
                self.close()
                raise SubscriptionLost(f"the event subscription lost its connection: {e}") from e
        return self._inbox.popleft()

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next new event, or None after ``timeout`` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = self._receive(deadline)
            if body is None:
                return None
            try:
                event = Event.from_json(body)
            except InvalidEvent as e:
                log.warning("skipping a message on the events exchange: %s", e)
                continue
            if self.deduper.is_duplicate(event):
                continue
            had_outcome = (
                event.job_id is not None and self.deduper.outcome(event.job_id) is not None
            )
            self.deduper.record(event)
            if had_outcome:
                continue
            return event

    def events(self, *, job_id: str | None = None, timeout: float | None = None) -> Iterator[Event]:
        """New events (of ``job_id`` only, if given) until ``timeout`` seconds have passed
        (None: for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.next_event(remaining)
            if event is None:
                return
            if job_id is None or event.job_id == job_id:
                yield event

    def wait(
        self,
        job_id: str,
        timeout: float,
        on_event: Callable[[Event], None] | None = None,
    ) -> Event:
        """The first terminal event (``succeeded``, ``failed``, ``dead``) of ``job_id``.

        ``on_event`` sees every new event of the job on the way (``accepted``, ``progress``,
        ``retrying``). Raises :class:`~pushfleet.WaitTimeout` after ``timeout`` seconds.
        """
        outcome = self.deduper.outcome(job_id)
        if outcome is not None:
            return outcome
        for event in self.events(job_id=job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
            if event.is_terminal:
                return event
        raise WaitTimeout(f"no terminal event for job {job_id} within {timeout} s")


def _closing(subscription: EventSubscription, events: Iterator[Event]) -> Iterator[Event]:
    try:
        yield from events
    finally:
        subscription.close()


def message_body(message: Message) -> bytes:
    """A received message's body as bytes (py-amqp hands a body with a ``content_encoding`` over
    already decoded to text)."""
    body = message.body
    if isinstance(body, str):
        return body.encode(message.content_encoding or "utf-8")
    return bytes(body)


def topology_missing(
    exchange: str, topology: Topology, cause: Exception | None = None
) -> TopologyMissing:
    """The error of a publish or a passive declare that found no ``exchange`` of ``topology``
    (the broker's ``NOT_FOUND``, given as ``cause`` to quote it)."""
    quoted = "" if cause is None else f" ({cause})"
    return TopologyMissing(
        f"exchange {exchange} does not exist: is a fleet running with topology prefix "
        f"{topology.prefix!r}?{quoted}"
    )


def cancel_body(job_id: str) -> bytes:
    """The control message ``pushfleet cancel`` publishes, byte for byte."""
    fields = _json.Fields([("version", 1), ("action", "cancel"), ("job_id", job_id)])
    return _json.encode(fields).encode("utf-8")


def _caused_by(error: BaseException, *kinds: type[BaseException]) -> bool:
    """Whether ``error`` or an exception in its cause chain is one of ``kinds``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _close_quietly(conn: Connection) -> None:
    try:
        conn.release()
    except Exception as e:  # noqa: BLE001 - closing a broken connection fails in many ways
        log.debug("closing the broker connection failed: %s", e)
