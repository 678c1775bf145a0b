//! W3C trace context on job messages: a `traceparent` header (as Django's OpenTelemetry
//! instrumentation sets it when publishing) makes the job attempt a span whose parent is the
//! publisher's span. The attempt's own span id is new; the trace id is the publisher's. Every
//! event of the attempt carries the context ([`pushfleet_shared::event::TraceContext`]) and
//! every log line of it the `trace_id`.
//!
//! The header is parsed by OpenTelemetry's own `TraceContextPropagator` (an invalid or
//! all-zero `traceparent` is ignored, as the W3C spec says: the job still runs, untraced).

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pushfleet_shared::event::TraceContext;

/// The header names of W3C trace context.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Reads string headers of a message for the propagator.
struct Headers<'a>(Option<&'a FieldTable>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let table = self.0?;
        let (_, value) = table
            .inner()
            .iter()
            .find(|(k, _)| k.as_str().eq_ignore_ascii_case(key))?;
        let text = match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }?;
        if key.eq_ignore_ascii_case("traceparent") && !has_w3c_field_lengths(text) {
            return None;
        }
        Some(text)
    }

    fn keys(&self) -> Vec<&str> {
        TRACE_HEADERS.to_vec()
    }
}

/// Whether `traceparent` has the W3C field lengths: 2, 32, 16 and 2 hex digits (more fields
/// only after a version other than `00`). opentelemetry_sdk 0.31's `TraceContextPropagator`
/// checks the characters but not the lengths (`TraceId::from_hex` takes any hex number of up
/// to 32 digits, so a 31-digit id is padded and accepted), where the W3C spec says such a
/// header must be ignored; this check runs before it.
fn has_w3c_field_lengths(traceparent: &str) -> bool {
    let fields: Vec<&str> = traceparent.trim().split('-').collect();
    fields.len() >= 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&fields)
            .all(|(len, field)| field.len() == *len)
}

/// The trace context of one job attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTrace {
    /// The publisher's trace id (32 hex digits).
    pub trace_id: String,
    /// The context the events carry.
    pub context: TraceContext,
}

impl JobTrace {
    /// The attempt's context as a child of the `traceparent` in `headers`, or `None` when there
    /// is none or it is not valid.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Self> {
        let propagator = TraceContextPropagator::new();
        let cx = propagator.extract(&Headers(headers));
        let parent = cx.span().span_context().clone();
        if !parent.is_valid() || !parent.is_remote() {
            return None;
        }
        let span_id = new_span_id();
        let trace_id = parent.trace_id().to_string();
        let tracestate = Some(parent.trace_state().header()).filter(|s| !s.is_empty());
        Some(Self {
            context: TraceContext {
                traceparent: format!(
                    "00-{trace_id}-{span_id}-{:02x}",
                    parent.trace_flags().to_u8()
                ),
                parent_span_id: parent.span_id().to_string(),
                tracestate,
            },
            trace_id,
        })
    }
}

/// A random, non-zero span id.
fn new_span_id() -> SpanId {
    loop {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[..8]);
        if id != [0u8; 8] {
            return SpanId::from_bytes(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        t
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_becomes_the_parent_of_a_new_span() {
        let h = headers(&[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        let trace = JobTrace::from_headers(Some(&h)).expect("valid");
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.context.parent_span_id, "00f067aa0ba902b7");
        assert_eq!(
            trace.context.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        let parts: Vec<&str> = trace.context.traceparent.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parts[2].len(), 16);
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "the attempt has its own span id"
        );
        assert_eq!(parts[3], "01");
        let again = JobTrace::from_headers(Some(&h)).expect("valid");
        assert_ne!(again.context.traceparent, trace.context.traceparent);
    }

    #[test]
    fn invalid_or_missing_traceparents_are_ignored() {
        assert_eq!(JobTrace::from_headers(None), None);
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736a-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let h = headers(&[("traceparent", bad)]);
            assert_eq!(JobTrace::from_headers(Some(&h)), None, "{bad:?}");
        }
    }
}
