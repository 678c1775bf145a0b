//! A registry served over TLS with the stack's own CA (`tls-registry`: `registry.test:5443`,
//! listening on `[::1]` so that dockerd really verifies its certificate, trusted by the daemon
//! through `/etc/docker/certs.d/registry.test:5443/ca.crt`).
//!
//! The worker's preflight must verify the certificate with the catalogue's `ca_file`: with the
//! right CA the job pushes end to end; with an unrelated CA, or with none (the system roots do
//! not know ours), it fails at preflight as `registry_tls_failed`, pushes nothing and never
//! tries plain HTTP instead.

use anyhow::{Context, Result};
use pushfleet_shared::Event;
use pushfleet_shared::event::JobState;
use pushfleet_shared::topology::Topology;
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, basic_auth, expect_failed, job, make_image,
    registry_digest_with, terminal, worker_config,
};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::Value;

/// The catalogue entries of the TLS registry, all as the basic registry's user (the TLS
/// registry shares its htpasswd): `tls` with the stack's CA, `tls-wrong-ca` with an unrelated
/// CA, `tls-no-ca` without `ca_file`.
fn tls_registries(env: &StackEnv) -> Result<String> {
    let url = env.get("PUSHFLEET_TLS_REGISTRY_URL")?;
    let user = env.get("PUSHFLEET_BASIC_USER")?;
    let password_file = env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let entry = |key: &str, ca_file: Option<String>| {
        let ca = ca_file.map_or_else(String::new, |f| format!("ca_file = \"{f}\"\n"));
        format!(
            "\n[registries.{key}]\nurl = \"{url}\"\nusername = \"{user}\"\n\
             password_file = \"{password_file}\"\n{ca}namespaces = [\"production\"]\n"
        )
    };
    Ok([
        entry("tls", Some(env.get("PUSHFLEET_TLS_CA_FILE")?)),
        entry(
            "tls-wrong-ca",
            Some(env.get("PUSHFLEET_TLS_WRONG_CA_FILE")?),
        ),
        entry("tls-no-ca", None),
    ]
    .concat())
}

/// A worker on a fresh topology prefix with the base catalogue plus the TLS entries.
struct Harness {
    env: StackEnv,
    broker: Broker,
    worker: TestWorker,
}

impl Harness {
    async fn start() -> Result<Self> {
        let env = StackEnv::load()?;
        let prefix = unique("tls");
        let registries = format!("{}\n{}", base_registries(&env)?, tls_registries(&env)?);
        let config = worker_config(&env, &prefix, &registries)?;
        let broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
        let worker = TestWorker::start(config).await?;
        Ok(Self {
            env,
            broker,
            worker,
        })
    }

    async fn run(&mut self, job: &Value) -> Result<Vec<Event>> {
        let id = job["job_id"].as_str().context("job_id")?.to_owned();
        self.broker.publish_job(job).await?;
        self.broker.wait_for(&id).await
    }

    /// The manifest digest of `repository:tag` in the TLS registry, asked directly (not
    /// through the worker) by a client that trusts only the stack's CA and uses no proxy;
    /// None when the tag is absent.
    async fn registry_digest(&self, repository: &str, tag: &str) -> Result<Option<String>> {
        let ca = std::fs::read(self.env.get("PUSHFLEET_TLS_CA_FILE")?)?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .https_only(true)
            .no_proxy()
            .build()?;
        let base = self.env.get("PUSHFLEET_TLS_REGISTRY_URL")?;
        let auth = basic_auth(
            &self.env.get("PUSHFLEET_BASIC_USER")?,
            &self.env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
        );
        registry_digest_with(&client, &base, repository, tag, &auth).await
    }

    async fn stop(self) -> Result<()> {
        self.worker.stop().await
    }
}

#[tokio::test]
async fn tls_registry_with_the_catalogue_ca_pushes_end_to_end() -> Result<()> {
    let mut h = Harness::start().await?;
    let name = unique("tlsapp");
    make_image(&docker(&h.env)?, &[&format!("{name}:1.0")]).await?;
    let repo = format!("production/{name}");
    let events = h
        .run(&job(&format!("{name}:1.0"), "tls", &repo, &["1.0"]))
        .await?;
    let done = terminal(&events)?;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.registry.as_deref(), Some("tls"));
    let host = h.env.get("PUSHFLEET_TLS_REGISTRY")?;
    assert_eq!(done.targets, [format!("{host}/{repo}:1.0")]);
    assert_eq!(done.already_present, Some(false));
    let phases = done.phases.as_ref().context("phases")?;
    assert!(
        phases.preflight_ms.is_some() && phases.push_ms.is_some() && phases.verify_ms.is_some(),
        "preflight, push and verify ran: {phases:?}"
    );

    // The registry itself, over TLS with the stack's CA, holds the digest the event reports.
    let digest = done.digest.clone().context("digest")?;
    assert_eq!(
        h.registry_digest(&repo, "1.0").await?.as_deref(),
        Some(digest.as_str())
    );
    h.stop().await
}

/// Asserts a TLS refusal at preflight: `failed` with `registry_tls_failed`, not retryable,
/// before any tag or push, still aimed at the https registry, and nothing in the registry.
async fn assert_refused_at_preflight(h: &mut Harness, registry: &str) -> Result<()> {
    let name = unique("tlsbad");
    make_image(&docker(&h.env)?, &[&format!("{name}:1")]).await?;
    let repo = format!("production/{name}");
    let events = h
        .run(&job(&format!("{name}:1"), registry, &repo, &["1"]))
        .await?;
    let failed = expect_failed(&events, "registry_tls_failed")?;
    let error = failed.error.as_ref().context("error")?;
    assert!(!error.retryable, "{error:?}");
    assert!(
        error.message.contains(registry) && error.message.contains("certificate"),
        "the message names the registry and the certificate problem: {}",
        error.message
    );
    assert!(error.hint.contains("ca_file"), "hint: {}", error.hint);
    let phases = failed.phases.as_ref().context("phases")?;
    assert!(
        phases.preflight_ms.is_some() && phases.tag_ms.is_none() && phases.push_ms.is_none(),
        "refused at preflight (the failing stage is timed too), before tagging or pushing: {phases:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.state != JobState::Succeeded && e.state != JobState::Retrying),
        "no success and no retry: {events:#?}"
    );
    let host = h.env.get("PUSHFLEET_TLS_REGISTRY")?;
    assert_eq!(
        failed.targets,
        [format!("{host}/{repo}:1")],
        "the target stays on the https registry"
    );
    assert_eq!(
        h.registry_digest(&repo, "1").await?,
        None,
        "nothing was pushed"
    );
    Ok(())
}

#[tokio::test]
async fn tls_registry_with_an_unrelated_ca_fails_preflight_as_tls_failed() -> Result<()> {
    let mut h = Harness::start().await?;
    assert_refused_at_preflight(&mut h, "tls-wrong-ca").await?;
    h.stop().await
}

#[tokio::test]
async fn tls_registry_without_ca_file_fails_preflight_and_never_falls_back_to_http() -> Result<()> {
    let mut h = Harness::start().await?;
    assert_refused_at_preflight(&mut h, "tls-no-ca").await?;
    h.stop().await
}
