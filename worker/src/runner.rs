//! The worker's run loop: broker sessions, reconnection, and shutdown.
//!
//! A *session* is one pair of broker connections (one to consume, one to publish: RabbitMQ's
//! flow control blocks a whole connection, and a throttled publisher must not also stop the
//! worker from acking), the declared topology, one jobs consumer per pool the worker serves
//! (`worker.pools`) and this worker's control-queue consumer. Each delivery runs in its own
//! task (see [`crate::delivery`]).
//!
//! How many jobs run at once is `worker.concurrency`, over all pools. Quorum queues have no
//! channel-wide prefetch, so each pool's consumer has a prefetch of `concurrency` and a
//! semaphore of `concurrency` permits, kept across sessions, bounds the jobs that run: with
//! one pool it never blocks; with several, a delivery beyond the limit waits unacked in this
//! worker until a running job ends (see `docs/configuration.md` on `consumer_timeout`).
//!
//! When the broker goes away, the session ends, the worker reports not-ready, and a new session
//! is opened with growing delays until the broker answers again: the process never needs a
//! restart. Jobs that were running keep running; their acks fail with the old channel, and the
//! broker redelivers them (harmlessly: see the pipeline's redelivery check).
//!
//! Shutdown is passed in as a future (see `mini-redis`): when it resolves, the consumer is
//! cancelled (basic.cancel), the worker reports not-ready, in-flight jobs get the grace period
//! to finish, and whatever still runs then is dropped unacked, so the broker requeues it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use futures_util::stream::{self, SelectAll};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use pushfleet_shared::Pool;
use pushfleet_shared::control::{ControlAction, ControlMessage};
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::{self, BrokerError, ConfirmedPublisher, PublisherSlot};
use crate::cancel::Cancels;
use crate::config::Config;
use crate::delivery::{self, Shared};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineSetupError};

/// How many control requests are in flight to one worker at once.
const CONTROL_PREFETCH: u16 = 100;
/// How many registry checks one worker runs at once.
const CHECK_PREFETCH: u16 = 2;

/// How long closing a broker connection may take before it is dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the worker could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The clients could not be built from the configuration.
    #[error(transparent)]
    Setup(#[from] PipelineSetupError),
    /// The AMQP password file could not be read.
    #[error("amqp.password_file: {0}")]
    AmqpPassword(crate::credentials::CredentialError),
}

/// What the health endpoints report.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    ready: AtomicBool,
    sessions: AtomicU64,
    metrics: Arc<Metrics>,
}

