//! What happens to one delivery: parse, run the pipeline, report, and only then settle it.
//!
//! Every delivery comes from the queue of one pool the worker serves, and is settled in that
//! pool: a retry waits in the pool's delay queues (which return it to the pool's queue) and a
//! dead letter carries the pool's routing key and [`DEAD_POOL_HEADER`], so a replay goes back
//! to the same pool. A job that names another pool than the queue it came from was published
//! with the wrong routing key: it is refused like an invalid job, never pushed from a daemon
//! that does not hold its image.
//!
//! 1. Parse. A message that is not a valid job gets a `failed` event (`invalid_message` or
//!    `invalid_reference`, with the `job_id` when one can be read), is copied to the
//!    dead-letter queue with the reason in its headers, and is acked. Nothing crashes, nothing
//!    stalls, nothing is lost.
//! 2. `accepted`, then the pipeline under the job's time limit and its cancel token, with
//!    `progress` events at most once a second.
//! 3. The outcome event (`succeeded`, `failed`, `retrying` or `dead`) is published and
//!    confirmed by the broker; a retry is republished to the delay queue and a failure copied
//!    to the dead-letter queue, both confirmed; only then is the delivery acked. A worker that
//!    dies before that leaves the job unacked, and the broker hands it to another worker.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use pushfleet_shared::Pool;
use pushfleet_shared::event::{JobState, PreflightInfo, RetryInfo, TraceContext};
use pushfleet_shared::job::{self, PushJob, ValidJob};
use pushfleet_shared::signature::{self, SIGNATURE_HEADER};
use pushfleet_shared::topology::Topology;
use pushfleet_shared::{ErrorCode, event::EventError};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::{BrokerError, Message, SessionPublisher};
use crate::cancel::Cancels;
use crate::config::Config;
use crate::failure::{Coded, JobFailure};
use crate::metrics::Metrics;
use crate::pipeline::{Attempt, JobAttempt, Pipeline, Success};
use crate::plan::plan;
use crate::properties;
use crate::report::Reporter;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::trace::JobTrace;

/// The header carrying the attempt number of a job republished for retry.
pub const ATTEMPT_HEADER: &str = "x-pushfleet-attempt";
/// Headers set on dead-lettered jobs, saying why.
pub const DEAD_CODE_HEADER: &str = "x-pushfleet-error-code";
/// The human message of the failure, on dead-lettered jobs.
pub const DEAD_MESSAGE_HEADER: &str = "x-pushfleet-error-message";
/// The worker that dead-lettered the job.
pub const DEAD_WORKER_HEADER: &str = "x-pushfleet-worker";
/// The pool whose queue a dead-lettered job was taken from (also in its routing key).
pub const DEAD_POOL_HEADER: &str = "x-pushfleet-pool";

/// What every job task of one broker session shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    /// The stages a planned job runs through; `None` in broker-only mode (see
    /// [`crate::runner::run_broker_only`]).
    pub(crate) pipeline: Option<Arc<Pipeline>>,
    /// Where job outcomes are counted.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) publisher: SessionPublisher,
    pub(crate) topology: Topology,
    pub(crate) worker_id: String,
    pub(crate) job_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) cancels: Arc<Cancels>,
    pub(crate) signing_key: Option<crate::config::SigningKey>,
    /// The delay queues (pool, bucket) this session has declared.
    pub(crate) retry_buckets: std::sync::Mutex<std::collections::HashSet<(Pool, u32)>>,
}

impl Shared {
    /// What the job tasks of one broker session share: the worker's identity, topology, time
    /// limit, retry policy and signing key come from `config`.
    pub(crate) fn new(
        config: Arc<Config>,
        pipeline: Option<Arc<Pipeline>>,
        metrics: Arc<Metrics>,
        publisher: SessionPublisher,
        cancels: Arc<Cancels>,
    ) -> Self {
        Self {
            topology: config.amqp.topology(),
            worker_id: config.worker.id.clone(),
            job_timeout: config.worker.job_timeout(),
            retry: config.worker.retry_policy(),
            signing_key: config.amqp.signing_key.clone(),
            retry_buckets: Default::default(),
            config,
            pipeline,
            metrics,
            publisher,
            cancels,
        }
    }

    /// Declares `pool`'s delay queue for `delay` once per session; returns its routing key.
    async fn retry_route(&self, pool: &Pool, delay: Duration) -> Result<String, BrokerError> {
        let bucket = Topology::retry_bucket(delay);
        let key = (pool.clone(), bucket);
        let known = self
            .retry_buckets
            .lock()
            .map(|set| set.contains(&key))
            .unwrap_or(false);
        if !known {
            let spec = self.topology.pool_retry_queue_spec(pool, bucket);
            let publisher = self.publisher.current().await?;
            crate::broker::declare_queue(publisher.channel(), &spec).await?;
            if let Ok(mut set) = self.retry_buckets.lock() {
                set.insert(key);
            }
        }
        Ok(Topology::pool_retry_routing_key(pool, bucket))
    }
}

