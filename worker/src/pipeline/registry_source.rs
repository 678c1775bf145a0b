//! The stages of a job whose source is an image in a catalogue registry (`source_registry`),
//! with no daemon:
//!
//! 1. **preflight**: both registries' credentials are read; the source manifest is `HEAD`ed
//!    (the pull right, and that the image exists: a 404 is `source_image_missing`), then the
//!    push right on the target is proven;
//! 2. **copy**: [`crate::copy::copy_image`] copies blobs (skipped, mounted or streamed) and
//!    manifests byte for byte, and checks every tag.

use std::sync::Arc;

use pushfleet_shared::PreflightMethod;
use pushfleet_shared::event::{CopyInfo, Progress, TagPath};
use pushfleet_shared::reference::InRegistry;
use tokio::sync::watch;

use super::{Outcome, Pipeline, Record, coded, credentials, login_refused, timed};
use crate::config::Registry;
use crate::copy::{self, BlobPath, CopyError, CopyReport, Side};
use crate::credentials::Credentials;
use crate::failure::JobFailure;
use crate::registry::RegistryClient;

/// One registry-source job, with what its stages share.
pub(super) struct CopyStages<'a> {
    pub(super) pipeline: &'a Pipeline,
    /// The registry copied from, and the image in it.
    pub(super) source: (&'a Registry, &'a RegistryClient),
    pub(super) image: &'a InRegistry,
    /// The registry copied to.
    pub(super) target: (&'a Registry, &'a RegistryClient),
    pub(super) repository: &'a str,
    pub(super) tags: &'a [String],
    pub(super) progress: &'a watch::Sender<Option<Progress>>,
}

/// The logins of both ends.
struct Logins {
    source: Option<Credentials>,
    target: Option<Credentials>,
}

impl CopyStages<'_> {
    /// Runs the stages in order, recording each one's time and the preflight's method in
    /// `record`.
    pub(super) async fn run(&self, record: &mut Record) -> Result<Outcome, JobFailure> {
        let logins = timed(
            &mut record.phases.preflight_ms,
            self.preflight(&mut record.preflight),
        )
        .await?;
        let report = timed(&mut record.phases.copy_ms, self.copy(&logins)).await?;
        Ok(Outcome {
            digest: report.digest.clone(),
            size: None,
            bytes: report.bytes_streamed,
            paths: vec![TagPath::Copy; self.tags.len()],
            copy: Some(copy_info(self.source.0, &report)),
        })
    }

    /// Stage 1: both logins, the source manifest readable, the push right on the target.
    async fn preflight(&self, method: &mut Option<PreflightMethod>) -> Result<Logins, JobFailure> {
        let (source, source_client) = self.source;
        let (target, target_client) = self.target;
        let logins = Logins {
            source: credentials(source).await?,
            target: credentials(target).await?,
        };
        let reference = self.image.reference();
        let found = source_client
            .manifest_digest(&self.image.repository, reference, logins.source.as_ref())
            .await
            .map_err(|e| coded(&CopyError::Source(e)))?;
        if found.is_none() {
            return Err(coded(&CopyError::SourceMissing {
                registry: source.key.clone(),
                repository: self.image.repository.clone(),
                what: format!("manifest {reference}"),
            }));
        }
        let access = target_client
            .preflight_push(self.repository, logins.target.as_ref())
            .await
            .map_err(|e| coded(&e))?;
        self.pipeline.metrics.preflight(access.cached());
        *method = Some(access.method);
        Ok(logins)
    }

    /// Stage 2: the copy, reporting progress as phase `copy`. A refusal of the target's
    /// login drops the target client's cached authorisation for the repository.
    async fn copy(&self, logins: &Logins) -> Result<CopyReport, JobFailure> {
        let source = Side {
            client: self.source.1,
            repository: &self.image.repository,
            login: logins.source.as_ref(),
        };
        let target = Side {
            client: self.target.1,
            repository: self.repository,
            login: logins.target.as_ref(),
        };
        let report_progress: copy::ProgressFn = {
            let progress = self.progress.clone();
            Arc::new(move |p: &copy::CopyProgress| {
                progress.send_replace(Some(Progress {
                    phase: "copy".to_owned(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                }));
            })
        };
        copy::copy_image(
            source,
            self.image.reference(),
            target,
            self.tags,
            report_progress,
        )
        .await
        .map_err(|e| {
            let failure = coded(&e);
            if matches!(e, CopyError::Target(_)) && login_refused(failure.code()) {
                self.target.1.invalidate(self.repository);
            }
            failure
        })
    }
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
