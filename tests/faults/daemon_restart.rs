//! The Docker daemon restarted (stop.sh dockerd, 5 s, start.sh dockerd) during a batch: jobs fail
//! `daemon_unavailable` (retryable) and go through `retrying` with growing
//! delays (held by the broker's delay queue, so no hot loop), and every job succeeds once the
//! daemon is back (its images survive in its data root), within a bounded number of attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use pushfleet_tests::process::{Fault, Outage, WorkerSettings, outcome, verify_in_basic_registry};
use pushfleet_tests::unique;

use crate::common::{Fleet, analyse_retries, attempt_bound, ended, fault_test, print_evidence};

const JOBS: usize = 40;
const SOURCES: usize = 5;
const DOWN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn docker_daemon_restart_jobs_retry_then_succeed() -> Result<()> {
    fault_test("dockerd", Duration::from_secs(150), |logs| async move {
        let settings = WorkerSettings::default();
        let mut fleet = Fleet::new("dockerd", Arc::clone(&logs), settings, "").await?;
        let base = unique("fdockerd");
        let sources = fleet.make_sources(&base, SOURCES).await?;
        for id in ["w1", "w2"] {
            fleet.start_worker(id).await?;
        }
        fleet.wait_all_ready(Duration::from_secs(30)).await?;
        let ids = fleet.publish_jobs(&base, &sources, JOBS).await?;
        fleet
            .events
            .wait_until(Duration::from_secs(60), "first jobs ending", |ev| ended(ev) >= 2)
            .await?;

        let outage = Outage::begin(&fleet.env, &logs, Fault::Component("dockerd")).await?;
        let began = outage.began;
        let ended_at_stop = ended(&fleet.events.events());
        tokio::time::sleep(DOWN.saturating_sub(began.elapsed())).await;
        let start_took = outage.end().await?;
        let down = began.elapsed();
        let back = Instant::now();

        let waited = fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(90))
            .await;
        let all_done_after_back = back.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let min_delay = Duration::from_millis(settings.retry_min_delay_ms);
        let bound = attempt_bound(down, min_delay);
        let retries = analyse_retries(&events, &ids, settings, bound);
        println!(
            "FAULT dockerd: {} stopped_after={ended_at_stop}_jobs_done down={:.1}s (start.sh {:.1}s) all_terminal_after_back={all_done_after_back:.1}s attempt_bound={bound} {}",
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
        ensure!(
            retries.jobs_retried > 0,
            "no job went through retrying while the daemon was down"
        );
        ensure!(
            retries.codes.contains_key("daemon_unavailable"),
            "no attempt failed as daemon_unavailable: {:?}",
            retries.codes
        );
        ensure!(
            retries.problems.is_empty(),
            "retry rules broken: {:?}",
            retries.problems
        );
        verify_in_basic_registry(&fleet.env, &events, &ids).await?;
        fleet.shutdown().await
    })
    .await
}