/// The attempt number a delivery carries (1 when it never went through the retry queue).
fn attempt_of(delivery: &Delivery) -> u32 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPT_HEADER));
    let n = match value {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        _ => 1,
    };
    u32::try_from(n).unwrap_or(1).max(1)
}

/// Handles one delivery, taken from `pool`'s queue, to the end (see the module doc).
pub(crate) async fn handle(shared: &Shared, delivery: Delivery, pool: Pool) {
    let pool = &pool;
    let attempt = attempt_of(&delivery);
    let job_id = job::peek_job_id(&delivery.data);
    let trace = JobTrace::from_headers(delivery.properties.headers().as_ref());
    let span = info_span!(
        "job",
        job_id = job_id.as_deref().unwrap_or("-"),
        attempt,
        registry = tracing::field::Empty,
        trace_id = trace.as_ref().map(|t| t.trace_id.as_str()),
    );
    let trace = trace.map(|t| t.context);
    async move {
        let settled = match read_job(shared, &delivery, pool) {
            Err(error) => {
                warn!(code = %error.code, error = %error.message, "refusing a message that is not a valid job");
                let metadata = job::peek_metadata(&delivery.data);
                let reporter = shared.reporter(job_id, attempt, metadata, trace);
                let code = error.code;
                let event = reporter.error_event(JobState::Failed, error);
                let settled = finish_failed(shared, &reporter, &delivery, pool, event).await;
                if settled.is_ok() {
                    shared.metrics.job_finished(JobState::Failed.as_str(), code.as_str(), None);
                }
                settled
            }
            Ok(valid) => run_job(shared, &delivery, pool, valid, attempt, trace).await,
        };
        if let Err(e) = settled {
            // The outcome could not be recorded: leave the job to the broker, which redelivers
            // it (to this or another worker). Redelivery is harmless (see pipeline).
            error!(error = %e, "could not record the job's outcome; returning it to the queue");
            if let Err(e) = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await {
                error!(error = %e, "nack failed; the broker requeues the job when the channel closes");
            }
        }
    }
    .instrument(span)
    .await;
}

/// Checks the properties, the signature (when job signing is configured), the content type,
/// the body, and that the job belongs to `pool`, whose queue it was taken from.
fn read_job(shared: &Shared, delivery: &Delivery, pool: &Pool) -> Result<ValidJob, EventError> {
    properties::check(&delivery.properties).map_err(|e| e.to_event_error())?;
    if let Some(key) = &shared.signing_key {
        let header = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(SIGNATURE_HEADER))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            });
        signature::verify(key.expose(), &delivery.data, header).map_err(|e| {
            let code = ErrorCode::InvalidSignature;
            EventError::new(code, e.to_string(), code.default_hint())
        })?;
    }
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str());
    let valid = PushJob::from_message(&delivery.data, content_type)
        .map_err(|e| EventError::new(e.code(), e.to_string(), e.hint()))?;
    if &valid.pool != pool {
        let code = ErrorCode::InvalidMessage;
        return Err(EventError::new(
            code,
            format!(
                "the job names pool {} but was published to the queue of pool {pool} \
                 (routing key {:?})",
                valid.pool,
                Topology::pool_routing_key(pool)
            ),
            format!(
                "publish it with routing key {:?}, as `pushfleet submit` and the Python client do",
                Topology::pool_routing_key(&valid.pool)
            ),
        ));
    }
    Ok(valid)
}

impl Shared {
    fn reporter(
        &self,
        job_id: Option<String>,
        attempt: u32,
        metadata: serde_json::Map<String, serde_json::Value>,
        trace: Option<TraceContext>,
    ) -> Reporter {
        let mut reporter = Reporter::new(
            self.publisher.clone(),
            self.topology.events_exchange(),
            &self.worker_id,
            job_id,
            attempt,
            metadata,
        );
        reporter.set_trace(trace);
        reporter
    }
}

