//! The Docker daemon stages: find the source image, tag it, push it, untag it.
//!
//! One [`Daemon`] (one bollard client, one connection pool) serves every job of a worker.
//! What bollard gets wrong is mended here:
//!
//! - bollard encodes `X-Registry-Auth` with standard base64, Docker decodes base64url: a
//!   password whose auth JSON encodes to `+` or `/` is garbled and the push runs anonymously.
//!   A request modifier re-encodes the header ([`reencode_registry_auth`]).
//! - A push answers HTTP 200 and reports failure inside the stream; the whole stream is
//!   consumed and every error item is classified ([`classify_push_error`]).
//! - The stream carries no digest field; it is read from the final status line
//!   (`<tag>: digest: sha256:... size: N`, [`parse_digest_line`]), and the registry has the
//!   last word anyway (the verify stage).
//! - bollard 0.21.1 can end a successful stream with a spurious "bytes remaining on stream"
//!   decode error; once the digest line was seen, that error is not a failure.
//! - bollard drops the layer id of progress items, so upload progress is summed per distinct
//!   layer size: an approximation, good for a progress bar, not for accounting.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    ListImagesOptions, PushImageOptions, RemoveImageOptions, TagImageOptions,
};
use futures_util::StreamExt;
use pushfleet_shared::reference::validate_digest;
use pushfleet_shared::{ErrorCode, ImageRef};
use secrecy::ExposeSecret;

use crate::config::DockerEndpoint;
use crate::credentials::Credentials;
use crate::failure::Coded;

/// How long a daemon request may take before its response headers arrive (the push body
/// stream is bounded by the job's own timeout, not by this).
const REQUEST_TIMEOUT_S: u64 = 120;
/// The header the daemon reads registry credentials from.
const REGISTRY_AUTH_HEADER: &str = "X-Registry-Auth";

/// A failure of a daemon stage.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `docker.host` is not a usable address.
    #[error("docker.host {host:?} is not usable: {reason}")]
    BadHost {
        /// The configured host.
        host: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The daemon did not answer or failed internally.
    #[error("the Docker daemon is unavailable during {operation}: {detail}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// No image under the exact source reference.
    #[error("no image {reference} in the Docker daemon")]
    SourceMissing {
        /// The reference as the daemon reads it.
        reference: String,
        /// The tags that exist for the same repository (maybe empty).
        local_tags: Vec<String>,
    },
    /// The daemon refused to tag.
    #[error("tagging {source_id} as {target} failed: {detail}")]
    Tag {
        /// The image id.
        source_id: String,
        /// The target reference.
        target: String,
        /// The daemon's words.
        detail: String,
    },
    /// The push failed inside the stream.
    #[error("pushing {target} failed: {detail}")]
    Push {
        /// The reference pushed.
        target: String,
        /// The daemon's words.
        detail: String,
        /// The classified code.
        code: ErrorCode,
    },
    /// The push stream ended without reporting a digest.
    #[error("pushing {target} ended without a digest")]
    NoDigest {
        /// The reference pushed.
        target: String,
    },
}

impl Coded for DaemonError {
    fn code(&self) -> ErrorCode {
        match self {
            DaemonError::BadHost { .. } | DaemonError::Unavailable { .. } => {
                ErrorCode::DaemonUnavailable
            }
            DaemonError::SourceMissing { .. } => ErrorCode::SourceImageMissing,
            DaemonError::Tag { .. } | DaemonError::NoDigest { .. } => ErrorCode::PushFailed,
            DaemonError::Push { code, .. } => *code,
        }
    }

    fn hint(&self) -> String {
        match self {
            DaemonError::SourceMissing {
                reference,
                local_tags,
            } if !local_tags.is_empty() => {
                format!(
                    "{reference} is not in the daemon, but these tags of its repository are: {}; \
                     did the job name the wrong tag?",
                    local_tags.join(", ")
                )
            }
            DaemonError::SourceMissing { reference, .. } => format!(
                "{reference} is not in the daemon and no other tag of its repository is: \
                 build or load the image on this worker's daemon first"
            ),
            other => other.code().default_hint().to_owned(),
        }
    }
}

