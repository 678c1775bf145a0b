//! What every fault test shares: one-at-a-time execution, the overall time limit, logs kept
//! and printed on failure, a fleet of worker processes on a fresh topology, images and jobs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, job_json, pushfleet_binary, remove_images,
    worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::Value;

/// Held by every fault test from start to end: the tests of this binary never overlap.
/// (A tokio mutex: each `#[tokio::test]` has its own runtime, and tokio's locks work across
/// runtimes; it never poisons, so one failed test does not fail the others.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one fault test: waits for the other tests to finish, then runs `body` with a fresh log
/// folder, at most `limit`. On failure (or timeout) the logs are printed and kept; on success
/// they are deleted. Dropping the body on timeout kills its worker processes and restores any
/// outage it started.
pub(crate) async fn fault_test<F, Fut>(name: &str, limit: Duration, body: F) -> Result<()>
where
    F: FnOnce(Arc<Logs>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // Build (or find) the binary before the clock of the test itself starts.
    tokio::task::spawn_blocking(pushfleet_binary).await??;
    let logs = Arc::new(Logs::new(name)?);
    let result = match tokio::time::timeout(limit, body(Arc::clone(&logs))).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("the test did not finish within {limit:?}")),
    };
    let took = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => {
            println!("FAULT {name}: passed in {took:.1} s");
            logs.remove();
        }
        Err(e) => {
            eprintln!("FAULT {name}: FAILED after {took:.1} s: {e:#}");
            logs.dump(120);
            eprintln!("FAULT {name}: logs kept in {}", logs.path().display());
        }
    }
    result
}

/// Worker processes on one fresh topology prefix, the test's event log, and the images the
/// test made (removed at the end).
pub(crate) struct Fleet {
    pub(crate) env: StackEnv,
    pub(crate) logs: Arc<Logs>,
    pub(crate) prefix: String,
    pub(crate) events: EventLog,
    pub(crate) workers: Vec<WorkerProcess>,
    pub(crate) images: Vec<String>,
    pub(crate) settings: WorkerSettings,
    pub(crate) registries: String,
}

impl Fleet {
    /// A fleet on a new prefix `<name>-<hex>` with the base catalogue plus `extra_registries`;
    /// the topology and the event log exist before any worker starts.
    pub(crate) async fn new(
        name: &str,
        logs: Arc<Logs>,
        settings: WorkerSettings,
        extra_registries: &str,
    ) -> Result<Self> {
        let env = StackEnv::load()?;
        let prefix = unique(&format!("faults-{name}"));
        let registries = format!("{}\n{extra_registries}", base_registries(&env)?);
        let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
        Ok(Self {
            env,
            logs,
            prefix,
            events,
            workers: Vec::new(),
            images: Vec::new(),
            settings,
            registries,
        })
    }

    /// The TOML of worker `id` of this fleet, with `settings`.
    pub(crate) fn toml_with(&self, id: &str, settings: WorkerSettings) -> Result<String> {
        worker_toml(&self.env, &self.prefix, id, settings, &self.registries)
    }

    /// Starts worker `id` with the fleet's settings; returns its index in `workers`.
    pub(crate) async fn start_worker(&mut self, id: &str) -> Result<usize> {
        self.start_worker_with(id, self.settings).await
    }

    /// Starts worker `id` with `settings`; returns its index in `workers`.
    pub(crate) async fn start_worker_with(
        &mut self,
        id: &str,
        settings: WorkerSettings,
    ) -> Result<usize> {
        let toml = self.toml_with(id, settings)?;
        let worker = WorkerProcess::spawn(&self.logs, id, &toml).await?;
        self.workers.push(worker);
        Ok(self.workers.len() - 1)
    }

    /// Starts worker `index` again (after it exited) with the same settings, as `new_id`: a
    /// restarted pod gets a new name, and the events tell the two lives apart.
    pub(crate) async fn restart_worker(&mut self, index: usize, new_id: &str) -> Result<()> {
        let toml = self.toml_with(new_id, self.settings)?;
        self.workers[index] = WorkerProcess::spawn(&self.logs, new_id, &toml).await?;
        Ok(())
    }

    /// Waits until every running worker reports ready.
    pub(crate) async fn wait_all_ready(&self, limit: Duration) -> Result<()> {
        for w in &self.workers {
            w.wait_ready(limit).await?;
        }
        Ok(())
    }

    /// Makes `count` small unique source images `<base>-s<i>:src`; returns their references.
    pub(crate) async fn make_sources(&mut self, base: &str, count: usize) -> Result<Vec<String>> {
        let docker = docker(&self.env)?;
        let mut refs = Vec::new();
        for i in 0..count {
            let reference = format!("{base}-s{i}:src");
            let id = make_image(&docker, &[&reference]).await?;
            self.images.push(id);
            refs.push(reference);
        }
        Ok(refs)
    }

    /// Publishes `count` jobs to the basic registry: job `i` pushes source `i % sources.len()`
    /// to `production/<base>-s<k>` under its own tag `j<i>`. Returns the job ids in order.
    pub(crate) async fn publish_jobs(
        &self,
        base: &str,
        sources: &[String],
        count: usize,
    ) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for i in 0..count {
            let k = i % sources.len();
            let id = format!("{}-j{i}", self.prefix);
            let tag = format!("j{i}");
            let job: Value = job_json(
                &id,
                &sources[k],
                "basic",
                &format!("production/{base}-s{k}"),
                &[&tag],
            );
            self.events.publish_job(&job).await?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Stops every worker still running with SIGTERM and waits for each (bounded), then removes
    /// the test's images and, when `clean_broker`, its queues and exchanges.
    pub(crate) async fn shutdown(mut self, clean_broker: bool) -> Result<()> {
        let grace = Duration::from_secs(self.settings.shutdown_grace_s + 15);
        let mut problems = Vec::new();
        for w in &mut self.workers {
            if w.pid().is_none() {
                continue;
            }
            if let Err(e) = w.terminate().await {
                problems.push(format!("{}: {e:#}", w.id));
                continue;
            }
            match w.wait_exit(grace).await {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("{} exited with {status}", w.id)),
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    let _ = w.kill().await;
                }
            }
        }
        if let Ok(docker) = docker(&self.env) {
            remove_images(&docker, &self.images).await;
        }
        if clean_broker {
            self.events.cleanup().await;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "workers did not stop cleanly on SIGTERM: {problems:?}"
            ))
        }
    }
}

/// Prints evidence for jobs that went wrong: their events and the worker log lines naming them.
pub(crate) fn print_evidence(fleet: &Fleet, title: &str, job_ids: &[String]) {
    if job_ids.is_empty() {
        return;
    }
    let events = fleet.events.events();
    eprintln!("===== {title}: {} job(s) =====", job_ids.len());
    for id in job_ids.iter().take(10) {
        eprintln!("--- job {id}: events");
        for line in pushfleet_tests::process::describe_job(&events, id) {
            eprintln!("    {line}");
        }
        eprintln!("--- job {id}: worker log lines");
        for line in fleet.logs.grep(id).iter().take(40) {
            eprintln!("    {line}");
        }
    }
}
