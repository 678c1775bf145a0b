//! `pushfleet-bench`: how fast pushfleet workers push, against the real local stack, and how
//! that compares with the same Engine API calls made directly (the *floor*).
//!
//! For each workload ([`workloads`]) and concurrency, repetitions of a worker run
//! ([`worker_driver`]) and a floor run ([`floor`]) alternate (ABBA); each measures jobs/s,
//! latency percentiles, CPU and memory from `/proc` ([`procfs`]) and registry requests from
//! the registry's log ([`registry_log`]). A broker-only mode ([`broker_only`]) measures the
//! worker's broker side alone. [`report`] prints markdown tables and writes them to
//! `bench/results/latest.md`.
//!
//! Run it with `bash bench/run.sh [--quick]` (builds the release binaries first); `--help`
//! lists the knobs.

mod amqp;
mod broker_only;
mod floor;
mod procfs;
mod registry_log;
mod report;
mod run;
mod stack;
mod stats;
mod worker_driver;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::registry_log::RegistryLog;
use crate::report::{BrokerOnlyCell, Cell, Report};
use crate::run::{Cleanup, Ctx, RunResult, RunSpec, Side};
use crate::stack::Stack;
use crate::stats::percentile_ms;
use crate::workloads::Workload;

/// Benchmark pushfleet workers against the local stack and the floor of direct Engine API
/// calls; prints markdown tables and writes them to bench/results/latest.md.
#[derive(Debug, Parser)]
#[command(name = "pushfleet-bench", about)]
struct Args {
    /// A smoke run of about two minutes: a quarter of the jobs, 2 repetitions, 2,000
    /// broker-only jobs.
    #[arg(long)]
    quick: bool,
    /// Workloads to run: w1 (retag), w2 (fresh 1 MiB layer), w3 (five tags).
    #[arg(long, value_delimiter = ',', default_values = ["w1", "w2", "w3"])]
    workloads: Vec<Workload>,
    /// Concurrencies (the worker's `concurrency`, the floor's parallel tasks).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 4, 16])]
    concurrency: Vec<u16>,
    /// Repetitions per cell (default 3, or 2 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Multiplies the default job counts per run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Timed jobs per run, for every cell (instead of the defaults).
    #[arg(long)]
    jobs: Option<usize>,
    /// Jobs per broker-only run (default 20,000, or 2,000 with --quick).
    #[arg(long)]
    broker_only_jobs: Option<usize>,
    /// Worker concurrencies of the broker-only runs.
    #[arg(long, value_delimiter = ',', default_values_t = [16u16, 128])]
    broker_only_concurrency: Vec<u16>,
    /// Skip the broker-only runs.
    #[arg(long)]
    no_broker_only: bool,
    /// The `pushfleet` binary (default: next to this one, i.e. the same build's).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Where to write the report (default: bench/results/latest.md).
    #[arg(long)]
    output: Option<PathBuf>,
    /// An environment variable for the worker processes, `KEY=VALUE` (repeatable), for
    /// experiments: e.g. `MALLOC_ARENA_MAX=2`, or `PUSHFLEET__AMQP__URL=...?frame_max=16384`.
    #[arg(long, value_name = "KEY=VALUE")]
    worker_env: Vec<String>,
    /// Only delete the queues and exchanges of this topology prefix (leftovers of a bench
    /// that was killed: they are named `pfbench-<id>-...`) and exit.
    #[arg(long, value_name = "PREFIX")]
    delete_topology: Option<String>,
}

/// Attempts per run (see [`with_retries`]).
const ATTEMPTS: usize = 3;
/// How long the bench waits for the stack to answer again after a failed run.
const STACK_WAIT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(runtime) = pushfleet_worker::cli::runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(bench(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `pushfleet` binary: `--worker-bin`, else `pushfleet` beside this executable.
fn worker_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.worker_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .parent()
            .context("this executable has no folder")?
            .join("pushfleet"),
    };
    if !path.is_file() {
        bail!(
            "no worker binary at {}: build it with `cargo build --release -p pushfleet-worker` \
             (bench/run.sh does) or pass --worker-bin",
            path.display()
        );
    }
    Ok(path)
}

/// Sends the in-process broker-only worker's logs (and any other `tracing` output of this
/// process) to `file` at `info`, as a production worker logs (`RUST_LOG` overrides).
fn init_logging(file: &std::path::Path) -> Result<()> {
    let log =
        std::fs::File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .try_init();
    Ok(())
}

/// The workspace's revision: short commit, with `+dirty` when the tree has changes.
fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(stack::workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            format!("commit {commit}{}", if dirty { "+dirty" } else { "" })
        }
        None => "commit unknown".to_owned(),
    }
}

