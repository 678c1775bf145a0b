//! The worker's configuration: one TOML file, then `PUSHFLEET__*` environment variables on
//! top, merged by the `config` crate, deserialized with serde into typed structs and checked
//! in one pass into the [`Config`].
//!
//! Why it reads the way it does:
//!
//! - Environment keys use `__` between levels (`PUSHFLEET__WORKER__JOB_TIMEOUT_S`), because
//!   with `_` a key like `job_timeout_s` would silently become `job.timeout.s`.
//! - The `config` crate lowercases environment keys, so registry keys must be lowercase to be
//!   overridable; [`load`] refuses others rather than letting an override miss.
//! - `try_parsing` stays off (it turns `"0123"` into `123`): environment values stay text and
//!   are converted for the key that receives them, by the type it is deserialized into (an
//!   integer from `"8"`, a list from `"a,b"`); see `de`.
//! - Every problem is reported, not the first: a value that does not deserialize is reported
//!   with its key and left out, and deserialization runs again without it; then one
//!   validation pass checks what serde cannot (files, exclusive keys, the catalogue). Each
//!   [`ConfigProblem`] names its key and where the value came from (the file, or the
//!   environment variable), so one run of `pushfleet check-config` shows everything to fix.
//! - Unknown keys are errors, at any level (`deny_unknown_fields`): a misspelt key is
//!   otherwise a silently ignored setting.
//! - Secrets are never in the file, and never read here. A registry's [`Login`] says where its
//!   password is (a file, an environment variable, or Docker's own `config.json` and
//!   credential helpers); `crate::credentials` reads it. An inline `password` key is refused.
//!   The AMQP URL prints with its password replaced by `***` ([`redact_url`]);
//!   [`Config::describe`], `Debug` and every error message are free of passwords.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pushfleet_shared::Pool;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::credentials::{CredentialError, Login};

mod de;
mod describe;
mod load;
#[cfg(test)]
mod tests;
mod validate;

pub use load::{ConfigErrors, ConfigProblem, Origin, load, load_from_str};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "PUSHFLEET";
/// The separator between levels in environment override names.
pub const ENV_SEPARATOR: &str = "__";
/// `amqp.url` when not set: a local RabbitMQ with its default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// `docker.host` when not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// `worker.concurrency` when not set.
pub const DEFAULT_CONCURRENCY: u16 = 4;
/// The largest accepted `worker.concurrency` (and `max_concurrent_pushes`).
pub const MAX_CONCURRENCY: u16 = 256;
/// `worker.job_timeout_s` when not set (15 minutes).
pub const DEFAULT_JOB_TIMEOUT_S: u64 = 900;
/// The largest accepted `worker.job_timeout_s`: the same limit as a job's own `timeout_s`
/// ([`pushfleet_shared::job::MAX_TIMEOUT_S`]). A job holds its delivery unacked while it
/// runs, and RabbitMQ closes the channel of a delivery unacked for longer than its
/// `consumer_timeout` (30 minutes by default); the margin leaves time to publish the terminal
/// event and ack.
pub const MAX_JOB_TIMEOUT_S: u64 = pushfleet_shared::job::MAX_TIMEOUT_S as u64;
/// `worker.shutdown_grace_s` when not set.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 60;
/// The largest accepted `worker.shutdown_grace_s`.
pub const MAX_SHUTDOWN_GRACE_S: u64 = 3600;
/// `worker.max_attempts` when not set: attempts of a job failing retryably before it is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// `worker.retry_min_delay_ms` when not set: the delay before the second attempt.
pub const DEFAULT_RETRY_MIN_DELAY_MS: u64 = 5_000;
/// `worker.retry_max_delay_s` when not set: the longest delay between attempts (before jitter).
pub const DEFAULT_RETRY_MAX_DELAY_S: u64 = 300;
/// The smallest `amqp.publish_frame_max` (lapin's smallest frame).
pub const MIN_PUBLISH_FRAME_MAX: u64 = 8 * 1024;
/// The largest `amqp.publish_frame_max`.
pub const MAX_PUBLISH_FRAME_MAX: u64 = 1024 * 1024;
/// The largest `amqp.quorum_replicas`.
pub const MAX_QUORUM_REPLICAS: u64 = 9;

