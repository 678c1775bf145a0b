//! The worker's configuration: one TOML file, then `PUSHFLEET__*` environment variables on
//! top, merged by the `config` crate and validated into the typed [`Config`].
//!
//! Why it reads the way it does:
//!
//! - Environment keys use `__` between levels (`PUSHFLEET__WORKER__JOB_TIMEOUT_S`), because
//!   with `_` a key like `job_timeout_s` would silently become `job.timeout.s`.
//! - The `config` crate lowercases environment keys, so registry keys must be lowercase to be
//!   overridable; [`load`] refuses others rather than letting an override miss.
//! - `try_parsing` stays off: it turns `"0123"` into `123` and a worker id `true` into a
//!   boolean. Every value is read as what its key needs (an integer from `"8"`, a list from
//!   `"a,b"`), here, key by key.
//! - Validation does not stop at the first problem: [`ConfigErrors`] lists every one, each
//!   naming its key and where the value came from (the file, or the environment variable), so
//!   one run of `pushfleet check-config` shows everything to fix.
//! - Unknown keys are errors, at any level: a misspelt key is otherwise a silently ignored
//!   setting.
//! - Secrets are never in the file. Registry passwords come from a file, an environment
//!   variable or Docker's own `config.json` and credential helpers ([`PasswordSource`]); an
//!   inline `password` key is refused. The AMQP URL prints
//!   with its password replaced by `***` ([`redact_url`]); [`Config::describe`], `Debug` and
//!   every error message are free of passwords.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::{Environment, FileFormat, Value, ValueKind};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::credentials::{
    CredentialError, Credentials, DockerConfigSource, PasswordSource, docker_credential_key,
};

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
/// The largest accepted `worker.concurrency`.
pub const MAX_CONCURRENCY: u16 = 256;
/// `worker.job_timeout_s` when not set (15 minutes).
pub const DEFAULT_JOB_TIMEOUT_S: u64 = 900;
/// The largest accepted `worker.job_timeout_s`. A job holds its delivery unacked while it
/// runs, and RabbitMQ closes the channel of a delivery unacked for longer than its
/// `consumer_timeout` (30 minutes by default); the margin leaves time to publish the terminal
/// event and ack.
pub const MAX_JOB_TIMEOUT_S: u64 = 1700;
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

/// The origin the `config` crate gives every value that came from an `Environment` source.
const ENV_ORIGIN: &str = "the environment";

const ROOT_KEYS: &[&str] = &["amqp", "worker", "docker", "registries"];
const AMQP_KEYS: &[&str] = &[
    "url",
    "urls",
    "password_file",
    "topology_prefix",
    "quorum_replicas",
    "signing_key_file",
];
/// The largest `amqp.quorum_replicas`.
pub const MAX_QUORUM_REPLICAS: u64 = 9;
const WORKER_KEYS: &[&str] = &[
    "id",
    "concurrency",
    "job_timeout_s",
    "shutdown_grace_s",
    "max_attempts",
    "retry_min_delay_ms",
    "retry_max_delay_s",
];
const DOCKER_KEYS: &[&str] = &["host"];
const REGISTRY_KEYS: &[&str] = &[
    "url",
    "username",
    "password_file",
    "password_env",
    "docker_config",
    "ca_file",
    "aliases",
    "namespaces",
    "anonymous",
    "max_concurrent_pushes",
];

/// The validated configuration of one worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker connection.
    pub amqp: AmqpConfig,
    /// This worker's identity, concurrency and timeouts.
    pub worker: WorkerConfig,
    /// The Docker daemon the worker drives.
    pub docker: DockerConfig,
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

impl AmqpConfig {
    /// The URL to connect with, password included: the URL's own password, or the content of
    /// `password_file`, read now (so a rotated secret is picked up at the next connection).
    /// Expose it only where the connection is made.
    pub fn url_with_password(&self) -> Result<SecretString, CredentialError> {
        self.with_password(&self.url)
    }

    /// Every node's URL, in order, each with its password (see [`Self::url_with_password`]).
    pub fn urls_with_password(&self) -> Result<Vec<SecretString>, CredentialError> {
        std::iter::once(&self.url)
            .chain(&self.other_urls)
            .map(|url| self.with_password(url))
            .collect()
    }

    fn with_password(&self, url: &AmqpUrl) -> Result<SecretString, CredentialError> {
        let Some(path) = &self.password_file else {
            return Ok(url.expose());
        };
        let password = PasswordSource::File(path.clone()).resolve()?;
        let mut url = url.url.clone();
        url.set_password(Some(password.expose_secret()))
            .map_err(|()| CredentialError::NotConfigured {
                what: "the AMQP URL (it cannot carry a password)".to_owned(),
            })?;
        Ok(SecretString::from(String::from(url)))
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
        std::iter::once(&self.url)
            .chain(&self.other_urls)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An AMQP URL that never prints its password: `Display` and `Debug` show it as `***`.
#[derive(Clone)]
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

/// `[worker]`: this worker's identity, concurrency and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The worker's name in events and consumer tags (default `<hostname>-<pid>`).
    pub id: String,
    /// How many jobs run at once; also the AMQP prefetch.
    pub concurrency: u16,
    /// How long one job may run, in seconds.
    pub job_timeout_s: u64,
    /// How long a shutdown waits for running jobs, in seconds.
    pub shutdown_grace_s: u64,
    /// Attempts of a job failing retryably, the first included, before it is `dead`.
    pub max_attempts: u32,
    /// The delay before the second attempt, in milliseconds (doubling after each attempt).
    pub retry_min_delay_ms: u64,
    /// The longest delay between two attempts, in seconds (before jitter).
    pub retry_max_delay_s: u64,
}

impl WorkerConfig {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The host as configured, e.g. `unix:///var/run/docker.sock`.
    pub host: String,
    /// The same, parsed.
    pub endpoint: DockerEndpoint,
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
        let url = Url::parse(host)
            .map_err(|e| InvalidValue(format!("not a valid Docker host ({e}); {expected}")))?;
        let port = match url.scheme() {
            "tcp" => url.port(),
            "http" => url.port_or_known_default(),
            other => {
                return Err(InvalidValue(format!(
                    "unsupported scheme `{other}`; {expected}"
                )));
            }
        };
        let Some(name) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(InvalidValue(format!(
                "the Docker host has no host name; {expected}"
            )));
        };
        let Some(port) = port else {
            return Err(InvalidValue(format!(
                "a tcp:// Docker host needs a port; {expected}"
            )));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidValue(
                "the Docker host must not contain credentials".to_owned(),
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(InvalidValue(format!(
                "the Docker host must not have a path or query; {expected}"
            )));
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
    /// The user name to log in with. None for an anonymous registry, and for a registry whose
    /// credentials come from a Docker config without a configured `username` (the user is then
    /// the Docker config's).
    pub username: Option<String>,
    /// Where the password comes from (None only for an anonymous registry).
    pub password: Option<PasswordSource>,
    /// A CA certificate (PEM) to trust for this registry.
    pub ca_file: Option<PathBuf>,
    /// Other names jobs may use for this registry, e.g. Django registry ids.
    pub aliases: Vec<String>,
    /// The namespaces jobs may push into (`*` allows any repository).
    pub namespaces: Vec<String>,
    /// The registry needs no credentials.
    pub anonymous: bool,
    /// At most this many pushes to this registry at once from one worker (`None`: as many as
    /// `worker.concurrency` allows).
    pub max_concurrent_pushes: Option<u16>,
    /// Where `password_env` is looked up: the environment the configuration was loaded from.
    env: EnvSource,
}

impl Registry {
    /// The credentials to push with, read now (so a rotated password file or Docker config is
    /// picked up): None for an anonymous registry.
    ///
    /// Blocking: with `docker_config`, a credential helper may run (for at most
    /// [`crate::credentials::DOCKER_CREDENTIAL_TIMEOUT`]). From async code, use
    /// [`credentials_async`](Self::credentials_async).
    pub fn credentials(&self) -> Result<Option<Credentials>, CredentialError> {
        if self.anonymous {
            return Ok(None);
        }
        match &self.password {
            Some(PasswordSource::DockerConfig(source)) => {
                self.check_docker_login(source, source.resolve()).map(Some)
            }
            Some(source) => {
                let Some(username) = &self.username else {
                    return Err(self.not_configured());
                };
                let password = source.resolve_with(&|name: &str| self.env.get(name))?;
                Ok(Some(Credentials {
                    username: username.clone(),
                    password,
                }))
            }
            None => Err(self.not_configured()),
        }
    }

    /// As [`credentials`](Self::credentials), without blocking the async runtime: a Docker
    /// config lookup (which may run a credential helper process) goes to tokio's blocking
    /// pool; a password file or variable is read in place, as it is quick. Needs a tokio
    /// runtime.
    pub async fn credentials_async(&self) -> Result<Option<Credentials>, CredentialError> {
        match &self.password {
            Some(PasswordSource::DockerConfig(source)) if !self.anonymous => {
                let login = source.resolve_async().await;
                self.check_docker_login(source, login).map(Some)
            }
            _ => self.credentials(),
        }
    }

    /// What the Docker config gave, refused when a configured `username` says otherwise.
    fn check_docker_login(
        &self,
        source: &DockerConfigSource,
        login: Result<Credentials, CredentialError>,
    ) -> Result<Credentials, CredentialError> {
        let login = login?;
        match &self.username {
            Some(configured) if *configured != login.username => {
                Err(CredentialError::DockerConfigUserMismatch {
                    server: source.server.clone(),
                    path: source.path.clone(),
                    configured: configured.clone(),
                })
            }
            _ => Ok(login),
        }
    }

    fn not_configured(&self) -> CredentialError {
        CredentialError::NotConfigured {
            what: format!("registry `{}`", self.key),
        }
    }

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

/// Where a problem's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File(PathBuf),
    /// An environment variable (for a table only set from the environment: `PREFIX__*`).
    Environment {
        /// The variable's name, e.g. `PUSHFLEET__WORKER__CONCURRENCY`.
        variable: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Environment { variable } => write!(f, "environment variable {variable}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where the value came from, when known.
    pub origin: Option<Origin>,
    /// The dotted key, e.g. `registries.harbor.password_file` (empty for the whole file).
    pub key: String,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    /// The problems, in the order found (file order: amqp, worker, docker, registries by key).
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads the configuration: `file` (TOML) if given, then environment overrides
/// `PUSHFLEET__<SECTION>__<KEY>` on top, then validates everything.
///
/// `env: None` reads the process environment; `Some(map)` reads only the map, both for
/// overrides and for `password_env` and `HOSTNAME` lookups (then and later, in
/// [`Registry::credentials`]), so tests never touch the process environment.
pub fn load(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigErrors> {
    let text = match file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigProblem {
                    origin: Some(Origin::File(path.to_path_buf())),
                    key: String::new(),
                    message: format!("cannot read the configuration file: {e}"),
                }]));
            }
        },
    };
    load_text(
        text.as_deref(),
        file.map(Path::to_path_buf),
        EnvSource::new(env),
    )
}

