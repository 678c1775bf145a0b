//! Running workers and jobs in tests: a worker in this process on its own topology prefix,
//! images made in the stack's daemon, jobs published and their events collected.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use lapin::{BasicProperties, Connection};
use pushfleet_shared::event::{Event, JobState};
use pushfleet_shared::topology::Topology;
use pushfleet_worker::config::Config;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{TestConfig, WorkerSettings};
use crate::process::EventLog;
use crate::{StackEnv, unique};

/// How long a test waits for a job's terminal event before failing.
pub const JOB_WAIT: Duration = Duration::from_secs(90);

/// The catalogue every pipeline test starts from, as TOML `[registries.*]` tables:
/// - `basic`: the htpasswd registry, alias `5` (a Django registry id), namespaces
///   `production` and `team-a`;
/// - `token`: the token-auth registry as `pusher` (push in `team-a` only), alias `7`,
///   namespaces `team-a` and `team-b` (so `team-b` passes policy but lacks push scope);
/// - `token-reader`: the token-auth registry as `reader` (pull only), namespace `team-a`.
pub fn base_registries(env: &StackEnv) -> Result<String> {
    Ok(format!(
        r#"
[registries.basic]
url = "http://{basic}"
username = "{basic_user}"
password_file = "{basic_pw}"
aliases = ["5"]
namespaces = ["production", "team-a"]

[registries.token]
url = "http://{token}"
username = "{pusher}"
password_file = "{pusher_pw}"
aliases = ["7"]
namespaces = ["team-a", "team-b"]

[registries.token-reader]
url = "http://{token}"
username = "{reader}"
password_file = "{reader_pw}"
namespaces = ["team-a"]
"#,
        basic = env.get("PUSHFLEET_BASIC_REGISTRY")?,
        basic_user = env.get("PUSHFLEET_BASIC_USER")?,
        basic_pw = env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?,
        token = env.get("PUSHFLEET_TOKEN_REGISTRY")?,
        pusher = env.get("PUSHFLEET_TOKEN_PUSHER_USER")?,
        pusher_pw = env.get("PUSHFLEET_TOKEN_PUSHER_PASSWORD_FILE")?,
        reader = env.get("PUSHFLEET_TOKEN_READER_USER")?,
        reader_pw = env.get("PUSHFLEET_TOKEN_READER_PASSWORD_FILE")?,
    ))
}

/// A v1 job with a fresh `job_id` and the seed's metadata (`pipeline_run` 812, `step` 129).
pub fn job(source: &str, registry: &str, repository: &str, tags: &[&str]) -> Value {
    let mut job = crate::process::job_json(&unique("job"), source, registry, repository, tags);
    job["metadata"] = serde_json::json!({"pipeline_run": 812, "step": 129});
    job
}

/// One `[registries.<key>]` table with a password file, for a test's extra catalogue entries.
pub fn registry_toml(
    key: &str,
    url: &str,
    user: &str,
    password_file: &std::path::Path,
    namespaces: &[&str],
) -> String {
    let namespaces: Vec<String> = namespaces.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "\n[registries.{key}]\nurl = {url:?}\nusername = {user:?}\npassword_file = {:?}\nnamespaces = [{}]\n",
        password_file.display().to_string(),
        namespaces.join(", ")
    )
}

/// A worker configuration on topology `prefix`, with `registries` as its catalogue (see
/// [`TestConfig`] for more settings).
pub fn worker_config(env: &StackEnv, prefix: &str, registries: &str) -> Result<Config> {
    TestConfig::new(env, prefix, registries)?.load()
}

/// Like [`worker_config`], with `settings`.
pub fn worker_config_with(
    env: &StackEnv,
    prefix: &str,
    registries: &str,
    settings: WorkerSettings,
) -> Result<Config> {
    TestConfig::new(env, prefix, registries)?
        .with_settings(settings)
        .load()
}

/// A worker running in this process until dropped or stopped.
#[derive(Debug)]
pub struct TestWorker {
    /// The topology it consumes from.
    pub topology: Topology,
    /// Its readiness and session count.
    pub status: Arc<pushfleet_worker::runner::WorkerStatus>,
    amqp_url: SecretString,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), pushfleet_worker::runner::RunError>>>,
}

