//! The stages of a job whose source is an image in the worker's Docker daemon, in order:
//!
//! 1. **source**: the image is looked up in the daemon (its id and `RepoDigests`);
//! 2. **preflight**: the registry's credentials are read and the push right proven;
//! 3. **registry-side tags**, when the daemon knows the manifest this image has in the target
//!    repository and the registry serves it: every tag is written from it and the job ends
//!    here (see [`super::registry_tags`]);
//! 4. otherwise **tag** and **push** of the first tag through the daemon, then the **other
//!    tags**: registry-side from the manifest that push produced, or pushed too when it
//!    cannot be used;
//! 5. **verify**: the tags the daemon pushed are read back from the registry;
//! 6. **untag**: with `remove_local_tag`, the local target tags are removed.

use std::sync::Arc;

use pushfleet_shared::event::{Progress, TagPath};
use pushfleet_shared::job::ValidJob;
use pushfleet_shared::{ErrorCode, ImageRef, PreflightMethod};
use tokio::sync::watch;

use super::registry_tags::RegistryTags;
use super::{Attempt, Outcome, Pipeline, Record, coded, credentials, login_refused, timed};
use crate::config::Registry;
use crate::credentials::Credentials;
use crate::daemon::{Daemon, PushOutcome, PushProgress, SourceImage};
use crate::failure::JobFailure;
use crate::registry::RegistryClient;
use crate::retag::{self, HeldDigest};

/// One daemon-source job, with what its stages share.
pub(super) struct DaemonStages<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) daemon: &'a Daemon,
    pub(super) client: &'a RegistryClient,
    pub(super) registry: &'a Registry,
    pub(super) job: &'a ValidJob,
    /// The source image in the daemon.
    pub(super) image: &'a ImageRef,
    /// The exact target references, in the job's order (at least one).
    pub(super) targets: &'a [ImageRef],
    pub(super) attempt: Attempt,
    pub(super) progress: &'a watch::Sender<Option<Progress>>,
}

/// What the daemon pushed so far.
struct Pushed<'t> {
    digest: String,
    size: u64,
    bytes: u64,
    /// Per target handled so far, in order.
    paths: Vec<TagPath>,
    /// The targets tagged in the daemon (to untag).
    tagged: Vec<&'t ImageRef>,
}

impl<'a> DaemonStages<'a> {
    /// Runs the stages in order, recording each one's time and the preflight's method in
    /// `record`.
    pub(super) async fn run(&self, record: &mut Record) -> Result<Outcome, JobFailure> {
        let Some((first, rest)) = self.targets.split_first() else {
            return Err(JobFailure::new(
                ErrorCode::PushFailed,
                "the job has no target tag to push",
            ));
        };
        let phases = &mut record.phases;
        let source = timed(&mut phases.resolve_ms, self.source()).await?;
        let login = timed(
            &mut phases.preflight_ms,
            self.preflight(&mut record.preflight),
        )
        .await?;
        let login = login.as_ref();
        let tags = RegistryTags {
            client: self.client,
            registry: &self.registry.key,
            repository: &self.job.job.target.repository,
            image_id: &source.id,
            login,
            cache: &self.pipeline.manifests,
            look_first: self.attempt == Attempt::Again,
        };

        // The repository already holds this image's manifest (the daemon pushed it there
        // before): every tag is written registry-side.
        if let HeldDigest::One(digest) = self.held_digest(&source, first) {
            let held = timed(&mut phases.retag_ms, tags.retag(&digest, self.targets)).await?;
            if let Some((manifest, paths)) = held {
                return Ok(Outcome {
                    size: Some(u64::try_from(manifest.body.len()).unwrap_or(u64::MAX)),
                    digest: manifest.digest.clone(),
                    bytes: 0,
                    paths,
                    copy: None,
                });
            }
        }

        let mut pushed = self.push_first(&source, first, login, record).await?;
        self.other_tags(&tags, &source, rest, login, &mut pushed, record)
            .await?;
        timed(&mut record.phases.verify_ms, self.verify(&pushed, login)).await?;
        if self.job.job.options.remove_local_tag {
            timed(&mut record.phases.untag_ms, self.untag(&pushed)).await;
        }
        Ok(Outcome {
            digest: pushed.digest,
            size: Some(pushed.size),
            bytes: pushed.bytes,
            paths: pushed.paths,
            copy: None,
        })
    }

    /// Stage 1: the source image in the daemon.
    async fn source(&self) -> Result<SourceImage, JobFailure> {
        self.daemon
            .resolve_source(self.image)
            .await
            .map_err(|e| coded(&e))
    }

    /// Stage 2: the registry's login, with the push right on the repository proven.
    async fn preflight(
        &self,
        method: &mut Option<PreflightMethod>,
    ) -> Result<Option<Credentials>, JobFailure> {
        let login = credentials(self.registry).await?;
        let access = self
            .client
            .preflight_push(&self.job.job.target.repository, login.as_ref())
            .await
            .map_err(|e| coded(&e))?;
        self.pipeline.metrics.preflight(access.cached());
        *method = Some(access.method);
        Ok(login)
    }

