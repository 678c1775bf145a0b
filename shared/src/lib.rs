//! pushfleet's shared contracts: what travels over the broker and what every part agrees on.
//!
//! - [`job`]: the `PushJob` message Django publishes, and its validation.
//! - [`credential`]: what counts as a credential in a job (key names and value shapes).
//! - [`pool`]: pool names (which build host's daemon holds a job's image).
//! - [`django`]: the mapping from the Django step parameters (`image`, `tag`, `registry_id`,
//!   project path) to a job.
//! - [`event`]: the result events workers publish.
//! - [`error_code`]: the stable error codes carried by failed events.
//! - [`reference`]: image references, parsed and normalised with Docker's grammar.
//! - [`control`]: fleet-wide requests (cancel a job).
//! - [`check`]: registry check requests and their `registry.checked` answers.
//! - [`topology`]: exchange, queue and routing-key names and queue arguments.
//! - [`signature`]: optional HMAC signatures on jobs.
//! - [`schema`]: JSON Schemas generated from these types (checked in under `schemas/`).

pub mod check;
pub mod control;
pub mod credential;
pub mod django;
mod duplicate_keys;
pub mod error_code;
pub mod event;
pub mod job;
pub mod pool;
pub mod reference;
pub mod schema;
pub mod signature;
pub mod text;
pub mod topology;

pub use error_code::ErrorCode;
pub use event::{Event, EventError, JobState, PreflightInfo, PreflightMethod};
pub use job::{JobError, PushJob};
pub use pool::Pool;
pub use reference::{ImageRef, ReferenceError};
