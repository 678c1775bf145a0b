//! Registry-side tags on the real registries: a tag for an image the target repository already
//! holds is written by putting the same manifest bytes under it, without a daemon push. The
//! proof that the daemon pushed nothing is the registry's own access log: every request the
//! daemon sends carries a `docker/...` user agent, the worker's own `pushfleet/...`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pushfleet_shared::Event;
use pushfleet_shared::event::{JobState, TagPath};
use pushfleet_tests::fleet::{
    Broker, TestWorker, base_registries, basic_auth, bearer_auth, job, make_image, terminal,
    worker_config,
};
use pushfleet_tests::proxy::{Fault, FlakyRegistry};
use pushfleet_tests::{StackEnv, docker, unique};
use serde_json::Value;

/// One of the stack's registries, seen directly (not through the worker).
struct Registry {
    key: &'static str,
    base: String,
    auth: String,
    log: PathBuf,
}

impl Registry {
    async fn basic(env: &StackEnv) -> Result<Self> {
        Ok(Self {
            key: "basic",
            base: format!("http://{}", env.get("PUSHFLEET_BASIC_REGISTRY")?),
            auth: basic_auth(
                &env.get("PUSHFLEET_BASIC_USER")?,
                &env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?,
            ),
            log: PathBuf::from(env.get("PUSHFLEET_LOGS_DIR")?).join("registry-basic.log"),
        })
    }

    async fn token(env: &StackEnv, repository: &str) -> Result<Self> {
        let auth = bearer_auth(
            env,
            &env.get("PUSHFLEET_TOKEN_ADMIN_USER")?,
            &env.read_file_at("PUSHFLEET_TOKEN_ADMIN_PASSWORD_FILE")?,
            &format!("repository:{repository}:pull"),
        )
        .await?;
        Ok(Self {
            key: "token",
            base: format!("http://{}", env.get("PUSHFLEET_TOKEN_REGISTRY")?),
            auth,
            log: PathBuf::from(env.get("PUSHFLEET_LOGS_DIR")?).join("registry-token.log"),
        })
    }

    /// `(Content-Type, bytes, Docker-Content-Digest)` of `repository:reference`.
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(String, Vec<u8>, String)> {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/v2/{repository}/manifests/{reference}",
                self.base
            ))
            .header("Accept", pushfleet_worker::registry::MANIFEST_ACCEPT)
            .header("Authorization", &self.auth)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "GET {repository}:{reference}: HTTP {}",
            response.status()
        );
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (content_type, digest) = (header("content-type"), header("docker-content-digest"));
        Ok((content_type, response.bytes().await?.to_vec(), digest))
    }

    /// Where the log ends now.
    fn log_end(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.log)
            .with_context(|| format!("{}", self.log.display()))?
            .len())
    }

    /// The access-log lines naming `repository` from byte `from` on, up to and including a
    /// marker request sent now (so every request answered before is in the log).
    async fn requests_since(&self, from: u64, repository: &str) -> Result<Vec<String>> {
        let marker = unique("marker");
        let _ = reqwest::Client::new()
            .get(format!("{}/v2/{repository}/manifests/{marker}", self.base))
            .header("Authorization", &self.auth)
            .send()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut file = std::fs::File::open(&self.log)?;
            file.seek(SeekFrom::Start(from))?;
            let mut text = String::new();
            file.take(64 * 1024 * 1024).read_to_string(&mut text)?;
            let needle = format!(" /v2/{repository}/");
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(&needle) && l.contains("\" \""))
                .map(str::to_owned)
                .collect();
            if lines.iter().any(|l| l.contains(&marker)) {
                return Ok(lines);
            }
            ensure!(
                Instant::now() < deadline,
                "the marker request never reached {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Requests sent by the Docker daemon.
fn by_daemon(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("\"docker/")).collect()
}

/// Manifest requests `method` of `reference` (a tag or digest; empty: any), by the worker's
/// own client.
fn worker_manifest_requests(
    lines: &[String],
    method: &str,
    repository: &str,
    reference: &str,
) -> usize {
    let request = format!("\"{method} /v2/{repository}/manifests/{reference}");
    lines
        .iter()
        .filter(|l| l.contains(&request) && l.contains("\"pushfleet/"))
        .count()
}

/// Manifest `PUT`s of `tag`, by the worker's own client.
fn worker_puts(lines: &[String], repository: &str, tag: &str) -> usize {
    worker_manifest_requests(lines, "PUT", repository, &format!("{tag} "))
}

async fn run(broker: &mut Broker, job: &Value) -> Result<Vec<Event>> {
    let id = job["job_id"].as_str().context("job_id")?.to_owned();
    broker.publish_job(job).await?;
    broker.wait_for(&id).await
}

fn succeeded(events: &[Event]) -> Result<&Event> {
    let done = terminal(events)?;
    if done.state != JobState::Succeeded {
        bail!("the job did not succeed: {events:#?}");
    }
    Ok(done)
}

