//! Worker runs: a real `pushfleet worker` process (release build) on a fresh topology, fed
//! through RabbitMQ.
//!
//! A run: make the workload's images; declare the topology and subscribe to its events; start
//! the worker with `concurrency = c` and wait for `/readyz`; read its idle RSS; run one
//! warm-up job (fills the worker's registry-auth cache and connection pools, and puts the
//! blobs in the registry); then the timed part, a closed loop of `c` slots, each publishing a
//! job and waiting for its terminal event before publishing the next (so the latency from
//! publish to terminal event is a job's, not a backlog's); then CPU and peak RSS from
//! `/proc`, the registry log's count, SIGTERM, and the topology and images removed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use tokio::process::{Child, Command};

use crate::amqp::{JobBus, Terminal, job_body};
use crate::procfs::{self, Pid};
use crate::run::{Ctx, JOB_LIMIT, PhaseSums, RunResult, RunSpec, Side, stack_cpu, stack_cpu_delta};
use crate::workloads::{self, Prepared};

/// How long a worker may take to report ready.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long the worker sits idle after ready before its RSS is read.
const IDLE_SETTLE: Duration = Duration::from_millis(500);
/// How long a stopping worker may take to exit before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The worker configuration of a run: the stack's broker and daemon, topology `prefix`, the
/// basic registry as catalogue key `basic` (namespace `bench`), `concurrency`.
pub(crate) fn worker_toml(ctx: &Ctx, prefix: &str, concurrency: u16) -> Result<String> {
    let s = &ctx.stack;
    let text = format!(
        r#"# pushfleet-bench worker {prefix}
[amqp]
url = "{amqp}"
topology_prefix = "{prefix}"

[worker]
id = "{prefix}"
concurrency = {concurrency}
job_timeout_s = {timeout}
shutdown_grace_s = 10

[docker]
host = "{docker}"

[registries.basic]
url = "{registry}"
username = "{user}"
password_file = "{password_file}"
namespaces = ["bench"]
"#,
        amqp = s.amqp_url,
        timeout = JOB_LIMIT.as_secs(),
        docker = s.docker_host,
        registry = s.registry_url(),
        user = s.user,
        password_file = s.password_file.display(),
    );
    pushfleet_worker::config::load_from_str(&text, Some(Default::default()))
        .map_err(|e| anyhow!("the bench's worker configuration is invalid: {e}"))?;
    Ok(text)
}

/// One `pushfleet worker` process; killed if dropped while it runs.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    child: Child,
    pid: u32,
    health: std::net::SocketAddr,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `<bin> worker -c <config> --health-listen 127.0.0.1:<free port>` with its output
    /// in `log` and `extra_env` added to its environment.
    pub(crate) fn spawn(
        bin: &Path,
        config: &Path,
        log: &Path,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("worker")
            .arg("-c")
            .arg(config)
            .arg("--health-listen")
            .arg(health.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // Nothing of the bench's environment may reconfigure the worker; it logs as it would
        // in production (info, plain text).
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PUSHFLEET__") || k == "PUSHFLEET_CONFIG" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("PUSHFLEET_LOG_FORMAT")
            .env_remove("PUSHFLEET_HEALTH_LISTEN")
            .envs(extra_env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the worker process exited at once")?;
        Ok(Self {
            child,
            pid,
            health,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the worker's log, for error messages.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `/readyz` until it answers 200.
    pub(crate) async fn wait_ready(&mut self) -> Result<Duration> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/readyz", self.health);
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the worker exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail(30)
                );
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the worker was not ready within {READY_LIMIT:?}; its log:\n{}",
            self.log_tail(30)
        )
    }

    /// The worker's own counters from its `/metrics`.
    pub(crate) async fn counters(&self) -> Result<WorkerCounters> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let text = http
            .get(format!("http://{}/metrics", self.health))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(WorkerCounters::parse(&text))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_LIMIT`]).
    pub(crate) async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.pid);
        }
        match tokio::time::timeout(STOP_LIMIT, self.child.wait()).await {
            Ok(exit) => {
                let exit = exit?;
                if !exit.success() {
                    eprintln!("warning: worker {} exited with {exit}", self.pid);
                }
                Ok(())
            }
            Err(_) => {
                self.child.start_kill()?;
                let _ = self.child.wait().await;
                bail!(
                    "worker {} did not stop within {STOP_LIMIT:?}; killed",
                    self.pid
                )
            }
        }
    }
}

/// Counters of the worker's own registry client, from its `/metrics` (OpenMetrics text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkerCounters {
    /// `pushfleet_registry_requests_total`, all classes.
    pub(crate) registry_requests: u64,
    /// `pushfleet_registry_requests_total{class="5xx"}`.
    pub(crate) registry_5xx: u64,
    /// `pushfleet_preflight_total{cache="miss"}`: preflights that had to ask the registry
    /// (authenticate and probe push rights).
    pub(crate) preflight_misses: u64,
}

impl WorkerCounters {
    fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value as u64;
            if series.starts_with("pushfleet_registry_requests_total{") {
                c.registry_requests += value;
                if series.contains("class=\"5xx\"") {
                    c.registry_5xx += value;
                }
            } else if series.starts_with("pushfleet_preflight_total{")
                && series.contains("cache=\"miss\"")
            {
                c.preflight_misses += value;
            }
        }
        c
    }

    /// `self - earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            registry_requests: self
                .registry_requests
                .saturating_sub(earlier.registry_requests),
            registry_5xx: self.registry_5xx.saturating_sub(earlier.registry_5xx),
            preflight_misses: self
                .preflight_misses
                .saturating_sub(earlier.preflight_misses),
        }
    }
}