/// As [`load`], with the TOML given as a string (tests, and callers that build it).
pub fn load_from_str(
    toml: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigErrors> {
    load_text(Some(toml), None, EnvSource::new(env))
}

fn load_text(
    text: Option<&str>,
    file: Option<PathBuf>,
    env: EnvSource,
) -> Result<Config, ConfigErrors> {
    let ctx = Ctx { file, env };
    let mut problems = Problems::default();
    let mut builder = config::Config::builder();
    if let Some(text) = text {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Checked here first because the toml error's Display quotes the offending line, and
        // that line may hold a secret: only the position and the description are reported.
        if let Err(e) = toml::de::DeTable::parse(text) {
            let at = e
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            problems.push(ConfigProblem {
                origin: ctx.file_origin(),
                key: String::new(),
                message: format!("not valid TOML{at}: {}", e.message()),
            });
            return Err(ConfigErrors(problems.0));
        }
        builder = builder.add_source(config::File::from_str(text, FileFormat::Toml));
    }
    let overrides = prefixed_env(&ctx.env, &mut problems);
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(false)
            .ignore_empty(true)
            .source(Some(overrides.into_iter().collect())),
    );
    let merged = match builder.build() {
        Ok(merged) => merged,
        Err(e) => {
            // The variables were screened above, so this is not expected; the crate's error
            // is not shown as it may quote a value.
            let what = match e {
                config::ConfigError::FileParse { .. } => "the file is not valid TOML",
                _ => "the file and the environment could not be merged",
            };
            problems.push(ConfigProblem {
                origin: ctx.file_origin(),
                key: String::new(),
                message: what.to_owned(),
            });
            return Err(ConfigErrors(problems.0));
        }
    };
    let config = read_root(&ctx, merged.cache, &mut problems);
    match config {
        Some(config) if problems.0.is_empty() => Ok(config),
        _ => {
            if problems.0.is_empty() {
                problems.push(ConfigProblem {
                    origin: ctx.file_origin(),
                    key: String::new(),
                    message: "the configuration is incomplete".to_owned(),
                });
            }
            Err(ConfigErrors(problems.0))
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The `PUSHFLEET__*` variables, screened: a non-Unicode value or a malformed name is a
/// problem naming the variable, and is left out (the `config` crate would otherwise fail with
/// a message quoting the value).
fn prefixed_env(env: &EnvSource, problems: &mut Problems) -> Vec<(String, String)> {
    let pattern = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    let mut out = Vec::new();
    for (name, value) in env.all() {
        if !name.to_lowercase().starts_with(&pattern) {
            continue;
        }
        let problem = |message: &str| ConfigProblem {
            origin: Some(Origin::Environment {
                variable: name.clone(),
            }),
            key: String::new(),
            message: message.to_owned(),
        };
        let rest = &name[pattern.len()..];
        let well_formed = rest.split(ENV_SEPARATOR).all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !well_formed {
            problems.push(problem(
                "not a configuration key: overrides are named PUSHFLEET__<SECTION>__<KEY>, \
                 e.g. PUSHFLEET__WORKER__CONCURRENCY",
            ));
            continue;
        }
        match value {
            Some(value) => out.push((name, value)),
            None => problems.push(problem("the value is not valid Unicode")),
        }
    }
    out
}

/// The environment a configuration is read from: the process's, or a map given to [`load`].
#[derive(Clone)]
enum EnvSource {
    Process,
    Map(Arc<HashMap<String, String>>),
}

impl EnvSource {
    fn new(map: Option<HashMap<String, String>>) -> Self {
        map.map_or(Self::Process, |map| Self::Map(Arc::new(map)))
    }

    fn get(&self, name: &str) -> Option<String> {
        match self {
            Self::Process => std::env::var(name).ok(),
            Self::Map(map) => map.get(name).cloned(),
        }
    }

    /// Every variable whose name is Unicode; None for a value that is not.
    fn all(&self) -> Vec<(String, Option<String>)> {
        match self {
            Self::Process => std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()))
                })
                .collect(),
            Self::Map(map) => map
                .iter()
                .map(|(name, value)| (name.clone(), Some(value.clone())))
                .collect(),
        }
    }
}

impl fmt::Debug for EnvSource {
    // Never the values: the environment holds passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process => f.write_str("ProcessEnvironment"),
            Self::Map(map) => write!(f, "InjectedEnvironment({} variables)", map.len()),
        }
    }
}

#[derive(Debug, Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, problem: ConfigProblem) {
        self.0.push(problem);
    }
}

#[derive(Debug)]
struct Ctx {
    file: Option<PathBuf>,
    env: EnvSource,
}

impl Ctx {
    fn file_origin(&self) -> Option<Origin> {
        self.file.clone().map(Origin::File)
    }

    fn loc(&self, key: String, value: &Value) -> Loc {
        let origin = if from_env_only(value) {
            let mut variable = env_var_name(&key);
            if matches!(value.kind, ValueKind::Table(_)) {
                variable.push_str("__*");
            }
            Some(Origin::Environment { variable })
        } else {
            self.file_origin()
        };
        Loc { key, origin }
    }
}

/// Whether a value (for a table: everything in it) was set from the environment.
fn from_env_only(value: &Value) -> bool {
    match &value.kind {
        ValueKind::Table(table) => !table.is_empty() && table.values().all(from_env_only),
        _ => value.origin() == Some(ENV_ORIGIN),
    }
}

/// `registries.harbor.url` -> `PUSHFLEET__REGISTRIES__HARBOR__URL`.
fn env_var_name(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for segment in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&segment.to_uppercase());
    }
    name
}

/// A key and where its value came from, to attach problems to.
#[derive(Debug, Clone)]
struct Loc {
    key: String,
    origin: Option<Origin>,
}

impl Loc {
    fn problem(&self, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            origin: self.origin.clone(),
            key: self.key.clone(),
            message: message.into(),
        }
    }

    fn child(&self, key: &str) -> Self {
        Self {
            key: join(&self.key, key),
            origin: self.origin.clone(),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// One table of the merged tree, read key by key. Keys are removed as they are read, so what
/// is left at the end is unknown.
#[derive(Debug)]
struct Section<'c> {
    ctx: &'c Ctx,
    loc: Loc,
    known: &'static [&'static str],
    entries: BTreeMap<String, Value>,
}

impl<'c> Section<'c> {
    fn new(
        ctx: &'c Ctx,
        loc: Loc,
        value: Value,
        known: &'static [&'static str],
        problems: &mut Problems,
    ) -> Option<Self> {
        match value.kind {
            ValueKind::Table(table) => Some(Self {
                ctx,
                loc,
                known,
                entries: table.into_iter().collect(),
            }),
            other => {
                problems
                    .push(loc.problem(format!("expected a table, found {}", kind_name(&other))));
                None
            }
        }
    }

    fn empty(ctx: &'c Ctx, key: &str, known: &'static [&'static str]) -> Self {
        Self {
            ctx,
            loc: Loc {
                key: key.to_owned(),
                origin: ctx.file_origin(),
            },
            known,
            entries: BTreeMap::new(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    fn take(&mut self, key: &str) -> Option<(Value, Loc)> {
        let value = self.entries.remove(key)?;
        let loc = self.ctx.loc(join(&self.loc.key, key), &value);
        Some((value, loc))
    }

    /// A sub-table; an absent one reads as empty, so defaults apply.
    fn section(
        &mut self,
        key: &str,
        known: &'static [&'static str],
        problems: &mut Problems,
    ) -> Option<Section<'c>> {
        match self.take(key) {
            None => Some(Section::empty(self.ctx, &join(&self.loc.key, key), known)),
            Some((value, loc)) => Section::new(self.ctx, loc, value, known, problems),
        }
    }

    /// The value of `key` converted (and checked) by `convert`; None when absent or invalid
    /// (then a problem is recorded).
    fn get<T>(
        &mut self,
        problems: &mut Problems,
        key: &str,
        convert: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<(T, Loc)> {
        let (value, loc) = self.take(key)?;
        match convert(value) {
            Ok(converted) => Some((converted, loc)),
            Err(message) => {
                problems.push(loc.problem(message));
                None
            }
        }
    }

    /// As [`get`](Self::get), with `default` (checked the same way) when absent.
    fn get_or<T>(
        &mut self,
        problems: &mut Problems,
        key: &str,
        default: impl Into<ValueKind>,
        convert: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        if self.contains(key) {
            return self.get(problems, key, convert).map(|(value, _)| value);
        }
        match convert(Value::new(None, default)) {
            Ok(value) => Some(value),
            Err(message) => {
                problems.push(self.loc.child(key).problem(format!("default: {message}")));
                None
            }
        }
    }

    /// As [`get`](Self::get), recording a problem when absent.
    fn required<T>(
        &mut self,
        problems: &mut Problems,
        key: &str,
        what: &str,
        convert: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<(T, Loc)> {
        if !self.contains(key) {
            problems.push(self.loc.child(key).problem(format!("missing: {what}")));
            return None;
        }
        self.get(problems, key, convert)
    }

    /// Records every key not read as unknown.
    fn finish(self, problems: &mut Problems) {
        let known = self.known.join(", ");
        for (key, value) in self.entries {
            let loc = self.ctx.loc(join(&self.loc.key, &key), &value);
            problems.push(loc.problem(format!("unknown key `{key}` (known keys here: {known})")));
        }
    }
}

fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

/// A string; integers are accepted as their decimal text (`aliases = [5]`).
fn to_string(value: Value) -> Result<String, String> {
    match value.kind {
        ValueKind::String(s) => Ok(s),
        ValueKind::I64(n) => Ok(n.to_string()),
        ValueKind::I128(n) => Ok(n.to_string()),
        ValueKind::U64(n) => Ok(n.to_string()),
        ValueKind::U128(n) => Ok(n.to_string()),
        other => Err(format!("expected a string, found {}", kind_name(&other))),
    }
}

fn to_non_empty_string(value: Value) -> Result<String, String> {
    let s = to_string(value)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(s)
}

fn to_path(value: Value) -> Result<PathBuf, String> {
    to_non_empty_string(value).map(PathBuf::from)
}

/// A non-negative integer; a string (from the environment) is parsed as decimal.
fn to_u64(value: Value) -> Result<u64, String> {
    let not_a_number = || "expected a whole number of at least 0".to_owned();
    match value.kind {
        ValueKind::I64(n) => u64::try_from(n).map_err(|_| not_a_number()),
        ValueKind::I128(n) => u64::try_from(n).map_err(|_| not_a_number()),
        ValueKind::U64(n) => Ok(n),
        ValueKind::U128(n) => u64::try_from(n).map_err(|_| not_a_number()),
        ValueKind::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("expected a whole number, found {s:?}")),
        other => Err(format!(
            "expected a whole number, found {}",
            kind_name(&other)
        )),
    }
}

fn to_bool(value: Value) -> Result<bool, String> {
    match value.kind {
        ValueKind::Boolean(b) => Ok(b),
        ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        other => Err(format!(
            "expected true or false, found {}",
            kind_name(&other)
        )),
    }
}

/// A list of strings: an array, or (from the environment) a comma-separated string.
fn to_list(value: Value) -> Result<Vec<String>, String> {
    let items = match value.kind {
        ValueKind::Array(items) => items
            .into_iter()
            .map(to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("in the list: {e}"))?,
        ValueKind::String(s) => s.split(',').map(|item| item.trim().to_owned()).collect(),
        other @ (ValueKind::I64(_)
        | ValueKind::U64(_)
        | ValueKind::I128(_)
        | ValueKind::U128(_)) => {
            vec![to_string(Value::new(None, other))?]
        }
        other => {
            return Err(format!(
                "expected a list of strings, found {}",
                kind_name(&other)
            ));
        }
    };
    if let Some(position) = items.iter().position(|item| item.trim().is_empty()) {
        return Err(format!("entry {} of the list is empty", position + 1));
    }
    Ok(items)
}

fn in_range(n: u64, min: u64, max: u64, why: &str) -> Result<u64, String> {
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}, got {n}{why}"));
    }
    Ok(n)
}

fn read_root(ctx: &Ctx, root: Value, problems: &mut Problems) -> Option<Config> {
    let mut root = Section::new(
        ctx,
        Loc {
            key: String::new(),
            origin: ctx.file_origin(),
        },
        root,
        ROOT_KEYS,
        problems,
    )?;
    let amqp = root
        .section("amqp", AMQP_KEYS, problems)
        .and_then(|s| read_amqp(s, problems));
    let worker = root
        .section("worker", WORKER_KEYS, problems)
        .and_then(|s| read_worker(s, problems));
    let docker = root
        .section("docker", DOCKER_KEYS, problems)
        .and_then(|s| read_docker(s, problems));
    let registries = read_catalogue(ctx, root.take("registries"), problems);
    root.finish(problems);
    Some(Config {
        amqp: amqp?,
        worker: worker?,
        docker: docker?,
        registries: registries?,
    })
}

