//! Blobs over the registry API, for copying images registry to registry without a daemon:
//! `HEAD` (does the repository have it?), a streamed `GET`, a cross-repository mount
//! (`POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<repo>`), opening an upload session
//! and finishing it with one streamed `PUT ..?digest=`.
//!
//! Authorisation goes through the client's one path and cache: reads take the pull (or cached
//! push) authorisation of [`RegistryClient::manifest_digest`], uploads the push access of
//! [`RegistryClient::preflight_push`]. A mount needs pull on the `from` repository as well:
//! with a token registry that is a token with two scopes (as Docker asks it), cached under
//! `<repository><-<from>`; Basic and anonymous access are the push access as is.
//!
//! Bodies are never held whole: [`RegistryClient::get_blob`] returns the response to stream
//! from and [`RegistryClient::finish_upload`] takes a streaming [`reqwest::Body`]. Both get a
//! time limit that grows with the blob's size ([`RegistryClient::blob_time_limit`]), since
//! the client's per-request limit is meant for small answers.

use std::fmt;
use std::time::Duration;

use reqwest::header;
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::access::Access;
use super::cache::Authorization;
use super::classify::from_transport;
use super::error::{ErrorKind, RegistryError, Right, Target};
use super::names::{validate_reference, validate_repository};
use super::{Credentials, Read, RegistryClient, content_digest};

/// The slowest transfer rate a blob request is given time for, on top of the request limit.
const MIN_BLOB_RATE: u64 = 1024 * 1024;

/// An open upload session in a target repository: where to send the blob, and with what
/// authorisation. Finish it with [`RegistryClient::finish_upload`].
pub struct UploadSession {
    repository: String,
    location: Url,
    /// `None` when the session lives on another origin (no credentials are sent there).
    authorization: Option<Authorization>,
}

impl fmt::Debug for UploadSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The query holds the registry's upload state; the path is enough to follow it.
        f.debug_struct("UploadSession")
            .field("repository", &self.repository)
            .field("location", &self.location.path())
            .finish_non_exhaustive()
    }
}

/// What a cross-repository mount did.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob into the repository (201): nothing to upload.
    Mounted,
    /// The registry did not mount it (202, or the mount was not allowed) and an upload
    /// session is open instead: stream the blob into it.
    Upload(UploadSession),
}

impl RegistryClient {
    /// The registry's base URL (scheme, host, port).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Whether `other` talks to the same registry (same base URL), so a blob of one of its
    /// repositories can be mounted into another.
    pub fn same_registry(&self, other: &RegistryClient) -> bool {
        self.base == other.base
    }

    /// The time limit of a request carrying a blob of `size` bytes: the request limit plus
    /// the time the blob takes at 1 MiB/s.
    pub fn blob_time_limit(&self, size: u64) -> Duration {
        self.timeout + Duration::from_secs(size / MIN_BLOB_RATE)
    }

    /// Whether `repository` holds blob `digest` (`HEAD /v2/<repo>/blobs/<digest>`: 200 yes,
    /// 404 no). Asked again in-process on a transient answer.
    pub async fn blob_exists(
        &self,
        repository: &str,
        digest: &str,
        login: Option<&Credentials>,
    ) -> Result<bool, RegistryError> {
        let read = Read::new(Method::HEAD, "blobs", digest);
        let found = self.read(repository, &read, login, None, |_| async { Ok(()) });
        Ok(found.await?.is_some())
    }

