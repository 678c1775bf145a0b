//! Three worker processes, 100 jobs, one worker killed with SIGKILL three times mid-run (and
//! started again each time): no job is lost, every job ends `succeeded`, and the registry holds
//! the digest each success reports. A job redelivered after a kill may be accepted twice; two
//! terminal events for one job are counted and shown (they are possible when a worker dies
//! between the confirm of its terminal event and its ack).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_tests::process::{WorkerSettings, outcome, verify_in_basic_registry};
use pushfleet_tests::unique;

use crate::common::{Fleet, ended, fault_test, print_evidence};

const JOBS: usize = 100;
const SOURCES: usize = 10;
/// Kill when this many jobs have ended (and the victim holds a job in flight).
const KILL_AFTER: [usize; 3] = [10, 30, 50];

/// Jobs of `worker` accepted and not ended yet: the ones a kill interrupts.
fn in_flight(events: &[Event], worker: &str) -> BTreeSet<String> {
    let mut running = BTreeSet::new();
    for e in events {
        let Some(id) = e.job_id.as_deref() else {
            continue;
        };
        match e.state {
            JobState::Accepted if e.worker == worker => {
                running.insert(id.to_owned());
            }
            JobState::Accepted => {
                running.remove(id);
            }
            s if s.is_terminal() || s == JobState::Retrying => {
                running.remove(id);
            }
            _ => {}
        }
    }
    running
}

#[tokio::test]
async fn three_sigkills_mid_run_lose_no_job() -> Result<()> {
    fault_test("kill", Duration::from_secs(180), |logs| async move {
        let mut fleet = Fleet::new("kill", logs, WorkerSettings::default(), "").await?;
        let base = unique("fkill");
        let sources = fleet.make_sources(&base, SOURCES).await?;
        for id in ["w1", "w2", "w3"] {
            fleet.start_worker(id).await?;
        }
        fleet.wait_all_ready(Duration::from_secs(30)).await?;
        let victim = 1;

        let started = Instant::now();
        let ids = fleet.publish_jobs(&base, &sources, JOBS).await?;
        let mut kills = Vec::new();
        for (n, threshold) in KILL_AFTER.into_iter().enumerate() {
            fleet
                .events
                .wait_until(Duration::from_secs(90), "jobs ending", |ev| {
                    ended(ev) >= threshold
                })
                .await?;
            // Kill while the victim holds a job (it normally holds up to four).
            let name = fleet.workers[victim].id.clone();
            let holding = fleet
                .events
                .wait_until(Duration::from_secs(10), "victim busy", |ev| {
                    !in_flight(ev, &name).is_empty()
                })
                .await
                .map(|ev| in_flight(&ev, &name).len())
                .unwrap_or(0);
            fleet.workers[victim].kill().await?;
            kills.push((
                started.elapsed().as_secs_f64(),
                ended(&fleet.events.events()),
                holding,
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet
                .restart_worker(victim, &format!("w2-restart{}", n + 1))
                .await?;
        }

        fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(100))
            .await?;
        let all_done = started.elapsed().as_secs_f64();
        // Late duplicates (a redelivered job finishing again) would arrive now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let kill_desc: Vec<String> = kills
            .iter()
            .map(|(at, done, held)| format!("at {at:.1}s ({done} done, {held} in flight)"))
            .collect();
        println!(
            "FAULT kill: {} kills={} [{}] all_terminal_after={all_done:.1}s",
            out.figures(),
            kills.len(),
            kill_desc.join("; ")
        );
        let dups: Vec<String> = out.duplicate_jobs.keys().cloned().collect();
        print_evidence(&fleet, "jobs with more than one terminal event", &dups);
        print_evidence(&fleet, "lost jobs", &out.lost);
        let failed: Vec<String> = out.not_succeeded.keys().cloned().collect();
        print_evidence(&fleet, "jobs that did not succeed", &failed);

        ensure!(
            kills.iter().all(|k| k.2 > 0),
            "every kill must hit a busy worker: {kill_desc:?}"
        );
        ensure!(out.lost.is_empty(), "lost jobs: {:?}", out.lost);
        ensure!(
            out.not_succeeded.is_empty(),
            "jobs that did not succeed: {:?}",
            out.not_succeeded
        );
        ensure!(
            out.duplicate_jobs
                .values()
                .all(|states| states.iter().all(|s| *s == JobState::Succeeded)),
            "a job ended both succeeded and otherwise: {:?}",
            out.duplicate_jobs
        );
        let tags = verify_in_basic_registry(&fleet.env, &events, &ids).await?;
        println!("FAULT kill: registry holds the reported digest under all {tags} tags");
        fleet.shutdown().await
    })
    .await
}
