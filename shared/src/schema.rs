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
/// The file name of the registry check request schema under `schemas/`.
pub const CHECK_REQUEST_SCHEMA_FILE: &str = "check-request.schema.json";
/// The file name of the `registry.checked` answer schema under `schemas/`.
pub const REGISTRY_CHECKED_SCHEMA_FILE: &str = "registry-checked.schema.json";

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
        (
            CHECK_REQUEST_SCHEMA_FILE,
            schemars::schema_for!(crate::check::CheckRequest).to_value(),
        ),
        (
            REGISTRY_CHECKED_SCHEMA_FILE,
            schemars::schema_for!(crate::check::RegistryChecked).to_value(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| {
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        (name, text)
    })
    .collect()
}
