//! Pools against the real stack: two worker processes on two Docker daemons (the stack's
//! `dockerd` and `dockerd-b`, two build hosts), each serving its own pool. Jobs for images that
//! only one daemon holds reach the worker on that daemon; a retried job comes back to its
//! pool's queue, not the default one; a job of a pool no worker serves waits visibly in its
//! queue, and `submit --wait` says nothing consumes it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lapin::types::AMQPValue;
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image, registry_toml};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_pool_queues, delete_topology, job_json,
    outcome, pushfleet_binary, remove_images, verify_in_basic_registry, worker_toml_in,
};
use pushfleet_tests::{StackEnv, docker_at, unique};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(120);
const DAEMON_A: &str = "PUSHFLEET_DOCKER_HOST";
const DAEMON_B: &str = "PUSHFLEET_DOCKER_B_HOST";

/// A job of `pool` for `source`, pushed to `registry` as `production/<name>:1`.
fn pool_job(pool: &str, source: &str, registry: &str, name: &str) -> (String, serde_json::Value) {
    let job_id = unique(&format!("job-{pool}"));
    let mut job = job_json(
        &job_id,
        source,
        registry,
        &format!("production/{name}"),
        &["1"],
    );
    job["pool"] = json!(pool);
    (job_id, job)
}

fn codes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.error.as_ref().map(|x| x.code.as_str().to_owned()))
        .collect()
}

#[tokio::test]
async fn jobs_reach_the_worker_whose_daemon_holds_their_image() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("pools")?;
    let prefix = unique("t-pools");
    let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
    let daemons = [docker_at(&env, DAEMON_A)?, docker_at(&env, DAEMON_B)?];
    let registries = base_registries(&env)?;
    let ids = [format!("{prefix}-a"), format!("{prefix}-b")];
    let mut workers = Vec::new();
    for (i, (pool, daemon)) in [("a", DAEMON_A), ("b", DAEMON_B)].into_iter().enumerate() {
        let settings = WorkerSettings::default();
        let toml = worker_toml_in(
            &env,
            &prefix,
            &ids[i],
            settings,
            &registries,
            daemon,
            &[pool],
        )?;
        workers.push(WorkerProcess::spawn(&logs, &ids[i], &toml).await?);
    }
    for worker in &workers {
        worker.wait_ready(WITHIN).await?;
    }
    let mut images: [Vec<String>; 2] = Default::default();

    let result = async {
        // 20 jobs, alternating: even ones for images only daemon A holds (pool a), odd ones
        // for images only daemon B holds (pool b).
        let mut jobs = Vec::new();
        for n in 0..20 {
            let side = n % 2;
            let pool = ["a", "b"][side];
            let name = unique(&format!("pool-{pool}"));
            let source = format!("{name}:1");
            images[side].push(make_image(&daemons[side], &[&source]).await?);
            ensure!(
                daemons[1 - side].inspect_image(&source).await.is_err(),
                "{source} must exist in one daemon only"
            );
            let (job_id, job) = pool_job(pool, &source, "basic", &name);
            events
                .publish_job_with_key(&job, &format!("job.{pool}"))
                .await?;
            jobs.push((job_id, ids[side].clone()));
        }
        let job_ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
        let all = events.wait_terminal(&job_ids, WITHIN).await?;
        let out = outcome(&all, &job_ids);
        ensure!(
            out.lost.is_empty() && out.not_succeeded.is_empty(),
            "every job succeeds: {} {:?}",
            out.figures(),
            out.not_succeeded
        );
        let missing = codes(&all)
            .iter()
            .filter(|c| *c == "source_image_missing")
            .count();
        ensure!(
            missing == 0,
            "{missing} source_image_missing: {:?}",
            codes(&all)
        );
        for (job_id, worker) in &jobs {
            let of_job: Vec<&Event> = all
                .iter()
                .filter(|e| e.job_id.as_deref() == Some(job_id.as_str()))
                .collect();
            ensure!(
                of_job.iter().any(|e| e.state == JobState::Succeeded),
                "{job_id}: {of_job:#?}"
            );
            for e in &of_job {
                ensure!(
                    e.worker == *worker,
                    "{job_id} belongs to {worker}, but {} reported {:?}",
                    e.worker,
                    e.state
                );
            }
        }
        let per_worker: Vec<usize> = ids
            .iter()
            .map(|id| {
                all.iter()
                    .filter(|e| e.state == JobState::Succeeded && e.worker == *id)
                    .count()
            })
            .collect();
        println!(
            "pools: 20 jobs, succeeded per worker: {} (pool a, daemon A) {}, {} (pool b, daemon B) {}",
            ids[0], per_worker[0], ids[1], per_worker[1]
        );
        ensure!(per_worker == [10, 10], "jobs per worker: {per_worker:?}");
        let checked = verify_in_basic_registry(&env, &all, &job_ids).await?;
        ensure!(checked == 20, "{checked} tags checked in the registry");
        Ok(())
    }
    .await;

    for mut worker in workers {
        worker.terminate().await?;
    }
    for (daemon, ids) in daemons.iter().zip(&images) {
        remove_images(daemon, ids).await;
    }
    finish(&env, &logs, &prefix, &["a", "b"], events, result).await
}

