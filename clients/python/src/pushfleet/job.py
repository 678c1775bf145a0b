"""The push job (v1): building it, checking it exactly as a worker will, and its wire form.

A port of ``PushJob::validate`` in ``shared/src/job.rs``: the same checks in the same order
(version, job id, pool, tags, timeout, credentials in ``metadata``, ``source_registry`` and the
source reference, target repository and tags) with the same messages. A job that passes here
is one the worker accepts; one that fails is refused before anything is published, with the
code a failed event would carry. :meth:`PushJob.to_json` writes the bytes ``pushfleet submit``
would write.
"""

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _json, _text
from .credential import CredentialKind, find_credential
from .errors import ErrorCode, PushfleetError
from .pool import DEFAULT_POOL, INVALID_POOL_HINT, invalid_pool_message, is_valid_pool
from .reference import ImageRef, InRegistry, ReferenceError, parse_in_registry

JOB_VERSION = 1
MAX_JOB_BYTES = 64 * 1024
MAX_TAGS = 16
MAX_TIMEOUT_S = 1700
MAX_JOB_ID_LEN = 128
MAX_REGISTRY_NAME_LEN = 128
"""The longest ``source_registry`` (a catalogue key or alias), in UTF-8 bytes as Rust counts."""

_CREDENTIAL_HINT = (
    "remove it: the worker takes credentials from its registry catalogue (what counts as a "
    'credential: docs/jobs.md, "No credentials in jobs")'
)


class JobError(PushfleetError, ValueError):
    """Why a job is not valid: ``kind`` is the Rust variant (``InvalidJobId``,
    ``CredentialField``, ``Reference``, ...), ``code`` the stable error code, ``message`` the
    Rust message (also ``str(error)``) and ``hint`` one line of advice."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        code: ErrorCode = ErrorCode.INVALID_MESSAGE,
        hint: str | None = None,
        field: str | None = None,
        reference_error: ReferenceError | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.hint = hint if hint is not None else code.default_hint
        self.field = field
        self.reference_error = reference_error

    @classmethod
    def reference(cls, field: str, error: ReferenceError) -> "JobError":
        return cls(
            "Reference",
            f"{field}: {error}",
            code=ErrorCode.INVALID_REFERENCE,
            hint=error.hint,
            field=field,
            reference_error=error,
        )

    @classmethod
    def credential_field(cls, path: str) -> "JobError":
        return cls(
            "CredentialField",
            f"{path} looks like a credential; jobs must not carry credentials",
            hint=_CREDENTIAL_HINT,
        )

    @classmethod
    def credential_value(cls, path: str, kind: CredentialKind) -> "JobError":
        return cls(
            "CredentialValue",
            f"{path} holds what looks like {kind}; jobs must not carry credentials",
            hint=_CREDENTIAL_HINT,
        )


@dataclass(frozen=True)
class JobTarget:
    """Where to push: a registry of the worker's catalogue (key or alias, never a host), a
    repository path inside it, and the tags."""

    registry: str
    repository: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class JobOptions:
    """How to push; ``timeout_s`` None means the worker's ``worker.job_timeout_s``."""

    remove_local_tag: bool = False
    timeout_s: int | None = None


