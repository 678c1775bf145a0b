//! One planned job, stage by stage: source -> credentials -> preflight -> registry-side tags,
//! or tag -> push -> verify -> untag; for a registry-source job, credentials -> preflight of
//! both ends -> copy (the plan, the I/O-free first stage, is made before: see
//! [`crate::plan`]). Each stage returns its own typed error; every error becomes a
//! [`JobFailure`] carrying a stable code, so the runner never inspects error text.
//!
//! The order puts the cheap, local, certain checks first: a job naming an unknown registry, a
//! forbidden namespace or a Docker Hub root repository fails before the daemon or the network
//! is touched; a missing source image fails before the registry is bothered; missing push
//! rights fail before a byte is uploaded.
//!
//! A tag for an image the target repository already holds is a registry-side operation: when
//! the daemon knows the manifest digest this image has in the target repository and the
//! registry serves that manifest (checked by [`crate::retag`]), each tag is `HEAD`ed and, when
//! it does not point at the manifest yet, the exact manifest bytes are put under it; the daemon
//! pushes nothing (path `retag`, or `noop` when every tag already pointed at it, which also
//! makes redelivery harmless: `already_present`). Otherwise the daemon pushes the first tag
//! (path `push`) and the other tags are written registry-side from the manifest that push
//! produced. Any doubt sends a tag through the daemon instead.
//!
//! A registry-source job (`source_registry`) needs no daemon: the source manifest is read
//! first (proving the pull right and that the image exists), then the push right on the
//! target, then [`crate::copy::copy_image`] copies blobs and manifests byte for byte (path
//! `copy`). A worker without a daemon (no `[docker]` section) refuses a daemon-source job with
//! `daemon_not_configured`, naming its pool, before it touches anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use pushfleet_shared::event::{CopyInfo, PhaseTimings, Progress, TagPath};
use pushfleet_shared::job::ValidJob;
use pushfleet_shared::reference::InRegistry;
use pushfleet_shared::{ErrorCode, ImageRef, PreflightMethod};
use tokio::sync::{Semaphore, watch};

use crate::config::{Config, Registry};

use crate::copy::{self, BlobPath, CopyReport, Side};
use crate::credentials::Credentials;
use crate::daemon::{Daemon, DaemonError, PushOutcome, PushProgress};
use crate::failure::{Coded, JobFailure};
use crate::metrics::Metrics;
use crate::plan::{Plan, PlannedRegistries};
use crate::registry::{Manifest, RegistryClient, RegistryEndpoint, RegistryError};
use crate::retag::{self, HeldDigest, ManifestCache};

/// A finished job.
#[derive(Debug, Clone)]
pub struct Success {
    /// The manifest digest now in the registry under every target tag.
    pub digest: String,
    /// The manifest size, as a push reported it or as read from the registry.
    pub size: Option<u64>,
    /// Bytes uploaded (approximate).
    pub bytes: u64,
    /// Time per stage.
    pub phases: PhaseTimings,
    /// The registry already had it under every tag; nothing was pushed or written.
    pub already_present: bool,
    /// How the job's tags got there (see [`TagPath::of_job`]).
    pub path: TagPath,
    /// Per exact target reference, how that tag got there.
    pub tag_paths: BTreeMap<String, TagPath>,
    /// How the preflight established the push right.
    pub preflight: Option<PreflightMethod>,
    /// What the copy did (registry-source jobs).
    pub copy: Option<CopyInfo>,
}

/// Whether an attempt may find its own job's earlier work in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first delivery of the first attempt: nothing of this job was written before.
    First,
    /// A retried or redelivered job: an earlier attempt may have written some tags.
    Again,
}

impl Attempt {
    /// The attempt of a delivery numbered `number` (from 1) that the broker may have
    /// `redelivered`.
    pub fn of(number: u32, redelivered: bool) -> Self {
        if number <= 1 && !redelivered {
            Attempt::First
        } else {
            Attempt::Again
        }
    }
}

/// A failed job attempt, with the time its stages took until it failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The coded failure.
    pub failure: JobFailure,
    /// Time per stage up to the failure.
    pub phases: PhaseTimings,
}

