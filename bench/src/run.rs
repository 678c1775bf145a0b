//! One measured run, worker or floor: what it is asked to do ([`RunSpec`]), what it measured
//! ([`RunResult`]), what both share ([`Ctx`]), and the leftovers still to clean up should the
//! bench be interrupted ([`Cleanup`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use pushfleet_shared::event::PhaseTimings;

use crate::registry_log::{RegistryLog, RequestCounts};
use crate::stack::{Component, Stack};
use crate::workloads::{self, Workload};
use crate::{amqp, procfs};

/// How long the bench waits for one job's terminal event (or one floor job) before the run
/// fails.
pub(crate) const JOB_LIMIT: Duration = Duration::from_secs(180);

/// Which side of a comparison a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Side {
    /// A `pushfleet worker` process fed through RabbitMQ.
    Worker,
    /// The same Engine API calls made directly (see [`crate::floor`]).
    Floor,
}

impl Side {
    /// The name in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Worker => "worker",
            Side::Floor => "floor",
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    /// The workload.
    pub(crate) workload: Workload,
    /// Parallel jobs: the worker's `concurrency` (its prefetch), the floor's tasks.
    pub(crate) concurrency: u16,
    /// Timed jobs (a warm-up job comes first and is not counted).
    pub(crate) jobs: usize,
    /// A name unique to this run, used for its topology prefix, repository and images.
    pub(crate) name: String,
}

/// What the bench shares between runs.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The stack.
    pub(crate) stack: Stack,
    /// One Docker client for image setup, cleanup and the floor.
    pub(crate) docker: Docker,
    /// The basic registry's log.
    pub(crate) log: RegistryLog,
    /// The `pushfleet` binary run as worker processes.
    pub(crate) worker_bin: PathBuf,
    /// Extra environment of the worker processes (`--worker-env`).
    pub(crate) worker_env: Vec<(String, String)>,
    /// A scratch folder for worker configurations and logs.
    pub(crate) scratch: PathBuf,
    /// Leftovers to remove if the bench stops early.
    pub(crate) cleanup: Arc<Cleanup>,
}

impl Ctx {
    /// Runs `body` with the topology prefix of run `name` (`pfbench-<name>`), registered for
    /// [`Cleanup`] while it runs; the topology is deleted afterwards, whatever `body` returned.
    pub(crate) async fn with_topology<T, Fut>(
        &self,
        name: &str,
        body: impl FnOnce(String) -> Fut,
    ) -> anyhow::Result<T>
    where
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let prefix = format!("pfbench-{name}");
        self.cleanup.add_topology(&prefix);
        let result = body(prefix.clone()).await;
        self.cleanup
            .topology_done(&self.stack.amqp_url, &prefix)
            .await;
        result
    }

    /// Awaits `body` with the images `ids` registered for [`Cleanup`]; they are removed
    /// afterwards, whatever `body` returned.
    pub(crate) async fn with_images<T>(
        &self,
        ids: &[String],
        body: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.cleanup.add_images(ids);
        let result = body.await;
        self.cleanup.images_done(&self.docker, ids).await;
        result
    }
}

/// The time per stage of a run's jobs, summed: a worker's from its `succeeded` events, the
/// floor's from its own clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PhaseSums {
    /// Jobs summed.
    pub(crate) jobs: u64,
    /// Sums in milliseconds: publish → `accepted` seen by the bench.
    pub(crate) to_accepted_ms: f64,
    /// `resolve`.
    pub(crate) resolve_ms: f64,
    /// `preflight`.
    pub(crate) preflight_ms: f64,
    /// `retag` (registry-side tags).
    pub(crate) retag_ms: f64,
    /// `tag`.
    pub(crate) tag_ms: f64,
    /// `push`.
    pub(crate) push_ms: f64,
    /// `verify`.
    pub(crate) verify_ms: f64,
    /// `untag`.
    pub(crate) untag_ms: f64,
    /// The pipeline's `total`.
    pub(crate) total_ms: f64,
    /// Publish → terminal event seen by the bench.
    pub(crate) latency_ms: f64,
}

impl PhaseSums {
    /// Adds one job.
    pub(crate) fn add(&mut self, phases: &PhaseTimings, to_accepted: Duration, latency: Duration) {
        let ms = |v: Option<u64>| v.map_or(0.0, |v| v as f64);
        self.jobs += 1;
        self.to_accepted_ms += to_accepted.as_secs_f64() * 1000.0;
        self.resolve_ms += ms(phases.resolve_ms);
        self.preflight_ms += ms(phases.preflight_ms);
        self.retag_ms += ms(phases.retag_ms);
        self.tag_ms += ms(phases.tag_ms);
        self.push_ms += ms(phases.push_ms);
        self.verify_ms += ms(phases.verify_ms);
        self.untag_ms += ms(phases.untag_ms);
        self.total_ms += ms(phases.total_ms);
        self.latency_ms += latency.as_secs_f64() * 1000.0;
    }

