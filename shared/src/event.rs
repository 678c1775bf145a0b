//! Result events: what workers tell monitoring consumers and Django about a job.
//!
//! Every event is published to the events topic exchange with routing key `job.<state>`
//! ([`Event::routing_key`]). Consumers dedupe by `event_id` (delivery is at-least-once) and
//! correlate by `job_id` and the `metadata` echoed from the job. A job's life is
//! `accepted` -> `progress`* -> one terminal state: `succeeded`, `failed` or `dead`;
//! `retrying` ends one attempt and announces the next.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error_code::ErrorCode;

/// The only event version this crate writes.
pub const EVENT_VERSION: u32 = 1;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A worker took the job and is starting on it.
    Accepted,
    /// The push is under way (at most about one a second per job).
    Progress,
    /// This attempt failed with a retryable error; the job comes back after a delay.
    Retrying,
    /// Every target tag is in the registry with the reported digest. Terminal.
    Succeeded,
    /// The job failed and will not be retried. Terminal.
    Failed,
    /// The job failed retryably too often and was dead-lettered. Terminal.
    Dead,
}

impl JobState {
    /// The wire form, e.g. `"succeeded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Accepted => "accepted",
            JobState::Progress => "progress",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    /// Whether no further event follows for this job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Dead
        )
    }
}

/// How a target tag came to hold the image (`succeeded` events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TagPath {
    /// The Docker daemon pushed the image under the tag.
    Push,
    /// The target repository already held the image's manifest: the worker put the same
    /// manifest bytes under the tag (`PUT /v2/<repo>/manifests/<tag>`), without the daemon.
    Retag,
    /// The tag already pointed at the image's manifest: nothing was written.
    Noop,
    /// The image was copied from the job's `source_registry` and its manifest put under the
    /// tag by the worker, with no daemon (see [`CopyInfo`]).
    Copy,
}

impl TagPath {
    /// The wire form, e.g. `"retag"` (also the `path` label of the tag metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            TagPath::Push => "push",
            TagPath::Retag => "retag",
            TagPath::Noop => "noop",
            TagPath::Copy => "copy",
        }
    }

    /// The path of a whole job from the paths of its tags: `push` when the daemon pushed any
    /// tag, else `copy` when the image was copied from a source registry, else `retag` when
    /// any tag was written registry-side, else `noop`.
    pub fn of_job(tags: impl IntoIterator<Item = TagPath>) -> TagPath {
        tags.into_iter()
            .fold(TagPath::Noop, |job, tag| match (job, tag) {
                (TagPath::Push, _) | (_, TagPath::Push) => TagPath::Push,
                (TagPath::Copy, _) | (_, TagPath::Copy) => TagPath::Copy,
                (TagPath::Retag, _) | (_, TagPath::Retag) => TagPath::Retag,
                (TagPath::Noop, TagPath::Noop) => TagPath::Noop,
            })
    }
}

/// The error object of `failed`, `retrying` and `dead` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventError {
    /// Stable machine-readable code (see `docs/errors.md`).
    pub code: ErrorCode,
    /// What happened, for a person. Never contains a credential.
    pub message: String,
    /// Whether trying again later can succeed.
    pub retryable: bool,
    /// What to do about it.
    pub hint: String,
}

impl EventError {
    /// An error with the code's own `retryable` flag. `message` and `hint` are cut to
    /// [`MAX_ERROR_TEXT_BYTES`] each (a hostile input quoted in an error must not make events
    /// huge).
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            code,
            message: cut(message.into()),
            retryable: code.retryable(),
            hint: cut(hint.into()),
        }
    }
}

/// The longest `message` or `hint` of an event error, in bytes.
pub const MAX_ERROR_TEXT_BYTES: usize = 2048;

fn cut(text: String) -> String {
    crate::text::truncate(&text, MAX_ERROR_TEXT_BYTES)
}

/// Bytes moved so far, in `progress` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The stage under way: `preflight`, `push`, `verify`, ...
    pub phase: String,
    /// Bytes uploaded so far over all layers.
    pub bytes_done: u64,
    /// Bytes to upload over all layers known so far (grows as the daemon reports layers).
    pub bytes_total: u64,
}

