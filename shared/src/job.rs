//! The push job: the message Django publishes to ask for one image to be pushed.
//!
//! Wire format: JSON, `content_type: application/json`, `version: 1`. The contract is strict
//! on purpose, because the failures this replaces were silent ones:
//!
//! - **Unknown fields are rejected**, at every level but `metadata`. A misspelt option
//!   (`remove_local_tags`) fails the job with `invalid_message` instead of being ignored, and a
//!   job can never smuggle credentials in a field the worker would not read. New fields come
//!   with a new `version`.
//! - **Missing fields**: `version`, `job_id`, `source`, `target.registry`,
//!   `target.repository` and `target.tags` (non-empty) are required; `options` and each of its
//!   fields default (see [`JobOptions`]); `metadata` defaults to `{}`.
//! - **No credentials**: a job names a registry of the worker's catalogue; credentials live
//!   only in the worker's configuration. `metadata` keys that look like credentials
//!   (`password`, `token`, `auth`, ...) are refused at any depth.
//! - **Size**: a message over [`MAX_JOB_BYTES`] is refused before it is parsed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;
use crate::reference::{ImageRef, ReferenceError};

/// The only job version this crate reads and writes.
pub const JOB_VERSION: u32 = 1;
/// The largest job message accepted, in bytes.
pub const MAX_JOB_BYTES: usize = 64 * 1024;
/// The most target tags one job may name.
pub const MAX_TAGS: usize = 16;
/// The longest per-job timeout a job may ask for, in seconds (kept below RabbitMQ's default
/// 30-minute `consumer_timeout`, which would otherwise close the channel under a long push).
pub const MAX_TIMEOUT_S: u32 = 1700;
/// The longest `job_id`.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A request to push one local image to one registry under one or more tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pushfleet push job, version 1")]
pub struct PushJob {
    /// Message format version; always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Caller-chosen identifier, echoed in every event: letters, digits, `.`, `_`, `:`, `-`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub job_id: String,
    /// The local image in the worker's Docker daemon, e.g. `myapp:0722`. Read with Docker's
    /// grammar; with no tag it means `:latest`, as in Docker.
    #[schemars(length(min = 1, max = 512))]
    pub source: String,
    /// Where to push.
    pub target: JobTarget,
    /// How to push.
    #[serde(default)]
    pub options: JobOptions,
    /// Opaque caller data, echoed in every event (e.g. `pipeline_run`, `step`).
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// The registry, repository and tags a job pushes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobTarget {
    /// A key or alias of the worker's registry catalogue (e.g. `harbor`, or Django's registry
    /// id `"5"`). Never a host name: the host comes from the catalogue.
    #[schemars(length(min = 1, max = 128))]
    pub registry: String,
    /// The repository path inside that registry, e.g. `production/myapp` (lowercase).
    #[schemars(length(min = 1, max = 255))]
    pub repository: String,
    /// The tags to push, each `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[schemars(length(min = 1, max = 16))]
    pub tags: Vec<String>,
}

/// Per-job options; every field has a default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    /// Remove the target tags from the daemon after a successful push. Default `false`.
    #[serde(default)]
    pub remove_local_tag: bool,
    /// Time limit for the whole job in seconds (1..=1700). Default: the worker's
    /// `worker.job_timeout_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1700))]
    pub timeout_s: Option<u32>,
}