async fn run_job(
    shared: &Shared,
    delivery: &Delivery,
    pool: &Pool,
    valid: ValidJob,
    attempt: u32,
    trace: Option<TraceContext>,
) -> Result<(), BrokerError> {
    let _running = shared.metrics.job_started();
    if let Some(published_at) = *delivery.properties.timestamp() {
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        shared.metrics.queue_wait(published_at, now);
    }
    let mut reporter = shared.reporter(
        Some(valid.job.job_id.clone()),
        attempt,
        valid.job.metadata.clone(),
        trace,
    );
    // Plan first (no I/O): the `accepted` event and every log line then name the catalogue
    // key and the exact targets, even when the job named an alias or policy refuses it.
    let planned = plan(&valid, &shared.config.registries);
    let span = tracing::Span::current();
    match &planned {
        Ok((plan, _)) => {
            span.record("registry", tracing::field::display(&plan.registry));
            reporter.set_context(
                Some(plan.registry.clone()),
                Some(plan.source.clone()),
                plan.targets.clone(),
            );
        }
        Err(e) => {
            if let Some(key) = e.registry_key() {
                span.record("registry", tracing::field::display(key));
            }
            reporter.set_context(
                e.registry_key().map(str::to_owned),
                Some(valid.source.to_string()),
                e.refused_targets(),
            );
        }
    }
    reporter
        .publish(&reporter.event(JobState::Accepted))
        .await?;
    let (plan, registries) = match planned {
        Ok(p) => p,
        Err(e) => {
            let failure = JobFailure::from(&e);
            return settle_failure(shared, &reporter, delivery, pool, attempt, failure, None).await;
        }
    };
    info!(source = %plan.source, targets = ?plan.targets, "job accepted");

    let (progress_tx, progress_rx) = watch::channel(None);
    let stop_progress = CancellationToken::new();
    let progress_task = tokio::spawn(publish_progress(
        reporter.clone(),
        progress_rx,
        stop_progress.clone(),
    ));

    let timeout_s =
        valid.timeout_s_or(u32::try_from(shared.job_timeout.as_secs()).unwrap_or(u32::MAX));
    let limit = Duration::from_secs(u64::from(timeout_s));
    let cancel = shared.cancels.register(&valid.job.job_id);
    // Dropping the pipeline future (time limit, cancel) drops the daemon's push stream, which
    // ends the push; the outcome is a failure either way, never a success.
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        r = tokio::time::timeout(limit, run_stages(shared, &valid, &plan, registries, Attempt::of(attempt, delivery.redelivered), &progress_tx)) => r.ok(),
    };
    shared.cancels.finish(&valid.job.job_id);
    stop_progress.cancel();
    let _ = progress_task.await;

    match result {
        Some(Ok(success)) => {
            let mut event = reporter.event(JobState::Succeeded);
            event.digest = Some(success.digest.clone());
            event.size = success.size;
            event.bytes = Some(success.bytes);
            event.phases = Some(success.phases.clone());
            event.already_present = Some(success.already_present);
            event.path = Some(success.path);
            event.tag_paths = success.tag_paths.clone();
            event.preflight = success.preflight.map(|method| PreflightInfo { method });
            event.copy = success.copy.clone();
            reporter.publish(&event).await?;
            info!(digest = %success.digest, path = success.path.as_str(), "job succeeded");
            delivery.ack(BasicAckOptions::default()).await?;
            let took = success.phases.total_ms.map(Duration::from_millis);
            shared
                .metrics
                .job_finished(JobState::Succeeded.as_str(), "", took);
            shared.metrics.phases(&success.phases);
            shared.metrics.pushed(success.bytes);
            shared.metrics.tags(success.tag_paths.values().copied());
            Ok(())
        }
        Some(Err(failure)) => {
            settle_failure(
                shared,
                &reporter,
                delivery,
                pool,
                attempt,
                failure.failure,
                Some(failure.phases),
            )
            .await
        }
        None => {
            let failure = if cancel.is_cancelled() {
                JobFailure::new(ErrorCode::Cancelled, "the job was cancelled on request")
            } else {
                JobFailure::new(
                    ErrorCode::Timeout,
                    format!("the job did not finish within {timeout_s} s"),
                )
            };
            settle_failure(shared, &reporter, delivery, pool, attempt, failure, None).await
        }
    }
}

/// Runs the pipeline's stages, or, in broker-only mode, succeeds at once with
/// [`BROKER_ONLY_DIGEST`].
async fn run_stages(
    shared: &Shared,
    valid: &ValidJob,
    plan: &crate::plan::Plan,
    registries: crate::plan::PlannedRegistries<'_>,
    attempt: Attempt,
    progress: &watch::Sender<Option<pushfleet_shared::event::Progress>>,
) -> Result<Success, crate::pipeline::Failure> {
    match &shared.pipeline {
        Some(pipeline) => {
            let attempt = JobAttempt {
                job: valid,
                plan,
                registries,
                attempt,
            };
            pipeline.run(&attempt, progress).await
        }
        None => Ok(Success {
            digest: BROKER_ONLY_DIGEST.to_owned(),
            size: None,
            bytes: 0,
            phases: Default::default(),
            already_present: false,
            path: pushfleet_shared::event::TagPath::Push,
            tag_paths: plan
                .targets
                .iter()
                .map(|t| (t.clone(), pushfleet_shared::event::TagPath::Push))
                .collect(),
            preflight: None,
            copy: None,
        }),
    }
}

