//! Manifests as bytes: reading the exact manifest a repository holds under a digest
//! (`GET /v2/<repo>/manifests/<digest>`) and writing those same bytes under a tag
//! (`PUT /v2/<repo>/manifests/<tag>`), which is how a registry-side tag is made without the
//! daemon (see `crate::retag`).
//!
//! The read uses the pull (or cached push) authorisation of the manifest `HEAD`; the write
//! takes its authorisation from [`RegistryClient::preflight_push`], i.e. the cached push
//! access the job's preflight just proved, so there is one authorisation path and one cache.
//! Both are idempotent and are asked again in-process on a transient answer, like the `HEAD`.

use std::fmt;

use reqwest::header;
use reqwest::{Method, Response};

use super::access::Access;
use super::classify::from_transport;
use super::error::{ErrorKind, RegistryError, Right, Target};
use super::names::{validate_reference, validate_repository};
use super::{Credentials, Read, RegistryClient, content_digest, read_body};

/// The largest manifest read (distribution refuses manifests over 4 MiB too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest exactly as the registry serves it.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The digest it was asked for (`sha256:...`).
    pub digest: String,
    /// Its media type, from the answer's `Content-Type` without parameters.
    pub media_type: String,
    /// Its bytes, unchanged.
    pub body: Vec<u8>,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// Whether a refused manifest write is an immutable-tag refusal: Harbor answers 412
/// `PRECONDITION` ("Failed to process request due to '<repo>:<tag>' configured as
/// immutable."); a manifest `PUT` carries no precondition of its own, so any 412 is the
/// registry's policy. Other registries answer 400, 403 or 409 with a message naming
/// immutability (ECR: "... cannot be overwritten because the repository is immutable").
pub(crate) fn is_immutable_refusal(status: u16, detail: &str) -> bool {
    status == 412
        || (matches!(status, 400 | 403 | 409) && detail.to_ascii_lowercase().contains("immutable"))
}

impl RegistryClient {
    /// The manifest `repository` holds under `digest`, byte for byte, or `None` when the
    /// registry has no such manifest (404). Asked with the manifest types of
    /// [`super::MANIFEST_ACCEPT`]; the caller checks the bytes against the digest. Asked
    /// again in-process on a transient answer, also when the body breaks off.
    pub async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &str,
        login: Option<&Credentials>,
    ) -> Result<Option<Manifest>, RegistryError> {
        let read = Read::new(Method::GET, "manifests", digest);
        let target = &self.target(repository);
        let request = &read.request(repository);
        let answer = |response: Response| async move {
            let media_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            let body = read_body(response, MAX_MANIFEST_BYTES + 1)
                .await
                .map_err(|e| from_transport(target, request, e, self.timeout))?;
            if body.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::new(ErrorKind::Protocol, target)
                    .at(request)
                    .with_detail(format!(
                        "the manifest is larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
            }
            Ok(Manifest {
                digest: digest.to_owned(),
                media_type,
                body,
            })
        };
        self.read(repository, &read, login, None, answer).await
    }

    /// Puts `manifest`'s exact bytes, with its media type, under `tag` in `repository`, and
    /// returns the `Docker-Content-Digest` the registry answered (the digest of what it
    /// stored under the tag; `None` if it sent none). Needs push rights: the authorisation is
    /// [`RegistryClient::preflight_push`]'s (from its cache after the job's preflight). A 401
    /// drops it and is tried once more with fresh authentication.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
        login: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let target = &self.target(repository);
        validate_repository(target, repository)?;
        validate_reference(target, tag)?;
        let request = &format!("PUT /v2/{repository}/manifests/{tag}");
        let url = self.url(&format!("v2/{repository}/manifests/{tag}"), target)?;
        let put = &|| {
            self.http
                .put(url.clone())
                .header(header::CONTENT_TYPE, manifest.media_type.as_str())
                .body(manifest.body.clone())
        };
        // Putting the same bytes under the same tag twice has the effect of once.
        self.with_read_retries(repository, || async move {
            let (response, authorization) = self
                .send_authorized(repository, target, request, Access::Push, login, put)
                .await?;
            let status = response.status();
            if status.is_success() {
                return Ok(content_digest(response.headers()));
            }
            let code = status.as_u16();
            Err(match code {
                401 => self.unauthorized(
                    target,
                    request.clone(),
                    response.headers(),
                    login,
                    &authorization,
                    Right::Push,
                ),
                400 | 403 | 404 | 405 | 409 | 412 => {
                    let detail = self.refusal_detail(response, login, &authorization).await;
                    refused_put(target, request.clone(), tag, code, detail)
                }
                _ => {
                    self.unexpected(target, request, response, login, Some(&authorization))
                        .await
                }
            })
        })
        .await
    }
}

/// The error of a manifest `PUT` refused with `status` (not 401).
fn refused_put(
    target: &Target,
    request: String,
    tag: &str,
    status: u16,
    detail: String,
) -> RegistryError {
    let kind = if is_immutable_refusal(status, &detail) {
        ErrorKind::TagImmutable {
            tag: tag.to_owned(),
            status,
        }
    } else if (403..=405).contains(&status) {
        ErrorKind::Denied { status }
    } else {
        ErrorKind::Protocol
    };
    RegistryError::new(kind, target)
        .at(request)
        .with_detail(detail)
}

#[cfg(test)]
mod tests {
    use pushfleet_shared::ErrorCode;

    use super::*;
    use crate::failure::Coded;
    use crate::registry::classify::summarize_body;

    fn target() -> Target {
        Target {
            registry: "harbor".into(),
            repository: Some("team-a/app".into()),
        }
    }

    #[test]
    fn harbor_s_412_and_messages_naming_immutability_are_tag_immutable() {
        let harbor = br#"{"errors":[{"code":"PRECONDITION","message":"Failed to process request due to 'team-a/app:1.0' configured as immutable."}]}"#;
        let detail = summarize_body(412, harbor, &[]);
        let e = refused_put(
            &target(),
            "PUT /v2/team-a/app/manifests/1.0".into(),
            "1.0",
            412,
            detail,
        );
        assert_eq!(e.code(), ErrorCode::TagImmutable, "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("configured as immutable"), "{e}");
        assert!(e.to_string().contains("`1.0`"), "{e}");

        // A 412 says so even with an empty body; other statuses only when the text does.
        assert_eq!(
            refused_put(&target(), "r".into(), "t", 412, "HTTP 412".into()).code(),
            ErrorCode::TagImmutable
        );
        for status in [400, 403, 409] {
            let e = refused_put(
                &target(),
                "r".into(),
                "t",
                status,
                "the tag cannot be overwritten because the repository is IMMUTABLE".into(),
            );
            assert_eq!(e.code(), ErrorCode::TagImmutable, "{status}");
        }
        assert_eq!(
            refused_put(&target(), "r".into(), "t", 403, "DENIED: no".into()).code(),
            ErrorCode::RegistryDenied
        );
        assert_eq!(
            refused_put(&target(), "r".into(), "t", 400, "MANIFEST_INVALID".into()).code(),
            ErrorCode::PushFailed
        );
        // A 5xx naming immutability is still a server error, not a policy.
        assert!(!is_immutable_refusal(500, "immutable"));
    }

    #[test]
    fn debug_shows_no_body() {
        let m = Manifest {
            digest: "sha256:ab".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: b"{\"secret-looking\":1}".to_vec(),
        };
        let text = format!("{m:?}");
        assert!(!text.contains("secret-looking"), "{text}");
        assert!(text.contains("bytes: 20"), "{text}");
    }
}
