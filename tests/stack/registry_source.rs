//! Registry-source jobs (`source_registry`) end to end, on a worker with no Docker daemon (its
//! configuration has no `[docker]` section): the job is consumed from the broker, the image
//! copied registry to registry, and the `succeeded` event says how. Source images are built
//! directly over the registry API by the test (`pushfleet_tests::oci`).
//!
//! - a multi-arch index in the token registry, copied to the basic one under two tags: path
//!   `copy`, the index digest kept, both children readable by digest in the target, every
//!   blob streamed; the same job again skips every blob;
//! - a copy inside the token registry mounts every blob and streams none;
//! - a daemon-source job reaching the daemon-free worker fails with `daemon_not_configured`,
//!   naming the worker and the pool, is not retried and is dead-lettered; a missing source is
//!   `source_image_missing`; an unknown source registry is `unknown_registry`;
//! - a 200 MiB layer streams through a daemon-free worker *process* (the real program, not
//!   the test harness) in bounded memory: its peak resident set (`VmHWM` of
//!   `/proc/<pid>/status`, read after the job and before the worker stops) stays under
//!   60 MiB, and `progress` events come while the layer streams.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pushfleet_shared::event::{CopyInfo, Event, JobState, TagPath};
use pushfleet_shared::topology::Topology;
use pushfleet_tests::config::TestConfig;
use pushfleet_tests::fleet::{Broker, TestWorker, base_registries, expect_failed, job, terminal};
use pushfleet_tests::oci::{
    self, OCI_INDEX, OCI_MANIFEST, RawRepo, basic_repo, random_chunks, token_repo,
};
use pushfleet_tests::process::{EventLog, Logs, WorkerProcess, delete_topology};
use pushfleet_tests::{StackEnv, unique};
use serde_json::{Value, json};

/// Every test here finishes within this.
const LIMIT: Duration = Duration::from_secs(180);
/// Peak resident memory allowed to the worker process copying a 200 MiB layer.
const RSS_LIMIT_KIB: u64 = 60 * 1024;

async fn bounded<F: std::future::Future<Output = Result<()>>>(test: F) -> Result<()> {
    tokio::time::timeout(LIMIT, test)
        .await
        .context("the test did not finish in time")?
}

/// A daemon-free worker on topology `prefix` with the base catalogue, serving `pools`.
async fn daemon_free_worker(env: &StackEnv, prefix: &str, pools: &[&str]) -> Result<TestWorker> {
    let config = TestConfig::new(env, prefix, &base_registries(env)?)?
        .without_daemon()
        .with_pools(pools)
        .load()?;
    ensure!(config.docker.is_none(), "the worker must have no daemon");
    let worker = TestWorker::start(config).await?;
    worker.wait_ready(LIMIT).await?;
    Ok(worker)
}

/// A registry-source job copying `source` (`repository:tag`) of catalogue registry
/// `source_registry` to `registry`'s `repository` under `tags`.
fn copy_job(
    source_registry: &str,
    source: &str,
    registry: &str,
    repository: &str,
    tags: &[&str],
) -> Value {
    let mut body = job(source, registry, repository, tags);
    body["source_registry"] = json!(source_registry);
    body
}

/// The `job_id` of a job body.
fn job_id_of(body: &Value) -> Result<String> {
    Ok(body["job_id"].as_str().context("job_id")?.to_owned())
}

/// Publishes `body` (with `routing_key`, else the default pool's) and returns every event of
/// the job once it has ended.
async fn run_job(
    broker: &mut Broker,
    body: &Value,
    routing_key: Option<&str>,
) -> Result<Vec<Event>> {
    let job_id = job_id_of(body)?;
    match routing_key {
        Some(key) => broker.publish_job_with_key(body, key).await?,
        None => broker.publish_job(body).await?,
    }
    broker.wait_for(&job_id).await
}

/// A two-platform OCI index in `repo`, tagged `multi`: its digest and its children's.
async fn multi_arch(repo: &RawRepo) -> Result<(String, Vec<String>)> {
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layer = format!("layer of {} for {arch}", repo.repository()).into_bytes();
        children.push((repo.push_image(arch, layer, None).await?, arch));
    }
    let refs: Vec<(&[u8], &str, &str)> = children
        .iter()
        .map(|((body, digest), arch)| (body.as_slice(), digest.as_str(), *arch))
        .collect();
    let index = oci::index(&refs)?;
    let digest = repo.push_manifest("multi", OCI_INDEX, &index).await?;
    Ok((digest, children.into_iter().map(|((_, d), _)| d).collect()))
}

