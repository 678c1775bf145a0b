//! Broker-only mode: the worker's broker side alone, in this process
//! ([`pushfleet_worker::runner::run_broker_only`]: consume, parse, plan, `accepted`, a
//! `succeeded` event with a fixed digest, ack; no daemon or registry stage).
//!
//! `N` jobs are published up front (pipelined confirms), then the worker starts; the rate is
//! `N` over the time from the first `accepted` event to the last terminal event the bench
//! receives, and the CPU is this whole process's (the in-process worker and the bench's event
//! counting, which reads only routing keys) from the worker's start to the last event, with
//! RabbitMQ's over the same time. The worker logs at `info` into a file, as a production
//! worker logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use pushfleet_shared::topology::{JOB_ROUTING_KEY, Topology};
use pushfleet_worker::broker::{
    ConfirmedPublisher, connect, declare_topology, subscribe_exclusive,
};
use pushfleet_worker::runner::{WorkerStatus, run_broker_only};
use tokio_util::sync::CancellationToken;

use crate::amqp::job_body;
use crate::procfs::{self, Pid};
use crate::run::{Ctx, stack_cpu, stack_cpu_delta};
use crate::stack::Component;
use crate::worker_driver::worker_toml;

/// Unconfirmed publishes in flight while the jobs are published.
const PUBLISH_WINDOW: usize = 1000;
/// The run fails when no event arrives for this long.
const QUIET_LIMIT: Duration = Duration::from_secs(30);

/// What one broker-only run measured.
#[derive(Debug, Clone)]
pub(crate) struct BrokerOnlyResult {
    /// Jobs run.
    pub(crate) jobs: usize,
    /// First `accepted` → last terminal event.
    pub(crate) elapsed: Duration,
    /// CPU seconds of this process from the worker's start to the last terminal event.
    pub(crate) cpu_s: f64,
    /// `retrying` events.
    pub(crate) retries: u64,
    /// Terminal events other than `succeeded`.
    pub(crate) failures: u64,
    /// How long publishing the jobs took (not part of the rate).
    pub(crate) publish_s: f64,
    /// RabbitMQ's CPU seconds over the same time, when its pid is known.
    pub(crate) rabbitmq_cpu_s: Option<f64>,
}

impl BrokerOnlyResult {
    /// Jobs per second.
    pub(crate) fn jobs_per_s(&self) -> f64 {
        crate::stats::per_second(self.jobs, self.elapsed)
    }
}

/// Runs `jobs` jobs through an in-process broker-only worker with `concurrency`.
pub(crate) async fn run(
    ctx: &Ctx,
    name: &str,
    concurrency: u16,
    jobs: usize,
) -> Result<BrokerOnlyResult> {
    ctx.with_topology(name, |prefix| async move {
        measure(ctx, &prefix, name, concurrency, jobs).await
    })
    .await
}

async fn measure(
    ctx: &Ctx,
    prefix: &str,
    name: &str,
    concurrency: u16,
    jobs: usize,
) -> Result<BrokerOnlyResult> {
    let topology = Topology::new(prefix);
    let conn = connect(&ctx.stack.amqp_url, "pushfleet-bench broker-only").await?;
    let publisher = ConfirmedPublisher::open(&conn).await?;
    declare_topology(publisher.channel(), &topology).await?;
    let events_channel = conn.create_channel().await?;
    let mut events =
        subscribe_exclusive(&events_channel, &topology.events_exchange(), "job.*").await?;

    // Publish every job first, keeping PUBLISH_WINDOW confirms outstanding.
    let published_at = Instant::now();
    let exchange = topology.jobs_exchange();
    let mut pending = FuturesUnordered::new();
    for index in 0..jobs {
        let job_id = format!("{name}-{index}");
        let body = job_body(
            &job_id,
            "pushfleet-bench-broker-only:src",
            &format!("bench/{name}"),
            &[format!("j{index}")],
            name,
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = publisher
            .channel()
            .basic_publish(
                exchange.as_str().into(),
                JOB_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .context("publishing a job")?;
        pending.push(confirm);
        while pending.len() >= PUBLISH_WINDOW {
            check_confirm(pending.next().await)?;
        }
    }
    while !pending.is_empty() {
        check_confirm(pending.next().await)?;
    }
    let publish_s = published_at.elapsed().as_secs_f64();

    let config = pushfleet_worker::config::load_from_str(
        &worker_toml(ctx, prefix, concurrency)?,
        Some(Default::default()),
    )
    .map_err(|e| anyhow!("broker-only configuration: {e}"))?;
    let stop = CancellationToken::new();
    let stack_before = stack_cpu(&ctx.stack);
    let cpu_before = procfs::cpu_seconds(Pid::This)?;
    let worker = tokio::spawn(run_broker_only(
        Arc::new(config),
        Arc::new(WorkerStatus::default()),
        stop.clone().cancelled_owned(),
    ));

    let mut first_accepted = None;
    let mut terminal = 0usize;
    let mut failures = 0u64;
    let mut retries = 0u64;
    let mut last = Instant::now();
    let counted: Result<()> = async {
        while terminal < jobs {
            let delivery = tokio::time::timeout(QUIET_LIMIT, events.next())
                .await
                .map_err(|_| {
                    anyhow!("no event for {QUIET_LIMIT:?} after {terminal} of {jobs} jobs")
                })?
                .context("the event subscription ended")??;
            let now = Instant::now();
            match delivery.routing_key.as_str() {
                "job.accepted" => {
                    first_accepted.get_or_insert(now);
                }
                "job.succeeded" => {
                    terminal += 1;
                    last = now;
                }
                "job.failed" | "job.dead" => {
                    terminal += 1;
                    failures += 1;
                    last = now;
                }
                "job.retrying" => retries += 1,
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let cpu_after = procfs::cpu_seconds(Pid::This)?;
    let stack = stack_cpu_delta(&stack_before, &stack_cpu(&ctx.stack));
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(30), worker).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("warning: the broker-only worker failed: {e}"),
        Ok(Err(e)) => eprintln!("warning: the broker-only worker task failed: {e}"),
        Err(_) => eprintln!("warning: the broker-only worker did not stop within 30 s"),
    }
    let _ = conn.close(200, "run over".into()).await;
    counted?;
    let first = first_accepted.ok_or_else(|| anyhow!("no accepted event"))?;
    if failures > 0 {
        eprintln!("warning: {failures} broker-only jobs did not succeed");
    }
    Ok(BrokerOnlyResult {
        jobs,
        elapsed: last.saturating_duration_since(first),
        cpu_s: cpu_after - cpu_before,
        retries,
        failures,
        publish_s,
        rabbitmq_cpu_s: stack.get(&Component::Rabbitmq).copied(),
    })
}

fn check_confirm(confirm: Option<Result<lapin::Confirmation, lapin::Error>>) -> Result<()> {
    match confirm {
        Some(Ok(c)) if c.is_nack() => bail!("the broker refused a job (nack)"),
        Some(Ok(_)) | None => Ok(()),
        Some(Err(e)) => Err(anyhow!("publishing a job: {e}")),
    }
}
