//! Cancel requests (`pushfleet cancel <id>`) for jobs that are still queued: the job ends
//! `failed` with code `cancelled` when it is delivered, and nothing is pushed.
//!
//! - `before_any_worker`: the job is published to a topology no worker consumes yet, cancelled,
//!   and only then is a worker started.
//! - `behind_a_busy_worker`: a worker with concurrency 1 is busy with a large push while the
//!   job waits in the queue behind it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_tests::fleet::{basic_auth, registry_digest};
use pushfleet_tests::process::{
    WorkerSettings, describe_job, job_json, make_large_image, outcome, run_cancel,
};
use pushfleet_tests::{docker, unique};

use crate::common::{Fleet, fault_test, print_evidence, remember_image};

/// The tag `repository:tag` holds in the basic registry, if any.
async fn in_basic_registry(fleet: &Fleet, repository: &str, tag: &str) -> Result<Option<String>> {
    let base = format!("http://{}", fleet.env.get("PUSHFLEET_BASIC_REGISTRY")?);
    let auth = basic_auth(
        &fleet.env.get("PUSHFLEET_BASIC_USER")?,
        &fleet.env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
    );
    registry_digest(&base, repository, tag, &auth).await
}

/// Checks that `job_id` ended `failed`/`cancelled`, once, without a push.
fn expect_cancelled(events: &[Event], job_id: &str) -> Result<()> {
    let terminal: Vec<&Event> = events
        .iter()
        .filter(|e| e.job_id.as_deref() == Some(job_id) && e.state.is_terminal())
        .collect();
    let first = terminal.first().context("no terminal event")?;
    ensure!(
        first.state == JobState::Failed
            && first
                .error
                .as_ref()
                .is_some_and(|e| e.code.as_str() == "cancelled"),
        "expected failed/cancelled, got {}/{}",
        first.state.as_str(),
        first.error.as_ref().map_or("-", |e| e.code.as_str())
    );
    ensure!(terminal.len() == 1, "{} terminal events", terminal.len());
    ensure!(
        first.phases.as_ref().is_none_or(|p| p.push_ms.is_none()),
        "the cancelled job reports a push: {:?}",
        first.phases
    );
    Ok(())
}

#[tokio::test]
async fn cancel_of_a_job_queued_before_any_worker_runs() -> Result<()> {
    fault_test("cancel-queued", Duration::from_secs(60), |logs| async move {
        let mut fleet = Fleet::new(
            "cancelq",
            Arc::clone(&logs),
            WorkerSettings::default(),
            "",
        )
        .await?;
        let base = unique("fcancel");
        let sources = fleet.make_sources(&base, 1).await?;
        let repository = format!("production/{base}");
        let job_id = format!("{}-cancelled", fleet.prefix);
        fleet
            .events
            .publish_job(&job_json(&job_id, &sources[0], "basic", &repository, &["1"]))
            .await?;

        // Nobody consumes the topology yet: the job waits in the queue.
        let config = logs.path().join("cancel.toml");
        std::fs::write(&config, fleet.toml_with("canceller", fleet.settings)?)?;
        let status = run_cancel(&config, &job_id, &logs).await?;
        ensure!(status.success(), "pushfleet cancel exited with {status}");
        let queued = fleet
            .events
            .queue_depth(&fleet.events.topology().jobs_queue())
            .await?;

        fleet.start_worker("w1").await?;
        let ids = [job_id.clone()];
        let waited = fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let pushed = in_basic_registry(&fleet, &repository, "1").await?;
        let terminal = events
            .iter()
            .find(|e| e.job_id.as_deref() == Some(job_id.as_str()) && e.state.is_terminal());
        println!(
            "FAULT cancel[before_any_worker]: {} queued_at_cancel={queued} terminal={} pushed={}",
            out.figures(),
            terminal.map_or("none".to_owned(), |e| format!(
                "{}/{}",
                e.state.as_str(),
                e.error.as_ref().map_or("-", |x| x.code.as_str())
            )),
            pushed.is_some()
        );
        for line in describe_job(&events, &job_id) {
            println!("    {line}");
        }
        let result = (|| {
            waited?;
            expect_cancelled(&events, &job_id)?;
            ensure!(pushed.is_none(), "the cancelled job was pushed: {pushed:?}");
            Ok(())
        })();
        if result.is_err() {
            print_evidence(&fleet, "the cancelled job", &ids);
        }
        result?;
        fleet.shutdown().await
    })
    .await
}

#[tokio::test]
async fn cancel_of_a_job_queued_behind_a_busy_worker() -> Result<()> {
    fault_test("cancel-busy", Duration::from_secs(90), |logs| async move {
        let settings = WorkerSettings {
            concurrency: 1,
            ..WorkerSettings::default()
        };
        let mut fleet = Fleet::new("cancelb", Arc::clone(&logs), settings, "").await?;
        let base = unique("fcancelb");
        let large = format!("{base}-large:src");
        let image = make_large_image(&docker(&fleet.env)?, &large, 96 << 20).await?;
        remember_image(image);
        let sources = fleet.make_sources(&base, 1).await?;
        fleet.start_worker("w1").await?;
        fleet.wait_all_ready(Duration::from_secs(30)).await?;

        let busy_id = format!("{}-busy", fleet.prefix);
        let job_id = format!("{}-cancelled", fleet.prefix);
        let repository = format!("production/{base}");
        fleet
            .events
            .publish_job(&job_json(&busy_id, &large, "basic", &format!("{repository}-large"), &["1"]))
            .await?;
        let busy = busy_id.clone();
        fleet
            .events
            .wait_until(Duration::from_secs(30), "the large push accepted", |ev| {
                ev.iter().any(|e| {
                    e.job_id.as_deref() == Some(busy.as_str()) && e.state == JobState::Accepted
                })
            })
            .await?;
        fleet
            .events
            .publish_job(&job_json(&job_id, &sources[0], "basic", &repository, &["1"]))
            .await?;
        let config = logs.path().join("cancel.toml");
        std::fs::write(&config, fleet.toml_with("canceller", settings)?)?;
        let status = run_cancel(&config, &job_id, &logs).await?;
        ensure!(status.success(), "pushfleet cancel exited with {status}");
        let busy_still_running = !fleet.events.events().iter().any(|e| {
            e.job_id.as_deref() == Some(busy_id.as_str()) && e.state.is_terminal()
        });

        let ids = [busy_id.clone(), job_id.clone()];
        let waited = fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let pushed = in_basic_registry(&fleet, &repository, "1").await?;
        println!(
            "FAULT cancel[behind_a_busy_worker]: {} busy_job_still_running_at_cancel={busy_still_running} not_succeeded={:?} cancelled_job_pushed={}",
            out.figures(),
            out.not_succeeded,
            pushed.is_some()
        );
        for line in describe_job(&events, &job_id) {
            println!("    {line}");
        }
        let result = (|| {
            waited?;
            ensure!(busy_still_running, "the large push ended before the cancel was sent");
            expect_cancelled(&events, &job_id)?;
            ensure!(pushed.is_none(), "the cancelled job was pushed: {pushed:?}");
            ensure!(
                !out.not_succeeded.contains_key(&busy_id),
                "the busy job did not succeed: {:?}",
                out.not_succeeded
            );
            Ok(())
        })();
        if result.is_err() {
            print_evidence(&fleet, "the jobs", &ids);
        }
        result?;
        fleet.shutdown().await
    })
    .await
}
