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
//!   `target.repository` and `target.tags` (non-empty) are required; `pool` defaults to the
//!   default pool (see [`crate::pool`]); `source_registry` absent means the source is in the
//!   worker's Docker daemon ([`JobSource`]); `options` and each of its fields default (see
//!   [`JobOptions`]); `metadata` defaults to `{}`.
//! - **Optional fields added within version 1** (`pool`, `source_registry`) change nothing for
//!   a job that leaves them out; a worker that does not know one refuses a job that sets it (unknown field),
//!   which is what it should do: it cannot honour it.
//! - **No duplicate keys**: a key repeated within one object, at any depth, is refused
//!   ([`JobError::DuplicateKey`]); parsers disagree on which of the two values counts.
//! - **No credentials**: a job names a registry of the worker's catalogue; credentials live
//!   only in the worker's configuration. In `metadata`, keys named like credentials
//!   (`password`, `token`, `private_key`, `kubeconfig`, ...) and string values shaped like them
//!   (PEM blocks, Docker configs, `Bearer …`, base64 `user:password`, ...) are refused at any
//!   depth: see [`crate::credential`] and `docs/jobs.md`.
//! - **Size**: a message over [`MAX_JOB_BYTES`] is refused before it is parsed.
//! - **Order of checks**: size, JSON syntax, duplicate keys, version, shape (fields and
//!   types), then the values (job id, pool, tags, timeout, credentials, references). A message gets
//!   the error of the first check it fails.
//! - **Host-independent**: [`PushJob::validate`] checks the repository and tags on their own;
//!   the 255-character limit of `registry/repository` is applied by
//!   [`ValidJob::targets_at`] once the catalogue has given the real registry host.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::credential::{CredentialKind, Finding, find_credential};
use crate::duplicate_keys::{Scope, first_duplicate_key};
use crate::error_code::ErrorCode;
use crate::pool::{InvalidPool, Pool};
use crate::reference::{ImageRef, InRegistry, ReferenceError};

pub(crate) use crate::credential::find_credential_key;

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
/// The longest registry name (`target.registry`, `source_registry`): a catalogue key or alias.
pub const MAX_REGISTRY_NAME_LEN: usize = 128;

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
    /// A key or alias of the worker's registry catalogue that holds `source` (e.g. a CI or
    /// staging registry): the worker then copies the image registry to registry, with no Docker
    /// daemon, and `source` is a repository path in that registry with a tag or digest
    /// (`ci/myapp:0722`, `ci/myapp@sha256:…`). Absent: `source` is in the worker's daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub source_registry: Option<String>,
    /// The pool whose Docker daemon holds `source` (a build host), e.g. `build-01`: the job is
    /// published to that pool's queue and only its workers take it. Absent: the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub pool: Option<String>,
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
    #[schemars(range(min = 1, max = MAX_TIMEOUT_S))]
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
    /// A key appears twice in one JSON object of the body, at any depth.
    #[error("{path} appears twice in the same JSON object")]
    DuplicateKey {
        /// JSON path of the repeated key, e.g. `target.registry` or `metadata.a.b`.
        path: String,
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
    /// `pool` is not a pool name (see [`crate::pool`]).
    #[error("{0}")]
    InvalidPool(#[from] InvalidPool),
    /// `source_registry` is empty or longer than [`MAX_REGISTRY_NAME_LEN`].
    #[error(
        "source_registry must be 1 to {MAX_REGISTRY_NAME_LEN} characters: a catalogue key or alias"
    )]
    InvalidSourceRegistry,
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
    /// The job carries a field whose name marks it as a credential.
    #[error("{path} looks like a credential; jobs must not carry credentials")]
    CredentialField {
        /// JSON path of the field, e.g. `metadata.docker.password`.
        path: String,
    },
    /// A string in `metadata` (or a key of it) is shaped like a credential. The value is never
    /// shown.
    #[error("{path} holds what looks like {kind}; jobs must not carry credentials")]
    CredentialValue {
        /// JSON path of the value, e.g. `metadata.deploy.key`.
        path: String,
        /// What it was recognised as.
        kind: CredentialKind,
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
            JobError::CredentialField { .. } | JobError::CredentialValue { .. } => {
                "remove it: the worker takes credentials from its registry catalogue (what counts \
                 as a credential: docs/jobs.md, \"No credentials in jobs\")"
                    .to_owned()
            }
            JobError::InvalidPool(_) => "name the pool as the workers' `worker.pools` do \
                                         (lowercase letters, digits and '-'), or leave `pool` \
                                         out for the default pool"
                .to_owned(),
            JobError::DuplicateKey { .. } => "send each key once per object: parsers disagree on \
                                              which of two equal keys counts"
                .to_owned(),
            other => other.code().default_hint().to_owned(),
        }
    }
}

