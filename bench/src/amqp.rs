//! The bench's side of the broker: declaring a run's topology, publishing jobs with confirms,
//! handing each job's terminal event to whoever waits for it, counting `retrying` events, and
//! deleting the topology when the run is over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::{BasicProperties, Connection, Consumer};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::{JOB_ROUTING_KEY, MAX_RETRY_BUCKET, Topology};
use pushfleet_worker::broker::{
    ConfirmedPublisher, connect, declare_topology, subscribe_exclusive,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::run::JOB_LIMIT;

/// A job's terminal event, as the bench received it.
#[derive(Debug)]
pub(crate) struct Terminal {
    /// When the bench received it.
    pub(crate) at: Instant,
    /// When the bench received the job's (last) `accepted` event, if it saw one.
    pub(crate) accepted_at: Option<Instant>,
    /// The event.
    pub(crate) event: Event,
}

/// Who waits for which job, and what arrived for nobody yet.
#[derive(Debug, Default)]
struct Router {
    waiters: Mutex<HashMap<String, oneshot::Sender<Terminal>>>,
    accepted: Mutex<HashMap<String, Instant>>,
    retries: AtomicU64,
    unparsable: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    fn route(&self, body: &[u8]) {
        let Ok(event) = Event::from_slice(body) else {
            self.unparsable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        let Some(job_id) = event.job_id.clone() else {
            return;
        };
        match event.state {
            JobState::Accepted => {
                lock(&self.accepted).insert(job_id, now);
            }
            JobState::Retrying => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            state if state.is_terminal() => {
                let accepted_at = lock(&self.accepted).remove(&job_id);
                // A second terminal event of a job (a redelivery) finds no waiter: ignored,
                // as consumers are told to do.
                if let Some(waiter) = lock(&self.waiters).remove(&job_id) {
                    let _ = waiter.send(Terminal {
                        at: now,
                        accepted_at,
                        event,
                    });
                }
            }
            _ => {}
        }
    }
}

/// One run's connection to the broker: a confirmed publisher for jobs and a private
/// subscription to every event of the run's topology.
pub(crate) struct JobBus {
    conn: Connection,
    publisher: ConfirmedPublisher,
    topology: Topology,
    router: Arc<Router>,
    task: JoinHandle<()>,
    /// Cancelled when the event subscription ends (the broker went away).
    lost: CancellationToken,
}

impl std::fmt::Debug for JobBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBus")
            .field("topology", &self.topology.prefix())
            .finish_non_exhaustive()
    }
}

impl JobBus {
    /// Connects, declares `topology` (so jobs published before a worker runs wait in its
    /// queue) and subscribes to its events.
    pub(crate) async fn open(amqp_url: &str, topology: &Topology) -> Result<Self> {
        let conn = connect(amqp_url, "pushfleet-bench").await?;
        let publisher = ConfirmedPublisher::open(&conn).await?;
        declare_topology(publisher.channel(), topology).await?;
        let channel = conn.create_channel().await?;
        let events = subscribe_exclusive(&channel, &topology.events_exchange(), "job.*").await?;
        let router = Arc::new(Router::default());
        let lost = CancellationToken::new();
        let task = tokio::spawn(route_events(events, Arc::clone(&router), lost.clone()));
        Ok(Self {
            conn,
            publisher,
            topology: topology.clone(),
            router,
            task,
            lost,
        })
    }

    /// Waits for the terminal event `waiter` was registered for (see [`expect`](Self::expect)),
    /// at most [`JOB_LIMIT`]; fails at once when the bench loses the broker.
    pub(crate) async fn wait(
        &self,
        waiter: oneshot::Receiver<Terminal>,
        job_id: &str,
    ) -> Result<Terminal> {
        tokio::select! {
            got = tokio::time::timeout(JOB_LIMIT, waiter) => got
                .map_err(|_| anyhow::anyhow!("job {job_id} had no terminal event within {JOB_LIMIT:?}"))?
                .map_err(|_| anyhow::anyhow!("the event subscription ended")),
            () = self.lost.cancelled() => {
                Err(anyhow::anyhow!("the bench lost its broker connection while waiting for job {job_id}"))
            }
        }
    }