impl WorkerStatus {
    /// The worker's metrics (served on `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many broker sessions this worker has opened (1 for a worker that never lost its
    /// broker connection).
    pub fn sessions_opened(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Whether the worker is consuming jobs (connected, not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets readiness (the run loop does; exposed for tests of the endpoints).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Runs a worker until `shutdown` resolves; see the module doc.
pub async fn run(config: Arc<Config>, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_with_status(config, Arc::new(WorkerStatus::default()), shutdown).await
}

/// Like [`run`], reporting readiness into `status` (for the health endpoints).
pub async fn run_with_status(
    config: Arc<Config>,
    status: Arc<WorkerStatus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let pipeline = Arc::new(Pipeline::new(
        Arc::clone(&config),
        Arc::clone(status.metrics()),
    )?);
    if let Some(daemon) = pipeline.daemon()
        && let Err(e) = daemon.ping().await
    {
        warn!(error = %e, "the Docker daemon does not answer yet; jobs fail as daemon_unavailable (and are retried) until it does");
    }
    run_sessions(config, status, shutdown, Some(pipeline)).await
}

/// The broker side alone, for benchmarks of it: jobs are consumed, parsed and planned, and get
/// their `accepted` and `succeeded` events (digest
/// [`BROKER_ONLY_DIGEST`](crate::delivery::BROKER_ONLY_DIGEST)) and their ack, but no daemon
/// or registry stage runs. Never for real jobs: it reports pushes that did not happen.
pub async fn run_broker_only(
    config: Arc<Config>,
    status: Arc<WorkerStatus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    warn!("broker-only mode: no image is pushed, every job is reported as succeeded");
    run_sessions(config, status, shutdown, None).await
}

async fn run_sessions(
    config: Arc<Config>,
    status: Arc<WorkerStatus>,
    shutdown: impl Future<Output = ()>,
    pipeline: Option<Arc<Pipeline>>,
) -> Result<(), RunError> {
    let urls = config
        .amqp
        .urls_with_password()
        .map_err(RunError::AmqpPassword)?;
    let publishers = PublisherSlot::default();
    // The node to try first: after a lost session, the next one (a cluster node that went
    // away refuses connections until it is back).
    let mut node = 0;
    let cancels = Arc::new(Cancels::default());
    let slots = Arc::new(Semaphore::new(usize::from(config.worker.concurrency)));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);

    let mut failures: u32 = 0;
    loop {
        match Session::open(
            &config,
            &urls,
            node,
            &publishers,
            &pipeline,
            &cancels,
            &status,
        )
        .await
        {
            Ok(mut session) => {
                failures = 0;
                node = session.node;
                let earlier = status.sessions.fetch_add(1, Ordering::Relaxed);
                status.metrics.broker_session(true, earlier > 0);
                status.set_ready(true);
                let queues: Vec<String> = config
                    .worker
                    .pools
                    .iter()
                    .map(|p| session.shared.topology.pool_queue(p))
                    .collect();
                info!(
                    worker = %config.worker.id,
                    node = %session.node_url,
                    queues = %queues.join(", "),
                    concurrency = config.worker.prefetch(),
                    "worker ready"
                );
                let end = session.consume(&tracker, &slots, &mut shutdown).await;
                status.set_ready(false);
                status.metrics.broker_session(false, false);
                if matches!(end, SessionEnd::Lost(_)) {
                    publishers.set(None);
                    node += 1;
                }
                match end {
                    SessionEnd::Shutdown => {
                        session.stop_consuming().await;
                        drain(&tracker, config.worker.shutdown_grace()).await;
                        session.close().await;
                        info!("stopped");
                        return Ok(());
                    }
                    SessionEnd::Lost(reason) => {
                        warn!(%reason, "lost the broker; reconnecting");
                        session.close().await;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, nodes = %config.amqp.nodes(), "cannot open a broker session");
                node += 1;
            }
        }
        failures = failures.saturating_add(1);
        let delay = reconnect_delay(failures);
        info!(?delay, attempt = failures, "next broker connection attempt");
        tokio::select! {
            () = &mut shutdown => {
                drain(&tracker, config.worker.shutdown_grace()).await;
                info!("stopped while disconnected");
                return Ok(());
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The delay before reconnection attempt `n` (from 1): 0.5 s doubling to 30 s, with jitter.
fn reconnect_delay(n: u32) -> Duration {
    let index = usize::try_from(n.saturating_sub(1).min(16)).unwrap_or(16);
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(index)
        .unwrap_or(Duration::from_secs(30))
}

async fn drain(tracker: &TaskTracker, grace: Duration) {
    info!(?grace, "waiting for the jobs in flight");
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            ?grace,
            "jobs still running after the grace period: they return to the queue"
        );
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Deliveries of every pool's consumer, each with its pool; `None` when that consumer ended.
type JobStream = SelectAll<PoolDeliveries>;

/// One pool's deliveries (`Sync` too: the session is held across awaits).
type PoolDeliveries = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = (Pool, Option<lapin::Result<lapin::message::Delivery>>)>
            + Send
            + Sync,
    >,
>;

/// One pair of broker connections and the consumers on them.
struct Session {
    /// The index of the node (in `amqp.urls`) both connections go to.
    node: usize,
    /// That node's URL, password hidden.
    node_url: String,
    consume_conn: Connection,
    publish_conn: Connection,
    publisher_channel: Channel,
    channel: Channel,
    consumer_tag: String,
    /// The jobs consumers' tags, one per pool.
    jobs_tags: Vec<String>,
    jobs: JobStream,
    control: Consumer,
    /// Registry check requests, on their own channel.
    checks: Consumer,
    checks_channel: Channel,
    shared: Arc<Shared>,
}

impl Session {
    /// Connects to the first node that answers, from `first_node` on, and starts consuming;
    /// the session's publisher goes into `publishers`.
    async fn open(
        config: &Arc<Config>,
        urls: &[SecretString],
        first_node: usize,
        publishers: &PublisherSlot,
        pipeline: &Option<Arc<Pipeline>>,
        cancels: &Arc<Cancels>,
        status: &WorkerStatus,
    ) -> Result<Self, BrokerError> {
        let worker_id = &config.worker.id;
        let topology = config.amqp.topology();
        let (consume_conn, node) =
            broker::connect_any(urls, first_node, &format!("{worker_id} consume"), None).await?;
        let (publish_conn, _) = broker::connect_any(
            urls,
            node,
            &format!("{worker_id} publish"),
            config.amqp.publish_frame_max,
        )
        .await?;
        let publisher = ConfirmedPublisher::open(&publish_conn).await?;
        broker::declare_topology(publisher.channel(), &topology).await?;
        for pool in &config.worker.pools {
            for queue in topology.pool_queues(pool) {
                broker::declare_queue(publisher.channel(), &queue).await?;
            }
        }

        let channel = consume_conn.create_channel().await?;
        channel
            .basic_qos(config.worker.prefetch(), BasicQosOptions { global: false })
            .await?;
        let consumer_tag = format!("{worker_id}-{}", uuid::Uuid::new_v4().simple());
        let mut jobs = SelectAll::new();
        let mut jobs_tags = Vec::new();
        for pool in &config.worker.pools {
            let tag = if pool.is_default() {
                consumer_tag.clone()
            } else {
                format!("{consumer_tag}-pool-{pool}")
            };
            let consumer = channel
                .basic_consume(
                    topology.pool_queue(pool).as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            jobs_tags.push(tag);
            jobs.push(pool_deliveries(pool.clone(), consumer));
        }

        // The control stream, read from its start on every session: cancel requests
        // published while this worker was away still count. Streams need manual acks and a
        // prefetch, so they get their own channel.
        let control_channel = consume_conn.create_channel().await?;
        control_channel
            .basic_qos(CONTROL_PREFETCH, BasicQosOptions { global: false })
            .await?;
        let mut offset = FieldTable::default();
        offset.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let control = control_channel
            .basic_consume(
                topology.control_queue().as_str().into(),
                format!("{consumer_tag}-control").as_str().into(),
                BasicConsumeOptions::default(),
                offset,
            )
            .await?;

        // Registry checks ("Test connection"): a few at a time, beside the jobs.
        let checks_channel = consume_conn.create_channel().await?;
        checks_channel
            .basic_qos(CHECK_PREFETCH, BasicQosOptions { global: false })
            .await?;
        let checks = checks_channel
            .basic_consume(
                topology.checks_queue().as_str().into(),
                format!("{consumer_tag}-checks").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let publisher_channel = publisher.channel().clone();
        publishers.set(Some(publisher));
        let shared = Arc::new(Shared::new(
            Arc::clone(config),
            pipeline.clone(),
            Arc::clone(status.metrics()),
            publishers.publisher(),
            Arc::clone(cancels),
        ));
        let node_url = std::iter::once(&config.amqp.url)
            .chain(&config.amqp.other_urls)
            .nth(node)
            .map(ToString::to_string)
            .unwrap_or_default();
        Ok(Self {
            node,
            node_url,
            consume_conn,
            publish_conn,
            publisher_channel,
            channel,
            consumer_tag,
            jobs_tags,
            jobs,
            control,
            checks,
            checks_channel,
            shared,
        })
    }

    /// Hands deliveries to job tasks until shutdown or until the broker goes away.
    async fn consume(
        &mut self,
        tracker: &TaskTracker,
        slots: &Arc<Semaphore>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        // The publishing connection can die alone (e.g. the broker refuses a frame): without
        // it no job can be settled, so its loss ends the session like the consumer's.
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.as_mut() => return SessionEnd::Shutdown,
                _ = health.tick() => {
                    if !self.publish_conn.status().connected() {
                        return SessionEnd::Lost("the publishing connection closed".into());
                    }
                    if !self.publisher_channel.status().connected() {
                        return SessionEnd::Lost("the broker closed the publishing channel".into());
                    }
                }
                next = self.jobs.next() => match next {
                    Some((pool, Some(Ok(delivery)))) => {
                        let shared = Arc::clone(&self.shared);
                        let slots = Arc::clone(slots);
                        let stopping = tracker.clone();
                        tracker.spawn(async move {
                            // The semaphore is never closed.
                            let Ok(_slot) = slots.acquire_owned().await else { return };
                            // A job still waiting for a slot when shutdown began does not
                            // start: left unacked, it returns to its queue when the session
                            // closes, for another worker.
                            if stopping.is_closed() {
                                return;
                            }
                            delivery::handle(&shared, delivery, pool).await;
                        });
                    }
                    Some((_, Some(Err(e)))) => return SessionEnd::Lost(e.to_string()),
                    Some((pool, None)) => {
                        return SessionEnd::Lost(format!("the broker ended the jobs consumer of pool {pool}"));
                    }
                    None => return SessionEnd::Lost("no jobs consumer".into()),
                },
                next = self.checks.next() => match next {
                    Some(Ok(delivery)) => {
                        let shared = Arc::clone(&self.shared);
                        tracker.spawn(async move { crate::check::answer(&shared, delivery).await });
                    }
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("the broker ended the checks consumer".into()),
                },
                next = self.control.next() => match next {
                    Some(Ok(message)) => {
                        let sent_at = *message.properties.timestamp();
                        self.on_control(&message.data, sent_at);
                        if let Err(e) = message.ack(BasicAckOptions::default()).await {
                            return SessionEnd::Lost(e.to_string());
                        }
                    }
                    Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                    None => return SessionEnd::Lost("the broker ended the control consumer".into()),
                },
            }
        }
    }

    /// Applies one control request; `sent_at` is its AMQP timestamp (seconds since the epoch).
    fn on_control(&self, body: &[u8], sent_at: Option<u64>) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let age_s = sent_at
            .and_then(|t| i64::try_from(t).ok())
            .map_or(0, |t| now.saturating_sub(t).max(0));
        if u64::try_from(age_s).unwrap_or(0) > crate::cancel::REMEMBER_FOR.as_secs() {
            return; // older than the stream is meant to keep
        }
        match ControlMessage::from_slice(body) {
            Some(ControlMessage {
                action: ControlAction::Cancel,
                job_id,
                ..
            }) => {
                let running = self.shared.cancels.cancel(&job_id);
                info!(%job_id, running_here = running, "cancel requested");
            }
            None => warn!(
                bytes = body.len(),
                "ignoring a control message that is not a v1 request"
            ),
        }
    }

    async fn stop_consuming(&self) {
        info!("stopping: no new jobs");
        let checks_tag = format!("{}-checks", self.consumer_tag);
        if let Err(e) = self
            .checks_channel
            .basic_cancel(checks_tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "basic.cancel of the checks consumer failed");
        }
        for tag in &self.jobs_tags {
            if let Err(e) = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                warn!(error = %e, consumer = %tag, "basic.cancel failed");
            }
        }
    }

    /// Closes both connections, each within [`CLOSE_TIMEOUT`]: after a lost broker a
    /// connection can look open while its I/O loop is gone, and a close would wait forever
    /// for the broker's reply (lapin's shutdown hang). Dropping it then is enough.
    async fn close(&self) {
        for conn in [&self.consume_conn, &self.publish_conn] {
            if !conn.status().connected() {
                continue;
            }
            match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "worker stopping".into()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "closing a broker connection failed"),
                Err(_) => warn!(
                    ?CLOSE_TIMEOUT,
                    "the broker did not answer the close; dropping"
                ),
            }
        }
    }
}

/// `consumer`'s deliveries tagged with `pool`, then one `(pool, None)` when it ends: a
/// consumer the broker cancels (queue deleted, leader moved) ends the session, which consumes
/// again.
fn pool_deliveries(pool: Pool, consumer: Consumer) -> PoolDeliveries {
    let end = pool.clone();
    Box::pin(
        consumer
            .map(move |d| (pool.clone(), Some(d)))
            .chain(stream::once(std::future::ready((end, None)))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_and_are_capped() {
        assert!(reconnect_delay(1) <= Duration::from_secs(1));
        assert!(reconnect_delay(3) >= Duration::from_secs(2));
        for n in [10, 100, u32::MAX] {
            let d = reconnect_delay(n);
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(60),
                "{n}: {d:?}"
            );
        }
    }
}