/// Where a job's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSource {
    /// An image in the worker's Docker daemon, normalised (`myapp:0722` ->
    /// `docker.io/library/myapp:0722`).
    Daemon(ImageRef),
    /// An image in a registry of the worker's catalogue (`source_registry`).
    Registry {
        /// The catalogue key or alias, as the job gave it.
        registry: String,
        /// The image in it.
        image: InRegistry,
    },
}

/// The daemon image as normalised (`docker.io/library/myapp:0722`); a registry image as
/// `ci/myapp:0722 in registry staging`.
impl std::fmt::Display for JobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobSource::Daemon(image) => image.fmt(f),
            JobSource::Registry { registry, image } => {
                write!(
                    f,
                    "{} in registry {registry}",
                    image.at("").trim_start_matches('/')
                )
            }
        }
    }
}

impl JobSource {
    /// The daemon image, for a daemon-source job.
    pub fn daemon_image(&self) -> Option<&ImageRef> {
        match self {
            JobSource::Daemon(image) => Some(image),
            JobSource::Registry { .. } => None,
        }
    }
}

/// A job that passed validation, with its source reference parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The message as received.
    pub job: PushJob,
    /// The source image.
    pub source: JobSource,
    /// The job's pool (the default pool when the job names none).
    pub pool: Pool,
}