fn read_amqp(mut s: Section<'_>, problems: &mut Problems) -> Option<AmqpConfig> {
    let parse_url = |v: Value| AmqpUrl::parse(&to_string(v)?).map_err(|e| e.0);
    let urls = if s.contains("urls") {
        let url_too = s.get(problems, "url", parse_url);
        let urls = s.get(problems, "urls", |v| {
            let urls = to_list(v)?;
            if urls.is_empty() {
                return Err("the list is empty: name at least one node".to_owned());
            }
            urls.iter()
                .enumerate()
                .map(|(i, u)| AmqpUrl::parse(u).map_err(|e| format!("entry {}: {}", i + 1, e.0)))
                .collect::<Result<Vec<_>, String>>()
        });
        if let (Some(_), Some((_, loc))) = (&url_too, &urls) {
            problems.push(loc.problem(
                "set either amqp.url (one node) or amqp.urls (the nodes of a cluster), not both",
            ));
            None
        } else {
            urls.map(|(urls, _)| urls)
        }
    } else {
        s.get_or(problems, "url", DEFAULT_AMQP_URL, parse_url)
            .map(|url| vec![url])
    };
    let quorum_replicas = s.get(problems, "quorum_replicas", |v| {
        let n = in_range(to_u64(v)?, 1, MAX_QUORUM_REPLICAS, "")?;
        u8::try_from(n).map_err(|e| e.to_string())
    });
    let password_file = s.get(problems, "password_file", to_path);
    let signing_key_file = s.get(problems, "signing_key_file", to_path);
    let topology_prefix = s.get_or(
        problems,
        "topology_prefix",
        pushfleet_shared::topology::DEFAULT_PREFIX,
        |v| check_topology_prefix(to_string(v)?),
    );
    s.finish(problems);
    if let Some((path, loc)) = &password_file {
        if urls
            .as_ref()
            .is_some_and(|urls| urls.iter().any(|url| url.username().is_empty()))
        {
            problems.push(loc.problem(
                "amqp.url has no user name, so there is no user for this password: \
                 write the user in the URL, e.g. amqp://pushfleet@rabbitmq:5672/%2f",
            ));
        }
        if let Err(e) = PasswordSource::File(path.clone()).resolve() {
            problems.push(loc.problem(e.to_string()));
        }
    }
    let signing_key = match &signing_key_file {
        Some((path, loc)) => match read_signing_key(path) {
            Ok(key) => Some(key),
            Err(message) => {
                problems.push(loc.problem(message));
                None
            }
        },
        None => None,
    };
    let mut urls = urls?.into_iter();
    Some(AmqpConfig {
        url: urls.next()?,
        other_urls: urls.collect(),
        password_file: password_file.map(|(path, _)| path),
        topology_prefix: topology_prefix?,
        quorum_replicas: quorum_replicas.map(|(n, _)| n),
        signing_key,
    })
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

fn check_topology_prefix(prefix: String) -> Result<String, String> {
    let valid_chars = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if prefix.is_empty() || prefix.len() > 64 || !valid_chars {
        return Err("must be 1 to 64 characters of letters, digits, `.`, `_` and `-`".to_owned());
    }
    if prefix.starts_with("amq.") {
        return Err("must not start with `amq.`: RabbitMQ reserves those names".to_owned());
    }
    Ok(prefix)
}

fn read_worker(mut s: Section<'_>, problems: &mut Problems) -> Option<WorkerConfig> {
    let default_id = default_worker_id(&s.ctx.env);
    let id = s.get_or(problems, "id", default_id, |v| {
        let id = to_non_empty_string(v)?;
        if id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must be at most 128 characters, without spaces".to_owned());
        }
        Ok(id)
    });
    let concurrency = s.get_or(
        problems,
        "concurrency",
        u64::from(DEFAULT_CONCURRENCY),
        |v| {
            let n = in_range(to_u64(v)?, 1, u64::from(MAX_CONCURRENCY), "")?;
            u16::try_from(n).map_err(|_| format!("must be at most {MAX_CONCURRENCY}"))
        },
    );
    let job_timeout_s = s.get_or(problems, "job_timeout_s", DEFAULT_JOB_TIMEOUT_S, |v| {
        in_range(
            to_u64(v)?,
            1,
            MAX_JOB_TIMEOUT_S,
            ": a job holds its message unacked while it runs, and RabbitMQ closes the channel \
             of a delivery unacked longer than its consumer_timeout (30 minutes by default)",
        )
    });
    let shutdown_grace_s = s.get_or(
        problems,
        "shutdown_grace_s",
        DEFAULT_SHUTDOWN_GRACE_S,
        |v| in_range(to_u64(v)?, 0, MAX_SHUTDOWN_GRACE_S, ""),
    );
    let max_attempts = s.get_or(
        problems,
        "max_attempts",
        u64::from(DEFAULT_MAX_ATTEMPTS),
        |v| {
            let n = in_range(to_u64(v)?, 1, 100, "")?;
            u32::try_from(n).map_err(|_| "must be at most 100".to_owned())
        },
    );
    let retry_min_delay_ms = s.get_or(
        problems,
        "retry_min_delay_ms",
        DEFAULT_RETRY_MIN_DELAY_MS,
        |v| in_range(to_u64(v)?, 10, 3_600_000, ""),
    );
    let retry_max_delay_s = s.get_or(
        problems,
        "retry_max_delay_s",
        DEFAULT_RETRY_MAX_DELAY_S,
        |v| in_range(to_u64(v)?, 1, 86_400, ""),
    );
    s.finish(problems);
    Some(WorkerConfig {
        id: id?,
        concurrency: concurrency?,
        job_timeout_s: job_timeout_s?,
        shutdown_grace_s: shutdown_grace_s?,
        max_attempts: max_attempts?,
        retry_min_delay_ms: retry_min_delay_ms?,
        retry_max_delay_s: retry_max_delay_s?,
    })
}

/// `<hostname>-<pid>`: the pod name on Kubernetes (`HOSTNAME`), else `/etc/hostname`.
fn default_worker_id(env: &EnvSource) -> String {
    let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let host = env
        .get("HOSTNAME")
        .and_then(non_empty)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .and_then(non_empty)
        })
        .unwrap_or_else(|| "pushfleet".to_owned());
    format!("{host}-{}", std::process::id())
}

fn read_docker(mut s: Section<'_>, problems: &mut Problems) -> Option<DockerConfig> {
    let docker = s.get_or(problems, "host", DEFAULT_DOCKER_HOST, |v| {
        let host = to_string(v)?;
        let endpoint = DockerEndpoint::parse(&host).map_err(|e| e.0)?;
        Ok(DockerConfig { host, endpoint })
    });
    s.finish(problems);
    docker
}

/// A registry as read, with where its aliases were written (for collision messages).
#[derive(Debug)]
struct RegistryDraft {
    registry: Registry,
    aliases_loc: Option<Loc>,
}

fn read_catalogue(
    ctx: &Ctx,
    value: Option<(Value, Loc)>,
    problems: &mut Problems,
) -> Option<Catalogue> {
    let empty = |loc: &Loc| {
        loc.problem(
            "no registries are configured: a worker with an empty catalogue can push nowhere; \
             add a [registries.<key>] table",
        )
    };
    let Some((value, loc)) = value else {
        problems.push(empty(&Loc {
            key: "registries".to_owned(),
            origin: ctx.file_origin(),
        }));
        return None;
    };
    let table = match value.kind {
        ValueKind::Table(table) => table.into_iter().collect::<BTreeMap<_, _>>(),
        other => {
            problems.push(loc.problem(format!("expected a table, found {}", kind_name(&other))));
            return None;
        }
    };
    if table.is_empty() {
        problems.push(empty(&loc));
        return None;
    }
    let mut drafts = Vec::new();
    let mut complete = true;
    for (key, value) in table {
        let reg_loc = ctx.loc(join("registries", &key), &value);
        let Some(section) = Section::new(ctx, reg_loc, value, REGISTRY_KEYS, problems) else {
            complete = false;
            continue;
        };
        match read_registry(&key, section, problems) {
            Some(draft) => drafts.push(draft),
            None => complete = false,
        }
    }

    let mut catalogue = Catalogue::default();
    let keys: Vec<String> = drafts.iter().map(|d| d.registry.key.clone()).collect();
    for draft in &drafts {
        let Some(loc) = &draft.aliases_loc else {
            continue;
        };
        for alias in &draft.registry.aliases {
            if keys.contains(alias) {
                problems.push(loc.problem(format!(
                    "alias `{alias}` is also a registry key: a job naming it would be ambiguous"
                )));
            } else if let Some(owner) = catalogue.aliases.get(alias) {
                let message = if *owner == draft.registry.key {
                    format!("alias `{alias}` is listed twice")
                } else {
                    format!("alias `{alias}` is already an alias of registry `{owner}`")
                };
                problems.push(loc.problem(message));
            } else {
                catalogue
                    .aliases
                    .insert(alias.clone(), draft.registry.key.clone());
            }
        }
    }
    for draft in drafts {
        catalogue
            .registries
            .insert(draft.registry.key.clone(), draft.registry);
    }
    complete.then_some(catalogue)
}