    /// Registers interest in `job_id`'s terminal event; call before publishing the job.
    pub(crate) fn expect(&self, job_id: &str) -> oneshot::Receiver<Terminal> {
        let (tx, rx) = oneshot::channel();
        lock(&self.router.waiters).insert(job_id.to_owned(), tx);
        rx
    }

    /// Publishes a job body to the jobs exchange and waits for the broker's confirm.
    pub(crate) async fn publish(&self, body: &[u8]) -> Result<()> {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.publisher
            .publish_raw(
                &self.topology.jobs_exchange(),
                JOB_ROUTING_KEY,
                body,
                properties,
            )
            .await
            .context("publishing a job")
    }

    /// `retrying` events seen so far.
    pub(crate) fn retries(&self) -> u64 {
        self.router.retries.load(Ordering::Relaxed)
    }

    /// Events that could not be parsed.
    pub(crate) fn unparsable(&self) -> u64 {
        self.router.unparsable.load(Ordering::Relaxed)
    }

    /// Stops listening and closes the connection (its exclusive queue goes with it).
    pub(crate) async fn close(self) {
        self.task.abort();
        let _ = self.conn.close(200, "run over".into()).await;
    }
}

async fn route_events(mut events: Consumer, router: Arc<Router>, lost: CancellationToken) {
    while let Some(delivery) = events.next().await {
        match delivery {
            Ok(d) => router.route(&d.data),
            Err(e) => {
                eprintln!("warning: the bench's event subscription ended: {e}");
                break;
            }
        }
    }
    lost.cancel();
}

/// Deletes every queue (delay queues included) and exchange of topology `prefix` that exists.
pub(crate) async fn delete_topology(amqp_url: &str, prefix: &str) -> Result<()> {
    let topology = Topology::new(prefix);
    let conn = connect(amqp_url, "pushfleet-bench cleanup").await?;
    let mut queues: Vec<String> = topology.queues().into_iter().map(|q| q.name).collect();
    queues.extend((0..=MAX_RETRY_BUCKET).map(|b| topology.retry_queue(b)));
    for queue in queues {
        // Deleting what does not exist closes the channel: one channel each.
        let channel = conn.create_channel().await?;
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in topology.exchanges() {
        let channel = conn.create_channel().await?;
        let _ = channel
            .exchange_delete(exchange.name.as_str().into(), Default::default())
            .await;
    }
    let _ = conn.close(200, "cleaned up".into()).await;
    Ok(())
}

/// A v1 push job to the catalogue's `basic` registry.
pub(crate) fn job_body(
    job_id: &str,
    source: &str,
    repository: &str,
    tags: &[String],
    run: &str,
) -> Vec<u8> {
    let job = serde_json::json!({
        "version": 1,
        "job_id": job_id,
        "source": source,
        "target": {"registry": "basic", "repository": repository, "tags": tags},
        "metadata": {"bench_run": run}
    });
    job.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: JobState, job: &str) -> Vec<u8> {
        Event::new(state, Some(job.to_owned()), 1, "w").to_json()
    }

    #[test]
    fn terminal_events_reach_their_waiter() {
        let router = Router::default();
        let (tx, mut rx) = oneshot::channel();
        lock(&router.waiters).insert("j1".to_owned(), tx);
        router.route(&event(JobState::Accepted, "j1"));
        router.route(&event(JobState::Retrying, "j1"));
        router.route(&event(JobState::Progress, "j1"));
        assert!(rx.try_recv().is_err(), "not terminal yet");
        router.route(&event(JobState::Succeeded, "j1"));
        let got = rx.try_recv().expect("terminal");
        assert_eq!(got.event.state, JobState::Succeeded);
        assert!(got.accepted_at.is_some());
        assert_eq!(router.retries.load(Ordering::Relaxed), 1);
        // A duplicate finds no waiter and is dropped.
        router.route(&event(JobState::Succeeded, "j1"));
        router.route(b"not json");
        assert_eq!(router.unparsable.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn job_bodies_are_valid_jobs() {
        let body = job_body("id-1", "img:src", "bench/r", &["t1".to_owned()], "r");
        let parsed = pushfleet_shared::job::PushJob::from_message(&body, Some("application/json"))
            .expect("valid job");
        assert_eq!(parsed.job.target.repository, "bench/r");
    }
}
