//! A RabbitMQ cluster loses the node that leads the jobs queue in the middle of a run.
//!
//! The stack's three-node cluster (`deploy/local/start.sh rabbitmq-cluster`) carries the
//! topology with three replicas per queue. Three worker processes, each given every node in
//! `amqp.urls`, take a batch of jobs; once some have finished, the node leading the jobs
//! queue is stopped (the whole Erlang VM, as a lost machine), and started again after a while.
//! Every job must end with a terminal event, all `succeeded`, none lost, and the registry must
//! hold every pushed tag with the job's digest. The figures (jobs, lost, duplicates, how long
//! consumption paused) are printed.
//!
//! Its own test binary: it stops and starts cluster nodes, which no other test uses, and it
//! needs the cluster the default stack does not start.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_topology_on, job_json, outcome,
    verify_in_basic_registry, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};

/// How many jobs the run publishes.
const JOBS: usize = 240;
/// How many worker processes share them.
const WORKERS: usize = 3;
/// How many jobs finish before the leader's node is stopped.
const STOP_AFTER: usize = 60;
/// How long the node stays down (while the workers go on without it).
const DOWN_FOR: Duration = Duration::from_secs(10);
/// The bound on the whole run, from the first publish to the last terminal event.
const RUN_WITHIN: Duration = Duration::from_secs(240);
/// Replicas of every queue: one per node.
const REPLICAS: u8 = 3;

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cluster.sh")
}