fn read_registry(key: &str, mut s: Section<'_>, problems: &mut Problems) -> Option<RegistryDraft> {
    let key_ok = valid_registry_key(key);
    if !key_ok {
        problems.push(s.loc.problem(
            "registry keys must start with a lowercase letter and use only a-z, 0-9, `-` and `_` \
             (environment overrides are lowercased, so other keys could not be overridden)",
        ));
    }
    let inline_password = s.take("password");
    if let Some((_, loc)) = &inline_password {
        problems.push(loc.problem(
            "an inline password is not accepted: put the password in a file and set \
             password_file, or in an environment variable and set password_env",
        ));
    }
    let url = s.required(
        problems,
        "url",
        "the registry's https:// (or http://) URL",
        |v| parse_registry_url(&to_string(v)?),
    );
    let username = s.get(problems, "username", to_non_empty_string);
    let password_file = s.get(problems, "password_file", to_path);
    let password_env = s.get(problems, "password_env", |v| check_env_name(to_string(v)?));
    let env_source = &s.ctx.env;
    // `docker_config = false` reads as absent.
    let docker_config = s
        .get(problems, "docker_config", |v| {
            to_docker_config(v, env_source)
        })
        .and_then(|(path, loc)| Some((path?, loc)));
    let ca_file = s.get(problems, "ca_file", |v| {
        let path = to_path(v)?;
        check_ca_file(&path)?;
        Ok(path)
    });
    let aliases = s.get(problems, "aliases", |v| {
        let aliases = to_list(v)?;
        match aliases.iter().find(|a| a.chars().any(char::is_whitespace)) {
            Some(bad) => Err(format!("alias {bad:?} contains whitespace")),
            None => Ok(aliases),
        }
    });
    let namespaces = s.required(
        problems,
        "namespaces",
        "the namespaces jobs may push into, e.g. [\"team-a\"], or [\"*\"] for any",
        |v| {
            let namespaces = to_list(v)?;
            if namespaces.is_empty() {
                return Err("must list at least one namespace (or \"*\")".to_owned());
            }
            namespaces.iter().try_for_each(|ns| check_namespace(ns))?;
            Ok(namespaces)
        },
    );
    let anonymous = s.get_or(problems, "anonymous", false, to_bool);
    let max_concurrent_pushes = s.get(problems, "max_concurrent_pushes", |v| {
        let n = in_range(to_u64(v)?, 1, u64::from(MAX_CONCURRENCY), "")?;
        u16::try_from(n).map_err(|_| format!("must be at most {MAX_CONCURRENCY}"))
    });
    let (loc, ctx) = (s.loc.clone(), s.ctx);
    s.finish(problems);

    let mut password = None;
    if anonymous == Some(true) {
        let present = [
            username.as_ref().map(|(_, loc)| loc),
            password_file.as_ref().map(|(_, loc)| loc),
            password_env.as_ref().map(|(_, loc)| loc),
            docker_config.as_ref().map(|(_, loc)| loc),
        ];
        for loc in present.into_iter().flatten() {
            problems.push(loc.problem("must not be set for an anonymous registry"));
        }
    } else if anonymous == Some(false) {
        // A Docker config brings its own user name; the other sources need one.
        let docker_config_given =
            docker_config.is_some() || already_reported(problems, &loc.child("docker_config"));
        if username.is_none()
            && !docker_config_given
            && !already_reported(problems, &loc.child("username"))
        {
            problems.push(loc.child("username").problem(
                "missing: a registry needs a username (or docker_config, which brings its own, \
                 or anonymous = true if it needs no login)",
            ));
        }
        let given = [
            password_file.as_ref().map(|_| "password_file"),
            password_env.as_ref().map(|_| "password_env"),
            docker_config.as_ref().map(|_| "docker_config"),
        ];
        let given: Vec<&str> = given.into_iter().flatten().collect();
        password = match (&password_file, &password_env, &docker_config) {
            _ if given.len() > 1 => {
                problems.push(loc.problem(format!(
                    "{} are all set: keep exactly one of password_file, password_env and \
                     docker_config",
                    given.join(" and ")
                )));
                None
            }
            (Some((path, loc)), _, _) => {
                let source = PasswordSource::File(path.clone());
                if let Err(e) = source.resolve() {
                    problems.push(loc.problem(e.to_string()));
                }
                Some(source)
            }
            (_, Some((name, loc)), _) => {
                let source = PasswordSource::Env(name.clone());
                if let Err(e) = source.resolve_with(&|name: &str| ctx.env.get(name)) {
                    problems.push(loc.problem(e.to_string()));
                }
                Some(source)
            }
            (_, _, Some((path, dc_loc))) => url.as_ref().map(|((_, host), _)| {
                let source = DockerConfigSource {
                    path: path.clone(),
                    server: docker_credential_key(host),
                };
                // Checked now, helpers included: a registry without usable credentials stops
                // the worker at start-up (seed 002), not a push later.
                match source.resolve() {
                    Err(e) => problems.push(dc_loc.problem(e.to_string())),
                    Ok(login) => {
                        if let Some((configured, user_loc)) = &username
                            && *configured != login.username
                        {
                            let mismatch = CredentialError::DockerConfigUserMismatch {
                                server: source.server.clone(),
                                path: source.path.clone(),
                                configured: configured.clone(),
                            };
                            problems.push(user_loc.problem(mismatch.to_string()));
                        }
                    }
                }
                PasswordSource::DockerConfig(source)
            }),
            (None, None, None) => {
                let tried = ["password_file", "password_env", "docker_config"]
                    .iter()
                    .any(|k| already_reported(problems, &loc.child(k)));
                if inline_password.is_none() && !tried {
                    problems.push(loc.problem(
                        "no password source: set password_file, password_env or docker_config \
                         (or anonymous = true if the registry needs no login); without one, \
                         pushing would fail with empty credentials",
                    ));
                }
                None
            }
        };
    }
    if let (Some((url, _)), Some((_, loc))) = (&url, &ca_file)
        && url.0.scheme() == "http"
    {
        problems.push(loc.problem("a CA file is only used with an https:// url"));
    }

    let (url, host) = url?.0;
    let aliases_loc = aliases.as_ref().map(|(_, loc)| loc.clone());
    let registry = Registry {
        key: key.to_owned(),
        url,
        host,
        username: username.map(|(u, _)| u),
        password,
        ca_file: ca_file.map(|(path, _)| path),
        aliases: aliases.map(|(a, _)| a).unwrap_or_default(),
        namespaces: namespaces?.0,
        anonymous: anonymous?,
        max_concurrent_pushes: max_concurrent_pushes.map(|(n, _)| n),
        env: ctx.env.clone(),
    };
    key_ok.then_some(RegistryDraft {
        registry,
        aliases_loc,
    })
}

/// Whether a problem was already recorded for this key (so a second, derived one is not).
fn already_reported(problems: &Problems, loc: &Loc) -> bool {
    problems.0.iter().any(|p| p.key == loc.key)
}

fn valid_registry_key(key: &str) -> bool {
    key.len() <= 64
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The registry URL and the `host[:port]` image references use for it.
fn parse_registry_url(input: &str) -> Result<(Url, String), String> {
    let url = Url::parse(input).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be https (or http), not `{}`",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL must not contain credentials: use username and password_file or \
             password_env"
                .to_owned(),
        );
    }
    let Some(name) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("the URL has no host".to_owned());
    };
    if !matches!(url.path(), "" | "/") {
        return Err(format!(
            "the URL must not have a path (found `{}`): image references carry only \
             host[:port], and the registry API is always at /v2/",
            url.path()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".to_owned());
    }
    if name == "docker.io" {
        return Err(
            "`docker.io` is Docker Hub's name in image references, not its registry API host: \
             use url = \"https://registry-1.docker.io\""
                .to_owned(),
        );
    }
    let host = match (name, url.port()) {
        ("registry-1.docker.io" | "index.docker.io" | "docker.io", None) => "docker.io".to_owned(),
        (name, None) => name.to_owned(),
        (name, Some(port)) => format!("{name}:{port}"),
    };
    Ok((url, host))
}

/// `docker_config`: a path to a `config.json`; `true` for Docker's own default (see
/// [`default_docker_config`]); `false` for none. From the environment, `"true"` and `"false"`
/// are read as those.
fn to_docker_config(value: Value, env: &EnvSource) -> Result<Option<PathBuf>, String> {
    let flag = match &value.kind {
        ValueKind::Boolean(b) => Some(*b),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        ValueKind::String(_) => None,
        other => {
            return Err(format!(
                "expected the path of a Docker config.json, or true, found {}",
                kind_name(other)
            ));
        }
    };
    match flag {
        Some(true) => default_docker_config(env).map(Some),
        Some(false) => Ok(None),
        None => to_path(value).map(Some),
    }
}

/// Where Docker itself looks: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`
/// (in the environment the configuration is loaded from).
fn default_docker_config(env: &EnvSource) -> Result<PathBuf, String> {
    let non_empty = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("DOCKER_CONFIG") {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".docker").join("config.json"));
    }
    Err(
        "docker_config = true means $DOCKER_CONFIG/config.json, else \
         $HOME/.docker/config.json, and neither DOCKER_CONFIG nor HOME is set: give the \
         file's path instead"
            .to_owned(),
    )
}

fn check_env_name(name: String) -> Result<String, String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not an environment variable name (letters, digits and `_`)"
        ));
    }
    let reserved = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    if name.to_ascii_uppercase().starts_with(&reserved) {
        return Err(format!(
            "variables starting with {reserved} are configuration overrides; name the password \
             variable differently, e.g. HARBOR_PASSWORD"
        ));
    }
    Ok(name)
}

fn check_ca_file(path: &Path) -> Result<(), String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Err(format!("CA file {} is empty", path.display())),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read CA file {}: {e}", path.display())),
    }
}

fn check_namespace(ns: &str) -> Result<(), String> {
    if ns == "*" {
        return Ok(());
    }
    for component in ns.split('/') {
        if component.is_empty() {
            return Err(format!(
                "namespace {ns:?} has an empty path component (no leading, trailing or double `/`)"
            ));
        }
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .iter()
                .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(format!(
                "namespace {ns:?}: {component:?} is not a repository path component (lowercase \
                 letters and digits, with `.`, `_` or `-` between them)"
            ));
        }
    }
    Ok(())
}

impl Config {
    /// A human summary for `pushfleet check-config`: every setting, and for each password
    /// source whether it can be read now. Never a password.
    pub fn describe(&self) -> String {
        Description(self).to_string()
    }
}

struct Description<'a>(&'a Config);

impl fmt::Display for Description<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        writeln!(f, "amqp")?;
        if c.amqp.other_urls.is_empty() {
            writeln!(f, "  url:              {}", c.amqp.url)?;
        } else {
            writeln!(f, "  urls:             {}", c.amqp.nodes())?;
        }
        let amqp_password = match &c.amqp.password_file {
            Some(path) => source_status(&PasswordSource::File(path.clone()), &|_| None),
            None if c.amqp.url.has_password() => "in the URL (hidden)".to_owned(),
            None => "none".to_owned(),
        };
        writeln!(f, "  password:         {amqp_password}")?;
        writeln!(f, "  topology prefix:  {}", c.amqp.topology_prefix)?;
        let replicas = c
            .amqp
            .quorum_replicas
            .map_or_else(|| "the broker's default".to_owned(), |n| n.to_string());
        writeln!(f, "  queue replicas:   {replicas}")?;
        let signing = if c.amqp.signing_key.is_some() {
            "required (signing_key_file)"
        } else {
            "not required"
        };
        writeln!(f, "  job signatures:   {signing}")?;
        writeln!(f, "docker")?;
        writeln!(f, "  host:             {}", c.docker.host)?;
        writeln!(f, "worker")?;
        writeln!(f, "  id:               {}", c.worker.id)?;
        writeln!(
            f,
            "  concurrency:      {} (AMQP prefetch {})",
            c.worker.concurrency,
            c.worker.prefetch()
        )?;
        writeln!(f, "  job timeout:      {} s", c.worker.job_timeout_s)?;
        writeln!(f, "  shutdown grace:   {} s", c.worker.shutdown_grace_s)?;
        writeln!(
            f,
            "  retries:          {} attempts, delay {} ms doubling up to {} s",
            c.worker.max_attempts, c.worker.retry_min_delay_ms, c.worker.retry_max_delay_s
        )?;
        writeln!(f, "registries ({})", c.registries.len())?;
        for r in c.registries.iter() {
            writeln!(f, "  {}", r.key)?;
            writeln!(f, "    url:        {}", redact_parsed(&r.url))?;
            writeln!(f, "    host:       {}", r.host)?;
            if r.anonymous {
                writeln!(f, "    auth:       anonymous (no credentials)")?;
            } else if let Some(PasswordSource::DockerConfig(source)) = &r.password {
                // One lookup (it may run a credential helper) gives both lines.
                let (user, status) = match r.check_docker_login(source, source.resolve()) {
                    Ok(login) => (
                        format!("{} (from the docker config)", login.username),
                        "resolved".to_owned(),
                    ),
                    Err(e) => (
                        "(from the docker config, not known now)".to_owned(),
                        format!("NOT USABLE: {e}"),
                    ),
                };
                let user = r.username.clone().unwrap_or(user);
                writeln!(f, "    username:   {user}")?;
                writeln!(f, "    password:   {source} ({status})")?;
            } else {
                writeln!(
                    f,
                    "    username:   {}",
                    r.username.as_deref().unwrap_or("(none)")
                )?;
                let password = r.password.as_ref().map_or_else(
                    || "(none)".to_owned(),
                    |source| source_status(source, &|name| r.env.get(name)),
                );
                writeln!(f, "    password:   {password}")?;
            }
            if let Some(ca) = &r.ca_file {
                writeln!(f, "    ca_file:    {}", ca.display())?;
            }
            if !r.aliases.is_empty() {
                writeln!(f, "    aliases:    {}", r.aliases.join(", "))?;
            }
            writeln!(f, "    namespaces: {}", r.namespaces.join(", "))?;
            if let Some(n) = r.max_concurrent_pushes {
                writeln!(f, "    max concurrent pushes: {n}")?;
            }
        }
        Ok(())
    }
}

