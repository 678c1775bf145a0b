//! A job message's AMQP properties over the real broker.
//!
//! - Short strings that are not UTF-8 (which RabbitMQ forwards), published as raw frames
//!   between good jobs: each such message gets a coded `invalid_message` failed event naming
//!   the property and a dead-letter copy, the worker keeps its one broker session, and every
//!   good job around them succeeds.
//! - A body declared in an encoding the worker does not read is refused as such.
//! - A dead-letter copy keeps every property and header of the original, also after the job
//!   went through a delay queue for a retry.
//! - With `amqp.publish_frame_max` set small, a message with more headers than fit such a
//!   frame is still delivered (the consuming connection takes the broker's frame size), and its
//!   dead-letter copy leaves out the large header and names it.

use anyhow::{Context, Result, ensure};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::JOB_ROUTING_KEY;
use pushfleet_tests::config::{TestConfig, WorkerSettings};
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, expect_failed, job, make_image, registry_toml, terminal,
    worker_config, worker_config_with,
};
use pushfleet_tests::raw_amqp::{RawProperties, RawPublisher, RawTable, RawValue};
use pushfleet_tests::{StackEnv, docker, unique};

/// Properties of a well-formed job message.
fn good_properties() -> RawProperties {
    RawProperties {
        content_type: Some(b"application/json".to_vec()),
        delivery_mode: Some(2),
        ..RawProperties::default()
    }
}

fn headers(table: RawTable) -> RawProperties {
    RawProperties {
        headers: Some(table),
        ..good_properties()
    }
}

/// Every kind of malformed property tested, with the property the refusal must name.
fn malformed() -> Vec<(&'static str, RawProperties, &'static str)> {
    let bad = b"\xff\xfek".to_vec();
    let value = || RawValue::LongString(b"v".to_vec());
    vec![
        (
            "header name",
            headers(vec![(bad.clone(), value())]),
            "headers[",
        ),
        (
            "header name, 255 octets",
            headers(vec![(vec![0xff; 255], value())]),
            "headers[",
        ),
        (
            "key in a nested table",
            headers(vec![(
                b"outer".to_vec(),
                RawValue::Table(vec![(bad.clone(), RawValue::Int(1))]),
            )]),
            "headers[\"outer\"][",
        ),
        (
            "key in a table inside an array",
            headers(vec![(
                b"list".to_vec(),
                RawValue::Array(vec![RawValue::Table(vec![(bad.clone(), value())])]),
            )]),
            "headers[\"list\"][0][",
        ),
        (
            "message_id",
            RawProperties {
                message_id: Some(b"m-\xc3(".to_vec()),
                ..good_properties()
            },
            "message_id",
        ),
        (
            "content_type",
            RawProperties {
                content_type: Some(b"application/json\xff".to_vec()),
                ..good_properties()
            },
            "content_type",
        ),
        (
            "type",
            RawProperties {
                kind: Some(bad.clone()),
                ..good_properties()
            },
            "type",
        ),
        (
            "content_encoding",
            RawProperties {
                content_encoding: Some(b"utf-8\x80".to_vec()),
                ..good_properties()
            },
            "content_encoding",
        ),
        (
            "correlation_id",
            RawProperties {
                correlation_id: Some(bad.clone()),
                ..good_properties()
            },
            "correlation_id",
        ),
        (
            "reply_to",
            RawProperties {
                reply_to: Some(bad.clone()),
                ..good_properties()
            },
            "reply_to",
        ),
        (
            "app_id",
            RawProperties {
                app_id: Some(bad.clone()),
                ..good_properties()
            },
            "app_id",
        ),
        (
            "cluster_id",
            RawProperties {
                cluster_id: Some(bad),
                ..good_properties()
            },
            "cluster_id",
        ),
        (
            "unsupported content_encoding",
            RawProperties {
                content_encoding: Some(b"gzip".to_vec()),
                ..good_properties()
            },
            "content_encoding \"gzip\" is not supported",
        ),
    ]
}