/// Milliseconds spent in each stage of an attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseTimings {
    /// Looking the source image up in the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve_ms: Option<u64>,
    /// Registry reachability, authentication and push-rights checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight_ms: Option<u64>,
    /// Tagging the source with the target references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_ms: Option<u64>,
    /// The daemon's push, all tags it pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_ms: Option<u64>,
    /// Tags written registry-side: reading the manifest the repository holds, checking each
    /// tag and putting the manifest under the tags that lacked it (no daemon involved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retag_ms: Option<u64>,
    /// Copying a registry-source image: blobs skipped, mounted or streamed, then the
    /// manifests put and each tag checked (no daemon involved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_ms: Option<u64>,
    /// Checking the manifest digest in the registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_ms: Option<u64>,
    /// Removing the local target tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untag_ms: Option<u64>,
    /// The whole attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// How the preflight established the right to push (`succeeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreflightMethod {
    /// The registry's token service granted `push` on the repository, as the `access` claim of
    /// the Bearer token it issued says; no upload was started.
    TokenClaims,
    /// A tiny blob upload to the repository was accepted (Basic-auth and anonymous
    /// registries, tokens that are not Docker-format JWTs).
    UploadProbe,
    /// A recent preflight for the same repository and credential proved it, possibly one
    /// that ran concurrently for another job; no request was sent.
    Cached,
}

impl PreflightMethod {
    /// The wire form, e.g. `"token_claims"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PreflightMethod::TokenClaims => "token_claims",
            PreflightMethod::UploadProbe => "upload_probe",
            PreflightMethod::Cached => "cached",
        }
    }
}

/// What the preflight of an attempt did (`succeeded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreflightInfo {
    /// How the right to push was established.
    pub method: PreflightMethod,
}

/// What a registry-to-registry copy did (`succeeded` events of `source_registry` jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyInfo {
    /// The catalogue key of the source registry.
    pub source_registry: String,
    /// The media type of the copied manifest (an image manifest, or an index of several).
    pub media_type: String,
    /// The child manifests of an index, by digest, in index order (empty for an image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// Blobs the target repository already had.
    pub blobs_skipped: u32,
    /// Blobs mounted from the source repository (same registry): nothing transferred.
    pub blobs_mounted: u32,
    /// Blobs streamed from the source registry into the target.
    pub blobs_streamed: u32,
    /// Bytes of all the image's blobs.
    pub bytes_total: u64,
    /// Bytes streamed from source to target (the rest was skipped or mounted).
    pub bytes_streamed: u64,
}

/// When the next attempt of a `retrying` job is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInfo {
    /// Delay before the next attempt, in milliseconds.
    pub delay_ms: u64,
    /// The attempt number that comes next.
    pub next_attempt: u32,
    /// When it is due (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub next_attempt_at: OffsetDateTime,
}

