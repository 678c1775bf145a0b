"""Result events (v1), as workers publish them to ``<prefix>.events`` with routing key
``job.<state>``: ``schemas/event.schema.json`` as typed dataclasses.

A job's life is ``accepted`` -> ``progress``* -> one terminal state (``succeeded``, ``failed``,
``dead``); ``retrying`` ends one attempt and announces the next. Delivery is at-least-once:
consumers dedupe by ``event_id`` and take the first terminal event of a ``job_id`` as its
outcome (:class:`EventDeduper` does both).

Events are checked against the shipped event schema, as strictly as the Rust side reads them
(unknown fields and unknown codes are refused, as ``Event::from_slice`` refuses them): an
event a newer worker writes in a newer format is reported as :class:`InvalidEvent` rather than
half read.
"""

import builtins
import datetime
import enum
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, PushfleetError
from .schema import EVENT_SCHEMA, schema_errors


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    ACCEPTED = "accepted"
    PROGRESS = "progress"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"

    @property
    def is_terminal(self) -> bool:
        """Whether no further event follows for the job."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD)


class TagPath(enum.StrEnum):
    """How a target tag came to hold the image (``succeeded``)."""

    PUSH = "push"
    """The Docker daemon pushed the image under the tag."""
    RETAG = "retag"
    """The repository already held the manifest: the worker put its exact bytes under the tag."""
    NOOP = "noop"
    """The tag already pointed at the manifest: nothing was written."""
    COPY = "copy"
    """The image was copied from the job's ``source_registry`` and its manifest put under the
    tag by the worker, with no daemon (see :class:`CopyInfo`)."""


class InvalidEvent(PushfleetError, ValueError):
    """A message on the events exchange that is not a v1 event."""


@dataclass(frozen=True)
class EventError:
    """What went wrong (``failed``, ``retrying``, ``dead``)."""

    code: ErrorCode
    message: str
    retryable: bool
    hint: str


@dataclass(frozen=True)
class Progress:
    """Bytes moved so far (``progress``)."""

    phase: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class PhaseTimings:
    """Milliseconds per stage of an attempt (``succeeded``, ``failed``)."""

    resolve_ms: int | None = None
    preflight_ms: int | None = None
    tag_ms: int | None = None
    push_ms: int | None = None
    retag_ms: int | None = None
    copy_ms: int | None = None
    verify_ms: int | None = None
    untag_ms: int | None = None
    total_ms: int | None = None


@dataclass(frozen=True)
class CopyInfo:
    """What a registry-to-registry copy did (``succeeded`` events of ``source_registry``
    jobs, ``path`` ``copy``)."""

    source_registry: str
    """The catalogue key of the source registry."""
    media_type: str
    """The media type of the copied manifest (an image manifest, or an index of several)."""
    blobs_skipped: int
    """Blobs the target repository already had."""
    blobs_mounted: int
    """Blobs mounted from the source repository (same registry): nothing transferred."""
    blobs_streamed: int
    """Blobs streamed from the source registry into the target."""
    bytes_total: int
    """Bytes of all the image's blobs."""
    bytes_streamed: int
    """Bytes streamed from source to target (the rest was skipped or mounted)."""
    children: tuple[str, ...] = ()
    """The child manifests of an index, by digest, in index order (empty for an image)."""

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "CopyInfo":
        return cls(
            source_registry=d["source_registry"],
            media_type=d["media_type"],
            blobs_skipped=d["blobs_skipped"],
            blobs_mounted=d["blobs_mounted"],
            blobs_streamed=d["blobs_streamed"],
            bytes_total=d["bytes_total"],
            bytes_streamed=d["bytes_streamed"],
            children=tuple(d.get("children") or ()),
        )


@dataclass(frozen=True)
class RetryInfo:
    """When the next attempt of a ``retrying`` job is due."""

    delay_ms: int
    next_attempt: int
    next_attempt_at: datetime.datetime


@dataclass(frozen=True)
class TraceContext:
    """W3C trace context of the attempt, when the job carried ``traceparent``."""

    traceparent: str
    parent_span_id: str
    tracestate: str | None = None