fn paths(done: &Event) -> Vec<TagPath> {
    // tag_paths is keyed by reference; order them as `targets`.
    done.targets
        .iter()
        .filter_map(|t| done.tag_paths.get(t).copied())
        .collect()
}

/// Push, retag, noop and a multi-tag job against one registry.
async fn retag_scenario(registry: &Registry, repository: &str) -> Result<()> {
    let env = StackEnv::load()?;
    let worker = TestWorker::start(worker_config(
        &env,
        &unique("t-retag"),
        &base_registries(&env)?,
    )?)
    .await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;
    let name = unique("retag");
    make_image(&docker(&env)?, &[&format!("{name}:1")]).await?;
    let source = format!("{name}:1");

    // First job: the repository does not hold the image, the daemon pushes.
    let first = run(&mut broker, &job(&source, registry.key, repository, &["1"])).await?;
    let first = succeeded(&first)?;
    assert_eq!(first.path, Some(TagPath::Push), "{first:#?}");
    let digest = first.digest.clone().context("digest")?;

    // Second job, a new tag: written registry-side, the daemon sends nothing.
    let before = registry.log_end()?;
    let second = run(&mut broker, &job(&source, registry.key, repository, &["2"])).await?;
    let second = succeeded(&second)?;
    let lines = registry.requests_since(before, repository).await?;
    assert_eq!(second.path, Some(TagPath::Retag), "{second:#?}");
    assert_eq!(paths(second), [TagPath::Retag]);
    assert_eq!(second.already_present, Some(false));
    assert_eq!(second.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(second.bytes, Some(0));
    let phases = second.phases.as_ref().context("phases")?;
    assert!(phases.retag_ms.is_some() && phases.push_ms.is_none() && phases.tag_ms.is_none());
    assert_eq!(
        worker_puts(&lines, repository, "2"),
        1,
        "the worker put the manifest under the new tag once: {lines:#?}"
    );
    assert!(
        by_daemon(&lines).is_empty(),
        "the daemon sent requests for the retag: {:#?}",
        by_daemon(&lines)
    );
    // Byte-identical, same media type (Docker v2, as dockerd 20.10 pushes).
    let (type_1, bytes_1, digest_1) = registry.manifest(repository, "1").await?;
    let (type_2, bytes_2, digest_2) = registry.manifest(repository, "2").await?;
    assert_eq!(
        bytes_1, bytes_2,
        "the new tag holds the same manifest bytes"
    );
    assert_eq!(type_1, type_2);
    assert_eq!(
        type_2,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        (digest_1.as_str(), digest_2.as_str()),
        (digest.as_str(), digest.as_str())
    );

    // The same job again, as a first delivery: the manifest comes from the worker's cache
    // (no GET), and the tag is written without looking first (the same bytes again).
    let before = registry.log_end()?;
    let again = run(&mut broker, &job(&source, registry.key, repository, &["2"])).await?;
    let again = succeeded(&again)?;
    let lines = registry.requests_since(before, repository).await?;
    assert_eq!(again.path, Some(TagPath::Retag), "{again:#?}");
    assert_eq!(again.already_present, Some(false));
    assert_eq!(again.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(worker_puts(&lines, repository, "2"), 1, "{lines:#?}");
    assert_eq!(
        worker_manifest_requests(&lines, "GET", repository, ""),
        0,
        "the manifest was served from the cache: {lines:#?}"
    );
    assert_eq!(
        worker_manifest_requests(&lines, "HEAD", repository, ""),
        0,
        "a first delivery does not look before writing: {lines:#?}"
    );
    assert!(by_daemon(&lines).is_empty(), "{lines:#?}");

    // The same job as a retry (attempt 2): each tag is looked at first; it already points
    // at the manifest, so nothing is written.
    let before = registry.log_end()?;
    let retried = job(&source, registry.key, repository, &["2"]);
    let retried_id = retried["job_id"].as_str().context("job_id")?.to_owned();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-pushfleet-attempt".into(),
        lapin::types::AMQPValue::LongLongInt(2),
    );
    broker
        .publish_raw(
            &serde_json::to_vec(&retried)?,
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
        .await?;
    let retried = broker.wait_for(&retried_id).await?;
    let retried = succeeded(&retried)?;
    let lines = registry.requests_since(before, repository).await?;
    assert_eq!(retried.path, Some(TagPath::Noop), "{retried:#?}");
    assert_eq!(retried.already_present, Some(true));
    assert_eq!(worker_puts(&lines, repository, "2"), 0, "{lines:#?}");
    assert_eq!(
        worker_manifest_requests(&lines, "HEAD", repository, "2 "),
        1,
        "{lines:#?}"
    );
    assert!(by_daemon(&lines).is_empty(), "{lines:#?}");

    // A multi-tag job for an image the repository does not hold: one daemon push, the other
    // tags registry-side.
    let fresh = unique("retag-multi");
    make_image(&docker(&env)?, &[&format!("{fresh}:1")]).await?;
    let before = registry.log_end()?;
    let multi = run(
        &mut broker,
        &job(
            &format!("{fresh}:1"),
            registry.key,
            repository,
            &["m1", "m2", "m3"],
        ),
    )
    .await?;
    let multi = succeeded(&multi)?;
    let lines = registry.requests_since(before, repository).await?;
    assert_eq!(multi.path, Some(TagPath::Push), "{multi:#?}");
    assert_eq!(
        paths(multi),
        [TagPath::Push, TagPath::Retag, TagPath::Retag]
    );
    let daemon_manifest_puts: Vec<_> = by_daemon(&lines)
        .into_iter()
        .filter(|l| l.contains("\"PUT ") && l.contains("/manifests/"))
        .collect();
    assert_eq!(
        daemon_manifest_puts.len(),
        1,
        "the daemon pushed exactly one tag: {daemon_manifest_puts:#?}"
    );
    assert!(
        daemon_manifest_puts[0].contains("/manifests/m1 "),
        "{daemon_manifest_puts:#?}"
    );
    assert_eq!(worker_puts(&lines, repository, "m2"), 1);
    assert_eq!(worker_puts(&lines, repository, "m3"), 1);
    let multi_digest = multi.digest.clone().context("digest")?;
    assert_ne!(multi_digest, digest);
    let (_, m1, _) = registry.manifest(repository, "m1").await?;
    for tag in ["m2", "m3"] {
        let (_, bytes, found) = registry.manifest(repository, tag).await?;
        assert_eq!(found, multi_digest, "{tag}");
        assert_eq!(bytes, m1, "{tag} is byte-identical to m1");
    }
    worker.stop().await
}

#[tokio::test]
async fn retag_noop_and_multi_tag_on_the_basic_registry() -> Result<()> {
    let env = StackEnv::load()?;
    let registry = Registry::basic(&env).await?;
    retag_scenario(&registry, &format!("production/{}", unique("rt"))).await
}

#[tokio::test]
async fn retag_noop_and_multi_tag_on_the_token_registry() -> Result<()> {
    let env = StackEnv::load()?;
    let repository = format!("team-a/{}", unique("rt"));
    let registry = Registry::token(&env, &repository).await?;
    retag_scenario(&registry, &repository).await
}

/// Harbor refuses a manifest `PUT` on an immutable tag with 412 `PRECONDITION`; distribution
/// has no such rule, so a proxy in front of the real registry answers that way for one tag.
#[tokio::test]
async fn an_immutable_tag_refusal_is_tag_immutable_and_not_retried() -> Result<()> {
    let env = StackEnv::load()?;
    let basic = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let proxy = FlakyRegistry::start_with(&basic, Fault::ImmutableTag("frozen".into())).await?;
    let registries = format!(
        "{}\n[registries.harbor]\nurl = \"http://{}\"\nusername = {:?}\npassword_file = {:?}\nnamespaces = [\"production\"]\n",
        base_registries(&env)?,
        proxy.addr,
        env.get("PUSHFLEET_BASIC_USER")?,
        env.get("PUSHFLEET_BASIC_PASSWORD_FILE")?,
    );
    let worker = TestWorker::start(worker_config(&env, &unique("t-immut"), &registries)?).await?;
    let mut broker = Broker::connect(&env, &worker.topology).await?;
    let name = unique("immut");
    make_image(&docker(&env)?, &[&format!("{name}:1")]).await?;
    let repository = format!("production/{name}");

    let first = run(
        &mut broker,
        &job(&format!("{name}:1"), "harbor", &repository, &["1"]),
    )
    .await?;
    assert_eq!(succeeded(&first)?.path, Some(TagPath::Push));

    let events = run(
        &mut broker,
        &job(&format!("{name}:1"), "harbor", &repository, &["frozen"]),
    )
    .await?;
    let done = terminal(&events)?;
    let error = done.error.as_ref().context("an error")?;
    assert_eq!(done.state, JobState::Failed, "{events:#?}");
    assert_eq!(error.code.as_str(), "tag_immutable", "{error:#?}");
    assert!(!error.retryable);
    assert_eq!(done.attempt, 1);
    assert!(
        !events.iter().any(|e| e.state == JobState::Retrying),
        "not retried: {events:#?}"
    );
    assert!(
        error.message.contains("configured as immutable"),
        "{error:#?}"
    );
    assert!(error.hint.contains("new tag"), "{error:#?}");
    let frozen_puts = proxy
        .manifest_puts()
        .iter()
        .filter(|p| p.ends_with("/manifests/frozen"))
        .count();
    assert_eq!(
        frozen_puts,
        1,
        "one PUT, no retry: {:?}",
        proxy.manifest_puts()
    );
    assert_eq!(proxy.injected(), 1);
    let direct = Registry::basic(&env).await?;
    let absent = reqwest::Client::new()
        .head(format!("{}/v2/{repository}/manifests/frozen", direct.base))
        .header("Accept", pushfleet_worker::registry::MANIFEST_ACCEPT)
        .header("Authorization", &direct.auth)
        .send()
        .await?;
    assert_eq!(absent.status().as_u16(), 404, "the tag was not written");
    worker.stop().await
}
