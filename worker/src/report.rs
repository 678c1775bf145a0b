//! Building and publishing a job's events. Every event of one job attempt shares the job id,
//! attempt, worker id, source, registry, targets and the echoed `metadata`; [`Reporter`]
//! holds those once and stamps each event.

use pushfleet_shared::event::{Event, EventError, JobState};
use serde_json::{Map, Value};

use crate::broker::{BrokerError, SessionPublisher};

/// Publishes the events of one job attempt, with publisher confirms.
#[derive(Debug, Clone)]
pub struct Reporter {
    publisher: SessionPublisher,
    exchange: String,
    template: Event,
}

impl Reporter {
    /// A reporter for one attempt of job `job_id` (None when the message was unreadable).
    pub fn new(
        publisher: SessionPublisher,
        exchange: String,
        worker: &str,
        job_id: Option<String>,
        attempt: u32,
        metadata: Map<String, Value>,
    ) -> Self {
        let mut template = Event::new(JobState::Accepted, job_id, attempt, worker);
        template.metadata = metadata;
        Self {
            publisher,
            exchange,
            template,
        }
    }

    /// Sets the trace context every event of the attempt carries.
    pub fn set_trace(&mut self, trace: Option<pushfleet_shared::event::TraceContext>) {
        self.template.trace = trace;
    }

    /// Sets the fields known once the job is read or planned.
    pub fn set_context(
        &mut self,
        registry: Option<String>,
        source: Option<String>,
        targets: Vec<String>,
    ) {
        if registry.is_some() {
            self.template.registry = registry;
        }
        if source.is_some() {
            self.template.source = source;
        }
        if !targets.is_empty() {
            self.template.targets = targets;
        }
    }

    /// A fresh event of `state` carrying the shared fields, with a new id and time.
    pub fn event(&self, state: JobState) -> Event {
        let mut e = self.template.clone();
        let fresh = Event::new(state, None, 0, "");
        e.state = state;
        e.event_id = fresh.event_id;
        e.at = fresh.at;
        e
    }

    /// A `failed`/`dead`/`retrying` event for `error`.
    pub fn error_event(&self, state: JobState, error: EventError) -> Event {
        let mut e = self.event(state);
        e.error = Some(error);
        e
    }

    /// Publishes `event` to the events exchange under `job.<state>` and waits for the
    /// broker's confirm.
    pub async fn publish(&self, event: &Event) -> Result<(), BrokerError> {
        let properties = lapin::BasicProperties::default()
            .with_message_id(event.event_id.to_string().into())
            .with_type(format!("pushfleet.event.{}", event.state.as_str()).into());
        self.publisher
            .publish(crate::broker::Message {
                exchange: &self.exchange,
                routing_key: &event.routing_key(),
                body: &event.to_json(),
                properties: crate::broker::json(properties),
            })
            .await
    }
}
