//! The RabbitMQ side: connecting, declaring the topology of [`pushfleet_shared::topology`],
//! and publishing with confirms.
//!
//! lapin's guidance is one connection per process with cheap channels; the worker opens two,
//! one for consuming and one for publishing, because RabbitMQ's flow control blocks a whole
//! connection: a broker under memory pressure that throttles publishers must not also stop the
//! worker from acking the jobs it has finished.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use pushfleet_shared::topology::{self, ExchangeKind, QueueArg, QueueSpec, Topology};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

/// How long a publish may wait for the broker's confirm before it counts as failed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publish left unconfirmed by a lost connection waits for the next broker
/// session to be published again (see [`SessionPublisher`]).
pub const REPUBLISH_WITHIN: Duration = Duration::from_secs(60);
/// The smallest frame AMQP allows, assumed while no connection says otherwise.
const FRAME_MIN_SIZE: u32 = 4096;

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or a channel operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not confirm a publish in time.
    #[error("the broker did not confirm the publish within {0:?}")]
    ConfirmTimeout(Duration),
    /// No broker URL was configured.
    #[error("no broker node is configured")]
    NoNodes,
    /// A broker URL could not be read (not echoed: it may hold a password).
    #[error("the broker URL is not a valid AMQP URI")]
    InvalidUrl,
    /// No broker session came back in time to publish again what a lost one left
    /// unconfirmed.
    #[error("no broker connection within {0:?} to publish again")]
    NotConnected(Duration),
    /// The broker refused a publish (basic.nack, e.g. a full queue with `reject-publish`).
    #[error("the broker refused the publish to {exchange} ({routing_key})")]
    Nacked {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
}

/// Opens a connection named `name` (shown in the management UI) to `url`, taking the frame
/// size the broker offers.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    connect_with_frame_max(url, name, None).await
}

/// Like [`connect`], asking for frames of at most `frame_max` bytes when given (the broker
/// may negotiate it lower; lapin never goes below 8 KiB). Only the publishing connection may
/// be given one (`amqp.publish_frame_max`): a copy it publishes is kept within the frame size
/// it negotiated (see [`crate::properties::copy_of`]). The consuming connection must take the
/// broker's offer, since a content header larger than its frame size cannot be delivered to
/// it.
pub async fn connect_with_frame_max(
    url: &str,
    name: &str,
    frame_max: Option<u32>,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match frame_max {
        None => Ok(Connection::connect(url, props).await?),
        Some(frame_max) => {
            // The parse error is not kept: it may quote the URL, password included.
            let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|_| BrokerError::InvalidUrl)?;
            uri.query.frame_max = Some(frame_max);
            Ok(Connection::connect_uri(uri, props).await?)
        }
    }
}

/// Connects to the first node of `urls` that answers, trying them in order from `start`
/// (wrapping around); returns the connection and the index of the node. With one URL this is
/// [`connect_with_frame_max`]. The error is the last node's.
pub async fn connect_any(
    urls: &[SecretString],
    start: usize,
    name: &str,
    frame_max: Option<u32>,
) -> Result<(Connection, usize), BrokerError> {
    let mut last = BrokerError::NoNodes;
    for offset in 0..urls.len() {
        let index = (start + offset) % urls.len();
        match connect_with_frame_max(urls[index].expose_secret(), name, frame_max).await {
            Ok(conn) => return Ok((conn, index)),
            Err(e) => {
                if urls.len() > 1 {
                    tracing::warn!(node = index + 1, error = %e, "broker node unreachable; trying the next");
                }
                last = e;
            }
        }
    }
    Err(last)
}

fn field_table(args: &[(String, QueueArg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let v = match value {
            QueueArg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            QueueArg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert(ShortString::from(key.as_str()), v);
    }
    table
}

/// Declares every exchange and queue of `topology` and binds them. Idempotent: declaring what
/// exists with the same arguments is a no-op; different arguments make the broker close the
/// channel with PRECONDITION_FAILED, which is returned as an error.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    for exchange in topology.exchanges() {
        let kind = match exchange.kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for queue in topology.queues() {
        declare_queue(channel, &queue).await?;
    }
    Ok(())
}

/// Declares one durable queue with its arguments and binds it.
pub async fn declare_queue(channel: &Channel, queue: &QueueSpec) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            queue.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            field_table(&queue.arguments),
        )
        .await?;
    channel
        .queue_bind(
            queue.name.as_str().into(),
            queue.bound_to.as_str().into(),
            queue.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Subscribes to `exchange` through a server-named, exclusive, auto-deleted queue bound with
/// `binding_key`: a private view (events for `submit --wait`, control requests for a worker)
/// that disappears with the connection. Messages are auto-acked.
pub async fn subscribe_exclusive(
    channel: &Channel,
    exchange: &str,
    binding_key: &str,
) -> Result<Consumer, BrokerError> {
    subscribe_exclusive_to(channel, &[(exchange, binding_key)]).await
}

/// Like [`subscribe_exclusive`], with the queue bound once for each `(exchange, binding key)`
/// of `bindings` (a tap on several exchanges sees all they route to it, in one stream).
pub async fn subscribe_exclusive_to(
    channel: &Channel,
    bindings: &[(&str, &str)],
) -> Result<Consumer, BrokerError> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for (exchange, binding_key) in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                (*exchange).into(),
                (*binding_key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

/// A channel in confirm mode, for publishes that must be known to have reached the broker.
#[derive(Debug, Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
    frame_max: u32,
}

impl ConfirmedPublisher {
    /// Puts a new channel of `connection` in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            frame_max: connection.configuration().frame_max(),
        })
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The largest frame the connection takes (negotiated with the broker): a message's
    /// properties must fit in one.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Publishes a persistent message with `properties` as given (JSON: give [`json`]
    /// properties) and waits for the broker's confirm (at most [`PUBLISH_TIMEOUT`]).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let properties = properties.with_delivery_mode(2);
        let publish = async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        };
        let confirmation = tokio::time::timeout(PUBLISH_TIMEOUT, publish)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(PUBLISH_TIMEOUT))??;
        if confirmation.is_nack() {
            return Err(BrokerError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }
}

