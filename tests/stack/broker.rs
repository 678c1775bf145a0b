//! The topology declares on a real RabbitMQ and a job round-trips through it.

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, types::AMQPValue};
use pushfleet_shared::PushJob;
use pushfleet_shared::topology::{JOB_ROUTING_KEY, Topology};
use pushfleet_tests::{StackEnv, unique};
use pushfleet_worker::broker::{ConfirmedPublisher, connect, declare_topology};
use serde_json::json;

#[tokio::test]
async fn topology_declares_twice_and_a_job_round_trips() -> anyhow::Result<()> {
    let env = StackEnv::load()?;
    let conn = connect(&env.get("PUSHFLEET_AMQP_URL")?, "test-broker").await?;
    let topology = Topology::new(&unique("t"));
    let publisher = ConfirmedPublisher::open(&conn).await?;
    declare_topology(publisher.channel(), &topology).await?;
    // Declaring again with the same arguments must be a no-op, not a channel error.
    declare_topology(publisher.channel(), &topology).await?;

    let job = PushJob::from_slice(&serde_json::to_vec(&json!({
        "version": 1, "job_id": unique("job"), "source": "myapp:0722",
        "target": {"registry": "basic", "repository": "production/myapp", "tags": ["0722"]},
        "metadata": {"pipeline_run": 812}
    }))?)?;
    publisher
        .publish_raw(
            &topology.jobs_exchange(),
            JOB_ROUTING_KEY,
            &job.job.to_json(),
            pushfleet_worker::broker::json(BasicProperties::default()),
        )
        .await?;

    let channel = conn.create_channel().await?;
    let got = channel
        .basic_get(
            topology.jobs_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the published job is not in {}", topology.jobs_queue()))?;
    let back = PushJob::from_slice(&got.delivery.data)?;
    assert_eq!(back, job);
    assert_eq!(
        got.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2));
    got.delivery.ack(BasicAckOptions::default()).await?;

    // The jobs queue really is a quorum queue: a passive declare of it as a classic queue
    // with other arguments would fail; the broker reports its type in the delivery headers
    // of redelivered messages only, so check through a declare with mismatching arguments.
    let mismatch = conn.create_channel().await?;
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let err = mismatch
        .queue_declare(
            topology.jobs_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    assert!(
        err.is_err(),
        "redeclaring the jobs queue as classic must fail: it is quorum"
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// Broker-only mode (for benchmarks of the broker side) runs every job through consume,
/// parse, plan, events and ack, and touches neither daemon nor registry: a job for an image
/// the daemon does not have still "succeeds", with the all-zero digest.
#[tokio::test]
async fn broker_only_mode_settles_jobs_without_daemon_or_registry() -> anyhow::Result<()> {
    use pushfleet_tests::fleet::{Broker, base_registries, job, terminal, worker_config};
    use std::sync::Arc;

    let env = StackEnv::load()?;
    let prefix = unique("t-brokeronly");
    let config = Arc::new(worker_config(&env, &prefix, &base_registries(&env)?)?);
    let topology = config.amqp.topology();
    let status = Arc::new(pushfleet_worker::runner::WorkerStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let worker = tokio::spawn(pushfleet_worker::runner::run_broker_only(
        Arc::clone(&config),
        Arc::clone(&status),
        async move { token.cancelled().await },
    ));
    let mut broker = Broker::connect(&env, &topology).await?;
    let mut ids = Vec::new();
    for i in 0..50 {
        let j = job(
            &unique("nowhere"),
            "basic",
            "production/none",
            &[&format!("t{i}")],
        );
        ids.push(j["job_id"].as_str().unwrap_or_default().to_owned());
        broker.publish_job(&j).await?;
    }
    for id in &ids {
        let events = broker.wait_for(id).await?;
        let done = terminal(&events)?;
        anyhow::ensure!(
            done.state == pushfleet_shared::event::JobState::Succeeded
                && done.digest.as_deref() == Some(pushfleet_worker::delivery::BROKER_ONLY_DIGEST),
            "{events:#?}"
        );
    }
    stop.cancel();
    worker.await??;
    pushfleet_tests::process::delete_topology_on(
        &env.get("PUSHFLEET_AMQP_URL")?,
        topology.prefix(),
    )
    .await;
    Ok(())
}