/// Why a message is not a valid job. Each maps to an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The message is larger than [`MAX_JOB_BYTES`].
    #[error("message is {size} bytes, more than the {MAX_JOB_BYTES}-byte limit")]
    TooLarge {
        /// The message size in bytes.
        size: usize,
    },
    /// The message's content type says it is not JSON.
    #[error("content type {found:?} is not application/json")]
    WrongContentType {
        /// The content type the message carries (cut to 64 characters).
        found: String,
    },
    /// The body is not JSON (or not UTF-8).
    #[error("message is not JSON: {detail}")]
    NotJson {
        /// The parser's complaint, with any string values taken out.
        detail: String,
    },
    /// The body is JSON but not a job: a missing, unknown or mistyped field.
    #[error("message is not a valid job: {detail}")]
    Shape {
        /// The parser's complaint, with any string values taken out.
        detail: String,
    },
    /// `version` is not one this worker reads.
    #[error("unsupported job version {found}: this worker reads version {JOB_VERSION}")]
    UnsupportedVersion {
        /// The version the message carries.
        found: u64,
    },
    /// `job_id` is empty, too long or has characters outside `[A-Za-z0-9._:-]`.
    #[error(
        "job_id must be 1 to {MAX_JOB_ID_LEN} characters of letters, digits, '.', '_', ':', '-'"
    )]
    InvalidJobId,
    /// `target.tags` is empty.
    #[error("target.tags is empty: name at least one tag to push")]
    NoTags,
    /// `target.tags` has more than [`MAX_TAGS`] entries.
    #[error("target.tags has {count} tags; at most {MAX_TAGS} are allowed")]
    TooManyTags {
        /// How many tags were given.
        count: usize,
    },
    /// A tag appears twice in `target.tags`.
    #[error("target.tags names {tag:?} twice")]
    DuplicateTag {
        /// The repeated tag.
        tag: String,
    },
    /// `options.timeout_s` is 0 or above [`MAX_TIMEOUT_S`].
    #[error("options.timeout_s must be between 1 and {MAX_TIMEOUT_S}, got {found}")]
    TimeoutOutOfRange {
        /// The value given.
        found: u32,
    },
    /// The job carries a field that looks like a credential.
    #[error("{path} looks like a credential; jobs must not carry credentials")]
    CredentialField {
        /// JSON path of the field, e.g. `metadata.docker.password`.
        path: String,
    },
    /// `source`, `target.repository` or a tag is not a valid reference part.
    #[error("{field}: {source}")]
    Reference {
        /// Which field: `source`, `target.repository` or `target.tags[N]`.
        field: String,
        /// What is wrong with it.
        source: ReferenceError,
    },
}

impl JobError {
    /// The stable error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            JobError::Reference { .. } => ErrorCode::InvalidReference,
            _ => ErrorCode::InvalidMessage,
        }
    }

    /// One line of advice for the person who sent the job.
    pub fn hint(&self) -> String {
        match self {
            JobError::Reference { source, .. } => source.hint(),
            JobError::CredentialField { .. } => {
                "remove it: the worker takes credentials from its registry catalogue".to_owned()
            }
            other => other.code().default_hint().to_owned(),
        }
    }
}

/// A job that passed validation, with its source reference parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The message as received.
    pub job: PushJob,
    /// The source image, normalised (`myapp:0722` -> `docker.io/library/myapp:0722`).
    pub source: ImageRef,
}

impl ValidJob {
    /// The exact references this job pushes when `target.registry` resolves to a registry whose
    /// image host is `registry_host` (`127.0.0.1:5001`, `reg.example.com:10443`).
    pub fn targets_at(&self, registry_host: &str) -> Result<Vec<ImageRef>, JobError> {
        self.job
            .target
            .tags
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                ImageRef::for_registry(registry_host, &self.job.target.repository, tag).map_err(
                    |source| JobError::Reference {
                        field: target_field(i, &source),
                        source,
                    },
                )
            })
            .collect()
    }

    /// The job's time limit, or `default` when the job does not set one.
    pub fn timeout_s_or(&self, default: u32) -> u32 {
        self.job.options.timeout_s.unwrap_or(default)
    }
}

/// Which field a target error belongs to: a tag error points at the tag, anything else at
/// the repository.
fn target_field(tag_index: usize, error: &ReferenceError) -> String {
    if matches!(
        error,
        ReferenceError::InvalidTag { .. } | ReferenceError::TagTooLong { .. }
    ) {
        format!("target.tags[{tag_index}]")
    } else {
        "target.repository".to_owned()
    }
}

/// A host name that is always valid, used to check a target's repository and tags before the
/// catalogue has been consulted.
const PLACEHOLDER_HOST: &str = "registry.invalid";