/// The succeeded event of `events`, with its copy account.
fn copied(events: &[Event]) -> Result<(&Event, &CopyInfo)> {
    let last = terminal(events)?;
    ensure!(last.state == JobState::Succeeded, "{last:#?}");
    ensure!(last.path == Some(TagPath::Copy), "path: {last:#?}");
    ensure!(
        !last.tag_paths.is_empty() && last.tag_paths.values().all(|p| *p == TagPath::Copy),
        "tag paths: {:?}",
        last.tag_paths
    );
    ensure!(last.already_present == Some(false), "{last:#?}");
    ensure!(
        last.phases.as_ref().and_then(|p| p.copy_ms).is_some(),
        "{last:#?}"
    );
    let copy = last.copy.as_ref().context("no copy object")?;
    Ok((last, copy))
}

#[tokio::test]
async fn a_daemon_free_worker_copies_a_multi_arch_index_between_registries() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let prefix = unique("t-regsrc");
        let worker = daemon_free_worker(&env, &prefix, &[]).await?;
        let mut broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
        let result = async {
            let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
            let source_repo = format!("{namespace}/{}", unique("src"));
            let (index_digest, children) =
                multi_arch(&token_repo(&env, &source_repo).await?).await?;
            let target_repo = format!("production/{}", unique("copied"));
            let source = format!("{source_repo}:multi");

            // Read with the pull-only account, written with the basic registry's pusher.
            let first = copy_job(
                "token-reader",
                &source,
                "basic",
                &target_repo,
                &["1", "stable"],
            );
            let events = run_job(&mut broker, &first, None).await?;
            let (done, copy) = copied(&events)?;
            ensure!(
                done.digest.as_deref() == Some(index_digest.as_str()),
                "{done:#?}"
            );
            ensure!(done.attempt == 1, "no retry: {done:#?}");
            let token_host = env.get("PUSHFLEET_TOKEN_REGISTRY")?;
            ensure!(
                done.source.as_deref() == Some(format!("{token_host}/{source}").as_str()),
                "source: {:?}",
                done.source
            );
            ensure!(copy.source_registry == "token-reader", "{copy:?}");
            ensure!(copy.media_type == OCI_INDEX, "{copy:?}");
            ensure!(copy.children == children, "{copy:?} vs {children:?}");
            // Two platforms, each a config and a layer: four blobs, all streamed.
            ensure!(
                (copy.blobs_skipped, copy.blobs_mounted, copy.blobs_streamed) == (0, 0, 4),
                "{copy:?}"
            );
            ensure!(
                copy.bytes_streamed == copy.bytes_total && copy.bytes_total > 0,
                "{copy:?}"
            );
            ensure!(done.bytes == Some(copy.bytes_streamed), "{done:#?}");
            ensure!(
                done.preflight.is_some(),
                "the target's push right was checked"
            );

            let target = basic_repo(&env, &target_repo)?;
            for tag in ["1", "stable"] {
                let (media_type, body) = target.manifest(tag).await?.context("tag missing")?;
                ensure!(media_type == OCI_INDEX, "{tag}: {media_type}");
                ensure!(oci::sha256(&body) == index_digest, "{tag}: other bytes");
            }
            for child in &children {
                let (_, body) = target
                    .manifest(child)
                    .await?
                    .with_context(|| format!("child {child} missing in the target"))?;
                ensure!(&oci::sha256(&body) == child, "{child}: other bytes");
            }

            // The same copy again: every blob is already there.
            let again = copy_job("token-reader", &source, "basic", &target_repo, &["1"]);
            let events = run_job(&mut broker, &again, None).await?;
            let (done, copy) = copied(&events)?;
            ensure!(
                done.digest.as_deref() == Some(index_digest.as_str()),
                "{done:#?}"
            );
            ensure!(
                (copy.blobs_skipped, copy.blobs_streamed, copy.bytes_streamed) == (4, 0, 0),
                "{copy:?}"
            );
            Ok(())
        }
        .await;
        worker.stop().await?;
        result
    })
    .await
}