/// The digest broker-only mode reports: all zeros, which no image has.
pub const BROKER_ONLY_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Settles a failed attempt: a delayed retry, or a final failure (dead-lettered), both in
/// `pool`.
async fn settle_failure(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    pool: &Pool,
    attempt: u32,
    failure: JobFailure,
    phases: Option<pushfleet_shared::event::PhaseTimings>,
) -> Result<(), BrokerError> {
    let decision = shared.retry.decide(attempt, &failure);
    let code = failure.code();
    if let Some(phases) = &phases {
        shared.metrics.phases(phases);
    }
    let took = phases
        .as_ref()
        .and_then(|p| p.total_ms)
        .map(Duration::from_millis);
    match decision {
        RetryDecision::Retry {
            delay,
            next_attempt,
        } => {
            warn!(code = %failure.code(), error = %failure.error.message, ?delay, next_attempt, "attempt failed; retrying");
            let mut event = reporter.error_event(JobState::Retrying, failure.error);
            event.phases = phases;
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            event.retry = Some(RetryInfo {
                delay_ms,
                next_attempt,
                next_attempt_at: OffsetDateTime::now_utc() + delay,
            });
            // Republish first: if the event fails after this, the job still exists twice at
            // worst (at-least-once), never zero times. The body and properties go back
            // unchanged (a signature still matches), with the next attempt's number.
            let mut headers = FieldTable::default();
            headers.insert(
                ATTEMPT_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(next_attempt)),
            );
            let properties =
                properties::copy_of(&delivery.properties, headers, shared.publisher.frame_max())
                    .with_expiration(delay_ms.to_string().into());
            let route = shared.retry_route(pool, delay).await?;
            shared
                .publisher
                .publish(Message {
                    exchange: &shared.topology.retry_exchange(),
                    routing_key: &route,
                    body: &delivery.data,
                    properties,
                })
                .await?;
            reporter.publish(&event).await?;
            info!(?delay, next_attempt, "retry scheduled");
            delivery.ack(BasicAckOptions::default()).await?;
            shared
                .metrics
                .job_finished(JobState::Retrying.as_str(), code.as_str(), took);
            Ok(())
        }
        RetryDecision::Fail | RetryDecision::Dead => {
            let state = if decision == RetryDecision::Fail {
                JobState::Failed
            } else {
                JobState::Dead
            };
            error!(code = %failure.code(), error = %failure.error.message, state = ?state, "job failed for good; dead-lettered");
            let mut event = reporter.error_event(state, failure.error);
            event.phases = phases;
            finish_failed(shared, reporter, delivery, pool, event).await?;
            shared
                .metrics
                .job_finished(state.as_str(), code.as_str(), took);
            Ok(())
        }
    }
}

/// Copies the message to the dead-letter queue with the reason and `pool` in its headers and
/// `pool`'s routing key, publishes the terminal error `event`, then acks.
async fn finish_failed(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    pool: &Pool,
    event: pushfleet_shared::Event,
) -> Result<(), BrokerError> {
    let Some(error) = event.error.clone() else {
        return reporter.publish(&event).await;
    };
    let mut headers = FieldTable::default();
    headers.insert(
        DEAD_CODE_HEADER.into(),
        AMQPValue::LongString(LongString::from(error.code.as_str())),
    );
    headers.insert(
        DEAD_MESSAGE_HEADER.into(),
        AMQPValue::LongString(LongString::from(pushfleet_shared::text::truncate(
            &error.message,
            MAX_REASON_BYTES,
        ))),
    );
    headers.insert(
        DEAD_WORKER_HEADER.into(),
        AMQPValue::LongString(LongString::from(shared.worker_id.as_str())),
    );
    headers.insert(
        DEAD_POOL_HEADER.into(),
        AMQPValue::LongString(LongString::from(pool.as_str())),
    );
    let properties =
        properties::copy_of(&delivery.properties, headers, shared.publisher.frame_max());
    shared
        .publisher
        .publish(Message {
            exchange: &shared.topology.dead_letter_exchange(),
            routing_key: &Topology::pool_routing_key(pool),
            body: &delivery.data,
            properties,
        })
        .await?;
    reporter.publish(&event).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// The longest failure reason written into a dead-letter header.
const MAX_REASON_BYTES: usize = 1024;

/// Publishes the latest progress at most once a second until `stop`.
async fn publish_progress(
    reporter: Reporter,
    mut progress: watch::Receiver<Option<pushfleet_shared::event::Progress>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let latest = progress.borrow_and_update().clone();
        if let Some(p) = latest {
            let mut event = reporter.event(JobState::Progress);
            event.progress = Some(p);
            if let Err(e) = reporter.publish(&event).await {
                warn!(error = %e, "could not publish a progress event");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
