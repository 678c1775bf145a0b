//! RabbitMQ stopped (`rabbitmqctl stop_app`) and started again (`start_app`) while three
//! worker processes work through a batch: every worker notices (not ready), reconnects on its
//! own (ready again, no restart), and no job is lost. Recovery is measured from `start_app`
//! to the first event published after it, and per worker to its `/readyz` answering 200.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use pushfleet_tests::process::{
    Fault, Outage, WorkerSettings, outcome, queue_counts, seconds_between, verify_in_basic_registry,
};
use pushfleet_tests::unique;

use crate::common::{Fleet, ended, fault_test, print_evidence};

const JOBS: usize = 150;
const SOURCES: usize = 10;
/// Stop the broker once this many jobs have ended.
const STOP_AFTER: usize = 20;
/// How long the broker stays stopped.
const DOWN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn rabbitmq_stop_app_start_app_under_load_workers_recover_alone() -> Result<()> {
    fault_test("rabbit", Duration::from_secs(200), |logs| async move {
        let mut fleet = Fleet::new(
            "rabbit",
            std::sync::Arc::clone(&logs),
            WorkerSettings::default(),
            "",
        )
        .await?;
        let base = unique("frabbit");
        let sources = fleet.make_sources(&base, SOURCES).await?;
        for id in ["w1", "w2", "w3"] {
            fleet.start_worker(id).await?;
        }
        fleet.wait_all_ready(Duration::from_secs(30)).await?;
        let ids = fleet.publish_jobs(&base, &sources, JOBS).await?;
        fleet
            .events
            .wait_until(Duration::from_secs(60), "first jobs ending", |ev| {
                ended(ev) >= STOP_AFTER
            })
            .await?;

        let outage = Outage::begin(&fleet.env, &logs, Fault::RabbitApp).await?;
        let stop_took = outage.began.elapsed().as_secs_f64();
        let ended_at_stop = ended(&fleet.events.events());
        // Every worker notices the broker is gone.
        let noticed: Vec<(String, Result<Duration>)> =
            futures_util::future::join_all(fleet.workers.iter().map(|w| async move {
                (w.id.clone(), w.wait_not_ready(Duration::from_secs(30)).await)
            }))
            .await;
        tokio::time::sleep(DOWN).await;

        let restarted_wall = SystemTime::now();
        let restarted = Instant::now();
        let start_took = outage.end().await?.as_secs_f64();
        // Every worker reconnects by itself.
        let recovered: Vec<(String, Result<Duration>)> =
            futures_util::future::join_all(fleet.workers.iter().map(|w| async move {
                let r = w
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .map(|_| restarted.elapsed());
                (w.id.clone(), r)
            }))
            .await;
        // Ready means consuming again: the jobs queue has one consumer per worker.
        let consumers = consumers_after_recovery(&fleet).await;
        let first_after = fleet
            .events
            .wait_until(Duration::from_secs(60), "an event after start_app", |ev| {
                ev.iter().any(|e| {
                    seconds_between(restarted_wall, e.at.unix_timestamp_nanos()) >= 0.0
                })
            })
            .await
            .map(|ev| {
                ev.iter()
                    .map(|e| seconds_between(restarted_wall, e.at.unix_timestamp_nanos()))
                    .filter(|s| *s >= 0.0)
                    .fold(f64::INFINITY, f64::min)
            });

        let waited = fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(90))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        // Who worked after the restart (every worker should, with this many jobs left).
        let mut accepted_after = std::collections::BTreeMap::<String, usize>::new();
        for e in &events {
            if e.state == JobState::Accepted
                && seconds_between(restarted_wall, e.at.unix_timestamp_nanos()) >= 0.0
            {
                *accepted_after.entry(e.worker.clone()).or_default() += 1;
            }
        }
        let readiness: Vec<String> = recovered
            .iter()
            .map(|(id, r)| match r {
                Ok(d) => format!("{id} {:.1}s", d.as_secs_f64()),
                Err(_) => format!("{id} NEVER"),
            })
            .collect();
        let recovery = match &first_after {
            Ok(s) => format!("{s:.1}"),
            Err(_) => "NONE".to_owned(),
        };
        let (sessions, _) = fleet.events.sessions();
        println!(
            "FAULT rabbit: {} stopped_after={ended_at_stop}_jobs_done stop_app={stop_took:.1}s down={:.0}s start_app={start_took:.1}s recovery_s={recovery} (start_app issued -> first event; the broker answered after start_app={start_took:.1}s) workers_ready_after=[{}] consumers_after={consumers:?} accepted_after_restart={accepted_after:?} collector_sessions={sessions}",
            out.figures(),
            DOWN.as_secs_f64(),
            readiness.join(", ")
        );
        print_evidence(&fleet, "lost jobs", &out.lost);
        let failed: Vec<String> = out.not_succeeded.keys().cloned().collect();
        print_evidence(&fleet, "jobs that did not succeed", &failed);
        let dups: Vec<String> = out.duplicate_jobs.keys().cloned().collect();
        print_evidence(&fleet, "jobs with more than one terminal event", &dups);

        for (id, n) in &noticed {
            ensure!(
                n.is_ok(),
                "worker {id} did not report not-ready while the broker was down: {n:?}"
            );
        }
        for (id, r) in &recovered {
            ensure!(r.is_ok(), "worker {id} did not become ready again after start_app");
        }
        ensure!(
            consumers == Some(fleet.workers.len()),
            "consumers on the jobs queue after recovery: {consumers:?}, workers: {}",
            fleet.workers.len()
        );
        ensure!(first_after.is_ok(), "no event after start_app: {first_after:?}");
        waited?;
        ensure!(out.lost.is_empty(), "lost jobs: {:?}", out.lost);
        ensure!(
            out.not_succeeded.is_empty(),
            "jobs that did not succeed: {:?}",
            out.not_succeeded
        );
        verify_in_basic_registry(&fleet.env, &events, &ids).await?;
        fleet.shutdown().await
    })
    .await
}

/// The number of consumers on the fleet's jobs queue once it equals the number of workers,
/// asked on a fresh connection every 200 ms for at most 10 s; `None` if it never did (the
/// last count is printed).
async fn consumers_after_recovery(fleet: &Fleet) -> Option<usize> {
    let url = fleet.env.get("PUSHFLEET_AMQP_URL").ok()?;
    let queue = Topology::new(&fleet.prefix).jobs_queue();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(conn) =
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
        {
            last = queue_counts(&conn, &queue).await.ok();
            let _ = conn.close(200, "done".into()).await;
            if last.is_some_and(|c| c.consumers as usize == fleet.workers.len()) {
                return Some(fleet.workers.len());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("jobs queue {queue} after recovery: {last:?}");
    None
}
