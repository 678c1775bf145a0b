//! Copying an image from one registry to another without a daemon: [`copy_image`].
//!
//! 1. Read the source manifest (tag or digest) with the manifest `Accept` list, byte for
//!    byte; its digest is the sha256 of those bytes (checked against a digest reference).
//!    An index or manifest list has each child manifest read by digest too. Schema 1 and
//!    unknown media types are refused ([`kind`]).
//! 2. Copy every blob (configs and layers, each once): skipped when the target repository
//!    has it (`HEAD`); mounted (`?mount=&from=`) when source and target are the same
//!    registry; otherwise streamed from the source's `GET` into one upload `PUT`, checked
//!    for size and digest on the way (`stream.rs`), never held whole in memory. Blobs are
//!    copied one after another, so memory stays at the HTTP buffers of one transfer.
//! 3. Put the manifests, bytes unchanged, so digests are preserved: children by digest,
//!    then the top manifest under each tag (by digest when there is none), and check that
//!    each tag now names the source digest.
//!
//! Progress goes to a callback as bytes done over bytes total, with the blob's path. A
//! failure leaves what was already copied in place: blobs and child manifests are
//! content-addressed, so a second attempt skips them. An upload session opened for a blob
//! whose copy then failed is left to expire in the registry.
//!
//! For the job flow: [`CopyError`] implements [`crate::failure::Coded`] (a missing source is
//! `source_image_missing`, registry failures keep their registry codes, schema 1 and other
//! unsupported manifests are `manifest_unsupported`); [`CopyReport`] and [`CopyProgress`] serialise
//! to what an event needs (digest, bytes, the path each blob took). The caller bounds the
//! whole copy with the job's time limit; each blob request has its own limit that grows with
//! the blob's size.

mod error;
pub mod kind;
mod stream;

use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use self::error::CopyError;
pub use self::kind::{BlobRef, Kind, Refusal};
use self::stream::{Fault, FaultSlot, take_fault, verified};
use crate::registry::{Credentials, Manifest, Mount, RegistryClient};

/// One side of a copy: a registry client, a repository in it and the login to use there.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The registry.
    pub client: &'a RegistryClient,
    /// The repository, e.g. `team-a/app`.
    pub repository: &'a str,
    /// The login (`None`: anonymous).
    pub login: Option<&'a Credentials>,
}

/// How a blob reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobPath {
    /// The target repository already had it.
    Skipped,
    /// Mounted from the source repository of the same registry.
    Mounted,
    /// Streamed from the source registry into an upload.
    Streamed,
}

/// A progress report: sent every MiB of a streamed blob, and once per blob when it is done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyProgress {
    /// The blob being copied.
    pub digest: String,
    /// How it is copied.
    pub path: BlobPath,
    /// Its size.
    pub blob_size: u64,
    /// Bytes of it done.
    pub blob_done: u64,
    /// Bytes of all the image's blobs done (skipped and mounted blobs count as done).
    pub bytes_done: u64,
    /// Bytes of all the image's blobs.
    pub bytes_total: u64,
}

/// Where progress reports go. Called on the transfer's own task, between chunks: keep it
/// cheap (update a counter, send on a channel).
pub type ProgressFn = Arc<dyn Fn(&CopyProgress) + Send + Sync>;

/// A blob of the copied image and its path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopiedBlob {
    /// `sha256:...`.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// How it reached the target.
    pub path: BlobPath,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// The top manifest's digest, the same in source and target.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The child manifests' digests (an index's), in index order.
    pub children: Vec<String>,
    /// The tags written in the target.
    pub tags: Vec<String>,
    /// Every distinct blob, in copy order.
    pub blobs: Vec<CopiedBlob>,
    /// Bytes of all blobs.
    pub bytes_total: u64,
    /// Bytes streamed from source to target.
    pub bytes_streamed: u64,
}

impl CopyReport {
    /// How many blobs took `path`.
    pub fn count(&self, path: BlobPath) -> usize {
        self.blobs.iter().filter(|b| b.path == path).count()
    }
}

/// A manifest read from the source, with what it holds.
struct Read {
    manifest: Manifest,
    kind: Kind,
}