/// The source image as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    /// The image id (`sha256:...`).
    pub id: String,
    /// `<name>@sha256:...` entries: the manifests this image already has in registries.
    pub repo_digests: Vec<String>,
}

/// What a finished push reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The manifest digest.
    pub digest: String,
    /// The manifest size in bytes.
    pub size: u64,
    /// Bytes uploaded, summed over the layers seen (approximate, see the module doc).
    pub bytes_uploaded: u64,
}

/// Upload progress during a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushProgress {
    /// Bytes uploaded so far.
    pub bytes_done: u64,
    /// Bytes of the layers seen so far.
    pub bytes_total: u64,
}

/// One Docker daemon client for the whole worker.
#[derive(Debug, Clone)]
pub struct Daemon {
    docker: Docker,
}

impl Daemon {
    /// Connects (lazily) to `host`: `unix:///path.sock`, `tcp://host:port` or `http://host:port`.
    pub fn connect(host: &str) -> Result<Self, DaemonError> {
        let bad = |reason: String| DaemonError::BadHost {
            host: host.to_owned(),
            reason,
        };
        let docker = match DockerEndpoint::parse(host).map_err(|e| bad(e.to_string()))? {
            DockerEndpoint::Unix(path) => Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT_S,
                bollard::API_DEFAULT_VERSION,
            ),
            DockerEndpoint::Http(url) => {
                Docker::connect_with_http(&url, REQUEST_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        let docker = docker.with_request_modifier(|mut req| {
            let fixed = req
                .headers()
                .get(REGISTRY_AUTH_HEADER)
                .and_then(|value| value.to_str().ok())
                .and_then(reencode_registry_auth)
                .and_then(|fixed| http::HeaderValue::from_str(&fixed).ok());
            if let Some(v) = fixed {
                req.headers_mut().insert(REGISTRY_AUTH_HEADER, v);
            }
            req
        });
        Ok(Self { docker })
    }

    /// The bollard client, for callers that need another endpoint (tests, benchmarks).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Checks that the daemon answers.
    pub async fn ping(&self) -> Result<(), DaemonError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("ping", &e))
    }