#[tokio::test]
async fn a_retried_job_comes_back_to_its_pool_and_dead_letters_keep_it() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("pools-retry")?;
    let prefix = unique("t-pools-retry");
    let topology = Topology::new(&prefix);
    let events = EventLog::start(&env, &topology).await?;

    // A registry that refuses connections: registry_unreachable, retryable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let mut registries = base_registries(&env)?;
    registries.push_str(&registry_toml(
        "closed",
        &closed_url,
        &env.get("PUSHFLEET_BASIC_USER")?,
        std::path::Path::new(&env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?),
        &["production"],
    ));
    // Two attempts, 0.5 to 1 s apart: the retry waits in the delay bucket 0 (under 2 s).
    let settings = WorkerSettings {
        max_attempts: 2,
        retry_min_delay_ms: 500,
        retry_max_delay_s: 1,
        ..WorkerSettings::default()
    };
    // Worker B serves pool b on daemon B; worker D serves the default pool on daemon A. A
    // retry that came back to the default queue would reach D (and fail there:
    // source_image_missing).
    let id_b = format!("{prefix}-b");
    let id_d = format!("{prefix}-d");
    let toml_b = worker_toml_in(
        &env,
        &prefix,
        &id_b,
        settings,
        &registries,
        DAEMON_B,
        &["b"],
    )?;
    let toml_d = worker_toml_in(&env, &prefix, &id_d, settings, &registries, DAEMON_A, &[])?;
    let workers = [
        WorkerProcess::spawn(&logs, &id_b, &toml_b).await?,
        WorkerProcess::spawn(&logs, &id_d, &toml_d).await?,
    ];
    for worker in &workers {
        worker.wait_ready(WITHIN).await?;
    }
    let daemon_b = docker_at(&env, DAEMON_B)?;
    let name = unique("pool-retry");
    let source = format!("{name}:1");
    let image = make_image(&daemon_b, &[&source]).await?;

    let result = async {
        let (job_id, job) = pool_job("b", &source, "closed", &name);
        events.publish_job_with_key(&job, "job.b").await?;
        let all = events
            .wait_terminal(std::slice::from_ref(&job_id), WITHIN)
            .await?;
        let of_job: Vec<&Event> = all
            .iter()
            .filter(|e| e.job_id.as_deref() == Some(job_id.as_str()))
            .collect();
        let states: Vec<(u32, JobState, &str)> = of_job
            .iter()
            .map(|e| (e.attempt, e.state, e.worker.as_str()))
            .collect();
        ensure!(
            of_job
                .iter()
                .any(|e| e.state == JobState::Retrying && e.attempt == 1),
            "attempt 1 is retried: {states:?}"
        );
        ensure!(
            of_job
                .iter()
                .any(|e| e.state == JobState::Accepted && e.attempt == 2),
            "attempt 2 ran: {states:?}"
        );
        ensure!(
            of_job.iter().all(|e| e.worker == id_b),
            "every attempt ran on pool b's worker: {states:?}"
        );
        let last = of_job.last().context("no event")?;
        ensure!(
            last.state == JobState::Dead && last.attempt == 2,
            "dead after two attempts: {states:?}"
        );
        ensure!(
            codes(&all).iter().all(|c| c == "registry_unreachable"),
            "{:?}",
            codes(&all)
        );
        // The retry waited in pool b's own delay queue; the default pool's was never used.
        let pool_b = pushfleet_shared::Pool::parse("b")?;
        events
            .queue_depth(&topology.pool_retry_queue(&pool_b, 0))
            .await
            .context("pool b's delay queue of bucket 0 exists")?;
        ensure!(
            events.queue_depth(&topology.retry_queue(0)).await.is_err(),
            "the default pool's delay queue was never declared"
        );

        let dead = events.take_dead_letters().await?;
        ensure!(dead.len() == 1, "{} dead letters", dead.len());
        ensure!(
            dead[0].routing_key.as_str() == "job.b",
            "a dead letter keeps its pool's key, got {}",
            dead[0].routing_key
        );
        let pool_header = dead[0]
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-pushfleet-pool").cloned());
        ensure!(
            matches!(&pool_header, Some(AMQPValue::LongString(s)) if s.as_bytes() == b"b"),
            "{pool_header:?}"
        );
        Ok(())
    }
    .await;

    for mut worker in workers {
        worker.terminate().await?;
    }
    remove_images(&daemon_b, &[image]).await;
    finish(&env, &logs, &prefix, &["b"], events, result).await
}

