//! The report: every figure as mean (min–max) over the repetitions, in markdown tables for the
//! README's performance section, with the date, the machine and the goals of the issue.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use crate::broker_only::BrokerOnlyResult;
use crate::procfs::Machine;
use crate::registry_log::{Client, Kind, RequestCounts};
use crate::run::{RunResult, Side};
use crate::stack::Component;
use crate::stats::{Spread, percentile_ms, show};
use crate::worker_driver::WorkerCounters;
use crate::workloads::Workload;

/// The runs of one workload at one concurrency, by repetition.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    /// The workload.
    pub(crate) workload: Workload,
    /// The concurrency.
    pub(crate) concurrency: u16,
    /// Timed jobs per run.
    pub(crate) jobs: usize,
    /// Worker runs, one slot per repetition (`None`: the run failed).
    pub(crate) worker: Vec<Option<RunResult>>,
    /// Floor runs, likewise.
    pub(crate) floor: Vec<Option<RunResult>>,
    /// Failed runs, described.
    pub(crate) errors: Vec<String>,
}

impl Cell {
    fn runs(&self, side: Side) -> impl Iterator<Item = &RunResult> {
        match side {
            Side::Worker => self.worker.iter(),
            Side::Floor => self.floor.iter(),
        }
        .flatten()
    }

    /// The first columns of a table row about this cell's `side` runs: `| W1 retag | 4 | worker |`.
    fn row_start(&self, side: Side) -> String {
        format!(
            "| {} | {} | {} |",
            self.workload.label(),
            self.concurrency,
            side.name()
        )
    }

    fn spread(&self, side: Side, f: impl Fn(&RunResult) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs(side).filter_map(f))
    }

    /// Worker jobs/s ÷ floor jobs/s, per repetition where both ran.
    pub(crate) fn ratio(&self) -> Option<Spread> {
        Spread::of(
            self.worker
                .iter()
                .zip(&self.floor)
                .filter_map(|(w, f)| Some(w.as_ref()?.jobs_per_s() / f.as_ref()?.jobs_per_s())),
        )
    }

    /// Mean per job of `count` over the runs of `side` whose requests were counted.
    fn requests_per_job(&self, side: Side, count: impl Fn(&RequestCounts) -> u64) -> Option<f64> {
        Spread::of(self.runs(side).filter_map(|r| {
            let counts = r.requests.as_ref().ok()?;
            Some(r.per_job(count(counts) as f64))
        }))
        .map(|s| s.mean)
    }
}

/// The broker-only runs at one concurrency.
#[derive(Debug, Clone)]
pub(crate) struct BrokerOnlyCell {
    /// The worker's concurrency.
    pub(crate) concurrency: u16,
    /// Jobs per run.
    pub(crate) jobs: usize,
    /// The runs that finished.
    pub(crate) runs: Vec<BrokerOnlyResult>,
    /// Failed runs, described.
    pub(crate) errors: Vec<String>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// When the bench started (UTC, RFC 3339).
    pub(crate) date: String,
    /// The machine.
    pub(crate) machine: Machine,
    /// `git describe`-like revision of the workspace.
    pub(crate) revision: String,
    /// The daemon's version.
    pub(crate) docker_version: String,
    /// The command line.
    pub(crate) command: String,
    /// Repetitions per cell.
    pub(crate) reps: usize,
    /// How long the whole bench took.
    pub(crate) duration: Duration,
    /// The cells, in run order.
    pub(crate) cells: Vec<Cell>,
    /// Broker-only cells.
    pub(crate) broker_only: Vec<BrokerOnlyCell>,
    /// Why the bench stopped before the end, if it did.
    pub(crate) aborted: Option<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn p(values: Option<Spread>, decimals: usize) -> String {
    show(values, decimals)
}

impl Report {
    /// The whole report as markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "## Benchmark results\n");
        let _ = writeln!(
            out,
            "{date} · {cpus} × {model} (nproc {cpus}), {mem} MiB RAM, Linux {kernel} · \
             Docker Engine {docker} · {rev} · {reps} repetitions per cell, worker and floor \
             runs interleaved · took {took}  \n`{cmd}`\n",
            date = self.date,
            cpus = m.cpus,
            model = m.model,
            mem = m.memory_mib,
            kernel = m.kernel,
            docker = self.docker_version,
            rev = self.revision,
            reps = self.reps,
            took = format_duration(self.duration),
            cmd = self.command,
        );
        let _ = writeln!(
            out,
            "Figures are mean (min–max) over the repetitions. *Ratio* = worker jobs/s ÷ floor \
             jobs/s of the same repetition (higher is better). The floor makes the same Engine \
             API calls (tag, then push with the registry login in `X-Registry-Auth`) directly \
             over one kept-open bollard client, no queue. Latency: publish → terminal event \
             (worker), first call → push done (floor).\n"
        );
        self.main_table(&mut out);
        self.goals(&mut out);
        self.time_table(&mut out);
        self.requests_table(&mut out);
        self.cpu_table(&mut out);
        self.broker_only_table(&mut out);
        self.method(&mut out);
        self.errors(&mut out);
        out
    }

