//! The job contract's strict edges over the real broker: credentials pasted as values are
//! refused without being echoed, a repeated key is refused, and the length limits count the
//! catalogue's real host.

use anyhow::{Result, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, expect_failed, job, make_image, terminal, worker_config,
};
use pushfleet_tests::{StackEnv, docker, unique};

#[tokio::test]
async fn credentials_as_values_and_repeated_keys_are_refused_and_never_echoed() -> Result<()> {
    let env = StackEnv::load()?;
    let worker = TestWorker::start(worker_config(
        &env,
        &unique("t-contract"),
        &base_registries(&env)?,
    )?)
    .await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;

    let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0\n-----END OPENSSH PRIVATE KEY-----\n";
    // base64 of `ci-bot:Tr0ub4dor&3`, as in a Docker config's `auth` field.
    let docker_auth = "Y2ktYm90OlRyMHViNGRvciYz";
    let mut refused = Vec::new();
    for (what, value) in [
        ("deploy.note", serde_json::json!(pem)),
        ("build.registry", serde_json::json!(docker_auth)),
    ] {
        let mut j = job("myapp:1", "basic", "production/myapp", &["1"]);
        let (outer, inner) = what.split_once('.').unwrap_or((what, "x"));
        j["metadata"][outer] = serde_json::json!({ inner: value });
        refused.push((
            j["job_id"].as_str().unwrap_or_default().to_owned(),
            what,
            value,
        ));
        broker.publish_job(&j).await?;
    }
    for (job_id, path, value) in &refused {
        let events = broker.wait_for(job_id).await?;
        let failed = expect_failed(&events, "invalid_message")?;
        let message = failed
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        ensure!(
            message.contains(&format!("metadata.{path}")),
            "names the path: {message}"
        );
        let everything = serde_json::to_string(&events)?;
        let needle = value.as_str().unwrap_or_default();
        ensure!(
            !everything.contains(needle.lines().nth(1).unwrap_or(needle)),
            "the value is echoed: {everything}"
        );
        ensure!(
            failed.metadata.is_empty(),
            "metadata with a credential is not echoed"
        );
    }

    // {"target": <bad registry>, ..., "target": <good registry>}: last-key-wins would push.
    let good = job("myapp:1", "basic", "production/myapp", &["1"]);
    let job_id = good["job_id"].as_str().unwrap_or_default().to_owned();
    let body = serde_json::to_string(&good)?.replacen(
        '{',
        r#"{"target":{"registry":"nope","repository":"production/myapp","tags":["1"]},"#,
        1,
    );
    broker
        .publish_raw(
            body.as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await?;
    let events = broker.wait_for(&job_id).await?;
    let failed = expect_failed(&events, "invalid_message")?;
    ensure!(
        failed
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("target") && e.message.contains("twice")),
        "{failed:#?}"
    );
    worker.stop().await
}

#[tokio::test]
async fn a_long_repository_that_fits_behind_the_real_host_is_pushed() -> Result<()> {
    let env = StackEnv::load()?;
    let host = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let worker = TestWorker::start(worker_config(
        &env,
        &unique("t-length"),
        &base_registries(&env)?,
    )?)
    .await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;
    let name = unique("long");
    make_image(&docker(&env)?, &[&format!("{name}:1")]).await?;
    // `<host>/<repository>` exactly 255 characters: refused by the old check against a
    // 16-character placeholder host whenever the real host is shorter.
    let prefix = format!("production/{name}-");
    let fill = 255 - host.len() - 1 - prefix.len();
    let repository = format!("{prefix}{}", "a".repeat(fill));
    ensure!(host.len() + 1 + repository.len() == 255);
    let fits = job(&format!("{name}:1"), "basic", &repository, &["1"]);
    let too_long = job(
        &format!("{name}:1"),
        "basic",
        &format!("{repository}b"),
        &["1"],
    );
    broker.publish_job(&fits).await?;
    broker.publish_job(&too_long).await?;

    let events = broker
        .wait_for(fits["job_id"].as_str().unwrap_or_default())
        .await?;
    let done = terminal(&events)?;
    ensure!(done.state == JobState::Succeeded, "{events:#?}");
    let events = broker
        .wait_for(too_long["job_id"].as_str().unwrap_or_default())
        .await?;
    expect_failed(&events, "invalid_reference")?;
    worker.stop().await
}
