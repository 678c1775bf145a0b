//! The checked-in JSON Schemas match the Rust types, and every example under
//! `schemas/examples/` is judged as its folder says: `valid/` examples pass both the schema and
//! the Rust parser, `invalid/` examples are refused by the Rust parser (and, where the schema
//! can express the rule, by the schema too).
//!
//! Regenerate the schemas with `pushfleet schemas --write schemas/` after changing a type.

use std::fs;
use std::path::{Path, PathBuf};

use pushfleet_shared::schema::{EVENT_SCHEMA_FILE, JOB_SCHEMA_FILE, schema_files};
use pushfleet_shared::{Event, PushJob};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn examples(kind: &str, validity: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = schemas_dir().join("examples").join(kind).join(validity);
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let body = fs::read(&p).expect("readable example");
            (p, body)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = fs::read_to_string(schemas_dir().join(file)).expect("schema file");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn checked_in_schemas_match_the_rust_types() {
    for (name, generated) in schema_files() {
        let path = schemas_dir().join(name);
        let on_disk = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} differs from the Rust types: run `pushfleet schemas --write schemas/`",
            path.display()
        );
    }
}

#[test]
fn valid_job_examples_pass_schema_and_parser() {
    let schema = validator(JOB_SCHEMA_FILE);
    for (path, body) in examples("job", "valid") {
        let value: Value = serde_json::from_slice(&body).expect("example is JSON");
        let errors: Vec<_> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        if let Err(e) = PushJob::from_slice(&body) {
            panic!("{}: parser refused a valid example: {e}", path.display());
        }
    }
}

#[test]
fn invalid_job_examples_are_refused() {
    let schema = validator(JOB_SCHEMA_FILE);
    let mut refused_by_schema = 0;
    let all = examples("job", "invalid");
    for (path, body) in &all {
        assert!(
            PushJob::from_slice(body).is_err(),
            "{}: parser accepted an invalid example",
            path.display()
        );
        if let Ok(value) = serde_json::from_slice::<Value>(body)
            && !schema.is_valid(&value)
        {
            refused_by_schema += 1;
        }
    }
    // Most rules are expressible in JSON Schema; the few that are not (duplicate tags,
    // reference grammar details, credential-like metadata keys) are the parser's alone.
    assert!(
        refused_by_schema * 2 > all.len(),
        "schema refuses only {refused_by_schema}"
    );
}

#[test]
fn event_examples_pass_schema_and_parser() {
    let schema = validator(EVENT_SCHEMA_FILE);
    for (path, body) in examples("event", "valid") {
        let value: Value = serde_json::from_slice(&body).expect("example is JSON");
        let errors: Vec<_> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        if let Err(e) = Event::from_slice(&body) {
            panic!("{}: parser refused a valid example: {e}", path.display());
        }
    }
    for (path, body) in examples("event", "invalid") {
        let value: Value = serde_json::from_slice(&body).expect("example is JSON");
        assert!(
            !schema.is_valid(&value),
            "{}: schema accepted it",
            path.display()
        );
        assert!(
            Event::from_slice(&body).is_err(),
            "{}: parser accepted it",
            path.display()
        );
    }
}

#[test]
fn check_request_and_answer_examples_pass_schema_and_parser() {
    use pushfleet_shared::check::{CheckRequest, RegistryChecked};
    use pushfleet_shared::schema::{CHECK_REQUEST_SCHEMA_FILE, REGISTRY_CHECKED_SCHEMA_FILE};
    let requests = validator(CHECK_REQUEST_SCHEMA_FILE);
    for (path, body) in examples("check-request", "valid") {
        let value: Value = serde_json::from_slice(&body).expect("example is JSON");
        let errors: Vec<_> = requests
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        CheckRequest::from_slice(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let answers = validator(REGISTRY_CHECKED_SCHEMA_FILE);
    for (path, body) in examples("registry-checked", "valid") {
        let value: Value = serde_json::from_slice(&body).expect("example is JSON");
        let errors: Vec<_> = answers.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        RegistryChecked::from_slice(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
