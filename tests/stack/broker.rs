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
        .publish_json(
            &topology.jobs_exchange(),
            JOB_ROUTING_KEY,
            &job.job.to_json(),
            BasicProperties::default(),
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