    /// Which manifest the daemon knows this image has in the target repository.
    fn held_digest(&self, source: &SourceImage, first: &ImageRef) -> HeldDigest {
        let held = retag::held_digest(&source.repo_digests, &first.name());
        if held == HeldDigest::Several {
            tracing::debug!("several digests of this image for the target repository; pushing");
        }
        held
    }

    /// Stage 4: the first tag, tagged in the daemon and pushed.
    async fn push_first(
        &self,
        source: &SourceImage,
        first: &'a ImageRef,
        login: Option<&Credentials>,
        record: &mut Record,
    ) -> Result<Pushed<'a>, JobFailure> {
        timed(&mut record.phases.tag_ms, self.tag(source, first)).await?;
        let outcome = timed(&mut record.phases.push_ms, self.push(first, login)).await?;
        Ok(Pushed {
            digest: outcome.digest,
            size: outcome.size,
            bytes: outcome.bytes_uploaded,
            paths: vec![TagPath::Push],
            tagged: vec![first],
        })
    }

    /// Stage 4, continued: the other tags, registry-side from the manifest the first push
    /// produced; through the daemon only if that manifest cannot be used.
    async fn other_tags(
        &self,
        tags: &RegistryTags<'_>,
        source: &SourceImage,
        rest: &'a [ImageRef],
        login: Option<&Credentials>,
        pushed: &mut Pushed<'a>,
        record: &mut Record,
    ) -> Result<(), JobFailure> {
        if rest.is_empty() {
            return Ok(());
        }
        let written = timed(
            &mut record.phases.retag_ms,
            tags.retag(&pushed.digest, rest),
        )
        .await?;
        if let Some((_, paths)) = written {
            pushed.paths.extend(paths);
            return Ok(());
        }
        for target in rest {
            timed(&mut record.phases.tag_ms, self.tag(source, target)).await?;
            pushed.tagged.push(target);
            let outcome = timed(&mut record.phases.push_ms, self.push(target, login)).await?;
            pushed.bytes += outcome.bytes_uploaded;
            if outcome.digest != pushed.digest {
                return Err(JobFailure::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "{target} was pushed as {} but an earlier tag of the same job as {}",
                        outcome.digest, pushed.digest
                    ),
                ));
            }
            pushed.paths.push(TagPath::Push);
        }
        Ok(())
    }

    /// Tags the source image as `target` in the daemon.
    async fn tag(&self, source: &SourceImage, target: &ImageRef) -> Result<(), JobFailure> {
        self.daemon
            .tag(&source.id, target)
            .await
            .map_err(|e| coded(&e))
    }

    /// Pushes `target` through the daemon, within the registry's push slots. A refusal of the
    /// login drops the registry client's cached authorisation for the repository.
    async fn push(
        &self,
        target: &ImageRef,
        login: Option<&Credentials>,
    ) -> Result<PushOutcome, JobFailure> {
        // A registry with `max_concurrent_pushes` takes that many pushes from this worker at
        // once; the others wait here (waiting counts as push time: it is what the job waited
        // for). The slot is given back as soon as the push is done.
        let _slot = match self.pipeline.push_slots.get(&self.registry.key) {
            Some(slots) => Some(Arc::clone(slots).acquire_owned().await.map_err(|_| {
                JobFailure::new(ErrorCode::PushFailed, "the worker is shutting down")
            })?),
            None => None,
        };
        let report = |p: PushProgress| {
            self.progress.send_replace(Some(Progress {
                phase: "push".to_owned(),
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            }));
        };
        self.daemon.push(target, login, report).await.map_err(|e| {
            let failure = coded(&e);
            if login_refused(failure.code()) {
                self.client.invalidate(&self.job.job.target.repository);
            }
            failure
        })
    }

    /// Stage 5: the daemon's word is checked where it matters, the tags it pushed, in the
    /// registry. (A registry-side tag was checked by the registry's own answer to its PUT.)
    async fn verify(
        &self,
        pushed: &Pushed<'_>,
        login: Option<&Credentials>,
    ) -> Result<(), JobFailure> {
        let repository = &self.job.job.target.repository;
        let by_daemon = self
            .targets
            .iter()
            .zip(&pushed.paths)
            .filter(|(_, path)| **path == TagPath::Push);
        for (target, _) in by_daemon {
            let found = self
                .client
                .manifest_digest(repository, target.tag_or_latest(), login)
                .await
                .map_err(|e| coded(&e))?;
            if found.as_deref() != Some(pushed.digest.as_str()) {
                return Err(JobFailure::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "the daemon pushed {target} as {}, but the registry holds {}",
                        pushed.digest,
                        found.as_deref().unwrap_or("no manifest under that tag")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stage 6: the local target tags are removed, never the source itself. A tag left
    /// behind is untidy, not a failed push: it is logged.
    async fn untag(&self, pushed: &Pushed<'_>) {
        for target in &pushed.tagged {
            if target.name() == self.image.name() && target.tag() == self.image.tag() {
                continue;
            }
            if let Err(e) = self.daemon.untag(target).await {
                tracing::warn!(target = %target, error = %e, "could not remove the local tag");
            }
        }
    }
}