impl PushJob {
    /// Parses and validates a message body.
    pub fn from_slice(body: &[u8]) -> Result<ValidJob, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge { size: body.len() });
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| JobError::NotJson {
            detail: scrub_serde_message(&e.to_string()),
        })?;
        // Check the version first, so a v2 message says "unsupported version" rather than
        // complaining about the fields v2 added.
        match value.get("version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(JOB_VERSION) => {}
            Some(v) => return Err(JobError::UnsupportedVersion { found: v }),
            None => {} // let the typed parse below say what is wrong with it
        }
        if let Some(detail) = array_for_struct(&value) {
            return Err(JobError::Shape { detail });
        }
        let job: PushJob = serde_json::from_value(value).map_err(|e| JobError::Shape {
            detail: scrub_serde_message(&e.to_string()),
        })?;
        job.validate()
    }

    /// Parses and validates a message as delivered: `content_type`, when the publisher set
    /// one, must be `application/json` (parameters such as `; charset=utf-8` allowed).
    pub fn from_message(body: &[u8], content_type: Option<&str>) -> Result<ValidJob, JobError> {
        if let Some(ct) = content_type {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case(crate::topology::CONTENT_TYPE_JSON) {
                return Err(JobError::WrongContentType {
                    found: ct.chars().take(64).collect(),
                });
            }
        }
        Self::from_slice(body)
    }

    /// Validates a job built in code (e.g. by the Django mapping).
    pub fn validate(self) -> Result<ValidJob, JobError> {
        if self.version != JOB_VERSION {
            return Err(JobError::UnsupportedVersion {
                found: u64::from(self.version),
            });
        }
        if !is_valid_job_id(&self.job_id) {
            return Err(JobError::InvalidJobId);
        }
        let tags = &self.target.tags;
        if tags.is_empty() {
            return Err(JobError::NoTags);
        }
        if tags.len() > MAX_TAGS {
            return Err(JobError::TooManyTags { count: tags.len() });
        }
        for (i, tag) in tags.iter().enumerate() {
            if tags[..i].contains(tag) {
                return Err(JobError::DuplicateTag { tag: tag.clone() });
            }
        }
        if let Some(t) = self.options.timeout_s
            && (t == 0 || t > MAX_TIMEOUT_S)
        {
            return Err(JobError::TimeoutOutOfRange { found: t });
        }
        if let Some(path) = find_credential_key(&self.metadata, "metadata") {
            return Err(JobError::CredentialField { path });
        }
        let source = ImageRef::parse(&self.source).map_err(|source| JobError::Reference {
            field: "source".to_owned(),
            source,
        })?;
        let valid = ValidJob { job: self, source };
        valid.targets_at(PLACEHOLDER_HOST)?;
        Ok(valid)
    }

    /// Serialises the job as its wire form.
    pub fn to_json(&self) -> Vec<u8> {
        // A PushJob holds only strings, numbers, booleans and JSON values: serialising it
        // cannot fail, and an empty body would be refused by any worker anyway.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// serde's derived structs also read a JSON array as their fields in order
/// (`[1, "id", "myapp:1", ["harbor", "production/myapp", ["1"]]]`), which the schema does not
/// allow and `deny_unknown_fields` cannot see. The job, `target` and `options` must be objects.
fn array_for_struct(value: &Value) -> Option<String> {
    let path = match value {
        Value::Array(_) => "the top level",
        Value::Object(root) => ["target", "options"]
            .into_iter()
            .find(|field| root.get(*field).is_some_and(Value::is_array))?,
        _ => return None,
    };
    Some(format!("invalid type: array, expected an object at {path}"))
}

/// Reads `job_id` out of a message that failed validation, so its failed event can still be
/// correlated. Returns `None` unless the body is JSON with a well-formed `job_id` string.
pub fn peek_job_id(body: &[u8]) -> Option<String> {
    if body.len() > MAX_JOB_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let id = value.get("job_id")?.as_str()?;
    is_valid_job_id(id).then(|| id.to_owned())
}

/// Reads `metadata` out of a message that failed validation, so its failed event can still
/// echo it. Returns an empty map unless `metadata` is an object free of credential-like keys.
pub fn peek_metadata(body: &[u8]) -> Map<String, Value> {
    if body.len() > MAX_JOB_BYTES {
        return Map::new();
    }
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(body) else {
        return Map::new();
    };
    match root.remove("metadata") {
        Some(Value::Object(m)) if find_credential_key(&m, "metadata").is_none() => m,
        _ => Map::new(),
    }
}

fn is_valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Words that mark a key as a credential wherever they appear in it (`docker_password`,
/// `accessToken`, `auth_config`, `X-Registry-Auth`), but not inside other words (`author`).
const CREDENTIAL_WORDS: [&str; 13] = [
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "identitytoken",
    "registrytoken",
    "apikey",
    "passphrase",
];

/// Splits a key into lowercase words at non-alphanumeric characters and at camelCase humps.
fn key_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Finds the first key (depth-first) whose name marks it as a credential, returning its path.
/// Keys that are not plain ASCII are refused too: a look-alike (`pаssword` with a Cyrillic
/// `а`) must not smuggle a secret past the check.
pub(crate) fn find_credential_key(map: &Map<String, Value>, prefix: &str) -> Option<String> {
    for (key, value) in map {
        let path = format!("{prefix}.{key}");
        let words = key_words(key);
        let whole: String = words.concat();
        if !key.is_ascii()
            || words.iter().any(|w| CREDENTIAL_WORDS.contains(&w.as_str()))
            || CREDENTIAL_WORDS
                .iter()
                .any(|w| w.len() > 4 && whole.ends_with(w))
        {
            return Some(path);
        }
        if let Some(found) = find_credential_in_value(value, &path) {
            return Some(found);
        }
    }
    None
}

fn find_credential_in_value(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Object(m) => find_credential_key(m, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_credential_in_value(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Takes string values out of a serde error message. serde_json quotes the offending value
/// (`invalid type: string "hunter2", expected a sequence`); a mistyped field could hold a
/// secret, so the value is replaced by its length.
pub(crate) fn scrub_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("string \"") {
        let (before, after) = rest.split_at(start + "string ".len());
        out.push_str(before);
        // `after` starts with the opening quote; the value ends at the next unescaped quote.
        let body = &after[1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        match end {
            Some(i) => {
                out.push_str(&format!("of {} characters", body[..i].chars().count()));
                rest = &body[i + 1..];
            }
            None => {
                out.push_str("(value withheld)");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "version": 1,
            "job_id": "b7c1-0001",
            "source": "myapp:0722",
            "target": { "registry": "harbor", "repository": "production/myapp", "tags": ["0722"] },
            "options": { "remove_local_tag": true, "timeout_s": 900 },
            "metadata": { "pipeline_run": 812, "step": 129 }
        })
    }

    fn parse(v: &Value) -> Result<ValidJob, JobError> {
        PushJob::from_slice(v.to_string().as_bytes())
    }

    fn with(mut v: Value, path: &[&str], new: Value) -> Value {
        let mut cur = &mut v;
        for key in &path[..path.len() - 1] {
            cur = cur.get_mut(*key).expect("path exists");
        }
        let last = path[path.len() - 1];
        match cur {
            Value::Object(m) => {
                if new.is_null() {
                    m.remove(last);
                } else {
                    m.insert(last.to_owned(), new);
                }
            }
            _ => panic!("not an object"),
        }
        v
    }

    #[test]
    fn a_good_job_parses_with_normalised_source() {
        let valid = parse(&good()).expect("valid");
        assert_eq!(valid.source.to_string(), "docker.io/library/myapp:0722");
        assert_eq!(valid.job.options.timeout_s, Some(900));
        assert_eq!(valid.job.metadata["pipeline_run"], 812);
        let targets = valid.targets_at("127.0.0.1:5001").expect("targets");
        assert_eq!(
            targets[0].to_string(),
            "127.0.0.1:5001/production/myapp:0722"
        );
    }

    #[test]
    fn defaults_apply_to_options_and_metadata() {
        let v = with(
            with(good(), &["options"], Value::Null),
            &["metadata"],
            Value::Null,
        );
        let valid = parse(&v).expect("valid");
        assert_eq!(valid.job.options, JobOptions::default());
        assert!(valid.job.metadata.is_empty());
        assert_eq!(valid.timeout_s_or(600), 600);
    }

    #[test]
    fn required_fields_are_required() {
        for path in [
            &["version"][..],
            &["job_id"],
            &["source"],
            &["target"],
            &["target", "registry"],
            &["target", "repository"],
            &["target", "tags"],
        ] {
            let err = parse(&with(good(), path, Value::Null)).expect_err("must fail");
            assert_eq!(err.code(), ErrorCode::InvalidMessage, "{path:?}: {err}");
            let field = path[path.len() - 1];
            assert!(err.to_string().contains(field), "{path:?}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level_but_metadata() {
        for path in [
            &["extra"][..],
            &["target", "extra"],
            &["options", "remove_local_tags"],
        ] {
            let err = parse(&with(good(), path, json!(true))).expect_err("must fail");
            assert!(matches!(err, JobError::Shape { .. }), "{path:?}: {err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        let ok = with(good(), &["metadata", "anything"], json!({"nested": [1, 2]}));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn version_other_than_one_is_unsupported_even_with_new_fields() {
        let v = with(
            with(good(), &["version"], json!(2)),
            &["new_field"],
            json!(1),
        );
        assert_eq!(parse(&v), Err(JobError::UnsupportedVersion { found: 2 }));
    }

    #[test]
    fn bad_values_get_specific_errors() {
        type Check = fn(&JobError) -> bool;
        let cases: Vec<(Value, Check)> = vec![
            (with(good(), &["job_id"], json!("")), |e| {
                matches!(e, JobError::InvalidJobId)
            }),
            (with(good(), &["job_id"], json!("a b")), |e| {
                matches!(e, JobError::InvalidJobId)
            }),
            (with(good(), &["job_id"], json!("x".repeat(129))), |e| {
                matches!(e, JobError::InvalidJobId)
            }),
            (with(good(), &["target", "tags"], json!([])), |e| {
                matches!(e, JobError::NoTags)
            }),
            (
                with(good(), &["target", "tags"], json!(["a", "b", "a"])),
                |e| matches!(e, JobError::DuplicateTag { tag } if tag == "a"),
            ),
            (
                with(
                    good(),
                    &["target", "tags"],
                    json!((0..17).map(|i| i.to_string()).collect::<Vec<_>>()),
                ),
                |e| matches!(e, JobError::TooManyTags { count: 17 }),
            ),
            (with(good(), &["options", "timeout_s"], json!(0)), |e| {
                matches!(e, JobError::TimeoutOutOfRange { found: 0 })
            }),
            (with(good(), &["options", "timeout_s"], json!(1701)), |e| {
                matches!(e, JobError::TimeoutOutOfRange { found: 1701 })
            }),
            (
                with(good(), &["source"], json!("MyApp:0722")),
                |e| matches!(e, JobError::Reference { field, .. } if field == "source"),
            ),
            (
                with(good(), &["target", "repository"], json!("Production/myapp")),
                |e| matches!(e, JobError::Reference { field, .. } if field == "target.repository"),
            ),
            (
                with(good(), &["target", "repository"], json!("a//b")),
                |e| matches!(e, JobError::Reference { field, .. } if field == "target.repository"),
            ),
            (
                with(good(), &["target", "tags"], json!(["ok", "bad tag"])),
                |e| matches!(e, JobError::Reference { field, .. } if field == "target.tags[1]"),
            ),
            (
                with(good(), &["metadata", "docker"], json!({"auth_config": {}})),
                |e| matches!(e, JobError::CredentialField { path } if path == "metadata.docker.auth_config"),
            ),
            (
                with(good(), &["metadata", "list"], json!([{"Password": "x"}])),
                |e| matches!(e, JobError::CredentialField { path } if path == "metadata.list[0].Password"),
            ),
        ];
        for (i, (v, check)) in cases.iter().enumerate() {
            let err = parse(v).expect_err("must fail");
            assert!(check(&err), "case {i}: unexpected {err:?}");
        }
    }

    #[test]
    fn credential_like_keys_are_found_in_any_spelling() {
        for key in [
            "password",
            "docker_password",
            "dockerPassword",
            "accessToken",
            "X-Registry-Auth",
            "auth_config",
            "authConfig",
            "API_KEY_SECRET",
            "apikey",
            "registrytoken",
            "p\u{430}ssword",
        ] {
            let mut m = Map::new();
            m.insert(key.to_owned(), json!("x"));
            assert!(
                find_credential_key(&m, "metadata").is_some(),
                "{key} was not caught"
            );
        }
        for key in [
            "author",
            "pipeline_run",
            "step",
            "tokenizer_version",
            "authored_by",
            "passage",
        ] {
            let mut m = Map::new();
            m.insert(key.to_owned(), json!("x"));
            assert_eq!(
                find_credential_key(&m, "metadata"),
                None,
                "{key} was refused"
            );
        }
    }

    #[test]
    fn reference_errors_carry_the_invalid_reference_code() {
        let err = parse(&with(good(), &["source"], json!("myapp:tag:extra"))).expect_err("fails");
        assert_eq!(err.code(), ErrorCode::InvalidReference);
        assert!(!err.hint().is_empty());
    }

    #[test]
    fn non_json_and_oversized_bodies_are_invalid_messages() {
        let err = PushJob::from_slice(b"{not json").expect_err("fails");
        assert!(matches!(err, JobError::NotJson { .. }));
        assert_eq!(err.code(), ErrorCode::InvalidMessage);
        let err = PushJob::from_slice(&[0xff, 0xfe, 0x00]).expect_err("fails");
        assert!(matches!(err, JobError::NotJson { .. }));
        let big = vec![b' '; MAX_JOB_BYTES + 1];
        assert_eq!(
            PushJob::from_slice(&big),
            Err(JobError::TooLarge {
                size: MAX_JOB_BYTES + 1
            })
        );
    }

    #[test]
    fn error_messages_never_echo_string_values() {
        let secret = "hunter2-S3cret";
        let v = with(good(), &["target", "tags"], json!(secret));
        let err = parse(&v).expect_err("fails");
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(err.to_string().contains("of 14 characters"), "{err}");
        let v = with(good(), &["version"], json!(secret));
        let err = parse(&v).expect_err("fails");
        assert!(!err.to_string().contains(secret), "{err}");
    }

    #[test]
    fn scrub_handles_escapes_and_unterminated_values() {
        assert_eq!(
            scrub_serde_message(r#"invalid type: string "a\"b", expected u32 at line 1"#),
            "invalid type: string of 4 characters, expected u32 at line 1"
        );
        assert_eq!(
            scrub_serde_message(r#"x string "abc"#),
            "x string (value withheld)"
        );
        assert_eq!(
            scrub_serde_message("missing field `job_id`"),
            "missing field `job_id`"
        );
    }

    #[test]
    fn peeking_recovers_job_id_and_metadata_from_bad_messages() {
        let v = with(good(), &["target"], json!("oops"));
        let body = serde_json::to_vec(&v).expect("json");
        assert!(PushJob::from_slice(&body).is_err());
        assert_eq!(peek_job_id(&body).as_deref(), Some("b7c1-0001"));
        assert_eq!(peek_metadata(&body)["step"], 129);
        assert_eq!(peek_job_id(b"garbage"), None);
        assert_eq!(peek_job_id(br#"{"job_id": "has space"}"#), None);
        assert!(peek_metadata(br#"{"metadata": {"token": "x"}}"#).is_empty());
    }

    #[test]
    fn content_type_must_be_json_when_given() {
        let body = good().to_string();
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
        ] {
            assert!(PushJob::from_message(body.as_bytes(), ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "",
            "application/xml; x=application/json",
        ] {
            let err = PushJob::from_message(body.as_bytes(), Some(bad)).expect_err(bad);
            assert!(
                matches!(err, JobError::WrongContentType { .. }),
                "{bad}: {err}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidMessage);
        }
    }

    #[test]
    fn to_json_round_trips() {
        let valid = parse(&good()).expect("valid");
        let again = PushJob::from_slice(&valid.job.to_json()).expect("valid");
        assert_eq!(again, valid);
    }
}
