"""The Django step mapping against the vectors the Rust mapping is tested with
(``schemas/vectors/django.json``, checked by ``shared/tests/django_vectors.rs``): the same job,
byte for byte, or the same error variant, code, message and hint."""

import json
from typing import Any

import pytest
from support import REPO_ROOT

from pushfleet import DjangoMappingError, ErrorCode, PushJob, from_django_step
from pushfleet.schema import JOB_SCHEMA, schema_errors

VECTORS_FILE = REPO_ROOT / "schemas" / "vectors" / "django.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["cases"]


def outcome(case: dict[str, Any]) -> dict[str, Any]:
    """The mapping's result in the vectors' ``expect`` form."""
    try:
        job = from_django_step(
            case["params"], case["project"], job_id=case["job_id"], metadata=case.get("metadata")
        )
    except DjangoMappingError as e:
        if e.kind == "Params":
            return {"error": {"variant": "Params", "code": e.code.value}}
        return {
            "error": {
                "variant": e.variant,
                "code": e.code.value,
                "message": e.message,
                # Rust has hints for reference and job errors only; ours for the others are
                # our own.
                "hint": e.hint if e.kind in ("Reference", "Job") else None,
            }
        }
    wire = job.to_json()
    return {"job": json.loads(wire), "wire": wire.decode("utf-8"), "source": str(job.validate())}


def test_there_are_enough_vectors() -> None:
    assert len(CASES) >= 300
    assert sum("job" in c["expect"] for c in CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_mapping_matches_the_rust_mapping(case: dict[str, Any]) -> None:
    assert outcome(case) == case["expect"]


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if "job" in c["expect"]],
    ids=[c["name"] for c in CASES if "job" in c["expect"]],
)
def test_mapped_jobs_match_the_schema_and_round_trip(case: dict[str, Any]) -> None:
    job = from_django_step(
        case["params"], case["project"], job_id=case["job_id"], metadata=case.get("metadata")
    )
    data = job.to_dict()
    assert schema_errors(JOB_SCHEMA, data) == []
    assert PushJob.from_dict(data).to_json() == job.to_json()


def test_every_error_has_a_code_message_and_hint() -> None:
    for case in CASES:
        if "error" not in case["expect"]:
            continue
        with pytest.raises(DjangoMappingError) as caught:
            from_django_step(
                case["params"],
                case["project"],
                job_id=case["job_id"],
                metadata=case.get("metadata"),
            )
        e = caught.value
        assert isinstance(e.code, ErrorCode)
        assert e.message
        assert str(e) == e.message
        assert e.hint
