"""``settings.PUSHFLEET``, read and checked, and the :class:`pushfleet.Client` it describes."""

import functools
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..client import Client
from ..topology import DEFAULT_PREFIX

_KEYS = {
    "URL",
    "TOPOLOGY_PREFIX",
    "SIGNING_KEY_FILE",
    "EVENTS_QUEUE",
    "EVENTS_DELIVERY_LIMIT",
    "EVENTS_PREFETCH",
    "CONFIRM_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_RETRIES",
}


@dataclass(frozen=True)
class PushfleetSettings:
    """The integration's settings, with their defaults."""

    url: str | tuple[str, ...]
    topology_prefix: str = DEFAULT_PREFIX
    signing_key_file: str | None = None
    events_queue: str | None = None
    events_delivery_limit: int = 20
    events_prefetch: int = 10
    confirm_timeout: float = 15.0
    connect_timeout: float = 10.0
    max_retries: int = 3

    @property
    def events_queue_name(self) -> str:
        """The backend's durable events queue (default ``<prefix>.events.django``)."""
        return self.events_queue or f"{self.topology_prefix}.events.django"


def pushfleet_settings() -> PushfleetSettings:
    """``settings.PUSHFLEET`` checked; unknown keys are errors (a misspelt key must not be
    ignored)."""
    raw: Any = getattr(settings, "PUSHFLEET", None)
    if not isinstance(raw, dict):
        raise ImproperlyConfigured('settings.PUSHFLEET must be a dict with at least "URL"')
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.PUSHFLEET: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_KEYS))})"
        )
    url = raw.get("URL")
    if isinstance(url, (list, tuple)) and url and all(isinstance(u, str) for u in url):
        url = tuple(url)
    elif not isinstance(url, str) or not url:
        raise ImproperlyConfigured(
            'settings.PUSHFLEET["URL"] must be an AMQP URL or a list of them'
        )
    try:
        return PushfleetSettings(
            url=url,
            topology_prefix=str(raw.get("TOPOLOGY_PREFIX") or DEFAULT_PREFIX),
            signing_key_file=raw.get("SIGNING_KEY_FILE"),
            events_queue=raw.get("EVENTS_QUEUE"),
            events_delivery_limit=int(raw.get("EVENTS_DELIVERY_LIMIT", 20)),
            events_prefetch=int(raw.get("EVENTS_PREFETCH", 10)),
            confirm_timeout=float(raw.get("CONFIRM_TIMEOUT", 15.0)),
            connect_timeout=float(raw.get("CONNECT_TIMEOUT", 10.0)),
            max_retries=int(raw.get("MAX_RETRIES", 3)),
        )
    except (TypeError, ValueError) as e:
        raise ImproperlyConfigured(f"settings.PUSHFLEET: {e}") from e


@functools.cache
def get_client() -> Client:
    """The process's :class:`pushfleet.Client` for ``settings.PUSHFLEET`` (it holds no
    connection, so one per process is enough and safe across threads)."""
    s = pushfleet_settings()
    return Client(
        list(s.url) if isinstance(s.url, tuple) else s.url,
        topology_prefix=s.topology_prefix,
        signing_key_file=s.signing_key_file,
        confirm_timeout=s.confirm_timeout,
        connect_timeout=s.connect_timeout,
        max_retries=s.max_retries,
    )


@receiver(setting_changed)
def _forget_client(*, setting: str, **kwargs: Any) -> None:
    if setting == "PUSHFLEET":
        get_client.cache_clear()