impl TestWorker {
    /// Starts a worker with `config` and returns once its topology is declared.
    pub async fn start(config: Config) -> Result<Self> {
        let topology = config.amqp.topology();
        let amqp_url = config
            .amqp
            .url_with_password()
            .map_err(|e| anyhow!("amqp password: {e}"))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let config = Arc::new(config);
        let status = Arc::new(pushfleet_worker::runner::WorkerStatus::default());
        let worker_status = Arc::clone(&status);
        let handle = tokio::spawn(async move {
            pushfleet_worker::runner::run_with_status(config, worker_status, async move {
                token.cancelled().await
            })
            .await
        });
        Ok(Self {
            topology,
            status,
            amqp_url,
            stop,
            handle: Some(handle),
        })
    }

    /// Waits until the worker has a broker session (its queues declared and consumed), as
    /// its `/readyz` would say; fails after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        while !self.status.is_ready() {
            if start.elapsed() > limit {
                bail!("the worker was not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Asks the worker to stop and waits for it, then deletes its topology from the broker
    /// (quorum queues are not free: a suite must not leave hundreds behind); returns the
    /// worker's result.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        let result = match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        };
        crate::process::delete_topology_on(self.amqp_url.expose_secret(), self.topology.prefix())
            .await;
        Ok(result?)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A test's view of the broker: publishes jobs and collects every event of its topology,
/// through the one collector of the test harness ([`EventLog`]).
#[derive(Debug)]
pub struct Broker {
    log: EventLog,
}

impl Broker {
    /// Connects, declares `topology` and starts collecting all of its events.
    pub async fn connect(env: &StackEnv, topology: &Topology) -> Result<Self> {
        Ok(Self {
            log: EventLog::start(env, topology).await?,
        })
    }

    /// The broker connection the jobs are published on (e.g. for a channel of a test's own).
    pub fn conn(&self) -> &Connection {
        self.log.connection()
    }

    /// Publishes `body` as is with `properties` to the jobs exchange and waits for the
    /// broker's confirm.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) -> Result<()> {
        self.log.publish_raw(body, properties).await
    }

    /// Publishes a job (JSON) to the jobs exchange and waits for the broker's confirm.
    pub async fn publish_job(&self, job: &Value) -> Result<()> {
        self.log.publish_job(job).await
    }

    /// Publishes a job (JSON) with `routing_key` (e.g. `job.<pool>`) and waits for the
    /// broker's confirm.
    pub async fn publish_job_with_key(&self, job: &Value, routing_key: &str) -> Result<()> {
        self.log.publish_job_with_key(job, routing_key).await
    }

    /// Waits for the terminal event of `job_id` and returns every event of that job, in order.
    pub async fn wait_for(&mut self, job_id: &str) -> Result<Vec<Event>> {
        self.wait_until(|e| e.job_id.as_deref() == Some(job_id) && e.state.is_terminal())
            .await?;
        Ok(self.events_of(job_id))
    }

    /// Waits for the first event matching `pred` (events already seen count).
    pub async fn wait_until(&mut self, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        let events = self
            .log
            .wait_until(JOB_WAIT, "an event the test waits for", |events| {
                events.iter().any(&pred)
            })
            .await
            .with_context(|| format!("events seen: {:#?}", self.log.events()))?;
        events
            .into_iter()
            .find(|e| pred(e))
            .context("the matching event is gone")
    }

    /// Every event seen so far for `job_id`.
    pub fn events_of(&self, job_id: &str) -> Vec<Event> {
        self.log
            .events()
            .into_iter()
            .filter(|e| e.job_id.as_deref() == Some(job_id))
            .collect()
    }

    /// Every event seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Event> {
        self.log.events()
    }

    /// Takes one message from the dead-letter queue (acking it), if any.
    pub async fn take_dead_letter(&self) -> Result<Option<lapin::message::Delivery>> {
        let channel = self.conn().create_channel().await?;
        let got = channel
            .basic_get(
                self.log.topology().dead_letter_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(got.map(|m| m.delivery))
    }
}

/// The terminal event of a job's events, or an error listing them.
pub fn terminal(events: &[Event]) -> Result<&Event> {
    events
        .iter()
        .find(|e| e.state.is_terminal())
        .ok_or_else(|| anyhow!("no terminal event in {events:#?}"))
}

/// Asserts the job failed with `code` and returns its terminal event.
pub fn expect_failed<'a>(events: &'a [Event], code: &str) -> Result<&'a Event> {
    let last = terminal(events)?;
    if last.state != JobState::Failed {
        bail!("expected failed/{code}, got {:?}: {last:#?}", last.state);
    }
    let got = last
        .error
        .as_ref()
        .map(|e| e.code.as_str())
        .unwrap_or("none");
    if got != code {
        bail!("expected {code}, got {got}: {last:#?}");
    }
    Ok(last)
}