async fn bench(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    if args.workloads.is_empty() || args.concurrency.is_empty() {
        bail!("nothing to run: give at least one workload and one concurrency");
    }
    if let Some(c) = args
        .concurrency
        .iter()
        .chain(&args.broker_only_concurrency)
        .find(|c| !(1..=256).contains(*c))
    {
        bail!("concurrency {c} is outside 1..=256 (the worker's limits)");
    }
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number");
    }
    if let Some(prefix) = &args.delete_topology {
        let stack = Stack::load()?;
        amqp::delete_topology(&stack.amqp_url, prefix).await?;
        eprintln!("deleted the queues and exchanges of topology {prefix}");
        return Ok(ExitCode::SUCCESS);
    }
    let worker_env = args
        .worker_env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--worker-env {kv:?}: expected KEY=VALUE"),
        })
        .collect::<Result<Vec<_>>>()?;
    let worker_bin = worker_binary(&args)?;
    let stack = Stack::load()?;
    stack.check().await?;
    let reps = args.reps.unwrap_or(if args.quick { 2 } else { 3 }).max(1);
    let bench_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let scratch = std::env::temp_dir().join(format!("pushfleet-bench-{bench_id}"));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    init_logging(&scratch.join("bench-process.log"))?;

    let docker = stack.docker()?;
    let docker_version = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "unknown".to_owned());
    let log = RegistryLog::new(stack.registry_log.clone(), stack.registry_url())?;
    let ctx = Ctx {
        stack,
        docker,
        log,
        worker_bin,
        worker_env,
        scratch: scratch.clone(),
        cleanup: Arc::new(Cleanup::default()),
    };
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default();
    let command = std::iter::once("bench/run.sh".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "pushfleet-bench {bench_id}: {} workloads × {} concurrencies × {reps} repetitions × \
         (worker, floor){}; scratch {}",
        args.workloads.len(),
        args.concurrency.len(),
        if args.no_broker_only {
            String::new()
        } else {
            format!(", broker-only at {:?}", args.broker_only_concurrency)
        },
        scratch.display()
    );

    let measured = tokio::select! {
        r = run_all(&ctx, &args, &bench_id, reps) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let (cells, broker_only, aborted) = match measured {
        Some(r) => r,
        None => {
            eprintln!("interrupted: removing this run's queues and images");
            ctx.cleanup.run(&ctx.stack.amqp_url, &ctx.docker).await;
            return Ok(ExitCode::from(130));
        }
    };
    ctx.cleanup.run(&ctx.stack.amqp_url, &ctx.docker).await;

    let report = Report {
        date,
        machine: procfs::machine(),
        revision: revision(),
        docker_version,
        command,
        reps,
        duration: started.elapsed(),
        cells,
        broker_only,
        aborted,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/latest.md"));
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&output, &markdown)
        .with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!("report written to {}", output.display());

    if report.has_errors() {
        eprintln!(
            "some runs failed; the worker logs of failed runs are in {}",
            scratch.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(ExitCode::SUCCESS)
}

/// How a run ended after its attempts.
enum Outcome<T> {
    /// It measured.
    Done(T),
    /// Every attempt failed; the last error.
    Failed(String),
    /// The stack did not come back after a failure: the bench stops.
    Abort(String),
}

/// Waits until the stack's checks pass again (after a failed run), at most [`STACK_WAIT`],
/// then a little longer for it to settle. Returns whether it came back.
async fn wait_for_stack(ctx: &Ctx) -> bool {
    let deadline = Instant::now() + STACK_WAIT;
    loop {
        if ctx.stack.check().await.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Runs `attempt` (given the attempt number, from 1) up to [`ATTEMPTS`] times: a run that
/// fails, or during which a stack component restarted (other test suites restart dockerd,
/// the registry or RabbitMQ on purpose), is repeated once the stack answers again.
async fn with_retries<T, F, Fut>(ctx: &Ctx, head: &str, mut attempt: F) -> Outcome<T>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        let pids = ctx.stack.pids();
        let result = attempt(n).await.and_then(|r| {
            if ctx.stack.pids() == pids {
                Ok(r)
            } else {
                Err(anyhow::anyhow!(
                    "a stack component (dockerd, the registry or RabbitMQ) restarted during the run"
                ))
            }
        });
        let e = match result {
            Ok(r) => return Outcome::Done(r),
            Err(e) => e,
        };
        eprintln!("{head} attempt {n} FAILED: {e:#}");
        if n >= ATTEMPTS {
            return Outcome::Failed(format!("{e:#}"));
        }
        if !wait_for_stack(ctx).await {
            return Outcome::Abort(format!(
                "the stack did not answer within {STACK_WAIT:?} after a failed run \
                 (`bash deploy/local/status.sh`); last error: {e:#}"
            ));
        }
        n += 1;
    }
}

/// A run's name, unique per attempt.
fn attempt_name(base: &str, attempt: usize) -> String {
    if attempt == 1 {
        base.to_owned()
    } else {
        format!("{base}-a{attempt}")
    }
}

/// Runs every cell (worker and floor interleaved, ABBA) and then the broker-only runs. Returns
/// what was measured, and why the bench stopped early if it did.
async fn run_all(
    ctx: &Ctx,
    args: &Args,
    bench_id: &str,
    reps: usize,
) -> (Vec<Cell>, Vec<BrokerOnlyCell>, Option<String>) {
    let mut cells: Vec<Cell> = Vec::new();
    for workload in &args.workloads {
        for concurrency in &args.concurrency {
            let jobs = args
                .jobs
                .unwrap_or_else(|| workload.default_jobs(*concurrency, args.quick, args.scale));
            cells.push(Cell {
                workload: *workload,
                concurrency: *concurrency,
                jobs,
                worker: vec![None; reps],
                floor: vec![None; reps],
                errors: Vec::new(),
            });
        }
    }
    let mut broker_only: Vec<BrokerOnlyCell> = Vec::new();
    let total_runs = cells.len() * reps * 2;
    let mut done = 0usize;
    for cell in &mut cells {
        for rep in 0..reps {
            let order = if rep % 2 == 0 {
                [Side::Worker, Side::Floor]
            } else {
                [Side::Floor, Side::Worker]
            };
            for side in order {
                done += 1;
                let (workload, concurrency, jobs) = (cell.workload, cell.concurrency, cell.jobs);
                let (number, side_name) = (rep + 1, side.name());
                let base = format!(
                    "{bench_id}-{}-c{concurrency}-r{number}-{side_name}",
                    workload.id()
                );
                let head = format!(
                    "[{done}/{total_runs}] {} c={concurrency} rep {number} {side_name:<6}",
                    workload.label()
                );
                let t = Instant::now();
                let outcome = with_retries(ctx, &head, |n| {
                    let spec = RunSpec {
                        workload,
                        concurrency,
                        jobs,
                        name: attempt_name(&base, n),
                    };
                    async move {
                        match side {
                            Side::Worker => worker_driver::run(ctx, &spec).await,
                            Side::Floor => floor::run(ctx, &spec).await,
                        }
                    }
                })
                .await;
                match outcome {
                    Outcome::Done(r) => {
                        eprintln!("{head} {} ({:.1}s)", summary(&r), t.elapsed().as_secs_f64());
                        let slot = match side {
                            Side::Worker => cell.worker.get_mut(rep),
                            Side::Floor => cell.floor.get_mut(rep),
                        };
                        if let Some(slot) = slot {
                            *slot = Some(r);
                        }
                    }
                    Outcome::Failed(e) => {
                        cell.errors.push(format!("rep {number} {side_name}: {e}"));
                    }
                    Outcome::Abort(e) => return (cells, broker_only, Some(e)),
                }
            }
        }
    }

    if !args.no_broker_only {
        let jobs = args
            .broker_only_jobs
            .unwrap_or(if args.quick { 2_000 } else { 20_000 })
            .max(1);
        broker_only = args
            .broker_only_concurrency
            .iter()
            .map(|c| BrokerOnlyCell {
                concurrency: *c,
                jobs,
                runs: Vec::new(),
                errors: Vec::new(),
            })
            .collect();
        let total = reps * broker_only.len();
        let mut n = 0;
        for rep in 0..reps {
            for i in 0..broker_only.len() {
                n += 1;
                let concurrency = broker_only[i].concurrency;
                let base = format!("{bench_id}-bo-c{concurrency}-r{}", rep + 1);
                let head = format!(
                    "[broker-only {n}/{total}] c={concurrency} rep {} ({jobs} jobs)",
                    rep + 1
                );
                let outcome = with_retries(ctx, &head, |a| {
                    let name = attempt_name(&base, a);
                    async move { broker_only::run(ctx, &name, concurrency, jobs).await }
                })
                .await;
                let cell = &mut broker_only[i];
                match outcome {
                    Outcome::Done(r) => {
                        eprintln!(
                            "{head}: {:.0} jobs/s, {:.0} µs CPU/job, published in {:.1}s",
                            r.jobs_per_s(),
                            r.cpu_s / r.jobs.max(1) as f64 * 1e6,
                            r.publish_s
                        );
                        cell.runs.push(r);
                    }
                    Outcome::Failed(e) => cell.errors.push(format!("rep {}: {e}", rep + 1)),
                    Outcome::Abort(e) => return (cells, broker_only, Some(e)),
                }
            }
        }
    }
    (cells, broker_only, None)
}

/// One line about a run, for the progress output.
fn summary(r: &RunResult) -> String {
    let mut s = format!(
        "{:6.1} jobs/s  p50 {:5.0} ms  p95 {:5.0} ms",
        r.jobs_per_s(),
        percentile_ms(&r.latencies, 50.0).unwrap_or(0.0),
        percentile_ms(&r.latencies, 95.0).unwrap_or(0.0)
    );
    if let Some(cpu) = r.worker_cpu_s {
        s.push_str(&format!("  cpu {:.2} ms/job", r.per_job(cpu) * 1000.0));
    }
    if let (Some(idle), Some(peak)) = (r.idle_rss_kib, r.peak_rss_kib) {
        s.push_str(&format!(
            "  rss {:.1}/{:.1} MiB",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0
        ));
    }
    if let Ok(c) = &r.requests {
        s.push_str(&format!(
            "  reqs/job {:.2}",
            r.per_job(c.total(None) as f64)
        ));
    }
    if r.retries > 0 {
        s.push_str(&format!("  RETRIES {}", r.retries));
    }
    if !r.failures.is_empty() {
        s.push_str(&format!("  FAILED JOBS {}", r.failures.len()));
    }
    s
}