/// Copies the image `reference` (tag or `sha256:` digest) of `source` to `target`, under
/// each of `tags` (none: by digest only); see the module documentation.
pub async fn copy_image(
    source: Side<'_>,
    reference: &str,
    target: Side<'_>,
    tags: &[String],
    progress: ProgressFn,
) -> Result<CopyReport, CopyError> {
    let top = read_manifest(source, reference).await?;
    let mut children = Vec::new();
    if let Kind::Index { children: refs, .. } = &top.kind {
        for child in refs {
            let read = read_manifest(source, &child.digest).await?;
            if !matches!(read.kind, Kind::Image { .. }) {
                return Err(unsupported(source, &child.digest, "a nested index".into()));
            }
            children.push(read);
        }
    }

    let mut blobs: Vec<BlobRef> = Vec::new();
    for read in children.iter().chain(std::iter::once(&top)) {
        if let Kind::Image { blobs: refs, .. } = &read.kind {
            for blob in refs {
                if !blobs.iter().any(|b| b.digest == blob.digest) {
                    if !blob.digest.starts_with("sha256:") {
                        return Err(unsupported(
                            source,
                            &read.manifest.digest,
                            format!("blob {} is not addressed by sha256", blob.digest),
                        ));
                    }
                    blobs.push(blob.clone());
                }
            }
        }
    }
    let bytes_total = blobs.iter().map(|b| b.size).sum();
    let mut report = CopyReport {
        digest: top.manifest.digest.clone(),
        media_type: top.manifest.media_type.clone(),
        children: children.iter().map(|c| c.manifest.digest.clone()).collect(),
        tags: tags.to_vec(),
        blobs: Vec::with_capacity(blobs.len()),
        bytes_total,
        bytes_streamed: 0,
    };

    let mut bytes_done = 0;
    for blob in &blobs {
        let path = copy_blob(source, target, blob, bytes_done, bytes_total, &progress).await?;
        bytes_done += blob.size;
        if path == BlobPath::Streamed {
            report.bytes_streamed += blob.size;
        }
        progress(&CopyProgress {
            digest: blob.digest.clone(),
            path,
            blob_size: blob.size,
            blob_done: blob.size,
            bytes_done,
            bytes_total,
        });
        tracing::debug!(
            source = source.client.key(), target = target.client.key(),
            repository = target.repository, digest = %blob.digest, size = blob.size, ?path,
            "blob copied"
        );
        report.blobs.push(CopiedBlob {
            digest: blob.digest.clone(),
            size: blob.size,
            path,
        });
    }

    for child in &children {
        put(target, &child.manifest.digest, &child.manifest).await?;
    }
    if tags.is_empty() {
        put(target, &top.manifest.digest, &top.manifest).await?;
    }
    for tag in tags {
        put(target, tag, &top.manifest).await?;
    }
    for tag in tags {
        let found = target
            .client
            .manifest_digest(target.repository, tag, target.login)
            .await
            .map_err(CopyError::Target)?;
        if found.as_deref() != Some(top.manifest.digest.as_str()) {
            return Err(CopyError::DigestMismatch {
                what: format!("the target's manifest under tag {tag}"),
                expected: top.manifest.digest.clone(),
                actual: found.unwrap_or_else(|| "no manifest".to_owned()),
            });
        }
    }
    Ok(report)
}

/// Reads manifest `reference` from the source, byte for byte, and what it holds.
async fn read_manifest(source: Side<'_>, reference: &str) -> Result<Read, CopyError> {
    // `manifest_by_digest` answers for a tag as well: the reference is only put in the path.
    let served = source
        .client
        .manifest_by_digest(source.repository, reference, source.login)
        .await
        .map_err(CopyError::Source)?
        .ok_or_else(|| CopyError::SourceMissing {
            registry: source.client.key().to_owned(),
            repository: source.repository.to_owned(),
            what: format!("manifest {reference}"),
        })?;
    let digest = format!("sha256:{:x}", Sha256::digest(&served.body));
    if reference.contains(':') {
        if !reference.starts_with("sha256:") {
            return Err(unsupported(
                source,
                reference,
                "only sha256 digests are copied".into(),
            ));
        }
        if digest != reference {
            return Err(CopyError::DigestMismatch {
                what: format!(
                    "manifest {reference} served by registry `{}`",
                    source.client.key()
                ),
                expected: reference.to_owned(),
                actual: digest,
            });
        }
    }
    let media_type = kind::media_type_of(&served.media_type, &served.body);
    let kind = kind::classify(&media_type, &served.body).map_err(|refusal| match refusal {
        Refusal::SchemaOne => CopyError::SchemaOne {
            registry: source.client.key().to_owned(),
            repository: source.repository.to_owned(),
            reference: reference.to_owned(),
        },
        other => unsupported(source, reference, other.to_string()),
    })?;
    Ok(Read {
        manifest: Manifest {
            digest,
            media_type,
            body: served.body,
        },
        kind,
    })
}