/// Creates an image in the stack's daemon from a one-file tarball whose content is unique, and
/// tags it as each of `references` (Docker's familiar names, e.g. `myapp-1a2b:0722`).
pub async fn make_image(docker: &bollard::Docker, references: &[&str]) -> Result<String> {
    let first = references.first().context("no reference to create")?;
    let content = unique("content");
    let id = import_file_image(docker, first, "pushfleet-test.txt", content.as_bytes()).await?;
    for reference in &references[1..] {
        let (repo, tag) = reference
            .rsplit_once(':')
            .context("references need a tag")?;
        let options = bollard::query_parameters::TagImageOptions {
            repo: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
        };
        docker.tag_image(&id, Some(options)).await?;
    }
    Ok(id)
}

/// Imports a one-file image (`docker import` of a tarball holding `file_name` with `content`)
/// as `reference` (familiar name with a tag) and returns its id.
pub async fn import_file_image(
    docker: &bollard::Docker,
    reference: &str,
    file_name: &str,
    content: &[u8],
) -> Result<String> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, file_name, content)?;
    let tarball = builder.into_inner()?;
    let (repo, tag) = reference
        .rsplit_once(':')
        .context("references need a tag")?;
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.to_owned()),
        tag: Some(tag.to_owned()),
        ..Default::default()
    };
    let mut stream = docker.create_image(
        Some(options),
        Some(bollard::body_full(bytes::Bytes::from(tarball))),
        None,
    );
    while let Some(item) = stream.next().await {
        item?;
    }
    let inspect = docker.inspect_image(reference).await?;
    inspect.id.context("image without id")
}

/// The manifest digest of `repository:tag` in a registry, asked directly over HTTP (not
/// through the worker), or None when the tag is absent. `auth` is a ready `Authorization`
/// header value.
pub async fn registry_digest(
    base: &str,
    repository: &str,
    tag: &str,
    auth: &str,
) -> Result<Option<String>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    registry_digest_with(&client, base, repository, tag, auth).await
}

/// Like [`registry_digest`], through `client` (e.g. one that trusts only a test CA).
pub async fn registry_digest_with(
    client: &reqwest::Client,
    base: &str,
    repository: &str,
    tag: &str,
    auth: &str,
) -> Result<Option<String>> {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.oci.image.index.v1+json";
    let response = client
        .head(format!("{base}/v2/{repository}/manifests/{tag}"))
        .header("Accept", accept)
        .header("Authorization", auth)
        .send()
        .await?;
    match response.status().as_u16() {
        404 => Ok(None),
        200 => Ok(response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)),
        other => bail!("HEAD manifest answered {other}"),
    }
}

/// A `Basic` Authorization header value.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A `Bearer` Authorization header value from the stack's token server for `scope`.
pub async fn bearer_auth(
    env: &StackEnv,
    user: &str,
    password: &str,
    scope: &str,
) -> Result<String> {
    let server = env.get("PUSHFLEET_TOKEN_SERVER")?;
    let service = env.get("PUSHFLEET_TOKEN_SERVICE")?;
    let response: Value = reqwest::Client::new()
        .get(format!("{server}/token"))
        .query(&[("service", service.as_str()), ("scope", scope)])
        .header("Authorization", basic_auth(user, password))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = response["token"]
        .as_str()
        .context("no token in the token server's answer")?;
    Ok(format!("Bearer {token}"))
}
