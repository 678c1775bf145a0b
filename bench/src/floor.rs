//! The floor: what the same work costs without pushfleet. The Engine API calls a job needs, made
//! directly from the bench over one bollard client (its connections kept open, warmed up
//! before the timed part), with no queue, no events, and no registry calls of its own:
//!
//! - `POST /images/{source}/tag` for each target tag, then
//! - `POST /images/{name}/push?tag=..` for each target tag with the registry login in the
//!   `X-Registry-Auth` header (the daemon logs in to the registry with it), its stream read to
//!   the end and checked for errors and the digest line.
//!
//! `c` tasks run jobs back to back, as the worker's `c` slots do. The bollard client comes
//! from the worker's own [`pushfleet_worker::daemon::Daemon::connect`], so the auth header is
//! encoded exactly as the worker's is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use futures_util::StreamExt;

use crate::run::{Ctx, JOB_LIMIT, PhaseSums, RunResult, RunSpec, Side, stack_cpu, stack_cpu_delta};
use crate::workloads::{self, Prepared};

/// One floor job: tag `source` as `<name>:<tag>` for every tag, then push each. Returns the
/// time the tags and the pushes took.
async fn floor_job(
    docker: &Docker,
    credentials: &DockerCredentials,
    source: &str,
    name: &str,
    tags: &[String],
) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    for tag in tags {
        let options = TagImageOptions {
            repo: Some(name.to_owned()),
            tag: Some(tag.clone()),
        };
        docker
            .tag_image(source, Some(options))
            .await
            .with_context(|| format!("tagging {source} as {name}:{tag}"))?;
    }
    let tagged = t.elapsed();
    let t = Instant::now();
    for tag in tags {
        push(docker, credentials, name, tag).await?;
    }
    Ok((tagged, t.elapsed()))
}

/// Pushes `name:tag`, reading the whole progress stream.
async fn push(
    docker: &Docker,
    credentials: &DockerCredentials,
    name: &str,
    tag: &str,
) -> Result<()> {
    let options = PushImageOptions {
        tag: Some(tag.to_owned()),
        ..Default::default()
    };
    let mut stream = docker.push_image(name, Some(options), Some(credentials.clone()));
    let mut digest = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(found) = info
                    .status
                    .as_deref()
                    .and_then(pushfleet_worker::daemon::parse_digest_line)
                {
                    digest = Some(found);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bail!("pushing {name}:{tag} failed: {error}")
            }
            // bollard 0.21 can end a good stream with a decode error (see the worker's daemon
            // module); after the digest line it is not a failure.
            Err(_) if digest.is_some() => break,
            Err(e) => return Err(anyhow!("pushing {name}:{tag}: {e}")),
        }
    }
    digest
        .map(|_| ())
        .ok_or_else(|| anyhow!("pushing {name}:{tag} reported no digest"))
}

/// Runs `spec` as the floor; see the module doc.
pub(crate) async fn run(ctx: &Ctx, spec: &RunSpec) -> Result<RunResult> {
    let prepared = workloads::prepare(&ctx.docker, spec.workload, &spec.name, spec.jobs).await?;
    ctx.with_images(&prepared.image_ids, measure(ctx, spec, &prepared))
        .await
}

async fn measure(ctx: &Ctx, spec: &RunSpec, prepared: &Prepared) -> Result<RunResult> {
    // One client for the run: its pool keeps the connections the warm-up opened.
    let docker = ctx.stack.docker()?;
    let credentials = DockerCredentials {
        username: Some(ctx.stack.user.clone()),
        password: Some(ctx.stack.password.clone()),
        serveraddress: Some(ctx.stack.registry.clone()),
        ..Default::default()
    };
    let name = format!("{}/{}", ctx.stack.registry, prepared.repository);
    tokio::time::timeout(
        JOB_LIMIT,
        floor_job(
            &docker,
            &credentials,
            &prepared.warmup_source,
            &name,
            &spec.workload.warmup_tags(),
        ),
    )
    .await
    .map_err(|_| anyhow!("the floor's warm-up job took longer than {JOB_LIMIT:?}"))?
    .context("the floor's warm-up job")?;

    let window = ctx.log.begin(&spec.name).await?;
    let stack_before = stack_cpu(&ctx.stack);
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let task = || async {
        let mut latencies = Vec::new();
        let mut phases = PhaseSums::default();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= spec.jobs {
                return Ok::<_, anyhow::Error>((latencies, phases));
            }
            let tags = spec.workload.tags(index);
            let t = Instant::now();
            let job = floor_job(&docker, &credentials, prepared.source(index), &name, &tags);
            let (tag, push) = tokio::time::timeout(JOB_LIMIT, job)
                .await
                .map_err(|_| anyhow!("floor job {index} took longer than {JOB_LIMIT:?}"))??;
            let latency = t.elapsed();
            latencies.push(latency);
            phases.add_floor(tag, push, latency);
        }
    };
    let per_task =
        futures_util::future::try_join_all((0..spec.concurrency).map(|_| task())).await?;
    let elapsed = started.elapsed();
    let stack_after = stack_cpu(&ctx.stack);
    let requests = ctx
        .log
        .end(&window, std::slice::from_ref(&prepared.repository))
        .await
        .map_err(|e| format!("{e:#}"));
    let mut latencies: Vec<Duration> = Vec::new();
    let mut phases = PhaseSums::default();
    for (l, p) in per_task {
        latencies.extend(l);
        phases.merge(&p);
    }
    Ok(RunResult {
        side: Side::Floor,
        jobs: latencies.len(),
        elapsed,
        latencies,
        worker_cpu_s: None,
        idle_rss_kib: None,
        peak_rss_kib: None,
        stack_cpu_s: stack_cpu_delta(&stack_before, &stack_after),
        requests,
        retries: 0,
        failures: Vec::new(),
        phases,
        worker_counters: None,
    })
}
