//! The worker's run loop: consume jobs, run each through the [`Pipeline`], report, and only
//! then settle the delivery.
//!
//! Life of one delivery:
//!
//! 1. Parse. A message that is not a valid job gets a `failed` event (`invalid_message` or
//!    `invalid_reference`, with the `job_id` when one can be read), is copied to the
//!    dead-letter queue with the reason in its headers, and is acked. Nothing crashes, nothing
//!    stalls, nothing is lost.
//! 2. `accepted`, then the pipeline under the job's time limit, with `progress` events at most
//!    once a second.
//! 3. The outcome event (`succeeded`, `failed`, `retrying` or `dead`) is published and
//!    confirmed by the broker; a retry is republished to the delay queue and a failure copied
//!    to the dead-letter queue, both confirmed; only then is the delivery acked. A worker that
//!    dies before that leaves the job unacked, and the broker hands it to another worker.
//!
//! Shutdown is passed in as a future (see `mini-redis`): when it resolves, the consumer is
//! cancelled (basic.cancel), in-flight jobs get the grace period to finish, and whatever is
//! still running then is dropped unacked, so the broker requeues it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use pushfleet_shared::event::{JobState, RetryInfo};
use pushfleet_shared::job::{self, PushJob};
use pushfleet_shared::topology::{JOB_ROUTING_KEY, Topology};
use pushfleet_shared::{ErrorCode, event::EventError};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::{self, BrokerError, ConfirmedPublisher};
use crate::config::Config;
use crate::failure::JobFailure;
use crate::pipeline::{Pipeline, PipelineSetupError};
use crate::report::Reporter;
use crate::retry::{RetryDecision, RetryPolicy};

/// The header carrying the attempt number of a job republished for retry.
pub const ATTEMPT_HEADER: &str = "x-pushfleet-attempt";
/// Headers set on dead-lettered jobs, saying why.
pub const DEAD_CODE_HEADER: &str = "x-pushfleet-error-code";
/// The human message of the failure, on dead-lettered jobs.
pub const DEAD_MESSAGE_HEADER: &str = "x-pushfleet-error-message";
/// The worker that dead-lettered the job.
pub const DEAD_WORKER_HEADER: &str = "x-pushfleet-worker";

/// Why the worker stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The clients could not be built from the configuration.
    #[error(transparent)]
    Setup(#[from] PipelineSetupError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The AMQP password file could not be read.
    #[error("amqp.password_file: {0}")]
    AmqpPassword(crate::credentials::CredentialError),
    /// The AMQP connection failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The consumer ended without being cancelled (connection lost).
    #[error("the broker ended the consumer on {queue}: connection lost?")]
    ConsumerEnded {
        /// The queue consumed.
        queue: String,
    },
}

/// What every job task shares.
#[derive(Debug)]
struct Shared {
    pipeline: Pipeline,
    publisher: ConfirmedPublisher,
    topology: Topology,
    worker_id: String,
    job_timeout: Duration,
    retry: RetryPolicy,
}

