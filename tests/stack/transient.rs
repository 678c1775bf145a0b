//! A registry that answers a manifest read with a 500 once (as one under concurrent pushes of
//! the same manifest does) costs the job a moment, not a trip through the broker's delay
//! queue: the worker asks again in-process and the job succeeds on its first attempt.

use anyhow::{Result, ensure};
use pushfleet_shared::event::JobState;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, basic_auth, job, make_image, registry_digest, terminal,
    worker_config,
};
use pushfleet_tests::proxy::FlakyRegistry;
use pushfleet_tests::{StackEnv, docker, unique};

#[tokio::test]
async fn a_500_on_the_post_push_check_is_retried_in_process() -> Result<()> {
    let env = StackEnv::load()?;
    let docker = docker(&env)?;
    let basic = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let proxy = FlakyRegistry::start(&basic).await?;
    let name = unique("flaky");
    make_image(&docker, &[&format!("{name}:1")]).await?;
    let registries = format!(
        "{}\n[registries.flaky]\nurl = \"http://{}\"\nusername = {:?}\npassword_file = {:?}\nnamespaces = [\"production\"]\n",
        base_registries(&env)?,
        proxy.addr,
        env.get("PUSHFLEET_BASIC_USER")?,
        env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?,
    );
    let worker = TestWorker::start(worker_config(&env, &unique("t-flaky"), &registries)?).await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;

    let repository = format!("production/{name}");
    let job = job(&format!("{name}:1"), "flaky", &repository, &["1", "2"]);
    let job_id = job["job_id"].as_str().unwrap_or_default().to_owned();
    broker.publish_job(&job).await?;
    let events = broker.wait_for(&job_id).await?;
    let done = terminal(&events)?;

    ensure!(
        proxy.injected() >= 1,
        "the proxy injected no 500: the test proved nothing ({} requests forwarded)",
        proxy.forwarded()
    );
    ensure!(
        done.state == JobState::Succeeded && done.attempt == 1,
        "expected success on attempt 1: {events:#?}"
    );
    ensure!(
        !events.iter().any(|e| e.state == JobState::Retrying),
        "no broker retry: {events:#?}"
    );
    let digest = done.digest.clone().unwrap_or_default();
    let auth = basic_auth(
        &env.get("PUSHFLEET_BASIC_USER")?,
        &env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
    );
    for tag in ["1", "2"] {
        let found = registry_digest(&format!("http://{basic}"), &repository, tag, &auth).await?;
        ensure!(
            found.as_deref() == Some(digest.as_str()),
            "{tag}: {found:?} != {digest}"
        );
    }
    println!(
        "{} injected 500s on manifest reads; the job succeeded on attempt 1",
        proxy.injected()
    );
    worker.stop().await
}