@dataclass(frozen=True)
class Event:
    """One event about one job. ``raw`` keeps the event as received (JSON data)."""

    version: int
    event_id: str
    state: JobState
    attempt: int
    worker: str
    at: datetime.datetime
    job_id: str | None = None
    registry: str | None = None
    source: str | None = None
    targets: tuple[str, ...] = ()
    digest: str | None = None
    size: int | None = None
    bytes: int | None = None
    already_present: bool | None = None
    path: TagPath | None = None
    tag_paths: dict[str, TagPath] = field(default_factory=dict)
    #: How the preflight established the push right (``succeeded``): ``token_claims``,
    #: ``upload_probe`` or ``cached``.
    preflight_method: str | None = None
    #: What the copy did (``succeeded``, when ``path`` is ``copy``).
    copy: CopyInfo | None = None
    progress: Progress | None = None
    phases: PhaseTimings | None = None
    retry: RetryInfo | None = None
    error: EventError | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    trace: TraceContext | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @classmethod
    def from_json(cls, body: builtins.bytes | str) -> "Event":
        """Parses and checks an event body; raises :class:`InvalidEvent`."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidEvent(f"the event is not JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "Event":
        """An event from JSON data; raises :class:`InvalidEvent`."""
        errors = schema_errors(EVENT_SCHEMA, data)
        if errors:
            raise InvalidEvent("not a v1 event: " + "; ".join(errors))
        try:
            return cls._build(data)
        except ValueError as e:
            raise InvalidEvent(f"not a v1 event: {e}") from e

    @classmethod
    def _build(cls, d: dict[str, Any]) -> "Event":
        error = d.get("error")
        progress = d.get("progress")
        phases = d.get("phases")
        retry = d.get("retry")
        trace = d.get("trace")
        copy = d.get("copy")
        return cls(
            version=d["version"],
            event_id=d["event_id"],
            state=JobState(d["state"]),
            attempt=d["attempt"],
            worker=d["worker"],
            at=_timestamp(d["at"]),
            job_id=d.get("job_id"),
            registry=d.get("registry"),
            source=d.get("source"),
            targets=tuple(d.get("targets") or ()),
            digest=d.get("digest"),
            size=d.get("size"),
            bytes=d.get("bytes"),
            already_present=d.get("already_present"),
            path=TagPath(d["path"]) if d.get("path") else None,
            tag_paths={k: TagPath(v) for k, v in (d.get("tag_paths") or {}).items()},
            preflight_method=(d.get("preflight") or {}).get("method"),
            copy=CopyInfo._from_dict(copy) if copy is not None else None,
            progress=Progress(**progress) if progress else None,
            phases=PhaseTimings(**phases) if phases else None,
            retry=RetryInfo(
                retry["delay_ms"], retry["next_attempt"], _timestamp(retry["next_attempt_at"])
            )
            if retry
            else None,
            error=EventError(
                ErrorCode(error["code"]), error["message"], error["retryable"], error["hint"]
            )
            if error
            else None,
            metadata=dict(d.get("metadata") or {}),
            trace=TraceContext(**trace) if trace else None,
            raw=d,
        )


def _timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 time; fractions beyond microseconds (Rust writes nanoseconds) are cut."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:digits][:6] + rest[digits:]
        text = f"{head}.{rest}"
    return datetime.datetime.fromisoformat(text.replace("z", "Z"))


class EventDeduper:
    """Dedupes events by ``event_id`` and keeps the first terminal event of each job.

    Remembers the last ``capacity`` event ids and terminal job ids (oldest forgotten first),
    so a long-running consumer stays bounded.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._outcomes: OrderedDict[str, Event] = OrderedDict()

    def is_duplicate(self, event: Event) -> bool:
        """Whether ``event_id`` was recorded already."""
        return event.event_id in self._seen

    def record(self, event: Event) -> None:
        """Records the event's id (and, for the first terminal event of its job, the outcome)."""
        self._remember(self._seen, event.event_id, None)
        if event.is_terminal and event.job_id is not None and event.job_id not in self._outcomes:
            self._remember(self._outcomes, event.job_id, event)

    def outcome(self, job_id: str) -> Event | None:
        """The first terminal event recorded for ``job_id``."""
        return self._outcomes.get(job_id)

    def _remember(self, store: "OrderedDict[str, Any]", key: str, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.capacity:
            store.popitem(last=False)
