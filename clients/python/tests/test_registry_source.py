"""Registry-source jobs (``source_registry``) and copy events, against the Rust contract:
``ImageRef::parse_in_registry`` and ``PushJob::validate`` (``shared/src/reference.rs``,
``shared/src/job.rs``), the wire form ``pushfleet submit --from-registry`` publishes, and the
``copy`` object of ``succeeded`` events (``shared/src/event.rs``)."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import support
from support import REPO_ROOT

import pushfleet
from pushfleet import (
    CopyInfo,
    ErrorCode,
    Event,
    ImageRef,
    InRegistry,
    InvalidEvent,
    JobError,
    JobTarget,
    PushJob,
    ReferenceError,
    TagPath,
    parse_in_registry,
)
from pushfleet.job import MAX_REGISTRY_NAME_LEN
from pushfleet.reference import REPOSITORY_MAX_LEN
from pushfleet.schema import JOB_SCHEMA, schema_errors

EXAMPLES = REPO_ROOT / "schemas" / "examples"
HEX64 = "5a1e0c2b8d7f4e3a9b6c1d0e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a"
DIGEST = f"sha256:{HEX64}"


def test_a_reference_inside_a_registry_has_no_host_and_checks_each_part() -> None:
    # shared/src/reference.rs, `a_reference_inside_a_registry_has_no_host_and_checks_each_part`.
    digest = "sha256:" + "a" * 64
    tagged = parse_in_registry("ci/myapp:0722")
    assert tagged == InRegistry("ci/myapp", "0722", None)
    assert tagged.reference() == "0722"
    assert tagged.at("r.example.com:5000") == "r.example.com:5000/ci/myapp:0722"

    pinned = parse_in_registry(f"ci/myapp@{digest}")
    assert pinned.tag is None
    assert pinned.reference() == digest
    assert pinned.at("h") == f"h/ci/myapp@{digest}"

    assert parse_in_registry("myapp").reference() == "latest"
    # A first component with a dot is a path component here, not a host.
    assert parse_in_registry("ci.team/app:1").repository == "ci.team/app"

    for bad in (
        "",
        "CI/app:1",
        "ci/app:",
        "ci/app:-x",
        "ci//app:1",
        "/ci/app",
        "ci/app@sha256:abc",
        "ci/app:1 ",
        "localhost:5000/ci/app:1",
    ):
        with pytest.raises(ReferenceError):
            parse_in_registry(bad)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("", "Empty", "the image reference is empty"),
        (
            "CI/app:1",
            "UppercaseRepository",
            "invalid image reference `CI/app`: repository name `CI/app` must be lowercase",
        ),
        ("ci/app:", "InvalidTag", "invalid tag `` in `ci/app:`: the tag is empty"),
        (
            "ci/app:-x",
            "InvalidTag",
            "invalid tag `-x` in `ci/app:-x`: a tag cannot start with `.` or `-`",
        ),
        (
            "ci//app:1",
            "InvalidRepository",
            "invalid repository `ci//app`: it has an empty path component (`//`)",
        ),
        ("/ci/app", "InvalidRepository", "invalid repository `/ci/app`: it starts with `/`"),
        (
            "ci/app@sha256:abc",
            "InvalidDigest",
            "invalid digest `sha256:abc` in `ci/app@sha256:abc`: a sha256 digest has 64 hex "
            "characters, this one has 3",
        ),
        (
            "ci/app:1 ",
            "SurroundingWhitespace",
            'the image reference "ci/app:1 " starts or ends with whitespace',
        ),
        (
            "ci/a\tb:1",
            "InvalidCharacter",
            "the image reference \"ci/a\\tb:1\" contains '\\t' at position 4; whitespace and "
            "control characters are not allowed",
        ),
        (
            "localhost:5000/ci/app:1",
            "InvalidRepository",
            "invalid repository `localhost:5000/ci/app`: a repository has no tag or digest: pass "
            "the tag separately",
        ),
        (
            "ci/app:1:2",
            "InvalidTag",
            "invalid tag `1:2` in `ci/app:1:2`: a reference has at most one `:tag`, and a tag "
            "cannot contain `:`",
        ),
        (
            "[::1]:5443",
            "InvalidFormat",
            "invalid image reference `[::1]:5443`: a registry alone is not an image: add the "
            "repository, e.g. `[::1]:5443/myapp`",
        ),
        (
            f"ci/app@{DIGEST}@x",
            "InvalidDigest",
            f"invalid digest `{DIGEST}@x` in `ci/app@{DIGEST}@x`: `@` is not a hex digit",
        ),
        (
            "ci/a..b:1",
            "InvalidRepository",
            "invalid repository `ci/a..b`: `ci/a..b` is not a valid repository path: each "
            "`/`-separated component is lowercase letters and digits, joined by one `.`, one or "
            "two `_`, or dashes",
        ),
    ],
    ids=repr,
)
def test_each_refusal_has_the_rust_kind_and_message(text: str, kind: str, message: str) -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_in_registry(text)
    assert caught.value.kind == kind
    assert str(caught.value) == message
    assert caught.value.hint


def test_the_digest_is_checked_before_the_tag_and_the_tag_before_the_repository() -> None:
    # Parts are judged in the Rust order: digest, tag, repository, then the length bound.
    with pytest.raises(ReferenceError) as caught:
        parse_in_registry("CI/app:-x@sha256:abc")
    assert caught.value.kind == "InvalidDigest"
    with pytest.raises(ReferenceError) as caught:
        parse_in_registry(f"CI/app:-x@{DIGEST}")
    assert caught.value.kind == "InvalidTag"
    with pytest.raises(ReferenceError) as caught:
        parse_in_registry("CI/app:1")
    assert caught.value.kind == "UppercaseRepository"


def test_the_repository_length_bound_is_the_one_of_job_targets() -> None:
    at_bound = "team/" + "a" * (REPOSITORY_MAX_LEN - 5)
    assert parse_in_registry(f"{at_bound}:1").repository == at_bound
    with pytest.raises(ReferenceError) as in_registry:
        parse_in_registry(f"{at_bound}a:1")
    assert in_registry.value.kind == "RepositoryTooLong"
    with pytest.raises(ReferenceError) as target:
        ImageRef.check_target(f"{at_bound}a", "1")
    assert str(in_registry.value) == str(target.value)


def test_an_in_registry_reference_keeps_tag_and_digest_as_written() -> None:
    both = parse_in_registry(f"ci/myapp:0722@{DIGEST}")
    assert both == InRegistry("ci/myapp", "0722", DIGEST)
    assert both.reference() == DIGEST
    assert both.at("ci.example.com:5000") == f"ci.example.com:5000/ci/myapp:0722@{DIGEST}"
    assert str(both) == f"ci/myapp:0722@{DIGEST}"
    # No Docker Hub normalisation: a single component stays as it is.
    assert parse_in_registry("myapp") == InRegistry("myapp")
    assert str(parse_in_registry("myapp")) == "myapp"


def job(source: str, source_registry: str | None, **kwargs: Any) -> PushJob:
    return PushJob(
        job_id="j-1",
        source=source,
        target=JobTarget("harbor", "production/myapp", ("0722",)),
        source_registry=source_registry,
        **kwargs,
    )


def test_a_registry_source_job_validates_to_its_in_registry_reference() -> None:
    assert job("ci/myapp:0722", "ci").validate() == InRegistry("ci/myapp", "0722", None)
    # The same source without source_registry is a daemon image, normalised.
    assert job("ci/myapp:0722", None).validate() == ImageRef.parse("ci/myapp:0722")
    # With source_registry, a host in the source is an error; without, it is the registry.
    source = "ci.example.com:5000/ci/myapp:0722"
    assert isinstance(job(source, None).validate(), ImageRef)
    with pytest.raises(JobError) as caught:
        job(source, "ci").validate()
    assert caught.value.kind == "Reference"
    assert caught.value.code == ErrorCode.INVALID_REFERENCE
    assert caught.value.field == "source"
    assert caught.value.reference_error is not None
    assert caught.value.reference_error.kind == "InvalidRepository"


@pytest.mark.parametrize("name", ["", "x" * (MAX_REGISTRY_NAME_LEN + 1), "é" * 65])
def test_source_registry_must_be_1_to_128_bytes(name: str) -> None:
    with pytest.raises(JobError) as caught:
        job("ci/myapp:0722", name).validate()
    assert caught.value.kind == "InvalidSourceRegistry"
    assert caught.value.code == ErrorCode.INVALID_MESSAGE
    assert str(caught.value) == (
        "source_registry must be 1 to 128 characters: a catalogue key or alias"
    )
    assert caught.value.hint == ErrorCode.INVALID_MESSAGE.default_hint


def test_source_registry_bounds_are_inclusive_and_counted_in_bytes() -> None:
    # Rust counts `str::len`, UTF-8 bytes: 64 two-byte characters fit, 65 do not (above).
    for name in ("c", "x" * MAX_REGISTRY_NAME_LEN, "é" * 64):
        assert isinstance(job("ci/myapp:0722", name).validate(), InRegistry)


def test_source_registry_is_checked_after_metadata_and_before_the_source() -> None:
    with pytest.raises(JobError) as caught:
        job("CI/app:1", "").validate()
    assert caught.value.kind == "InvalidSourceRegistry"
    with pytest.raises(JobError) as caught:
        job("CI/app:1", "", metadata={"password": "x"}).validate()
    assert caught.value.kind == "CredentialField"
    with pytest.raises(JobError) as caught:
        PushJob(
            job_id="j-1",
            source="ci/app:1",
            target=JobTarget("harbor", "Production/myapp", ("0722",)),
            source_registry="",
        ).validate()
    assert caught.value.kind == "InvalidSourceRegistry"


def test_new_takes_the_in_registry_tag_or_latest() -> None:
    tagged = PushJob.new("ci/myapp:0722", "harbor", "production/myapp", source_registry="ci")
    assert tagged.target.tags == ("0722",)
    assert tagged.source_registry == "ci"
    pinned = PushJob.new(f"ci/myapp@{DIGEST}", "harbor", "production/myapp", source_registry="ci")
    assert pinned.target.tags == ("latest",)
    bare = PushJob.new("ci.team/app", "harbor", "production/myapp", source_registry="ci")
    assert bare.target.tags == ("latest",)
    # Without tags the source is read first (as `pushfleet submit` does), so its error wins
    # over an invalid source_registry; with tags, validation order applies.
    with pytest.raises(JobError) as caught:
        PushJob.new("CI/app:1", "harbor", "production/myapp", source_registry="")
    assert caught.value.kind == "Reference"
    with pytest.raises(JobError) as caught:
        PushJob.new("CI/app:1", "harbor", "production/myapp", ["1"], source_registry="")
    assert caught.value.kind == "InvalidSourceRegistry"


# What `serde_json::to_vec(&PushJob)` writes for these jobs: `source_registry` right after
# `source`, before `pool`; left out when None. `test_publish.py` checks the same bytes against
# what `pushfleet submit --from-registry` publishes.
REGISTRY_SOURCE_WIRE = (
    b'{"version":1,"job_id":"run-812-step-131","source":"ci/myapp@sha256:' + HEX64.encode() + b'",'
    b'"source_registry":"ci","pool":"copy","target":{"registry":"harbor",'
    b'"repository":"production/myapp","tags":["0722","stable"]},'
    b'"options":{"remove_local_tag":false},"metadata":{"pipeline_run":812,"step":131}}'
)


def test_the_wire_form_places_source_registry_after_source() -> None:
    built = PushJob.new(
        f"ci/myapp@{DIGEST}",
        "harbor",
        "production/myapp",
        ["0722", "stable"],
        job_id="run-812-step-131",
        metadata={"step": 131, "pipeline_run": 812},
        pool="copy",
        source_registry="ci",
    )
    assert built.to_json() == REGISTRY_SOURCE_WIRE
    # The schema example is the same job.
    example = json.loads((EXAMPLES / "job" / "valid" / "registry-source.json").read_bytes())
    assert PushJob.from_dict(example) == built
    assert PushJob.from_dict(example).to_json() == REGISTRY_SOURCE_WIRE
    assert built.to_dict() == example | {"options": {"remove_local_tag": False}}
    assert schema_errors(JOB_SCHEMA, built.to_dict()) == []

    no_pool = job("ci/myapp:0722", "ci", pool=None)
    assert no_pool.to_json() == (
        b'{"version":1,"job_id":"j-1","source":"ci/myapp:0722","source_registry":"ci",'
        b'"target":{"registry":"harbor","repository":"production/myapp","tags":["0722"]},'
        b'"options":{"remove_local_tag":false},"metadata":{}}'
    )
    # A daemon job's bytes are unchanged: no `source_registry` key at all.
    assert b"source_registry" not in job("myapp:0722", None).to_json()


def test_from_dict_reads_source_registry_and_a_null_as_absent() -> None:
    data = json.loads(job("ci/myapp:0722", "ci").to_json())
    assert PushJob.from_dict(data).source_registry == "ci"
    assert PushJob.from_dict({**data, "source_registry": None}).source_registry is None
    # Without source_registry, `ci/myapp:0722` is a Docker Hub image: valid.
    del data["source_registry"]
    assert PushJob.from_dict(data).validate() == ImageRef.parse("ci/myapp:0722")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("empty-source-registry.json", "Shape"), ("registry-source-with-host.json", "Reference")],
)
def test_the_invalid_registry_source_examples_are_refused(name: str, kind: str) -> None:
    data = json.loads((EXAMPLES / "job" / "invalid" / name).read_bytes())
    with pytest.raises(JobError) as caught:
        PushJob.from_dict(data)
    assert caught.value.kind == kind
    # Built in code (no schema in front), the job gets the worker's own error.
    target = data["target"]
    built = PushJob(
        job_id=data["job_id"],
        source=data["source"],
        target=JobTarget(target["registry"], target["repository"], tuple(target["tags"])),
        source_registry=data["source_registry"],
    )
    with pytest.raises(JobError) as caught:
        built.validate()
    assert caught.value.kind == {"Shape": "InvalidSourceRegistry"}.get(kind, kind)


# --- against the worker binary: `pushfleet submit --dry-run` validates without a network ---

DRY_RUN_CONFIG = """
[amqp]
url = "amqp://guest:guest@127.0.0.1:1/%2f"
topology_prefix = "pytest-dry-run"

