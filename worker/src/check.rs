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
use pushfleet_shared::check::{CheckReport, CheckStep, StepStatus};

use crate::config::Registry;
use crate::daemon::{Daemon, classify_push_error};
use crate::failure::Coded;
use crate::registry::RegistryClient;

/// How long each network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The repository name checked inside a namespace (`<namespace>/pushfleet-check`).
pub const CHECK_REPOSITORY: &str = "pushfleet-check";

/// Step constructors.
trait StepExt: Sized {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self;
    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self;
    fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        code: ErrorCode,
        hint: String,
    ) -> Self;
    fn from_error<E: Coded>(name: impl Into<String>, e: &E) -> Self;
}

impl StepExt for CheckStep {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: StepStatus::Pass,
            detail: detail.into(),
            code: None,
            hint: None,
        }
    }

    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Skip,
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
            status: StepStatus::Fail,
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

/// Checks `registry` through `client` (its registry client) and, when given, `daemon`; a `*`
/// namespace is checked as `wildcard_repository` when one is named.
pub async fn check(
    registry: &Registry,
    client: &RegistryClient,
    daemon: Option<&Daemon>,
    wildcard_repository: Option<&str>,
) -> CheckReport {
    let mut steps: Vec<CheckStep> = Vec::new();
    let reachable = reach(registry, &mut steps).await;
    if reachable {
        check_rights(registry, client, daemon, wildcard_repository, &mut steps).await;
    }
    let ok = steps.iter().all(|s| s.status != StepStatus::Fail)
        && steps.iter().any(|s| s.status == StepStatus::Pass);
    CheckReport {
        registry: registry.key.clone(),
        url: registry.url.to_string(),
        ok,
        steps,
    }
}

