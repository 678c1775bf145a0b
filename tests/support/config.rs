//! One typed configuration for test workers, rendered from one template: loaded in-process
//! ([`TestConfig::load`], for `fleet::TestWorker`) or written to a file for a worker process
//! ([`TestConfig::toml`], for `process::WorkerProcess`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use pushfleet_worker::config::{Config, load_from_str};

use crate::StackEnv;

/// The `[worker]` settings tests vary.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// `concurrency` (= prefetch).
    pub concurrency: u16,
    /// `job_timeout_s`.
    pub job_timeout_s: u64,
    /// `shutdown_grace_s`.
    pub shutdown_grace_s: u64,
    /// `max_attempts`.
    pub max_attempts: u32,
    /// `retry_min_delay_ms`.
    pub retry_min_delay_ms: u64,
    /// `retry_max_delay_s`.
    pub retry_max_delay_s: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            job_timeout_s: 60,
            shutdown_grace_s: 10,
            max_attempts: 10,
            retry_min_delay_ms: 500,
            retry_max_delay_s: 8,
        }
    }
}

/// A test worker's configuration: the stack's broker and daemon, a topology prefix of the
/// test's own, a catalogue, and the settings the test varies.
#[derive(Debug, Clone)]
pub struct TestConfig {
    amqp_url: String,
    /// The topology prefix.
    pub prefix: String,
    /// `worker.id` (default `<prefix>-worker`).
    pub id: String,
    /// The `[worker]` settings.
    pub settings: WorkerSettings,
    /// `worker.pools` (empty: the configuration's default).
    pub pools: Vec<String>,
    /// `docker.host`; `None` writes no `[docker]` section (a daemon-free worker).
    pub docker_host: Option<String>,
    /// `amqp.signing_key_file`.
    pub signing_key_file: Option<PathBuf>,
    /// `amqp.publish_frame_max`.
    pub publish_frame_max: Option<u32>,
    /// The catalogue, as `[registries.<key>]` tables (see `fleet::base_registries`).
    pub registries: String,
}

impl TestConfig {
    /// A configuration on the stack for topology `prefix` with catalogue `registries`, the
    /// default settings, and the stack's first Docker daemon.
    pub fn new(env: &StackEnv, prefix: &str, registries: &str) -> Result<Self> {
        Ok(Self {
            amqp_url: env.get("PUSHFLEET_AMQP_URL")?,
            prefix: prefix.to_owned(),
            id: format!("{prefix}-worker"),
            settings: WorkerSettings::default(),
            pools: Vec::new(),
            docker_host: Some(env.get("PUSHFLEET_DOCKER_HOST")?),
            signing_key_file: None,
            publish_frame_max: None,
            registries: registries.to_owned(),
        })
    }

    /// The same, as worker `id`.
    pub fn with_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.id);
        self
    }

    /// The same, with no `[docker]` section: a daemon-free worker, which serves
    /// registry-source jobs only.
    pub fn without_daemon(mut self) -> Self {
        self.docker_host = None;
        self
    }

    /// The same, serving `pools`.
    pub fn with_pools(mut self, pools: &[&str]) -> Self {
        self.pools = pools.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The same, with `settings`.
    pub fn with_settings(mut self, settings: WorkerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The configuration file's text; fails when the worker would refuse it.
    pub fn toml(&self) -> Result<String> {
        let text = self.render()?;
        load_from_str(&text, Some(HashMap::new()))
            .map_err(|e| anyhow!("test worker configuration invalid: {e}\n{text}"))?;
        Ok(text)
    }

    /// The loaded configuration, for a worker in this process.
    pub fn load(&self) -> Result<Config> {
        let text = self.render()?;
        load_from_str(&text, Some(HashMap::new()))
            .map_err(|e| anyhow!("test worker configuration invalid: {e}\n{text}"))
    }

    fn render(&self) -> Result<String> {
        let WorkerSettings {
            concurrency,
            job_timeout_s,
            shutdown_grace_s,
            max_attempts,
            retry_min_delay_ms,
            retry_max_delay_s,
        } = self.settings;
        let pools = if self.pools.is_empty() {
            String::new()
        } else {
            format!("pools = {}", serde_json::to_string(&self.pools)?)
        };
        let mut amqp_extra = String::new();
        if let Some(path) = &self.signing_key_file {
            amqp_extra += &format!("signing_key_file = {:?}\n", path.display().to_string());
        }
        if let Some(frame_max) = self.publish_frame_max {
            amqp_extra += &format!("publish_frame_max = {frame_max}\n");
        }
        let docker = match &self.docker_host {
            Some(host) => format!("[docker]\nhost = {host:?}\n"),
            None => String::new(),
        };
        Ok(format!(
            r#"
[amqp]
url = {amqp:?}
topology_prefix = {prefix:?}
{amqp_extra}
[worker]
id = {id:?}
concurrency = {concurrency}
job_timeout_s = {job_timeout_s}
shutdown_grace_s = {shutdown_grace_s}
max_attempts = {max_attempts}
retry_min_delay_ms = {retry_min_delay_ms}
retry_max_delay_s = {retry_max_delay_s}
{pools}

{docker}
{registries}
"#,
            amqp = self.amqp_url,
            prefix = self.prefix,
            id = self.id,
            registries = self.registries,
        ))
    }
}
