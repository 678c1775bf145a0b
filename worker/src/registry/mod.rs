//! The registry client of the preflight and verify stages: talks to the target registry
//! directly over the Docker Registry HTTP API v2 (never through the daemon), so problems are
//! found before a push starts and the pushed digest is checked where it matters.
//!
//! # Preflight (`preflight_push`)
//!
//! 1. `GET /v2/` without credentials: reachability and the challenge (200: no auth;
//!    401 `Basic ...`; 401 `Bearer realm=..,service=..`).
//! 2. Authenticate. Basic: `GET /v2/` again with the credentials (a 401 means they are wrong).
//!    Bearer: `GET <realm>?service=..&scope=repository:<repo>:pull,push` with the credentials
//!    as Basic auth (401 from the token server means they are wrong). A token server answers
//!    200 with *reduced* access when the user lacks a right, so getting a token proves nothing
//!    by itself.
//! 3. Bearer tokens in the Docker token format (distribution, Harbor, GitLab) list the granted
//!    actions in their `access` claim: `push` there is the push right, its absence a refusal
//!    (`registry_insufficient_scope`), and no request is sent to the registry for it
//!    ([`PreflightMethod::TokenClaims`]; see `claims.rs` for why the signature is not checked).
//! 4. Otherwise (Basic auth, anonymous access, opaque tokens) push rights are probed with the
//!    least residue that works everywhere ([`PreflightMethod::UploadProbe`]): the 2-byte blob
//!    `{}` (the OCI "empty JSON" blob, present in most registries already) is uploaded in one
//!    piece: `POST /v2/<repo>/blobs/uploads/?digest=..` with the body, which a registry that
//!    supports single-request uploads answers 201; distribution and most others answer 202
//!    with an upload `Location`, which a `PUT ..?digest=..` with the body completes (201).
//!    Either way no upload session is left behind (a cancelled session would stay until the
//!    registry purges it, a week by default, since cancelling needs the `delete` action). A
//!    202 to the `POST` is the push right; 401 (`error="insufficient_scope"` from
//!    distribution) means no push right, 403 is a denial, 404 usually a missing project
//!    (Harbor) or namespace. If the completing `PUT` fails, the session is cancelled with a
//!    best-effort `DELETE` (only ever sent to the registry's own origin).
//!
//! # Blobs
//!
//! For copies between registries ([`crate::copy`]), `blob.rs` adds blob `HEAD`, streamed
//! `GET`, cross-repository mounts and streamed uploads, on the same authorisation path and
//! cache (a mount's token names both repositories).
//!
//! # Caching: the hot path stays lean
//!
//! Per endpoint, the `/v2/` challenge is kept for [`cache::PING_TTL`]. Per repository and
//! credential (user name plus a keyed hash of the password, so a rotated password misses),
//! the proven authorisation is kept: a Bearer token until shortly before its `expires_in`
//! (60 s when absent, the token spec's default), Basic or anonymous access for
//! [`cache::BASIC_TTL`]. A second preflight within that time sends no request at all and
//! answers [`PreflightMethod::Cached`]. Preflights of one repository and credential run one
//! at a time (`flight.rs`): jobs that start together wait for the first one's preflight and
//! are then served from the cache, so a cold start with N jobs sends one preflight, not N. A 401 on a later request drops the entry;
//! [`RegistryClient::manifest_digest`] then retries once with fresh authentication, and the
//! runner calls [`RegistryClient::invalidate`] when a push fails as unauthorized or denied.
//! The cache sits behind a `std::sync::Mutex` that is never held across an `.await`.
//!
//! # Errors
//!
//! [`RegistryError`] implements [`crate::failure::Coded`]. Decisions worth knowing:
//! - a `401` without a usable challenge (missing, unparsable, `Negotiate` only, Bearer
//!   without realm) and `/v2/` answering anything but 200/401/403/429/5xx are
//!   [`ErrorKind::Protocol`] → `push_failed`, not retryable: the URL most likely does not
//!   point at a registry, and retrying will not change that;
//! - an `https` registry whose token realm is `http` is refused
//!   ([`ErrorKind::InsecureRealm`], `push_failed`) rather than sending the password in
//!   clear text;
//! - with no login, any demand for authentication (Basic challenge, 401 from the token
//!   server, or a 401 on the upload probe with an anonymous token) is
//!   `registry_credentials_missing`.
//!
//! # Transport
//!
//! One `reqwest` client per endpoint, rustls with the webpki roots plus the endpoint's own CA
//! bundle when one is configured (added to, not replacing, the built-in roots, as Docker's
//! `certs.d` does). Invalid certificates are never accepted; an `https` endpoint is
//! `https_only`, and a redirect from `https` to `http` is refused. Every request has a time
//! limit ([`DEFAULT_REQUEST_TIMEOUT`] unless given to [`RegistryClient::with_timeout`]).