/// Runs `spec` through a worker process; see the module doc.
pub(crate) async fn run(ctx: &Ctx, spec: &RunSpec) -> Result<RunResult> {
    ctx.with_topology(&spec.name, |prefix| async move {
        let prepared =
            workloads::prepare(&ctx.docker, spec.workload, &spec.name, spec.jobs).await?;
        ctx.with_images(
            &prepared.image_ids,
            run_prepared(ctx, spec, &prefix, &prepared),
        )
        .await
    })
    .await
}

async fn run_prepared(
    ctx: &Ctx,
    spec: &RunSpec,
    prefix: &str,
    prepared: &Prepared,
) -> Result<RunResult> {
    let topology = Topology::new(prefix);
    let bus = JobBus::open(&ctx.stack.amqp_url, &topology).await?;
    let config = ctx.scratch.join(format!("{}.toml", spec.name));
    std::fs::write(&config, worker_toml(ctx, prefix, spec.concurrency)?)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let log = ctx.scratch.join(format!("{}.log", spec.name));
    let mut worker = WorkerProcess::spawn(&ctx.worker_bin, &config, &log, &ctx.worker_env)?;
    let measured = measure(ctx, spec, prepared, &bus, &mut worker).await;
    let stopped = worker.stop().await;
    bus.close().await;
    let measured = measured.with_context(|| format!("worker log: {}", log.display()))?;
    stopped?;
    // The log is kept only when something went wrong.
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&config);
    Ok(measured)
}

