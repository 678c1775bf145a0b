//! Control messages: requests to the whole fleet, published to the control exchange (fanout,
//! so every worker hears each one). Today there is one: cancel a job by its id.
//!
//! ```json
//! { "version": 1, "action": "cancel", "job_id": "b7c1e2a4-0722" }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only control message version.
pub const CONTROL_VERSION: u32 = 1;

/// What a control message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Cancel the job: fail it as `cancelled` whether it is queued or running.
    Cancel,
}

/// A request to the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlMessage {
    /// Format version; always 1.
    pub version: u32,
    /// What to do.
    pub action: ControlAction,
    /// Which job.
    pub job_id: String,
}

impl ControlMessage {
    /// A cancel request for `job_id`.
    pub fn cancel(job_id: &str) -> Self {
        Self {
            version: CONTROL_VERSION,
            action: ControlAction::Cancel,
            job_id: job_id.to_owned(),
        }
    }

    /// Parses a control message; `None` for anything else (ignored, and logged by the caller).
    pub fn from_slice(body: &[u8]) -> Option<Self> {
        let m: Self = serde_json::from_slice(body).ok()?;
        (m.version == CONTROL_VERSION && !m.job_id.is_empty() && m.job_id.len() <= 128).then_some(m)
    }

    /// The wire form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_round_trips() {
        let m = ControlMessage::cancel("job-1");
        assert_eq!(ControlMessage::from_slice(&m.to_json()), Some(m));
        assert_eq!(
            String::from_utf8_lossy(&ControlMessage::cancel("j").to_json()),
            r#"{"version":1,"action":"cancel","job_id":"j"}"#
        );
    }

    #[test]
    fn anything_else_is_ignored() {
        for body in [
            &b"garbage"[..],
            br#"{"version":2,"action":"cancel","job_id":"j"}"#,
            br#"{"version":1,"action":"explode","job_id":"j"}"#,
            br#"{"version":1,"action":"cancel","job_id":""}"#,
            br#"{"version":1,"action":"cancel","job_id":"j","extra":1}"#,
        ] {
            assert_eq!(
                ControlMessage::from_slice(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