mod access;
mod auth;
mod base_url;
mod blob;
mod cache;
mod challenge;
mod claims;
mod classify;
mod error;
mod flight;
mod manifest;
mod names;
mod probe;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use self::access::Access;
use self::auth::Actions;
pub use self::base_url::check_base_url;
pub use self::blob::{Mount, UploadSession};
use self::cache::{AccessKey, Authorization, Cache};
use self::challenge::Challenge;
use self::claims::PushClaim;
use self::classify::from_transport;
pub use self::error::{ErrorKind, RegistryError, Right, Target};
use self::flight::Flights;
pub use self::manifest::{MAX_MANIFEST_BYTES, Manifest};
use self::names::{validate_reference, validate_repository};
pub use self::probe::PROBE_DIGEST;
use self::probe::ProbeFailure;
pub use crate::credentials::Credentials;
pub use pushfleet_shared::PreflightMethod;
/// Re-exported: [`Credentials`] and [`PushAccess`] hold [`SecretString`]s.
pub use secrecy::{ExposeSecret, SecretString};

/// Time limit of one registry request (connect, send, answer and body).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of establishing a connection (TCP and TLS), within the request limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (token responses, error bodies).
const MAX_BODY: usize = 256 * 1024;
/// How many times a manifest read is sent when the registry answers it transiently (see
/// [`RegistryClient::manifest_digest`]).
pub const READ_ATTEMPTS: usize = 4;
/// The pause before the second such read; each next one is four times longer (with jitter).
const READ_RETRY_MIN_DELAY: Duration = Duration::from_millis(50);

/// The manifest media types asked for when checking a tag: Docker v2 manifest and manifest
/// list, OCI manifest and index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Where a registry is: its catalogue key, its base URL (`http://127.0.0.1:5001`,
/// `https://harbor.example.com`) and optionally a PEM CA bundle to trust for it.
#[derive(Clone)]
pub struct RegistryEndpoint {
    /// The catalogue key, used in every error and log line.
    pub key: String,
    /// Scheme, host and port of the registry; no path, credentials, query or fragment.
    pub base_url: Url,
    /// PEM certificates to trust in addition to the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RegistryEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryEndpoint")
            .field("key", &self.key)
            .field("base_url", &self.base_url.as_str())
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .finish()
    }
}

/// How requests to a registry are authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    /// No credentials needed.
    Anonymous,
    /// HTTP Basic with the login.
    Basic,
    /// A Bearer token from the registry's token service.
    Bearer,
}

/// Proven push access to one repository: how to authorise further requests, until when.
#[derive(Clone)]
pub struct PushAccess {
    authorization: Authorization,
    valid_until: Instant,
    /// How the push right was established.
    pub method: PreflightMethod,
}

impl PushAccess {
    /// The scheme of the authorisation.
    pub fn scheme(&self) -> AuthScheme {
        match self.authorization {
            Authorization::Anonymous => AuthScheme::Anonymous,
            Authorization::Basic(_) => AuthScheme::Basic,
            Authorization::Bearer(_) => AuthScheme::Bearer,
        }
    }

    /// Served from the cache, without any request.
    pub fn cached(&self) -> bool {
        self.method == PreflightMethod::Cached
    }

    /// Until when the access is reused without asking the registry again.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// The `Authorization` header value (`Basic ..` or `Bearer ..`), `None` when anonymous.
    pub fn authorization_header(&self) -> Option<SecretString> {
        match &self.authorization {
            Authorization::Anonymous => None,
            Authorization::Basic(value) => Some(value.clone()),
            Authorization::Bearer(token) => Some(SecretString::from(format!(
                "Bearer {}",
                token.expose_secret()
            ))),
        }
    }
}