#[tokio::test]
async fn a_copy_inside_one_registry_mounts_every_blob() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let prefix = unique("t-regsrc-mount");
        let worker = daemon_free_worker(&env, &prefix, &[]).await?;
        let mut broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
        let result = async {
            let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
            let source_repo = format!("{namespace}/{}", unique("src"));
            let raw = token_repo(&env, &source_repo).await?;
            let (_, digest) = raw
                .push_image("amd64", b"one layer to mount".to_vec(), Some("1.0"))
                .await?;
            let target_repo = format!("{namespace}/{}", unique("mounted"));
            let body = copy_job(
                "token",
                &format!("{source_repo}@{digest}"),
                "token",
                &target_repo,
                &["1.0"],
            );
            let events = run_job(&mut broker, &body, None).await?;
            let (done, copy) = copied(&events)?;
            ensure!(done.digest.as_deref() == Some(digest.as_str()), "{done:#?}");
            ensure!(
                (copy.blobs_mounted, copy.blobs_streamed, copy.bytes_streamed) == (2, 0, 0),
                "{copy:?}"
            );
            let (_, body) = token_repo(&env, &target_repo)
                .await?
                .manifest("1.0")
                .await?
                .context("the target tag is missing")?;
            ensure!(
                oci::sha256(&body) == digest,
                "the target tag holds other bytes"
            );
            Ok(())
        }
        .await;
        worker.stop().await?;
        result
    })
    .await
}

#[tokio::test]
async fn a_daemon_free_worker_refuses_daemon_jobs_with_a_coded_error() -> Result<()> {
    bounded(async {
        let env = StackEnv::load()?;
        let prefix = unique("t-regsrc-nodaemon");
        let pool = "copy";
        let worker = daemon_free_worker(&env, &prefix, &[pool]).await?;
        let mut broker = Broker::connect(&env, &Topology::new(&prefix)).await?;
        let routing_key = format!("job.{pool}");
        let result = async {
            // A daemon-source job (no source_registry) published to the daemon-free pool.
            let mut daemon_job = job("myapp:0722", "basic", "production/myapp", &["0722"]);
            daemon_job["pool"] = json!(pool);
            let job_id = job_id_of(&daemon_job)?;
            let events = run_job(&mut broker, &daemon_job, Some(&routing_key)).await?;
            let failed = expect_failed(&events, "daemon_not_configured")?;
            let error = failed.error.as_ref().context("error")?;
            ensure!(!error.retryable, "{error:?}");
            ensure!(
                error.message.contains(&format!("pool {pool}"))
                    && error.message.contains(&format!("{prefix}-worker"))
                    && error.message.contains("no [docker] section"),
                "{}",
                error.message
            );
            ensure!(error.hint.contains("`pool`"), "{}", error.hint);
            ensure!(
                !events.iter().any(|e| e.state == JobState::Retrying),
                "not retried: {events:#?}"
            );
            let dead = broker
                .take_dead_letter()
                .await?
                .context("the job is dead-lettered, not lost")?;
            ensure!(
                serde_json::from_slice::<Value>(&dead.data)?["job_id"] == job_id.as_str(),
                "the dead letter is the job"
            );

            // A registry source that does not hold the image.
            let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
            let mut missing = copy_job(
                "token-reader",
                &format!("{namespace}/{}:1", unique("nothing")),
                "basic",
                "production/never",
                &["1"],
            );
            missing["pool"] = json!(pool);
            let events = run_job(&mut broker, &missing, Some(&routing_key)).await?;
            let failed = expect_failed(&events, "source_image_missing")?;
            let message = &failed.error.as_ref().context("error")?.message;
            ensure!(message.contains("token-reader"), "{message}");

            // A source registry the catalogue does not know.
            let mut unknown = copy_job("staging", "ci/app:1", "basic", "production/never", &["1"]);
            unknown["pool"] = json!(pool);
            let events = run_job(&mut broker, &unknown, Some(&routing_key)).await?;
            let failed = expect_failed(&events, "unknown_registry")?;
            let message = &failed.error.as_ref().context("error")?.message;
            ensure!(
                message.contains("source_registry") && message.contains("\"staging\""),
                "{message}"
            );
            Ok(())
        }
        .await;
        worker.stop().await?;
        result
    })
    .await
}

/// `VmHWM` (peak resident set) and `VmRSS` (resident set now) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("{name} without a value"))?;
        Ok(kib.parse()?)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

#[tokio::test]
async fn a_200_mib_layer_streams_through_a_worker_process_in_bounded_memory() -> Result<()> {
    let env = StackEnv::load()?;
    let logs = Logs::new("regsrc-big")?;
    let prefix = unique("t-regsrc-big");
    let id = format!("{prefix}-worker");
    let toml = TestConfig::new(&env, &prefix, &base_registries(&env)?)?
        .without_daemon()
        .with_id(&id)
        .toml()?;
    let events = EventLog::start(&env, &Topology::new(&prefix)).await?;
    let result = match WorkerProcess::spawn(&logs, &id, &toml).await {
        Ok(mut worker) => {
            let result = bounded(stream_200_mib(&env, &events, &worker)).await;
            let stopped = stop(&mut worker).await;
            result.and(stopped)
        }
        Err(e) => Err(e),
    };
    events.close().await;
    if result.is_err() {
        logs.dump(80);
    } else {
        logs.remove();
    }
    delete_topology(&env, &prefix).await;
    result
}

