//! Secret hygiene end to end: an in-process worker runs the failure scenarios with a
//! distinctive password (the canary), and every log line it emits (TRACE and up, plain and
//! JSON, including `log` records of its dependencies), every message it publishes (events,
//! retry copies, dead letters, with their headers), and every error it produces is searched
//! for the canary and for the real passwords of the stack users it logged in as: in plain
//! text, JSON-escaped, percent-encoded, and base64 (standard and URL-safe, at every byte
//! alignment, alone, as `user:password` and as Docker's `{"username":..,"password":..}`).
//!
//! Scenarios, one job each, on one worker whose catalogue takes the canary from all three
//! password sources (`password_file`, `password_env`, `docker_config`):
//! - wrong password on the basic-auth registry (`registry_auth_failed`), from each source;
//! - wrong password on the token registry: the token server refuses it (`registry_auth_failed`);
//! - insufficient scope: the token registry's `pusher` (real password) in `team-b`;
//! - unreachable registry with the canary (`registry_unreachable`, retried, then `dead`);
//! - TLS: the TLS registry with an unrelated CA (`registry_tls_failed`), and with the right CA
//!   but the canary (`registry_auth_failed`), when the stack has a TLS registry;
//! - successful pushes as `oddpass` (password file) and as the basic user (`docker_config`),
//!   whose real passwords must not show either.
//!
//! A second test gives the canary to the AMQP connection, which the broker refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use futures_util::StreamExt;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, Consumer};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::{JOB_ROUTING_KEY, MAX_RETRY_BUCKET, Topology};
use pushfleet_tests::fleet::make_image;
use pushfleet_tests::{StackEnv, docker, unique};
use pushfleet_worker::broker::{
    ConfirmedPublisher, connect, declare_topology, subscribe_exclusive_to,
};
use pushfleet_worker::config::{Config, load_from_str};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The distinctive password of every failure scenario.
const CANARY: &str = "Zq9-S3CR3T-pushfleet-canary-7f1";

/// How long the scenarios may take together (the unreachable one is retried once).
const WAIT: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------------------
// Log capture

/// Log output, shared between the subscriber's writers and the test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn lines_from(&self, offset: usize) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Both formats the worker can log in (`PUSHFLEET_LOG_FORMAT=json` or not), at TRACE, into
/// `buffer`.
fn capture_layers<S>(buffer: &LogBuffer) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let plain = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(buffer.clone());
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(buffer.clone());
    plain
        .and_then(json)
        .with_filter(tracing_subscriber::filter::LevelFilter::TRACE)
}

/// Secret tests running now: the global capture records only while one is.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// The process-wide capture, for threads other than the test's (lapin's I/O loop runs on its
/// own thread, for instance), installed once with the `log` bridge. None when another global
/// subscriber was installed first.
fn global_capture() -> Option<&'static LogBuffer> {
    static GLOBAL: OnceLock<Option<LogBuffer>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let buffer = LogBuffer::default();
            let active =
                tracing_subscriber::filter::filter_fn(|_| ACTIVE.load(Ordering::SeqCst) > 0);
            tracing_subscriber::registry()
                .with(capture_layers(&buffer).with_filter(active))
                .try_init()
                .ok()
                .map(|()| buffer)
        })
        .as_ref()
}