/// Where the run loop puts each broker session's publisher; [`SessionPublisher`]s read it.
#[derive(Debug)]
pub struct PublisherSlot {
    current: watch::Sender<Option<ConfirmedPublisher>>,
}

impl Default for PublisherSlot {
    fn default() -> Self {
        Self {
            current: watch::channel(None).0,
        }
    }
}

impl PublisherSlot {
    /// Makes `publisher` the current one (a new session), or none (the session is lost).
    pub fn set(&self, publisher: Option<ConfirmedPublisher>) {
        self.current.send_replace(publisher);
    }

    /// A handle publishing through whichever session is current.
    pub fn publisher(&self) -> SessionPublisher {
        SessionPublisher {
            current: self.current.subscribe(),
        }
    }
}

/// A message for [`SessionPublisher::publish`]: where it goes, and what it is.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The exchange.
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body, as published.
    pub body: &'a [u8],
    /// The properties, as given (made persistent when published).
    pub properties: BasicProperties,
}

/// `properties` marked as a JSON message (`content_type: application/json`).
pub fn json(properties: BasicProperties) -> BasicProperties {
    properties.with_content_type(topology::CONTENT_TYPE_JSON.into())
}

/// Publishes with confirms through the current broker session, and survives the loss of a
/// node: a publish whose channel dies before the broker confirmed it (the node went away, the
/// connection broke) waits for the next session, at most [`REPUBLISH_WITHIN`], and is
/// published again there. The message may then exist twice (the first copy may have reached
/// the broker before the confirm was lost): events carry an `event_id` to dedupe by, and a
/// job's copies are harmless (see the pipeline's redelivery check). A publish the broker
/// refused (nack) is not repeated.
#[derive(Debug, Clone)]
pub struct SessionPublisher {
    current: watch::Receiver<Option<ConfirmedPublisher>>,
}

impl SessionPublisher {
    /// The current session's publisher, waiting at most [`REPUBLISH_WITHIN`] for one.
    pub async fn current(&self) -> Result<ConfirmedPublisher, BrokerError> {
        self.current_until(tokio::time::Instant::now() + REPUBLISH_WITHIN)
            .await
    }

    async fn current_until(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<ConfirmedPublisher, BrokerError> {
        let mut rx = self.current.clone();
        let wait = rx.wait_for(|p| p.as_ref().is_some_and(|p| p.channel.status().connected()));
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(p)) => p
                .as_ref()
                .cloned()
                .ok_or(BrokerError::NotConnected(REPUBLISH_WITHIN)),
            _ => Err(BrokerError::NotConnected(REPUBLISH_WITHIN)),
        }
    }

    /// The current connection's largest frame (the smallest AMQP allows while there is none).
    pub fn frame_max(&self) -> u32 {
        self.current
            .borrow()
            .as_ref()
            .map_or(FRAME_MIN_SIZE, ConfirmedPublisher::frame_max)
    }

    /// As [`ConfirmedPublisher::publish_raw`], published again on the next session when the
    /// current one is lost first (JSON: give [`json`] properties).
    pub async fn publish(&self, message: Message<'_>) -> Result<(), BrokerError> {
        let Message {
            exchange,
            routing_key,
            body,
            properties,
        } = message;
        let deadline = tokio::time::Instant::now() + REPUBLISH_WITHIN;
        loop {
            let publisher = self.current_until(deadline).await?;
            let result = publisher
                .publish_raw(exchange, routing_key, body, properties.clone())
                .await;
            match result {
                Err(e @ BrokerError::Nacked { .. }) => return Err(e),
                Err(e)
                    if !publisher.channel.status().connected()
                        && tokio::time::Instant::now() < deadline =>
                {
                    // `current` waits for a connected channel: the next session's.
                    tracing::warn!(error = %e, exchange, "publish unconfirmed when the broker session was lost; publishing again on the next session");
                }
                other => return other,
            }
        }
    }
}