/// The validated configuration of one worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker connection.
    pub amqp: AmqpConfig,
    /// This worker's identity, concurrency and timeouts.
    pub worker: WorkerConfig,
    /// The Docker daemon the worker drives; `None` (no `[docker]` section) for a daemon-free
    /// worker, which serves registry-source jobs (`source_registry`) only.
    pub docker: Option<DockerConfig>,
    /// The registries jobs may push to.
    pub registries: Catalogue,
}

/// `[amqp]`: the broker connection.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The broker URL (`url`, or the first of `urls`); prints with its password replaced by
    /// `***`.
    pub url: AmqpUrl,
    /// The other nodes of a cluster (`urls` after the first), tried in order when a node is
    /// lost or cannot be reached.
    pub other_urls: Vec<AmqpUrl>,
    /// A file whose content replaces the URLs' password when connecting.
    pub password_file: Option<PathBuf>,
    /// The prefix every exchange and queue name is derived from.
    pub topology_prefix: String,
    /// How many replicas the quorum queues (and the control stream) are declared with; `None`
    /// leaves it to the broker.
    pub quorum_replicas: Option<u8>,
    /// The key jobs must be signed with (`signing_key_file`, read at load), if any.
    pub signing_key: Option<SigningKey>,
    /// The largest frame asked for on the publishing connection; `None` takes the broker's
    /// offer, as the consuming connection always does.
    pub publish_frame_max: Option<u32>,
}

impl AmqpConfig {
    /// The URL to connect with, password included: the URL's own password, or the content of
    /// `password_file`, read now (see [`crate::credentials::url_with_password`]).
    pub fn url_with_password(&self) -> Result<SecretString, CredentialError> {
        crate::credentials::url_with_password(&self.url.url, self.password_file.as_deref())
    }

    /// Every node's URL, in order, each with its password (see [`Self::url_with_password`]).
    pub fn urls_with_password(&self) -> Result<Vec<SecretString>, CredentialError> {
        self.urls()
            .map(|url| {
                crate::credentials::url_with_password(&url.url, self.password_file.as_deref())
            })
            .collect()
    }

    /// The broker topology these settings name (prefix, replica count).
    pub fn topology(&self) -> pushfleet_shared::topology::Topology {
        let topology = pushfleet_shared::topology::Topology::new(&self.topology_prefix);
        match self.quorum_replicas {
            Some(n) => topology.with_replicas(n),
            None => topology,
        }
    }

    /// Every node's URL with its password hidden, comma-separated (for logs).
    pub fn nodes(&self) -> String {
        self.urls()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn urls(&self) -> impl Iterator<Item = &AmqpUrl> {
        std::iter::once(&self.url).chain(&self.other_urls)
    }
}

/// The shared key of job signatures (see `pushfleet_shared::signature`). Never printed.
#[derive(Clone)]
pub struct SigningKey(secrecy::SecretSlice<u8>);

impl SigningKey {
    /// The key bytes, for signing or verifying.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// An AMQP URL that never prints its password: `Display` and `Debug` show it as `***`.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct AmqpUrl {
    url: Url,
}

impl AmqpUrl {
    /// Parses an `amqp://` or `amqps://` URL with a host. The error never contains the input.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        let url =
            Url::parse(input).map_err(|e| InvalidValue(format!("not a valid AMQP URL ({e})")))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(InvalidValue(format!(
                "the scheme must be amqp or amqps, not `{}`",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidValue("the AMQP URL has no host".to_owned()));
        }
        Ok(Self { url })
    }

    /// The full URL, password included.
    pub fn expose(&self) -> SecretString {
        SecretString::from(self.url.to_string())
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_parsed(&self.url)
    }

    /// The user name in the URL (empty when there is none).
    pub fn username(&self) -> &str {
        self.url.username()
    }

    /// Whether the URL itself carries a password.
    pub fn has_password(&self) -> bool {
        self.url.password().is_some()
    }
}

impl TryFrom<String> for AmqpUrl {
    type Error = InvalidValue;

    fn try_from(input: String) -> Result<Self, InvalidValue> {
        Self::parse(&input)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted()).finish()
    }
}

/// A value that does not parse; the message never repeats a secret from the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// `url` with its password, if any, replaced by `***`, for logs and messages. A string that
/// does not parse as a URL is not echoed at all (it may hold a password in a shape the parser
/// did not recognise): the result is `<invalid URL>`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => redact_parsed(&parsed),
        Err(_) => "<invalid URL>".to_owned(),
    }
}

