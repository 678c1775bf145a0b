//! Stable error codes: the `error.code` of every failed event, and a metric label.
//!
//! A code names one failure cause forever: codes are added, never renamed or reused for a
//! different meaning. Each code says whether trying the same job again later can succeed
//! ([`ErrorCode::retryable`]) and carries a default hint for the person reading the event.
//! `docs/errors.md` lists them for users; a test keeps that page in step with this enum.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a job failed. Serialised in `snake_case` (`"registry_unreachable"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not a valid job: not JSON, wrong shape, unknown version, bad field.
    InvalidMessage,
    /// Job signing is configured and the job's signature is missing or wrong.
    InvalidSignature,
    /// The source or a target image reference does not follow Docker's reference grammar.
    InvalidReference,
    /// `target.registry` names no registry (key or alias) in the worker's catalogue.
    UnknownRegistry,
    /// The target repository lies outside the namespaces the catalogue allows for that registry.
    NamespaceNotAllowed,
    /// The registry's credentials could not be read (missing or empty password source).
    RegistryCredentialsMissing,
    /// The source image does not exist in the Docker daemon under the exact reference given.
    SourceImageMissing,
    /// The target is a Docker Hub root repository (`docker.io/library/...`), which cannot be pushed to.
    RootRepositoryOnDockerHub,
    /// The registry did not answer (connection refused, DNS, TLS handshake, 5xx, timeout on `/v2/`).
    RegistryUnreachable,
    /// The registry's certificate is not trusted (wrong CA, wrong name, expired).
    RegistryTlsFailed,
    /// The registry or its token server refused the credentials.
    RegistryAuthFailed,
    /// The credentials are valid but do not carry push rights on the target repository.
    RegistryInsufficientScope,
    /// The registry denied access to the resource during the push.
    RegistryDenied,
    /// The registry asked the client to slow down (HTTP 429).
    RegistryRateLimited,
    /// The registry rejected a layer upload (`blob upload invalid`/`unknown`).
    BlobUploadInvalid,
    /// The registry or a proxy in front of it refused a request as too large (HTTP 413).
    PayloadTooLarge,
    /// The Docker daemon could not be reached or failed internally.
    DaemonUnavailable,
    /// The manifest digest in the registry differs from the digest the push reported.
    DigestMismatch,
    /// The job did not finish within its time limit.
    Timeout,
    /// The job was cancelled by a control message.
    Cancelled,
    /// The push failed for a reason not covered by a more specific code.
    PushFailed,
    /// The registry refused to move or overwrite a tag its policy makes immutable (Harbor's
    /// tag immutability rules, ECR's immutable repositories).
    TagImmutable,
    /// The job's source is an image in a Docker daemon, but this worker has no daemon (no
    /// `[docker]` section): it serves registry-source jobs only.
    DaemonNotConfigured,
    /// The source registry's manifest cannot be copied byte for byte: Docker schema 1, an
    /// unknown media type, a nested index, a digest algorithm other than sha256.
    ManifestUnsupported,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::InvalidMessage,
        ErrorCode::InvalidSignature,
        ErrorCode::InvalidReference,
        ErrorCode::UnknownRegistry,
        ErrorCode::NamespaceNotAllowed,
        ErrorCode::RegistryCredentialsMissing,
        ErrorCode::SourceImageMissing,
        ErrorCode::RootRepositoryOnDockerHub,
        ErrorCode::RegistryUnreachable,
        ErrorCode::RegistryTlsFailed,
        ErrorCode::RegistryAuthFailed,
        ErrorCode::RegistryInsufficientScope,
        ErrorCode::RegistryDenied,
        ErrorCode::RegistryRateLimited,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::PayloadTooLarge,
        ErrorCode::DaemonUnavailable,
        ErrorCode::DigestMismatch,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::PushFailed,
        ErrorCode::TagImmutable,
        ErrorCode::DaemonNotConfigured,
        ErrorCode::ManifestUnsupported,
    ];

    /// The wire form, e.g. `"registry_unreachable"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::InvalidReference => "invalid_reference",
            ErrorCode::UnknownRegistry => "unknown_registry",
            ErrorCode::NamespaceNotAllowed => "namespace_not_allowed",
            ErrorCode::RegistryCredentialsMissing => "registry_credentials_missing",
            ErrorCode::SourceImageMissing => "source_image_missing",
            ErrorCode::RootRepositoryOnDockerHub => "root_repository_on_docker_hub",
            ErrorCode::RegistryUnreachable => "registry_unreachable",
            ErrorCode::RegistryTlsFailed => "registry_tls_failed",
            ErrorCode::RegistryAuthFailed => "registry_auth_failed",
            ErrorCode::RegistryInsufficientScope => "registry_insufficient_scope",
            ErrorCode::RegistryDenied => "registry_denied",
            ErrorCode::RegistryRateLimited => "registry_rate_limited",
            ErrorCode::BlobUploadInvalid => "blob_upload_invalid",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::DaemonUnavailable => "daemon_unavailable",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::PushFailed => "push_failed",
            ErrorCode::TagImmutable => "tag_immutable",
            ErrorCode::DaemonNotConfigured => "daemon_not_configured",
            ErrorCode::ManifestUnsupported => "manifest_unsupported",
        }
    }

    /// Whether the same job can succeed if tried again later without anyone changing anything.
    ///
    /// Only transient conditions are retryable: an unreachable registry or daemon, rate
    /// limiting, a timeout. Everything that needs a person (wrong credentials, wrong name,
    /// missing image) is not, so it fails fast instead of filling the retry queue.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RegistryUnreachable
                | ErrorCode::RegistryRateLimited
                | ErrorCode::DaemonUnavailable
                | ErrorCode::Timeout
        )
    }

    /// The default advice for a person reading a failed event with this code.
    pub fn default_hint(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => {
                "the message is not a valid v1 push job: compare it with schemas/job.schema.json"
            }
            ErrorCode::InvalidSignature => {
                "sign the job with the fleet's shared key (header x-pushfleet-signature: v1=<hex HMAC-SHA256 of the body>)"
            }
            ErrorCode::InvalidReference => {
                "check the image name: lowercase repository, tag of letters, digits, '_', '.', '-' (at most 128)"
            }
            ErrorCode::UnknownRegistry => {
                "target.registry must be a key or alias of the worker's registry catalogue (see `pushfleet check-config`)"
            }
            ErrorCode::NamespaceNotAllowed => {
                "push into one of the namespaces the catalogue lists for this registry, or add the namespace there"
            }
            ErrorCode::RegistryCredentialsMissing => {
                "set password_file or password_env for this registry in the worker configuration and make sure it is readable and not empty"
            }
            ErrorCode::SourceImageMissing => {
                "build or load the source image on the worker's Docker daemon first, with the exact tag the job names"
            }
            ErrorCode::RootRepositoryOnDockerHub => {
                "Docker Hub needs a namespace: push to docker.io/<user-or-org>/<name>"
            }
            ErrorCode::RegistryUnreachable => {
                "the registry did not answer; it will be retried. Check that it runs and the URL in the catalogue is right"
            }
            ErrorCode::RegistryTlsFailed => {
                "the registry's certificate is not trusted: set ca_file for this registry (and the daemon's certs.d) or fix the certificate"
            }
            ErrorCode::RegistryAuthFailed => {
                "the registry refused the username/password: check the credentials configured for this registry"
            }
            ErrorCode::RegistryInsufficientScope => {
                "the account may not push to this repository: grant it push rights or choose a repository it may push to"
            }
            ErrorCode::RegistryDenied => {
                "the registry denied the push: check the account's rights on this repository"
            }
            ErrorCode::RegistryRateLimited => {
                "the registry is rate limiting; the job will be retried after the delay it asked for"
            }
            ErrorCode::BlobUploadInvalid => {
                "the registry rejected a layer upload: check its storage and proxy settings, then retry"
            }
            ErrorCode::PayloadTooLarge => {
                "a layer is larger than the registry or a proxy in front of it accepts (HTTP 413): raise the body size limit"
            }
            ErrorCode::DaemonUnavailable => {
                "the Docker daemon did not answer; it will be retried. Check the worker's docker.host"
            }
            ErrorCode::DigestMismatch => {
                "the registry holds a different manifest than the one pushed: another push to the same tag may have raced this one"
            }
            ErrorCode::Timeout => {
                "the job exceeded its time limit; it will be retried. Raise options.timeout_s for large images"
            }
            ErrorCode::Cancelled => "the job was cancelled on request",
            ErrorCode::PushFailed => {
                "the push failed for an unclassified reason: read the message, then retry"
            }
            ErrorCode::TagImmutable => {
                "the registry keeps this tag immutable: push under a new tag (e.g. the next version), or ask the registry's admins to exempt it from the immutability rule"
            }
            ErrorCode::DaemonNotConfigured => {
                "this worker has no Docker daemon: publish the job to the pool of the build host whose daemon holds the image (`pool`), or copy it from a registry (`source_registry`)"
            }
            ErrorCode::ManifestUnsupported => {
                "only Docker schema 2 and OCI image manifests, and indexes of them, are copied between registries: push the image to the source registry again with a current client"
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_as_str_for_every_code() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialises");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn all_lists_each_code_once() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        let retryable: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.retryable())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            retryable,
            [
                "registry_unreachable",
                "registry_rate_limited",
                "daemon_unavailable",
                "timeout"
            ]
        );
    }

    #[test]
    fn docs_page_lists_every_code() {
        let page = include_str!("../../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` |", code.as_str());
            assert!(page.contains(&row), "docs/errors.md has no row for {code}");
            let retry = if code.retryable() { "yes" } else { "no" };
            assert!(
                page.contains(&format!("{row} {retry} |")),
                "docs/errors.md gives the wrong retryable flag for {code}"
            );
        }
    }
}