/// Why the pipeline could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum PipelineSetupError {
    /// The daemon address is unusable.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A registry's client could not be built (e.g. an unreadable CA file).
    #[error("registry {key}: {source}")]
    Registry {
        /// The catalogue key.
        key: String,
        /// What went wrong.
        source: RegistryError,
    },
    /// A registry's CA file could not be read.
    #[error("registry {key}: cannot read ca_file {path}: {source}")]
    CaFile {
        /// The catalogue key.
        key: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Everything a worker needs to run jobs: one daemon client and one registry client per
/// catalogue entry, shared by all jobs (connection reuse, one auth cache).
#[derive(Debug)]
pub struct Pipeline {
    config: Arc<Config>,
    /// `None` on a daemon-free worker (no `[docker]` section).
    daemon: Option<Daemon>,
    registries: HashMap<String, RegistryClient>,
    /// Per-registry push slots, for registries with `max_concurrent_pushes`.
    push_slots: HashMap<String, Arc<Semaphore>>,
    /// Manifests found usable for registry-side tags (see [`crate::retag`]).
    manifests: ManifestCache,
    metrics: Arc<Metrics>,
}

/// Milliseconds since `start`.
fn ms(start: Instant) -> Option<u64> {
    Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}

impl Pipeline {
    /// Builds the clients, which count their requests into `metrics`. No network I/O
    /// happens here.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Self, PipelineSetupError> {
        let daemon = match &config.docker {
            Some(docker) => Some(Daemon::connect(&docker.host)?),
            None => None,
        };
        let mut registries = HashMap::new();
        for registry in config.registries.iter() {
            let ca_pem = match &registry.ca_file {
                Some(path) => {
                    Some(
                        std::fs::read(path).map_err(|source| PipelineSetupError::CaFile {
                            key: registry.key.clone(),
                            path: path.display().to_string(),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            let endpoint = RegistryEndpoint {
                key: registry.key.clone(),
                base_url: registry.url.clone(),
                ca_pem,
            };
            let client = RegistryClient::new(endpoint)
                .map_err(|source| PipelineSetupError::Registry {
                    key: registry.key.clone(),
                    source,
                })?
                .with_metrics(metrics.registry_requests());
            registries.insert(registry.key.clone(), client);
        }
        let push_slots = config
            .registries
            .iter()
            .filter_map(|r| {
                let n = usize::from(r.max_concurrent_pushes?);
                Some((r.key.clone(), Arc::new(Semaphore::new(n))))
            })
            .collect();
        Ok(Self {
            config,
            daemon,
            registries,
            push_slots,
            manifests: ManifestCache::default(),
            metrics,
        })
    }

    /// The daemon client; `None` on a daemon-free worker.
    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry client of catalogue key `key`.
    pub fn registry_client(&self, key: &str) -> Option<&RegistryClient> {
        self.registries.get(key)
    }

    /// Runs one attempt of `job` as `plan` (made by [`crate::plan::plan`] against this
    /// pipeline's catalogue, which gave `registries`), publishing upload progress into
    /// `progress`.
    pub async fn run(
        &self,
        job: &ValidJob,
        plan: &Plan,
        registries: PlannedRegistries<'_>,
        attempt: Attempt,
        progress: &watch::Sender<Option<Progress>>,
    ) -> Result<Success, Failure> {
        let mut record = Record::default();
        let started = Instant::now();
        let outcome = match registries.source {
            Some((source, image)) => {
                let copy = CopyJob {
                    source,
                    image,
                    target: registries.target,
                    repository: &job.job.target.repository,
                    tags: &job.job.target.tags,
                };
                self.run_copy(&copy, progress, &mut record).await
            }
            None => {
                self.run_planned(job, plan, registries.target, attempt, progress, &mut record)
                    .await
            }
        };
        let Record {
            mut phases,
            preflight,
        } = record;
        phases.total_ms = ms(started);
        match outcome {
            Ok(outcome) => {
                let path = TagPath::of_job(outcome.paths.iter().copied());
                let tag_paths = plan
                    .targets
                    .iter()
                    .cloned()
                    .zip(outcome.paths.iter().copied())
                    .collect();
                Ok(Success {
                    digest: outcome.digest,
                    size: outcome.size,
                    bytes: outcome.bytes,
                    phases,
                    already_present: path == TagPath::Noop,
                    path,
                    tag_paths,
                    preflight,
                    copy: outcome.copy,
                })
            }
            Err(failure) => Err(Failure { failure, phases }),
        }
    }

    async fn run_planned(
        &self,
        job: &ValidJob,
        plan: &Plan,
        registry: &Registry,
        attempt: Attempt,
        progress: &watch::Sender<Option<Progress>>,
        record: &mut Record,
    ) -> Result<Outcome, JobFailure> {
        let phases = &mut record.phases;
        let repository = &job.job.target.repository;
        let client = self.client(registry)?;
        let (Some(daemon), Some(image)) = (&self.daemon, job.source.daemon_image()) else {
            return Err(JobFailure::new(
                ErrorCode::DaemonNotConfigured,
                format!(
                    "the source {} is an image in a Docker daemon, but worker {} has no daemon \
                     (no [docker] section): it serves registry-source jobs only, and took this \
                     job from pool {}",
                    job.source, self.config.worker.id, job.pool
                ),
            ));
        };

        let t = Instant::now();
        let source = daemon.resolve_source(image).await.map_err(|e| coded(&e))?;
        phases.resolve_ms = ms(t);

        let t = Instant::now();
        let login = credentials(registry).await?;
        let login = login.as_ref();
        let access = client
            .preflight_push(repository, login)
            .await
            .map_err(|e| coded(&e))?;
        self.metrics.preflight(access.cached());
        record.preflight = Some(access.method);
        phases.preflight_ms = ms(t);

        let targets = plan.target_refs();
        let Some((first, rest)) = targets.split_first() else {
            return Err(JobFailure::new(
                ErrorCode::PushFailed,
                "the job has no target tag to push",
            ));
        };
        let tags = RegistryTags {
            client,
            registry: &registry.key,
            repository,
            image_id: &source.id,
            login,
            cache: &self.manifests,
            look_first: attempt == Attempt::Again,
        };

        // The repository already holds this image's manifest (the daemon pushed it there
        // before): every tag is written registry-side. A retried or redelivered job looks
        // first, so what its earlier attempt wrote is `noop`.
        let t = Instant::now();
        let held_digest = retag::held_digest(&source.repo_digests, &first.name());
        let looked = held_digest != HeldDigest::None;
        let held = match held_digest {
            HeldDigest::One(digest) => tags.retag(&digest, targets).await?,
            HeldDigest::Several => {
                tracing::debug!("several digests of this image for the target repository; pushing");
                None
            }
            HeldDigest::None => None,
        };
        if let Some((manifest, paths)) = held {
            phases.retag_ms = ms(t);
            return Ok(Outcome {
                size: Some(u64::try_from(manifest.body.len()).unwrap_or(u64::MAX)),
                digest: manifest.digest.clone(),
                bytes: 0,
                paths,
                copy: None,
            });
        }
        if looked {
            phases.retag_ms = ms(t);
        }

        // The daemon pushes the first tag.
        let mut tagged: Vec<&ImageRef> = Vec::new();
        let t = Instant::now();
        daemon.tag(&source.id, first).await.map_err(|e| coded(&e))?;
        tagged.push(first);
        phases.tag_ms = ms(t);
        let t = Instant::now();
        let push = DaemonPush {
            daemon,
            client,
            registry,
            repository,
            login,
        };
        let pushed = self.daemon_push(&push, first, progress).await?;
        phases.push_ms = ms(t);
        let digest = pushed.digest;
        let mut bytes = pushed.bytes_uploaded;
        let mut paths = vec![TagPath::Push];

        // The other tags: registry-side from the manifest that push produced; through the
        // daemon only if that manifest cannot be used.
        if !rest.is_empty() {
            let t = Instant::now();
            match tags.retag(&digest, rest).await? {
                Some((_, written)) => {
                    paths.extend(written);
                    add_ms(&mut phases.retag_ms, t);
                }
                None => {
                    for target in rest {
                        let t = Instant::now();
                        daemon
                            .tag(&source.id, target)
                            .await
                            .map_err(|e| coded(&e))?;
                        tagged.push(target);
                        add_ms(&mut phases.tag_ms, t);
                        let t = Instant::now();
                        let outcome = self.daemon_push(&push, target, progress).await?;
                        add_ms(&mut phases.push_ms, t);
                        bytes += outcome.bytes_uploaded;
                        if outcome.digest != digest {
                            return Err(JobFailure::new(
                                ErrorCode::DigestMismatch,
                                format!(
                                    "{target} was pushed as {} but an earlier tag of the same job as {digest}",
                                    outcome.digest
                                ),
                            ));
                        }
                        paths.push(TagPath::Push);
                    }
                }
            }
        }

        // The daemon's word is checked where it matters: the tags it pushed, in the registry.
        // (A registry-side tag was checked by the registry's own answer to its PUT.)
        let t = Instant::now();
        let pushed_tags: Vec<ImageRef> = targets
            .iter()
            .zip(&paths)
            .filter(|(_, p)| **p == TagPath::Push)
            .map(|(t, _)| t.clone())
            .collect();
        if let Some((target, found)) =
            first_mismatch(client, repository, &pushed_tags, login, &digest).await?
        {
            return Err(JobFailure::new(
                ErrorCode::DigestMismatch,
                format!(
                    "the daemon pushed {target} as {digest}, but the registry holds {}",
                    found.as_deref().unwrap_or("no manifest under that tag")
                ),
            ));
        }
        phases.verify_ms = ms(t);

        if job.job.options.remove_local_tag {
            let t = Instant::now();
            for target in tagged {
                if target.name() == image.name() && target.tag() == image.tag() {
                    continue; // never remove the source itself
                }
                // A tag left behind is untidy, not a failed push: log it and go on.
                if let Err(e) = daemon.untag(target).await {
                    tracing::warn!(target = %target, error = %e, "could not remove the local tag");
                }
            }
            phases.untag_ms = ms(t);
        }
        Ok(Outcome {
            digest,
            size: Some(pushed.size),
            bytes,
            paths,
            copy: None,
        })
    }

    /// The registry client of `registry`.
    fn client(&self, registry: &Registry) -> Result<&RegistryClient, JobFailure> {
        self.registries.get(&registry.key).ok_or_else(|| {
            JobFailure::new(
                ErrorCode::UnknownRegistry,
                format!("registry {} has no client", registry.key),
            )
        })
    }

    /// A registry-source job: the source manifest is read (the pull right, and that the image
    /// exists), the push right on the target proven, then the image copied (see
    /// [`crate::copy`]).
    async fn run_copy(
        &self,
        job: &CopyJob<'_>,
        progress: &watch::Sender<Option<Progress>>,
        record: &mut Record,
    ) -> Result<Outcome, JobFailure> {
        let phases = &mut record.phases;
        let source_client = self.client(job.source)?;
        let target_client = self.client(job.target)?;
        let reference = job.image.reference();

        let t = Instant::now();
        let source_login = credentials(job.source).await?;
        let target_login = credentials(job.target).await?;
        let source = Side {
            client: source_client,
            repository: &job.image.repository,
            login: source_login.as_ref(),
        };
        let target = Side {
            client: target_client,
            repository: job.repository,
            login: target_login.as_ref(),
        };
        let found = source_client
            .manifest_digest(source.repository, reference, source.login)
            .await
            .map_err(|e| coded(&copy::CopyError::Source(e)))?;
        if found.is_none() {
            return Err(coded(&copy::CopyError::SourceMissing {
                registry: job.source.key.clone(),
                repository: job.image.repository.clone(),
                what: format!("manifest {reference}"),
            }));
        }
        let access = target_client
            .preflight_push(job.repository, target.login)
            .await
            .map_err(|e| coded(&e))?;
        self.metrics.preflight(access.cached());
        record.preflight = Some(access.method);
        phases.preflight_ms = ms(t);

        let t = Instant::now();
        let report_progress: copy::ProgressFn = {
            let progress = progress.clone();
            Arc::new(move |p: &copy::CopyProgress| {
                progress.send_replace(Some(Progress {
                    phase: "copy".to_owned(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                }));
            })
        };
        let report = copy::copy_image(source, reference, target, job.tags, report_progress)
            .await
            .map_err(|e| {
                if matches!(
                    e.code(),
                    ErrorCode::RegistryAuthFailed
                        | ErrorCode::RegistryDenied
                        | ErrorCode::RegistryInsufficientScope
                ) {
                    target_client.invalidate(job.repository);
                }
                coded(&e)
            })?;
        phases.copy_ms = ms(t);
        Ok(Outcome {
            digest: report.digest.clone(),
            size: None,
            bytes: report.bytes_streamed,
            paths: vec![TagPath::Copy; job.tags.len()],
            copy: Some(copy_info(job.source, &report)),
        })
    }

    /// Pushes `target` through the daemon, within the registry's push slots. A refusal of the
    /// login drops the registry client's cached authorisation for the repository.
    async fn daemon_push(
        &self,
        push: &DaemonPush<'_>,
        target: &ImageRef,
        progress: &watch::Sender<Option<Progress>>,
    ) -> Result<PushOutcome, JobFailure> {
        let DaemonPush {
            daemon,
            client,
            registry,
            repository,
            login,
        } = *push;
        // A registry with `max_concurrent_pushes` takes that many pushes from this worker at
        // once; the others wait here (waiting counts as push time: it is what the job waited
        // for). The slot is given back as soon as the push is done.
        let _slot = match self.push_slots.get(&registry.key) {
            Some(slots) => Some(Arc::clone(slots).acquire_owned().await.map_err(|_| {
                JobFailure::new(ErrorCode::PushFailed, "the worker is shutting down")
            })?),
            None => None,
        };
        let report = |p: PushProgress| {
            progress.send_replace(Some(Progress {
                phase: "push".to_owned(),
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            }));
        };
        daemon.push(target, login, report).await.map_err(|e| {
            if matches!(
                e.code(),
                ErrorCode::RegistryAuthFailed
                    | ErrorCode::RegistryDenied
                    | ErrorCode::RegistryInsufficientScope
            ) {
                client.invalidate(repository);
            }
            coded(&e)
        })
    }
}

/// What an attempt's stages record as they go, kept when one fails.
#[derive(Debug, Default)]
struct Record {
    phases: PhaseTimings,
    /// How the preflight established the push right.
    preflight: Option<PreflightMethod>,
}

/// What the stages produced.
#[derive(Debug)]
struct Outcome {
    digest: String,
    size: Option<u64>,
    bytes: u64,
    /// Per target, in the plan's order.
    paths: Vec<TagPath>,
    copy: Option<CopyInfo>,
}

/// A registry-source job, as the copy stage needs it.
struct CopyJob<'a> {
    source: &'a Registry,
    image: &'a InRegistry,
    target: &'a Registry,
    repository: &'a str,
    tags: &'a [String],
}

/// What every daemon push of one job shares.
#[derive(Clone, Copy)]
struct DaemonPush<'a> {
    daemon: &'a Daemon,
    client: &'a RegistryClient,
    registry: &'a Registry,
    repository: &'a str,
    login: Option<&'a Credentials>,
}

/// The event's account of a copy.
fn copy_info(source: &Registry, report: &CopyReport) -> CopyInfo {
    let count = |path| u32::try_from(report.count(path)).unwrap_or(u32::MAX);
    CopyInfo {
        source_registry: source.key.clone(),
        media_type: report.media_type.clone(),
        children: report.children.clone(),
        blobs_skipped: count(BlobPath::Skipped),
        blobs_mounted: count(BlobPath::Mounted),
        blobs_streamed: count(BlobPath::Streamed),
        bytes_total: report.bytes_total,
        bytes_streamed: report.bytes_streamed,
    }
}

/// The login of `registry`, read off the async runtime.
async fn credentials(registry: &Registry) -> Result<Option<Credentials>, JobFailure> {
    registry.credentials_async().await.map_err(|e| {
        JobFailure::new(
            ErrorCode::RegistryCredentialsMissing,
            format!("registry {}: {e}", registry.key),
        )
    })
}

/// Adds the time since `start` to a phase that may have run before.
fn add_ms(slot: &mut Option<u64>, start: Instant) {
    let now = ms(start).unwrap_or(0);
    *slot = Some(slot.unwrap_or(0).saturating_add(now));
}

/// The registry-side tag operations of one job (see [`crate::retag`]).
struct RegistryTags<'a> {
    client: &'a RegistryClient,
    registry: &'a str,
    repository: &'a str,
    image_id: &'a str,
    login: Option<&'a Credentials>,
    cache: &'a ManifestCache,
    /// `HEAD` each tag before writing it (a retried or redelivered job).
    look_first: bool,
}

impl RegistryTags<'_> {
    /// Writes every tag of `targets` from the manifest the repository holds under `digest`;
    /// `None` (push instead) when that manifest cannot be used. A manifest kept in the cache
    /// is used without reading it again; if writing from it fails, the entry is dropped and
    /// the manifest read afresh (the registry may have lost it).
    async fn retag(
        &self,
        digest: &str,
        targets: &[ImageRef],
    ) -> Result<Option<(Arc<Manifest>, Vec<TagPath>)>, JobFailure> {
        if let Some(kept) = self.cache.get(self.registry, self.repository, digest)
            && retag::check_manifest(&kept, self.image_id).is_ok()
        {
            match self.write(targets, &kept).await {
                Ok(paths) => return Ok(Some((kept, paths))),
                Err(failure) => {
                    tracing::info!(digest, error = %failure, "writing a tag from the kept manifest failed; reading it again");
                    self.cache.forget(self.registry, self.repository, digest);
                }
            }
        }
        let Some(manifest) = self.usable_manifest(digest).await? else {
            return Ok(None);
        };
        let manifest = Arc::new(manifest);
        self.cache
            .put(self.registry, self.repository, Arc::clone(&manifest));
        let paths = self.write(targets, &manifest).await?;
        Ok(Some((manifest, paths)))
    }

    /// The manifest the repository holds under `digest`, when it may be written under other
    /// tags as this image; `None` (push instead) when the registry does not have it, or when
    /// [`retag::check_manifest`] or the registry's answer leaves any doubt.
    async fn usable_manifest(&self, digest: &str) -> Result<Option<Manifest>, JobFailure> {
        let found = match self
            .client
            .manifest_by_digest(self.repository, digest, self.login)
            .await
        {
            Ok(found) => found,
            // An answer that does not follow the API (a registry or proxy that cannot serve
            // manifests by digest) is a doubt, not a failure: the daemon's push is always right.
            Err(e) if e.is_protocol() => {
                tracing::info!(error = %e, "cannot read the manifest the repository holds; pushing");
                return Ok(None);
            }
            Err(e) => return Err(coded(&e)),
        };
        let Some(manifest) = found else {
            tracing::debug!(
                digest,
                "the repository does not hold this image's manifest; pushing"
            );
            return Ok(None);
        };
        match retag::check_manifest(&manifest, self.image_id) {
            Ok(()) => Ok(Some(manifest)),
            Err(why) => {
                tracing::info!(digest, reason = %why, "the manifest the repository holds is not written under new tags; pushing");
                Ok(None)
            }
        }
    }

    /// Makes every tag of `targets` point at `manifest`: its exact bytes are put under it
    /// (`retag`) and the registry's answer must name the same digest. With `look_first`, a
    /// tag that already points at it is left alone (`noop`).
    async fn write(
        &self,
        targets: &[ImageRef],
        manifest: &Manifest,
    ) -> Result<Vec<TagPath>, JobFailure> {
        let mut paths = Vec::with_capacity(targets.len());
        for target in targets {
            let tag = target.tag_or_latest();
            if self.look_first {
                let now = self
                    .client
                    .manifest_digest(self.repository, tag, self.login)
                    .await
                    .map_err(|e| coded(&e))?;
                if now.as_deref() == Some(manifest.digest.as_str()) {
                    paths.push(TagPath::Noop);
                    continue;
                }
            }
            let stored = self
                .client
                .put_manifest(self.repository, tag, manifest, self.login)
                .await
                .map_err(|e| coded(&e))?;
            let stored = match stored {
                Some(d) => Some(d),
                // No digest in the answer: ask the registry what the tag holds now.
                None => self
                    .client
                    .manifest_digest(self.repository, tag, self.login)
                    .await
                    .map_err(|e| coded(&e))?,
            };
            if stored.as_deref() != Some(manifest.digest.as_str()) {
                return Err(JobFailure::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "{target} was written with the manifest {}, but the registry holds {}",
                        manifest.digest,
                        stored.as_deref().unwrap_or("no manifest under that tag")
                    ),
                ));
            }
            paths.push(TagPath::Retag);
        }
        Ok(paths)
    }
}

/// Asks the registry for each target tag's manifest digest; returns the first target whose tag
/// does not point at `expected` (with what it points at), or `None` when all do.
async fn first_mismatch<'t>(
    client: &RegistryClient,
    repository: &str,
    targets: &'t [ImageRef],
    login: Option<&Credentials>,
    expected: &str,
) -> Result<Option<(&'t ImageRef, Option<String>)>, JobFailure> {
    for target in targets {
        let found = client
            .manifest_digest(repository, target.tag_or_latest(), login)
            .await
            .map_err(|e| coded(&e))?;
        if found.as_deref() != Some(expected) {
            return Ok(Some((target, found)));
        }
    }
    Ok(None)
}

fn coded<E: Coded>(e: &E) -> JobFailure {
    JobFailure::from(e)
}
