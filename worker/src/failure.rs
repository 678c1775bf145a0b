//! How a stage's error becomes an event: every stage returns its own typed error, and each
//! implements [`Coded`] so the runner can turn it into a stable [`ErrorCode`], a hint, and the
//! decision of what happens to the message (ack, delayed retry or dead-letter), in one place.

use pushfleet_shared::ErrorCode;
use pushfleet_shared::event::EventError;

/// An error that knows its stable code and what a person should do about it.
pub trait Coded: std::error::Error {
    /// The stable error code.
    fn code(&self) -> ErrorCode;

    /// One line of advice; defaults to the code's own hint.
    fn hint(&self) -> String {
        self.code().default_hint().to_owned()
    }

    /// How long the other side asked us to wait before trying again (HTTP 429 `Retry-After`).
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// The event error object for this failure. The message is the error's `Display`
    /// followed by its causes, which by construction never hold a credential.
    fn to_event_error(&self) -> EventError {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        EventError::new(self.code(), message, self.hint())
    }
}

/// A coded failure of any stage, as the runner handles it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", error.message)]
pub struct JobFailure {
    /// The event error object.
    pub error: EventError,
    /// The registry asked to wait at least this long before trying again (HTTP 429).
    pub retry_after: Option<std::time::Duration>,
}

impl JobFailure {
    /// A failure with the given code and message and the code's default hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: EventError::new(code, message, code.default_hint()),
            retry_after: None,
        }
    }

    /// The failure's code.
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }
}

impl<E: Coded> From<&E> for JobFailure {
    fn from(e: &E) -> Self {
        Self {
            error: e.to_event_error(),
            retry_after: e.retry_after(),
        }
    }
}