    /// The answer to `GET /v2/<repo>/blobs/<digest>`, to stream the blob from
    /// ([`Response::bytes_stream`]), or `None` when the repository has no such blob (404).
    /// `size` sets the time limit ([`RegistryClient::blob_time_limit`]). Redirects (to a
    /// storage backend) are followed; the `Authorization` header is not sent to another host.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        login: Option<&Credentials>,
    ) -> Result<Option<Response>, RegistryError> {
        let read = Read::new(Method::GET, "blobs", digest);
        let limit = self.blob_time_limit(size);
        self.read(repository, &read, login, Some(limit), |response| async {
            Ok(response)
        })
        .await
    }

    /// Opens an upload session in `repository` (`POST /v2/<repo>/blobs/uploads/`, 202), with
    /// the push access of [`RegistryClient::preflight_push`].
    pub async fn open_upload(
        &self,
        repository: &str,
        login: Option<&Credentials>,
    ) -> Result<UploadSession, RegistryError> {
        let target = self.target(repository);
        let request = format!("POST /v2/{repository}/blobs/uploads/");
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"), &target)?;
        let post = || self.http.post(url.clone()).body(Vec::<u8>::new());
        let (response, authorization) = self
            .send_authorized(repository, &target, &request, Access::Push, login, post)
            .await?;
        if response.status() == StatusCode::ACCEPTED {
            return self.session(&target, &request, repository, &response, authorization);
        }
        Err(self
            .refused_upload(&target, request, response, login, &authorization)
            .await)
    }

    /// Mounts blob `digest` from repository `from` of this registry into `repository`. 201 is
    /// [`Mount::Mounted`]; 202 leaves an upload session open, returned as [`Mount::Upload`];
    /// a mount refused for lack of rights on `from` (401 with fresh authorisation) falls back
    /// to a plain [`RegistryClient::open_upload`].
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
        login: Option<&Credentials>,
    ) -> Result<Mount, RegistryError> {
        let target = self.target(repository);
        validate_repository(&target, from)?;
        validate_reference(&target, digest)?;
        let request = format!("POST /v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"), &target)?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let post = || self.http.post(url.clone()).body(Vec::<u8>::new());
        let access = Access::Mount { from };
        let (response, authorization) = self
            .send_authorized(repository, &target, &request, access, login, post)
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => {
                let session =
                    self.session(&target, &request, repository, &response, authorization)?;
                Ok(Mount::Upload(session))
            }
            StatusCode::UNAUTHORIZED => {
                tracing::debug!(registry = %self.key, repository, from, "mount not allowed; uploading instead");
                Ok(Mount::Upload(self.open_upload(repository, login).await?))
            }
            _ => Err(self
                .refused_upload(&target, request, response, login, &authorization)
                .await),
        }
    }

    /// Finishes `session` with one `PUT <location>?digest=<digest>` whose body is `body` (a
    /// stream of exactly `size` bytes); the registry checks the digest (400 when it differs).
    pub async fn finish_upload(
        &self,
        session: UploadSession,
        digest: &str,
        size: u64,
        body: reqwest::Body,
        login: Option<&Credentials>,
    ) -> Result<(), RegistryError> {
        let repository = session.repository.as_str();
        let target = self.target(repository);
        validate_reference(&target, digest)?;
        let request = format!("PUT /v2/{repository}/blobs/uploads/<session>?digest={digest}");
        let mut url = session.location;
        url.query_pairs_mut().append_pair("digest", digest);
        let mut builder = self
            .http
            .put(url)
            .timeout(self.blob_time_limit(size))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(body);
        // The body streams once: the request cannot be sent again with fresh authentication.
        let authorization = session.authorization.unwrap_or(Authorization::Anonymous);
        if let Some(value) = self.header_value(&target, &request, &authorization)? {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let response = self.send(&target, &request, builder).await?;
        if response.status().is_success() {
            if let Some(stored) = content_digest(response.headers())
                && stored != digest
            {
                return Err(RegistryError::new(ErrorKind::BlobUploadInvalid, &target)
                    .at(request)
                    .with_detail(format!("the registry stored the blob as {stored}")));
            }
            return Ok(());
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            self.forget_after_401(&self.access_key(repository, login));
        }
        Err(self
            .refused_upload(&target, request, response, login, &authorization)
            .await)
    }

    /// The session an upload `POST` answered (its `Location`, resolved against the base URL).
    /// The authorisation is only sent along when the session lives on the registry's origin.
    fn session(
        &self,
        target: &Target,
        request: &str,
        repository: &str,
        response: &Response,
        authorization: Authorization,
    ) -> Result<UploadSession, RegistryError> {
        let protocol = |detail: &str| {
            RegistryError::new(ErrorKind::Protocol, target)
                .at(request)
                .with_detail(detail)
        };
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol("HTTP 202 without a Location header"))?;
        let location = self
            .base
            .join(location)
            .map_err(|_| protocol("the upload Location is not a URL"))?;
        let same_origin = location.origin() == self.base.origin();
        Ok(UploadSession {
            repository: repository.to_owned(),
            location,
            authorization: same_origin.then_some(authorization),
        })
    }

    /// The error of a refused upload request (`POST` or `PUT`).
    async fn refused_upload(
        &self,
        target: &Target,
        request: String,
        response: Response,
        login: Option<&Credentials>,
        authorization: &Authorization,
    ) -> RegistryError {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            let headers = response.headers();
            return self.unauthorized(target, request, headers, login, authorization, Right::Push);
        }
        let code = status.as_u16();
        let kind = match code {
            413 => ErrorKind::PayloadTooLarge,
            400 | 404 if request.starts_with("PUT") => ErrorKind::BlobUploadInvalid,
            400 => ErrorKind::Protocol,
            403..=405 => ErrorKind::Denied { status: code },
            _ => {
                return self
                    .unexpected(target, &request, response, login, Some(authorization))
                    .await;
            }
        };
        let detail = self.refusal_detail(response, login, authorization).await;
        RegistryError::new(kind, target)
            .at(request)
            .with_detail(detail)
    }

    /// The error of a blob body that broke off while being read from `repository`.
    pub fn blob_read_failed(
        &self,
        repository: &str,
        digest: &str,
        err: reqwest::Error,
    ) -> RegistryError {
        let target = self.target(repository);
        let request = format!("GET /v2/{repository}/blobs/{digest}");
        from_transport(&target, &request, err, self.timeout)
    }
}
