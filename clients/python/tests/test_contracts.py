"""The package's contracts against the repository's: schema copies, examples, the topology
the worker prints, the control message, signatures, key files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import support
from support import REPO_ROOT

import pushfleet
from pushfleet import Event, InvalidEvent, JobError, PushJob, SigningKey, SigningKeyError
from pushfleet._json import format_float
from pushfleet.schema import JOB_SCHEMA, schema_errors, schema_text

SCHEMAS = REPO_ROOT / "schemas"
PACKAGE_SCHEMAS = Path(pushfleet.__file__).parent / "schemas"


def test_the_shipped_schemas_are_byte_identical_to_the_repository_s() -> None:
    repository = sorted(p.name for p in SCHEMAS.glob("*.json"))
    shipped = sorted(p.name for p in PACKAGE_SCHEMAS.glob("*.json"))
    assert repository == shipped
    assert {"control.schema.json", "event.schema.json", "job.schema.json"} <= set(shipped)
    for name in repository:
        assert schema_text(name) == (SCHEMAS / name).read_bytes(), (
            f"src/pushfleet/schemas/{name} differs from schemas/{name}: copy it again"
        )


def test_the_source_tree_copies_are_the_installed_ones() -> None:
    source_tree = Path(__file__).resolve().parents[1] / "src" / "pushfleet" / "schemas"
    for path in source_tree.glob("*.json"):
        assert path.read_bytes() == schema_text(path.name)


@pytest.mark.parametrize("path", sorted((SCHEMAS / "examples" / "job" / "valid").glob("*.json")))
def test_valid_job_examples_are_accepted(path: Path) -> None:
    data = json.loads(path.read_bytes())
    assert schema_errors(JOB_SCHEMA, data) == []
    job = PushJob.from_dict(data)
    assert json.loads(job.to_json())["job_id"] == data["job_id"]


@pytest.mark.parametrize(
    "path", sorted((SCHEMAS / "examples" / "job" / "invalid").glob("*.json")), ids=lambda p: p.name
)
def test_invalid_job_examples_are_refused(path: Path) -> None:
    with pytest.raises(JobError) as caught:
        PushJob.from_dict(json.loads(path.read_bytes()))
    assert caught.value.code in ("invalid_message", "invalid_reference")


@pytest.mark.parametrize(
    "path", sorted((SCHEMAS / "examples" / "event" / "valid").glob("*.json")), ids=lambda p: p.name
)
def test_valid_event_examples_parse(path: Path) -> None:
    event = Event.from_json(path.read_bytes())
    assert event.version == 1
    assert event.raw == json.loads(path.read_bytes())


@pytest.mark.parametrize(
    "path",
    sorted((SCHEMAS / "examples" / "event" / "invalid").glob("*.json")),
    ids=lambda p: p.name,
)
def test_invalid_event_examples_are_refused(path: Path) -> None:
    with pytest.raises(InvalidEvent):
        Event.from_json(path.read_bytes())


def test_the_topology_mirror_is_what_the_worker_prints() -> None:
    prefix = "pytest-topology"
    printed = json.loads(
        subprocess.run(
            [str(support.worker_binary()), "topology", "--prefix", prefix],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
    )
    mirror = pushfleet.Topology(prefix)
    assert printed["prefix"] == mirror.prefix
    assert printed["jobs_exchange"] == mirror.jobs_exchange
    assert printed["jobs_queue"] == mirror.jobs_queue
    assert printed["job_routing_key"] == "job"
    assert printed["retry_exchange"] == mirror.retry_exchange
    assert printed["dead_letter_exchange"] == mirror.dead_letter_exchange
    assert printed["dead_letter_queue"] == mirror.dead_letter_queue
    assert printed["events_exchange"] == mirror.events_exchange
    assert printed["control_exchange"] == mirror.control_exchange
    assert printed["exchanges"] == [{"name": e.name, "kind": e.kind} for e in mirror.exchanges()]
    assert printed["queues"] == [
        {
            "name": q.name,
            "arguments": [list(a) for a in q.arguments],
            "bound_to": q.bound_to,
            "binding_key": q.binding_key,
        }
        for q in mirror.queues()
    ]


def test_the_pool_names_are_what_the_worker_prints() -> None:
    prefix = "pytest-topology"
    printed = json.loads(
        subprocess.run(
            [str(support.worker_binary()), "topology", "--prefix", prefix, "--pool", "build-01"],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
    )
    mirror = pushfleet.Topology(prefix)
    assert [p["name"] for p in printed["pools"]] == [pushfleet.DEFAULT_POOL, "build-01"]
    for pool in printed["pools"]:
        name = pool["name"]
        assert pool["queue"] == mirror.pool_queue(name)
        assert pool["routing_key"] == mirror.pool_routing_key(name)
        assert pool["retry_queue_example"] == mirror.pool_retry_queue(name, 2)
        assert pool["retry_routing_key_example"] == mirror.pool_retry_routing_key(name, 2)
        assert pool["queues"] == [
            {
                "name": q.name,
                "arguments": [list(a) for a in q.arguments],
                "bound_to": q.bound_to,
                "binding_key": q.binding_key,
            }
            for q in mirror.pool_queues(name)
        ]
    assert printed["pools"][1]["queue"] == f"{prefix}.jobs.build-01"
    spec = mirror.pool_retry_queue_spec("build-01", 3)
    assert ("x-dead-letter-routing-key", "job.build-01") in spec.arguments


def test_the_cancel_message_is_the_rust_control_message() -> None:
    # shared/src/control.rs, `cancel_round_trips`.
    assert pushfleet.cancel_body("j") == b'{"version":1,"action":"cancel","job_id":"j"}'
    assert schema_errors("control.schema.json", json.loads(pushfleet.cancel_body("j"))) == []


def test_signatures_are_hmac_sha256_in_hex() -> None:
    # shared/src/signature.rs `known_answer`: RFC 4231 test case 2.
    assert (
        pushfleet.sign(b"Jefe", b"what do ya want for nothing?")
        == "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_key_files_follow_the_worker_rules(tmp_path: Path) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    body = b'{"version":1}'
    for content in (key, key + b"\n", key + b"\r\n"):
        path = tmp_path / "key"
        path.write_bytes(content)
        assert SigningKey.from_file(path).sign(body) == pushfleet.sign(key, body)
    # Only one newline is removed; nothing else is trimmed.
    path.write_bytes(key + b"\n\n")
    assert SigningKey.from_file(path).sign(body) == pushfleet.sign(key + b"\n", body)
    path.write_bytes(b" " + key)
    assert SigningKey.from_file(path).sign(body) == pushfleet.sign(b" " + key, body)
    path.write_bytes(key[:31] + b"\n")
    with pytest.raises(SigningKeyError, match="31 bytes"):
        SigningKey.from_file(path)
    with pytest.raises(SigningKeyError, match="cannot read"):
        SigningKey.from_file(tmp_path / "missing")
    assert "0123" not in repr(SigningKey(key))


def test_floats_are_written_as_serde_json_writes_them() -> None:
    cases = {
        1e16: "1e+16",
        1e15: "1000000000000000.0",
        1.5e-7: "1.5e-7",
        0.0001: "0.0001",
        0.00001: "0.00001",
        1e-6: "1e-6",
        123.456: "123.456",
        -0.0: "-0.0",
        5e-324: "5e-324",
        1.7976931348623157e308: "1.7976931348623157e+308",
    }
    for value, text in cases.items():
        assert format_float(value) == text
    with pytest.raises(ValueError, match="no JSON form"):
        format_float(float("nan"))


def test_jobs_built_in_code_are_checked_like_the_worker_checks_them() -> None:
    job = PushJob.new("myapp:0722", "harbor", "production/myapp", job_id="j-1", timeout_s=900)
    assert job.to_json() == (
        b'{"version":1,"job_id":"j-1","source":"myapp:0722","target":{"registry":"harbor",'
        b'"repository":"production/myapp","tags":["0722"]},"options":{"remove_local_tag":false,'
        b'"timeout_s":900},"metadata":{}}'
    )
    assert PushJob.new("myapp", "harbor", "production/myapp").target.tags == ("latest",)
    with pytest.raises(JobError) as caught:
        PushJob.new("myapp", "harbor", "production/myapp", ["a", "b", "a"])
    assert caught.value.kind == "DuplicateTag"
    assert str(caught.value) == 'target.tags names "a" twice'
    with pytest.raises(JobError) as caught:
        PushJob.new("myapp", "harbor", "production/myapp", ["1"], timeout_s=0)
    assert str(caught.value) == "options.timeout_s must be between 1 and 1700, got 0"
    with pytest.raises(JobError) as caught:
        PushJob.new("myapp", "harbor", "Production/myapp", ["1"])
    assert caught.value.code == "invalid_reference"
    assert caught.value.field == "target.repository"
    big = PushJob.new("myapp", "harbor", "production/myapp", ["1"], metadata={"x": "a" * 70000})
    with pytest.raises(JobError, match="65536-byte limit"):
        big.to_json()
    with pytest.raises(JobError, match="no JSON form"):
        PushJob.new(
            "myapp", "harbor", "production/myapp", ["1"], metadata={"x": float("inf")}
        ).to_json()


def test_the_schema_is_checked_before_publishing_even_where_it_is_stricter() -> None:
    # The worker's parser accepts a catalogue key of 200 characters; the schema says 128. A
    # job the schema refuses is not published.
    job = pushfleet.from_django_step(
        {"image": "myapp", "tag": "1", "registry_id": "x" * 200}, "production"
    )
    client = pushfleet.Client("amqp://guest:guest@127.0.0.1:1/%2f", max_retries=0)
    with pytest.raises(JobError, match="target/registry") as caught:
        client.publish(job)
    assert caught.value.code == "invalid_message"


def test_the_core_package_does_not_need_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import pushfleet, pushfleet.client, pushfleet.mapping\n"
        "try:\n"
        "    import pushfleet.django\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert "pip install" in out
    assert "pushfleet[django]" in out
