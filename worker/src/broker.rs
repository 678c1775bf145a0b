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

/// How long a publish may wait for the broker's confirm before it counts as failed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or a channel operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not confirm a publish in time.
    #[error("the broker did not confirm the publish within {0:?}")]
    ConfirmTimeout(Duration),
    /// The broker refused a publish (basic.nack, e.g. a full queue with `reject-publish`).
    #[error("the broker refused the publish to {exchange} ({routing_key})")]
    Nacked {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
}

/// Opens a connection named `name` (shown in the management UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
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
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            binding_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
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

    /// Publishes a persistent JSON message and waits for the broker's confirm (at most
    /// [`PUBLISH_TIMEOUT`]).
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let properties = properties.with_content_type(topology::CONTENT_TYPE_JSON.into());
        self.publish_raw(exchange, routing_key, body, properties)
            .await
    }

    /// Publishes a persistent message with `properties` as given and waits for the broker's
    /// confirm (at most [`PUBLISH_TIMEOUT`]).
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