/// Runs a worker until `shutdown` resolves (then drains, see the module doc) or the broker
/// connection is lost (then returns an error, so a supervisor restarts the process).
pub async fn run(config: Arc<Config>, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let pipeline = Pipeline::new(Arc::clone(&config))?;
    let url = config
        .amqp
        .url_with_password()
        .map_err(RunError::AmqpPassword)?;
    let worker_id = config.worker.id.clone();
    let topology = Topology::new(&config.amqp.topology_prefix);

    // Two connections: flow control on the publishing one must not stop acks on the other.
    let consume_conn =
        broker::connect(url.expose_secret(), &format!("{worker_id} consume")).await?;
    let publish_conn =
        broker::connect(url.expose_secret(), &format!("{worker_id} publish")).await?;
    let publisher = ConfirmedPublisher::open(&publish_conn).await?;
    broker::declare_topology(publisher.channel(), &topology).await?;

    let channel = consume_conn.create_channel().await?;
    let prefetch = config.worker.prefetch();
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer_tag = format!("{worker_id}-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            topology.jobs_queue().as_str().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    if let Err(e) = pipeline.daemon().ping().await {
        warn!(error = %e, "the Docker daemon does not answer yet; jobs will fail as daemon_unavailable until it does");
    }
    info!(worker = %worker_id, queue = %topology.jobs_queue(), concurrency = prefetch, "worker ready");

    let shared = Arc::new(Shared {
        pipeline,
        publisher,
        topology,
        worker_id,
        job_timeout: config.worker.job_timeout(),
        retry: config.worker.retry_policy(),
    });
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let shared = Arc::clone(&shared);
                    tracker.spawn(async move { handle(&shared, delivery).await });
                }
                Some(Err(e)) => break Err(RunError::Amqp(e)),
                None => break Err(RunError::ConsumerEnded { queue: shared.topology.jobs_queue() }),
            },
        }
    };

    info!("stopping: no new jobs; waiting for the ones in flight");
    if let Err(e) = channel
        .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
        .await
    {
        warn!(error = %e, "basic.cancel failed");
    }
    tracker.close();
    let grace = config.worker.shutdown_grace();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            ?grace,
            "jobs still running after the grace period: they return to the queue"
        );
    }
    close(&consume_conn).await;
    close(&publish_conn).await;
    info!("stopped");
    outcome
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "worker stopping".into()).await {
        warn!(error = %e, "closing the broker connection failed");
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

async fn handle(shared: &Shared, delivery: Delivery) {
    let attempt = attempt_of(&delivery);
    let job_id = job::peek_job_id(&delivery.data);
    let span = info_span!(
        "job",
        job_id = job_id.as_deref().unwrap_or("-"),
        attempt,
        target = tracing::field::Empty
    );
    async move {
        let settled = match PushJob::from_slice(&delivery.data) {
            Err(e) => {
                warn!(code = %e.code(), error = %e, "refusing a message that is not a valid job");
                let reporter = shared.reporter(job_id, attempt, job::peek_metadata(&delivery.data));
                let error = EventError::new(e.code(), e.to_string(), e.hint());
                let event = reporter.error_event(JobState::Failed, error);
                finish_failed(shared, &reporter, &delivery, event).await
            }
            Ok(valid) => run_job(shared, &delivery, valid, attempt).await,
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

impl Shared {
    fn reporter(
        &self,
        job_id: Option<String>,
        attempt: u32,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Reporter {
        Reporter::new(
            self.publisher.clone(),
            self.topology.events_exchange(),
            &self.worker_id,
            job_id,
            attempt,
            metadata,
        )
    }
}

async fn run_job(
    shared: &Shared,
    delivery: &Delivery,
    valid: pushfleet_shared::job::ValidJob,
    attempt: u32,
) -> Result<(), BrokerError> {
    let mut reporter = shared.reporter(
        Some(valid.job.job_id.clone()),
        attempt,
        valid.job.metadata.clone(),
    );
    // The catalogue key, even when the job named an alias; nothing for an unknown registry.
    let registry_key = shared
        .pipeline
        .config()
        .registries
        .get(&valid.job.target.registry)
        .map(|r| r.key.clone());
    reporter.set_context(registry_key, Some(valid.source.to_string()), Vec::new());
    reporter
        .publish(&reporter.event(JobState::Accepted))
        .await?;
    info!(source = %valid.source, registry = %valid.job.target.registry, "job accepted");

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
    let result = tokio::time::timeout(limit, shared.pipeline.run(&valid, &progress_tx)).await;
    stop_progress.cancel();
    let _ = progress_task.await;

    match result {
        Ok(Ok(success)) => {
            reporter.set_context(
                Some(success.plan.registry.clone()),
                None,
                success.plan.targets.clone(),
            );
            let mut event = reporter.event(JobState::Succeeded);
            event.digest = Some(success.digest.clone());
            event.size = success.size;
            event.bytes = Some(success.bytes);
            event.phases = Some(success.phases);
            event.already_present = Some(success.already_present);
            reporter.publish(&event).await?;
            info!(digest = %success.digest, already_present = success.already_present, "job succeeded");
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
        Ok(Err(failure)) => {
            if let Some(plan) = &failure.plan {
                reporter.set_context(Some(plan.registry.clone()), None, plan.targets.clone());
            }
            settle_failure(
                shared,
                &reporter,
                delivery,
                &valid,
                attempt,
                failure.failure,
                Some(failure.phases),
            )
            .await
        }
        Err(_) => {
            let failure = JobFailure::new(
                ErrorCode::Timeout,
                format!("the job did not finish within {timeout_s} s"),
            );
            settle_failure(shared, &reporter, delivery, &valid, attempt, failure, None).await
        }
    }
}

async fn settle_failure(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    valid: &pushfleet_shared::job::ValidJob,
    attempt: u32,
    failure: JobFailure,
    phases: Option<pushfleet_shared::event::PhaseTimings>,
) -> Result<(), BrokerError> {
    warn!(code = %failure.code(), error = %failure.error.message, "attempt failed");
    let decision = shared.retry.decide(attempt, &failure);
    match decision {
        RetryDecision::Retry {
            delay,
            next_attempt,
        } => {
            let mut event = reporter.error_event(JobState::Retrying, failure.error);
            event.phases = phases;
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            event.retry = Some(RetryInfo {
                delay_ms,
                next_attempt,
                next_attempt_at: OffsetDateTime::now_utc() + delay,
            });
            // Republish first: if the event fails after this, the job still exists twice at
            // worst (at-least-once), never zero times.
            let mut headers = FieldTable::default();
            headers.insert(
                ATTEMPT_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(next_attempt)),
            );
            let properties = BasicProperties::default()
                .with_headers(headers)
                .with_expiration(delay_ms.to_string().into());
            shared
                .publisher
                .publish_json(
                    &shared.topology.retry_exchange(),
                    JOB_ROUTING_KEY,
                    &valid.job.to_json(),
                    properties,
                )
                .await?;
            reporter.publish(&event).await?;
            info!(?delay, next_attempt, "retry scheduled");
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
        RetryDecision::Fail | RetryDecision::Dead => {
            let state = if decision == RetryDecision::Fail {
                JobState::Failed
            } else {
                JobState::Dead
            };
            let mut event = reporter.error_event(state, failure.error);
            event.phases = phases;
            finish_failed(shared, reporter, delivery, event).await
        }
    }
}

/// Copies the message to the dead-letter queue with the reason in its headers, publishes the
/// terminal error `event`, then acks.
async fn finish_failed(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    event: pushfleet_shared::Event,
) -> Result<(), BrokerError> {
    let Some(error) = event.error.clone() else {
        return reporter.publish(&event).await;
    };
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        DEAD_CODE_HEADER.into(),
        AMQPValue::LongString(LongString::from(error.code.as_str())),
    );
    headers.insert(
        DEAD_MESSAGE_HEADER.into(),
        AMQPValue::LongString(LongString::from(error.message.as_str())),
    );
    headers.insert(
        DEAD_WORKER_HEADER.into(),
        AMQPValue::LongString(LongString::from(shared.worker_id.as_str())),
    );
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(ct) = delivery.properties.content_type() {
        properties = properties.with_content_type(ShortString::from(ct.as_str()));
    }
    shared
        .publisher
        .publish_raw(
            &shared.topology.dead_letter_exchange(),
            JOB_ROUTING_KEY,
            &delivery.data,
            properties,
        )
        .await?;
    reporter.publish(&event).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

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
