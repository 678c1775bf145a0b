//! "Test connection" for a catalogue registry: every step a job would take, for real, each
//! reported on its own with the stable code and hint a job would get. The steps:
//!
//! - `dns`: the host resolves; `tcp`: a connection opens;
//! - `credentials`: the configured password source is readable;
//! - for each allowed namespace (a `*` namespace checks the repository the caller names):
//!   `pull <repo>` (`/v2/` over TLS with the configured CA, the login, and the pull right: a
//!   manifest read, where "no such manifest" passes) and `push <repo>` (the push right, as
//!   preflight proves it);
//! - `daemon`: the Docker daemon reaches the registry as a push would (it asks for a tag that
//!   does not exist: an answer from the registry passes; a certificate the daemon does not
//!   trust, or plain HTTP it refuses, fails).
//!
//! A failed step skips the steps that need it.

use std::time::Duration;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use pushfleet_shared::ErrorCode;
use serde::Serialize;

use crate::config::Registry;
use crate::daemon::{Daemon, classify_push_error};
use crate::failure::Coded;
use crate::registry::RegistryClient;

/// How long each network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The repository name checked inside a namespace (`<namespace>/pushfleet-check`).
pub const CHECK_REPOSITORY: &str = "pushfleet-check";

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It worked.
    Pass,
    /// It did not: see the code and hint.
    Fail,
    /// Not run (an earlier step failed, or there is nothing to check).
    Skip,
}

/// One step of a registry check.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `dns`, `tcp`, `credentials`, `pull team-a/pushfleet-check`, `push ...`, `daemon`.
    pub name: String,
    /// What happened.
    pub status: Status,
    /// One line saying what was seen.
    pub detail: String,
    /// The stable code a job would fail with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Step {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            code: None,
            hint: None,
        }
    }

    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Skip,
            ..Self::pass(name, detail)
        }
    }

    fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        code: ErrorCode,
        hint: String,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            code: Some(code),
            hint: Some(hint),
        }
    }

    fn from_error<E: Coded>(name: impl Into<String>, e: &E) -> Self {
        let error = e.to_event_error();
        Self::fail(name, error.message, error.code, error.hint)
    }
}

/// Every step of one registry's check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The catalogue key.
    pub registry: String,
    /// Its URL.
    pub url: String,
    /// Whether every step passed (skips for lack of a repository name count as passes).
    pub ok: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Checks `registry` through `client` (its registry client) and, when given, `daemon`; a `*`
/// namespace is checked as `wildcard_repository` when one is named.
pub async fn check(
    registry: &Registry,
    client: &RegistryClient,
    daemon: Option<&Daemon>,
    wildcard_repository: Option<&str>,
) -> Report {
    let mut steps = Vec::new();
    let reachable = reach(registry, &mut steps).await;
    if reachable {
        check_rights(registry, client, daemon, wildcard_repository, &mut steps).await;
    }
    let ok = steps.iter().all(|s| s.status != Status::Fail)
        && steps.iter().any(|s| s.status == Status::Pass);
    Report {
        registry: registry.key.clone(),
        url: registry.url.to_string(),
        ok,
        steps,
    }
}

/// `dns` and `tcp`; whether both passed.
async fn reach(registry: &Registry, steps: &mut Vec<Step>) -> bool {
    let host = registry.url.host_str().unwrap_or_default().to_owned();
    let port = registry.url.port_or_known_default().unwrap_or(443);
    let unreachable = |what: &str, detail: String| {
        Step::fail(
            what,
            detail,
            ErrorCode::RegistryUnreachable,
            ErrorCode::RegistryUnreachable.default_hint().to_owned(),
        )
    };
    let lookup = match registry.url.host() {
        Some(url::Host::Ipv4(ip)) => Ok(Ok(vec![std::net::SocketAddr::from((ip, port))])),
        Some(url::Host::Ipv6(ip)) => Ok(Ok(vec![std::net::SocketAddr::from((ip, port))])),
        _ => tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map(|r| r.map(Iterator::collect)),
    };
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => {
            steps.push(unreachable("dns", format!("{host} does not resolve: {e}")));
            return false;
        }
        Err(_) => {
            steps.push(unreachable(
                "dns",
                format!("{host}: no answer within {STEP_TIMEOUT:?}"),
            ));
            return false;
        }
    };
    let Some(first) = addrs.first() else {
        steps.push(unreachable("dns", format!("{host} resolves to no address")));
        return false;
    };
    steps.push(Step::pass("dns", format!("{host} -> {first}")));
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(*first)).await {
        Ok(Ok(_)) => {
            steps.push(Step::pass("tcp", format!("connected to {first}")));
            true
        }
        Ok(Err(e)) => {
            steps.push(unreachable("tcp", format!("{first}: {e}")));
            false
        }
        Err(_) => {
            steps.push(unreachable(
                "tcp",
                format!("{first}: no answer within {STEP_TIMEOUT:?}"),
            ));
            false
        }
    }
}

