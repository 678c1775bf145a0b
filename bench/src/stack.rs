//! Where the local stack is (`.stack/stack.env`, written by `deploy/local/start.sh`) and a
//! check that the parts the bench needs answer: RabbitMQ, the stack's dockerd, the basic-auth
//! registry and its log file. Every failure says what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::procfs;

/// The workspace root (the bench crate's parent folder).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_owned)
}

/// The stack's addresses and the basic registry's login.
#[derive(Clone)]
pub(crate) struct Stack {
    /// The env file it was read from.
    pub(crate) env_file: PathBuf,
    /// `PUSHFLEET_AMQP_URL`.
    pub(crate) amqp_url: String,
    /// `PUSHFLEET_DOCKER_HOST` (`unix:///...`).
    pub(crate) docker_host: String,
    /// `PUSHFLEET_BASIC_REGISTRY`: `host:port` of the htpasswd registry.
    pub(crate) registry: String,
    /// Its user.
    pub(crate) user: String,
    /// The file holding its password (the worker reads it from there).
    pub(crate) password_file: PathBuf,
    /// The password itself (for the floor's `X-Registry-Auth`).
    pub(crate) password: String,
    /// The basic registry's log (`<logs>/registry-basic.log`).
    pub(crate) registry_log: PathBuf,
    /// The stack's pid files (`.stack/pids`), to read the CPU time of dockerd, the registry
    /// and RabbitMQ.
    pub(crate) pids_dir: PathBuf,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, nor the AMQP URL (it holds one).
        f.debug_struct("Stack")
            .field("env_file", &self.env_file)
            .field("docker_host", &self.docker_host)
            .field("registry", &self.registry)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A stack component whose CPU time the bench reads around every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Component {
    /// The stack's dockerd.
    Dockerd,
    /// The basic-auth registry.
    Registry,
    /// The single RabbitMQ node.
    Rabbitmq,
}

impl Component {
    /// All of them, in report order.
    pub(crate) const ALL: [Component; 3] =
        [Component::Dockerd, Component::Registry, Component::Rabbitmq];

    fn pid_file(self) -> &'static str {
        match self {
            Component::Dockerd => "dockerd.pid",
            Component::Registry => "basic-registry.pid",
            Component::Rabbitmq => "rabbitmq.pid",
        }
    }

    /// The column name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Component::Dockerd => "dockerd",
            Component::Registry => "registry",
            Component::Rabbitmq => "rabbitmq",
        }
    }
}

/// Parses an env file of `KEY=value` lines (blank lines and `#` comments skipped; one pair of
/// surrounding quotes removed).
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

impl Stack {
    /// Reads `$PUSHFLEET_STACK_ENV`, else `<workspace>/.stack/stack.env`.
    pub(crate) fn load() -> Result<Self> {
        let env_file = std::env::var_os("PUSHFLEET_STACK_ENV")
            .map_or_else(|| workspace_root().join(".stack/stack.env"), PathBuf::from);
        let text = std::fs::read_to_string(&env_file).with_context(|| {
            format!(
                "cannot read {}: the local stack is not running; start it with \
                 `bash deploy/local/start.sh`",
                env_file.display()
            )
        })?;
        let values = parse_env(&text);
        let get = |key: &str| -> Result<String> {
            values.get(key).cloned().ok_or_else(|| {
                anyhow!(
                    "{} has no {key}: restart the stack with `bash deploy/local/start.sh`",
                    env_file.display()
                )
            })
        };
        let password_file = PathBuf::from(get("PUSHFLEET_BASIC_PASSWORD_FILE")?);
        let password = std::fs::read_to_string(&password_file)
            .with_context(|| format!("cannot read {}", password_file.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        let logs = PathBuf::from(get("PUSHFLEET_LOGS_DIR")?);
        Ok(Self {
            amqp_url: get("PUSHFLEET_AMQP_URL")?,
            docker_host: get("PUSHFLEET_DOCKER_HOST")?,
            registry: get("PUSHFLEET_BASIC_REGISTRY")?,
            user: get("PUSHFLEET_BASIC_USER")?,
            password_file,
            password,
            registry_log: logs.join("registry-basic.log"),
            pids_dir: PathBuf::from(get("PUSHFLEET_PIDS_DIR")?),
            env_file,
        })
    }

    /// The registry's base URL, `http://127.0.0.1:5001`.
    pub(crate) fn registry_url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// The pid of a stack component, when its pid file names a live process.
    pub(crate) fn pid_of(&self, component: Component) -> Option<u32> {
        procfs::pid_from_file(&self.pids_dir.join(component.pid_file()))
    }

    /// The pids of the stack's components now: a run during which one changed saw a restart.
    pub(crate) fn pids(&self) -> Vec<(Component, Option<u32>)> {
        Component::ALL
            .iter()
            .map(|c| (*c, self.pid_of(*c)))
            .collect()
    }

    /// A Docker client with the worker's own connection setup (its `X-Registry-Auth`
    /// re-encoding included), so the floor's pushes authenticate exactly as the worker's do.
    pub(crate) fn docker(&self) -> Result<bollard::Docker> {
        let daemon = pushfleet_worker::daemon::Daemon::connect(&self.docker_host)
            .map_err(|e| anyhow!("{e}"))?;
        Ok(daemon.client().clone())
    }

    /// Checks that RabbitMQ, dockerd and the basic registry answer and that the registry's log
    /// is readable; the error names what is missing and how to start it.
    pub(crate) async fn check(&self) -> Result<()> {
        let hint = "start the stack with `bash deploy/local/start.sh` \
                    (`bash deploy/local/status.sh` shows what runs)";
        let amqp = tokio::time::timeout(
            Duration::from_secs(10),
            pushfleet_worker::broker::connect(&self.amqp_url, "pushfleet-bench check"),
        )
        .await
        .map_err(|_| anyhow!("RabbitMQ did not answer within 10 s; {hint}"))?
        .map_err(|e| anyhow!("RabbitMQ is not reachable ({e}); {hint}"))?;
        let _ = amqp.close(200, "checked".into()).await;

        let docker = self.docker()?;
        tokio::time::timeout(Duration::from_secs(10), docker.ping())
            .await
            .map_err(|_| anyhow!("dockerd did not answer within 10 s; {hint}"))?
            .map_err(|e| {
                anyhow!(
                    "dockerd at {} does not answer ({e}); {hint}",
                    self.docker_host
                )
            })?;

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let url = format!("{}/v2/", self.registry_url());
        let status = http
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("the basic registry at {url} does not answer ({e}); {hint}"))?
            .status();
        if status != reqwest::StatusCode::UNAUTHORIZED {
            bail!("{url} answered {status}, not 401: is this the stack's basic-auth registry?");
        }
        let auth = http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?
            .status();
        if !auth.is_success() {
            bail!(
                "{url} refuses {} with the password of {} ({auth})",
                self.user,
                self.password_file.display()
            );
        }
        std::fs::File::open(&self.registry_log).with_context(|| {
            format!(
                "cannot read the basic registry's log {}; {hint}",
                self.registry_log.display()
            )
        })?;
        procfs::check()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines() {
        let env = parse_env("# c\n\nA=1\nexport B='two'\nC=\"3=3\"\nbad line\n");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two"));
        assert_eq!(env.get("C").map(String::as_str), Some("3=3"));
        assert_eq!(env.len(), 3);
    }
}