#[tokio::test]
async fn one_worker_serves_several_pools_under_its_one_concurrency_limit() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("pools-limit")?;
    let prefix = unique("t-pools-limit");
    let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
    let settings = WorkerSettings {
        concurrency: 1,
        ..WorkerSettings::default()
    };
    let id = format!("{prefix}-w");
    let toml = worker_toml_in(
        &env,
        &prefix,
        &id,
        settings,
        &base_registries(&env)?,
        DAEMON_A,
        &["default", "b"],
    )?;
    let mut worker = WorkerProcess::spawn(&logs, &id, &toml).await?;
    worker.wait_ready(WITHIN).await?;
    let daemon = docker_at(&env, DAEMON_A)?;
    let mut images = Vec::new();

    let result = async {
        // Both pools' queues hold jobs at once: each pool's consumer is handed one at once
        // (prefetch 1 each), but only one may run at a time.
        let mut job_ids = Vec::new();
        for n in 0..8 {
            let pool = ["default", "b"][n % 2];
            let name = unique("pool-limit");
            let source = format!("{name}:1");
            images.push(make_image(&daemon, &[&source]).await?);
            let (job_id, mut job) = pool_job(pool, &source, "basic", &name);
            let key = if pool == "default" {
                job.as_object_mut().map(|j| j.remove("pool"));
                "job".to_owned()
            } else {
                format!("job.{pool}")
            };
            events.publish_job_with_key(&job, &key).await?;
            job_ids.push(job_id);
        }
        let all = events.wait_terminal(&job_ids, WITHIN).await?;
        let out = outcome(&all, &job_ids);
        ensure!(out.not_succeeded.is_empty(), "{}", out.figures());
        // One worker publishes its events in order on one channel: a job's `accepted` after
        // another's and before that one's terminal event means both ran at once.
        let mut running: Option<&str> = None;
        for e in all.iter().filter(|e| e.worker == id) {
            let job = e.job_id.as_deref().unwrap_or("-");
            if e.state == JobState::Accepted {
                ensure!(running.is_none(), "{job} started while {running:?} ran");
                running = Some(job);
            } else if e.state.is_terminal() {
                ensure!(running == Some(job), "{job} ended while {running:?} ran");
                running = None;
            }
        }
        Ok(())
    }
    .await;
    worker.terminate().await?;
    remove_images(&daemon, &images).await;
    finish(&env, &logs, &prefix, &["b"], events, result).await
}

#[tokio::test]
async fn submit_wait_says_when_no_worker_serves_the_pool() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("pools-unserved")?;
    let prefix = unique("t-pools-unserved");
    let topology = Topology::new(&prefix);
    let events = EventLog::start(&env, &topology).await?;
    let toml = worker_toml_in(
        &env,
        &prefix,
        "submitter",
        WorkerSettings::default(),
        &base_registries(&env)?,
        DAEMON_A,
        &[],
    )?;
    let config = logs.path().join("submit.toml");
    std::fs::write(&config, toml)?;

    let result = async {
        let job_id = unique("unserved");
        let run = tokio::process::Command::new(pushfleet_binary()?)
            .args(["submit", "-c"])
            .arg(&config)
            .args([
                "--source",
                "myapp:1",
                "--registry",
                "basic",
                "--repository",
                "production/myapp",
                "--pool",
                "nobody",
                "--job-id",
                &job_id,
                "--wait",
                "--wait-timeout-s",
                "2",
            ])
            .env_remove("PUSHFLEET_CONFIG")
            .output();
        let out = tokio::time::timeout(WITHIN, run)
            .await
            .context("submit did not finish")??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let queue = format!("{prefix}.jobs.nobody");
        ensure!(
            stderr.contains(&format!("no worker consumes {queue}")),
            "submit says nobody consumes the pool's queue: {stderr}"
        );
        ensure!(
            out.status.code() == Some(3),
            "gave up waiting: {:?}",
            out.status
        );
        // The job is not lost: it waits in its pool's queue for a worker of that pool.
        ensure!(
            events.queue_depth(&queue).await? == 1,
            "the job waits in {queue}"
        );
        ensure!(
            events.queue_depth(&topology.jobs_queue()).await? == 0,
            "nothing went to the default pool"
        );
        Ok(())
    }
    .await;
    finish(&env, &logs, &prefix, &["nobody"], events, result).await
}

/// Cleans up after a test (its topology, its pools' queues, its logs unless it failed).
async fn finish(
    env: &StackEnv,
    logs: &Logs,
    prefix: &str,
    pools: &[&str],
    events: EventLog,
    result: Result<()>,
) -> Result<()> {
    events.close().await;
    if result.is_err() {
        logs.dump(80);
    } else {
        logs.remove();
    }
    delete_pool_queues(env, prefix, pools).await;
    delete_topology(env, prefix).await;
    result
}
