//! One planned job, stage by stage: source -> credentials -> preflight -> tag -> push ->
//! verify -> untag (the plan, the I/O-free first stage, is made before: see [`crate::plan`]). Each stage returns its own typed error; every error becomes a
//! [`JobFailure`] carrying a stable code, so the runner never inspects error text.
//!
//! The order puts the cheap, local, certain checks first: a job naming an unknown registry, a
//! forbidden namespace or a Docker Hub root repository fails before the daemon or the network
//! is touched; a missing source image fails before the registry is bothered; missing push
//! rights fail before a byte is uploaded.
//!
//! Redelivery is harmless: when a job that may have run before (redelivered, or retried) finds
//! that the daemon already knows the manifest digest this image has in the target repository
//! and the registry's tags already point at it, nothing is pushed and the job succeeds with
//! `already_present`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pushfleet_shared::event::{PhaseTimings, Progress};
use pushfleet_shared::job::ValidJob;
use pushfleet_shared::{ErrorCode, ImageRef, PreflightMethod};
use tokio::sync::{Semaphore, watch};

use crate::config::{Config, Registry};

use crate::credentials::Credentials;
use crate::daemon::{Daemon, DaemonError, PushProgress};
use crate::failure::{Coded, JobFailure};
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::registry::{RegistryClient, RegistryEndpoint, RegistryError};