#[tokio::test]
async fn malformed_properties_between_good_jobs_are_refused_and_the_connection_stays() -> Result<()>
{
    let env = StackEnv::load()?;
    let docker = docker(&env)?;
    let name = unique("props");
    make_image(&docker, &[&format!("{name}:1")]).await?;
    let prefix = unique("t-props");
    let worker = TestWorker::start(worker_config(&env, &prefix, &base_registries(&env)?)?).await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;
    let mut raw = RawPublisher::connect(&env.get("PUSHFLEET_AMQP_URL")?).await?;
    let exchange = worker.topology.jobs_exchange();
    let repository = format!("production/{name}");

    let mut good_ids = Vec::new();
    let mut bad = Vec::new();
    let publish_good = |n: usize| {
        job(
            &format!("{name}:1"),
            "basic",
            &repository,
            &[&format!("g{n}")],
        )
    };
    let kinds = malformed();
    for (n, (kind, properties, names)) in kinds.iter().enumerate() {
        let good = publish_good(n);
        raw.publish(
            &exchange,
            JOB_ROUTING_KEY,
            &good_properties(),
            &serde_json::to_vec(&good)?,
        )
        .await
        .with_context(|| format!("good job before {kind}"))?;
        good_ids.push(good["job_id"].as_str().unwrap_or_default().to_owned());

        let body = publish_good(1000 + n);
        raw.publish(
            &exchange,
            JOB_ROUTING_KEY,
            properties,
            &serde_json::to_vec(&body)?,
        )
        .await
        .with_context(|| format!("publishing {kind}"))?;
        bad.push((
            *kind,
            body["job_id"].as_str().unwrap_or_default().to_owned(),
            *names,
        ));
    }
    // A header *value* that is not UTF-8 is fine: long strings carry any bytes.
    let binary_value = publish_good(kinds.len());
    raw.publish(
        &exchange,
        JOB_ROUTING_KEY,
        &headers(vec![(
            b"x-bytes".to_vec(),
            RawValue::LongString(b"\xff\xfe\x00".to_vec()),
        )]),
        &serde_json::to_vec(&binary_value)?,
    )
    .await?;
    good_ids.push(
        binary_value["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    raw.close().await;

    for (kind, job_id, names) in &bad {
        let events = broker.wait_for(job_id).await?;
        let failed = expect_failed(&events, "invalid_message").with_context(|| kind.to_string())?;
        let message = &failed.error.as_ref().context("error")?.message;
        ensure!(
            message.contains(names),
            "{kind}: the error should name {names:?}: {message}"
        );
        println!("{kind:<32} -> invalid_message: {message}");
    }
    for job_id in &good_ids {
        let events = broker.wait_for(job_id).await?;
        let last = terminal(&events)?;
        ensure!(
            last.state == JobState::Succeeded,
            "good job {job_id} did not succeed: {events:#?}"
        );
    }
    let mut dead = Vec::new();
    while let Some(d) = broker.take_dead_letter().await? {
        dead.push(d);
    }
    ensure!(
        dead.len() == bad.len(),
        "{} dead letters for {} malformed messages",
        dead.len(),
        bad.len()
    );
    for d in &dead {
        let code = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-pushfleet-error-code").cloned());
        ensure!(
            code == Some(AMQPValue::LongString("invalid_message".into())),
            "dead letter without its code: {:?}",
            d.properties
        );
    }
    let sessions = worker.status.sessions_opened();
    ensure!(
        sessions == 1,
        "the worker opened {sessions} broker sessions: a malformed message took its connection down"
    );
    println!(
        "{} malformed-property messages refused, {} good jobs succeeded, 1 broker session",
        bad.len(),
        good_ids.len()
    );
    worker.stop().await
}

#[tokio::test]
async fn a_dead_letter_copy_keeps_every_property_through_a_retry() -> Result<()> {
    let env = StackEnv::load()?;
    let docker = docker(&env)?;
    let name = unique("keep");
    make_image(&docker, &[&format!("{name}:1")]).await?;
    let prefix = unique("t-keep");
    // A registry nobody listens on: registry_unreachable is retried, then the job is dead.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let password_file = env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let registries = base_registries(&env)?
        + &registry_toml(
            "closed",
            &closed_url,
            &env.get("PUSHFLEET_BASIC_USER")?,
            std::path::Path::new(&password_file),
            &["production"],
        );
    let config = worker_config_with(
        &env,
        &prefix,
        &registries,
        WorkerSettings {
            max_attempts: 2,
            retry_min_delay_ms: 200,
            retry_max_delay_s: 1,
            ..WorkerSettings::default()
        },
    )?;
    let worker = TestWorker::start(config).await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;

    let job = job(
        &format!("{name}:1"),
        "closed",
        &format!("production/{name}"),
        &["1"],
    );
    let job_id = job["job_id"].as_str().unwrap_or_default().to_owned();
    let mut nested = FieldTable::default();
    nested.insert("step".into(), AMQPValue::LongLongInt(129));
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    headers.insert("x-django".into(), AMQPValue::FieldTable(nested.clone()));
    let sent = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_message_id(job_id.as_str().into())
        .with_correlation_id("pipeline-812".into())
        .with_app_id("django-ci".into())
        .with_type("push".into())
        .with_priority(3)
        .with_timestamp(1_700_000_000)
        .with_user_id("guest".into())
        .with_headers(headers);
    broker
        .publish_raw(&serde_json::to_vec(&job)?, sent.clone())
        .await?;

    let events = broker.wait_for(&job_id).await?;
    let last = terminal(&events)?;
    ensure!(last.state == JobState::Dead, "expected dead: {events:#?}");
    ensure!(
        events.iter().any(|e| e.state == JobState::Retrying),
        "the job went through a retry: {events:#?}"
    );
    let dead = broker.take_dead_letter().await?.context("no dead letter")?;
    let got = &dead.properties;
    assert_eq!(got.content_type(), sent.content_type());
    assert_eq!(got.content_encoding(), sent.content_encoding());
    assert_eq!(got.message_id(), sent.message_id());
    assert_eq!(got.correlation_id(), sent.correlation_id());
    assert_eq!(got.app_id(), sent.app_id());
    assert_eq!(got.kind(), sent.kind());
    assert_eq!(got.priority(), sent.priority());
    assert_eq!(got.timestamp(), sent.timestamp());
    assert_eq!(got.expiration(), &None, "a dead letter must not expire");
    let h = got.headers().clone().unwrap_or_default();
    let h = h.inner();
    assert_eq!(
        h.get("traceparent"),
        sent.headers()
            .as_ref()
            .and_then(|s| s.inner().get("traceparent"))
    );
    assert_eq!(h.get("x-django"), Some(&AMQPValue::FieldTable(nested)));
    assert_eq!(
        h.get("x-pushfleet-original-user-id"),
        Some(&AMQPValue::LongString("guest".into()))
    );
    assert_eq!(
        h.get("x-pushfleet-error-code"),
        Some(&AMQPValue::LongString("registry_unreachable".into()))
    );
    assert_eq!(
        h.get("x-pushfleet-attempt"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert_eq!(
        dead.data,
        serde_json::to_vec(&job)?,
        "the body is unchanged"
    );
    worker.stop().await
}

#[tokio::test]
async fn a_small_publish_frame_max_is_honoured_by_dead_letter_copies() -> Result<()> {
    let env = StackEnv::load()?;
    let prefix = unique("t-frame");
    let mut config = TestConfig::new(&env, &prefix, &base_registries(&env)?)?;
    config.publish_frame_max = Some(16384);
    let config = config.load()?;
    let worker = TestWorker::start(config).await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;
    // 40 KiB of headers: delivered to the worker (its consuming connection takes the broker's
    // 128 KiB frames), too large for the 16 KiB frames its publishing connection asked for.
    let mut headers = FieldTable::default();
    headers.insert(
        "x-big".into(),
        AMQPValue::LongString("b".repeat(40 * 1024).into()),
    );
    headers.insert("x-small".into(), AMQPValue::LongString("kept".into()));
    let job_id = unique("frame-job");
    // A job missing every other field: refused as invalid_message and dead-lettered.
    let body = serde_json::to_vec(&serde_json::json!({ "job_id": job_id }))?;
    broker
        .publish_raw(
            &body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(job_id.as_str().into())
                .with_headers(headers),
        )
        .await?;
    let events = broker.wait_for(&job_id).await?;
    expect_failed(&events, "invalid_message")?;
    let dead = broker.take_dead_letter().await?.context("no dead letter")?;
    let h = dead.properties.headers().clone().unwrap_or_default();
    let h = h.inner();
    ensure!(
        h.get("x-big").is_none(),
        "the large header cannot fit a 16 KiB frame"
    );
    ensure!(
        h.get("x-small") == Some(&AMQPValue::LongString("kept".into())),
        "{h:?}"
    );
    let dropped = h.get(pushfleet_worker::properties::DROPPED_HEADERS_HEADER);
    ensure!(
        dropped == Some(&AMQPValue::LongString("x-big".into())),
        "named as dropped: {dropped:?}"
    );
    ensure!(dead.data == body, "the body is unchanged");
    worker.stop().await
}
