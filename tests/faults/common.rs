//! What every fault test shares: one-at-a-time execution, the overall time limit, logs kept
//! and printed on failure, a fleet of worker processes on a fresh topology, images and jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image};
use pushfleet_tests::process::{
    EventLog, Fault, Logs, Outage, WorkerProcess, WorkerSettings, delete_topology, job_json,
    outcome, pushfleet_binary, remove_images, verify_in_basic_registry, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::Value;

/// Held by every fault test from start to end: the tests of this binary never overlap.
/// (A tokio mutex: each `#[tokio::test]` has its own runtime, and tokio's locks work across
/// runtimes; it never poisons, so one failed test does not fail the others.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the running test left on the stack: topology prefixes and image ids. [`fault_test`]
/// removes them when the test ends, passed or failed (only one test runs at a time).
#[derive(Debug, Default)]
struct Leftovers {
    prefixes: Vec<String>,
    images: Vec<String>,
}

static LEFTOVERS: std::sync::Mutex<Leftovers> = std::sync::Mutex::new(Leftovers {
    prefixes: Vec::new(),
    images: Vec::new(),
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records an image of the running test, removed (with all its tags) when the test ends.
pub(crate) fn remember_image(id: String) {
    leftovers().images.push(id);
}

/// Removes what the test left: its images from the daemon, its queues and exchanges from the
/// broker (kept, like the logs, when `PUSHFLEET_FAULTS_KEEP_LOGS` is set).
async fn clean_up() {
    let Leftovers { prefixes, images } = std::mem::take(&mut *leftovers());
    if std::env::var_os("PUSHFLEET_FAULTS_KEEP_LOGS").is_some() {
        return;
    }
    let Ok(env) = StackEnv::load() else {
        return;
    };
    if let Ok(docker) = docker(&env) {
        remove_images(&docker, &images).await;
    }
    for prefix in prefixes {
        delete_topology(&env, &prefix).await;
    }
}

/// Runs one fault test: waits for the other tests to finish, then runs `body` with a fresh log
/// folder, at most `limit`. On failure (or timeout) the logs are printed and kept; on success
/// they are deleted (kept when `PUSHFLEET_FAULTS_KEEP_LOGS` is set). Dropping the body on
/// timeout kills its worker processes and restores any outage it started; then the test's
/// images and broker objects are removed.
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
    // The body's workers are gone (killed on drop at the latest) and its outages are over.
    tokio::time::timeout(Duration::from_secs(60), clean_up())
        .await
        .ok();
    let took = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => {
            println!("FAULT {name}: passed in {took:.1} s");
            if std::env::var_os("PUSHFLEET_FAULTS_KEEP_LOGS").is_some() {
                println!("FAULT {name}: logs kept in {}", logs.path().display());
            } else {
                logs.remove();
            }
        }
        Err(e) => {
            eprintln!("FAULT {name}: FAILED after {took:.1} s: {e:#}");
            logs.dump(120);
            eprintln!("FAULT {name}: logs kept in {}", logs.path().display());
        }
    }
    result
}

/// Worker processes on one fresh topology prefix and the test's event log.
pub(crate) struct Fleet {
    pub(crate) env: StackEnv,
    pub(crate) logs: Arc<Logs>,
    pub(crate) prefix: String,
    pub(crate) events: EventLog,
    pub(crate) workers: Vec<WorkerProcess>,
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
        leftovers().prefixes.push(prefix.clone());
        let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
        Ok(Self {
            env,
            logs,
            prefix,
            events,
            workers: Vec::new(),
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
    pub(crate) async fn make_sources(&self, base: &str, count: usize) -> Result<Vec<String>> {
        let docker = docker(&self.env)?;
        let mut refs = Vec::new();
        for i in 0..count {
            let reference = format!("{base}-s{i}:src");
            let id = make_image(&docker, &[&reference]).await?;
            remember_image(id);
            refs.push(reference);
        }
        Ok(refs)
    }

    /// Publishes `count` jobs to the basic registry: job `i` pushes source `i % sources.len()`
    /// to its own repository `production/<base>-j<i>` under tag `j<i>`, so every job is a
    /// daemon push (a repository that already held the image would get its tag registry-side,
    /// in a few milliseconds, and a fault could no longer land mid-run). Returns the job ids in
    /// order.
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
                &format!("production/{base}-j{i}"),
                &[&tag],
            );
            self.events.publish_job(&job).await?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Stops every worker still running with SIGTERM and waits for each (bounded): every
    /// worker must exit 0. (Images and broker objects go when the test ends: [`fault_test`].)
    pub(crate) async fn shutdown(mut self) -> Result<()> {
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
        self.events.close().await;
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

/// How many distinct jobs have a terminal event.
pub(crate) fn ended(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.state.is_terminal())
        .filter_map(|e| e.job_id.as_deref())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The most attempts a job may need to outlast an outage of `down`: the first, one per
/// doubling of the delay from `min_delay` until the delays add up to the outage, and two more
/// for jitter and the time the component needs to answer again.
pub(crate) fn attempt_bound(down: Duration, min_delay: Duration) -> u32 {
    let ratio = down.as_secs_f64() / min_delay.as_secs_f64();
    let doublings = ratio.max(1.0).log2().ceil();
    // A small positive number of doublings: the cast cannot truncate meaningfully.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let doublings = doublings as u32;
    1 + doublings + 2
}

/// How the jobs of an outage were retried.
#[derive(Debug, Default)]
pub(crate) struct RetryFigures {
    /// Jobs with at least one `retrying` event.
    pub(crate) jobs_retried: usize,
    /// The highest attempt number any job reached.
    pub(crate) max_attempt: u32,
    /// How many jobs ended at each attempt number.
    pub(crate) final_attempts: BTreeMap<u32, usize>,
    /// The error codes of the `retrying` events, counted.
    pub(crate) codes: BTreeMap<String, usize>,
    /// The delays (ms) of the `retrying` events of the job retried most, in order.
    pub(crate) longest_delays: Vec<u64>,
    /// Every broken rule, with the job it concerns.
    pub(crate) problems: Vec<String>,
}

impl RetryFigures {
    pub(crate) fn line(&self) -> String {
        format!(
            "jobs_retried={} max_attempt={} final_attempts={:?} retry_codes={:?} delays_of_most_retried_ms={:?}",
            self.jobs_retried,
            self.max_attempt,
            self.final_attempts,
            self.codes,
            self.longest_delays
        )
    }
}

/// Checks the retries of `job_ids`: every `retrying` event is retryable and carries a delay of
/// at least `min_delay * 2^(attempt-1)` (capped at `max_delay`), the next attempt starts no
/// earlier than that delay after it (the broker held the job: no hot loop), and no job needs
/// more than `bound` attempts.
pub(crate) fn analyse_retries(
    events: &[Event],
    job_ids: &[String],
    settings: WorkerSettings,
    bound: u32,
) -> RetryFigures {
    let mut fig = RetryFigures::default();
    let min = settings.retry_min_delay_ms;
    let cap = settings.retry_max_delay_s * 1000;
    // The broker's clock and ours are one machine's; allow for event stamping order.
    let tolerance_ms: i128 = 100;
    for id in job_ids {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| e.job_id.as_deref() == Some(id.as_str()))
            .collect();
        let max_attempt = mine.iter().map(|e| e.attempt).max().unwrap_or(0);
        fig.max_attempt = fig.max_attempt.max(max_attempt);
        *fig.final_attempts.entry(max_attempt).or_default() += 1;
        if max_attempt > bound {
            fig.problems.push(format!(
                "{id}: {max_attempt} attempts, more than the bound {bound}"
            ));
        }
        let retrying: Vec<&&Event> = mine
            .iter()
            .filter(|e| e.state == JobState::Retrying)
            .collect();
        if !retrying.is_empty() {
            fig.jobs_retried += 1;
        }
        let delays: Vec<u64> = retrying
            .iter()
            .filter_map(|e| e.retry.as_ref().map(|r| r.delay_ms))
            .collect();
        if delays.len() > fig.longest_delays.len() {
            fig.longest_delays = delays;
        }
        for r in retrying {
            let code = r.error.as_ref().map_or("-", |e| e.code.as_str());
            *fig.codes.entry(code.to_owned()).or_default() += 1;
            if !r.error.as_ref().is_some_and(|e| e.retryable) {
                fig.problems
                    .push(format!("{id}: a retrying event with a non-retryable error"));
            }
            let Some(info) = r.retry.as_ref() else {
                fig.problems
                    .push(format!("{id}: retrying without retry info"));
                continue;
            };
            let shift = r.attempt.saturating_sub(1).min(30);
            let floor = min.saturating_mul(1 << shift).min(cap);
            if info.delay_ms < floor {
                fig.problems.push(format!(
                    "{id}: attempt {} retried after {} ms, less than {floor} ms",
                    r.attempt, info.delay_ms
                ));
            }
            let next = mine
                .iter()
                .find(|e| e.state == JobState::Accepted && e.attempt == info.next_attempt);
            if let Some(next) = next {
                let gap_ms =
                    (next.at.unix_timestamp_nanos() - r.at.unix_timestamp_nanos()) / 1_000_000;
                if gap_ms + tolerance_ms < i128::from(info.delay_ms) {
                    fig.problems.push(format!(
                        "{id}: attempt {} started {gap_ms} ms after the retry of {} ms was scheduled",
                        info.next_attempt, info.delay_ms
                    ));
                }
            }
        }
    }
    fig
}

/// A component outage during a batch (see `registry_outage` and `daemon_restart`): two workers,
/// [`OUTAGE_JOBS`] jobs, `component` stopped for `down` after the first jobs end, then
/// started again. Every job must succeed within a bounded number of attempts, some must have
/// been retried, and (when given) some attempt must have failed with `expected_code`.
pub(crate) async fn outage_scenario(
    name: &'static str,
    component: &'static str,
    down_for: Duration,
    expected_code: Option<&'static str>,
) -> Result<()> {
    fault_test(name, Duration::from_secs(150), move |logs| async move {
        let settings = WorkerSettings::default();
        let mut fleet = Fleet::new(name, Arc::clone(&logs), settings, "").await?;
        let base = unique(&format!("f{name}"));
        let sources = fleet.make_sources(&base, OUTAGE_SOURCES).await?;
        for id in ["w1", "w2"] {
            fleet.start_worker(id).await?;
        }
        fleet.wait_all_ready(Duration::from_secs(30)).await?;
        let ids = fleet.publish_jobs(&base, &sources, OUTAGE_JOBS).await?;
        fleet
            .events
            .wait_until(Duration::from_secs(60), "first jobs ending", |ev| ended(ev) >= 2)
            .await?;

        let outage = Outage::begin(&fleet.env, &logs, Fault::Component(component)).await?;
        let began = outage.began;
        let ended_at_stop = ended(&fleet.events.events());
        tokio::time::sleep(down_for.saturating_sub(began.elapsed())).await;
        let start_took = outage.end().await?;
        let down = began.elapsed();
        let back = Instant::now();

        let waited = fleet.events.wait_terminal(&ids, Duration::from_secs(90)).await;
        let all_done_after_back = back.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let min_delay = Duration::from_millis(settings.retry_min_delay_ms);
        let bound = attempt_bound(down, min_delay);
        let retries = analyse_retries(&events, &ids, settings, bound);
        println!(
            "FAULT {name}: {} stopped_after={ended_at_stop}_jobs_done down={:.1}s (start.sh {:.1}s) all_terminal_after_back={all_done_after_back:.1}s attempt_bound={bound} {}",
            out.figures(),
            down.as_secs_f64(),
            start_took.as_secs_f64(),
            retries.line()
        );
        for p in retries.problems.iter().take(20) {
            eprintln!("retry rule broken: {p}");
        }
        print_evidence(&fleet, "lost jobs", &out.lost);
        let failed: Vec<String> = out.not_succeeded.keys().cloned().collect();
        print_evidence(&fleet, "jobs that did not succeed", &failed);

        waited?;
        ensure!(out.lost.is_empty(), "lost jobs: {:?}", out.lost);
        ensure!(
            out.not_succeeded.is_empty(),
            "jobs that did not succeed: {:?}",
            out.not_succeeded
        );
        ensure!(retries.jobs_retried > 0, "no job went through retrying while {component} was down");
        if let Some(code) = expected_code {
            ensure!(
                retries.codes.contains_key(code),
                "no attempt failed as {code}: {:?}",
                retries.codes
            );
        }
        ensure!(retries.problems.is_empty(), "retry rules broken: {:?}", retries.problems);
        verify_in_basic_registry(&fleet.env, &events, &ids).await?;
        fleet.shutdown().await
    })
    .await
}

/// Jobs of an outage scenario.
const OUTAGE_JOBS: usize = 40;
/// Distinct source images of an outage scenario.
const OUTAGE_SOURCES: usize = 5;