/// `file /run/secrets/harbor (readable)`, `env HARBOR_PASSWORD (set)`, or the reason not.
fn source_status(source: &PasswordSource, env: &dyn Fn(&str) -> Option<String>) -> String {
    let ok = match source {
        PasswordSource::File(_) => "readable",
        PasswordSource::Env(_) => "set",
        PasswordSource::DockerConfig(_) => "resolved",
    };
    match source.resolve_with(env) {
        Ok(_) => format!("{source} ({ok})"),
        Err(e) => format!("{source} (NOT USABLE: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "S3cr3t-Pa55-zz9";

    /// A temporary directory with the files a configuration points to.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn file(&self, name: &str, content: &[u8]) -> String {
            let path = self.dir.path().join(name);
            std::fs::write(&path, content).expect("write fixture file");
            path.display().to_string()
        }

        fn config(&self, toml: &str) -> PathBuf {
            let path = self.dir.path().join("pushfleet.toml");
            std::fs::write(&path, toml).expect("write config");
            path
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// A valid single-registry file, with a readable password file.
    fn minimal(fx: &Fixture) -> String {
        let pw = fx.file("harbor-pw", format!("{SECRET}\n").as_bytes());
        format!(
            r#"
[registries.harbor]
url = "https://reg.example.com"
username = "robot$ci"
password_file = "{pw}"
namespaces = ["production"]
"#
        )
    }

    fn load_ok(path: &Path, env: Option<HashMap<String, String>>) -> Config {
        match load(Some(path), env) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid configuration, got:\n{e}"),
        }
    }

    fn load_err(path: &Path, env: Option<HashMap<String, String>>) -> ConfigErrors {
        match load(Some(path), env) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(e) => e,
        }
    }

    fn problem_for<'e>(errors: &'e ConfigErrors, key: &str) -> &'e ConfigProblem {
        errors
            .problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for `{key}` in:\n{errors}"))
    }

    #[test]
    fn a_signing_key_is_read_at_load_and_never_printed() {
        let fx = Fixture::new();
        let key = "k3y-".repeat(10);
        let key_file = fx.file("signing.key", format!("{key}\n").as_bytes());
        let text = format!(
            "[amqp]\nsigning_key_file = \"{key_file}\"\n{}",
            minimal(&fx)
        );
        let config = load_ok(&fx.config(&text), Some(HashMap::new()));
        let signing = config.amqp.signing_key.as_ref().expect("key loaded");
        assert_eq!(
            signing.expose(),
            key.as_bytes(),
            "one trailing newline removed"
        );
        assert!(config.describe().contains("job signatures:   required"));
        assert!(!config.describe().contains(&key) && !format!("{config:?}").contains(&key));

        let short = fx.file("short.key", b"too-short\n");
        let text = format!("[amqp]\nsigning_key_file = \"{short}\"\n{}", minimal(&fx));
        let errors = load_err(&fx.config(&text), Some(HashMap::new()));
        let problem = problem_for(&errors, "amqp.signing_key_file");
        assert!(
            problem.message.contains("at least 32"),
            "{}",
            problem.message
        );
        assert!(!errors.to_string().contains("too-short"));
    }

    #[test]
    fn max_concurrent_pushes_is_optional_and_bounded() {
        let fx = Fixture::new();
        let config = load_ok(&fx.config(&minimal(&fx)), Some(HashMap::new()));
        assert_eq!(
            config
                .registries
                .get("harbor")
                .and_then(|r| r.max_concurrent_pushes),
            None
        );

        let limited = format!("{}max_concurrent_pushes = 2\n", minimal(&fx));
        let config = load_ok(&fx.config(&limited), Some(HashMap::new()));
        assert_eq!(
            config
                .registries
                .get("harbor")
                .and_then(|r| r.max_concurrent_pushes),
            Some(2)
        );
        assert!(config.describe().contains("max concurrent pushes: 2"));

        for bad in ["0", "257", "\"many\""] {
            let text = format!("{}max_concurrent_pushes = {bad}\n", minimal(&fx));
            let errors = load_err(&fx.config(&text), Some(HashMap::new()));
            problem_for(&errors, "registries.harbor.max_concurrent_pushes");
        }
    }

    #[test]
    fn full_file_round_trip() {
        let fx = Fixture::new();
        let amqp_pw = fx.file("amqp-pw", b"amqp-secret\n");
        let harbor_pw = fx.file("harbor-pw", format!("{SECRET}\r\n").as_bytes());
        let ca = fx.file("ca.crt", b"-----BEGIN CERTIFICATE-----\n");
        let path = fx.config(&format!(
            r#"
[amqp]
url = "amqp://pushfleet@rabbit:5672/%2f"
password_file = "{amqp_pw}"
topology_prefix = "pf-test"

[worker]
id = "worker-1"
concurrency = 8
job_timeout_s = 600
shutdown_grace_s = 30

[docker]
host = "tcp://dind:2375"

[registries.harbor]
url = "https://reg.example.com:10443"
username = "robot$ci"
password_file = "{harbor_pw}"
ca_file = "{ca}"
aliases = ["5", "harbor-prod"]
namespaces = ["production", "team-a"]

[registries.gitlab]
url = "https://registry.gitlab.example.com"
username = "deploy"
password_env = "GITLAB_PASSWORD"
aliases = [7]
namespaces = ["*"]

[registries.local]
url = "http://127.0.0.1:5000"
anonymous = true
namespaces = ["scratch"]
"#
        ));
        let config = load_ok(&path, env(&[("GITLAB_PASSWORD", "glpat-xyz")]));

        assert_eq!(
            config.amqp.url.redacted(),
            "amqp://pushfleet@rabbit:5672/%2f"
        );
        assert_eq!(config.amqp.topology_prefix, "pf-test");
        let url = config.amqp.url_with_password().expect("amqp password");
        assert_eq!(
            url.expose_secret(),
            "amqp://pushfleet:amqp-secret@rabbit:5672/%2f"
        );

        assert_eq!(
            config.worker,
            WorkerConfig {
                id: "worker-1".into(),
                concurrency: 8,
                job_timeout_s: 600,
                shutdown_grace_s: 30,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                retry_min_delay_ms: DEFAULT_RETRY_MIN_DELAY_MS,
                retry_max_delay_s: DEFAULT_RETRY_MAX_DELAY_S,
            }
        );
        assert_eq!(config.worker.job_timeout(), Duration::from_secs(600));
        assert_eq!(config.worker.shutdown_grace(), Duration::from_secs(30));
        assert_eq!(config.worker.prefetch(), 8);
        assert_eq!(
            config.docker.endpoint,
            DockerEndpoint::Http("http://dind:2375".into())
        );

        assert_eq!(config.registries.len(), 3);
        let harbor = config.registries.get("harbor").expect("harbor");
        assert_eq!(harbor.url.as_str(), "https://reg.example.com:10443/");
        assert_eq!(harbor.host, "reg.example.com:10443");
        assert_eq!(harbor.username.as_deref(), Some("robot$ci"));
        assert_eq!(
            harbor.password,
            Some(PasswordSource::File(harbor_pw.clone().into()))
        );
        assert_eq!(harbor.ca_file, Some(PathBuf::from(&ca)));
        assert_eq!(harbor.aliases, ["5", "harbor-prod"]);
        assert_eq!(harbor.namespaces, ["production", "team-a"]);
        assert!(!harbor.anonymous);
        let creds = harbor
            .credentials()
            .expect("readable")
            .expect("not anonymous");
        assert_eq!(creds.username, "robot$ci");
        assert_eq!(creds.password.expose_secret(), SECRET);

        let gitlab = config.registries.get("7").expect("gitlab by alias");
        assert_eq!(gitlab.key, "gitlab");
        assert_eq!(gitlab.host, "registry.gitlab.example.com");
        let creds = gitlab.credentials().expect("set").expect("not anonymous");
        assert_eq!(creds.password.expose_secret(), "glpat-xyz");

        let local = config.registries.get("local").expect("local");
        assert_eq!(local.host, "127.0.0.1:5000");
        assert!(local.anonymous);
        assert!(local.credentials().expect("anonymous").is_none());

        let keys: Vec<&str> = config.registries.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["gitlab", "harbor", "local"]);
    }

    #[test]
    fn defaults_apply_when_sections_are_absent() {
        let fx = Fixture::new();
        let config = load_ok(&fx.config(&minimal(&fx)), env(&[("HOSTNAME", "pod-7")]));
        assert_eq!(
            config.amqp.url.expose().expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            config.amqp.url.to_string(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(config.amqp.topology_prefix, "pushfleet");
        assert_eq!(config.amqp.password_file, None);
        assert_eq!(config.worker.id, format!("pod-7-{}", std::process::id()));
        assert_eq!(config.worker.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(config.worker.job_timeout(), Duration::from_secs(900));
        assert_eq!(config.worker.shutdown_grace(), Duration::from_secs(60));
        assert_eq!(config.docker.host, DEFAULT_DOCKER_HOST);
        assert_eq!(
            config.docker.endpoint,
            DockerEndpoint::Unix("/var/run/docker.sock".into())
        );
        let harbor = config.registries.get("harbor").expect("harbor");
        assert_eq!(harbor.host, "reg.example.com");
        assert!(harbor.aliases.is_empty());
    }

    #[test]
    fn environment_overrides_with_double_underscore() {
        let fx = Fixture::new();
        let path = fx.config(&format!("[worker]\nconcurrency = 2\n{}", minimal(&fx)));
        let config = load_ok(
            &path,
            env(&[
                ("PUSHFLEET__WORKER__CONCURRENCY", "8"),
                (
                    "PUSHFLEET__AMQP__URL",
                    &format!("amqp://pf:{SECRET}@rabbit:5672/%2f"),
                ),
                ("PUSHFLEET__WORKER__JOB_TIMEOUT_S", "1200"),
                // Not ours (single underscore): ignored, like Kubernetes service variables.
                ("PUSHFLEET_SERVICE_HOST", "10.0.0.1"),
            ]),
        );
        assert_eq!(config.worker.concurrency, 8);
        assert_eq!(config.worker.job_timeout(), Duration::from_secs(1200));
        assert_eq!(
            config.amqp.url.expose().expose_secret(),
            format!("amqp://pf:{SECRET}@rabbit:5672/%2f")
        );
        assert_eq!(config.amqp.url.to_string(), "amqp://pf:***@rabbit:5672/%2f");
        assert_eq!(
            config
                .amqp
                .url_with_password()
                .expect("url")
                .expose_secret(),
            format!("amqp://pf:{SECRET}@rabbit:5672/%2f")
        );
    }

    #[test]
    fn environment_values_are_not_reparsed() {
        let fx = Fixture::new();
        let config = load_ok(
            &fx.config(&minimal(&fx)),
            env(&[
                // try_parsing would turn this into 123.
                ("PUSHFLEET__WORKER__ID", "0123"),
                (
                    "PUSHFLEET__REGISTRIES__HARBOR__NAMESPACES",
                    "production, team-a",
                ),
                ("PUSHFLEET__REGISTRIES__HARBOR__ALIASES", "5"),
                ("PUSHFLEET__REGISTRIES__HARBOR__USERNAME", "true"),
                // Empty counts as unset.
                ("PUSHFLEET__DOCKER__HOST", ""),
            ]),
        );
        assert_eq!(config.worker.id, "0123");
        let harbor = config.registries.get("5").expect("alias from env");
        assert_eq!(harbor.namespaces, ["production", "team-a"]);
        assert_eq!(harbor.username.as_deref(), Some("true"));
        assert_eq!(config.docker.host, DEFAULT_DOCKER_HOST);
    }

    #[test]
    fn a_registry_can_come_from_the_environment_alone() {
        let config = load(
            None,
            env(&[
                (
                    "PUSHFLEET__REGISTRIES__HUB__URL",
                    "https://registry-1.docker.io",
                ),
                ("PUSHFLEET__REGISTRIES__HUB__USERNAME", "ci"),
                ("PUSHFLEET__REGISTRIES__HUB__PASSWORD_ENV", "HUB_TOKEN"),
                ("PUSHFLEET__REGISTRIES__HUB__NAMESPACES", "mycompany"),
                ("HUB_TOKEN", "dckr_pat"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let hub = config.registries.get("hub").expect("hub");
        assert_eq!(hub.host, "docker.io");
        assert_eq!(hub.url.as_str(), "https://registry-1.docker.io/");
    }

    #[test]
    fn unknown_keys_are_all_named() {
        let fx = Fixture::new();
        let path = fx.config(&format!(
            "extra = 1\n[worker]\nconcurency = 3\n{}passwd_file = \"/x\"\n",
            minimal(&fx)
        ));
        let errors = load_err(&path, env(&[("PUSHFLEET__DOCKER__SOCKET", "/x.sock")]));
        let shown = errors.to_string();
        for key in [
            "extra",
            "worker.concurency",
            "registries.harbor.passwd_file",
        ] {
            let problem = problem_for(&errors, key);
            assert!(problem.message.contains("unknown key"), "{problem}");
            assert_eq!(problem.origin, Some(Origin::File(path.clone())));
        }
        let env_problem = problem_for(&errors, "docker.socket");
        assert_eq!(
            env_problem.origin,
            Some(Origin::Environment {
                variable: "PUSHFLEET__DOCKER__SOCKET".into()
            })
        );
        assert!(
            shown.contains(
                "environment variable PUSHFLEET__DOCKER__SOCKET: docker.socket: unknown key"
            ),
            "{shown}"
        );
        assert_eq!(errors.problems().len(), 4, "{shown}");
    }

    #[test]
    fn missing_password_source_names_the_registry_and_the_file() {
        let fx = Fixture::new();
        let path = fx.config(
            "[registries.harbor]\nurl = \"https://reg.example.com\"\nusername = \"u\"\n\
             namespaces = [\"production\"]\n",
        );
        let errors = load_err(&path, env(&[]));
        let problem = problem_for(&errors, "registries.harbor");
        assert!(problem.message.contains("empty credentials"), "{problem}");
        let shown = errors.to_string();
        assert!(
            shown.contains(&format!("{}: registries.harbor: ", path.display())),
            "{shown}"
        );
        assert!(shown.contains("pushfleet.toml"), "{shown}");
    }

    #[test]
    fn inline_password_is_refused_and_not_repeated() {
        let fx = Fixture::new();
        let path = fx.config(&format!("{}password = \"{SECRET}\"\n", minimal(&fx)));
        let errors = load_err(&path, env(&[]));
        let problem = problem_for(&errors, "registries.harbor.password");
        assert!(problem.message.contains("password_file"), "{problem}");
        assert!(problem.message.contains("password_env"), "{problem}");
        assert!(!errors.to_string().contains(SECRET));
        assert!(!format!("{errors:?}").contains(SECRET));
    }

    #[test]
    fn unreadable_password_file_names_the_key_not_the_content() {
        let fx = Fixture::new();
        let mut not_utf8 = SECRET.as_bytes().to_vec();
        not_utf8.push(0xff);
        let bad = fx.file("bad-pw", &not_utf8);
        let missing = fx.dir.path().join("absent").display().to_string();
        let path = fx.config(&format!(
            r#"
[registries.a]
url = "https://a.example.com"
username = "u"
password_file = "{bad}"
namespaces = ["x"]
[registries.b]
url = "https://b.example.com"
username = "u"
password_file = "{missing}"
namespaces = ["x"]
[registries.c]
url = "https://c.example.com"
username = "u"
password_file = "{empty}"
namespaces = ["x"]
"#,
            empty = fx.file("empty-pw", b"\n"),
        ));
        let errors = load_err(&path, env(&[]));
        assert!(
            problem_for(&errors, "registries.a.password_file")
                .message
                .contains("UTF-8")
        );
        assert!(
            problem_for(&errors, "registries.b.password_file")
                .message
                .contains(&missing)
        );
        assert!(
            problem_for(&errors, "registries.c.password_file")
                .message
                .contains("empty")
        );
        assert!(!errors.to_string().contains(SECRET), "{errors}");
    }

    #[test]
    fn password_env_must_be_set() {
        let fx = Fixture::new();
        let path = fx.config(
            "[registries.harbor]\nurl = \"https://reg.example.com\"\nusername = \"u\"\n\
             password_env = \"HARBOR_PASSWORD\"\nnamespaces = [\"production\"]\n",
        );
        let errors = load_err(&path, env(&[("OTHER", "x")]));
        let problem = problem_for(&errors, "registries.harbor.password_env");
        assert!(problem.message.contains("HARBOR_PASSWORD"), "{problem}");
        assert!(problem.message.contains("not set"), "{problem}");
        let errors = load_err(&path, env(&[("HARBOR_PASSWORD", "")]));
        assert!(
            problem_for(&errors, "registries.harbor.password_env")
                .message
                .contains("empty")
        );
        load_ok(&path, env(&[("HARBOR_PASSWORD", "pw")]));
    }

    #[test]
    fn password_sources_exclude_each_other() {
        let fx = Fixture::new();
        let path = fx.config(&format!(
            "{}password_env = \"HARBOR_PASSWORD\"\n",
            minimal(&fx)
        ));
        let errors = load_err(&path, env(&[("HARBOR_PASSWORD", "pw")]));
        assert!(
            problem_for(&errors, "registries.harbor")
                .message
                .contains("exactly one")
        );
    }

    #[test]
    fn anonymous_registries_take_no_credentials() {
        let fx = Fixture::new();
        let path = fx.config(&format!("{}anonymous = true\n", minimal(&fx)));
        let errors = load_err(&path, env(&[]));
        for key in [
            "registries.harbor.username",
            "registries.harbor.password_file",
        ] {
            assert!(problem_for(&errors, key).message.contains("anonymous"));
        }
    }

    #[test]
    fn bad_registry_urls_are_refused() {
        let cases = [
            ("not a url", "not a valid URL"),
            ("ftp://reg.example.com", "scheme"),
            ("https://reg.example.com/v2/", "path"),
            ("https://reg.example.com/team", "path"),
            ("https://reg.example.com/?x=1", "query"),
            ("https://user:pass@reg.example.com", "credentials"),
        ];
        for (url, expected) in cases {
            let errors = load_from_str(
                &format!(
                    "[registries.r]\nurl = \"{url}\"\nanonymous = true\nnamespaces = [\"*\"]\n"
                ),
                env(&[]),
            )
            .expect_err(url);
            let problem = problem_for(&errors, "registries.r.url");
            assert!(problem.message.contains(expected), "{url}: {problem}");
            assert!(!problem.message.contains("pass@"), "{problem}");
        }
    }

    #[test]
    fn registry_host_is_what_image_references_use() {
        let cases = [
            ("https://reg.example.com", "reg.example.com"),
            ("https://reg.example.com:443", "reg.example.com"),
            ("https://reg.example.com:10443/", "reg.example.com:10443"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://[::1]:5000", "[::1]:5000"),
            ("https://REG.Example.com", "reg.example.com"),
            ("https://registry-1.docker.io", "docker.io"),
            ("https://index.docker.io", "docker.io"),
        ];
        for (url, host) in cases {
            let (_, got) = parse_registry_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(got, host, "{url}");
        }
    }

    #[test]
    fn aliases_must_be_unique_across_the_catalogue() {
        let toml = r#"
[registries.a]
url = "https://a.example.com"
anonymous = true
aliases = ["5", "b"]
namespaces = ["*"]
[registries.b]
url = "https://b.example.com"
anonymous = true
aliases = ["5", "6", "6"]
namespaces = ["*"]
"#;
        let errors = load_from_str(toml, env(&[])).expect_err("duplicates");
        let messages: Vec<String> = errors.problems().iter().map(|p| p.to_string()).collect();
        let joined = messages.join("\n");
        assert!(
            joined.contains("registries.a.aliases: alias `b` is also a registry key"),
            "{joined}"
        );
        assert!(
            joined.contains("registries.b.aliases: alias `5` is already an alias of registry `a`"),
            "{joined}"
        );
        assert!(joined.contains("alias `6` is listed twice"), "{joined}");
        assert_eq!(messages.len(), 3, "{joined}");
    }

    #[test]
    fn lookup_by_key_or_alias() {
        let toml = r#"
[registries.harbor]
url = "https://reg.example.com"
anonymous = true
aliases = ["5"]
namespaces = ["*"]
"#;
        let config = load_from_str(toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.registries.get("harbor").map(|r| r.key.as_str()),
            Some("harbor")
        );
        assert_eq!(
            config.registries.get("5").map(|r| r.key.as_str()),
            Some("harbor")
        );
        assert!(config.registries.get("6").is_none());
        assert!(config.registries.get("Harbor").is_none());
        assert!(!config.registries.is_empty());
    }

    #[test]
    fn allows_repository_only_strictly_inside_a_namespace() {
        let toml = r#"
[registries.r]
url = "https://r.example.com"
anonymous = true
namespaces = ["team-a", "org/team"]
[registries.any]
url = "https://any.example.com"
anonymous = true
namespaces = ["*"]
"#;
        let config = load_from_str(toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        let r = config.registries.get("r").expect("r");
        let cases = [
            ("team-a/app", true),
            ("team-a/sub/app", true),
            ("org/team/app", true),
            ("team-a", false),
            ("team-ab/app", false),
            ("team-a-b/app", false),
            ("team-a/", false),
            ("team-a//app", false),
            ("org/team", false),
            ("org/other/app", false),
            ("/team-a/app", false),
            ("", false),
            ("app", false),
        ];
        for (repo, allowed) in cases {
            assert_eq!(r.allows_repository(repo), allowed, "{repo}");
        }
        let any = config.registries.get("any").expect("any");
        assert!(any.allows_repository("app"));
        assert!(any.allows_repository("x/y/z"));
        assert!(!any.allows_repository(""));
        assert!(!any.allows_repository("x//y"));
    }

    #[test]
    fn namespaces_are_required_and_checked() {
        let toml = r#"
[registries.a]
url = "https://a.example.com"
anonymous = true
[registries.b]
url = "https://b.example.com"
anonymous = true
namespaces = []
[registries.c]
url = "https://c.example.com"
anonymous = true
namespaces = ["team-a/", "Team"]
"#;
        let errors = load_from_str(toml, env(&[])).expect_err("namespaces");
        assert!(
            problem_for(&errors, "registries.a.namespaces")
                .message
                .contains("missing")
        );
        assert!(
            problem_for(&errors, "registries.b.namespaces")
                .message
                .contains("at least one")
        );
        assert!(
            problem_for(&errors, "registries.c.namespaces")
                .message
                .contains("team-a/")
        );
    }

    #[test]
    fn worker_limits_are_enforced() {
        let fx = Fixture::new();
        let base = minimal(&fx);
        let cases = [
            (
                "[worker]\nconcurrency = 0\n",
                "worker.concurrency",
                "between 1 and 256",
            ),
            (
                "[worker]\nconcurrency = 257\n",
                "worker.concurrency",
                "between 1 and 256",
            ),
            (
                "[worker]\nconcurrency = -1\n",
                "worker.concurrency",
                "whole number",
            ),
            (
                "[worker]\njob_timeout_s = 1800\n",
                "worker.job_timeout_s",
                "consumer_timeout",
            ),
            (
                "[worker]\njob_timeout_s = 0\n",
                "worker.job_timeout_s",
                "between",
            ),
            ("[worker]\nid = \"a b\"\n", "worker.id", "spaces"),
            (
                "[docker]\nhost = \"ssh://docker\"\n",
                "docker.host",
                "unsupported scheme",
            ),
            (
                "[docker]\nhost = \"unix://docker.sock\"\n",
                "docker.host",
                "absolute",
            ),
            ("[docker]\nhost = \"tcp://docker\"\n", "docker.host", "port"),
            (
                "[amqp]\nurl = \"http://rabbit\"\n",
                "amqp.url",
                "amqp or amqps",
            ),
            (
                "[amqp]\ntopology_prefix = \"amq.x\"\n",
                "amqp.topology_prefix",
                "amq.",
            ),
            ("amqp = 5\n", "amqp", "expected a table"),
        ];
        for (section, key, expected) in cases {
            let errors = load_from_str(&format!("{section}{base}"), env(&[])).expect_err(section);
            let problem = problem_for(&errors, key);
            assert!(problem.message.contains(expected), "{section}: {problem}");
        }
        let errors = load_err(
            &fx.config(&base),
            env(&[("PUSHFLEET__WORKER__JOB_TIMEOUT_S", "1701")]),
        );
        let problem = problem_for(&errors, "worker.job_timeout_s");
        assert_eq!(
            problem.origin,
            Some(Origin::Environment {
                variable: "PUSHFLEET__WORKER__JOB_TIMEOUT_S".into()
            })
        );
        let errors = load_err(
            &fx.config(&base),
            env(&[("PUSHFLEET__WORKER__CONCURRENCY", "eight")]),
        );
        assert!(
            problem_for(&errors, "worker.concurrency")
                .message
                .contains("\"eight\"")
        );
    }

    #[test]
    fn docker_hosts() {
        let cases = [
            (
                "unix:///var/run/docker.sock",
                Some(DockerEndpoint::Unix("/var/run/docker.sock".into())),
            ),
            (
                "tcp://127.0.0.1:2375",
                Some(DockerEndpoint::Http("http://127.0.0.1:2375".into())),
            ),
            (
                "http://dind:2375",
                Some(DockerEndpoint::Http("http://dind:2375".into())),
            ),
            (
                "http://dind",
                Some(DockerEndpoint::Http("http://dind:80".into())),
            ),
            ("https://dind:2376", None),
            ("tcp://dind:2375/x", None),
            ("/var/run/docker.sock", None),
            ("", None),
        ];
        for (host, expected) in cases {
            assert_eq!(DockerEndpoint::parse(host).ok(), expected, "{host}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let toml = r#"
[worker]
concurrency = 0
job_timeout_s = 99999
[docker]
host = "ftp://x"
[registries.a]
url = "ftp://a"
namespaces = []
[registries.B]
url = "https://b.example.com"
anonymous = true
namespaces = ["*"]
"#;
        let errors = load_from_str(toml, env(&[])).expect_err("many problems");
        for key in [
            "worker.concurrency",
            "worker.job_timeout_s",
            "docker.host",
            "registries.a.url",
            "registries.a.namespaces",
            "registries.a.username",
            "registries.a",
            "registries.B",
        ] {
            problem_for(&errors, key);
        }
        // No origin without a file: just `key: message`.
        assert!(
            errors
                .to_string()
                .lines()
                .any(|l| l.starts_with("worker.concurrency: "))
        );
    }

    #[test]
    fn an_empty_catalogue_is_an_error() {
        let errors = load_from_str("[worker]\nconcurrency = 2\n", env(&[])).expect_err("empty");
        assert!(
            problem_for(&errors, "registries")
                .message
                .contains("no registries")
        );
    }

    #[test]
    fn missing_or_malformed_files_are_problems() {
        let fx = Fixture::new();
        let missing = fx.dir.path().join("absent.toml");
        let errors = load_err(&missing, env(&[]));
        assert_eq!(errors.problems().len(), 1);
        assert!(
            errors
                .to_string()
                .starts_with(&format!("{}: cannot read", missing.display()))
        );

        let path = fx.config(&format!("[amqp]\nurl = \"amqp://u:{SECRET}@h\n"));
        let errors = load_err(&path, env(&[]));
        let shown = errors.to_string();
        assert!(
            shown.contains("not valid TOML at line 2, column"),
            "{shown}"
        );
        assert!(!shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn malformed_override_names_are_reported() {
        let fx = Fixture::new();
        let errors = load_err(
            &fx.config(&minimal(&fx)),
            env(&[
                ("PUSHFLEET__WORKER__", "1"),
                ("PUSHFLEET__WORKER__A.B", "1"),
            ]),
        );
        assert_eq!(errors.problems().len(), 2, "{errors}");
        assert!(
            errors
                .to_string()
                .contains("environment variable PUSHFLEET__WORKER__:")
        );
    }

    #[test]
    fn registry_keys_must_be_lowercase() {
        let errors = load_from_str(
            "[registries.Harbor]\nurl = \"https://h\"\nanonymous = true\nnamespaces = [\"*\"]\n",
            env(&[]),
        )
        .expect_err("uppercase key");
        assert!(
            problem_for(&errors, "registries.Harbor")
                .message
                .contains("lowercase")
        );
    }

    #[test]
    fn credentials_are_read_again_after_rotation() {
        let fx = Fixture::new();
        let config = load_ok(&fx.config(&minimal(&fx)), env(&[]));
        let harbor = config.registries.get("harbor").expect("harbor");
        fx.file("harbor-pw", b"rotated\n");
        let creds = harbor.credentials().expect("readable").expect("creds");
        assert_eq!(creds.password.expose_secret(), "rotated");
    }

    #[test]
    fn amqp_urls_name_the_nodes_of_a_cluster_in_order() {
        let fx = Fixture::new();
        let pw = fx.file("amqp-pw", b"s3cret\n");
        let toml = format!(
            "[amqp]\nurls = [\"amqp://pf@n1:5672/%2f\", \"amqp://pf@n2:5672/%2f\", \"amqp://pf@n3/%2f\"]\npassword_file = \"{pw}\"\nquorum_replicas = 3\n{}",
            minimal(&fx)
        );
        let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.amqp.url.to_string(), "amqp://pf@n1:5672/%2f");
        let urls = config.amqp.urls_with_password().expect("urls");
        let exposed: Vec<&str> = urls.iter().map(|u| u.expose_secret()).collect();
        assert_eq!(
            exposed,
            [
                "amqp://pf:s3cret@n1:5672/%2f",
                "amqp://pf:s3cret@n2:5672/%2f",
                "amqp://pf:s3cret@n3/%2f"
            ]
        );
        assert_eq!(config.amqp.quorum_replicas, Some(3));
        let described = config.describe();
        assert!(described.contains("n2:5672"), "{described}");
        assert!(!described.contains("s3cret"), "{described}");
        let queues = config.amqp.topology().queues();
        assert!(queues.iter().all(|q| {
            q.arguments
                .iter()
                .any(|(k, _)| k == "x-quorum-initial-group-size" || k == "x-initial-cluster-size")
        }));

        // From the environment, comma-separated, over the file's single url.
        let toml = format!("[amqp]\nurl = \"amqp://a\"\n{}", minimal(&fx));
        let errors = load_from_str(
            &toml,
            env(&[("PUSHFLEET__AMQP__URLS", "amqp://n1, amqp://n2")]),
        )
        .expect_err("url and urls");
        assert!(
            problem_for(&errors, "amqp.urls")
                .message
                .contains("not both")
        );
        let config = load_from_str(
            &minimal(&fx),
            env(&[("PUSHFLEET__AMQP__URLS", "amqp://n1, amqp://n2")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.amqp.nodes(), "amqp://n1, amqp://n2");
    }

    #[test]
    fn bad_amqp_urls_and_replica_counts_are_problems() {
        let fx = Fixture::new();
        for (amqp, key, needle) in [
            ("urls = []", "amqp.urls", "empty"),
            (
                "urls = [\"amqp://n1\", \"http://n2\"]",
                "amqp.urls",
                "entry 2",
            ),
            ("urls = [\"amqp://n1\", \"\"]", "amqp.urls", "entry 2"),
            (
                "quorum_replicas = 0",
                "amqp.quorum_replicas",
                "between 1 and 9",
            ),
            (
                "quorum_replicas = 10",
                "amqp.quorum_replicas",
                "between 1 and 9",
            ),
        ] {
            let toml = format!("[amqp]\n{amqp}\n{}", minimal(&fx));
            let errors = load_from_str(&toml, env(&[])).expect_err(amqp);
            let problem = problem_for(&errors, key);
            assert!(
                problem.message.contains(needle),
                "{amqp}: {}",
                problem.message
            );
        }
    }

    #[test]
    fn amqp_password_file_is_percent_encoded_into_the_url() {
        let fx = Fixture::new();
        let pw = fx.file("amqp-pw", b"p@ss/w:rd\n");
        let toml = format!(
            "[amqp]\nurl = \"amqps://pf@rabbit/vhost\"\npassword_file = \"{pw}\"\n{}",
            minimal(&fx)
        );
        let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        let url = config.amqp.url_with_password().expect("url");
        assert_eq!(
            url.expose_secret(),
            "amqps://pf:p%40ss%2Fw%3Ard@rabbit/vhost"
        );
        assert_eq!(config.amqp.url.to_string(), "amqps://pf@rabbit/vhost");

        let toml = format!(
            "[amqp]\nurl = \"amqp://rabbit\"\npassword_file = \"{pw}\"\n{}",
            minimal(&fx)
        );
        let errors = load_from_str(&toml, env(&[])).expect_err("no user");
        assert!(
            problem_for(&errors, "amqp.password_file")
                .message
                .contains("no user name")
        );
    }

    #[test]
    fn secrets_never_appear_in_describe_debug_or_errors() {
        let fx = Fixture::new();
        let amqp_pw = fx.file("amqp-pw", SECRET.as_bytes());
        let toml = format!(
            "[amqp]\nurl = \"amqp://pf:{SECRET}@rabbit/%2f\"\n{}\n\
             [registries.gitlab]\nurl = \"https://gl.example.com\"\nusername = \"u\"\n\
             password_env = \"GL_PW\"\nnamespaces = [\"*\"]\n",
            minimal(&fx)
        );
        let environment = env(&[
            ("GL_PW", SECRET),
            ("PUSHFLEET__AMQP__PASSWORD_FILE", &amqp_pw),
        ]);
        let config = load_from_str(&toml, environment.clone()).unwrap_or_else(|e| panic!("{e}"));
        let described = config.describe();
        for shown in [
            described.clone(),
            format!("{config:?}"),
            format!("{config:#?}"),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        assert!(
            described.contains("amqp://pf:***@rabbit/%2f"),
            "{described}"
        );
        assert!(
            described.contains(&format!("file {amqp_pw} (readable)")),
            "{described}"
        );
        assert!(described.contains("env GL_PW (set)"), "{described}");
        assert!(described.contains("harbor"), "{described}");
        assert!(described.contains("namespaces: production"), "{described}");

        // The same configuration, broken in every secret-adjacent way.
        let broken = format!(
            "{toml}password = \"{SECRET}\"\n[registries.bad]\nurl = \"https://u:{SECRET}@x\"\n\
             namespaces = [\"*\"]\nanonymous = true\n[amqp2]\nx = \"{SECRET}\"\n"
        );
        let errors = load_from_str(&broken, environment).expect_err("broken");
        assert!(errors.problems().len() >= 3, "{errors}");
        assert!(!errors.to_string().contains(SECRET), "{errors}");
        assert!(!format!("{errors:?}").contains(SECRET), "{errors:?}");
    }

    #[test]
    fn describe_reports_unusable_sources() {
        let fx = Fixture::new();
        let config = load_ok(&fx.config(&minimal(&fx)), env(&[]));
        std::fs::remove_file(fx.dir.path().join("harbor-pw")).expect("remove");
        let described = config.describe();
        assert!(described.contains("NOT USABLE"), "{described}");
    }

    #[test]
    fn redact_url_cases() {
        let cases = [
            (
                "amqp://user:pw@rabbit:5672/%2f",
                "amqp://user:***@rabbit:5672/%2f",
            ),
            ("amqp://user@rabbit:5672/%2f", "amqp://user@rabbit:5672/%2f"),
            ("amqp://rabbit", "amqp://rabbit"),
            ("amqp://:pw@rabbit", "amqp://:***@rabbit"),
            (
                "https://u:p%40ss@reg.example.com/",
                "https://u:***@reg.example.com/",
            ),
            ("not a url with:secret@stuff", "<invalid URL>"),
            ("", "<invalid URL>"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "{input}");
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let fx = Fixture::new();
        let example = include_str!("../../deploy/config/pushfleet.example.toml");
        let amqp_pw = fx.file("amqp", b"amqp-pw\n");
        let harbor_pw = fx.file("harbor", b"harbor-pw\n");
        let ca = fx.file("harbor-ca.crt", b"-----BEGIN CERTIFICATE-----\n");
        let hub = docker_config_file(
            &fx,
            ".dockerconfigjson",
            &[("https://index.docker.io/v1/", "mycompany-ci:dckr_pat")],
        );
        let config = load_from_str(
            example,
            env(&[
                ("PUSHFLEET__AMQP__PASSWORD_FILE", &amqp_pw),
                ("PUSHFLEET__REGISTRIES__HARBOR__PASSWORD_FILE", &harbor_pw),
                ("PUSHFLEET__REGISTRIES__HARBOR__CA_FILE", &ca),
                ("PUSHFLEET__REGISTRIES__DOCKERHUB__DOCKER_CONFIG", &hub),
                ("GITLAB_REGISTRY_TOKEN", "glpat"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dockerhub = config.registries.get("dockerhub").expect("dockerhub");
        let login = dockerhub.credentials().expect("resolved").expect("creds");
        assert_eq!(login.username, "mycompany-ci");
        assert!(config.registries.get("harbor").is_some());
        assert!(config.registries.len() >= 2);
        assert!(!example.contains("password ="));
    }

    // --- docker_config ---

    fn b64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// A Docker `config.json` in the fixture directory with `auths` entries `(key, user:pw)`.
    fn docker_config_file(fx: &Fixture, name: &str, auths: &[(&str, &str)]) -> String {
        let entries: Vec<String> = auths
            .iter()
            .map(|(key, login)| format!(r#""{key}": {{"auth": "{}"}}"#, b64(login)))
            .collect();
        fx.file(
            name,
            format!(r#"{{"auths": {{{}}}}}"#, entries.join(", ")).as_bytes(),
        )
    }

    fn registry_toml(key: &str, url: &str, extra: &str) -> String {
        format!("[registries.{key}]\nurl = \"{url}\"\nnamespaces = [\"team\"]\n{extra}\n")
    }

    #[tokio::test]
    async fn docker_config_gives_user_and_password() {
        let fx = Fixture::new();
        let dc = docker_config_file(
            &fx,
            "config.json",
            &[
                ("https://index.docker.io/v1/", &format!("hubuser:{SECRET}")),
                ("reg.example.com:5000", "robot:reg-pw"),
            ],
        );
        let toml = format!(
            "{}{}{}",
            registry_toml(
                "hub",
                "https://registry-1.docker.io",
                &format!("docker_config = \"{dc}\"")
            ),
            registry_toml(
                "reg",
                "https://reg.example.com:5000",
                &format!("username = \"robot\"\ndocker_config = \"{dc}\"")
            ),
            registry_toml(
                "index",
                "https://index.docker.io",
                &format!("docker_config = \"{dc}\"")
            ),
        );
        let config = load_from_str(&toml, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        let hub = config.registries.get("hub").expect("hub");
        assert_eq!(hub.host, "docker.io");
        assert_eq!(hub.username, None);
        assert_eq!(
            hub.password,
            Some(PasswordSource::DockerConfig(DockerConfigSource {
                path: dc.clone().into(),
                server: "https://index.docker.io/v1/".into(),
            }))
        );
        for registry in [hub, config.registries.get("index").expect("index")] {
            let login = registry.credentials().expect("resolved").expect("creds");
            assert_eq!(login.username, "hubuser");
            assert_eq!(login.password.expose_secret(), SECRET);
            let login = registry
                .credentials_async()
                .await
                .expect("resolved")
                .expect("creds");
            assert_eq!(login.username, "hubuser");
        }
        let reg = config.registries.get("reg").expect("reg");
        let login = reg.credentials_async().await.expect("ok").expect("creds");
        assert_eq!(
            (login.username.as_str(), login.password.expose_secret()),
            ("robot", "reg-pw")
        );

        let described = config.describe();
        assert!(
            described.contains(&format!(
                "docker config {dc} (key https://index.docker.io/v1/) (resolved)"
            )),
            "{described}"
        );
        assert!(
            described.contains("hubuser (from the docker config)"),
            "{described}"
        );
        assert!(!described.contains(SECRET), "{described}");
        assert!(!format!("{config:?}").contains(SECRET));

        // Another user logs in there later: jobs fail rather than push as someone else.
        std::fs::write(
            &dc,
            format!(
                r#"{{"auths": {{"reg.example.com:5000": {{"auth": "{}"}}}}}}"#,
                b64(&format!("intruder:{SECRET}"))
            ),
        )
        .expect("rewrite");
        let err = reg.credentials_async().await.expect_err("other user");
        assert!(
            matches!(err, CredentialError::DockerConfigUserMismatch { .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains(SECRET), "{err}");
        // And the Hub entry is gone: the one error naming the key.
        let err = hub.credentials().expect_err("gone");
        assert!(
            matches!(err, CredentialError::NoDockerCredential { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("`https://index.docker.io/v1/`"),
            "{err}"
        );
    }

    #[test]
    fn docker_config_true_is_dockers_own_default() {
        let fx = Fixture::new();
        let dir = fx.dir.path().join("dockercfg");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(
            dir.join("config.json"),
            format!(
                r#"{{"auths": {{"reg.example.com": {{"auth": "{}"}}}}}}"#,
                b64("u:pw")
            ),
        )
        .expect("write");
        let home = fx.dir.path().join("home");
        std::fs::create_dir_all(home.join(".docker")).expect("mkdir");
        std::fs::copy(dir.join("config.json"), home.join(".docker/config.json")).expect("copy");
        let toml = registry_toml("reg", "https://reg.example.com", "docker_config = true");
        let dir_s = dir.display().to_string();
        let home_s = home.display().to_string();
        let cases = [
            (
                vec![("DOCKER_CONFIG", dir_s.as_str()), ("HOME", home_s.as_str())],
                dir.join("config.json"),
            ),
            (
                vec![("HOME", home_s.as_str())],
                home.join(".docker/config.json"),
            ),
        ];
        for (vars, expected) in cases {
            let config = load_from_str(&toml, env(&vars)).unwrap_or_else(|e| panic!("{e}"));
            let reg = config.registries.get("reg").expect("reg");
            match &reg.password {
                Some(PasswordSource::DockerConfig(source)) => {
                    assert_eq!(source.path, expected);
                    assert_eq!(source.server, "reg.example.com");
                }
                other => panic!("{other:?}"),
            }
        }
        // From the environment alone, as text.
        let config = load(
            None,
            env(&[
                ("PUSHFLEET__REGISTRIES__REG__URL", "https://reg.example.com"),
                ("PUSHFLEET__REGISTRIES__REG__DOCKER_CONFIG", "true"),
                ("PUSHFLEET__REGISTRIES__REG__NAMESPACES", "team"),
                ("DOCKER_CONFIG", dir_s.as_str()),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let login = config
            .registries
            .get("reg")
            .expect("reg")
            .credentials()
            .expect("ok")
            .expect("creds");
        assert_eq!(login.username, "u");

        let errors = load_from_str(&toml, env(&[])).expect_err("no HOME");
        assert!(
            problem_for(&errors, "registries.reg.docker_config")
                .message
                .contains("neither DOCKER_CONFIG nor HOME"),
            "{errors}"
        );
        // false is no source at all.
        let errors = load_from_str(
            &registry_toml("reg", "https://reg.example.com", "docker_config = false"),
            env(&[]),
        )
        .expect_err("no source");
        assert!(
            problem_for(&errors, "registries.reg")
                .message
                .contains("no password source")
        );
    }

    #[test]
    fn docker_config_problems_are_found_at_load() {
        let fx = Fixture::new();
        let dc = docker_config_file(&fx, "config.json", &[("other.example.com", "u:pw")]);
        let missing = fx.dir.path().join("absent.json").display().to_string();
        let broken = fx.file("broken.json", format!("{{\"auths\": \"{SECRET}").as_bytes());
        let pw = fx.file("pw", b"pw\n");
        let toml = [
            // No entry for the key: the seed-002 error, naming the key.
            registry_toml(
                "none",
                "https://reg.example.com:5000",
                &format!("docker_config = \"{dc}\""),
            ),
            registry_toml(
                "missing",
                "https://reg.example.com",
                &format!("docker_config = \"{missing}\""),
            ),
            registry_toml(
                "broken",
                "https://reg.example.com",
                &format!("docker_config = \"{broken}\""),
            ),
            registry_toml(
                "both",
                "https://other.example.com",
                &format!("username = \"u\"\npassword_file = \"{pw}\"\ndocker_config = \"{dc}\""),
            ),
            registry_toml(
                "mismatch",
                "https://other.example.com",
                &format!("username = \"someone-else\"\ndocker_config = \"{dc}\""),
            ),
            registry_toml(
                "anon",
                "https://other.example.com",
                &format!("anonymous = true\ndocker_config = \"{dc}\""),
            ),
            registry_toml("number", "https://other.example.com", "docker_config = 5"),
            registry_toml(
                "hubroot",
                "https://docker.io",
                &format!("docker_config = \"{dc}\""),
            ),
        ]
        .concat();
        let errors = load_from_str(&toml, env(&[])).expect_err("problems");
        let none = problem_for(&errors, "registries.none.docker_config");
        assert!(
            none.message
                .starts_with("no usable credentials for `reg.example.com:5000` in docker config"),
            "{none}"
        );
        assert!(
            problem_for(&errors, "registries.missing.docker_config")
                .message
                .contains("absent.json")
        );
        assert!(
            problem_for(&errors, "registries.broken.docker_config")
                .message
                .contains("not valid JSON (line 1")
        );
        assert!(
            problem_for(&errors, "registries.both")
                .message
                .contains("exactly one")
        );
        assert!(
            problem_for(&errors, "registries.mismatch.username")
                .message
                .contains("another user than the configured username `someone-else`")
        );
        assert!(
            problem_for(&errors, "registries.anon.docker_config")
                .message
                .contains("anonymous")
        );
        assert!(
            problem_for(&errors, "registries.number.docker_config")
                .message
                .contains("or true")
        );
        assert!(
            problem_for(&errors, "registries.hubroot.url")
                .message
                .contains("https://registry-1.docker.io")
        );
        // A docker_config registry needs no username; the others still do.
        assert!(
            !errors
                .problems()
                .iter()
                .any(|p| p.key == "registries.none.username"),
            "{errors}"
        );
        let shown = format!("{errors}\n{errors:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn the_amqp_password_is_never_shown() {
        // Describe, Debug and the error of every AMQP URL problem, from the file and the
        // environment, with the password in the URL.
        let fx = Fixture::new();
        let base = minimal(&fx);
        let config = load_from_str(
            &format!("[amqp]\nurl = \"amqps://pf:{SECRET}@rabbit:5671/vh\"\n{base}"),
            env(&[]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for shown in [
            config.describe(),
            format!("{config:?}"),
            config.amqp.url.to_string(),
            format!("{:?}", config.amqp.url),
            config.amqp.url.redacted(),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        assert!(config.describe().contains("amqps://pf:***@rabbit:5671/vh"));
        for url in [
            format!("http://pf:{SECRET}@rabbit"),
            format!("amqp://pf:{SECRET}@"),
            format!("amqp://pf:{SECRET}@[rabbit"),
            format!("amqp://pf:{SECRET}@rabbit:99999"),
            format!("pf:{SECRET}@rabbit"),
        ] {
            let from_file = load_from_str(&format!("[amqp]\nurl = \"{url}\"\n{base}"), env(&[]))
                .expect_err(&url);
            let from_env =
                load_from_str(&base, env(&[("PUSHFLEET__AMQP__URL", &url)])).expect_err(&url);
            for errors in [from_file, from_env] {
                problem_for(&errors, "amqp.url");
                let shown = format!("{errors}\n{errors:?}");
                assert!(!shown.contains(SECRET), "{url}: {shown}");
            }
        }
    }
}
