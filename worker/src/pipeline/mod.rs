//! One planned job, stage by stage (the plan, the I/O-free first stage, is made before: see
//! [`crate::plan`]):
//!
//! - a daemon-source job: source -> preflight -> registry-side tags, or tag -> push -> other
//!   tags -> verify -> untag ([`daemon_source`]);
//! - a registry-source job (`source_registry`), with no daemon: preflight of both ends ->
//!   copy ([`registry_source`]).
//!
//! Each stage returns its own typed error; every error becomes a [`JobFailure`] carrying a
//! stable code, so the runner never inspects error text. Each stage's time is recorded, also
//! when it fails.
//!
//! The order puts the cheap, local, certain checks first: a job naming an unknown registry, a
//! forbidden namespace or a Docker Hub root repository fails before the daemon or the network
//! is touched; a missing source image fails before the registry is bothered; missing push
//! rights fail before a byte is uploaded.
//!
//! A tag for an image the target repository already holds is a registry-side operation
//! ([`registry_tags`], rules in [`crate::retag`]): when the daemon knows the manifest digest
//! this image has in the target repository and the registry serves that manifest, the exact
//! manifest bytes are put under each tag; the daemon pushes nothing (path `retag`). A retried
//! or redelivered job ([`Attempt::Again`]) looks at each tag first, so what its earlier attempt
//! wrote is `noop` (`already_present`). Otherwise the daemon pushes the first tag (path
//! `push`) and the other tags are written registry-side from the manifest that push produced.
//! Any doubt sends a tag through the daemon instead.
//!
//! A worker without a daemon (no `[docker]` section) refuses a daemon-source job with
//! `daemon_not_configured`, naming its pool, before it touches anything.

mod daemon_source;
mod registry_source;
mod registry_tags;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use pushfleet_shared::event::{CopyInfo, PhaseTimings, Progress, TagPath};
use pushfleet_shared::job::ValidJob;
use pushfleet_shared::{ErrorCode, PreflightMethod};
use tokio::sync::{Semaphore, watch};

use self::daemon_source::DaemonStages;
use self::registry_source::CopyStages;
use crate::config::{Config, Registry};
use crate::credentials::Credentials;
use crate::daemon::{Daemon, DaemonError};
use crate::failure::{Coded, JobFailure};
use crate::metrics::Metrics;
use crate::plan::{Plan, PlannedRegistries};
use crate::registry::{RegistryClient, RegistryEndpoint, RegistryError};
use crate::retag::ManifestCache;

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

/// One attempt of a planned job, as [`Pipeline::run`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct JobAttempt<'a> {
    /// The job.
    pub job: &'a ValidJob,
    /// Its plan, made by [`crate::plan::plan`] against the pipeline's catalogue.
    pub plan: &'a Plan,
    /// The catalogue entries the plan uses.
    pub registries: PlannedRegistries<'a>,
    /// Whether earlier attempts may have written some of it.
    pub attempt: Attempt,
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

    /// Runs one attempt of a job, publishing upload progress into `progress`.
    pub async fn run(
        &self,
        attempt: &JobAttempt<'_>,
        progress: &watch::Sender<Option<Progress>>,
    ) -> Result<Success, Failure> {
        let mut record = Record::default();
        let started = Instant::now();
        let outcome = self.stages(attempt, progress, &mut record).await;
        let plan = attempt.plan;
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

    /// Runs the stages of the job's kind: a registry-source job's copy, or a daemon-source
    /// job's push (refused with `daemon_not_configured` on a worker without a daemon).
    async fn stages(
        &self,
        attempt: &JobAttempt<'_>,
        progress: &watch::Sender<Option<Progress>>,
        record: &mut Record,
    ) -> Result<Outcome, JobFailure> {
        let JobAttempt {
            job,
            plan,
            registries,
            attempt,
        } = *attempt;
        let target = registries.target;
        let target_client = self.client(target)?;
        if let Some((source, image)) = registries.source {
            let stages = CopyStages {
                pipeline: self,
                source: (source, self.client(source)?),
                image,
                target: (target, target_client),
                repository: &job.job.target.repository,
                tags: &job.job.target.tags,
                progress,
            };
            return stages.run(record).await;
        }
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
        let stages = DaemonStages {
            pipeline: self,
            daemon,
            client: target_client,
            registry: target,
            job,
            image,
            targets: plan.target_refs(),
            attempt,
            progress,
        };
        stages.run(record).await
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

/// The login of `registry`, read off the async runtime.
async fn credentials(registry: &Registry) -> Result<Option<Credentials>, JobFailure> {
    registry.credentials_async().await.map_err(|e| {
        JobFailure::new(
            ErrorCode::RegistryCredentialsMissing,
            format!("registry {}: {e}", registry.key),
        )
    })
}

/// Runs `stage`, adding its time to `slot` (a phase that may have run before), whether it
/// succeeds or not.
async fn timed<T>(slot: &mut Option<u64>, stage: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = stage.await;
    let took = ms(start).unwrap_or(0);
    *slot = Some(slot.unwrap_or(0).saturating_add(took));
    out
}

/// Whether a failure with `code` means the registry refused the login or its rights: the
/// cached authorisation for the repository is then dropped.
fn login_refused(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RegistryAuthFailed
            | ErrorCode::RegistryDenied
            | ErrorCode::RegistryInsufficientScope
    )
}

fn coded<E: Coded>(e: &E) -> JobFailure {
    JobFailure::from(e)
}