    fn main_table(&self, out: &mut String) {
        let _ = writeln!(out, "### Throughput, latency, worker CPU and memory\n");
        let _ = writeln!(
            out,
            "| workload | c | jobs/run | worker jobs/s | floor jobs/s | ratio | worker p50 ms | \
             worker p95 ms | floor p50 ms | floor p95 ms | worker CPU ms/job | worker RSS idle \
             MiB | worker RSS peak MiB | retries |"
        );
        let _ = writeln!(
            out,
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for cell in &self.cells {
            let pct = |side: Side, q: f64| cell.spread(side, |r| percentile_ms(&r.latencies, q));
            let retries: u64 = cell.runs(Side::Worker).map(|r| r.retries).sum();
            let _ = writeln!(
                out,
                "| {w} | {c} | {jobs} | {wj} | {fj} | {ratio} | {wp50} | {wp95} | {fp50} | \
                 {fp95} | {cpu} | {idle} | {peak} | {retries} |",
                w = cell.workload.label(),
                c = cell.concurrency,
                jobs = cell.jobs,
                wj = p(cell.spread(Side::Worker, |r| Some(r.jobs_per_s())), 1),
                fj = p(cell.spread(Side::Floor, |r| Some(r.jobs_per_s())), 1),
                ratio = cell
                    .ratio()
                    .map_or_else(|| "-".to_owned(), |s| s.show_with(2, "x")),
                wp50 = p(pct(Side::Worker, 50.0), 0),
                wp95 = p(pct(Side::Worker, 95.0), 0),
                fp50 = p(pct(Side::Floor, 50.0), 0),
                fp95 = p(pct(Side::Floor, 95.0), 0),
                cpu = p(
                    cell.spread(Side::Worker, |r| r
                        .worker_cpu_s
                        .map(|s| r.per_job(s) * 1000.0)),
                    2
                ),
                idle = p(cell.spread(Side::Worker, |r| r.idle_rss_kib.map(mib)), 1),
                peak = p(cell.spread(Side::Worker, |r| r.peak_rss_kib.map(mib)), 1),
            );
        }
        let _ = writeln!(out);
    }

    fn time_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Where a job's time goes (mean ms per job; the worker's from its `succeeded` \
             events' phases, the floor's from its own clock)\n"
        );
        let _ = writeln!(
            out,
            "*publish → accepted*: the bench publishes (confirmed) until it receives the job's \
             `accepted` event; the worker starts the pipeline only once that event is \
             confirmed. *Outside* = latency − pipeline total: queueing, parsing, the `accepted` \
             and terminal events with their confirms, the ack, the bench's receipt.\n"
        );
        let _ = writeln!(
            out,
            "| workload | c | run | publish → accepted | resolve | preflight | retag | tag | \
             push | verify | untag | pipeline total | outside | latency |"
        );
        let _ = writeln!(
            out,
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for cell in &self.cells {
            for side in [Side::Worker, Side::Floor] {
                let mut sums = crate::run::PhaseSums::default();
                for r in cell.runs(side) {
                    sums.merge(&r.phases);
                }
                let Some(means) = sums.means() else {
                    continue;
                };
                let latency = sums.latency_ms / sums.jobs as f64;
                // The floor has only tag, push and its total.
                let shown: Vec<String> = means
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match side {
                        Side::Floor if !matches!(i, 4 | 5 | 8) => "-".to_owned(),
                        _ => format!("{v:.1}"),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{} {} | {latency:.1} |",
                    cell.row_start(side),
                    shown.join(" | "),
                );
            }
        }
        let _ = writeln!(out);
    }

    fn requests_table(&self, out: &mut String) {
        // Only the kinds some run made.
        let mut kinds: BTreeSet<Kind> = BTreeSet::new();
        let mut foreign = 0u64;
        let mut uncounted = 0usize;
        for cell in &self.cells {
            for r in cell.runs(Side::Worker).chain(cell.runs(Side::Floor)) {
                match &r.requests {
                    Ok(c) => {
                        kinds.extend(c.by.iter().filter(|(_, n)| **n > 0).map(|((_, k), _)| *k));
                        foreign += c.foreign;
                    }
                    Err(_) => uncounted += 1,
                }
            }
        }
        let _ = writeln!(
            out,
            "### Registry requests per job (basic registry's log, between each run's markers)\n"
        );
        let _ = writeln!(
            out,
            "*worker* = the worker's own registry client (user agent `pushfleet/`), *daemon* = \
             dockerd pushing. Auth handshakes = `GET /v2/` + token requests (the basic registry \
             has no token service, so only `GET /v2/`).\n"
        );
        let header: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        let _ = writeln!(
            out,
            "| workload | c | run | client | all | auth | 5xx | {} |",
            header.join(" | ")
        );
        let _ = writeln!(
            out,
            "|---|--:|---|---|--:|--:|--:|{}",
            "--:|".repeat(kinds.len())
        );
        for cell in &self.cells {
            let rows = [
                (Side::Worker, Client::Worker),
                (Side::Worker, Client::Daemon),
                (Side::Floor, Client::Daemon),
            ];
            for (side, client) in rows {
                let Some(all) = cell.requests_per_job(side, |c| c.total(Some(client))) else {
                    continue;
                };
                let auth = cell
                    .requests_per_job(side, |c| c.auth(Some(client)))
                    .unwrap_or(0.0);
                let errors = cell
                    .requests_per_job(side, |c| c.server_errors(Some(client)))
                    .unwrap_or(0.0);
                let per_kind: Vec<String> = kinds
                    .iter()
                    .map(|k| {
                        let v = cell
                            .requests_per_job(side, |c| c.of(Some(client), *k))
                            .unwrap_or(0.0);
                        format!("{v:.2}")
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{} {} | {all:.2} | {auth:.2} | {errors:.2} | {} |",
                    cell.row_start(side),
                    client.name(),
                    per_kind.join(" | ")
                );
            }
        }
        if foreign > 0 {
            let _ = writeln!(
                out,
                "\n{foreign} requests to other repositories were logged during the runs: someone \
                 else used the registry, and `GET /v2/` counts (which name no repository) may \
                 include theirs."
            );
        }
        if uncounted > 0 {
            let _ = writeln!(
                out,
                "\n{uncounted} runs could not be counted from the log (see the errors below)."
            );
        }
        let _ = writeln!(
            out,
            "\nThe worker's own registry client by its `/metrics` (exact, whoever else uses \
             the registry), per job:\n"
        );
        let _ = writeln!(
            out,
            "| workload | c | requests | 5xx answers | preflight cache misses |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|");
        for cell in &self.cells {
            let per_job = |f: fn(&WorkerCounters) -> u64| {
                p(
                    cell.spread(Side::Worker, |r| {
                        r.worker_counters.map(|c| r.per_job(f(&c) as f64))
                    }),
                    3,
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell.workload.label(),
                cell.concurrency,
                per_job(|c| c.registry_requests),
                per_job(|c| c.registry_5xx),
                per_job(|c| c.preflight_misses),
            );
        }
        let _ = writeln!(out);
    }

    fn cpu_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### CPU per job of every process involved (ms, from `/proc/<pid>/stat`)\n"
        );
        let names: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
        let _ = writeln!(
            out,
            "| workload | c | run | pushfleet worker | {} |",
            names.join(" | ")
        );
        let _ = writeln!(out, "|---|--:|---|--:|{}", "--:|".repeat(names.len()));
        for cell in &self.cells {
            for side in [Side::Worker, Side::Floor] {
                if cell.runs(side).next().is_none() {
                    continue;
                }
                let worker = match side {
                    Side::Worker => p(
                        cell.spread(side, |r| r.worker_cpu_s.map(|s| r.per_job(s) * 1000.0)),
                        2,
                    ),
                    Side::Floor => "-".to_owned(),
                };
                let stack: Vec<String> = Component::ALL
                    .iter()
                    .map(|c| {
                        p(
                            cell.spread(side, |r| {
                                r.stack_cpu_s.get(c).map(|s| r.per_job(*s) * 1000.0)
                            }),
                            1,
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{} {worker} | {} |",
                    cell.row_start(side),
                    stack.join(" | ")
                );
            }
        }
        let _ = writeln!(out);
    }

    fn broker_only_table(&self, out: &mut String) {
        if self.broker_only.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### Broker only (in-process `run_broker_only`: consume, parse, plan, `accepted`, \
             `succeeded`, ack; no daemon, no registry)\n"
        );
        let _ = writeln!(
            out,
            "| concurrency | jobs/run | jobs/s | bench process CPU µs/job | RabbitMQ CPU µs/job \
             | retries | failed |"
        );
        let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|");
        for cell in &self.broker_only {
            let per_job_us = |f: &dyn Fn(&BrokerOnlyResult) -> Option<f64>| {
                p(
                    Spread::of(
                        cell.runs
                            .iter()
                            .filter_map(|r| Some(f(r)? / r.jobs.max(1) as f64 * 1e6)),
                    ),
                    0,
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell.concurrency,
                cell.jobs,
                p(
                    Spread::of(cell.runs.iter().map(BrokerOnlyResult::jobs_per_s)),
                    0
                ),
                per_job_us(&|r| Some(r.cpu_s)),
                per_job_us(&|r| r.rabbitmq_cpu_s),
                cell.runs.iter().map(|r| r.retries).sum::<u64>(),
                cell.runs.iter().map(|r| r.failures).sum::<u64>(),
            );
        }
        let _ = writeln!(out);
    }

    fn cell(&self, workload: Workload, concurrency: u16) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.concurrency == concurrency)
    }

    fn goals(&self, out: &mut String) {
        let _ = writeln!(out, "### Goals\n");
        let _ = writeln!(out, "| goal | measured | met |");
        let _ = writeln!(out, "|---|---|---|");
        let mut row = |goal: &str, measured: String, met: Option<bool>| {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {goal} | {measured} | {met} |");
        };

        // Ratios at c = 1 and 4.
        for (workload, goal, min) in [
            (Workload::Retag, "W1 retag ≥ 2x floor at c=1 and c=4", 2.0),
            (
                Workload::Fresh,
                "W2 fresh ≥ 0.95x floor at c=1 and c=4",
                0.95,
            ),
        ] {
            let ratios: Vec<(u16, Spread)> = [1, 4]
                .iter()
                .filter_map(|c| Some((*c, self.cell(workload, *c)?.ratio()?)))
                .collect();
            let measured = ratios
                .iter()
                .map(|(c, s)| format!("c={c}: {}", s.show_with(2, "x")))
                .collect::<Vec<_>>()
                .join("; ");
            let met = (ratios.len() == 2).then(|| ratios.iter().all(|(_, s)| s.mean >= min));
            row(goal, or_dash(measured), met);
        }

        // W1 scaling.
        let rate = |c: u16| {
            self.cell(Workload::Retag, c)?
                .spread(Side::Worker, |r| Some(r.jobs_per_s()))
        };
        match (rate(1), rate(4)) {
            (Some(one), Some(four)) => row(
                "W1 worker jobs/s at c=4 ≥ 1.5 × c=1",
                format!(
                    "{:.2} × ({:.1} vs {:.1} jobs/s)",
                    four.mean / one.mean,
                    four.mean,
                    one.mean
                ),
                Some(four.mean >= 1.5 * one.mean),
            ),
            _ => row("W1 worker jobs/s at c=4 ≥ 1.5 × c=1", "-".into(), None),
        }

        // Retries at c = 16.
        let at16: Vec<&Cell> = self.cells.iter().filter(|c| c.concurrency == 16).collect();
        let retries: Vec<String> = at16
            .iter()
            .map(|c| {
                let n: u64 = c.runs(Side::Worker).map(|r| r.retries).sum();
                format!("{}: {n}", c.workload.label())
            })
            .collect();
        let total: u64 = at16
            .iter()
            .flat_map(|c| c.runs(Side::Worker))
            .map(|r| r.retries)
            .sum();
        row(
            "0 broker retries on W1/W2/W3 at c=16 (`retrying` events, all repetitions)",
            or_dash(retries.join("; ")),
            (!at16.is_empty()).then_some(total == 0),
        );

        // Memory.
        let mut rss_row = |goal: &str, rss: Option<Spread>, limit_mib: f64| {
            row(
                goal,
                rss.map_or("-".into(), |s| {
                    format!("{:.1} MiB mean, {:.1} MiB max", s.mean, s.max)
                }),
                rss.map(|s| s.max < limit_mib),
            );
        };
        rss_row(
            "worker RSS < 10 MiB idle (after start-up)",
            worker_rss_mib(&self.cells, |r| r.idle_rss_kib),
            10.0,
        );
        rss_row(
            "worker RSS < 35 MiB at c=16 (VmHWM)",
            worker_rss_mib(at16.iter().copied(), |r| r.peak_rss_kib),
            35.0,
        );

        // Broker only.
        let best = self
            .broker_only
            .iter()
            .filter_map(|c| {
                let s = Spread::of(c.runs.iter().map(BrokerOnlyResult::jobs_per_s))?;
                Some((c.concurrency, s))
            })
            .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
        row(
            "broker-only ≥ 5,000 jobs/s per process",
            best.map_or("-".into(), |(c, s)| {
                format!("{} jobs/s (best: c={c})", s.show(0))
            }),
            best.map(|(_, s)| s.mean >= 5000.0),
        );

        // Auth handshakes.
        let auth = |client: Client| {
            self.cells
                .iter()
                .flat_map(|c| c.runs(Side::Worker))
                .filter_map(|r| {
                    let counts = r.requests.as_ref().ok()?;
                    Some(r.per_job(counts.auth(Some(client)) as f64))
                })
                .reduce(f64::max)
        };
        let worker_auth = auth(Client::Worker);
        let daemon_auth = auth(Client::Daemon);
        let misses = self
            .cells
            .iter()
            .flat_map(|c| c.runs(Side::Worker))
            .filter_map(|r| Some(r.per_job(r.worker_counters?.preflight_misses as f64)))
            .reduce(f64::max);
        row(
            "≤ 0.05 registry auth handshakes (GET /v2/ + token) per job from the worker, steady \
             state (after a warm-up job)",
            match (worker_auth, daemon_auth) {
                (Some(w), Some(d)) => format!(
                    "worker's own client: {w:.3} per job in the log (worst run; an upper bound: \
                     other pushfleet processes on the shared registry look the same), preflight \
                     cache misses {} per job by its /metrics (worst run); the daemon pushing for \
                     it: {d:.2} per job (worst run; the floor's daemon does the same)",
                    misses.map_or("-".to_owned(), |m| format!("{m:.3}"))
                ),
                _ => "-".into(),
            },
            worker_auth.map(|w| w <= 0.05),
        );
        let _ = writeln!(out);
    }

    fn method(&self, out: &mut String) {
        let _ = writeln!(out, "### How it was measured\n");
        let _ = writeln!(
            out,
            "- Workloads: **W1** one small image (a one-file layer of a few bytes) pushed under a \
             new tag per job into one repository whose blobs the registry already holds; \
             **W2** a new image per job with one 1 MiB layer of random bytes, all made before \
             the timed part; **W3** the small image pushed under five new tags by one job. \
             Every run has its own repository, images, and (worker runs) topology prefix and \
             worker process, all removed afterwards.\n\
             - Each run starts with one untimed warm-up job (worker: fills its registry-auth \
             cache and connection pools; floor: opens the client's connections); the worker's \
             idle RSS is read before it.\n\
             - Worker runs: the release `pushfleet worker` binary, `concurrency = c`, logging \
             at `info` to a file; the bench keeps `c` jobs in flight (a slot publishes its \
             next job when the previous one's terminal event arrives). Jobs/s = jobs ÷ (first \
             publish → last terminal event). CPU = utime + stime of the worker process over \
             the timed part; peak RSS = its VmHWM at the end of the run.\n\
             - Floor runs: `c` tasks making tag + push calls back to back over one bollard \
             client.\n\
             - Order per cell: worker, floor; then floor, worker; and so on (ABBA), so drift \
             cancels in the ratio. A run that failed, or during which dockerd, the registry or \
             RabbitMQ restarted, was repeated once the stack answered again.\n\
             - Registry requests: the combined-format lines of the basic registry's log \
             between a start and an end marker request of each run, for the run's repository \
             and `GET /v2/`.\n\
             - Broker only: N jobs published up front, then an in-process \
             `run_broker_only` worker; jobs/s from the first `accepted` to the last terminal \
             event; CPU of the bench process (the worker plus the bench's event counting, \
             which reads routing keys only).\n"
        );
    }

    fn errors(&self, out: &mut String) {
        let mut errors: Vec<String> = Vec::new();
        if let Some(e) = &self.aborted {
            errors.push(format!("the bench stopped early: {e}"));
        }
        for c in &self.cells {
            let cell = format!("{} c={}", c.workload.label(), c.concurrency);
            errors.extend(c.errors.iter().map(|e| format!("{cell}: {e}")));
            for r in c.runs(Side::Worker) {
                errors.extend(
                    r.failures
                        .iter()
                        .map(|f| format!("{cell}: a job ended {f}")),
                );
            }
            for r in c.runs(Side::Worker).chain(c.runs(Side::Floor)) {
                if let Err(e) = &r.requests {
                    errors.push(format!(
                        "{cell} {}: registry log not counted: {e}",
                        r.side.name()
                    ));
                }
            }
        }
        for c in &self.broker_only {
            errors.extend(
                c.errors
                    .iter()
                    .map(|e| format!("broker-only c={}: {e}", c.concurrency)),
            );
        }
        if errors.is_empty() {
            return;
        }
        let _ = writeln!(out, "### Errors\n");
        for e in errors {
            let _ = writeln!(out, "- {}", e.replace('\n', " "));
        }
        let _ = writeln!(out);
    }

    /// Whether any run failed or any job did not succeed.
    pub(crate) fn has_errors(&self) -> bool {
        self.aborted.is_some()
            || self.cells.iter().any(|c| {
                !c.errors.is_empty() || c.runs(Side::Worker).any(|r| !r.failures.is_empty())
            })
            || self.broker_only.iter().any(|c| !c.errors.is_empty())
    }
}

/// The spread, in MiB, of a worker's RSS figure `rss_kib` over the worker runs of `cells`.
fn worker_rss_mib<'a>(
    cells: impl IntoIterator<Item = &'a Cell>,
    rss_kib: fn(&RunResult) -> Option<u64>,
) -> Option<Spread> {
    Spread::of(
        cells
            .into_iter()
            .flat_map(|c| c.runs(Side::Worker))
            .filter_map(|r| rss_kib(r).map(mib)),
    )
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

/// `12m 34s`, or `34.5s` under a minute.
pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m {:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(34_500)), "34.5s");
        assert_eq!(format_duration(Duration::from_secs(754)), "12m 34s");
    }

    #[test]
    fn rows_start_with_the_workload_concurrency_and_side() {
        let cell = Cell {
            workload: Workload::Retag,
            concurrency: 4,
            jobs: 10,
            worker: Vec::new(),
            floor: Vec::new(),
            errors: Vec::new(),
        };
        assert_eq!(cell.row_start(Side::Floor), "| W1 retag | 4 | floor |");
    }
}