/// A finished job.
#[derive(Debug, Clone)]
pub struct Success {
    /// The manifest digest now in the registry under every target tag.
    pub digest: String,
    /// The manifest size, when a push reported it.
    pub size: Option<u64>,
    /// Bytes uploaded (approximate).
    pub bytes: u64,
    /// Time per stage.
    pub phases: PhaseTimings,
    /// The registry already had it; nothing was pushed.
    pub already_present: bool,
    /// How the preflight established the push right.
    pub preflight: Option<PreflightMethod>,
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
    daemon: Daemon,
    registries: HashMap<String, RegistryClient>,
    /// Per-registry push slots, for registries with `max_concurrent_pushes`.
    push_slots: HashMap<String, Arc<Semaphore>>,
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
        let daemon = Daemon::connect(&config.docker.host)?;
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
            metrics,
        })
    }

    /// The daemon client.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
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
    /// pipeline's catalogue) says, publishing upload progress into `progress`.
    /// `may_have_run` (a redelivery, or a retry) asks the registry first whether the job's
    /// tags already hold the image: a first delivery skips that request.
    pub async fn run(
        &self,
        job: &ValidJob,
        plan: &Plan,
        registry: &Registry,
        may_have_run: bool,
        progress: &watch::Sender<Option<Progress>>,
    ) -> Result<Success, Failure> {
        let mut phases = PhaseTimings::default();
        let mut preflight = None;
        let started = Instant::now();
        match self
            .run_planned(
                job,
                plan,
                registry,
                may_have_run,
                progress,
                &mut phases,
                &mut preflight,
            )
            .await
        {
            Ok((digest, size, bytes, already_present)) => {
                phases.total_ms = ms(started);
                Ok(Success {
                    digest,
                    size,
                    bytes,
                    phases,
                    already_present,
                    preflight,
                })
            }
            Err(failure) => {
                phases.total_ms = ms(started);
                Err(Failure { failure, phases })
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the attempt's outputs besides the result are filled in as stages pass"
    )]
    async fn run_planned(
        &self,
        job: &ValidJob,
        plan: &Plan,
        registry: &Registry,
        may_have_run: bool,
        progress: &watch::Sender<Option<Progress>>,
        phases: &mut PhaseTimings,
        preflight: &mut Option<PreflightMethod>,
    ) -> Result<(String, Option<u64>, u64, bool), JobFailure> {
        let repository = &job.job.target.repository;
        let client = self.registries.get(&registry.key).ok_or_else(|| {
            JobFailure::new(ErrorCode::UnknownRegistry, "registry client missing")
        })?;

        let t = Instant::now();
        let source = self
            .daemon
            .resolve_source(&job.source)
            .await
            .map_err(|e| coded(&e))?;
        phases.resolve_ms = ms(t);

        let t = Instant::now();
        let login: Option<Credentials> = registry.credentials_async().await.map_err(|e| {
            JobFailure::new(
                ErrorCode::RegistryCredentialsMissing,
                format!("registry {}: {e}", registry.key),
            )
        })?;
        let access = client
            .preflight_push(repository, login.as_ref())
            .await
            .map_err(|e| coded(&e))?;
        self.metrics.preflight(access.cached());
        *preflight = Some(access.method);
        phases.preflight_ms = ms(t);

        // Redelivery: if the job may have run before, the daemon knows this image's digest in
        // the target repository and every target tag already points at it, there is nothing
        // to push. A first delivery goes straight to the push (cheap when the registry has the
        // layers), saving a registry request.
        let targets = plan.target_refs();
        let target_name = targets.first().map(|t| t.name()).unwrap_or_default();
        let earlier_pushes = source.repo_digests.iter().filter(|_| may_have_run);
        let mut known_digests = earlier_pushes.filter_map(|d| {
            let (name, digest) = d.rsplit_once('@')?;
            (ImageRef::parse(name).ok()?.name() == target_name).then(|| digest.to_owned())
        });
        if let Some(expected) = known_digests.next() {
            let t = Instant::now();
            let mismatch =
                first_mismatch(client, repository, targets, login.as_ref(), &expected).await?;
            phases.verify_ms = ms(t);
            if mismatch.is_none() {
                return Ok((expected, None, 0, true));
            }
        }

        let t = Instant::now();
        for target in targets {
            self.daemon
                .tag(&source.id, target)
                .await
                .map_err(|e| coded(&e))?;
        }
        phases.tag_ms = ms(t);

        // A registry with `max_concurrent_pushes` takes that many pushes from this worker at
        // once; the others wait here (waiting counts as push time: it is what the job waited
        // for). The slot is given back as soon as the pushes are done.
        let t = Instant::now();
        let slot = match self.push_slots.get(&registry.key) {
            Some(slots) => Some(Arc::clone(slots).acquire_owned().await.map_err(|_| {
                JobFailure::new(ErrorCode::PushFailed, "the worker is shutting down")
            })?),
            None => None,
        };
        let mut pushed: Option<(String, u64)> = None;
        let mut bytes = 0;
        for target in targets {
            let report = |p: PushProgress| {
                progress.send_replace(Some(Progress {
                    phase: "push".to_owned(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                }));
            };
            let outcome = match self.daemon.push(target, login.as_ref(), report).await {
                Ok(o) => o,
                Err(e) => {
                    if matches!(
                        e.code(),
                        ErrorCode::RegistryAuthFailed
                            | ErrorCode::RegistryDenied
                            | ErrorCode::RegistryInsufficientScope
                    ) {
                        client.invalidate(repository);
                    }
                    return Err(coded(&e));
                }
            };
            bytes += outcome.bytes_uploaded;
            if let Some((digest, _)) = &pushed
                && *digest != outcome.digest
            {
                return Err(JobFailure::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "{target} was pushed as {} but an earlier tag of the same job as {digest}",
                        outcome.digest
                    ),
                ));
            }
            pushed = Some((outcome.digest, outcome.size));
        }
        drop(slot);
        phases.push_ms = ms(t);
        let (digest, size) = pushed.ok_or_else(|| {
            JobFailure::new(ErrorCode::PushFailed, "the job has no target tag to push")
        })?;

        let t = Instant::now();
        if let Some((target, found)) =
            first_mismatch(client, repository, targets, login.as_ref(), &digest).await?
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
            for target in targets {
                if target.name() == job.source.name() && target.tag() == job.source.tag() {
                    continue; // never remove the source itself
                }
                // A tag left behind is untidy, not a failed push: log it and go on.
                if let Err(e) = self.daemon.untag(target).await {
                    tracing::warn!(target = %target, error = %e, "could not remove the local tag");
                }
            }
            phases.untag_ms = ms(t);
        }
        Ok((digest, Some(size), bytes, false))
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