/// `dns` and `tcp`; whether both passed.
async fn reach(registry: &Registry, steps: &mut Vec<CheckStep>) -> bool {
    let host = registry.url.host_str().unwrap_or_default().to_owned();
    let port = registry.url.port_or_known_default().unwrap_or(443);
    let unreachable = |what: &str, detail: String| {
        CheckStep::fail(
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
    steps.push(CheckStep::pass("dns", format!("{host} -> {first}")));
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(*first)).await {
        Ok(Ok(_)) => {
            steps.push(CheckStep::pass("tcp", format!("connected to {first}")));
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
    steps: &mut Vec<CheckStep>,
) {
    let login = match registry.credentials_async().await {
        Ok(login) => {
            let who = match &login {
                Some(l) => format!("as {}", l.username),
                None => "anonymous".to_owned(),
            };
            steps.push(CheckStep::pass("credentials", who));
            login
        }
        Err(e) => {
            let code = ErrorCode::RegistryCredentialsMissing;
            steps.push(CheckStep::fail(
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
                    steps.push(CheckStep::skip(
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
            Ok(Ok(_)) => steps.push(CheckStep::pass(pull, "TLS, login and the pull right work")),
            Ok(Err(e)) => {
                steps.push(CheckStep::from_error(pull, &e));
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
                steps.push(CheckStep::pass(
                    push,
                    format!("push right granted ({:?} auth)", access.scheme()),
                ));
                first_repository.get_or_insert(repository);
            }
            Ok(Err(e)) => steps.push(CheckStep::from_error(push, &e)),
            Err(_) => steps.push(timeout_step(push)),
        }
    }
    match (daemon, first_repository) {
        (Some(daemon), Some(repository)) => {
            steps.push(daemon_view(daemon, registry, &repository, login.as_ref()).await);
        }
        (None, _) => steps.push(CheckStep::skip("daemon", "no [docker] daemon configured")),
        (Some(_), None) => steps.push(CheckStep::skip(
            "daemon",
            "no repository passed the push check",
        )),
    }
}

fn timeout_step(name: String) -> CheckStep {
    let code = ErrorCode::Timeout;
    CheckStep::fail(
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
) -> CheckStep {
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
fn daemon_answer(answer: &str, host: &str) -> CheckStep {
    let code = classify_push_error(answer);
    let lower = answer.to_ascii_lowercase();
    if code == ErrorCode::RegistryTlsFailed {
        return CheckStep::fail(
            "daemon",
            "the Docker daemon does not trust the registry's certificate",
            code,
            format!(
                "give the daemon the registry's CA: /etc/docker/certs.d/{host}/ca.crt on the daemon's host"
            ),
        );
    }
    if lower.contains("http response to https client") {
        return CheckStep::fail(
            "daemon",
            "the Docker daemon refuses the registry's plain HTTP",
            ErrorCode::RegistryTlsFailed,
            format!(
                "serve the registry over TLS, or list {host} in the daemon's insecure-registries"
            ),
        );
    }
    if code == ErrorCode::RegistryUnreachable {
        return CheckStep::fail(
            "daemon",
            "the Docker daemon cannot reach the registry",
            code,
            "the worker reaches it but the daemon does not: check the daemon host's network, DNS and proxy".to_owned(),
        );
    }
    CheckStep::pass(
        "daemon",
        "the Docker daemon reaches the registry over a connection it accepts",
    )
}

/// Answers one request from the checks queue: runs the check, publishes the
/// `registry.checked` answer (confirmed by the broker), then acks. An unreadable request or an
/// unknown registry gets an answer with the error instead of a report.
pub(crate) async fn answer(shared: &crate::delivery::Shared, delivery: lapin::message::Delivery) {
    use lapin::options::{BasicAckOptions, BasicNackOptions};
    use pushfleet_shared::check::{CHECKED_ROUTING_KEY, CheckRequest, RegistryChecked};
    use pushfleet_shared::event::EventError;

    let answer = match CheckRequest::from_slice(&delivery.data) {
        Err(why) => {
            let code = ErrorCode::InvalidMessage;
            tracing::warn!(%why, "refusing a registry check request");
            RegistryChecked::new(
                None,
                &shared.worker_id,
                Err(EventError::new(
                    code,
                    why,
                    "publish a v1 check request: see schemas/check-request.schema.json",
                )),
            )
        }
        Ok(request) => {
            let report = run_request(shared, &request).await;
            RegistryChecked::new(Some(request.request_id), &shared.worker_id, report)
        }
    };
    tracing::info!(
        request_id = answer.request_id.as_deref().unwrap_or("-"),
        ok = answer.ok(),
        "registry check answered"
    );
    let published = shared
        .publisher
        .publish(crate::broker::Message {
            exchange: &shared.topology.events_exchange(),
            routing_key: CHECKED_ROUTING_KEY,
            body: &answer.to_json(),
            properties: crate::broker::json(lapin::BasicProperties::default()),
        })
        .await;
    let settled = match published {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(e) => {
            tracing::error!(error = %e, "could not publish a registry check answer; returning the request");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle a registry check request");
    }
}

async fn run_request(
    shared: &crate::delivery::Shared,
    request: &pushfleet_shared::check::CheckRequest,
) -> Result<CheckReport, pushfleet_shared::event::EventError> {
    use pushfleet_shared::event::EventError;
    let Some(registry) = shared.config.registries.get(&request.registry) else {
        let code = ErrorCode::UnknownRegistry;
        let name: String = request.registry.chars().take(64).collect();
        return Err(EventError::new(
            code,
            format!("registry {name:?} is not in this worker's catalogue"),
            code.default_hint(),
        ));
    };
    let Some(pipeline) = &shared.pipeline else {
        let code = ErrorCode::DaemonUnavailable;
        return Err(EventError::new(
            code,
            "this worker runs broker-only and checks no registry",
            code.default_hint(),
        ));
    };
    let Some(client) = pipeline.registry_client(&registry.key) else {
        let code = ErrorCode::UnknownRegistry;
        return Err(EventError::new(
            code,
            format!("registry {} has no client", registry.key),
            code.default_hint(),
        ));
    };
    Ok(check(
        registry,
        client,
        pipeline.daemon(),
        request.repository.as_deref(),
    )
    .await)
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
                StepStatus::Fail,
                Some(ErrorCode::RegistryTlsFailed),
            ),
            (
                "Get \"https://reg.example.com/v2/\": http: server gave HTTP response to HTTPS client",
                StepStatus::Fail,
                Some(ErrorCode::RegistryTlsFailed),
            ),
            (
                "Get \"https://reg.example.com/v2/\": dial tcp 10.0.0.5:443: connect: connection refused",
                StepStatus::Fail,
                Some(ErrorCode::RegistryUnreachable),
            ),
            (
                "manifest for registry.test:5443/production/pushfleet-check:pushfleet-check-1 not found: manifest unknown: manifest unknown",
                StepStatus::Pass,
                None,
            ),
            (
                "Head \"https://registry.test:5443/v2/production/pushfleet-check/manifests/x\": no basic auth credentials",
                StepStatus::Pass,
                None,
            ),
            (
                "pull access denied for registry.test:5443/production/pushfleet-check, repository does not exist or may require 'docker login'",
                StepStatus::Pass,
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
