//! W3C trace context: a job published with a `traceparent` header (as Django's OpenTelemetry
//! instrumentation does) runs as a child span of the publisher's: every event of the job
//! carries the context (same trace id, the publisher's span as parent, a span id of its own),
//! and every log line of the job names the trace id. A malformed header is ignored.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::{JOB_ROUTING_KEY, Topology};
use pushfleet_tests::fleet::{base_registries, make_image};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_topology, job_json, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};
use pushfleet_worker::broker::{ConfirmedPublisher, connect};

const WITHIN: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_traceparent_is_the_parent_of_the_job_in_events_and_logs() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("trace")?;
    let prefix = unique("t-trace");
    let topology = Topology::new(&prefix);
    let events = EventLog::start(&env, &topology).await?;
    let id = format!("{prefix}-w");
    let toml = worker_toml(
        &env,
        &prefix,
        &id,
        WorkerSettings::default(),
        &base_registries(&env)?,
    )?;
    let mut worker = WorkerProcess::spawn(&logs, &id, &toml).await?;
    worker.wait_ready(WITHIN).await?;
    let image = format!("{}:1", unique("trace"));
    make_image(&docker(&env)?, &[&image]).await?;

    let conn = connect(&env.get("PUSHFLEET_AMQP_URL")?, "pushfleet-tests trace").await?;
    let publisher = ConfirmedPublisher::open(&conn).await?;
    let publish = |job_id: String, traceparent: &'static str| {
        let job = job_json(&job_id, &image, "basic", "production/trace", &["1"]);
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(traceparent.into()),
        );
        headers.insert(
            "tracestate".into(),
            AMQPValue::LongString("django=1".into()),
        );
        let publisher = publisher.clone();
        let exchange = topology.jobs_exchange();
        async move {
            publisher
                .publish_raw(
                    &exchange,
                    JOB_ROUTING_KEY,
                    &serde_json::to_vec(&job)?,
                    pushfleet_worker::broker::json(
                        BasicProperties::default().with_headers(headers),
                    ),
                )
                .await?;
            anyhow::Ok(())
        }
    };
    let traced = unique("job-traced");
    let malformed = unique("job-badtrace");
    publish(
        traced.clone(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .await?;
    publish(
        malformed.clone(),
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    )
    .await?;
    let seen = events
        .wait_terminal(&[traced.clone(), malformed.clone()], WITHIN)
        .await?;
    worker.terminate().await?;

    let result = (|| {
        let of = |id: &String| {
            let id = id.clone();
            seen.iter()
                .filter(move |e| e.job_id.as_deref() == Some(id.as_str()))
        };
        ensure!(
            of(&traced).any(|e| e.state == JobState::Succeeded),
            "{seen:#?}"
        );
        let mut span_ids = std::collections::BTreeSet::new();
        for event in of(&traced) {
            let trace = event.trace.as_ref().context("an event without the trace")?;
            let parts: Vec<&str> = trace.traceparent.split('-').collect();
            ensure!(parts.len() == 4 && parts[1] == TRACE_ID, "{trace:?}");
            ensure!(
                parts[2] != PARENT_SPAN && trace.parent_span_id == PARENT_SPAN,
                "{trace:?}"
            );
            ensure!(trace.tracestate.as_deref() == Some("django=1"), "{trace:?}");
            span_ids.insert(parts[2].to_owned());
        }
        ensure!(
            span_ids.len() == 1,
            "one span for the attempt: {span_ids:?}"
        );
        ensure!(
            of(&malformed).all(|e| e.trace.is_none())
                && of(&malformed).any(|e| e.state == JobState::Succeeded),
            "a malformed traceparent is ignored and the job runs: {seen:#?}"
        );
        let lines = logs.grep(&traced);
        ensure!(!lines.is_empty(), "no log line for the job");
        ensure!(
            lines
                .iter()
                .all(|l| l.contains(&format!("trace_id={TRACE_ID}"))
                    || l.contains(&format!("trace_id=\"{TRACE_ID}\""))),
            "{lines:#?}"
        );
        ensure!(
            logs.grep(&malformed)
                .iter()
                .all(|l| !l.contains("trace_id")),
            "{:#?}",
            logs.grep(&malformed)
        );
        Ok(())
    })();
    let _ = conn.close(200, "done".into()).await;
    events.close().await;
    if result.is_err() {
        logs.dump(20);
    } else {
        logs.remove();
    }
    delete_topology(&env, &prefix).await;
    result
}