impl ValidJob {
    /// The exact references this job pushes when `target.registry` resolves to a registry whose
    /// image host is `registry_host` (`127.0.0.1:5001`, `reg.example.com:10443`).
    ///
    /// This is where the 255-character limit of `registry/repository` is applied, with the
    /// real host: a repository that fits behind a short host may not fit behind a long one.
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

impl PushJob {
    /// Parses and validates a message body.
    pub fn from_slice(body: &[u8]) -> Result<ValidJob, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge { size: body.len() });
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| JobError::NotJson {
            detail: scrub_serde_message(&e.to_string()),
        })?;
        // Before anything reads a field: with a repeated key, `value` holds only the last one.
        if let Some(path) = first_duplicate_key(body, Scope::Everywhere) {
            return Err(JobError::DuplicateKey { path });
        }
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
    ///
    /// Nothing here depends on the registry host, which only the catalogue knows: the
    /// repository and each tag are checked on their own ([`ImageRef::check_target`]), and
    /// [`ValidJob::targets_at`] applies the length limit of the whole name with the real host.
    pub fn validate(self) -> Result<ValidJob, JobError> {
        if self.version != JOB_VERSION {
            return Err(JobError::UnsupportedVersion {
                found: u64::from(self.version),
            });
        }
        if !is_valid_job_id(&self.job_id) {
            return Err(JobError::InvalidJobId);
        }
        let pool = match &self.pool {
            Some(name) => Pool::parse(name)?,
            None => Pool::default(),
        };
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
        if let Some(finding) = find_credential(&self.metadata, "metadata") {
            return Err(finding.into());
        }
        let reference_error = |source| JobError::Reference {
            field: "source".to_owned(),
            source,
        };
        let source = match &self.source_registry {
            None => JobSource::Daemon(ImageRef::parse(&self.source).map_err(reference_error)?),
            Some(registry) => {
                if registry.is_empty() || registry.len() > MAX_REGISTRY_NAME_LEN {
                    return Err(JobError::InvalidSourceRegistry);
                }
                JobSource::Registry {
                    registry: registry.clone(),
                    image: ImageRef::parse_in_registry(&self.source).map_err(reference_error)?,
                }
            }
        };
        for (i, tag) in tags.iter().enumerate() {
            ImageRef::check_target(&self.target.repository, tag).map_err(|source| {
                JobError::Reference {
                    field: target_field(i, &source),
                    source,
                }
            })?;
        }
        Ok(ValidJob {
            job: self,
            source,
            pool,
        })
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
/// echo it. Returns an empty map unless `metadata` is an object free of credentials (keys
/// named like one and values shaped like one, as [`PushJob::validate`] judges them) and of
/// repeated keys (which would make the echo one reading among several).
pub fn peek_metadata(body: &[u8]) -> Map<String, Value> {
    if body.len() > MAX_JOB_BYTES {
        return Map::new();
    }
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(body) else {
        return Map::new();
    };
    match root.remove("metadata") {
        Some(Value::Object(m))
            if find_credential(&m, "metadata").is_none()
                && first_duplicate_key(body, Scope::Under("metadata")).is_none() =>
        {
            m
        }
        _ => Map::new(),
    }
}

impl From<Finding> for JobError {
    fn from(finding: Finding) -> Self {
        match finding {
            Finding::Key(path) => JobError::CredentialField { path },
            Finding::Value { path, kind } => JobError::CredentialValue { path, kind },
        }
    }
}

fn is_valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
    use crate::reference::REPOSITORY_MAX_LEN;
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
    fn the_pool_defaults_and_is_checked() {
        assert!(parse(&good()).expect("valid").pool.is_default());
        let named = parse(&with(good(), &["pool"], json!("build-01"))).expect("valid");
        assert_eq!(named.pool.as_str(), "build-01");
        assert!(named.job.to_json().starts_with(
            br#"{"version":1,"job_id":"b7c1-0001","source":"myapp:0722","pool":"build-01","target""#
        ));
        for bad in [json!("Build-01"), json!("a.b"), json!(""), json!("-x")] {
            let err = parse(&with(good(), &["pool"], bad.clone())).expect_err("must fail");
            assert!(matches!(err, JobError::InvalidPool(_)), "{bad}: {err}");
            assert_eq!(err.code(), ErrorCode::InvalidMessage);
        }
        let err = parse(&with(good(), &["pool"], json!(7))).expect_err("must fail");
        assert!(matches!(err, JobError::Shape { .. }), "{err}");
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

    /// Key names and whether a job carrying them in `metadata` is refused. The reasons for the
    /// borderline rows are in docs/jobs.md, "No credentials in jobs".
    const KEYS: &[(&str, bool)] = &[
        ("password", true),
        ("docker_password", true),
        ("dockerPassword", true),
        ("passwords", true),
        ("passwd", true),
        ("passphrase", true),
        ("accessToken", true),
        ("X-Registry-Auth", true),
        ("auth", true),
        ("auth_config", true),
        ("authConfig", true),
        ("API_KEY_SECRET", true),
        ("client_secret", true),
        ("secrets", true),
        ("apikey", true),
        ("api_key", true),
        ("registrytoken", true),
        ("identitytoken", true),
        ("tokens", true),
        ("token_count", true), // the word `token`: rename it (`tokenizer_calls`)
        ("p\u{430}ssword", true), // not ASCII: a look-alike
        ("private_key", true),
        ("privateKey", true),
        ("PRIVATE-KEY", true),
        ("ssh_private_key", true),
        ("privkey", true),
        ("ssh_key", true),
        ("sshKey", true),
        ("SSH_KEYS", true),
        ("ssh_key_path", true), // judged by name: `deploy_key_file` passes
        ("id_rsa", true),
        ("id_ed25519", true),
        ("idEd25519", true),
        ("id_ecdsa", true),
        ("id_dsa", true),
        ("dockerconfigjson", true),
        (".dockerconfigjson", true),
        ("docker_config_json", true),
        ("dockercfg", true),
        (".dockercfg", true),
        ("kubeconfig", true),
        ("KUBECONFIG", true),
        ("kube_config", true),
        ("kubeConfig", true),
        ("authorization", true),
        ("Proxy-Authorization", true),
        ("bearer", true),
        ("bearer_token", true),
        ("author", false),
        ("authors", false),
        ("authored_by", false),
        ("oauth", false),
        ("auths", false), // a Docker config's map: the `auth`/`password` inside it are refused
        ("pipeline_run", false),
        ("step", false),
        ("tokenizer_version", false),
        ("passage", false),
        ("keyboard", false),
        ("monkey", false),
        ("key", false),
        ("keys", false),
        ("deploy_key_file", false),
        ("public_key", false), // by name; a PEM value under it is refused by its shape
        ("ssh_host", false),
        ("kube_context", false),
        ("docker_config", false), // names a config's location (worker config, Django step)
        ("dockerConfig", false),
        ("docker_config_path", false),
        ("identity", false),
        ("cwd", false),
    ];

    #[test]
    fn credential_keys_table() {
        for &(key, refused) in KEYS {
            assert_eq!(
                crate::credential::is_credential_key(key),
                refused,
                "{key:?}"
            );
            let result = parse(&with(good(), &["metadata", "deploy"], json!({ key: 1 })));
            if refused {
                let err = result.expect_err(key);
                assert!(
                    matches!(&err, JobError::CredentialField { path } if path.starts_with("metadata.deploy")),
                    "{key:?}: {err:?}"
                );
                assert_eq!(err.code(), ErrorCode::InvalidMessage);
                assert!(err.hint().contains("docs/jobs.md"), "{}", err.hint());
            } else {
                assert!(result.is_ok(), "{key:?}: {result:?}");
            }
        }
        let err = parse(&with(good(), &["metadata", "p\u{430}ssword"], json!(1))).expect_err("x");
        assert_eq!(
            err,
            JobError::CredentialField {
                path: r#"metadata["p\u{430}ssword"]"#.to_owned()
            }
        );
    }

    const PAIR: &str = "cm9ib3QkY2k6UzNjcjN0LVBhNTU="; // robot$ci:S3cr3t-Pa55
    const JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.\
                       eyJzdWIiOiJyb2JvdCRjaSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLWJ5dGVz";

    /// String values and what they are recognised as (`None`: accepted).
    fn values() -> Vec<(String, Option<CredentialKind>)> {
        use CredentialKind::*;
        let docker_config =
            r#"{"auths":{"harbor.example.com":{"auth":"cm9ib3QkY2k6UzNjcjN0LVBhNTU="}}}"#;
        let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: ci\n  user:\n    token: abc\n";
        let rows: Vec<(&str, Option<CredentialKind>)> = vec![
            // PEM and other private keys.
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----\n",
                Some(PrivateKey),
            ),
            (
                "  \n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n",
                Some(PrivateKey),
            ),
            (
                "key:\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY-----",
                Some(PrivateKey),
            ),
            (
                "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
                Some(PemBlock),
            ),
            (
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB",
                Some(PrivateKey),
            ),
            (
                "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
                Some(PrivateKey),
            ),
            (
                "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlCT2dJQkFBSkJBSwotLS0tLUVORCBSU0EgUFJJVkFURSBLRVktLS0tLQo=",
                Some(PrivateKey), // base64 of a PEM private key, as in a Kubernetes secret
            ),
            // Docker configs and auth fields.
            (docker_config, Some(DockerConfig)),
            (
                "eyJhdXRocyI6eyJoYXJib3IuZXhhbXBsZS5jb20iOnsiYXV0aCI6ImNtOWliM1FrWTJrNlV6Tmpjak4wTFZCaE5UVT0ifX19",
                Some(DockerConfig), // base64 of it: `.dockerconfigjson`
            ),
            (
                r#"{"auths": {"r.example.com": {"username": "u", "password": "p"}}}"#,
                Some(DockerConfig),
            ),
            (PAIR, Some(Base64UserPassword)),
            ("cm9ib3QkY2k6UzNjcjN0LVBhNTU", Some(Base64UserPassword)), // unpadded
            ("Y2ktdXNlcjpwPj9+fj4=", Some(Base64UserPassword)),        // ci-user:p>?~~>
            ("Y2ktdXNlcjpwPj9-fj4=", Some(Base64UserPassword)),        // the same, URL-safe
            ("cmVmOm1haW4=", Some(Base64UserPassword)), // `ref:main`: a known false positive
            // Kubeconfigs.
            (kubeconfig, Some(Kubeconfig)),
            (
                r#"{"apiVersion": "v1", "kind": "Config", "users": []}"#,
                Some(Kubeconfig),
            ),
            (
                "YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmlnCmNsdXN0ZXJzOiBbXQp1c2VyczoKLSBuYW1lOiBjaQogIHVzZXI6CiAgICB0b2tlbjogYWJjCg==",
                Some(Kubeconfig),
            ),
            // Authorization values and tokens.
            ("Bearer 0123456789abcdefXYZ", Some(AuthorizationHeader)),
            (
                "bearer  abcdef0123456789abcdef==",
                Some(AuthorizationHeader),
            ),
            (
                "Authorization: Basic cm9ib3QkY2k6UzNjcjN0LVBhNTU=",
                Some(AuthorizationHeader),
            ),
            (
                "Basic cm9ib3QkY2k6UzNjcjN0LVBhNTU=",
                Some(AuthorizationHeader),
            ),
            (JWT, Some(JsonWebToken)),
            ("dckr_pat_2b3e36beeb386dfdaacb9b46004", Some(AccessToken)),
            ("glpat-xxxxxxxxxxxxxxxxxxxx", Some(AccessToken)),
            (
                "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
                Some(AccessToken),
            ),
            (
                "eyJwYXlsb2FkIjogImFiYyIsICJkYXRha2V5IjogImRlZiIsICJ2ZXJzaW9uIjogIjIiLCAidHlwZSI6ICJEQVRBX0tFWSIsICJleHBpcmF0aW9uIjogMX0=",
                Some(AccessToken), // `aws ecr get-login-password`
            ),
            // Ordinary metadata.
            ("author", None),
            ("keyboard", None),
            ("monkey", None),
            ("password", None),
            ("hunter2", None), // a bare password is a word: known false negative
            ("admin:hunter2", None), // unencoded pairs look like `myapp:0722`: not judged
            ("myapp:0722", None),
            ("production/myapp", None),
            ("harbor.example.com:10443/production/myapp:0722", None),
            ("https://harbor.example.com/harbor/projects/5", None),
            ("/run/secrets/pushfleet/dockerhub/.dockerconfigjson", None),
            ("/etc/docker/config", None),
            ("3f786850e387550fdab836ed7e6dc881de23001b", None), // a commit SHA
            ("123e4567-e89b-12d3-a456-426614174000", None),     // a UUID
            (
                "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                None,
            ),
            ("20240722", None),
            ("dGVzdA==", None),                     // base64 of `test`: not a pair
            ("YnVpbGQtMTIz", None),                 // base64 of `build-123`
            ("aHR0cHM6Ly9leGFtcGxlLmNvbQ==", None), // base64 of `https://example.com`
            ("eyJhbGciOiJIUzI1NiJ9", None),         // base64 of `{"alg":"HS256"}` alone
            ("Xk9vQ2pLm7Tz", None),
            ("build-20240722-abc123", None),
            ("v1.2.3", None),
            ("Deploy myapp 0722 to production", None),
            ("Basic auth is disabled", None),
            ("Basic dGVzdA==", None),
            ("Bearer token", None),
            ("Bearer tokens expire after 300 s", None),
            ("Bearer abcdefghijklmnopqrstu", None), // no digit: a word, not a token
            ("bearer", None),
            ("-----", None),
            ("-- BEGIN --", None),
            (r#"{"auths": {}}"#, None),
            (r#"{"credsStore": "desktop"}"#, None),
            ("apiVersion: v1\nkind: ConfigMap\ndata:\n  users: x\n", None),
            ("ghp_short", None),
            ("a.b.c", None),
        ];
        rows.into_iter().map(|(v, k)| (v.to_owned(), k)).collect()
    }

    #[test]
    fn credential_values_table() {
        for (value, kind) in values() {
            assert_eq!(
                crate::credential::credential_value(&value),
                kind,
                "{value:?}"
            );
            // Anywhere in metadata: at depth, in arrays.
            let body = with(
                good(),
                &["metadata", "deploy"],
                json!({ "list": [1, { "key": value }] }),
            );
            match (parse(&body), kind) {
                (Ok(_), None) => {}
                (Err(err), Some(kind)) => {
                    assert_eq!(
                        err,
                        JobError::CredentialValue {
                            path: "metadata.deploy.list[1].key".to_owned(),
                            kind
                        }
                    );
                    assert_eq!(err.code(), ErrorCode::InvalidMessage);
                    let message = err.to_string();
                    assert!(!message.contains(value.trim()), "{message}");
                    assert!(message.contains(&kind.to_string()), "{message}");
                }
                (other, _) => panic!("{value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_key_shaped_like_a_credential_is_refused_and_withheld() {
        let err = parse(&with(good(), &["metadata", JWT], json!(true))).expect_err("refused");
        assert_eq!(
            err,
            JobError::CredentialValue {
                path: "metadata.<withheld>".to_owned(),
                kind: CredentialKind::JsonWebToken
            }
        );
        assert!(!err.to_string().contains("eyJ"), "{err}");
    }

    #[test]
    fn random_ids_are_not_credentials() {
        // Identifiers of the shapes CI systems generate, from a fixed pseudo-random sequence:
        // hex of every length, alphanumerics of 8 to 40 characters, URL-safe ids.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        const HEX: &[u8] = b"0123456789abcdef";
        let mut flagged = Vec::new();
        for i in 0..30_000u64 {
            let alphabet = if i % 3 == 0 { HEX } else { ALNUM };
            let len = 12 + usize::try_from(next() % 29).unwrap_or(0);
            let id: String = (0..len)
                .map(|_| {
                    let at = usize::try_from(next() % alphabet.len() as u64).unwrap_or(0);
                    char::from(alphabet[at])
                })
                .collect();
            if crate::credential::credential_value(&id).is_some() {
                flagged.push(id);
            }
        }
        assert!(flagged.is_empty(), "{flagged:?}");
    }

    #[test]
    fn peek_metadata_withholds_credential_values_and_repeated_keys() {
        let v = with(good(), &["target"], json!("oops"));
        let v = with(v, &["metadata", "note"], json!(format!("Bearer {JWT}")));
        let body = serde_json::to_vec(&v).expect("json");
        assert!(PushJob::from_slice(&body).is_err());
        assert!(peek_metadata(&body).is_empty());
        assert!(
            peek_metadata(br#"{"metadata": {"a": [{"b": "cm9ib3QkY2k6UzNjcjN0LVBhNTU="}]}}"#)
                .is_empty()
        );
        assert!(peek_metadata(br#"{"metadata": {"a": 1, "a": 2}}"#).is_empty());
        assert!(peek_metadata(br#"{"metadata": {"a": 1}, "metadata": {"a": 1}}"#).is_empty());
        // A repeat elsewhere leaves the metadata readable, for correlation.
        assert_eq!(
            peek_metadata(br#"{"target": 1, "target": 2, "metadata": {"step": 129}}"#)["step"],
            129
        );
    }

    #[test]
    fn the_django_mapping_and_the_credential_rule_agree() {
        use crate::django::{DjangoMappingError, DjangoPushStep};
        let step = |docker_config: Value| -> Result<ValidJob, DjangoMappingError> {
            let s: DjangoPushStep = serde_json::from_value(json!({
                "image": "myapp", "tag": "0722", "registry_id": 5, "docker_config": docker_config
            }))
            .expect("step");
            s.to_job("production", "j-1", Map::new())
        };
        // `docker_config` names a config, by location or as an empty object: echoed as is.
        for ok in [
            json!({}),
            json!("/run/secrets/pushfleet/dockerhub/.dockerconfigjson"),
            json!({"auths": {}}),
            json!({"credsStore": "desktop"}),
        ] {
            let job = step(ok.clone()).expect("maps");
            assert_eq!(job.job.metadata["django"]["docker_config"], ok);
            // What the mapping builds is what a worker accepts.
            assert!(PushJob::from_slice(&job.job.to_json()).is_ok());
        }
        // Credentials in it are refused, by key name or by value shape.
        let e = step(json!({"auths": {"r.example.com": {"auth": PAIR}}})).expect_err("key");
        assert_eq!(
            e,
            DjangoMappingError::Job(JobError::CredentialField {
                path: r#"docker_config.auths["r.example.com"].auth"#.to_owned()
            })
        );
        let e = step(json!(PAIR)).expect_err("value");
        assert_eq!(
            e,
            DjangoMappingError::Job(JobError::CredentialValue {
                path: "metadata.django.docker_config".to_owned(),
                kind: CredentialKind::Base64UserPassword
            })
        );
        assert!(!e.to_string().contains(PAIR));
    }

    #[test]
    fn hostile_keys_and_values_are_judged_in_linear_time() {
        // Near the size limit: one key of 20,000 one-letter words, one string of 60,000
        // base64 characters, and a repeated key after 3,000 others.
        let words = vec!["a"; 20_000].join(".");
        let started = std::time::Instant::now();
        let v = with(good(), &["metadata", &words], json!(1));
        assert!(parse(&v).is_ok());
        let v = with(good(), &["metadata", "blob"], json!("QUJD".repeat(15_000)));
        assert!(parse(&v).is_ok());
        let mut body = String::from(r#"{"metadata":{"#);
        for i in 0..3_000 {
            body.push_str(&format!(r#""k{i}":1,"#));
        }
        body.push_str(r#""k0":1}}"#);
        assert_eq!(
            PushJob::from_slice(body.as_bytes()),
            Err(JobError::DuplicateKey {
                path: "metadata.k0".to_owned()
            })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Bodies with a key repeated somewhere, and the path the error names.
    const DUPLICATES: &[(&str, &str)] = &[
        (
            r#"{"version":1,"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]}}"#,
            "version",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"nope","repository":"production/myapp","tags":["1"]},"target":{"registry":"5","repository":"production/myapp","tags":["1"]}}"#,
            "target",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"nope","registry":"5","repository":"production/myapp","tags":["1"]}}"#,
            "target.registry",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"options":{"timeout_s":1,"timeout_s":900}}"#,
            "options.timeout_s",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"metadata":{"a":1,"a":2}}"#,
            "metadata.a",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"metadata":{"a":{"b":1,"c":2,"b":1}}}"#,
            "metadata.a.b",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"metadata":{"list":[{"x":1},{"x":1,"x":1}]}}"#,
            "metadata.list[1].x",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"metadata":{"a":1,"\u0061":1}}"#,
            "metadata.a",
        ),
        (
            r#"{"version":1,"job_id":"j","source":"myapp:1","target":{"registry":"harbor","repository":"production/myapp","tags":["1"]},"metadata":{"a.b":1,"a.b":1}}"#,
            r#"metadata["a.b"]"#,
        ),
        (
            r#"{"metadata":[[{"deep":{"x":[{"y":1,"y":1}]}}]],"version":2}"#,
            "metadata[0][0].deep.x[0].y",
        ),
    ];

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        for &(body, path) in DUPLICATES {
            let err = PushJob::from_slice(body.as_bytes()).expect_err(body);
            assert_eq!(
                err,
                JobError::DuplicateKey {
                    path: path.to_owned()
                },
                "{body}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidMessage);
            assert!(err.hint().contains("once"), "{}", err.hint());
            assert!(!err.to_string().contains("nope"), "{err}");
        }
        // The same key in different objects is fine.
        let v = with(
            good(),
            &["metadata", "target"],
            json!({"registry": "x", "tags": [{"registry": 1}]}),
        );
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn checks_run_in_order_size_json_duplicates_version_shape() {
        let huge = format!(r#"{{"a":1,"a":1,"b":"{}"}}"#, "x".repeat(MAX_JOB_BYTES));
        assert!(matches!(
            PushJob::from_slice(huge.as_bytes()),
            Err(JobError::TooLarge { .. })
        ));
        assert!(matches!(
            PushJob::from_slice(br#"{"version":1,"version":1"#),
            Err(JobError::NotJson { .. })
        ));
        assert!(matches!(
            PushJob::from_slice(br#"{"version":2,"version":2,"v2_field":true}"#),
            Err(JobError::DuplicateKey { .. })
        ));
        assert!(matches!(
            PushJob::from_slice(br#"{"target":"x","target":"x"}"#),
            Err(JobError::DuplicateKey { .. })
        ));
        assert!(matches!(
            PushJob::from_slice(br#"{"version":2,"metadata":{"password":"x"}}"#),
            Err(JobError::UnsupportedVersion { found: 2 })
        ));
    }

    #[test]
    fn repository_length_counts_the_real_host_not_a_placeholder() {
        // 240 characters: behind `127.0.0.1:5001/` the name is 255 characters and fits; behind
        // a placeholder such as `registry.invalid/` it would be 257.
        let repository = format!("team-a/{}", "a".repeat(233));
        assert_eq!(repository.len(), 240);
        let valid = parse(&with(good(), &["target", "repository"], json!(repository)))
            .expect("no host is known yet: the repository alone is fine");
        let short = valid.targets_at("127.0.0.1:5001").expect("fits");
        assert_eq!(short[0].name().len(), 255);
        let err = valid
            .targets_at("registry.example.com:10443")
            .expect_err("does not fit behind a long host");
        assert!(
            matches!(&err, JobError::Reference { field, source: ReferenceError::NameTooLong { length: 267, .. } } if field == "target.repository"),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidReference);

        // A repository no host leaves room for is refused before the catalogue is consulted.
        let at_bound = format!("team-a/{}", "a".repeat(REPOSITORY_MAX_LEN - 7));
        assert!(parse(&with(good(), &["target", "repository"], json!(at_bound))).is_ok());
        let over = format!("{at_bound}a");
        let err = parse(&with(good(), &["target", "repository"], json!(over))).expect_err("long");
        assert!(
            matches!(&err, JobError::Reference { field, source: ReferenceError::RepositoryTooLong { .. } } if field == "target.repository"),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidReference);
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
