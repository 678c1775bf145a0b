//! Job signing: with a shared key configured, only jobs signed with it are pushed; unsigned
//! and wrongly signed ones fail as `invalid_signature` and are dead-lettered.

use anyhow::{Context, Result};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use pushfleet_shared::event::JobState;
use pushfleet_shared::signature::{SIGNATURE_HEADER, sign};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::config::TestConfig;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, expect_failed, make_image, terminal,
};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::json;

fn signed(key: &[u8], body: &[u8]) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        SIGNATURE_HEADER.into(),
        AMQPValue::LongString(sign(key, body).into()),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers)
}

#[tokio::test]
async fn only_jobs_signed_with_the_fleet_key_are_pushed() -> Result<()> {
    let env = StackEnv::load()?;
    let dir = tempfile::tempdir()?;
    let key = b"fleet-signing-key-0123456789-abcdef".to_vec();
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, &key)?;
    let prefix = unique("sign");
    let mut config = TestConfig::new(&env, &prefix, &base_registries(&env)?)?;
    config.signing_key_file = Some(key_file.clone());
    let config = config.load()?;
    let mut broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
    let worker = TestWorker::start(config).await?;

    let name = unique("signed");
    make_image(&docker(&env)?, &[&format!("{name}:1")]).await?;
    let job = |id: &str| {
        serde_json::to_vec(&json!({
            "version": 1, "job_id": id, "source": format!("{name}:1"),
            "target": {"registry": "basic", "repository": format!("production/{name}"), "tags": ["1"]}
        }))
    };

    let unsigned = unique("unsigned");
    let body = job(&unsigned)?;
    broker
        .publish_raw(&body, BasicProperties::default())
        .await?;
    let events = broker.wait_for(&unsigned).await?;
    let failed = expect_failed(&events, "invalid_signature")?;
    assert!(
        failed
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("not signed"))
    );
    assert!(
        events.iter().all(|e| e.state != JobState::Accepted),
        "refused before starting"
    );

    let forged = unique("forged");
    let body = job(&forged)?;
    broker
        .publish_raw(
            &body,
            signed(b"not-the-fleet-key-but-32-bytes-long!", &body),
        )
        .await?;
    expect_failed(&broker.wait_for(&forged).await?, "invalid_signature")?;

    // A signature over another body does not carry over.
    let tampered = unique("tampered");
    let original = job(&unique("original"))?;
    broker
        .publish_raw(&job(&tampered)?, signed(&key, &original))
        .await?;
    expect_failed(&broker.wait_for(&tampered).await?, "invalid_signature")?;

    let good = unique("good");
    let body = job(&good)?;
    broker.publish_raw(&body, signed(&key, &body)).await?;
    let done = broker.wait_for(&good).await?;
    assert_eq!(terminal(&done)?.state, JobState::Succeeded, "{done:#?}");

    let mut dead = 0;
    while broker.take_dead_letter().await?.is_some() {
        dead += 1;
    }
    assert_eq!(dead, 3, "the three refused jobs are kept");
    worker.stop().await.context("worker")
}
