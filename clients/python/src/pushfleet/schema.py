"""The JSON Schemas of the wire contracts, shipped inside the package.

``pushfleet/schemas/*.schema.json`` are copies of the repository's ``schemas/`` (generated from
the Rust types); a test fails when they differ by a byte. Jobs are checked against the job
schema before they are published, events against the event schema when they are read.
"""

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

from .job import JobError

JOB_SCHEMA = "job.schema.json"
EVENT_SCHEMA = "event.schema.json"
CONTROL_SCHEMA = "control.schema.json"


def schema_text(name: str) -> bytes:
    """The bytes of a shipped schema file (``job.schema.json``, ...)."""
    return resources.files("pushfleet").joinpath("schemas", name).read_bytes()


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text(name))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def schema_errors(name: str, data: Any) -> list[str]:
    """Every way ``data`` breaks the schema ``name``, as ``path: message`` lines."""
    errors = sorted(validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def validate_job_data(data: Any) -> None:
    """Raises :class:`~pushfleet.JobError` (``invalid_message``) unless ``data`` matches
    ``schemas/job.schema.json``."""
    errors = schema_errors(JOB_SCHEMA, data)
    if errors:
        raise JobError(
            "Shape", "the job does not match schemas/job.schema.json: " + "; ".join(errors)
        )