    /// Finds the image under exactly `source` (never an id prefix, never another tag). When it
    /// is missing, the error lists the tags its repository does have.
    pub async fn resolve_source(&self, source: &ImageRef) -> Result<SourceImage, DaemonError> {
        let name = daemon_name(source);
        match self.docker.inspect_image(&name).await {
            Ok(image) => {
                let tags = image.repo_tags.unwrap_or_default();
                let digests = image.repo_digests.unwrap_or_default();
                // The daemon also matches image-id prefixes: accept only an exact name.
                let exact = match source.digest() {
                    Some(_) => digests.iter().any(|d| same_image(d, source)),
                    None => tags.iter().any(|t| same_image(t, source)),
                };
                match (exact, image.id) {
                    (true, Some(id)) => Ok(SourceImage {
                        id,
                        repo_digests: digests,
                    }),
                    _ => Err(self.missing(source, name).await),
                }
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(self.missing(source, name).await),
            Err(e) => Err(unavailable("image inspect", &e)),
        }
    }

    async fn missing(&self, source: &ImageRef, mut reference: String) -> DaemonError {
        if source.tag().is_none() && source.digest().is_none() {
            // Say what Docker looked for: a bare name means `:latest` (seed 000).
            reference.push_str(":latest");
        }
        let repo = familiar_repository(source);
        let filters = HashMap::from([("reference".to_owned(), vec![repo.clone()])]);
        let options = ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut local_tags: Vec<String> = match self.docker.list_images(Some(options)).await {
            Ok(images) => images
                .into_iter()
                .flat_map(|i| i.repo_tags)
                .filter_map(|t| {
                    let parsed = ImageRef::parse(&t).ok()?;
                    (parsed.registry() == source.registry()
                        && parsed.repository() == source.repository())
                    .then(|| parsed.tag().map(str::to_owned))
                    .flatten()
                })
                .collect(),
            // The listing only improves the hint; the missing image is the error.
            Err(_) => Vec::new(),
        };
        local_tags.sort();
        local_tags.dedup();
        DaemonError::SourceMissing {
            reference,
            local_tags,
        }
    }

    /// Tags image `id` as exactly `target`.
    pub async fn tag(&self, id: &str, target: &ImageRef) -> Result<(), DaemonError> {
        let options = TagImageOptions {
            repo: Some(target.name()),
            tag: Some(target.tag_or_latest().to_owned()),
        };
        self.docker
            .tag_image(id, Some(options))
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError { message, .. } => DaemonError::Tag {
                    source_id: id.to_owned(),
                    target: target.to_string(),
                    detail: message,
                },
                other => unavailable("image tag", &other),
            })
    }

    /// Pushes `target` (already tagged) with `login`, calling `on_progress` as layers upload.
    /// Consumes the whole stream; returns the digest the daemon reported.
    pub async fn push(
        &self,
        target: &ImageRef,
        login: Option<&Credentials>,
        mut on_progress: impl FnMut(PushProgress),
    ) -> Result<PushOutcome, DaemonError> {
        let options = PushImageOptions {
            tag: Some(target.tag_or_latest().to_owned()),
            ..Default::default()
        };
        let credentials = login.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.expose_secret().to_owned()),
            serveraddress: Some(target.registry().to_owned()),
            ..Default::default()
        });
        let mut stream = self
            .docker
            .push_image(&target.name(), Some(options), credentials);
        let mut layers = LayerProgress::default();
        let mut digest: Option<(String, u64)> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(found) = info.status.as_deref().and_then(parse_digest_line) {
                        digest = Some(found);
                    }
                    if let Some(detail) = info.progress_detail
                        && layers.update(detail.current, detail.total)
                    {
                        on_progress(layers.snapshot());
                    }
                }
                Err(BollardError::DockerStreamError { error }) => {
                    return Err(DaemonError::Push {
                        target: target.to_string(),
                        code: classify_push_error(&error),
                        detail: error,
                    });
                }
                // bollard #560: a decode error after the digest line is not a failure.
                Err(_) if digest.is_some() => break,
                Err(e) => return Err(unavailable("image push", &e)),
            }
        }
        let (digest, size) = digest.ok_or_else(|| DaemonError::NoDigest {
            target: target.to_string(),
        })?;
        Ok(PushOutcome {
            digest,
            size,
            bytes_uploaded: layers.snapshot().bytes_done,
        })
    }

    /// Removes the tag `target` from the daemon (never the image's layers while another tag
    /// holds them; `noprune` keeps untagged parents).
    pub async fn untag(&self, target: &ImageRef) -> Result<(), DaemonError> {
        let options = RemoveImageOptions {
            force: false,
            noprune: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_image(
                &format!("{}:{}", target.name(), target.tag_or_latest()),
                Some(options),
                None,
            )
            .await
        {
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(unavailable("image remove", &e)),
        }
    }
}

fn unavailable(operation: &'static str, e: &BollardError) -> DaemonError {
    DaemonError::Unavailable {
        operation,
        detail: e.to_string(),
    }
}

/// The name the daemon knows `r` by: Docker's familiar form (`myapp:0722`,
/// `127.0.0.1:5001/production/myapp:0722`, `myapp@sha256:...`).
fn daemon_name(r: &ImageRef) -> String {
    r.familiar()
}

/// Docker's familiar repository name, without tag: `myapp`, `user/app`,
/// `127.0.0.1:5001/production/myapp` (what `docker images --filter reference=` matches).
fn familiar_repository(r: &ImageRef) -> String {
    if r.is_docker_hub() {
        r.repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_owned()
    } else {
        r.name()
    }
}