    /// Adds one floor job: its tag and push calls, and its whole duration.
    pub(crate) fn add_floor(&mut self, tag: Duration, push: Duration, latency: Duration) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.jobs += 1;
        self.tag_ms += ms(tag);
        self.push_ms += ms(push);
        self.total_ms += ms(latency);
        self.latency_ms += ms(latency);
    }

    /// Adds another run's sums.
    pub(crate) fn merge(&mut self, other: &PhaseSums) {
        self.jobs += other.jobs;
        self.to_accepted_ms += other.to_accepted_ms;
        self.resolve_ms += other.resolve_ms;
        self.preflight_ms += other.preflight_ms;
        self.retag_ms += other.retag_ms;
        self.tag_ms += other.tag_ms;
        self.push_ms += other.push_ms;
        self.verify_ms += other.verify_ms;
        self.untag_ms += other.untag_ms;
        self.total_ms += other.total_ms;
        self.latency_ms += other.latency_ms;
    }

    /// Per-job means, or `None` without jobs: `[to_accepted, resolve, preflight, retag, tag,
    /// push, verify, untag, total, outside (latency - total: queue, events, acks)]`.
    pub(crate) fn means(&self) -> Option<[f64; 10]> {
        if self.jobs == 0 {
            return None;
        }
        let n = self.jobs as f64;
        let outside = self.latency_ms - self.total_ms;
        Some([
            self.to_accepted_ms / n,
            self.resolve_ms / n,
            self.preflight_ms / n,
            self.retag_ms / n,
            self.tag_ms / n,
            self.push_ms / n,
            self.verify_ms / n,
            self.untag_ms / n,
            self.total_ms / n,
            outside / n,
        ])
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    /// Which side.
    pub(crate) side: Side,
    /// Timed jobs done.
    pub(crate) jobs: usize,
    /// From the first publish (or the floor's first call) to the last terminal event.
    pub(crate) elapsed: Duration,
    /// Per job: publish → terminal event (worker), start → end (floor).
    pub(crate) latencies: Vec<Duration>,
    /// The worker process's CPU seconds during the timed part.
    pub(crate) worker_cpu_s: Option<f64>,
    /// The worker's `VmRSS` after start-up, before any job, in KiB.
    pub(crate) idle_rss_kib: Option<u64>,
    /// The worker's `VmHWM` at the end of the run, in KiB.
    pub(crate) peak_rss_kib: Option<u64>,
    /// CPU seconds of the stack's components during the timed part.
    pub(crate) stack_cpu_s: BTreeMap<Component, f64>,
    /// The run's registry requests, or why they could not be counted.
    pub(crate) requests: Result<RequestCounts, String>,
    /// `retrying` events.
    pub(crate) retries: u64,
    /// Jobs whose terminal event was not `succeeded`, as `state/code`.
    pub(crate) failures: Vec<String>,
    /// Time per stage: the worker's from its events, the floor's tag and push calls.
    pub(crate) phases: PhaseSums,
    /// The worker's own counters over the timed part, from its `/metrics` (worker runs).
    pub(crate) worker_counters: Option<crate::worker_driver::WorkerCounters>,
}

impl RunResult {
    /// Jobs per second.
    pub(crate) fn jobs_per_s(&self) -> f64 {
        crate::stats::per_second(self.jobs, self.elapsed)
    }

    /// Per-job figure: `value / jobs`.
    pub(crate) fn per_job(&self, value: f64) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            value / self.jobs as f64
        }
    }
}

/// CPU seconds of every stack component that runs now.
pub(crate) fn stack_cpu(stack: &Stack) -> BTreeMap<Component, f64> {
    Component::ALL
        .iter()
        .filter_map(|c| {
            let pid = stack.pid_of(*c)?;
            let s = procfs::cpu_seconds(procfs::Pid::Of(pid)).ok()?;
            Some((*c, s))
        })
        .collect()
}

/// `after - before` per component present in both.
pub(crate) fn stack_cpu_delta(
    before: &BTreeMap<Component, f64>,
    after: &BTreeMap<Component, f64>,
) -> BTreeMap<Component, f64> {
    after
        .iter()
        .filter_map(|(c, a)| Some((*c, a - before.get(c)?)))
        .collect()
}

/// Leftovers of runs under way: topology prefixes and image ids. A run registers them as
/// it makes them and removes them once cleaned; whatever is left when the bench stops early
/// (Ctrl-C, a failure) is cleaned by [`Cleanup::run`].
#[derive(Debug, Default)]
pub(crate) struct Cleanup {
    topologies: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Cleanup {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a topology prefix.
    pub(crate) fn add_topology(&self, prefix: &str) {
        Self::lock(&self.topologies).push(prefix.to_owned());
    }

    /// Registers image ids.
    pub(crate) fn add_images(&self, ids: &[String]) {
        Self::lock(&self.images).extend(ids.iter().cloned());
    }

    /// Deletes the topology `prefix` now and forgets it.
    pub(crate) async fn topology_done(&self, amqp_url: &str, prefix: &str) {
        delete_topology(amqp_url, prefix).await;
        Self::lock(&self.topologies).retain(|p| p != prefix);
    }

    /// Removes images `ids` now and forgets them.
    pub(crate) async fn images_done(&self, docker: &Docker, ids: &[String]) {
        workloads::remove_images(docker, ids).await;
        Self::lock(&self.images).retain(|i| !ids.contains(i));
    }

    /// Removes everything still registered.
    pub(crate) async fn run(&self, amqp_url: &str, docker: &Docker) {
        let topologies = std::mem::take(&mut *Self::lock(&self.topologies));
        for prefix in topologies {
            delete_topology(amqp_url, &prefix).await;
        }
        let images = std::mem::take(&mut *Self::lock(&self.images));
        workloads::remove_images(docker, &images).await;
    }
}

/// Deletes the topology `prefix`; a failure is only a warning (the bench goes on).
async fn delete_topology(amqp_url: &str, prefix: &str) {
    if let Err(e) = amqp::delete_topology(amqp_url, prefix).await {
        eprintln!("warning: could not delete topology {prefix}: {e:#}");
    }
}