/// Stops `worker` with SIGTERM (it drains and exits), or SIGKILL when it does not exit.
async fn stop(worker: &mut WorkerProcess) -> Result<()> {
    worker.terminate().await?;
    if let Err(e) = worker.wait_exit(Duration::from_secs(30)).await {
        worker.kill().await?;
        return Err(e);
    }
    Ok(())
}

/// Copies a 200 MiB layer from the token registry to the basic one through `worker` (a
/// daemon-free worker process on `events`' topology) and measures the process's memory.
async fn stream_200_mib(env: &StackEnv, events: &EventLog, worker: &WorkerProcess) -> Result<()> {
    worker.wait_ready(LIMIT).await?;
    let pid = worker.pid().context("the worker exited")?;
    let (idle_hwm, idle_rss) = memory_kib(pid)?;

    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let source_repo = format!("{namespace}/{}", unique("big"));
    let raw_source = token_repo(env, &source_repo).await?;
    // The same bytes on every run: registries store a blob once whatever the repositories
    // linking it, so repeated runs do not fill the stack's disk. Each run still streams the
    // whole layer, as its target repository is new (asserted below).
    let seed = 0x9e37_79b9_7f4a_7c15;
    let (layer_digest, layer_size) = raw_source
        .push_blob_stream(random_chunks(200, seed))
        .await?;
    ensure!(layer_size == 200 * 1024 * 1024);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] }
    }))?;
    let config_size = config.len();
    let config_digest = raw_source.push_blob(config).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": oci::OCI_CONFIG, "digest": config_digest, "size": config_size },
        "layers": [ { "mediaType": oci::OCI_LAYER, "digest": layer_digest, "size": layer_size } ]
    }))?;
    let digest = raw_source
        .push_manifest("big", OCI_MANIFEST, &manifest)
        .await?;

    let target_repo = format!("production/{}", unique("big"));
    let body = copy_job(
        "token-reader",
        &format!("{source_repo}:big"),
        "basic",
        &target_repo,
        &["big"],
    );
    let job_id = body["job_id"].as_str().context("job_id")?.to_owned();
    events.publish_job(&body).await?;
    let all = events
        .wait_terminal(std::slice::from_ref(&job_id), LIMIT)
        .await?;
    // Read before the worker stops: the peak of the process that streamed the layer.
    let (peak_hwm, rss) = memory_kib(pid)?;
    let of_job: Vec<Event> = all
        .into_iter()
        .filter(|e| e.job_id.as_deref() == Some(job_id.as_str()))
        .collect();
    let (done, copy) = copied(&of_job)?;
    let during: Vec<(u64, u64)> = of_job
        .iter()
        .filter_map(|e| e.progress.as_ref())
        .filter(|p| p.phase == "copy")
        .map(|p| (p.bytes_done, p.bytes_total))
        .collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "200 MiB copy by a worker process: {} bytes streamed of {}; worker VmHWM {:.1} MiB idle (VmRSS {:.1} MiB), {:.1} MiB peak after the job (VmRSS {:.1} MiB); {} copy progress events",
        copy.bytes_streamed,
        copy.bytes_total,
        mib(idle_hwm),
        mib(idle_rss),
        mib(peak_hwm),
        mib(rss),
        during.len(),
    );

    ensure!(done.digest.as_deref() == Some(digest.as_str()), "{done:#?}");
    ensure!(
        copy.bytes_streamed == layer_size + config_size as u64,
        "{copy:?}"
    );
    ensure!(copy.blobs_streamed == 2, "{copy:?}");
    // Progress came while the layer streamed, not only at the end.
    ensure!(
        during.iter().any(|(done, total)| done < total),
        "no copy progress during the stream: {during:?}"
    );
    let raw_target = basic_repo(env, &target_repo)?;
    let (_, copied_manifest) = raw_target.manifest("big").await?.context("no manifest")?;
    ensure!(
        copied_manifest == manifest,
        "the manifest is not byte-identical"
    );
    ensure!(
        raw_target.has_blob(&layer_digest).await?,
        "the layer is missing in the target"
    );
    ensure!(
        peak_hwm < RSS_LIMIT_KIB,
        "the worker's peak RSS was {peak_hwm} KiB, over {RSS_LIMIT_KIB} KiB"
    );
    Ok(())
}
