"""The events consumer behind ``manage.py pushfleet_events``.

It reads ``<prefix>.events`` through the backend's own durable queue (a quorum queue named
by ``PUSHFLEET["EVENTS_QUEUE"]``, bound with ``job.*``), so events published while the
backend is down wait for it. For every new event it sends :data:`push_event` and acks the
message only after every receiver returned; when a receiver raises, the message is returned to
the queue and delivered again (up to ``EVENTS_DELIVERY_LIMIT`` deliveries, after which the
broker drops it). Events are deduped by ``event_id`` within the process; a message that is not
a v1 event is logged and acked (it can never become one).
"""

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType

import amqp.exceptions
from django.core.exceptions import ImproperlyConfigured
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.messaging import Consumer

from ..client import Client, message_body, topology_missing
from ..errors import SubscriptionLost
from ..events import Event, EventDeduper, InvalidEvent
from .conf import PushfleetSettings, get_client, pushfleet_settings
from .signals import push_event

log = logging.getLogger("pushfleet.django")

# Dedupes across every run of the command in this process.
_PROCESS_DEDUPER = EventDeduper()
_TICK_S = 1.0


def events_queue(s: PushfleetSettings, client: Client) -> Queue:
    """The backend's durable events queue, with the arguments it is always declared with
    (declaring it again with others would fail with PRECONDITION_FAILED)."""
    return Queue(
        s.events_queue_name,
        exchange=Exchange(
            client.topology.events_exchange, type="topic", durable=True, passive=True
        ),
        routing_key="job.*",
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": s.events_delivery_limit,
        },
    )


def declare_events_queue() -> str:
    """Declares (idempotently) and binds the backend's events queue; returns its name. Events
    published from then on wait in it for the command."""
    s = pushfleet_settings()
    client = get_client()
    conn = client.connection()
    client._connect(conn)
    try:
        queue = events_queue(s, client)
        queue(conn.channel()).declare()
        return queue.name
    except amqp.exceptions.NotFound as e:
        raise topology_missing(client.topology.events_exchange, client.topology) from e
    except amqp.exceptions.PreconditionFailed as e:
        raise _queue_conflict(s, e) from e
    finally:
        conn.release()


def _queue_conflict(s: PushfleetSettings, error: Exception) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"the queue {s.events_queue_name} exists with other arguments than x-queue-type=quorum, "
        f"x-delivery-limit={s.events_delivery_limit} ({error}): restore "
        "PUSHFLEET['EVENTS_DELIVERY_LIMIT'], or delete the queue (its waiting events with it), "
        "or name another EVENTS_QUEUE"
    )


@dataclass
class RunResult:
    """What one run did."""

    signalled: int = 0
    duplicates: int = 0
    invalid: int = 0
    requeued: int = 0
    stopped_by: str = ""


class EventsConsumer:
    """Consumes the backend's events queue until ``max_events`` events were signalled, or
    nothing arrived for ``idle_timeout`` seconds, or :meth:`stop` (SIGTERM/SIGINT in the
    command)."""

    def __init__(
        self,
        *,
        max_events: int | None = None,
        idle_timeout: float | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.settings = pushfleet_settings()
        self.client = get_client()
        self.max_events = max_events
        self.idle_timeout = idle_timeout
        self.prefetch = prefetch or self.settings.events_prefetch
        self.deduper = _PROCESS_DEDUPER
        self._inbox: deque[Message] = deque()
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        """Ends the run after the event being handled (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> RunResult:
        result = RunResult()
        conn: Connection = self.client.connection(heartbeat=self.client.heartbeat)
        self.client._connect(conn)
        try:
            channel = conn.channel()
            queue = events_queue(self.settings, self.client)
            consumer = Consumer(
                channel,
                queues=[queue],
                no_ack=False,
                on_message=self._inbox.append,
                prefetch_count=self.prefetch,
            )
            consumer.consume()
            log.info(
                "consuming %s (bound to %s with job.*)",
                queue.name,
                self.client.topology.events_exchange,
            )
            last_message = time.monotonic()
            while not self._stop.is_set():
                if self.max_events is not None and result.signalled >= self.max_events:
                    result.stopped_by = "max_events"
                    break
                if not self._inbox:
                    tick = _TICK_S
                    if self.idle_timeout is not None:
                        idle_left = self.idle_timeout - (time.monotonic() - last_message)
                        if idle_left <= 0:
                            result.stopped_by = "idle_timeout"
                            break
                        tick = min(tick, idle_left)
                    try:
                        conn.drain_events(timeout=tick)
                    except TimeoutError:
                        conn.heartbeat_check()
                    continue
                last_message = time.monotonic()
                self._handle(self._inbox.popleft(), result)
            else:
                result.stopped_by = "stop"
            consumer.cancel()
        except amqp.exceptions.NotFound as e:
            topology = self.client.topology
            raise topology_missing(topology.events_exchange, topology) from e
        except amqp.exceptions.PreconditionFailed as e:
            raise _queue_conflict(self.settings, e) from e
        except (OperationalError, OSError, amqp.exceptions.AMQPError) as e:
            raise SubscriptionLost(
                f"the events consumer lost its broker connection: {e}; unacked events return "
                "to the queue"
            ) from e
        finally:
            # Prefetched messages not handled go back to the queue with the channel.
            self._inbox.clear()
            conn.release()
        return result

    def _handle(self, message: Message, result: RunResult) -> None:
        try:
            event = Event.from_json(message_body(message))
        except InvalidEvent as e:
            log.error("acking a message that is not a v1 event: %s", e)
            message.ack()
            result.invalid += 1
            return
        if self.deduper.is_duplicate(event):
            message.ack()
            result.duplicates += 1
            return
        responses = push_event.send_robust(sender=Event, event=event)
        failures = [r for _, r in responses if isinstance(r, Exception)]
        if failures:
            for failure in failures:
                log.error(
                    "a push_event receiver failed for event %s (job %s): %r; it will be "
                    "delivered again",
                    event.event_id,
                    event.job_id,
                    failure,
                    exc_info=failure,
                )
            message.requeue()
            result.requeued += 1
            return
        message.ack()
        self.deduper.record(event)
        result.signalled += 1


def run_with_signal_handlers(consumer: EventsConsumer) -> RunResult:
    """Runs ``consumer`` with SIGTERM and SIGINT ending the run after the current event (in
    the main thread; the previous handlers are restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        return consumer.run()

    def handler(signum: int, frame: FrameType | None) -> None:
        consumer.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return consumer.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