impl fmt::Debug for PushAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushAccess")
            .field("scheme", &self.scheme())
            .field("valid_until", &self.valid_until)
            .field("method", &self.method)
            .finish()
    }
}

/// The client of one registry endpoint. Cheap to share (`Arc`); all methods take `&self`.
pub struct RegistryClient {
    key: String,
    base: Url,
    http: reqwest::Client,
    timeout: Duration,
    cache: Mutex<Cache>,
    flights: Flights<AccessKey>,
    hasher: RandomState,
    requests: AtomicU64,
    request_metrics: Option<crate::metrics::RegistryRequests>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("key", &self.key)
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `endpoint` with [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(endpoint: RegistryEndpoint) -> Result<Self, RegistryError> {
        Self::with_timeout(endpoint, DEFAULT_REQUEST_TIMEOUT)
    }

    /// A client for `endpoint` whose requests each get at most `timeout`.
    pub fn with_timeout(
        endpoint: RegistryEndpoint,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let target = Target {
            registry: endpoint.key.clone(),
            repository: None,
        };
        let invalid = |reason: String| {
            RegistryError::new(ErrorKind::InvalidEndpoint, &target).with_detail(reason)
        };
        let base = endpoint.base_url;
        check_base_url(&base).map_err(invalid)?;
        let https = base.scheme() == "https";
        if timeout.is_zero() {
            return Err(invalid("the request timeout is zero".to_owned()));
        }

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("pushfleet/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .https_only(https)
            .redirect(redirect_policy());
        if let Some(pem) = &endpoint.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| invalid(format!("cannot read the CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("the CA bundle holds no PEM certificate".to_owned()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            key: endpoint.key,
            base,
            http,
            timeout,
            cache: Mutex::new(Cache::default()),
            flights: Flights::default(),
            hasher: RandomState::new(),
            requests: AtomicU64::new(0),
            request_metrics: None,
        })
    }

    /// The same client, counting its requests into `metrics` by status class.
    pub fn with_metrics(mut self, metrics: crate::metrics::RegistryRequests) -> Self {
        self.request_metrics = Some(metrics);
        self
    }

    /// The registry's catalogue key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many HTTP requests this client has sent (tests use it to see the cache work).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Checks, before a push, that `repository` (e.g. `production/myapp`) can be pushed to
    /// with `login` (`None`: anonymously); see the module documentation for the steps. A
    /// valid cached result is returned without any request.
    pub async fn preflight_push(
        &self,
        repository: &str,
        login: Option<&Credentials>,
    ) -> Result<PushAccess, RegistryError> {
        let target = self.target(repository);
        validate_repository(&target, repository)?;
        let key = self.access_key(repository, login);
        if let Some(access) = self.cached_push(&key, repository) {
            return Ok(access);
        }
        // A concurrent preflight of the same key may prove the access while this one waits.
        let _turn = self.flights.turn(&key).await;
        if let Some(access) = self.cached_push(&key, repository) {
            return Ok(access);
        }
        let mut retried = false;
        loop {
            let (challenge, ping_cached) = self.challenge(&target).await?;
            let obtained_at = Instant::now();
            let (authorization, validity) = self
                .authorize(
                    &target,
                    repository,
                    login,
                    challenge.as_ref(),
                    Actions::PullPush,
                    true,
                )
                .await?;
            let claim = match (&authorization, challenge.as_ref()) {
                (Authorization::Bearer(token), Some(Challenge::Bearer { realm, .. })) => {
                    match claims::push_claim(token.expose_secret(), repository) {
                        PushClaim::NotGranted => {
                            return Err(claims_refusal(&target, repository, login, realm));
                        }
                        claim => claim,
                    }
                }
                _ => PushClaim::Unknown,
            };
            let method = if claim == PushClaim::Granted {
                PreflightMethod::TokenClaims
            } else {
                match self
                    .probe_push(
                        &target,
                        repository,
                        login,
                        &authorization,
                        challenge.as_ref(),
                    )
                    .await
                {
                    Ok(()) => PreflightMethod::UploadProbe,
                    Err(ProbeFailure::StaleChallenge(e)) => {
                        self.lock().drop_ping();
                        if ping_cached && !retried {
                            retried = true;
                            tracing::debug!(registry = %self.key, "challenge changed; pinging again");
                            continue;
                        }
                        return Err(e);
                    }
                    Err(ProbeFailure::Failed(e)) => return Err(e),
                }
            };
            let valid_until = obtained_at + validity;
            self.remember(&key, &authorization, true, obtained_at, validity);
            tracing::debug!(registry = %self.key, repository, method = method.as_str(), "push access proven");
            return Ok(PushAccess {
                authorization,
                valid_until,
                method,
            });
        }
    }

    /// A valid cached push access for `key`.
    fn cached_push(&self, key: &AccessKey, repository: &str) -> Option<PushAccess> {
        let entry = self.lock().access(key, true, Instant::now())?;
        tracing::debug!(registry = %self.key, repository, "push access served from cache");
        Some(PushAccess {
            authorization: entry.authorization,
            valid_until: entry.expires_at,
            method: PreflightMethod::Cached,
        })
    }

    /// The digest (`Docker-Content-Digest`) of manifest `reference` (a tag or digest) in
    /// `repository`, or `None` when the registry has no such manifest (404). A 401 drops the
    /// cached authorisation and is retried once with fresh authentication.
    ///
    /// A transient answer (a 5xx, a dropped connection; not a timeout) is asked again here,
    /// [`READ_ATTEMPTS`] times in all with short growing pauses, before it fails the job: a
    /// registry under concurrent pushes of one manifest answers the odd read with a 500, and
    /// sending the whole job through the broker's delay queue for that idles the worker for
    /// seconds.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
        login: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let read = &Read::new(Method::HEAD, "manifests", reference);
        let answer = |response: Response| async move {
            content_digest(response.headers()).ok_or_else(|| {
                RegistryError::new(ErrorKind::Protocol, &self.target(repository))
                    .at(read.request(repository))
                    .with_detail(format!(
                        "HTTP {} without a Docker-Content-Digest header",
                        response.status().as_u16()
                    ))
            })
        };
        self.read(repository, read, login, None, answer).await
    }

    /// Runs `once` until it succeeds, fails for good, or has been sent [`READ_ATTEMPTS`]
    /// times; only transient failures ([`RegistryError::is_transient`]) are sent again, after
    /// short growing pauses. For idempotent requests only.
    async fn with_read_retries<T, F, Fut>(
        &self,
        repository: &str,
        mut once: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(READ_RETRY_MIN_DELAY)
            .with_factor(4.0)
            .with_jitter()
            .with_max_times(READ_ATTEMPTS - 1)
            .build();
        loop {
            match once().await {
                Err(e) if e.is_transient() => match pauses.next() {
                    Some(pause) => {
                        tracing::debug!(registry = %self.key, repository, error = %e, ?pause, "transient answer to an idempotent request; asking again");
                        tokio::time::sleep(pause).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// The one way a read (`HEAD` or `GET` of a manifest or blob) is sent: with the read
    /// authorisation ([`Access::Pull`]: a 401 is asked once more with fresh authentication),
    /// and asked again on a transient answer ([`RegistryClient::with_read_retries`]). `then`
    /// turns a success into the result, within those retries (a body that breaks off is read
    /// again); a 404 is `None`, every other answer the matching error. `limit` replaces the
    /// client's request time limit.
    pub(crate) async fn read<T, F, Fut>(
        &self,
        repository: &str,
        read: &Read<'_>,
        login: Option<&Credentials>,
        limit: Option<Duration>,
        then: F,
    ) -> Result<Option<T>, RegistryError>
    where
        F: Fn(Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let target = &self.target(repository);
        validate_repository(target, repository)?;
        validate_reference(target, read.reference)?;
        let request = &read.request(repository);
        let url = self.url(
            &format!("v2/{repository}/{}/{}", read.kind, read.reference),
            target,
        )?;
        let build = &|| {
            let builder = self.http.request(read.method.clone(), url.clone());
            let builder = match read.kind {
                "manifests" => builder.header(header::ACCEPT, MANIFEST_ACCEPT),
                _ => builder,
            };
            match limit {
                Some(limit) => builder.timeout(limit),
                None => builder,
            }
        };
        let then = &then;
        self.with_read_retries(repository, || async move {
            let (response, authorization) = self
                .send_authorized(repository, target, request, Access::Pull, login, build)
                .await?;
            let status = response.status();
            match status {
                s if s.is_success() => then(response).await.map(Some),
                StatusCode::NOT_FOUND => Ok(None),
                StatusCode::UNAUTHORIZED => Err(self.unauthorized(
                    target,
                    request.clone(),
                    response.headers(),
                    login,
                    &authorization,
                    Right::Pull,
                )),
                StatusCode::FORBIDDEN => {
                    let detail = self.body_summary(response, &[]).await;
                    let kind = ErrorKind::Denied {
                        status: status.as_u16(),
                    };
                    Err(RegistryError::new(kind, target)
                        .at(request)
                        .with_detail(detail))
                }
                _ => Err(self
                    .unexpected(target, request, response, login, Some(&authorization))
                    .await),
            }
        })
        .await
    }

    /// Forgets the cached authorisation for `repository` (every credential), and the
    /// endpoint's cached challenge; call it when a push fails as unauthorized or denied.
    pub fn invalidate(&self, repository: &str) {
        let mut cache = self.lock();
        cache.invalidate_repository(repository);
        cache.drop_ping();
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain data: a panic elsewhere cannot leave it half-updated in a way
        // that matters, so a poisoned lock is used as is.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn target(&self, repository: &str) -> Target {
        Target {
            registry: self.key.clone(),
            repository: Some(repository.to_owned()),
        }
    }

    fn access_key(&self, repository: &str, login: Option<&Credentials>) -> AccessKey {
        match login {
            Some(l) => AccessKey {
                repository: repository.to_owned(),
                username: l.username.clone(),
                credential: self
                    .hasher
                    .hash_one((&l.username, l.password.expose_secret())),
            },
            None => AccessKey {
                repository: repository.to_owned(),
                username: String::new(),
                credential: 0,
            },
        }
    }

    fn url(&self, path: &str, target: &Target) -> Result<Url, RegistryError> {
        self.base.join(path).map_err(|e| {
            RegistryError::new(ErrorKind::InvalidEndpoint, target)
                .with_detail(format!("cannot build the URL for {path}: {e}"))
        })
    }

    async fn send(
        &self,
        target: &Target,
        request: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = builder.send().await;
        if let Some(metrics) = &self.request_metrics {
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            metrics.record(&self.key, status);
        }
        sent.map_err(|e| from_transport(target, request, e, self.timeout))
    }
}

/// The refusal when a token's `access` claim does not grant `push` on `repository`: the same
/// errors the upload probe gives for a 401 with such a token.
fn claims_refusal(
    target: &Target,
    repository: &str,
    login: Option<&Credentials>,
    realm: &str,
) -> RegistryError {
    let request = format!("token request to {realm}");
    match login {
        None => RegistryError::new(ErrorKind::CredentialsMissing { scheme: "Bearer" }, target)
            .at(request),
        Some(l) => RegistryError::new(
            ErrorKind::InsufficientScope {
                username: l.username.clone(),
                right: Right::Push,
            },
            target,
        )
        .at(request)
        .with_detail(format!(
            "the token service granted no push right on {repository} (the token's access claim)"
        )),
    }
}

/// A read of the registry API: `METHOD /v2/<repository>/<kind>/<reference>`.
#[derive(Debug)]
pub(crate) struct Read<'a> {
    method: Method,
    /// `manifests` or `blobs`.
    kind: &'static str,
    /// A tag or digest.
    reference: &'a str,
}

impl<'a> Read<'a> {
    /// `method` of `kind` (`manifests`, `blobs`) `reference`.
    pub(crate) fn new(method: Method, kind: &'static str, reference: &'a str) -> Self {
        Self {
            method,
            kind,
            reference,
        }
    }

    /// How the read is named in errors: `HEAD /v2/<repository>/manifests/<reference>`.
    pub(crate) fn request(&self, repository: &str) -> String {
        format!(
            "{} /v2/{repository}/{}/{}",
            self.method, self.kind, self.reference
        )
    }
}

/// Redirects: at most 5, and never from https to http.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("refusing a redirect from https to http")
        } else if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// The non-empty `Docker-Content-Digest` of an answer.
fn content_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
}

fn www_authenticate(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

fn sensitive(text: &str) -> Result<HeaderValue, ()> {
    let mut value = HeaderValue::from_str(text).map_err(|_| ())?;
    value.set_sensitive(true);
    Ok(value)
}

async fn read_body(mut response: Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