fn unsupported(source: Side<'_>, reference: &str, detail: String) -> CopyError {
    CopyError::Unsupported {
        registry: source.client.key().to_owned(),
        repository: source.repository.to_owned(),
        reference: reference.to_owned(),
        detail,
    }
}

/// Puts `manifest` under `reference` in the target; the registry's digest must be its own.
async fn put(target: Side<'_>, reference: &str, manifest: &Manifest) -> Result<(), CopyError> {
    let stored = target
        .client
        .put_manifest(target.repository, reference, manifest, target.login)
        .await
        .map_err(CopyError::Target)?;
    match stored {
        Some(d) if d != manifest.digest => Err(CopyError::DigestMismatch {
            what: format!("manifest put under {reference} in the target"),
            expected: manifest.digest.clone(),
            actual: d,
        }),
        _ => Ok(()),
    }
}

/// Copies one blob: skip, mount or stream (see the module documentation).
async fn copy_blob(
    source: Side<'_>,
    target: Side<'_>,
    blob: &BlobRef,
    bytes_before: u64,
    bytes_total: u64,
    progress: &ProgressFn,
) -> Result<BlobPath, CopyError> {
    let exists = target
        .client
        .blob_exists(target.repository, &blob.digest, target.login)
        .await
        .map_err(CopyError::Target)?;
    if exists {
        return Ok(BlobPath::Skipped);
    }
    let session =
        if source.client.same_registry(target.client) && source.repository != target.repository {
            match target
                .client
                .mount_blob(
                    target.repository,
                    &blob.digest,
                    source.repository,
                    target.login,
                )
                .await
                .map_err(CopyError::Target)?
            {
                Mount::Mounted => return Ok(BlobPath::Mounted),
                Mount::Upload(session) => session,
            }
        } else {
            target
                .client
                .open_upload(target.repository, target.login)
                .await
                .map_err(CopyError::Target)?
        };

    let response = source
        .client
        .get_blob(source.repository, &blob.digest, blob.size, source.login)
        .await
        .map_err(CopyError::Source)?
        .ok_or_else(|| CopyError::SourceMissing {
            registry: source.client.key().to_owned(),
            repository: source.repository.to_owned(),
            what: format!("blob {}", blob.digest),
        })?;
    let slot = FaultSlot::default();
    let on_bytes = {
        let progress = progress.clone();
        let digest = blob.digest.clone();
        let size = blob.size;
        move |done: u64| {
            progress(&CopyProgress {
                digest: digest.clone(),
                path: BlobPath::Streamed,
                blob_size: size,
                blob_done: done,
                bytes_done: bytes_before + done,
                bytes_total,
            });
        }
    };
    let body = reqwest::Body::wrap_stream(verified(
        response.bytes_stream(),
        &blob.digest,
        blob.size,
        on_bytes,
        slot.clone(),
    ));
    let uploaded = target
        .client
        .finish_upload(session, &blob.digest, blob.size, body, target.login)
        .await;
    // A fault of the body explains a failed upload better than the upload's own error.
    match (take_fault(&slot), uploaded) {
        (None, Ok(())) => Ok(BlobPath::Streamed),
        (Some(Fault::Source(e)), _) => Err(CopyError::Source(source.client.blob_read_failed(
            source.repository,
            &blob.digest,
            e,
        ))),
        (Some(Fault::Size { received }), _) => Err(CopyError::DigestMismatch {
            what: format!(
                "blob {} from registry `{}` (size)",
                blob.digest,
                source.client.key()
            ),
            expected: format!("{} bytes", blob.size),
            actual: format!("{received} bytes"),
        }),
        (Some(Fault::Digest { computed }), _) => Err(CopyError::DigestMismatch {
            what: format!("blob from registry `{}`", source.client.key()),
            expected: blob.digest.clone(),
            actual: computed,
        }),
        (None, Err(e)) => Err(CopyError::Target(e)),
    }
}