async fn measure(
    ctx: &Ctx,
    spec: &RunSpec,
    prepared: &Prepared,
    bus: &JobBus,
    worker: &mut WorkerProcess,
) -> Result<RunResult> {
    worker.wait_ready().await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let pid = Pid::Of(worker.pid());
    let idle = procfs::memory(pid)?;

    // Warm-up: one job of the same kind, not timed.
    let warmup_id = format!("{}-warmup", spec.name);
    let waiter = bus.expect(&warmup_id);
    bus.publish(&job_body(
        &warmup_id,
        &prepared.warmup_source,
        &prepared.repository,
        &spec.workload.warmup_tags(),
        &spec.name,
    ))
    .await?;
    let warm = bus.wait(waiter, &warmup_id).await?;
    if warm.event.state != JobState::Succeeded {
        bail!("the warm-up job ended {}", describe(&warm));
    }

    let retries_before = bus.retries();
    let counters_before = worker.counters().await?;
    let window = ctx.log.begin(&spec.name).await?;
    let stack_before = stack_cpu(&ctx.stack);
    let cpu_before = procfs::cpu_seconds(pid)?;
    let started = Instant::now();
    let outcomes = closed_loop(spec, prepared, bus, started).await?;
    let cpu_after = procfs::cpu_seconds(pid)?;
    let stack_after = stack_cpu(&ctx.stack);
    let memory = procfs::memory(pid)?;
    let counters = worker.counters().await?.since(counters_before);
    let requests = ctx
        .log
        .end(&window, std::slice::from_ref(&prepared.repository))
        .await
        .map_err(|e| format!("{e:#}"));

    let mut phases = PhaseSums::default();
    let mut failures = Vec::new();
    let mut last = started;
    let mut latencies = Vec::with_capacity(outcomes.len());
    for (published, terminal) in &outcomes {
        let latency = terminal.at.saturating_duration_since(*published);
        latencies.push(latency);
        last = last.max(terminal.at);
        if terminal.event.state == JobState::Succeeded {
            if let Some(p) = &terminal.event.phases {
                let to_accepted = terminal
                    .accepted_at
                    .map_or(Duration::ZERO, |a| a.saturating_duration_since(*published));
                phases.add(p, to_accepted, latency);
            }
        } else {
            failures.push(describe(terminal));
        }
    }
    if bus.unparsable() > 0 {
        eprintln!("warning: {} events could not be parsed", bus.unparsable());
    }
    Ok(RunResult {
        side: Side::Worker,
        jobs: outcomes.len(),
        elapsed: last.saturating_duration_since(started),
        latencies,
        worker_cpu_s: Some(cpu_after - cpu_before),
        idle_rss_kib: Some(idle.rss_kib),
        peak_rss_kib: Some(memory.hwm_kib),
        stack_cpu_s: stack_cpu_delta(&stack_before, &stack_after),
        requests,
        retries: bus.retries() - retries_before,
        failures,
        phases,
        worker_counters: Some(counters),
    })
}

/// `state/code` of a terminal event.
fn describe(terminal: &Terminal) -> String {
    let e = &terminal.event;
    match &e.error {
        Some(err) => format!("{}/{}: {}", e.state.as_str(), err.code, err.message),
        None => e.state.as_str().to_owned(),
    }
}

/// `c` slots, each publishing its next job once the previous one's terminal event arrived.
/// Returns `(published at, terminal)` per job.
async fn closed_loop(
    spec: &RunSpec,
    prepared: &Prepared,
    bus: &JobBus,
    started: Instant,
) -> Result<Vec<(Instant, Terminal)>> {
    let next = AtomicUsize::new(0);
    let slot = || async {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= spec.jobs {
                return Ok::<_, anyhow::Error>(done);
            }
            let job_id = format!("{}-{index}", spec.name);
            let body = job_body(
                &job_id,
                prepared.source(index),
                &prepared.repository,
                &spec.workload.tags(index),
                &spec.name,
            );
            let waiter = bus.expect(&job_id);
            let published = Instant::now();
            bus.publish(&body).await?;
            let terminal = bus.wait(waiter, &job_id).await.with_context(|| {
                format!("{:.1} s into the run", started.elapsed().as_secs_f64())
            })?;
            done.push((published, terminal));
        }
    };
    let slots = (0..spec.concurrency).map(|_| slot());
    let per_slot = futures_util::future::try_join_all(slots).await?;
    Ok(per_slot.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_counters_from_metrics() {
        let text = "# TYPE pushfleet_registry_requests counter\n\
            pushfleet_registry_requests_total{registry=\"basic\",class=\"2xx\"} 10\n\
            pushfleet_registry_requests_total{registry=\"basic\",class=\"5xx\"} 2\n\
            pushfleet_preflight_total{cache=\"hit\"} 7\n\
            pushfleet_preflight_total{cache=\"miss\"} 1\n\
            pushfleet_jobs_total{outcome=\"succeeded\",code=\"\"} 8\n";
        let c = WorkerCounters::parse(text);
        assert_eq!(
            c,
            WorkerCounters {
                registry_requests: 12,
                registry_5xx: 2,
                preflight_misses: 1
            }
        );
        assert_eq!(c.since(c), WorkerCounters::default());
    }
}