/// Whether a `RepoTags`/`RepoDigests` entry names exactly `source`.
fn same_image(entry: &str, source: &ImageRef) -> bool {
    ImageRef::parse(entry).is_ok_and(|e| {
        e.registry() == source.registry()
            && e.repository() == source.repository()
            && match source.digest() {
                Some(d) => e.digest() == Some(d),
                None => e.tag() == Some(source.tag_or_latest()),
            }
    })
}

/// Re-encodes an `X-Registry-Auth` value from standard base64 (what bollard writes) to
/// base64url (what Docker reads). Returns `None` when the value is not standard base64 (then
/// it is left alone).
pub fn reencode_registry_auth(value: &str) -> Option<String> {
    let raw = STANDARD.decode(value).ok()?;
    Some(URL_SAFE.encode(raw))
}

/// Reads `(digest, size)` from the daemon's final push status,
/// `"0722: digest: sha256:<64 hex> size: 528"`. The digest must be one Docker's grammar accepts
/// ([`validate_digest`]: lowercase hex of the algorithm's length).
pub fn parse_digest_line(status: &str) -> Option<(String, u64)> {
    let (_, rest) = status.split_once(": digest: ")?;
    let (digest, size) = rest.split_once(" size: ")?;
    validate_digest(digest, digest).ok()?;
    Some((digest.to_owned(), size.trim().parse().ok()?))
}

/// Maps the daemon's error text from a push stream to a stable code. The texts are the
/// registry's and dockerd's own (see `docs/errors.md`).
pub fn classify_push_error(message: &str) -> ErrorCode {
    let m = message.to_ascii_lowercase();
    let has = |needle: &str| m.contains(needle);
    if has("x509:") || has("certificate signed by unknown authority") || has("tls: ") {
        ErrorCode::RegistryTlsFailed
    } else if has("toomanyrequests") || has("too many requests") || has("429") {
        ErrorCode::RegistryRateLimited
    } else if has("413") || has("request entity too large") || has("payload too large") {
        ErrorCode::PayloadTooLarge
    } else if has("blob upload invalid") || has("blob upload unknown") {
        ErrorCode::BlobUploadInvalid
    } else if has("configured as immutable")
        || has("immutable tag")
        || has("repository is immutable")
    {
        ErrorCode::TagImmutable
    } else if has("insufficient_scope") {
        ErrorCode::RegistryInsufficientScope
    } else if has("denied:") || has("requested access to the resource is denied") {
        ErrorCode::RegistryDenied
    } else if has("unauthorized") || has("authentication required") || has("no basic auth") {
        ErrorCode::RegistryAuthFailed
    } else if has("connection refused")
        || has("no such host")
        || has("i/o timeout")
        || has("context deadline exceeded")
        || has("connection reset")
        || has("eof")
        || has("503 service unavailable")
        || has("502 bad gateway")
    {
        ErrorCode::RegistryUnreachable
    } else if has("does not exist locally") || has("no such image") {
        ErrorCode::SourceImageMissing
    } else {
        ErrorCode::PushFailed
    }
}

/// Upload progress keyed by layer size (bollard drops the layer id; see the module doc).
#[derive(Debug, Default)]
struct LayerProgress {
    current_by_total: HashMap<i64, i64>,
}

impl LayerProgress {
    /// Records one progress item; returns whether the sums changed.
    fn update(&mut self, current: Option<i64>, total: Option<i64>) -> bool {
        let (Some(current), Some(total)) = (current, total) else {
            return false;
        };
        if total <= 0 || current < 0 {
            return false;
        }
        let slot = self.current_by_total.entry(total).or_insert(0);
        let next = current.min(total);
        if next > *slot {
            *slot = next;
            true
        } else {
            false
        }
    }