fn redact_parsed(url: &Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut redacted = url.clone();
    match redacted.set_password(Some("***")) {
        Ok(()) => redacted.to_string(),
        Err(()) => "<invalid URL>".to_owned(),
    }
}

/// `[worker]`: this worker's identity, concurrency and timeouts. Deserialized as it is, each
/// value checked by the function that reads it; an absent key takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default = "WorkerConfig::defaults", deny_unknown_fields)]
pub struct WorkerConfig {
    /// The worker's name in events and consumer tags (default `<hostname>-<pid>`).
    #[serde(deserialize_with = "de::worker_id")]
    pub id: String,
    /// How many jobs run at once, over all of `pools`; also the AMQP prefetch of each pool's
    /// consumer.
    #[serde(deserialize_with = "de::within::<_, _, 1, { MAX_CONCURRENCY as u64 }>")]
    pub concurrency: u16,
    /// The pools whose jobs this worker takes (their queues; see `pushfleet_shared::pool`):
    /// the build hosts whose images its Docker daemon holds. Default: the default pool only.
    pub pools: Vec<Pool>,
    /// How long one job may run, in seconds.
    #[serde(deserialize_with = "de::job_timeout")]
    pub job_timeout_s: u64,
    /// How long a shutdown waits for running jobs, in seconds.
    #[serde(deserialize_with = "de::within::<_, _, 0, MAX_SHUTDOWN_GRACE_S>")]
    pub shutdown_grace_s: u64,
    /// Attempts of a job failing retryably, the first included, before it is `dead`.
    #[serde(deserialize_with = "de::within::<_, _, 1, 100>")]
    pub max_attempts: u32,
    /// The delay before the second attempt, in milliseconds (doubling after each attempt).
    #[serde(deserialize_with = "de::within::<_, _, 10, 3_600_000>")]
    pub retry_min_delay_ms: u64,
    /// The longest delay between two attempts, in seconds (before jitter).
    #[serde(deserialize_with = "de::within::<_, _, 1, 86_400>")]
    pub retry_max_delay_s: u64,
}

impl WorkerConfig {
    /// The defaults; an empty `id` is filled in by [`load`] (it depends on the environment).
    fn defaults() -> Self {
        Self {
            id: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            pools: vec![Pool::default()],
            job_timeout_s: DEFAULT_JOB_TIMEOUT_S,
            shutdown_grace_s: DEFAULT_SHUTDOWN_GRACE_S,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_min_delay_ms: DEFAULT_RETRY_MIN_DELAY_MS,
            retry_max_delay_s: DEFAULT_RETRY_MAX_DELAY_S,
        }
    }

    /// How long one job may run.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_s)
    }

    /// How long a shutdown waits for running jobs before abandoning them (they are then
    /// redelivered to another worker).
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    /// The AMQP prefetch count: one unacked delivery per concurrent job.
    pub fn prefetch(&self) -> u16 {
        self.concurrency
    }

    /// How failed attempts are retried.
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            max_attempts: self.max_attempts,
            min_delay: Duration::from_millis(self.retry_min_delay_ms),
            max_delay: Duration::from_secs(self.retry_max_delay_s),
        }
    }
}

/// `[docker]`: the Docker daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The host, e.g. `unix:///var/run/docker.sock`.
    #[serde(default)]
    pub host: DockerHost,
}

/// A Docker host, checked by [`DockerEndpoint::parse`]; it reads as the text configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DockerHost(String);

impl Default for DockerHost {
    fn default() -> Self {
        Self(DEFAULT_DOCKER_HOST.to_owned())
    }
}

impl TryFrom<String> for DockerHost {
    type Error = InvalidValue;

    fn try_from(host: String) -> Result<Self, InvalidValue> {
        DockerEndpoint::parse(&host).map(|_| Self(host))
    }
}

impl Deref for DockerHost {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach the Docker daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// A unix socket at this absolute path.
    Unix(PathBuf),
    /// Plain HTTP at this `http://host:port` (a `tcp://` host is given as `http://`).
    Http(String),
}

