//! The Django step mapping ([`pushfleet_shared::django`]) against the shared vectors in
//! `schemas/vectors/django.json`. The Python client's tests (`clients/python/tests`) read the
//! same file, so both languages map the same step parameters to the same job, byte for byte, or
//! refuse them with the same error.
//!
//! Each case gives the step parameters (`params`), the project path, the job id and the
//! caller's metadata, and expects one of:
//!
//! - `job`: the job as a JSON value, `wire`: its exact serialised bytes (what
//!   `pushfleet submit --django` publishes), and `source`: the normalised source reference;
//! - `error`: the error's `variant` (`Reference/InvalidTag`, `RegistryId`, `ProjectPath`,
//!   `Job/CredentialField`, ...), its stable `code`, its `message` (the `Display` text) and its
//!   `hint` (`null` where the Rust error has none);
//! - `error` with variant `Params`: the parameters do not deserialise into a `DjangoPushStep`
//!   at all (a wrong type, a missing field). Rust has no code for that (`pushfleet submit`
//!   reports a usage error); the Python client raises `invalid_message`.
//!
//! After a deliberate change of the mapping, regenerate the expectations, review the diff, and
//! make the Python client pass again:
//!
//! ```sh
//! PUSHFLEET_BLESS_VECTORS=1 cargo test -p pushfleet-shared --test django_vectors
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use pushfleet_shared::PushJob;
use pushfleet_shared::django::{DjangoMappingError, DjangoPushStep};
use serde_json::{Map, Value, json};

fn vectors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/vectors/django.json")
}

fn load() -> Value {
    let path = vectors_path();
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The name of an enum value's variant, from its `Debug` form (`InvalidTag { .. }` ->
/// `InvalidTag`), so that a new variant needs no change here.
fn variant_name(debug: &str) -> String {
    debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn error_variant(error: &DjangoMappingError) -> String {
    match error {
        DjangoMappingError::Reference(e) => {
            format!("Reference/{}", variant_name(&format!("{e:?}")))
        }
        DjangoMappingError::Job(e) => format!("Job/{}", variant_name(&format!("{e:?}"))),
        other => variant_name(&format!("{other:?}")),
    }
}

fn error_hint(error: &DjangoMappingError) -> Value {
    match error {
        DjangoMappingError::Reference(e) => Value::String(e.hint()),
        DjangoMappingError::Job(e) => Value::String(e.hint()),
        _ => Value::Null,
    }
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("case {}: `{key}` must be a string", case["name"]))
}

/// What the mapping makes of one case, in the vectors' `expect` form.
fn outcome(case: &Value) -> Value {
    let project = str_field(case, "project");
    let job_id = str_field(case, "job_id");
    let metadata: Map<String, Value> = match case.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        None => Map::new(),
        Some(other) => panic!(
            "case {}: metadata must be an object, not {other}",
            case["name"]
        ),
    };
    let step: DjangoPushStep = match serde_json::from_value(case["params"].clone()) {
        Ok(step) => step,
        Err(_) => return json!({"error": {"variant": "Params", "code": "invalid_message"}}),
    };
    match step.to_job(project, job_id, metadata) {
        Ok(valid) => {
            let wire = valid.job.to_json();
            // What the mapping builds is what a worker accepts, unchanged.
            let reparsed = PushJob::from_slice(&wire)
                .unwrap_or_else(|e| panic!("case {}: a worker refuses the job: {e}", case["name"]));
            assert_eq!(reparsed.job, valid.job, "case {}", case["name"]);
            json!({
                "job": serde_json::to_value(&valid.job).expect("a job serialises"),
                "wire": String::from_utf8(wire).expect("the wire form is UTF-8"),
                "source": valid.source.to_string(),
            })
        }
        Err(e) => json!({"error": {
            "variant": error_variant(&e),
            "code": e.code().as_str(),
            "message": e.to_string(),
            "hint": error_hint(&e),
        }}),
    }
}

#[test]
fn the_mapping_gives_what_the_shared_vectors_expect() {
    let mut vectors = load();
    let cases = vectors["cases"]
        .as_array_mut()
        .expect("`cases` is an array");
    assert!(cases.len() >= 100, "only {} cases", cases.len());

    if std::env::var_os("PUSHFLEET_BLESS_VECTORS").is_some() {
        for case in cases.iter_mut() {
            let expect = outcome(case);
            case["expect"] = expect;
        }
        let mut text = serde_json::to_string_pretty(&vectors).expect("vectors serialise");
        text.push('\n');
        fs::write(vectors_path(), text).expect("vectors written");
        return;
    }

    let mut names = std::collections::HashSet::new();
    let mut mismatches = Vec::new();
    for case in cases.iter() {
        let name = str_field(case, "name");
        assert!(
            names.insert(name.to_owned()),
            "two cases are named {name:?}"
        );
        let got = outcome(case);
        if case.get("expect") != Some(&got) {
            mismatches.push(format!(
                "{name}:\n  expected {}\n  got      {got}",
                case.get("expect").unwrap_or(&Value::Null)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from {} (after a deliberate change: PUSHFLEET_BLESS_VECTORS=1):\n{}",
        mismatches.len(),
        cases.len(),
        vectors_path().display(),
        mismatches.join("\n")
    );
}

#[test]
fn every_outcome_kind_is_covered() {
    if std::env::var_os("PUSHFLEET_BLESS_VECTORS").is_some() {
        return; // the file is being rewritten by the other test
    }
    let vectors = load();
    let cases = vectors["cases"].as_array().expect("`cases` is an array");
    let variants: std::collections::BTreeSet<&str> = cases
        .iter()
        .filter_map(|c| c["expect"]["error"]["variant"].as_str())
        .collect();
    for wanted in [
        "Params",
        "RegistryId",
        "ProjectPath",
        "Reference/InvalidTag",
        "Reference/UppercaseRepository",
        "Reference/InvalidFormat",
        "Reference/InvalidRegistry",
        "Reference/InvalidDigest",
        "Reference/NameTooLong",
        "Job/InvalidJobId",
        "Job/Reference",
        "Job/CredentialField",
        "Job/CredentialValue",
    ] {
        assert!(
            variants.contains(wanted),
            "no vector for {wanted}: {variants:?}"
        );
    }
    let successes = cases
        .iter()
        .filter(|c| c["expect"]["job"].is_object())
        .count();
    assert!(successes >= 30, "only {successes} successful mappings");
}
