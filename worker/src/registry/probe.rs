//! The push-rights probe (a one-piece upload of the 2-byte blob `{}`: `POST
//! /v2/<repo>/blobs/uploads/?digest=..`, completed with a `PUT` when the registry opened a
//! session, cancelled with a best-effort `DELETE` only if that fails) and the mapping of
//! answers no caller handled.

use std::sync::atomic::Ordering;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::cache::Authorization;
use super::challenge::{self, Challenge};
use super::classify::{parse_retry_after, summarize_body};
use super::error::{ErrorKind, RegistryError, Right, Target};
use super::{Credentials, MAX_BODY, RegistryClient, read_body, sensitive, www_authenticate};

/// The blob the probe uploads: `{}`, the OCI "empty JSON" descriptor's content, which most
/// registries hold already. Not empty, since some registries mishandle 0-byte blobs.
pub(super) const PROBE_BLOB: &[u8] = b"{}";
/// The digest of [`PROBE_BLOB`].
pub const PROBE_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// The outcome of the upload probe when it did not answer 202.
pub(super) enum ProbeFailure {
    /// 401 with a challenge of another kind than the cached one: the cached `/v2/` answer is
    /// stale (the registry's auth set-up changed).
    StaleChallenge(RegistryError),
    Failed(RegistryError),
}

impl RegistryClient {
    /// `POST /v2/<repo>/blobs/uploads/?digest=..` with [`PROBE_BLOB`] must answer 201 (stored
    /// in one request) or 202 (session opened, then completed with a `PUT`).
    pub(super) async fn probe_push(
        &self,
        target: &Target,
        repository: &str,
        login: Option<&Credentials>,
        authorization: &Authorization,
        challenge: Option<&Challenge>,
    ) -> Result<(), ProbeFailure> {
        let request = format!("POST /v2/{repository}/blobs/uploads/");
        let url = self
            .url(
                &format!("v2/{repository}/blobs/uploads/?digest={PROBE_DIGEST}"),
                target,
            )
            .map_err(ProbeFailure::Failed)?;
        let header_value = self
            .header_value(target, &request, authorization)
            .map_err(ProbeFailure::Failed)?;
        let mut builder = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(PROBE_BLOB);
        if let Some(value) = header_value.clone() {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let response = self
            .send(target, &request, builder)
            .await
            .map_err(ProbeFailure::Failed)?;
        let status = response.status();
        match status {
            StatusCode::CREATED => Ok(()),
            StatusCode::ACCEPTED => {
                if !self
                    .complete_upload(repository, response.headers(), header_value.clone())
                    .await
                {
                    self.cancel_upload(repository, response.headers(), header_value)
                        .await;
                }
                Ok(())
            }
            StatusCode::UNAUTHORIZED => {
                let values: Vec<String> = www_authenticate(response.headers())
                    .map(str::to_owned)
                    .collect();
                let now = challenge::challenge_from_headers(values.iter().map(String::as_str)).ok();
                let bearer_error = match &now {
                    Some(Challenge::Bearer { error, .. }) => error.clone(),
                    _ => None,
                };
                let body = self.refusal_detail(response, login, authorization).await;
                let detail = match &bearer_error {
                    Some(e) => format!("{body} ({e})"),
                    None => body,
                };
                let err = match (login, bearer_error.as_deref()) {
                    (None, _) => {
                        let scheme = if matches!(now, Some(Challenge::Bearer { .. })) {
                            "Bearer"
                        } else {
                            "Basic"
                        };
                        RegistryError::new(ErrorKind::CredentialsMissing { scheme }, target)
                            .at(request)
                    }
                    (Some(l), Some("invalid_token")) => RegistryError::new(
                        ErrorKind::AuthFailed {
                            username: l.username.clone(),
                        },
                        target,
                    )
                    .at(request)
                    .with_detail(format!(
                        "{detail}: the registry did not accept the token its token service issued"
                    )),
                    (Some(l), _) => RegistryError::new(
                        ErrorKind::InsufficientScope {
                            username: l.username.clone(),
                            right: Right::Push,
                        },
                        target,
                    )
                    .at(request)
                    .with_detail(detail),
                };
                if now.is_some() && !same_kind(now.as_ref(), challenge) {
                    Err(ProbeFailure::StaleChallenge(err))
                } else {
                    Err(ProbeFailure::Failed(err))
                }
            }
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                let detail = self.refusal_detail(response, login, authorization).await;
                Err(ProbeFailure::Failed(
                    RegistryError::new(
                        ErrorKind::Denied {
                            status: status.as_u16(),
                        },
                        target,
                    )
                    .at(request)
                    .with_detail(detail),
                ))
            }
            _ => Err(ProbeFailure::Failed(
                self.unexpected(target, &request, response, login, Some(authorization))
                    .await,
            )),
        }
    }

