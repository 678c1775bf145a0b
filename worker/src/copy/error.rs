//! [`CopyError`]: how a registry-to-registry copy fails, each with a stable code.

use pushfleet_shared::ErrorCode;

use crate::failure::Coded;
use crate::registry::RegistryError;

/// A failed copy. `Display` names the registry, repository and what was being copied; no
/// variant holds a credential (registry errors are scrubbed where they are made).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// Reading from the source registry failed.
    #[error("reading the source: {0}")]
    Source(#[source] RegistryError),
    /// Writing to the target registry failed.
    #[error("writing the target: {0}")]
    Target(#[source] RegistryError),
    /// The source has no such image, or lacks a manifest or blob the image refers to.
    #[error("source registry `{registry}`, repository `{repository}`: {what} not found")]
    SourceMissing {
        /// The source registry's key.
        registry: String,
        /// The source repository.
        repository: String,
        /// What is missing: `manifest <ref>`, `blob <digest>`.
        what: String,
    },
    /// A Docker schema 1 manifest: it names its repository and tag inside its signature, so
    /// it cannot be copied byte for byte.
    #[error(
        "source registry `{registry}`, repository `{repository}`: manifest {reference} is Docker schema 1, which cannot be copied byte for byte"
    )]
    SchemaOne {
        /// The source registry's key.
        registry: String,
        /// The source repository.
        repository: String,
        /// The tag or digest.
        reference: String,
    },
    /// A manifest this engine does not copy (unknown media type, malformed body, a nested
    /// index, a digest algorithm other than sha256).
    #[error(
        "source registry `{registry}`, repository `{repository}`: manifest {reference}: {detail}"
    )]
    Unsupported {
        /// The source registry's key.
        registry: String,
        /// The source repository.
        repository: String,
        /// The tag or digest.
        reference: String,
        /// What is not supported.
        detail: String,
    },
    /// Bytes that do not match the digest they were asked by or that was written.
    #[error("{what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (`blob sha256:.. from the source`, `manifest under tag 1.0`).
        what: String,
        /// The digest expected.
        expected: String,
        /// What was found.
        actual: String,
    },
}

impl Coded for CopyError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Source(e) | Self::Target(e) => e.code(),
            Self::SourceMissing { .. } => ErrorCode::SourceImageMissing,
            Self::SchemaOne { .. } | Self::Unsupported { .. } => ErrorCode::ManifestUnsupported,
            Self::DigestMismatch { .. } => ErrorCode::DigestMismatch,
        }
    }

    fn hint(&self) -> String {
        match self {
            Self::Source(e) | Self::Target(e) => e.hint(),
            Self::SourceMissing { .. } => "the source registry has no such image (or lacks part \
                of it): check the source repository and tag or digest, and that the image was \
                pushed there completely"
                .to_owned(),
            Self::SchemaOne { .. } => "schema 1 manifests are deprecated: push the image to the \
                source registry again with a current client (it writes schema 2 or OCI)"
                .to_owned(),
            Self::Unsupported { .. } => "only Docker schema 2 and OCI image manifests, and \
                indexes or manifest lists of them, are copied between registries"
                .to_owned(),
            Self::DigestMismatch { .. } => "the bytes read or written differ from their digest: \
                the source or target registry (or a proxy) altered them, or a tag moved during \
                the copy; try again"
                .to_owned(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Source(e) | Self::Target(e) => e.retry_after(),
            _ => None,
        }
    }
}
