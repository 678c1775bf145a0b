//! A poison job: its registry points at a closed port, so every attempt fails retryably. After
//! the configured number of attempts it ends `dead`, nothing more happens to it, and the
//! message waits in the dead-letter queue with the reason in its headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lapin::types::AMQPValue;
use pushfleet_shared::event::JobState;
use pushfleet_tests::process::{WorkerSettings, describe_job, job_json, outcome};
use pushfleet_tests::unique;

use crate::common::{Fleet, fault_test, print_evidence};

const MAX_ATTEMPTS: u32 = 4;

fn header_text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test]
async fn a_job_that_always_fails_retryably_ends_dead_in_the_dead_letter_queue() -> Result<()> {
    fault_test("poison", Duration::from_secs(90), |logs| async move {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = closed.local_addr()?.port();
        drop(closed);
        let pw = logs.path().join("down.password");
        std::fs::write(&pw, "x")?;
        let extra = format!(
            "[registries.down]\nurl = \"http://127.0.0.1:{port}\"\nusername = \"u\"\npassword_file = \"{}\"\nnamespaces = [\"production\"]\n",
            pw.display()
        );
        let settings = WorkerSettings {
            max_attempts: MAX_ATTEMPTS,
            ..WorkerSettings::default()
        };
        let mut fleet = Fleet::new("poison", Arc::clone(&logs), settings, &extra).await?;
        let base = unique("fpoison");
        let sources = fleet.make_sources(&base, 1).await?;
        fleet.start_worker("w1").await?;
        fleet.wait_all_ready(Duration::from_secs(30)).await?;

        let job_id = format!("{}-poison", fleet.prefix);
        let job = job_json(&job_id, &sources[0], "down", &format!("production/{base}"), &["1"]);
        let started = Instant::now();
        fleet.events.publish_job(&job).await?;
        let ids = [job_id.clone()];
        let waited = fleet
            .events
            .wait_terminal(&ids, Duration::from_secs(45))
            .await;
        let dead_after = started.elapsed().as_secs_f64();
        // Nothing may follow the terminal event: no further attempt.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let events = fleet.events.events();
        let out = outcome(&events, &ids);
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.job_id.as_deref() == Some(job_id.as_str()))
            .collect();
        let delays: Vec<u64> = mine
            .iter()
            .filter_map(|e| e.retry.as_ref().map(|r| r.delay_ms))
            .collect();
        let dead_letters = fleet.events.take_dead_letters().await?;
        println!(
            "FAULT poison: {} attempts={} max_attempts={MAX_ATTEMPTS} delays_ms={delays:?} terminal_after={dead_after:.1}s dead_letters={}",
            out.figures(),
            out.attempts.get(&job_id).copied().unwrap_or(0),
            dead_letters.len()
        );
        for line in describe_job(&events, &job_id) {
            println!("    {line}");
        }
        if !out.lost.is_empty() || out.duplicates > 0 {
            print_evidence(&fleet, "the poison job", &ids);
        }
        waited?;
        let terminal: Vec<_> = mine.iter().filter(|e| e.state.is_terminal()).collect();
        ensure!(terminal.len() == 1, "one terminal event expected: {terminal:#?}");
        let dead = terminal[0];
        ensure!(dead.state == JobState::Dead, "expected dead, got {:?}", dead.state);
        ensure!(
            dead.error.as_ref().is_some_and(|e| e.code.as_str() == "registry_unreachable"),
            "dead for the wrong reason: {:?}",
            dead.error
        );
        ensure!(dead.attempt == MAX_ATTEMPTS, "dead at attempt {}", dead.attempt);
        let retrying = mine.iter().filter(|e| e.state == JobState::Retrying).count();
        ensure!(
            retrying == usize::try_from(MAX_ATTEMPTS - 1)?,
            "{retrying} retrying events for {MAX_ATTEMPTS} attempts"
        );
        ensure!(
            out.attempts.get(&job_id).copied() == Some(usize::try_from(MAX_ATTEMPTS)?),
            "attempts: {:?}",
            out.attempts
        );
        let last = mine.last().context("no events")?;
        ensure!(last.state == JobState::Dead, "an event after dead: {last:#?}");

        ensure!(
            dead_letters.len() == 1,
            "one dead letter expected, got {}",
            dead_letters.len()
        );
        let letter = &dead_letters[0];
        let body: serde_json::Value = serde_json::from_slice(&letter.data)?;
        ensure!(body["job_id"] == job_id.as_str(), "another job dead-lettered: {body}");
        let headers = letter
            .properties
            .headers()
            .as_ref()
            .context("the dead letter has no headers")?
            .inner();
        let code = header_text(headers.get("x-pushfleet-error-code"));
        let attempt = header_text(headers.get("x-pushfleet-attempt"));
        println!("FAULT poison: dead letter headers code={code:?} attempt={attempt:?}");
        ensure!(code.as_deref() == Some("registry_unreachable"), "code header {code:?}");
        ensure!(
            attempt.as_deref() == Some(MAX_ATTEMPTS.to_string().as_str()),
            "attempt header {attempt:?}"
        );
        fleet.shutdown().await
    })
    .await
}
