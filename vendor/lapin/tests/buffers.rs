//! pushfleet patch: a connection's I/O buffers start small and grow only when a frame needs
//! it. Against a real RabbitMQ (`AMQP_ADDR`, else `PUSHFLEET_AMQP_URL`, else the local
//! default), with the broker's own `frame_max` (128 KiB on a default RabbitMQ):
//!
//! - eight idle connections cost a few MiB of resident memory, not the 8 MiB each that
//!   buffers of 32 frames of 128 KiB took when they were allocated and zero-filled at once;
//! - a message whose content header is larger than the initial buffers (it cannot be split
//!   over frames), with a body of several frames, still goes out and comes back intact.
//!
//! One test, so that nothing else in this binary allocates while memory is measured.

use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const CONNECTIONS: usize = 8;
/// What the old buffers alone made resident per connection was 8 MiB; allow a quarter of it.
const MAX_GROWTH_PER_CONNECTION: u64 = 2 * 1024 * 1024;

fn amqp_addr() -> String {
    std::env::var("AMQP_ADDR")
        .or_else(|_| std::env::var("PUSHFLEET_AMQP_URL"))
        .unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned())
}

/// This process's resident memory, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn connect() -> Connection {
    let conn = Connection::connect(&amqp_addr(), ConnectionProperties::default())
        .await
        .expect("connect");
    // A round trip after the handshake: the I/O loop has finished its setup by then.
    conn.create_channel().await.expect("channel");
    conn
}

#[tokio::test]
async fn buffers_start_small_and_grow_for_large_frames() {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .expect("a frame larger than the initial buffers must not stall the connection");
}

async fn run() {
    // Warm up allocator and runtime with one connection before measuring.
    let first = connect().await;
    let frame_max = first.configuration().frame_max() as usize;
    assert!(
        frame_max > 64 * 1024,
        "the broker offers a frame_max of {frame_max}"
    );

    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..CONNECTIONS {
        idle.push(connect().await);
    }
    let growth = rss().saturating_sub(before);
    assert!(
        growth < CONNECTIONS as u64 * MAX_GROWTH_PER_CONNECTION,
        "{CONNECTIONS} idle connections grew the resident memory by {growth} bytes"
    );

    // A content header close to frame_max, and a body of several frames.
    let publisher = &idle[0];
    let consumer = &idle[1];
    let out = publisher.create_channel().await.expect("channel");
    let input = consumer.create_channel().await.expect("channel");
    let queue = input
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    let padding = "p".repeat(frame_max - 1024);
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-padding"),
        AMQPValue::LongString(LongString::from(padding.as_str())),
    );
    let body: Vec<u8> = (0..(4 * frame_max + 17)).map(|i| (i % 251) as u8).collect();
    let mut deliveries = input
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    out.basic_publish(
        "".into(),
        queue.name().clone(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish");

    let delivery = std::future::poll_fn(|cx| {
        use futures_core::Stream;
        std::pin::Pin::new(&mut deliveries).poll_next(cx)
    })
    .await
    .expect("a delivery")
    .expect("no error");
    assert_eq!(delivery.data, body);
    let got = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-padding").cloned());
    assert!(
        matches!(&got, Some(AMQPValue::LongString(s)) if s.as_bytes().len() == padding.len()),
        "the large header came back intact"
    );
    drop(first);
}