[worker]
id = "pytest-dry-run"

[registries.harbor]
url = "https://harbor.example.com"
anonymous = true
namespaces = ["*"]

[registries.ci]
url = "http://ci.example.com:5000"
anonymous = true
namespaces = ["*"]
"""

DRY_RUN_CASES: list[tuple[str, str, list[str]]] = [
    ("ci/myapp:0722", "ci", []),
    (f"ci/myapp@{DIGEST}", "ci", []),
    (f"ci/myapp:0722@{DIGEST}", "ci", ["1", "2"]),
    ("myapp", "ci", []),
    ("ci.team/app:1", "ci", []),
    ("", "ci", []),
    ("CI/app:1", "ci", []),
    ("ci/app:", "ci", []),
    ("ci/app:-x", "ci", []),
    ("ci//app:1", "ci", []),
    ("/ci/app", "ci", []),
    ("ci/app/", "ci", ["1"]),
    ("ci/app@sha256:abc", "ci", []),
    (f"ci/app@sha256:{HEX64.upper()}", "ci", []),
    ("ci/app@md5:abc", "ci", []),
    ("ci/app:1 ", "ci", []),
    ("ci/a\u00a0b:1", "ci", []),
    ("localhost:5000/ci/app:1", "ci", []),
    ("ci.example.com:5000/ci/myapp:0722", "ci", []),
    ("[::1]:5443/x:1", "ci", []),
    ("[::1]:5443", "ci", ["1"]),
    ("ci/a..b:1", "ci", []),
    ("ci/app:" + "t" * 129, "ci", []),
    ("team/" + "a" * (REPOSITORY_MAX_LEN - 5) + ":1", "ci", []),
    ("team/" + "a" * (REPOSITORY_MAX_LEN - 4) + ":1", "ci", []),
    ("ci/app:1", "", ["1"]),
    ("CI/app:1", "", ["1"]),
    ("CI/app:1", "", []),
    ("ci/app:1", "x" * 129, ["1"]),
    ("ci/app:1", "é" * 64, ["1"]),
    ("ci/app:1", "é" * 65, ["1"]),
]


def rust_submit(config: Path, source: str, registry: str, tags: list[str]) -> dict[str, Any]:
    """What `pushfleet submit --dry-run --from-registry` says: the error (code, message, hint)
    when the job is invalid, else the targets it plans (or None when only the catalogue, not
    the job, refuses it)."""
    args = [str(support.worker_binary()), "submit", "--config", str(config), "--dry-run"]
    args += ["--source", source, "--from-registry", registry]
    args += ["--registry", "harbor", "--repository", "production/myapp"]
    for tag in tags:
        args += ["--tag", tag]
    result = subprocess.run(args, capture_output=True, timeout=30, check=False)
    if result.returncode == 0:
        return {"targets": json.loads(result.stdout)["targets"]}
    stderr = result.stderr.decode()
    first, _, rest = stderr.partition("\n")
    assert first.startswith("error["), stderr
    code, _, message = first[len("error[") :].partition("]: ")
    if code == "unknown_registry":
        return {"targets": None}
    return {"code": code, "message": message, "hint": rest.removeprefix("hint: ").rstrip("\n")}


def python_submit(source: str, registry: str, tags: list[str]) -> dict[str, Any]:
    try:
        built = PushJob.new(
            source, "harbor", "production/myapp", tags or None, source_registry=registry
        )
    except JobError as e:
        return {"code": e.code.value, "message": e.message, "hint": e.hint}
    if registry != "ci":
        return {"targets": None}
    return {"targets": [f"harbor.example.com/production/myapp:{t}" for t in built.target.tags]}


def test_registry_source_jobs_are_judged_as_pushfleet_submit_judges_them(tmp_path: Path) -> None:
    config = tmp_path / "dry-run.toml"
    config.write_text(DRY_RUN_CONFIG)
    mismatches = []
    for source, registry, tags in DRY_RUN_CASES:
        want = rust_submit(config, source, registry, tags)
        got = python_submit(source, registry, tags)
        if got != want:
            mismatches.append(f"{source!r} {registry!r} {tags}: rust {want}, python {got}")
    assert mismatches == []
    # Both outcomes are represented.
    outcomes = [python_submit(*case) for case in DRY_RUN_CASES]
    assert sum("code" in o for o in outcomes) >= 15
    assert sum("targets" in o for o in outcomes) >= 5


# --- events ---


def test_a_succeeded_copy_event_is_read_with_its_copy_object() -> None:
    event = Event.from_json((EXAMPLES / "event" / "valid" / "succeeded-copy.json").read_bytes())
    assert event.path is TagPath.COPY
    assert set(event.tag_paths.values()) == {TagPath.COPY}
    assert event.copy == CopyInfo(
        source_registry="ci",
        media_type="application/vnd.oci.image.index.v1+json",
        blobs_skipped=2,
        blobs_mounted=0,
        blobs_streamed=4,
        bytes_total=41943552,
        bytes_streamed=31457792,
        children=(
            "sha256:0b1c2d3e4f5a6b7c8d9e0f1a5a1e0c2b8d7f4e3a9b6c1d0e2f3a4b5c6d7e8f9a",
            "sha256:6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a5a1e0c2b8d7f4e3a9b6c1d0e2f3a4b5c",
        ),
    )
    assert event.phases is not None
    assert event.phases.copy_ms == 1840
    assert event.phases.push_ms is None
    assert event.preflight_method == "token_claims"


def test_a_daemon_not_configured_failure_is_read_with_its_code() -> None:
    path = EXAMPLES / "event" / "valid" / "failed-daemon-not-configured.json"
    event = Event.from_json(path.read_bytes())
    assert event.state == "failed"
    assert event.copy is None
    assert event.error is not None
    assert event.error.code is ErrorCode.DAEMON_NOT_CONFIGURED
    assert event.error.retryable is False
    assert "no daemon" in event.error.message


def copy_event(**copy: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (EXAMPLES / "event" / "valid" / "succeeded-copy.json").read_bytes()
    )
    data["copy"] = copy
    return data


COPY = {
    "source_registry": "ci",
    "media_type": "application/vnd.oci.image.manifest.v1+json",
    "blobs_skipped": 0,
    "blobs_mounted": 1,
    "blobs_streamed": 1,
    "bytes_total": 10,
    "bytes_streamed": 4,
}


def test_copy_objects_are_read_as_strictly_as_rust_reads_them() -> None:
    # `children` is left out for an image (Rust skips it when empty).
    image = Event.from_dict(copy_event(**COPY))
    assert image.copy is not None
    assert image.copy.children == ()
    assert image.copy.blobs_mounted == 1
    assert Event.from_dict(copy_event(**COPY, children=[])).copy == image.copy
    no_copy = copy_event()
    no_copy["copy"] = None
    assert Event.from_dict(no_copy).copy is None
    del no_copy["copy"]
    assert Event.from_dict(no_copy).copy is None

    refused: list[dict[str, Any]] = [
        copy_event(**COPY, extra=1),
        copy_event(**{k: v for k, v in COPY.items() if k != "bytes_streamed"}),
        copy_event(**{**COPY, "blobs_skipped": -1}),
        copy_event(**{**COPY, "blobs_skipped": "2"}),
        copy_event(**{**COPY, "blobs_skipped": True}),
        copy_event(**{**COPY, "media_type": None}),
        copy_event(**COPY, children=[1]),
        copy_event(**COPY, children="sha256:x"),
        {**copy_event(**COPY), "path": "mirror"},
        {**copy_event(**COPY), "tag_paths": {"x": "mirror"}},
        {**copy_event(**COPY), "phases": {"copy_ms": -1}},
    ]
    for data in refused:
        with pytest.raises(InvalidEvent):
            Event.from_dict(data)


def test_a_progress_event_may_be_in_the_copy_phase() -> None:
    data = {
        "version": 1,
        "event_id": "e-1",
        "job_id": "j-1",
        "state": "progress",
        "attempt": 1,
        "worker": "copier-2",
        "at": "2026-11-24T20:41:06.001Z",
        "progress": {"phase": "copy", "bytes_done": 10, "bytes_total": 40},
    }
    event = Event.from_dict(data)
    assert event.progress == pushfleet.Progress("copy", 10, 40)