/// Runs `deploy/local/cluster.sh ARGS` and returns what it printed.
async fn cluster(args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("bash")
            .arg(cluster_script())
            .args(args)
            .output(),
    )
    .await
    .with_context(|| format!("cluster.sh {args:?} did not finish in 180 s"))??;
    if !out.status.success() {
        bail!(
            "cluster.sh {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The worker configuration: the stack's, with every cluster node and three replicas.
fn cluster_toml(env: &StackEnv, prefix: &str, id: &str, urls: &[String]) -> Result<String> {
    let toml = worker_toml(
        env,
        prefix,
        id,
        WorkerSettings {
            concurrency: 4,
            ..WorkerSettings::default()
        },
        &base_registries(env)?,
    )?;
    let single = format!("url = \"{}\"", env.get("PUSHFLEET_AMQP_URL")?);
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let nodes = format!("urls = [{}]\nquorum_replicas = {REPLICAS}", list.join(", "));
    ensure!(toml.contains(&single), "worker_toml has no `{single}` line");
    let toml = toml.replace(&single, &nodes);
    pushfleet_worker::config::load_from_str(&toml, Some(Default::default()))
        .map_err(|e| anyhow::anyhow!("cluster worker config invalid: {e}\n{toml}"))?;
    Ok(toml)
}

/// The longest stretch without any worker reporting progress (an `accepted` or terminal
/// event) between `from` and the last terminal event, in seconds.
fn longest_pause(events: &[Event], from: time::OffsetDateTime) -> f64 {
    let mut times: Vec<time::OffsetDateTime> = events
        .iter()
        .filter(|e| e.state == JobState::Accepted || e.state.is_terminal())
        .map(|e| e.at)
        .filter(|t| *t >= from)
        .collect();
    times.sort();
    let mut longest = times
        .first()
        .map_or(0.0, |first| (*first - from).as_seconds_f64());
    for pair in times.windows(2) {
        longest = longest.max((pair[1] - pair[0]).as_seconds_f64());
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_node_loses_no_job() -> Result<()> {
    let env = StackEnv::load()?;
    let urls: Vec<String> = env
        .get("PUSHFLEET_CLUSTER_AMQP_URLS")
        .context("start the cluster first: bash deploy/local/start.sh rabbitmq-cluster")?
        .split(',')
        .map(|u| u.trim().to_owned())
        .collect();
    ensure!(urls.len() == 3, "expected three cluster nodes: {urls:?}");
    let logs = Logs::new("cluster")?;
    let prefix = unique("t-cluster");
    let topology = Topology::new(&prefix).with_replicas(REPLICAS);
    let events = EventLog::start_on(urls.clone(), &topology).await?;

    let name = unique("cluster");
    let image = format!("{name}:1");
    make_image(&docker(&env)?, &[&image]).await?;
    let repository = format!("production/{name}");

    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let id = format!("{prefix}-w{n}");
        let toml = cluster_toml(&env, &prefix, &id, &urls)?;
        workers.push(WorkerProcess::spawn(&logs, &id, &toml).await?);
    }
    for w in &workers {
        w.wait_ready(Duration::from_secs(60)).await?;
    }

    let started = Instant::now();
    let mut job_ids = Vec::new();
    for i in 0..JOBS {
        let job_id = format!("{prefix}-{i:04}");
        let tag = format!("t{i}");
        events
            .publish_job(&job_json(&job_id, &image, "basic", &repository, &[&tag]))
            .await?;
        job_ids.push(job_id);
    }
    let wanted: HashSet<&str> = job_ids.iter().map(String::as_str).collect();
    events
        .wait_until(RUN_WITHIN, "the first jobs finished", |seen| {
            seen.iter()
                .filter(|e| e.state.is_terminal())
                .filter(|e| e.job_id.as_deref().is_some_and(|id| wanted.contains(id)))
                .count()
                >= STOP_AFTER
        })
        .await?;

    let jobs_queue = topology.jobs_queue();
    let leader = cluster(&["leader", &jobs_queue]).await?;
    let stopped_at = time::OffsetDateTime::now_utc();
    let stop_clock = Instant::now();
    cluster(&["stop", &leader]).await?;
    let stop_took = stop_clock.elapsed();
    let new_leader = cluster(&["leader", &jobs_queue]).await?;
    ensure!(
        new_leader != leader,
        "the jobs queue is still led by node {leader} after it stopped"
    );
    tokio::time::sleep(DOWN_FOR).await; // the outage itself, not a synchronisation
    let restart_clock = Instant::now();
    cluster(&["start", &leader]).await?;
    let restart_took = restart_clock.elapsed();

    let result = async {
        let remaining = RUN_WITHIN.saturating_sub(started.elapsed());
        let seen = events.wait_terminal(&job_ids, remaining).await?;
        let run_took = started.elapsed();
        let out = outcome(&seen, &job_ids);
        let failed: Vec<&Event> = seen
            .iter()
            .filter(|e| e.state.is_terminal() && e.state != JobState::Succeeded)
            .filter(|e| e.job_id.as_deref().is_some_and(|id| wanted.contains(id)))
            .collect();
        let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
        for e in seen.iter().filter(|e| e.state == JobState::Succeeded) {
            *per_worker.entry(e.worker.clone()).or_default() += 1;
        }
        let pause = longest_pause(&seen, stopped_at);
        println!(
            "cluster: {} jobs, {WORKERS} workers; stopped node {leader} (leader of {jobs_queue}) \
             after {STOP_AFTER} jobs in {:.1} s, new leader node {new_leader}, down {:.0} s, \
             restarted in {:.1} s; {}; longest pause in consumption after the stop {pause:.1} s; \
             whole run {:.1} s; succeeded per worker {per_worker:?}",
            job_ids.len(),
            stop_took.as_secs_f64(),
            DOWN_FOR.as_secs_f64(),
            restart_took.as_secs_f64(),
            out.figures(),
            run_took.as_secs_f64(),
        );
        ensure!(out.lost.is_empty(), "lost jobs: {:?}", out.lost);
        ensure!(failed.is_empty(), "jobs that did not succeed: {failed:#?}");
        let digests = verify_in_basic_registry(&env, &seen, &job_ids).await?;
        println!("registry: {digests} tags checked against their job's digest");
        ensure!(
            digests == job_ids.len(),
            "{digests} of {} tags verified",
            job_ids.len()
        );
        Ok(())
    }
    .await;

    for w in &mut workers {
        let _ = w.terminate().await;
    }
    events.close().await;
    if result.is_err() {
        logs.dump(40);
    } else {
        logs.remove();
    }
    delete_topology_on(&urls[0], &prefix).await;
    result
}