/// One event about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pushfleet job event, version 1")]
pub struct Event {
    /// Event format version; always 1.
    pub version: u32,
    /// Unique per event: consumers dedupe by it.
    pub event_id: Uuid,
    /// The job's id; absent only when the message was too broken to read one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Where the job is.
    pub state: JobState,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The worker that published this event.
    pub worker: String,
    /// When the event was made (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub at: OffsetDateTime,
    /// The catalogue key of the target registry, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The source image, normalised, once the job was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The exact references pushed (or to be pushed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The manifest digest in the registry (`succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The manifest size in bytes, as the daemon reported it or as read from the registry
    /// (`succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes uploaded by this attempt (`succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The targets already held the expected digest, so nothing was pushed or written
    /// (`succeeded`; true exactly when `path` is `noop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already_present: Option<bool>,
    /// How the job's tags got there (`succeeded`): `push` when the daemon pushed (at least one
    /// tag), `copy` when the image was copied from the job's source registry, `retag` when the
    /// repository already held the manifest and the worker only wrote tags, `noop` when every
    /// tag already pointed at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<TagPath>,
    /// Per target reference (as in `targets`), how that tag got there (`succeeded`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_paths: BTreeMap<String, TagPath>,
    /// What the preflight did (`succeeded`, when this attempt ran one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightInfo>,
    /// What the copy did (`succeeded`, when `path` is `copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyInfo>,
    /// Upload progress (`progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Time per stage (`succeeded`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<PhaseTimings>,
    /// The next attempt (`retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryInfo>,
    /// What went wrong (`failed`, `retrying`, `dead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// The job's `metadata`, echoed unchanged.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The W3C trace context of the attempt, when the job message carried a valid
    /// `traceparent` header: the attempt is a span whose parent is the publisher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// W3C trace context (<https://www.w3.org/TR/trace-context/>) of a job attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`: the publisher's trace id, and the attempt's own
    /// span id (a child of the publisher's span).
    pub traceparent: String,
    /// The publisher's span id, the parent of the attempt's span (16 hex digits).
    pub parent_span_id: String,
    /// The `tracestate` header, echoed, when the message carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Event {
    /// A new event with a fresh `event_id`, stamped now, with no optional fields set.
    pub fn new(state: JobState, job_id: Option<String>, attempt: u32, worker: &str) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: Uuid::new_v4(),
            job_id,
            state,
            attempt,
            worker: worker.to_owned(),
            at: OffsetDateTime::now_utc(),
            registry: None,
            source: None,
            targets: Vec::new(),
            digest: None,
            size: None,
            bytes: None,
            already_present: None,
            path: None,
            tag_paths: BTreeMap::new(),
            preflight: None,
            copy: None,
            progress: None,
            phases: None,
            retry: None,
            error: None,
            metadata: Map::new(),
            trace: None,
        }
    }

    /// The routing key on the events exchange: `job.<state>`.
    pub fn routing_key(&self) -> String {
        routing_key(self.state)
    }

    /// The wire form.
    pub fn to_json(&self) -> Vec<u8> {
        // Only strings, numbers, dates and JSON values: this cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an event body.
    pub fn from_slice(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The routing key for events in `state`: `job.<state>`.
pub fn routing_key(state: JobState) -> String {
    format!("job.{}", state.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_follow_job_dot_state() {
        assert_eq!(routing_key(JobState::Succeeded), "job.succeeded");
        assert_eq!(routing_key(JobState::Dead), "job.dead");
        let e = Event::new(JobState::Progress, Some("j".into()), 1, "w");
        assert_eq!(e.routing_key(), "job.progress");
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<_> = [
            JobState::Accepted,
            JobState::Progress,
            JobState::Retrying,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Dead,
        ]
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(JobState::as_str)
        .collect();
        assert_eq!(terminal, ["succeeded", "failed", "dead"]);
    }

    #[test]
    fn failed_event_round_trips_and_omits_empty_fields() {
        let mut e = Event::new(JobState::Failed, Some("j-1".into()), 2, "worker-a");
        e.error = Some(EventError::new(
            ErrorCode::RegistryUnreachable,
            "connection refused",
            "h",
        ));
        e.metadata.insert("step".into(), 129.into());
        let json: Value = serde_json::from_slice(&e.to_json()).expect("json");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["error"]["code"], "registry_unreachable");
        assert_eq!(json["error"]["retryable"], true);
        assert_eq!(json["metadata"]["step"], 129);
        assert!(json.get("digest").is_none());
        assert!(json.get("targets").is_none());
        let back = Event::from_slice(&e.to_json()).expect("parses");
        assert_eq!(back, e);
    }

    #[test]
    fn error_texts_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(5000);
        let e = EventError::new(ErrorCode::InvalidReference, long.clone(), long);
        assert!(e.message.len() <= MAX_ERROR_TEXT_BYTES && e.message.ends_with('…'));
        assert!(e.hint.len() <= MAX_ERROR_TEXT_BYTES);
        assert_eq!(
            EventError::new(ErrorCode::Timeout, "short", "h").message,
            "short"
        );
    }

    #[test]
    fn the_job_path_is_the_heaviest_tag_path() {
        use TagPath::*;
        assert_eq!(TagPath::of_job([]), Noop);
        assert_eq!(TagPath::of_job([Noop, Noop]), Noop);
        assert_eq!(TagPath::of_job([Noop, Retag]), Retag);
        assert_eq!(TagPath::of_job([Retag, Push, Noop]), Push);
        assert_eq!(TagPath::of_job([Push, Retag]), Push);
        let json = serde_json::to_string(&[Push, Retag, Noop]).expect("serialises");
        assert_eq!(json, r#"["push","retag","noop"]"#);
    }

    #[test]
    fn event_error_takes_retryable_from_the_code() {
        assert!(!EventError::new(ErrorCode::RegistryAuthFailed, "m", "h").retryable);
        assert!(EventError::new(ErrorCode::DaemonUnavailable, "m", "h").retryable);
    }
}