impl DockerEndpoint {
    /// Parses `unix:///path`, `tcp://host:port` or `http://host:port`.
    pub fn parse(host: &str) -> Result<Self, InvalidValue> {
        if let Some(path) = host.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(InvalidValue(
                    "the unix socket path must be absolute, e.g. unix:///var/run/docker.sock"
                        .to_owned(),
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let expected = "expected unix:///path/to/docker.sock, tcp://host:port or http://host:port";
        let invalid = |what: &str| InvalidValue(format!("{what}; {expected}"));
        let url =
            Url::parse(host).map_err(|e| invalid(&format!("not a valid Docker host ({e})")))?;
        let port = match url.scheme() {
            "tcp" => url.port(),
            "http" => url.port_or_known_default(),
            other => return Err(invalid(&format!("unsupported scheme `{other}`"))),
        };
        let Some(name) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(invalid("the Docker host has no host name"));
        };
        let Some(port) = port else {
            return Err(invalid("a tcp:// Docker host needs a port"));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidValue(
                "the Docker host must not contain credentials".to_owned(),
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("the Docker host must not have a path or query"));
        }
        Ok(Self::Http(format!("http://{name}:{port}")))
    }
}

/// One registry of the catalogue (`[registries.<key>]`).
#[derive(Debug, Clone)]
pub struct Registry {
    /// The catalogue key, e.g. `harbor`.
    pub key: String,
    /// The registry's base URL (`http` or `https`, no path): where `/v2/` is asked.
    pub url: Url,
    /// `host[:port]` as written in image references: no port for a default port (https on
    /// 443), and `docker.io` for Docker Hub (`registry-1.docker.io`, `index.docker.io`).
    pub host: String,
    /// Who to log in as and where the password is; None for an anonymous registry.
    pub login: Option<Login>,
    /// A CA certificate (PEM) to trust for this registry.
    pub ca_file: Option<PathBuf>,
    /// Other names jobs may use for this registry, e.g. Django registry ids.
    pub aliases: Vec<String>,
    /// The namespaces jobs may push into (`*` allows any repository).
    pub namespaces: Vec<String>,
    /// At most this many pushes to this registry at once from one worker (`None`: as many as
    /// `worker.concurrency` allows).
    pub max_concurrent_pushes: Option<u16>,
}

impl Registry {
    /// Whether jobs may push `repo` (a repository path without host, e.g. `team-a/app`).
    ///
    /// A repository must lie strictly inside a namespace: `team-a` allows `team-a/app` and
    /// `team-a/sub/app`, not `team-ab/app` and not `team-a` itself. `*` allows any
    /// repository. A path with an empty component (`team-a//app`) is never allowed.
    pub fn allows_repository(&self, repo: &str) -> bool {
        if repo.is_empty() || repo.split('/').any(str::is_empty) {
            return false;
        }
        self.namespaces.iter().any(|ns| {
            ns == "*"
                || repo
                    .strip_prefix(ns.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|rest| !rest.is_empty())
        })
    }
}

/// The registry catalogue: registries by key, also found by alias.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    registries: BTreeMap<String, Registry>,
    /// alias -> registry key
    aliases: BTreeMap<String, String>,
}

impl Catalogue {
    /// The registry with this key, or else with this alias.
    pub fn get(&self, key_or_alias: &str) -> Option<&Registry> {
        self.registries.get(key_or_alias).or_else(|| {
            self.aliases
                .get(key_or_alias)
                .and_then(|key| self.registries.get(key))
        })
    }

    /// The registries, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = &Registry> + '_ {
        self.registries.values()
    }

    /// How many registries there are.
    pub fn len(&self) -> usize {
        self.registries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.registries.is_empty()
    }
}

impl Config {
    /// A human summary for `pushfleet check-config`: every setting, and for each password
    /// source whether it can be read now. Never a password.
    pub fn describe(&self) -> String {
        describe::Description(self).to_string()
    }
}

/// Reads a job-signing key file: its bytes, one trailing newline removed, at least
/// [`pushfleet_shared::signature::MIN_KEY_BYTES`] long. Errors never show the content.
fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    use pushfleet_shared::signature::MIN_KEY_BYTES;
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the signing key file {}: {e}", path.display()))?;
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "the signing key in {} is {} bytes; use at least {MIN_KEY_BYTES} random bytes \
             (e.g. `openssl rand -hex 32 > FILE`)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(SigningKey(bytes.into()))
}