/// Captures every log line from creation to [`lines`](Self::lines): the test thread's (where
/// the `#[tokio::test]` current-thread runtime runs the worker's tasks) through a thread-local
/// subscriber, and every other thread's through the global one.
struct Capture {
    local: LogBuffer,
    global_from: Option<usize>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Capture {
    fn start() -> Self {
        let global = global_capture();
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        let local = LogBuffer::default();
        let subscriber = tracing_subscriber::registry().with(capture_layers(&local));
        let guard = tracing::subscriber::set_default(subscriber);
        if global.is_none() {
            println!(
                "note: another global tracing subscriber exists; only the test thread's logs \
                 are captured"
            );
        }
        Self {
            local,
            global_from: global.map(LogBuffer::len),
            _guard: guard,
        }
    }

    /// (the test thread's lines, other threads' lines)
    fn lines(&self) -> (Vec<String>, Vec<String>) {
        let other = match (global_capture(), self.global_from) {
            (Some(global), Some(from)) => global.lines_from(from),
            _ => Vec::new(),
        };
        (self.local.lines_from(0), other)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The scan

/// One secret to look for, with the user it is used with.
struct Secret {
    label: &'static str,
    user: String,
    value: String,
}

/// Every form of every secret the worker could emit, each with a label saying which.
fn needles(secrets: &[Secret]) -> Vec<(String, String)> {
    let engines = [
        ("base64", base64::engine::general_purpose::STANDARD),
        (
            "base64-nopad",
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ),
        ("base64url", base64::engine::general_purpose::URL_SAFE),
        (
            "base64url-nopad",
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ];
    let mut out = BTreeMap::new();
    for secret in secrets {
        let s = &secret.value;
        let json_escaped = serde_json::to_string(s).unwrap_or_default();
        let json_escaped = json_escaped.trim_matches('"').to_owned();
        let percent: String = s
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        for (form, text) in [
            ("plain", s.clone()),
            ("json-escaped", json_escaped),
            ("percent-encoded", percent),
        ] {
            out.entry(text)
                .or_insert_with(|| format!("{} ({form})", secret.label));
        }
        let payloads = [
            ("password", s.clone()),
            ("user:password", format!("{}:{s}", secret.user)),
            (
                "docker auth JSON",
                json!({"username": secret.user, "password": s}).to_string(),
            ),
        ];
        for (what, payload) in payloads {
            for (name, engine) in &engines {
                // Inside a longer encoding the payload starts at any of 3 byte offsets. With k
                // bytes before it, the characters that depend on the payload's bits alone are
                // those from ceil(8k/6) to floor(8(k+len)/6): padding and the neighbours'
                // bits fall outside, so one window per offset finds it anywhere.
                for k in 0..3_usize {
                    let mut bytes = vec![0_u8; k];
                    bytes.extend_from_slice(payload.as_bytes());
                    let encoded = engine.encode(&bytes);
                    let start = (8 * k).div_ceil(6);
                    let end = (8 * bytes.len()) / 6;
                    if let Some(window) = encoded.get(start..end) {
                        out.entry(window.to_owned()).or_insert_with(|| {
                            format!("{} ({name} of {what}, offset {k})", secret.label)
                        });
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|(needle, label)| (label, needle))
        .collect()
}

/// Where each needle was found: `(corpus item, needle label)`.
fn scan(corpus: &[(String, Vec<u8>)], needles: &[(String, String)]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (where_, bytes) in corpus {
        for (label, needle) in needles {
            let needle = needle.as_bytes();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push((where_.clone(), label.clone()));
            }
        }
    }
    found
}

/// Fails listing the findings (by label: a real password is not printed) and prints counts.
fn assert_clean(corpus: &[(String, Vec<u8>)], needles: &[(String, String)]) -> Result<()> {
    let found = scan(corpus, needles);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (where_, _) in corpus {
        let kind = where_.split(' ').next().unwrap_or(where_);
        *counts.entry(kind).or_default() += 1;
    }
    println!(
        "scanned {} items {counts:?} for {} needle forms: {} occurrences",
        corpus.len(),
        needles.len(),
        found.len()
    );
    if !found.is_empty() {
        let listing: Vec<String> = found
            .iter()
            .take(40)
            .map(|(where_, label)| format!("  {label} in {where_}"))
            .collect();
        bail!(
            "{} secret occurrences:\n{}",
            found.len(),
            listing.join("\n")
        );
    }
    Ok(())
}

#[test]
fn the_scan_finds_planted_secrets() {
    // The scan must not pass vacuously: every encoding it claims to cover is found.
    let secret = Secret {
        label: "canary",
        user: "pushfleet".into(),
        value: CANARY.into(),
    };
    let needles = needles(&[secret]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth_json = json!({"username": "pushfleet", "password": CANARY, "serveraddress": "r:1"});
    let planted = [
        format!("error=\"login {CANARY} refused\""),
        format!("{{\"message\":\"x\\\"{CANARY}\"}}"),
        format!(
            "Authorization: Basic {}",
            b64.encode(format!("pushfleet:{CANARY}"))
        ),
        format!("X-Registry-Auth: {}", url.encode(auth_json.to_string())),
        format!("X-Registry-Auth: {}", b64.encode(auth_json.to_string())),
        format!("a{}", b64.encode(format!("x{CANARY}"))),
        format!("b{}", url.encode(format!("xy{CANARY}yx"))),
        format!("amqp://guest:{CANARY}@rabbit"),
    ];
    for text in planted {
        let found = scan(&[("planted".into(), text.clone().into_bytes())], &needles);
        assert!(!found.is_empty(), "not found in {text}");
    }
    let clean = scan(
        &[(
            "clean".into(),
            b"amqp://guest:***@rabbit Zq9-S3CR3T".to_vec(),
        )],
        &needles,
    );
    assert!(clean.is_empty(), "{clean:?}");
}

/// How many JSON log lines each crate (the target's first segment) wrote.
fn targets<'a>(lines: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(target) = value["target"].as_str()
        {
            let krate = target.split("::").next().unwrap_or(target).to_owned();
            *counts.entry(krate).or_default() += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// The broker tap

/// One message the worker published, as the broker delivered it.
struct Published {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    /// The properties (headers included), as text.
    properties: String,
}

/// An exclusive queue bound to every exchange the worker publishes to (events, retry,
/// dead-letter), keeping each message raw.
struct Tap {
    conn: Connection,
    consumer: Consumer,
    topology: Topology,
    published: Vec<Published>,
}

impl Tap {
    async fn open(env: &StackEnv, topology: &Topology) -> Result<Self> {
        let conn = connect(&env.get("PUSHFLEET_AMQP_URL")?, "pushfleet-tests secrets").await?;
        let publisher = ConfirmedPublisher::open(&conn).await?;
        declare_topology(publisher.channel(), topology).await?;
        // The retry exchange routes by delay bucket (`delay.<n>`): every bucket is tapped.
        let mut bindings = vec![
            (topology.events_exchange(), "#".to_owned()),
            (topology.retry_exchange(), JOB_ROUTING_KEY.to_owned()),
            (topology.dead_letter_exchange(), JOB_ROUTING_KEY.to_owned()),
        ];
        for bucket in 0..=MAX_RETRY_BUCKET {
            bindings.push((
                topology.retry_exchange(),
                Topology::retry_routing_key(bucket),
            ));
        }
        let bindings: Vec<(&str, &str)> = bindings
            .iter()
            .map(|(exchange, key)| (exchange.as_str(), key.as_str()))
            .collect();
        let channel = conn.create_channel().await?;
        let consumer = subscribe_exclusive_to(&channel, &bindings).await?;
        Ok(Self {
            conn,
            consumer,
            topology: topology.clone(),
            published: Vec::new(),
        })
    }

    /// Publishes a job to the jobs exchange.
    async fn publish_job(&self, job: &serde_json::Value) -> Result<()> {
        let publisher = ConfirmedPublisher::open(&self.conn).await?;
        let properties =
            lapin::BasicProperties::default().with_content_type("application/json".into());
        publisher
            .publish_raw(
                &self.topology.jobs_exchange(),
                JOB_ROUTING_KEY,
                &serde_json::to_vec(job)?,
                properties,
            )
            .await?;
        Ok(())
    }

    /// Receives until every job in `ids` has its terminal event; returns those events by id.
    async fn wait_terminal(&mut self, ids: &BTreeSet<String>) -> Result<BTreeMap<String, Event>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut terminal = BTreeMap::new();
        while terminal.len() < ids.len() {
            let delivery = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .map_err(|_| {
                    let missing: Vec<&String> = ids
                        .iter()
                        .filter(|id| !terminal.contains_key(*id))
                        .collect();
                    anyhow!("no terminal event within {WAIT:?} for {missing:?}")
                })?
                .context("the tap's consumer ended")??;
            let published = keep(&delivery, None);
            if published.exchange == self.topology.events_exchange()
                && let Ok(event) = Event::from_slice(&published.body)
                && event.state.is_terminal()
                && let Some(id) = event.job_id.clone().filter(|id| ids.contains(id))
            {
                terminal.insert(id, event);
            }
            self.published.push(published);
        }
        Ok(terminal)
    }

    /// Takes what is still on its way (for `quiet`), then empties the dead-letter queue.
    async fn drain(&mut self, quiet: Duration) -> Result<Vec<Published>> {
        while let Ok(Some(delivery)) = tokio::time::timeout(quiet, self.consumer.next()).await {
            self.published.push(keep(&delivery?, None));
        }
        let channel = self.conn.create_channel().await?;
        let mut dead = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            dead.push(keep(&message.delivery, Some("dead-letter-queue")));
        }
        Ok(dead)
    }
}

/// A delivery kept raw; `exchange` overrides where it came from (for the dead-letter queue).
fn keep(delivery: &lapin::message::Delivery, exchange: Option<&str>) -> Published {
    Published {
        exchange: exchange.map_or_else(|| delivery.exchange.to_string(), str::to_owned),
        routing_key: delivery.routing_key.to_string(),
        body: delivery.data.clone(),
        properties: properties_text(&delivery.properties),
    }
}

/// The properties' Debug, then each header value as text (Debug escapes bytes).
fn properties_text(properties: &lapin::BasicProperties) -> String {
    let mut text = format!("{properties:?}");
    if let Some(headers) = properties.headers() {
        for (key, value) in headers.inner() {
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            text.push_str(&format!("\n{key}={value}"));
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// One job and what must become of it (None: success).
struct Scenario {
    registry: &'static str,
    repository_ns: &'static str,
    expect: Option<&'static str>,
}

fn registry_entry(key: &str, url: &str, namespaces: &str, auth: &str) -> String {
    format!("\n[registries.{key}]\nurl = \"{url}\"\nnamespaces = [{namespaces}]\n{auth}\n")
}

fn write_file(dir: &std::path::Path, name: &str, content: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.display().to_string())
}

fn docker_config_json(host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    json!({"auths": {host: {"auth": auth}}}).to_string()
}

#[tokio::test]
async fn no_secret_leaks_from_failing_or_succeeding_jobs() -> Result<()> {
    let capture = Capture::start();
    let env = StackEnv::load()?;
    let dir = tempfile::tempdir()?;
    let canary_file = write_file(dir.path(), "canary", &format!("{CANARY}\n"))?;

    let basic = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let basic_user = env.get("PUSHFLEET_BASIC_USER")?;
    let basic_pw = env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let token = env.get("PUSHFLEET_TOKEN_REGISTRY")?;
    let pusher = env.get("PUSHFLEET_TOKEN_PUSHER_USER")?;
    let pusher_pw = env.read_file_at("PUSHFLEET_TOKEN_PUSHER_PASSWORD_FILE")?;
    let odd_user = env.get("PUSHFLEET_ODD_USER")?;
    let odd_pw = env.read_file_at("PUSHFLEET_ODD_PASSWORD_FILE")?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let down_port = closed.local_addr()?.port();
    drop(closed);

    let canary_dc = write_file(
        dir.path(),
        "canary-config.json",
        &docker_config_json(&basic, &basic_user, CANARY),
    )?;
    let real_dc = write_file(
        dir.path(),
        "real-config.json",
        &docker_config_json(&basic, &basic_user, &basic_pw),
    )?;
    let ns = "\"production\", \"team-a\", \"team-b\"";
    let canary_by_file = format!("username = \"{basic_user}\"\npassword_file = \"{canary_file}\"");
    let mut registries = [
        registry_entry(
            "basic-canary",
            &format!("http://{basic}"),
            ns,
            &canary_by_file,
        ),
        registry_entry(
            "basic-env-canary",
            &format!("http://{basic}"),
            ns,
            &format!("username = \"{basic_user}\"\npassword_env = \"PF_SECRETS_CANARY\""),
        ),
        registry_entry(
            "basic-dc-canary",
            &format!("http://{basic}"),
            ns,
            &format!("docker_config = \"{canary_dc}\""),
        ),
        registry_entry(
            "basic-dc",
            &format!("http://{basic}"),
            ns,
            &format!("docker_config = \"{real_dc}\""),
        ),
        registry_entry(
            "odd",
            &format!("http://{basic}"),
            ns,
            &format!(
                "username = \"{odd_user}\"\npassword_file = \"{}\"",
                env.get("PUSHFLEET_ODD_PASSWORD_FILE")?
            ),
        ),
        registry_entry(
            "token-canary",
            &format!("http://{token}"),
            ns,
            &format!("username = \"{pusher}\"\npassword_file = \"{canary_file}\""),
        ),
        registry_entry(
            "token-pusher",
            &format!("http://{token}"),
            ns,
            &format!(
                "username = \"{pusher}\"\npassword_file = \"{}\"",
                env.get("PUSHFLEET_TOKEN_PUSHER_PASSWORD_FILE")?
            ),
        ),
        registry_entry(
            "down-canary",
            &format!("http://127.0.0.1:{down_port}"),
            ns,
            &format!("username = \"u\"\npassword_file = \"{canary_file}\""),
        ),
    ]
    .concat();
    let mut scenarios = vec![
        ("basic-canary", "production", Some("registry_auth_failed")),
        (
            "basic-env-canary",
            "production",
            Some("registry_auth_failed"),
        ),
        (
            "basic-dc-canary",
            "production",
            Some("registry_auth_failed"),
        ),
        ("token-canary", "team-a", Some("registry_auth_failed")),
        (
            "token-pusher",
            "team-b",
            Some("registry_insufficient_scope"),
        ),
        ("down-canary", "production", Some("registry_unreachable")),
        ("odd", "production", None),
        ("basic-dc", "production", None),
    ]
    .into_iter()
    .map(|(registry, repository_ns, expect)| Scenario {
        registry,
        repository_ns,
        expect,
    })
    .collect::<Vec<_>>();
    match (
        env.get("PUSHFLEET_TLS_REGISTRY"),
        env.get("PUSHFLEET_TLS_CA_FILE"),
    ) {
        (Ok(tls), Ok(ca)) => {
            let url = env
                .get("PUSHFLEET_TLS_REGISTRY_URL")
                .unwrap_or_else(|_| format!("https://{tls}"));
            // An unrelated CA if the stack has one; else none (the system roots do not know
            // the stack's CA either).
            let wrong_ca = env
                .get("PUSHFLEET_TLS_WRONG_CA_FILE")
                .map(|f| format!("ca_file = \"{f}\"\n"))
                .unwrap_or_default();
            registries.push_str(&registry_entry(
                "tls-wrong-ca-canary",
                &url,
                ns,
                &format!("{wrong_ca}{canary_by_file}"),
            ));
            registries.push_str(&registry_entry(
                "tls-canary",
                &url,
                ns,
                &format!("ca_file = \"{ca}\"\n{canary_by_file}"),
            ));
            scenarios.push(Scenario {
                registry: "tls-wrong-ca-canary",
                repository_ns: "production",
                expect: Some("registry_tls_failed"),
            });
            scenarios.push(Scenario {
                registry: "tls-canary",
                repository_ns: "production",
                expect: Some("registry_auth_failed"),
            });
        }
        _ => println!(
            "SKIPPED the TLS scenarios: {} has no PUSHFLEET_TLS_REGISTRY / PUSHFLEET_TLS_CA_FILE",
            env.get("PUSHFLEET_STACK_ENV").unwrap_or_default()
        ),
    }

    let prefix = unique("secrets");
    let config = load_from_str(
        &format!(
            "[amqp]\nurl = \"{amqp}\"\ntopology_prefix = \"{prefix}\"\n\
             [worker]\nid = \"{prefix}-worker\"\nconcurrency = 4\njob_timeout_s = 120\n\
             shutdown_grace_s = 10\nmax_attempts = 2\nretry_min_delay_ms = 200\n\
             retry_max_delay_s = 1\n\
             [docker]\nhost = \"{docker}\"\n{registries}",
            amqp = env.get("PUSHFLEET_AMQP_URL")?,
            docker = env.get("PUSHFLEET_DOCKER_HOST")?,
        ),
        Some([("PF_SECRETS_CANARY".to_owned(), CANARY.to_owned())].into()),
    )
    .map_err(|e| anyhow!("test config invalid: {e}"))?;
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    corpus.push(("describe".into(), config.describe().into_bytes()));
    corpus.push(("config-debug".into(), format!("{config:#?}").into_bytes()));
    for registry in config.registries.iter() {
        let shown = match registry.credentials_async().await {
            Ok(creds) => format!("{creds:?} {creds:#?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        corpus.push((format!("credentials {}", registry.key), shown.into_bytes()));
    }

    let topology = Topology::new(&prefix);
    let mut tap = Tap::open(&env, &topology).await?;
    let stop = CancellationToken::new();
    let worker = {
        let stop = stop.clone();
        let config = Arc::new(config);
        tokio::spawn(async move {
            pushfleet_worker::runner::run(config, async move { stop.cancelled().await }).await
        })
    };

    let name = unique("secrets");
    make_image(&docker(&env)?, &[&format!("{name}:1")]).await?;
    let mut jobs = BTreeMap::new();
    for scenario in &scenarios {
        let job = json!({
            "version": 1,
            "job_id": unique(scenario.registry),
            "source": format!("{name}:1"),
            "target": {
                "registry": scenario.registry,
                "repository": format!("{}/{name}-{}", scenario.repository_ns, scenario.registry),
                "tags": ["1"]
            }
        });
        let id = job["job_id"].as_str().context("job_id")?.to_owned();
        tap.publish_job(&job).await?;
        jobs.insert(id, scenario);
    }
    let ids: BTreeSet<String> = jobs.keys().cloned().collect();
    let terminal = tap.wait_terminal(&ids).await?;
    for (id, scenario) in &jobs {
        let event = terminal.get(id).context("terminal event")?;
        let code = event.error.as_ref().map(|e| e.code.as_str());
        match scenario.expect {
            None => ensure!(
                event.state == JobState::Succeeded,
                "{}: expected success, got {event:#?}",
                scenario.registry
            ),
            Some(expected) => ensure!(
                matches!(event.state, JobState::Failed | JobState::Dead) && code == Some(expected),
                "{}: expected {expected}, got {event:#?}",
                scenario.registry
            ),
        }
    }

    let dead = tap.drain(Duration::from_millis(500)).await?;
    stop.cancel();
    let result = worker.await?;
    corpus.push(("worker-result".into(), format!("{result:?}").into_bytes()));
    result?;

    let events = tap
        .published
        .iter()
        .filter(|p| p.exchange == topology.events_exchange())
        .count();
    let retries = tap
        .published
        .iter()
        .filter(|p| p.exchange == topology.retry_exchange())
        .count();
    for (i, p) in tap.published.iter().chain(&dead).enumerate() {
        let kind = if p.exchange == topology.events_exchange() {
            "event"
        } else if p.exchange == topology.retry_exchange() {
            "retry-copy"
        } else {
            "dead-letter"
        };
        corpus.push((
            format!("{kind} #{i} ({} {})", p.exchange, p.routing_key),
            p.body.clone(),
        ));
        corpus.push((
            format!("{kind}-properties #{i}"),
            p.properties.clone().into_bytes(),
        ));
    }
    let dead_letters = dead.len();

    let (test_thread, other_threads) = capture.lines();
    let accepted = test_thread
        .iter()
        .filter(|l| l.contains("job accepted"))
        .count();
    let debug_lines = test_thread
        .iter()
        .chain(&other_threads)
        .filter(|l| l.contains(" DEBUG ") || l.contains(" TRACE "))
        .count();
    println!(
        "captured {} log lines on the test thread ({accepted} 'job accepted', {debug_lines} \
         DEBUG/TRACE in all), {} on other threads; {events} events, {retries} retry copies, \
         {dead_letters} dead letters",
        test_thread.len(),
        other_threads.len()
    );
    println!(
        "log lines by target: {:?}",
        targets(test_thread.iter().chain(&other_threads))
    );
    // The capture is real: every job was logged as accepted (two attempts for the unreachable
    // registry: both count), and debug output is included.
    ensure!(
        accepted >= 2 * jobs.len(),
        "expected every job's 'job accepted' line (plain and JSON), found {accepted}"
    );
    ensure!(debug_lines > 0, "no DEBUG/TRACE line was captured");
    ensure!(events >= 2 * jobs.len(), "too few events: {events}");
    ensure!(retries >= 1, "the unreachable job was not retried");
    ensure!(
        dead_letters >= jobs.len() - 2,
        "every failed job is dead-lettered: {dead_letters}"
    );
    for (i, line) in test_thread.iter().enumerate() {
        corpus.push((format!("log-line #{i}"), line.clone().into_bytes()));
    }
    for (i, line) in other_threads.iter().enumerate() {
        corpus.push((
            format!("log-line-other-thread #{i}"),
            line.clone().into_bytes(),
        ));
    }

    let secrets = [
        Secret {
            label: "canary as basic user",
            user: basic_user.clone(),
            value: CANARY.into(),
        },
        Secret {
            label: "canary as pusher",
            user: pusher.clone(),
            value: CANARY.into(),
        },
        Secret {
            label: "canary as u",
            user: "u".into(),
            value: CANARY.into(),
        },
        Secret {
            label: "basic user's real password (docker_config)",
            user: basic_user,
            value: basic_pw,
        },
        Secret {
            label: "pusher's real password",
            user: pusher,
            value: pusher_pw,
        },
        Secret {
            label: "oddpass's real password",
            user: odd_user,
            value: odd_pw,
        },
    ];
    assert_clean(&corpus, &needles(&secrets))
}

#[tokio::test]
async fn the_amqp_password_never_shows_when_the_broker_refuses_it() -> Result<()> {
    let capture = Capture::start();
    let env = StackEnv::load()?;
    let dir = tempfile::tempdir()?;
    let canary_file = write_file(dir.path(), "amqp-canary", &format!("{CANARY}\n"))?;
    let mut url = reqwest::Url::parse(&env.get("PUSHFLEET_AMQP_URL")?)?;
    if url.username().is_empty() {
        url.set_username("guest")
            .map_err(|()| anyhow!("cannot set a user"))?;
    }
    url.set_password(None)
        .map_err(|()| anyhow!("cannot clear the password"))?;
    let registries = format!(
        "[docker]\nhost = \"{}\"\n{}",
        env.get("PUSHFLEET_DOCKER_HOST")?,
        registry_entry(
            "r",
            "http://127.0.0.1:9",
            "\"production\"",
            "anonymous = true"
        )
    );
    let mut with_inline = url.clone();
    with_inline
        .set_password(Some(CANARY))
        .map_err(|()| anyhow!("cannot set the password"))?;
    // The password from a file, and inline in the URL from the environment.
    let configs: [(&str, Config); 2] = [
        (
            "password_file",
            load_from_str(
                &format!(
                    "[amqp]\nurl = \"{url}\"\npassword_file = \"{canary_file}\"\n\
                     topology_prefix = \"{}\"\n{registries}",
                    unique("secrets-amqp")
                ),
                Some(Default::default()),
            )
            .map_err(|e| anyhow!("{e}"))?,
        ),
        (
            "inline URL",
            load_from_str(
                &format!(
                    "[amqp]\ntopology_prefix = \"{}\"\n{registries}",
                    unique("secrets-amqp")
                ),
                Some([("PUSHFLEET__AMQP__URL".to_owned(), with_inline.to_string())].into()),
            )
            .map_err(|e| anyhow!("{e}"))?,
        ),
    ];
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, config) in configs {
        corpus.push((format!("describe {what}"), config.describe().into_bytes()));
        corpus.push((
            format!("config-debug {what}"),
            format!("{config:#?}").into_bytes(),
        ));
        let stop = CancellationToken::new();
        let worker = {
            let stop = stop.clone();
            let config = Arc::new(config);
            tokio::spawn(async move {
                pushfleet_worker::runner::run(config, async move { stop.cancelled().await }).await
            })
        };
        // Long enough for a few refused connection attempts (0.5 s, 1 s, ...).
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .context("the worker did not stop")??;
        let shown = match &result {
            Ok(()) => String::new(),
            Err(e) => format!("{e} {e:?}"),
        };
        corpus.push((format!("worker-result {what}"), shown.into_bytes()));
    }
    let (test_thread, other_threads) = capture.lines();
    let refused = test_thread
        .iter()
        .filter(|l| l.contains("cannot open a broker session"))
        .count();
    println!(
        "captured {} log lines on the test thread ({refused} refused sessions), {} on other \
         threads",
        test_thread.len(),
        other_threads.len()
    );
    ensure!(
        refused >= 2,
        "the refused connections were not logged: the capture would prove nothing"
    );
    for (i, line) in test_thread.iter().chain(&other_threads).enumerate() {
        corpus.push((format!("log-line #{i}"), line.clone().into_bytes()));
    }
    let secrets = [Secret {
        label: "AMQP canary",
        user: url.username().to_owned(),
        value: CANARY.into(),
    }];
    assert_clean(&corpus, &needles(&secrets))
}
