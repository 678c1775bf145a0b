//! Shared helpers for the end-to-end tests: where the local stack is and how to reach it.
//!
//! `deploy/local/start.sh` writes every address and credential the tests need into one env
//! file (`KEY=value` lines). Tests read it through [`StackEnv::load`]; nothing is hard-coded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The key/value pairs of the stack's generated env file.
#[derive(Debug, Clone)]
pub struct StackEnv {
    values: HashMap<String, String>,
    path: PathBuf,
}

impl StackEnv {
    /// Loads the env file named by `PUSHFLEET_STACK_ENV`, or `<workspace>/.stack/stack.env`.
    pub fn load() -> Result<Self> {
        let path = match std::env::var_os("PUSHFLEET_STACK_ENV") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.stack/stack.env"),
        };
        Self::from_file(&path)
    }

    /// Parses an env file of `KEY=value` lines (blank lines and `#` comments are skipped;
    /// one pair of surrounding single or double quotes is removed from the value).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}: start the stack first with deploy/local/start.sh",
                path.display()
            )
        })?;
        let mut values = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                bail!("{}:{}: not a KEY=value line", path.display(), n + 1);
            };
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            values.insert(key.trim().to_owned(), value.to_owned());
        }
        Ok(Self {
            values,
            path: path.to_owned(),
        })
    }

    /// The value of `key`, or an error naming the key and the file.
    pub fn get(&self, key: &str) -> Result<String> {
        self.values
            .get(key)
            .cloned()
            .with_context(|| format!("{} has no {key}", self.path.display()))
    }

    /// Reads the file whose path is the value of `key` (e.g. a password file), trimmed.
    pub fn read_file_at(&self, key: &str) -> Result<String> {
        let path = self.get(key)?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(text.trim_end_matches(['\n', '\r']).to_owned())
    }
}

/// A name unique to this call, for queues, prefixes and repositories: `<prefix>-<12 hex>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// A bollard client for the stack's Docker daemon.
pub fn docker(env: &StackEnv) -> Result<bollard::Docker> {
    docker_at(env, "PUSHFLEET_DOCKER_HOST")
}

/// A bollard client for the daemon whose host is the value of `key` in the stack's env file
/// (`PUSHFLEET_DOCKER_HOST`, or `PUSHFLEET_DOCKER_B_HOST` for the second build host).
pub fn docker_at(env: &StackEnv, key: &str) -> Result<bollard::Docker> {
    let host = env.get(key)?;
    let path = host.strip_prefix("unix://").unwrap_or(&host);
    Ok(bollard::Docker::connect_with_unix(
        path,
        120,
        bollard::API_DEFAULT_VERSION,
    )?)
}

pub mod config;
pub mod fleet;
pub mod forward;
pub mod oci;
pub mod process;
pub mod proxy;
pub mod raw_amqp;