/// `credentials`, then `pull` and `push` per namespace, then `daemon`.
async fn check_rights(
    registry: &Registry,
    client: &RegistryClient,
    daemon: Option<&Daemon>,
    wildcard_repository: Option<&str>,
    steps: &mut Vec<Step>,
) {
    let login = match registry.credentials_async().await {
        Ok(login) => {
            let who = match &login {
                Some(l) => format!("as {}", l.username),
                None => "anonymous".to_owned(),
            };
            steps.push(Step::pass("credentials", who));
            login
        }
        Err(e) => {
            let code = ErrorCode::RegistryCredentialsMissing;
            steps.push(Step::fail(
                "credentials",
                format!("registry {}: {e}", registry.key),
                code,
                code.default_hint().to_owned(),
            ));
            return;
        }
    };
    let mut first_repository = None;
    for namespace in &registry.namespaces {
        let repository = if namespace == "*" {
            match wildcard_repository {
                Some(r) => r.to_owned(),
                None => {
                    steps.push(Step::skip(
                        "pull/push *",
                        "namespace `*`: name a repository to check with --repository",
                    ));
                    continue;
                }
            }
        } else {
            format!("{namespace}/{CHECK_REPOSITORY}")
        };
        let pull = format!("pull {repository}");
        let read = tokio::time::timeout(
            STEP_TIMEOUT,
            client.manifest_digest(&repository, CHECK_REPOSITORY, login.as_ref()),
        )
        .await;
        match read {
            Ok(Ok(_)) => steps.push(Step::pass(pull, "TLS, login and the pull right work")),
            Ok(Err(e)) => {
                steps.push(Step::from_error(pull, &e));
                continue;
            }
            Err(_) => {
                steps.push(timeout_step(pull));
                continue;
            }
        }
        let push = format!("push {repository}");
        match tokio::time::timeout(
            STEP_TIMEOUT,
            client.preflight_push(&repository, login.as_ref()),
        )
        .await
        {
            Ok(Ok(access)) => {
                steps.push(Step::pass(
                    push,
                    format!("push right granted ({:?} auth)", access.scheme()),
                ));
                first_repository.get_or_insert(repository);
            }
            Ok(Err(e)) => steps.push(Step::from_error(push, &e)),
            Err(_) => steps.push(timeout_step(push)),
        }
    }
    match (daemon, first_repository) {
        (Some(daemon), Some(repository)) => {
            steps.push(daemon_view(daemon, registry, &repository, login.as_ref()).await);
        }
        (None, _) => steps.push(Step::skip("daemon", "no [docker] daemon configured")),
        (Some(_), None) => steps.push(Step::skip("daemon", "no repository passed the push check")),
    }
}

fn timeout_step(name: String) -> Step {
    let code = ErrorCode::Timeout;
    Step::fail(
        name,
        format!("no answer within {STEP_TIMEOUT:?}"),
        code,
        code.default_hint().to_owned(),
    )
}