    fn snapshot(&self) -> PushProgress {
        let sum = |f: fn((&i64, &i64)) -> i64| -> u64 {
            self.current_by_total
                .iter()
                .map(f)
                .sum::<i64>()
                .try_into()
                .unwrap_or(0)
        };
        PushProgress {
            bytes_done: sum(|(_, c)| *c),
            bytes_total: sum(|(t, _)| *t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_is_reencoded_as_base64url() {
        // A JSON whose standard base64 holds both '+' and '/'.
        let json = r#"{"username":"u","password":">>>>>>??????"}"#;
        let standard = STANDARD.encode(json);
        assert!(
            standard.contains('+') && standard.contains('/'),
            "{standard}"
        );
        let fixed = reencode_registry_auth(&standard).expect("decodes");
        assert!(!fixed.contains('+') && !fixed.contains('/'), "{fixed}");
        assert_eq!(URL_SAFE.decode(&fixed).expect("base64url"), json.as_bytes());
        assert_eq!(reencode_registry_auth("not base64 at all!"), None);
    }

    #[test]
    fn digest_line_is_parsed() {
        let hex = "81e056bbb515225f27509014dace8b6b56948e411ca995ab1ee4d527a5ceca64";
        assert_eq!(
            parse_digest_line(&format!("0722: digest: sha256:{hex} size: 4916")),
            Some((format!("sha256:{hex}"), 4916))
        );
        assert_eq!(parse_digest_line("Pushed"), None);
        assert_eq!(parse_digest_line("v1: digest: sha256:abc size: 1"), None);
        let upper = hex.to_uppercase();
        assert_eq!(
            parse_digest_line(&format!("v1: digest: sha256:{upper} size: 1")),
            None
        );
        assert_eq!(
            parse_digest_line(&format!("v1: digest: sha256:{hex} size: x")),
            None
        );
    }

    #[test]
    fn push_errors_are_classified() {
        let cases = [
            (
                "denied: requested access to the resource is denied",
                ErrorCode::RegistryDenied,
            ),
            (
                "unauthorized: authentication required",
                ErrorCode::RegistryAuthFailed,
            ),
            (
                "unauthorized: invalid username or password",
                ErrorCode::RegistryAuthFailed,
            ),
            ("blob upload invalid", ErrorCode::BlobUploadInvalid),
            (
                "blob upload unknown to registry",
                ErrorCode::BlobUploadInvalid,
            ),
            (
                "unknown: unsupported status 413 Request Entity Too Large",
                ErrorCode::PayloadTooLarge,
            ),
            (
                "Get \"https://r:5443/v2/\": x509: certificate signed by unknown authority",
                ErrorCode::RegistryTlsFailed,
            ),
            (
                "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                ErrorCode::RegistryUnreachable,
            ),
            ("context deadline exceeded", ErrorCode::RegistryUnreachable),
            ("toomanyrequests: slow down", ErrorCode::RegistryRateLimited),
            (
                "An image does not exist locally with the tag: x",
                ErrorCode::SourceImageMissing,
            ),
            ("something else entirely", ErrorCode::PushFailed),
            (
                "unknown: Failed to process request due to 'team-a/app:1.0' configured as immutable.",
                ErrorCode::TagImmutable,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(classify_push_error(text), code, "{text}");
        }
    }

    #[test]
    fn layer_progress_sums_per_layer_and_never_goes_back() {
        let mut p = LayerProgress::default();
        assert!(p.update(Some(10), Some(100)));
        assert!(p.update(Some(5), Some(50)));
        assert!(!p.update(Some(8), Some(100)), "progress never goes back");
        assert!(p.update(Some(100), Some(100)));
        assert!(!p.update(None, Some(10)));
        assert!(!p.update(Some(1), Some(0)));
        assert_eq!(
            p.snapshot(),
            PushProgress {
                bytes_done: 105,
                bytes_total: 150
            }
        );
    }

    #[test]
    fn missing_source_hint_names_the_local_tags() {
        let e = DaemonError::SourceMissing {
            reference: "myapp:latest".into(),
            local_tags: vec!["0722".into()],
        };
        assert_eq!(e.code(), ErrorCode::SourceImageMissing);
        assert!(e.hint().contains("0722"), "{}", e.hint());
        assert!(!e.code().retryable());
    }

    #[test]
    fn bad_hosts_are_refused() {
        let e = Daemon::connect("ftp://x").expect_err("refused");
        assert_eq!(e.code(), ErrorCode::DaemonUnavailable);
    }
}
