"""The old Django docker-push step parameters as a v1 job: a port of
``shared/src/django.rs`` (``DjangoPushStep::to_job``), giving exactly what the Rust mapping
gives, errors included. Both are tested against ``schemas/vectors/django.json``.

- ``image`` without a tag takes ``tag`` as the source tag: ``myapp`` + ``0722`` -> ``myapp:0722``
  (never ``myapp:latest``); a registry port is not a tag (``localhost:5000/myapp``).
- ``image`` with a tag or digest keeps it as the source, and ``tag`` names the target tag.
- With no (or an empty) ``tag``, the source's own tag is the target tag (``latest`` if none).
- The target repository is ``<project path>/<last component of the image name>``.
- ``registry_id`` (a non-negative integer or a non-empty string) becomes ``target.registry``.
- ``build_host``, when given (not null, not empty), becomes the job's ``pool``: the job goes to
  the workers on that build host, whose daemon holds the image.
- Every parameter is echoed under ``metadata.django`` with ``project_path``; ``tag``,
  ``project_id`` and ``docker_config`` given as ``null`` are left out, as in Rust.
- A ``docker_config`` (or any parameter) holding credentials is refused.
"""

import uuid
from collections.abc import Mapping
from typing import Any

from . import _text
from .credential import find_credential_key
from .errors import ErrorCode, PushfleetError
from .job import JOB_VERSION, JobError, JobOptions, JobTarget, PushJob
from .reference import ReferenceError, source_reference

_U64_MAX = 2**64 - 1
_KNOWN = ("image", "tag", "registry_id", "project_id", "docker_config", "build_host")


class DjangoMappingError(PushfleetError, ValueError):
    """Why step parameters cannot become a job.

    ``kind`` is the Rust variant: ``Reference`` (image/tag), ``RegistryId``, ``ProjectPath``,
    ``Job`` (the mapped job is invalid, e.g. credentials; ``job_error`` holds the
    :class:`~pushfleet.JobError`), or ``Params`` (the parameters are not a step at all: a wrong
    type or a missing ``image``/``registry_id``; Rust reports that as a usage error without a
    code, here it is ``invalid_message``). ``variant`` adds the inner kind
    (``Reference/InvalidTag``, ``Job/CredentialField``), as the shared vectors name it.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        code: ErrorCode,
        hint: str,
        variant: str | None = None,
        job_error: JobError | None = None,
        reference_error: ReferenceError | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.variant = variant if variant is not None else kind
        self.message = message
        self.code = code
        self.hint = hint
        self.job_error = job_error
        self.reference_error = reference_error


_STEP_HINT = "check the step's image, tag and registry_id"


_PARAMS_HINT = (
    "give the step's parameters as a JSON object with a string `image`, a `registry_id` and "
    "optionally a string `tag`"
)
_PROJECT_PATH_HINT = (
    "the project path is lowercase path components joined by `/`, e.g. `production` or `team-a/sub`"
)


def _params_error(detail: str) -> DjangoMappingError:
    message = f"the step parameters are not a docker-push step: {detail}"
    return DjangoMappingError("Params", message, code=ErrorCode.INVALID_MESSAGE, hint=_PARAMS_HINT)


def _project_path_error(project: str) -> DjangoMappingError:
    message = f"project path {_text.debug_str(project)} is not a valid repository namespace"
    code = ErrorCode.INVALID_REFERENCE
    return DjangoMappingError("ProjectPath", message, code=code, hint=_PROJECT_PATH_HINT)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array"


def from_django_step(
    params: Mapping[str, Any],
    project: str,
    *,
    job_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> PushJob:
    """The v1 job for the Django step ``params`` pushing into the project path ``project``
    (e.g. ``production``).

    ``job_id`` defaults to a new UUID; ``metadata`` is the caller's own (``pipeline_run``,
    ``step``), and the step parameters are added under ``metadata.django``. Raises
    :class:`DjangoMappingError` with the code a failed event would carry.
    """
    if not isinstance(params, Mapping):
        raise _params_error(f"expected an object, got {_json_type(params)}")
    image = params.get("image")
    if "image" not in params:
        raise _params_error("missing field `image`")
    if not isinstance(image, str):
        raise _params_error(f"`image` must be a string, not {_json_type(image)}")
    raw_tag = params.get("tag")
    if raw_tag is not None and not isinstance(raw_tag, str):
        raise _params_error(f"`tag` must be a string, not {_json_type(raw_tag)}")
    build_host = params.get("build_host")
    if build_host is not None and not isinstance(build_host, str):
        raise _params_error(f"`build_host` must be a string, not {_json_type(build_host)}")
    if "registry_id" not in params:
        raise _params_error("missing field `registry_id`")
    registry_id = params["registry_id"]
    project_id = params.get("project_id")
    docker_config = params.get("docker_config")
    job_id = job_id if job_id is not None else str(uuid.uuid4())

    tag = raw_tag if raw_tag else None
    try:
        source = source_reference(image, tag)
    except ReferenceError as e:
        raise DjangoMappingError(
            "Reference",
            f"image/tag: {e}",
            code=ErrorCode.INVALID_REFERENCE,
            hint=e.hint,
            variant=f"Reference/{e.kind}",
            reference_error=e,
        ) from e
    target_tag = tag if tag is not None else source.tag_or_latest()
    project_trimmed = project.strip("/")
    if not project_trimmed:
        raise _project_path_error(project)
    name = source.repository.rsplit("/", 1)[-1]

    registry: str
    if isinstance(registry_id, int) and not isinstance(registry_id, bool):
        if not 0 <= registry_id <= _U64_MAX:
            raise _registry_id_error()
        registry = str(registry_id)
    elif isinstance(registry_id, str) and _text.trim(registry_id):
        registry = _text.trim(registry_id)
    else:
        raise _registry_id_error()

    if isinstance(docker_config, Mapping):
        path = find_credential_key(docker_config, "docker_config")
        if path is not None:
            error = JobError.credential_field(path)
            raise _job_error(error)

    django: dict[str, Any] = {"image": image}
    if raw_tag is not None:
        django["tag"] = raw_tag
    django["registry_id"] = registry_id
    if project_id is not None:
        django["project_id"] = project_id
    django["project_path"] = project
    if docker_config is not None:
        django["docker_config"] = docker_config
    if build_host is not None:
        django["build_host"] = build_host
    for key, value in params.items():
        if key not in _KNOWN:
            django[key] = value
    job_metadata = dict(metadata or {})
    job_metadata["django"] = django

    job = PushJob(
        job_id=job_id,
        source=source.familiar(),
        target=JobTarget(registry, f"{project_trimmed}/{name}", (target_tag,)),
        options=JobOptions(),
        metadata=job_metadata,
        version=JOB_VERSION,
        pool=build_host if build_host else None,
    )
    try:
        job.validate()
    except JobError as e:
        if e.kind == "Reference" and e.field == "target.repository":
            raise _project_path_error(project) from e
        raise _job_error(e) from e
    return job


def _registry_id_error() -> DjangoMappingError:
    return DjangoMappingError(
        "RegistryId",
        "registry_id must be a registry id (integer or non-empty string)",
        code=ErrorCode.INVALID_MESSAGE,
        hint=_STEP_HINT,
    )


def _job_error(error: JobError) -> DjangoMappingError:
    return DjangoMappingError(
        "Job",
        error.message,
        code=error.code,
        hint=error.hint,
        variant=f"Job/{error.kind}",
        job_error=error,
    )
