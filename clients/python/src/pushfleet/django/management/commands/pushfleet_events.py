"""``manage.py pushfleet_events``: turn the fleet's events into ``push_event`` signals.

Runs until SIGTERM/SIGINT, or for a bounded run (tests, cron) until ``--max-events`` events
were signalled or nothing arrived for ``--idle-timeout`` seconds.
"""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pushfleet.django.consumer import EventsConsumer, declare_events_queue, run_with_signal_handlers
from pushfleet.errors import PushfleetError


class Command(BaseCommand):
    help = (
        "Consume pushfleet events through this backend's durable queue and send the push_event "
        "signal for each (acked after the receivers return)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-events",
            type=int,
            default=None,
            help="exit after this many events were signalled",
        )
        parser.add_argument(
            "--idle-timeout",
            type=float,
            default=None,
            help="exit when no event arrived for this many seconds",
        )
        parser.add_argument(
            "--prefetch",
            type=int,
            default=None,
            help="unacked events held at once (default: PUSHFLEET['EVENTS_PREFETCH'], 10)",
        )
        parser.add_argument(
            "--declare-only",
            action="store_true",
            help="declare and bind the events queue, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["declare_only"]:
                name = declare_events_queue()
                self.stdout.write(f"declared {name}")
                return
            consumer = EventsConsumer(
                max_events=options["max_events"],
                idle_timeout=options["idle_timeout"],
                prefetch=options["prefetch"],
            )
            result = run_with_signal_handlers(consumer)
        except (PushfleetError, ImproperlyConfigured) as e:
            raise CommandError(str(e)) from e
        self.stdout.write(
            f"signalled {result.signalled} event(s), {result.duplicates} duplicate(s), "
            f"{result.invalid} invalid, {result.requeued} requeued; stopped by "
            f"{result.stopped_by}"
        )
