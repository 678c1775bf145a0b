//! A minimal AMQP 0-9-1 publisher that writes frames byte by byte, for messages no typed client
//! can send: short strings that are not UTF-8 in properties, header names and nested tables.
//! RabbitMQ accepts and forwards those, so a worker must survive them; lapin's API only takes
//! valid strings, so the tests build the frames here.
//!
//! It speaks just enough of the protocol: the handshake with PLAIN credentials, one channel in
//! confirm mode, `basic.publish` with a content header and body, and the broker's ack. Anything
//! else the broker sends (a `channel.close` for a publish it refuses, say) is an error.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one exchange with the broker may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
const CHANNEL: u16 = 1;
const CLASS_BASIC: u16 = 60;

/// A field value in a raw header table.
#[derive(Debug, Clone)]
pub enum RawValue {
    /// `S`: a long string (any bytes).
    LongString(Vec<u8>),
    /// `F`: a nested table.
    Table(RawTable),
    /// `A`: an array.
    Array(Vec<RawValue>),
    /// `I`: a signed 32-bit integer.
    Int(i32),
}

/// A header table whose keys are raw bytes (not necessarily UTF-8).
pub type RawTable = Vec<(Vec<u8>, RawValue)>;

/// Basic-class message properties as raw bytes: every short string may be any bytes.
#[derive(Debug, Clone, Default)]
pub struct RawProperties {
    /// `content-type`.
    pub content_type: Option<Vec<u8>>,
    /// `content-encoding`.
    pub content_encoding: Option<Vec<u8>>,
    /// `headers`.
    pub headers: Option<RawTable>,
    /// `delivery-mode` (2: persistent).
    pub delivery_mode: Option<u8>,
    /// `correlation-id`.
    pub correlation_id: Option<Vec<u8>>,
    /// `reply-to`.
    pub reply_to: Option<Vec<u8>>,
    /// `message-id`.
    pub message_id: Option<Vec<u8>>,
    /// `timestamp` (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// `type`.
    pub kind: Option<Vec<u8>>,
    /// `app-id`.
    pub app_id: Option<Vec<u8>>,
    /// `cluster-id` (reserved by the spec, still forwarded).
    pub cluster_id: Option<Vec<u8>>,
}

/// One connection with one channel in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    frame_max: u32,
    next_tag: u64,
}

impl RawPublisher {
    /// Connects to `amqp_url` (`amqp://user:password@host:port/vhost`) and opens channel 1 in
    /// confirm mode.
    pub async fn connect(amqp_url: &str) -> Result<Self> {
        let url = url::Url::parse(amqp_url).context("AMQP URL")?;
        let host = url.host_str().context("AMQP URL has no host")?.to_owned();
        let port = url.port().unwrap_or(5672);
        let user = percent_decode(url.username());
        let password = percent_decode(url.password().unwrap_or_default());
        let vhost = match url.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            v => percent_decode(v),
        };
        let stream = step(TcpStream::connect((host.as_str(), port))).await??;
        let mut this = Self {
            stream,
            frame_max: 4096,
            next_tag: 1,
        };
        this.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        this.expect_method(0, 10, 10).await?; // connection.start

        let mut start_ok = method(10, 11);
        put_table(&mut start_ok, &[]);
        put_short(&mut start_ok, b"PLAIN");
        let mut response = vec![0];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(password.as_bytes());
        put_long(&mut start_ok, &response);
        put_short(&mut start_ok, b"en_US");
        this.send(FRAME_METHOD, 0, &start_ok).await?;

