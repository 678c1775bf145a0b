//! What a worker process logs about failures, read from its real output: a failure that is
//! retried is a WARN "attempt failed; retrying", a failure that is not is one ERROR "job
//! failed for good", and every line of a job names the catalogue key of its registry even when
//! the job used an alias.

use std::time::Duration;

use anyhow::{Result, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{base_registries, make_image, registry_toml};
use pushfleet_tests::process::{
    EventLog, Logs, WorkerProcess, WorkerSettings, delete_topology, job_json, worker_toml,
};
use pushfleet_tests::{StackEnv, docker, unique};

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn final_failures_are_errors_retried_ones_warnings_and_lines_name_the_catalogue_key()
-> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("logs")?;
    let prefix = unique("t-logs");
    let topology = Topology::new(&prefix);
    let events = EventLog::start(&env, &topology).await?;
    let image = format!("{}:1", unique("logs"));
    make_image(&docker(&env)?, &[&image]).await?;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let password_file = env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let mut registries = base_registries(&env)?;
    registries.push_str(&registry_toml(
        "closed",
        &closed_url,
        &env.get("PUSHFLEET_BASIC_USER")?,
        std::path::Path::new(&password_file),
        &["production"],
    ));
    registries.push_str("aliases = [\"9\"]\n");
    let settings = WorkerSettings {
        max_attempts: 2,
        retry_min_delay_ms: 100,
        retry_max_delay_s: 1,
        ..WorkerSettings::default()
    };
    let id = format!("{prefix}-w");
    let toml = worker_toml(&env, &prefix, &id, settings, &registries)?;
    let mut worker = WorkerProcess::spawn(&logs, &id, &toml).await?;
    worker.wait_ready(WITHIN).await?;

    // Refused by policy, named by the alias `5` of `basic`.
    let refused = unique("job-refused");
    events
        .publish_job(&job_json(
            &refused,
            "myapp:1",
            "5",
            "elsewhere/myapp",
            &["1"],
        ))
        .await?;
    // Retried once (registry_unreachable), then dead; named by the alias `9` of `closed`.
    let retried = unique("job-retried");
    events
        .publish_job(&job_json(&retried, &image, "9", "production/myapp", &["1"]))
        .await?;
    let terminal = events
        .wait_terminal(&[refused.clone(), retried.clone()], WITHIN)
        .await?;
    let state_of = |id: &str| {
        terminal
            .iter()
            .find(|e| e.job_id.as_deref() == Some(id) && e.state.is_terminal())
            .map(|e| e.state)
    };
    ensure!(state_of(&refused) == Some(JobState::Failed));
    ensure!(
        state_of(&retried) == Some(JobState::Dead),
        "the unreachable registry's job ends dead: {terminal:#?}"
    );
    worker.terminate().await?;

    let result = check_lines(&logs, &refused, &retried);
    if result.is_err() {
        logs.dump(60);
    } else {
        logs.remove();
    }
    delete_topology(&env, &prefix).await;
    result
}

fn check_lines(logs: &Logs, refused: &str, retried: &str) -> Result<()> {
    let refused_lines = logs.grep(refused);
    let finals: Vec<&String> = refused_lines
        .iter()
        .filter(|l| l.contains("job failed for good"))
        .collect();
    ensure!(
        finals.len() == 1 && finals[0].contains(" ERROR "),
        "one ERROR line for the final failure: {refused_lines:#?}"
    );
    ensure!(
        !refused_lines
            .iter()
            .any(|l| l.contains("retrying") || l.contains(" WARN ")),
        "a failure that is not retried logs no retry warning: {refused_lines:#?}"
    );
    ensure!(
        refused_lines
            .iter()
            .filter(|l| l.contains("job failed") || l.contains("job accepted"))
            .all(|l| l.contains("registry=basic") && !l.contains("registry=5")),
        "lines name the catalogue key, not the alias: {refused_lines:#?}"
    );

    let retried_lines = logs.grep(retried);
    let retrying: Vec<&String> = retried_lines
        .iter()
        .filter(|l| l.contains("attempt failed; retrying"))
        .collect();
    ensure!(
        retrying.len() == 1 && retrying[0].contains(" WARN "),
        "one WARN line for the retried attempt: {retried_lines:#?}"
    );
    let finals: Vec<&String> = retried_lines
        .iter()
        .filter(|l| l.contains("job failed for good"))
        .collect();
    ensure!(
        finals.len() == 1 && finals[0].contains(" ERROR ") && finals[0].contains("Dead"),
        "one ERROR line when the last attempt fails: {retried_lines:#?}"
    );
    ensure!(
        retried_lines
            .iter()
            .filter(|l| l.contains("failed"))
            .all(|l| l.contains("registry=closed") && !l.contains("registry=9")),
        "lines name the catalogue key, not the alias: {retried_lines:#?}"
    );
    Ok(())
}
