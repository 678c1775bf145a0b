//! Registry-side tags of one job: writing tags from the manifest the target repository
//! holds, with the cache of usable manifests (the rules are in [`crate::retag`]).

use std::sync::Arc;

use pushfleet_shared::ErrorCode;
use pushfleet_shared::ImageRef;
use pushfleet_shared::event::TagPath;

use super::{coded, login_refused};
use crate::credentials::Credentials;
use crate::failure::JobFailure;
use crate::registry::{Manifest, RegistryClient};
use crate::retag::{self, ManifestCache};

/// The registry-side tag operations of one job (see [`crate::retag`]).
pub(super) struct RegistryTags<'a> {
    pub(super) client: &'a RegistryClient,
    pub(super) registry: &'a str,
    pub(super) repository: &'a str,
    pub(super) image_id: &'a str,
    pub(super) login: Option<&'a Credentials>,
    pub(super) cache: &'a ManifestCache,
    /// `HEAD` each tag before writing it (a retried or redelivered job).
    pub(super) look_first: bool,
}

impl RegistryTags<'_> {
    /// Writes every tag of `targets` from the manifest the repository holds under `digest`;
    /// `None` (push instead) when that manifest cannot be used. A manifest kept in the cache
    /// is used without reading it again; if writing from it fails in a way a lost manifest
    /// explains ([`may_be_stale`]), the entry is dropped and the manifest read afresh.
    pub(super) async fn retag(
        &self,
        digest: &str,
        targets: &[ImageRef],
    ) -> Result<Option<(Arc<Manifest>, Vec<TagPath>)>, JobFailure> {
        if let Some(kept) = self.cache.get(self.registry, self.repository, digest)
            && retag::check_manifest(&kept, self.image_id).is_ok()
        {
            match self.write(targets, &kept).await {
                Ok(paths) => return Ok(Some((kept, paths))),
                Err(failure) if !may_be_stale(failure.code()) => return Err(failure),
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

/// Whether a failed write from a kept manifest may come from the registry having lost that
/// manifest (deleted, garbage-collected). Failures about the tag, the login or the registry's
/// availability would only happen again after reading it afresh.
fn may_be_stale(code: ErrorCode) -> bool {
    !(login_refused(code)
        || matches!(
            code,
            ErrorCode::TagImmutable
                | ErrorCode::RegistryUnreachable
                | ErrorCode::RegistryTlsFailed
                | ErrorCode::RegistryRateLimited
                | ErrorCode::Timeout
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_a_lost_manifest_explains_read_it_again() {
        for code in [
            ErrorCode::PushFailed,
            ErrorCode::BlobUploadInvalid,
            ErrorCode::DigestMismatch,
        ] {
            assert!(may_be_stale(code), "{code}");
        }
        for code in [
            ErrorCode::TagImmutable,
            ErrorCode::RegistryAuthFailed,
            ErrorCode::RegistryDenied,
            ErrorCode::RegistryInsufficientScope,
            ErrorCode::RegistryUnreachable,
            ErrorCode::RegistryRateLimited,
        ] {
            assert!(!may_be_stale(code), "{code}");
        }
    }
}