        let tune = this.expect_method(0, 10, 30).await?; // connection.tune
        ensure!(tune.len() >= 8, "short connection.tune");
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        this.frame_max = if frame_max == 0 { 131_072 } else { frame_max };
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&channel_max.to_be_bytes());
        tune_ok.extend_from_slice(&this.frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        this.send(FRAME_METHOD, 0, &tune_ok).await?;

        let mut open = method(10, 40);
        put_short(&mut open, vhost.as_bytes());
        put_short(&mut open, b"");
        open.push(0);
        this.send(FRAME_METHOD, 0, &open).await?;
        this.expect_method(0, 10, 41).await?; // connection.open-ok

        let mut channel_open = method(20, 10);
        put_short(&mut channel_open, b"");
        this.send(FRAME_METHOD, CHANNEL, &channel_open).await?;
        this.expect_method(CHANNEL, 20, 11).await?;

        let mut select = method(85, 10);
        select.push(0); // nowait: false
        this.send(FRAME_METHOD, CHANNEL, &select).await?;
        this.expect_method(CHANNEL, 85, 11).await?;
        Ok(this)
    }

    /// Publishes `body` with `properties` to `exchange`/`routing_key` and waits for the
    /// broker's ack; a nack or a channel close is an error.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &RawProperties,
        body: &[u8],
    ) -> Result<()> {
        let mut publish = method(CLASS_BASIC, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        put_short(&mut publish, exchange.as_bytes());
        put_short(&mut publish, routing_key.as_bytes());
        publish.push(0); // mandatory, immediate: false
        self.send(FRAME_METHOD, CHANNEL, &publish).await?;

        let mut header = Vec::new();
        header.extend_from_slice(&CLASS_BASIC.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&u64::try_from(body.len())?.to_be_bytes());
        encode_properties(&mut header, properties);
        self.send(FRAME_HEADER, CHANNEL, &header).await?;

        let max_body = usize::try_from(self.frame_max)? - 8;
        for chunk in body.chunks(max_body) {
            self.send(FRAME_BODY, CHANNEL, chunk).await?;
        }

        let tag = self.next_tag;
        self.next_tag += 1;
        let (channel, payload) = self.read_method_frame().await?;
        let (class, id) = class_and_method(&payload)?;
        match (channel, class, id) {
            (CHANNEL, CLASS_BASIC, 80) => {
                let acked = u64::from_be_bytes(payload[4..12].try_into()?);
                ensure!(acked == tag, "broker acked {acked}, expected {tag}");
                Ok(())
            }
            (CHANNEL, CLASS_BASIC, 120) => bail!("the broker nacked publish {tag}"),
            (_, 20, 40) | (_, 10, 50) => bail!(
                "the broker closed the {} on publish {tag}: {}",
                if class == 20 { "channel" } else { "connection" },
                String::from_utf8_lossy(&close_text(&payload))
            ),
            other => bail!("unexpected frame {other:?} after publish {tag}"),
        }
    }

    /// Closes the connection politely (best effort).
    pub async fn close(mut self) {
        let mut close = method(10, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        put_short(&mut close, b"done");
        close.extend_from_slice(&0u16.to_be_bytes());
        close.extend_from_slice(&0u16.to_be_bytes());
        if self.send(FRAME_METHOD, 0, &close).await.is_ok() {
            let _ = self.expect_method(0, 10, 51).await;
        }
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        step(self.stream.write_all(&frame)).await??;
        Ok(())
    }

    /// Reads frames until a method frame (heartbeats are skipped).
    async fn read_method_frame(&mut self) -> Result<(u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            step(self.stream.read_exact(&mut head)).await??;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
            let mut payload = vec![0u8; usize::try_from(size)? + 1];
            step(self.stream.read_exact(&mut payload)).await??;
            ensure!(
                payload.pop() == Some(FRAME_END),
                "frame without its end octet"
            );
            let channel = u16::from_be_bytes([head[1], head[2]]);
            match head[0] {
                FRAME_METHOD => return Ok((channel, payload)),
                8 => continue, // heartbeat
                other => bail!("unexpected frame type {other}"),
            }
        }
    }

    /// Reads the next method and checks it is `class.id` on `channel`; returns its arguments.
    async fn expect_method(&mut self, channel: u16, class: u16, id: u16) -> Result<Vec<u8>> {
        let (got_channel, payload) = self.read_method_frame().await?;
        let got = class_and_method(&payload)?;
        if (got_channel, got) != (channel, (class, id)) {
            bail!(
                "expected method {class}.{id} on channel {channel}, got {}.{} on {got_channel}: {}",
                got.0,
                got.1,
                String::from_utf8_lossy(&close_text(&payload))
            );
        }
        Ok(payload[4..].to_vec())
    }
}

async fn step<F: std::future::Future>(f: F) -> Result<F::Output> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not answer within {STEP_TIMEOUT:?}"))
}

fn class_and_method(payload: &[u8]) -> Result<(u16, u16)> {
    ensure!(payload.len() >= 4, "method frame too short");
    Ok((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// The reply text of a `close` method (after the 2-octet reply code), for error messages.
fn close_text(payload: &[u8]) -> Vec<u8> {
    let Some(&len) = payload.get(6) else {
        return Vec::new();
    };
    payload
        .get(7..7 + usize::from(len))
        .unwrap_or_default()
        .to_vec()
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_table(out: &mut Vec<u8>, table: &[(Vec<u8>, RawValue)]) {
    let mut entries = Vec::new();
    for (key, value) in table {
        put_short(&mut entries, key);
        put_value(&mut entries, value);
    }
    put_long(out, &entries);
}

fn put_value(out: &mut Vec<u8>, value: &RawValue) {
    match value {
        RawValue::LongString(s) => {
            out.push(b'S');
            put_long(out, s);
        }
        RawValue::Table(t) => {
            out.push(b'F');
            put_table(out, t);
        }
        RawValue::Array(items) => {
            out.push(b'A');
            let mut inner = Vec::new();
            for item in items {
                put_value(&mut inner, item);
            }
            put_long(out, &inner);
        }
        RawValue::Int(i) => {
            out.push(b'I');
            out.extend_from_slice(&i.to_be_bytes());
        }
    }
}

/// Property flags (bit 15 = content-type, ..., bit 2 = cluster-id), then the properties.
fn encode_properties(out: &mut Vec<u8>, p: &RawProperties) {
    let mut flags: u16 = 0;
    let mut body = Vec::new();
    let short = |bit: u16, value: &Option<Vec<u8>>, flags: &mut u16, body: &mut Vec<u8>| {
        if let Some(v) = value {
            *flags |= 1 << bit;
            put_short(body, v);
        }
    };
    short(15, &p.content_type, &mut flags, &mut body);
    short(14, &p.content_encoding, &mut flags, &mut body);
    if let Some(h) = &p.headers {
        flags |= 1 << 13;
        put_table(&mut body, h);
    }
    if let Some(mode) = p.delivery_mode {
        flags |= 1 << 12;
        body.push(mode);
    }
    short(10, &p.correlation_id, &mut flags, &mut body);
    short(9, &p.reply_to, &mut flags, &mut body);
    short(7, &p.message_id, &mut flags, &mut body);
    if let Some(t) = p.timestamp {
        flags |= 1 << 6;
        body.extend_from_slice(&t.to_be_bytes());
    }
    short(5, &p.kind, &mut flags, &mut body);
    short(3, &p.app_id, &mut flags, &mut body);
    short(2, &p.cluster_id, &mut flags, &mut body);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&body);
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
