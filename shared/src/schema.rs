//! JSON Schemas for the wire contracts, generated from the Rust types.
//!
//! The checked-in copies under `schemas/` are what other languages validate against; a test
//! (`shared/tests/schemas.rs`) fails when they drift from these, and `pushfleet schemas
//! --write schemas/` regenerates them.

use serde_json::Value;

use crate::control::ControlMessage;
use crate::event::Event;
use crate::job::PushJob;

/// The file name of the job schema under `schemas/`.
pub const JOB_SCHEMA_FILE: &str = "job.schema.json";
/// The file name of the event schema under `schemas/`.
pub const EVENT_SCHEMA_FILE: &str = "event.schema.json";
/// The file name of the control message schema under `schemas/`.
pub const CONTROL_SCHEMA_FILE: &str = "control.schema.json";

/// The JSON Schema of a v1 push job.
pub fn job_schema() -> Value {
    schemars::schema_for!(PushJob).to_value()
}

/// The JSON Schema of a v1 event.
pub fn event_schema() -> Value {
    schemars::schema_for!(Event).to_value()
}

/// The JSON Schema of a v1 control message.
pub fn control_schema() -> Value {
    schemars::schema_for!(ControlMessage).to_value()
}

/// Every schema as `(file name, pretty JSON text with a final newline)`.
pub fn schema_files() -> Vec<(&'static str, String)> {
    [
        (JOB_SCHEMA_FILE, job_schema()),
        (EVENT_SCHEMA_FILE, event_schema()),
        (CONTROL_SCHEMA_FILE, control_schema()),
    ]
    .into_iter()
    .map(|(name, value)| {
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        (name, text)
    })
    .collect()
}