@dataclass(frozen=True)
class PushJob:
    """A request to push one local image to one registry under one or more tags.

    Build one with :meth:`new` (or :func:`pushfleet.from_django_step`); :meth:`validate`
    checks it as a worker will, :meth:`to_json` gives its wire form. ``pool`` names the build
    host whose Docker daemon holds ``source`` (None: the default pool); the job is published
    to that pool's queue.

    ``source_registry`` (a key or alias of the workers' registry catalogue, e.g. a CI registry)
    makes it a registry-source job: ``source`` is then ``repository[:tag][@digest]`` in that
    registry (``ci/myapp:0722``, ``ci/myapp@sha256:...``) and the worker copies the image
    registry to registry, with no Docker daemon. None: ``source`` is in the worker's daemon.
    """

    job_id: str
    source: str
    target: JobTarget
    options: JobOptions = JobOptions()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = JOB_VERSION
    pool: str | None = None
    source_registry: str | None = None

    @property
    def pool_name(self) -> str:
        """The job's pool: ``pool``, or the default pool when it names none."""
        return self.pool if self.pool is not None else DEFAULT_POOL

    @classmethod
    def new(
        cls,
        source: str,
        registry: str,
        repository: str,
        tags: Iterable[str] | None = None,
        *,
        job_id: str | None = None,
        remove_local_tag: bool = False,
        timeout_s: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        pool: str | None = None,
        source_registry: str | None = None,
    ) -> "PushJob":
        """A job with a fresh UUID ``job_id`` unless one is given; without ``tags``, the
        source's own tag (``latest`` when it has none), as ``pushfleet submit`` does (with
        ``source_registry``, as ``pushfleet submit --from-registry`` does: the tag written in
        the registry reference, else ``latest``). The job is validated."""
        if tags is None:
            try:
                if source_registry is None:
                    tag_list = [ImageRef.parse(source).tag_or_latest()]
                else:
                    in_registry = parse_in_registry(source)
                    tag_list = [in_registry.tag if in_registry.tag is not None else "latest"]
            except ReferenceError as e:
                raise JobError.reference("source", e) from e
        else:
            tag_list = list(tags)
        job = cls(
            job_id=job_id if job_id is not None else str(uuid.uuid4()),
            source=source,
            target=JobTarget(registry, repository, tuple(tag_list)),
            options=JobOptions(remove_local_tag, timeout_s),
            metadata=dict(metadata or {}),
            pool=pool,
            source_registry=source_registry,
        )
        job.validate()
        return job

    def validate(self) -> ImageRef | InRegistry:
        """Checks the job as ``PushJob::validate`` does; returns the source: the normalised
        :class:`ImageRef` of a daemon image, or the :class:`InRegistry` reference of a
        registry-source job (``source_registry`` set).

        Raises :class:`JobError` for the first check that fails.
        """
        if self.version != JOB_VERSION:
            raise JobError(
                "UnsupportedVersion",
                f"unsupported job version {self.version}: this worker reads version {JOB_VERSION}",
            )
        if not is_valid_job_id(self.job_id):
            raise JobError(
                "InvalidJobId",
                f"job_id must be 1 to {MAX_JOB_ID_LEN} characters of letters, digits, '.', '_', "
                "':', '-'",
            )
        if self.pool is not None and not is_valid_pool(self.pool):
            raise JobError("InvalidPool", invalid_pool_message(self.pool), hint=INVALID_POOL_HINT)
        tags = self.target.tags
        if not tags:
            raise JobError("NoTags", "target.tags is empty: name at least one tag to push")
        if len(tags) > MAX_TAGS:
            raise JobError(
                "TooManyTags",
                f"target.tags has {len(tags)} tags; at most {MAX_TAGS} are allowed",
            )
        for i, tag in enumerate(tags):
            if tag in tags[:i]:
                raise JobError("DuplicateTag", f"target.tags names {_text.debug_str(tag)} twice")
        timeout = self.options.timeout_s
        if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT_S:
            raise JobError(
                "TimeoutOutOfRange",
                f"options.timeout_s must be between 1 and {MAX_TIMEOUT_S}, got {timeout}",
            )
        finding = find_credential(self.metadata, "metadata")
        if finding is not None:
            if finding.kind is None:
                raise JobError.credential_field(finding.path)
            raise JobError.credential_value(finding.path, finding.kind)
        source: ImageRef | InRegistry
        if self.source_registry is not None:
            # Bytes, as Rust's `str::len` counts them (the schema counts characters).
            length = len(self.source_registry.encode("utf-8", "surrogatepass"))
            if not 0 < length <= MAX_REGISTRY_NAME_LEN:
                raise JobError(
                    "InvalidSourceRegistry",
                    f"source_registry must be 1 to {MAX_REGISTRY_NAME_LEN} characters: a "
                    "catalogue key or alias",
                )
        try:
            if self.source_registry is None:
                source = ImageRef.parse(self.source)
            else:
                source = parse_in_registry(self.source)
        except ReferenceError as e:
            raise JobError.reference("source", e) from e
        for i, tag in enumerate(tags):
            try:
                ImageRef.check_target(self.target.repository, tag)
            except ReferenceError as e:
                field_name = (
                    f"target.tags[{i}]"
                    if e.kind in ("InvalidTag", "TagTooLong")
                    else "target.repository"
                )
                raise JobError.reference(field_name, e) from e
        return source

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON data, as it travels (``timeout_s`` left out when unset)."""
        data: dict[str, Any] = json.loads(self.to_json())
        return data

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON, byte-identical to what ``pushfleet submit``
        publishes for the same job (fields in the Rust struct's order, ``source_registry`` and
        ``pool`` left out when None, ``metadata`` keys sorted).

        Raises :class:`JobError` (``invalid_message``) for metadata that has no JSON form
        (non-finite floats, lone surrogates, non-string keys) or when the job is larger than
        the workers' 64 KiB limit.
        """
        options: list[tuple[str, object]] = [("remove_local_tag", self.options.remove_local_tag)]
        if self.options.timeout_s is not None:
            options.append(("timeout_s", self.options.timeout_s))
        head: list[tuple[str, object]] = [
            ("version", self.version),
            ("job_id", self.job_id),
            ("source", self.source),
        ]
        if self.source_registry is not None:
            head.append(("source_registry", self.source_registry))
        if self.pool is not None:
            head.append(("pool", self.pool))
        wire = _json.Fields(
            [
                *head,
                (
                    "target",
                    _json.Fields(
                        [
                            ("registry", self.target.registry),
                            ("repository", self.target.repository),
                            ("tags", list(self.target.tags)),
                        ]
                    ),
                ),
                ("options", _json.Fields(options)),
                ("metadata", dict(self.metadata)),
            ]
        )
        try:
            text = _json.encode(wire)
            body = text.encode("utf-8")
        except (TypeError, ValueError) as e:
            raise JobError("NotJson", f"the job cannot be written as JSON: {e}") from e
        if len(body) > MAX_JOB_BYTES:
            raise JobError(
                "TooLarge",
                f"message is {len(body)} bytes, more than the {MAX_JOB_BYTES}-byte limit",
            )
        return body

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PushJob":
        """A job from its JSON data (e.g. a saved body), checked against
        ``schemas/job.schema.json`` and then as a worker checks it."""
        from .schema import validate_job_data

        validate_job_data(data)
        target = data["target"]
        options = data.get("options") or {}
        job = cls(
            job_id=data["job_id"],
            source=data["source"],
            target=JobTarget(target["registry"], target["repository"], tuple(target["tags"])),
            options=JobOptions(
                bool(options.get("remove_local_tag", False)), options.get("timeout_s")
            ),
            metadata=dict(data.get("metadata") or {}),
            version=data["version"],
            pool=data.get("pool"),
            source_registry=data.get("source_registry"),
        )
        job.validate()
        return job


def is_valid_job_id(job_id: str) -> bool:
    """1 to 128 of ASCII letters, digits, ``.``, ``_``, ``:``, ``-``."""
    return 0 < len(job_id) <= MAX_JOB_ID_LEN and all(
        _text.is_ascii_alnum(c) or c in "._:-" for c in job_id
    )
