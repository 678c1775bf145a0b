//! SIGTERM while a worker process pushes: it stops taking jobs, and within its grace period the
//! job either completes (and is acked) or is left unacked and requeued; the process exits 0
//! either way, and no job is lost: a worker started afterwards finishes a requeued job.
//!
//! Two rounds, each with a large (incompressible) image so that the push is still running when
//! the signal arrives: `drain` with a 30 s grace (the push finishes inside it) and `requeue`
//! with a 1 s grace (the push cannot finish; the job goes back to the queue). Each round
//! asserts its path: who published the outcome, and that there was exactly one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_tests::process::{
    WorkerSettings, describe_job, job_json, make_large_image, outcome, verify_in_basic_registry,
};
use pushfleet_tests::{docker, unique};

use crate::common::{Fleet, fault_test, print_evidence, remember_image};

/// Large enough that pushing it takes seconds on the local stack.
const LARGE: usize = 96 << 20;

/// What a SIGTERM during the push must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The signalled worker finishes the push inside its grace and publishes the outcome.
    Drain,
    /// The grace ends first: the signalled worker publishes no outcome, the job goes back to
    /// the queue, and the next worker finishes it.
    Requeue,
}

async fn round(fleet: &mut Fleet, base: &str, path: Path, grace_s: u64) -> Result<()> {
    let label = match path {
        Path::Drain => "drain",
        Path::Requeue => "requeue",
    };
    let source = format!("{base}-{label}:src");
    let image = make_large_image(&docker(&fleet.env)?, &source, LARGE).await?;
    remember_image(image);
    let settings = WorkerSettings {
        concurrency: 1,
        shutdown_grace_s: grace_s,
        ..WorkerSettings::default()
    };
    let a_id = format!("a-{label}");
    let a = fleet.start_worker_with(&a_id, settings).await?;
    fleet.workers[a].wait_ready(Duration::from_secs(30)).await?;

    let job_id = format!("{}-{label}", fleet.prefix);
    let job = job_json(
        &job_id,
        &source,
        "basic",
        &format!("production/{base}-{label}"),
        &["1"],
    );
    let published = Instant::now();
    fleet.events.publish_job(&job).await?;
    let id = job_id.clone();
    let seen = fleet
        .events
        .wait_until(Duration::from_secs(30), "the push under way", |ev| {
            ev.iter().any(|e| {
                e.job_id.as_deref() == Some(id.as_str())
                    && (e.state == JobState::Progress || e.state.is_terminal())
            })
        })
        .await?;
    if seen
        .iter()
        .any(|e| e.job_id.as_deref() == Some(id.as_str()) && e.state.is_terminal())
    {
        bail!("the job ended before its push was seen running: make LARGE larger");
    }
    let signalled_after = published.elapsed().as_secs_f64();
    let signalled = Instant::now();
    fleet.workers[a].terminate().await?;
    let status = fleet.workers[a]
        .wait_exit(Duration::from_secs(grace_s + 20))
        .await?;
    let exit_after = signalled.elapsed();
    // The signalled worker's events were confirmed by the broker before it exited; the
    // collector may still be receiving them, so the path is decided by waiting for them.
    let by_a = |e: &pushfleet_shared::event::Event| {
        e.job_id.as_deref() == Some(job_id.as_str()) && e.state.is_terminal() && e.worker == a_id
    };
    let b_id = format!("b-{label}");
    let mut b = None;
    match path {
        Path::Drain => {
            fleet
                .events
                .wait_until(
                    Duration::from_secs(30),
                    "the signalled worker's outcome (drain)",
                    |ev| ev.iter().any(by_a),
                )
                .await?;
        }
        Path::Requeue => {
            // A requeued job needs another worker: start one (a restarted pod). Its outcome
            // comes through the same collector queue after anything worker a published.
            b = Some(fleet.start_worker_with(&b_id, settings).await?);
        }
    }
    let waited = fleet
        .events
        .wait_terminal(std::slice::from_ref(&job_id), Duration::from_secs(90))
        .await;
    let events = fleet.events.events();
    let ids = [job_id.clone()];
    let out = outcome(&events, &ids);
    let done = events
        .iter()
        .find(|e| e.job_id.as_deref() == Some(job_id.as_str()) && e.state.is_terminal());
    println!(
        "FAULT sigterm[{label}]: {} grace={grace_s}s signalled_after={signalled_after:.1}s (push running) exit_status={status} exit_after={:.1}s finished_by={} already_present={:?}",
        out.figures(),
        exit_after.as_secs_f64(),
        done.map_or("none", |e| e.worker.as_str()),
        done.and_then(|e| e.already_present)
    );
    for line in describe_job(&events, &job_id) {
        println!("    {line}");
    }
    if out.lost.len() + out.not_succeeded.len() + out.duplicates > 0 {
        print_evidence(fleet, "the job of this round", &ids);
    }
    ensure!(
        status.success(),
        "the worker exited with {status} after SIGTERM"
    );
    ensure!(
        exit_after <= Duration::from_secs(grace_s + 5),
        "the worker took {exit_after:?} to exit with a grace of {grace_s} s"
    );
    waited?;
    ensure!(out.lost.is_empty(), "the job was lost");
    let finished_by = done.map(|e| e.worker.clone());
    match path {
        Path::Drain => ensure!(
            finished_by.as_deref() == Some(a_id.as_str()),
            "drain: the signalled worker did not finish the job inside its grace (finished by {finished_by:?})"
        ),
        Path::Requeue => {
            ensure!(
                !events.iter().any(by_a),
                "requeue: the signalled worker published an outcome although its grace was too short for the push"
            );
            ensure!(
                finished_by.as_deref() == Some(b_id.as_str()),
                "requeue: the job was not finished by the next worker (finished by {finished_by:?})"
            );
            ensure!(
                out.duplicates == 0,
                "requeue: more than one outcome for the job"
            );
        }
    }
    ensure!(
        out.not_succeeded.is_empty(),
        "the job did not succeed: {:?}",
        out.not_succeeded
    );
    verify_in_basic_registry(&fleet.env, &events, &ids).await?;
    // The next round's job must go to that round's worker only.
    if let Some(b) = b {
        fleet.workers[b].terminate().await?;
        let status = fleet.workers[b]
            .wait_exit(Duration::from_secs(grace_s + 20))
            .await?;
        ensure!(status.success(), "worker b-{label} exited with {status}");
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_during_a_push_completes_or_requeues_within_the_grace_period() -> Result<()> {
    fault_test("sigterm", Duration::from_secs(200), |logs| async move {
        let mut fleet =
            Fleet::new("sigterm", Arc::clone(&logs), WorkerSettings::default(), "").await?;
        let base = unique("fterm");
        round(&mut fleet, &base, Path::Drain, 30).await?;
        round(&mut fleet, &base, Path::Requeue, 1).await?;
        fleet.shutdown().await
    })
    .await
}