/// Asks the daemon to pull a tag that does not exist from `repository`: the registry's answer
/// ("not found", "unauthorized") shows the daemon reached it over a connection it accepts.
async fn daemon_view(
    daemon: &Daemon,
    registry: &Registry,
    repository: &str,
    login: Option<&crate::credentials::Credentials>,
) -> Step {
    let image = format!("{}/{repository}", registry.host);
    let tag = format!("{CHECK_REPOSITORY}-{}", uuid::Uuid::new_v4().simple());
    let options = CreateImageOptionsBuilder::default()
        .from_image(&image)
        .tag(&tag)
        .build();
    let credentials = login.map(|l| bollard::auth::DockerCredentials {
        username: Some(l.username.clone()),
        password: Some(secrecy::ExposeSecret::expose_secret(&l.password).to_owned()),
        serveraddress: Some(registry.host.clone()),
        ..Default::default()
    });
    let mut stream = daemon
        .client()
        .create_image(Some(options), None, credentials);
    let mut answer = String::new();
    let finished = tokio::time::timeout(STEP_TIMEOUT * 3, async {
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                answer = e.to_string();
                break;
            }
        }
    })
    .await;
    if finished.is_err() {
        return timeout_step("daemon".to_owned());
    }
    daemon_answer(&answer, &registry.host)
}

/// What the daemon's answer to a pull of a missing tag from `host` says about its view of the
/// registry: the registry's own refusal passes (the daemon reached it).
fn daemon_answer(answer: &str, host: &str) -> Step {
    let code = classify_push_error(answer);
    let lower = answer.to_ascii_lowercase();
    if code == ErrorCode::RegistryTlsFailed {
        return Step::fail(
            "daemon",
            "the Docker daemon does not trust the registry's certificate",
            code,
            format!(
                "give the daemon the registry's CA: /etc/docker/certs.d/{host}/ca.crt on the daemon's host"
            ),
        );
    }
    if lower.contains("http response to https client") {
        return Step::fail(
            "daemon",
            "the Docker daemon refuses the registry's plain HTTP",
            ErrorCode::RegistryTlsFailed,
            format!(
                "serve the registry over TLS, or list {host} in the daemon's insecure-registries"
            ),
        );
    }
    if code == ErrorCode::RegistryUnreachable {
        return Step::fail(
            "daemon",
            "the Docker daemon cannot reach the registry",
            code,
            "the worker reaches it but the daemon does not: check the daemon host's network, DNS and proxy".to_owned(),
        );
    }
    Step::pass(
        "daemon",
        "the Docker daemon reaches the registry over a connection it accepts",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dockerd's own texts, as a pull of a missing tag gets them.
    #[test]
    fn the_daemon_answer_tells_trust_from_reach() {
        let host = "registry.test:5443";
        for (answer, status, code) in [
            (
                "Get \"https://registry.test:5443/v2/\": tls: failed to verify certificate: x509: certificate signed by unknown authority",
                Status::Fail,
                Some(ErrorCode::RegistryTlsFailed),
            ),
            (
                "Get \"https://reg.example.com/v2/\": http: server gave HTTP response to HTTPS client",
                Status::Fail,
                Some(ErrorCode::RegistryTlsFailed),
            ),
            (
                "Get \"https://reg.example.com/v2/\": dial tcp 10.0.0.5:443: connect: connection refused",
                Status::Fail,
                Some(ErrorCode::RegistryUnreachable),
            ),
            (
                "manifest for registry.test:5443/production/pushfleet-check:pushfleet-check-1 not found: manifest unknown: manifest unknown",
                Status::Pass,
                None,
            ),
            (
                "Head \"https://registry.test:5443/v2/production/pushfleet-check/manifests/x\": no basic auth credentials",
                Status::Pass,
                None,
            ),
            (
                "pull access denied for registry.test:5443/production/pushfleet-check, repository does not exist or may require 'docker login'",
                Status::Pass,
                None,
            ),
        ] {
            let step = daemon_answer(answer, host);
            assert_eq!(step.status, status, "{answer}");
            assert_eq!(step.code, code, "{answer}");
        }
        let untrusted = daemon_answer("x509: certificate signed by unknown authority", host);
        assert!(
            untrusted
                .hint
                .is_some_and(|h| h.contains("/etc/docker/certs.d/registry.test:5443/ca.crt"))
        );
    }
}