    /// Completes the probe's upload session with `PUT <Location>&digest=..` and the blob, so
    /// that no session is left behind; whether it did. Only sent to the registry's own origin.
    pub(super) async fn complete_upload(
        &self,
        repository: &str,
        headers: &HeaderMap,
        authorization: Option<HeaderValue>,
    ) -> bool {
        let Some(mut url) = self.upload_location(repository, headers) else {
            return false;
        };
        url.query_pairs_mut().append_pair("digest", PROBE_DIGEST);
        let mut builder = self
            .http
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(PROBE_BLOB);
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match builder.send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::debug!(
                    registry = %self.key, repository, status = r.status().as_u16(),
                    "completing the upload probe failed; cancelling it"
                );
                false
            }
            Err(e) => {
                tracing::debug!(
                    registry = %self.key, repository, error = %e.without_url(),
                    "completing the upload probe failed; cancelling it"
                );
                false
            }
        }
    }

    /// The upload session URL of a 202, when it is on the registry's own origin.
    fn upload_location(&self, repository: &str, headers: &HeaderMap) -> Option<url::Url> {
        let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
            tracing::debug!(registry = %self.key, repository, "upload probe answered 202 without Location");
            return None;
        };
        let url = self.base.join(location).ok()?;
        if url.origin() != self.base.origin() {
            tracing::debug!(registry = %self.key, repository, "upload Location on another origin; not followed");
            return None;
        }
        Some(url)
    }

    /// Best effort `DELETE` of the upload session the probe opened; the outcome is ignored
    /// (a pull,push token may not delete: 401). Only sent to the registry's own origin.
    pub(super) async fn cancel_upload(
        &self,
        repository: &str,
        headers: &HeaderMap,
        authorization: Option<HeaderValue>,
    ) {
        let Some(url) = self.upload_location(repository, headers) else {
            return;
        };
        let mut builder = self.http.delete(url);
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match builder.send().await {
            Ok(r) => tracing::debug!(
                registry = %self.key, repository, status = r.status().as_u16(),
                "upload probe session cancelled (status ignored)"
            ),
            Err(e) => tracing::debug!(
                registry = %self.key, repository, error = %e.without_url(),
                "cancelling the upload probe session failed (ignored)"
            ),
        }
    }

    pub(super) fn header_value(
        &self,
        target: &Target,
        request: &str,
        authorization: &Authorization,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let text = match authorization {
            Authorization::Anonymous => return Ok(None),
            Authorization::Basic(value) => value.expose_secret().to_owned(),
            Authorization::Bearer(token) => format!("Bearer {}", token.expose_secret()),
        };
        sensitive(&text).map(Some).map_err(|()| {
            RegistryError::new(ErrorKind::Protocol, target)
                .at(request)
                .with_detail("the credentials or token cannot be sent in an HTTP header")
        })
    }

    /// The summary of an error body (see [`summarize_body`]), scrubbed of `secrets`.
    pub(super) async fn body_summary(&self, response: Response, secrets: &[&str]) -> String {
        let status = response.status().as_u16();
        let body = read_body(response, MAX_BODY).await.unwrap_or_default();
        summarize_body(status, &body, secrets)
    }

    /// The summary of the body of an answer to a request sent with `authorization` (and
    /// `login`'s password behind it), scrubbed of both.
    pub(super) async fn refusal_detail(
        &self,
        response: Response,
        login: Option<&Credentials>,
        authorization: &Authorization,
    ) -> String {
        let mut secrets: Vec<&SecretString> = login.map(|l| &l.password).into_iter().collect();
        match authorization {
            Authorization::Bearer(secret) | Authorization::Basic(secret) => secrets.push(secret),
            Authorization::Anonymous => {}
        }
        let secrets: Vec<&str> = secrets.iter().map(|s| s.expose_secret()).collect();
        self.body_summary(response, &secrets).await
    }

    /// Maps an answer no caller handled: 429, 5xx and 408 as transient, the rest as protocol
    /// errors. The body is scrubbed of `login`'s password and of `authorization`.
    pub(super) async fn unexpected(
        &self,
        target: &Target,
        request: &str,
        response: Response,
        login: Option<&Credentials>,
        authorization: Option<&Authorization>,
    ) -> RegistryError {
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
            return RegistryError::new(ErrorKind::RateLimited { retry_after }, target).at(request);
        }
        let detail = self
            .refusal_detail(
                response,
                login,
                authorization.unwrap_or(&Authorization::Anonymous),
            )
            .await;
        let kind = if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            ErrorKind::Unreachable
        } else {
            ErrorKind::Protocol
        };
        RegistryError::new(kind, target)
            .at(request)
            .with_detail(detail)
    }
}

pub(super) fn same_kind(a: Option<&Challenge>, b: Option<&Challenge>) -> bool {
    match (a, b) {
        (Some(Challenge::Bearer { realm: r1, .. }), Some(Challenge::Bearer { realm: r2, .. })) => {
            r1 == r2
        }
        (Some(Challenge::Basic), Some(Challenge::Basic)) | (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_digest_is_the_blobs_digest() {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(PROBE_BLOB)));
        assert_eq!(digest, PROBE_DIGEST);
    }

    #[test]
    fn challenge_kinds() {
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.into(),
            service: None,
            scope: None,
            error: None,
        };
        assert!(same_kind(Some(&bearer("a")), Some(&bearer("a"))));
        assert!(!same_kind(Some(&bearer("a")), Some(&bearer("b"))));
        assert!(!same_kind(Some(&bearer("a")), Some(&Challenge::Basic)));
        assert!(!same_kind(Some(&Challenge::Basic), None));
        assert!(same_kind(None, None));
    }
}
