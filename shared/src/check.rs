//! Registry checks over the broker: a "Test connection" button publishes a
//! [`CheckRequest`] to the jobs exchange with routing key [`CHECK_ROUTING_KEY`]; one worker
//! takes it from the checks queue, tests the registry for real (DNS, TCP, TLS, login, pull and
//! push rights, the daemon's view) and publishes a [`RegistryChecked`] event with routing key
//! [`CHECKED_ROUTING_KEY`] on the events exchange.
//!
//! ```json
//! { "version": 1, "request_id": "settings-page-42", "registry": "5" }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error_code::ErrorCode;
use crate::event::EventError;

/// The version of check requests and answers.
pub const CHECK_VERSION: u32 = 1;
/// The routing key of check requests on the jobs exchange.
pub const CHECK_ROUTING_KEY: &str = "check.registry";
/// The routing key of check answers on the events exchange.
pub const CHECKED_ROUTING_KEY: &str = "registry.checked";
/// The longest request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request to test one catalogue registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Format version; always 1.
    pub version: u32,
    /// The caller's id for this request, echoed in the answer (1 to 128 characters).
    pub request_id: String,
    /// The registry: a catalogue key or alias (e.g. Django's registry id).
    pub registry: String,
    /// The repository to check where the registry's namespaces are `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

impl CheckRequest {
    /// Parses a request; the error says what is wrong (never echoing values).
    pub fn from_slice(body: &[u8]) -> Result<Self, String> {
        let request: Self = serde_json::from_slice(body)
            .map_err(|e| format!("not a v1 check request ({})", e.classify_text()))?;
        if request.version != CHECK_VERSION {
            return Err(format!("unsupported version {}", request.version));
        }
        if request.request_id.is_empty() || request.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(format!(
                "request_id must be 1 to {MAX_REQUEST_ID_LEN} characters"
            ));
        }
        Ok(request)
    }

    /// The wire form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "wrong or missing fields",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// The outcome of one step of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// It worked.
    Pass,
    /// It did not: see the code and hint.
    Fail,
    /// Not run (an earlier step failed, or there is nothing to check).
    Skip,
}

/// One step of a registry check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckStep {
    /// `dns`, `tcp`, `credentials`, `pull <repository>`, `push <repository>`, `daemon`.
    pub name: String,
    /// What happened.
    pub status: StepStatus,
    /// One line saying what was seen (never a secret).
    pub detail: String,
    /// The stable code a job would fail with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Every step of one registry's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    /// The catalogue key.
    pub registry: String,
    /// Its URL.
    pub url: String,
    /// Whether no step failed.
    pub ok: bool,
    /// The steps, in order.
    pub steps: Vec<CheckStep>,
}

/// A worker's answer to a [`CheckRequest`] (routing key [`CHECKED_ROUTING_KEY`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryChecked {
    /// Format version; always 1.
    pub version: u32,
    /// Unique per answer.
    pub event_id: Uuid,
    /// The request's id (absent when the request could not be read).
    pub request_id: Option<String>,
    /// The worker that ran the check.
    pub worker: String,
    /// When the check finished.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// The check, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<CheckReport>,
    /// Why it did not run (`invalid_message`, `unknown_registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

impl RegistryChecked {
    /// An answer to `request_id` from `worker`.
    pub fn new(
        request_id: Option<String>,
        worker: &str,
        report: Result<CheckReport, EventError>,
    ) -> Self {
        let (report, error) = match report {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            version: CHECK_VERSION,
            event_id: Uuid::new_v4(),
            request_id,
            worker: worker.to_owned(),
            at: OffsetDateTime::now_utc(),
            report,
            error,
        }
    }

    /// Whether the registry passed every step.
    pub fn ok(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.ok)
    }

    /// The wire form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an answer.
    pub fn from_slice(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let r = CheckRequest {
            version: 1,
            request_id: "page-42".into(),
            registry: "5".into(),
            repository: None,
        };
        assert_eq!(CheckRequest::from_slice(&r.to_json()), Ok(r));
        for body in [
            &b"nope"[..],
            br#"{"version":2,"request_id":"a","registry":"5"}"#,
            br#"{"version":1,"request_id":"","registry":"5"}"#,
            br#"{"version":1,"request_id":"a","registry":"5","password":"x"}"#,
        ] {
            let e = CheckRequest::from_slice(body).expect_err("refused");
            assert!(!e.contains('x') || !e.contains("password"), "{e}");
        }
    }

    #[test]
    fn answers_round_trip() {
        let report = CheckReport {
            registry: "harbor".into(),
            url: "https://h/".into(),
            ok: false,
            steps: vec![CheckStep {
                name: "tcp".into(),
                status: StepStatus::Fail,
                detail: "refused".into(),
                code: Some(ErrorCode::RegistryUnreachable),
                hint: Some("start it".into()),
            }],
        };
        let answer = RegistryChecked::new(Some("page-42".into()), "w1", Ok(report));
        assert!(!answer.ok());
        let back = RegistryChecked::from_slice(&answer.to_json()).expect("parses");
        assert_eq!(back, answer);
    }
}
