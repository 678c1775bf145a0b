//! [`RegistryError`]: every way talking to a registry can fail, each with a stable
//! [`ErrorCode`], and the helpers that classify transport errors and HTTP answers.
//!
//! No variant holds a credential: the password and tokens never enter an error, and text the
//! registry sends back (error bodies) is scrubbed of them before it is kept, in case a server
//! echoes what it was given.

use std::fmt;
use std::time::Duration;

use pushfleet_shared::ErrorCode;
use time::OffsetDateTime;

use crate::failure::Coded;

/// Which registry (catalogue key) and repository an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registry's key in the catalogue.
    pub registry: String,
    /// The repository, when the request was about one.
    pub repository: Option<String>,
}

impl Target {
    /// A boxed copy (errors box their target to stay small).
    pub(crate) fn boxed(&self) -> Box<Target> {
        Box::new(self.clone())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registry `{}`", self.registry)?;
        if let Some(repository) = &self.repository {
            write!(f, ", repository `{repository}`")?;
        }
        Ok(())
    }
}

/// A failure of a registry request. `Display` names the registry, the repository, the request
/// and what happened; it never contains a password or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The endpoint cannot be used (bad URL, unreadable CA bundle): a configuration error.
    #[error("{target}: invalid registry endpoint: {reason}")]
    InvalidEndpoint {
        /// Registry and repository.
        target: Box<Target>,
        /// What is wrong.
        reason: String,
    },
    /// A repository name or tag that cannot be put into a registry URL.
    #[error("{target}: invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Registry and repository.
        target: Box<Target>,
        /// `repository name` or `tag or digest`.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No answer: connection refused, DNS, timeout, a dropped connection, or a 5xx.
    #[error("{target}: {request}: registry unreachable: {detail}")]
    Unreachable {
        /// Registry and repository.
        target: Box<Target>,
        /// The request, e.g. `GET /v2/`.
        request: String,
        /// What happened.
        detail: String,
        /// The transport error, when there was one.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The server's certificate did not verify (unknown CA, wrong name, expired).
    #[error("{target}: {request}: TLS certificate verification failed: {detail}")]
    TlsFailed {
        /// Registry and repository.
        target: Box<Target>,
        /// The request.
        request: String,
        /// What rustls reported.
        detail: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry demands authentication and no credentials were given.
    #[error(
        "{target}: {request}: the registry requires authentication ({scheme}) but no credentials are configured"
    )]
    CredentialsMissing {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// `Basic` or `Bearer`.
        scheme: &'static str,
    },
    /// The registry (Basic) or its token server (Bearer) refused the credentials.
    #[error("{target}: {request}: the credentials of user `{username}` were refused: {detail}")]
    AuthFailed {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// The user name (not a secret).
        username: String,
        /// What the server said.
        detail: String,
    },
    /// Valid credentials without the right to `action` the repository (401 after a
    /// successful login, typically `error="insufficient_scope"`).
    #[error(
        "{target}: {request}: user `{username}` has no {action} rights on the repository: {detail}"
    )]
    InsufficientScope {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// The user name.
        username: String,
        /// The right that is missing.
        action: Right,
        /// What the server said.
        detail: String,
    },
    /// 403, 404 or 405 on a request that needs push rights.
    #[error("{target}: {request}: access denied (HTTP {status}): {detail}")]
    Denied {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// The HTTP status.
        status: u16,
        /// What the server said.
        detail: String,
    },
    /// The registry refused to write a tag its policy keeps immutable (Harbor: HTTP 412
    /// `PRECONDITION` "... configured as immutable").
    #[error(
        "{target}: {request}: the tag `{tag}` is immutable in this registry (HTTP {status}): {detail}"
    )]
    TagImmutable {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// The tag.
        tag: String,
        /// The HTTP status.
        status: u16,
        /// What the server said.
        detail: String,
    },
    /// 429: the registry or its token server asks the client to slow down.
    #[error("{target}: {request}: rate limited (HTTP 429){}", retry_after_text(.retry_after))]
    RateLimited {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// How long the server asked to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The answer does not follow the registry API: a 401 without a usable challenge, `/v2/`
    /// answering 404, a token response without a token, an unexpected status.
    #[error("{target}: {request}: unexpected answer: {detail}")]
    Protocol {
        /// Registry and repository.
        target: Box<Target>,
        /// The request.
        request: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The registry refused a blob upload (`BLOB_UPLOAD_INVALID`, `BLOB_UPLOAD_UNKNOWN`,
    /// `DIGEST_INVALID`, `SIZE_INVALID`: HTTP 400 or 404 on the upload).
    #[error("{target}: {request}: blob upload refused: {detail}")]
    BlobUploadInvalid {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// What the server said.
        detail: String,
    },
    /// HTTP 413: the registry or a proxy in front of it refused a body as too large.
    #[error("{target}: {request}: refused as too large (HTTP 413): {detail}")]
    PayloadTooLarge {
        /// Registry and repository.
        target: Box<Target>,
        /// The request that was refused.
        request: String,
        /// What the server said.
        detail: String,
    },
    /// An `https` registry sent an `http` token realm: credentials would travel in clear text.
    #[error(
        "{target}: refusing to send credentials to token realm {realm}: plain http while the registry uses https"
    )]
    InsecureRealm {
        /// Registry and repository.
        target: Box<Target>,
        /// The realm URL (holds no secret).
        realm: String,
    },
}

/// A right on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Read manifests and blobs.
    Pull,
    /// Upload blobs and manifests.
    Push,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pull => "pull",
            Self::Push => "push",
        })
    }
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {} s", d.as_secs()),
        None => String::new(),
    }
}

impl RegistryError {
    /// How long the registry asked to wait before trying again (HTTP 429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later can succeed (the code's retryable flag).
    pub fn is_retryable(&self) -> bool {
        self.code().retryable()
    }

    /// The registry and repository the error is about.
    pub fn target(&self) -> &Target {
        match self {
            Self::InvalidEndpoint { target, .. }
            | Self::InvalidName { target, .. }
            | Self::Unreachable { target, .. }
            | Self::TlsFailed { target, .. }
            | Self::CredentialsMissing { target, .. }
            | Self::AuthFailed { target, .. }
            | Self::InsufficientScope { target, .. }
            | Self::Denied { target, .. }
            | Self::TagImmutable { target, .. }
            | Self::RateLimited { target, .. }
            | Self::Protocol { target, .. }
            | Self::BlobUploadInvalid { target, .. }
            | Self::PayloadTooLarge { target, .. }
            | Self::InsecureRealm { target, .. } => target,
        }
    }
}

impl RegistryError {
    /// Whether asking again at once may well succeed: a 5xx or a dropped connection. Not a
    /// timeout (asking again would wait as long again), not a refusal or a rate limit.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { source, .. } => !source.as_ref().is_some_and(|e| e.is_timeout()),
            _ => false,
        }
    }
}

impl Coded for RegistryError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidEndpoint { .. } | Self::Protocol { .. } | Self::InsecureRealm { .. } => {
                ErrorCode::PushFailed
            }
            Self::InvalidName { .. } => ErrorCode::InvalidReference,
            Self::Unreachable { .. } => ErrorCode::RegistryUnreachable,
            Self::TlsFailed { .. } => ErrorCode::RegistryTlsFailed,
            Self::CredentialsMissing { .. } => ErrorCode::RegistryCredentialsMissing,
            Self::AuthFailed { .. } => ErrorCode::RegistryAuthFailed,
            Self::InsufficientScope { .. } => ErrorCode::RegistryInsufficientScope,
            Self::Denied { .. } => ErrorCode::RegistryDenied,
            Self::TagImmutable { .. } => ErrorCode::TagImmutable,
            Self::RateLimited { .. } => ErrorCode::RegistryRateLimited,
            Self::BlobUploadInvalid { .. } => ErrorCode::BlobUploadInvalid,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        RegistryError::retry_after(self)
    }

    fn hint(&self) -> String {
        match self {
            Self::InvalidEndpoint { .. } => {
                "fix this registry's url or ca_file in the worker configuration".to_owned()
            }
            Self::Protocol { .. } => "the server did not answer like a Docker registry (API v2): \
                 check that the registry URL in the catalogue points at the registry itself"
                .to_owned(),
            Self::InsecureRealm { .. } => "the registry's token service must use https too: fix \
                 the registry's auth.token.realm (or the proxy in front of it)"
                .to_owned(),
            Self::Denied { status: 404, .. } => "the registry does not know this repository's \
                 project or namespace (NAME_UNKNOWN): create the project (e.g. in Harbor) or fix \
                 target.repository"
                .to_owned(),
            Self::Denied { status: 405, .. } => "the registry does not accept pushes (read-only \
                 mode or a pull-through cache): push to a writable registry"
                .to_owned(),
            Self::InsufficientScope {
                action: Right::Pull,
                ..
            } => "the account may not read this \
                 repository: grant it pull rights"
                .to_owned(),
            Self::AuthFailed { request, .. } if request.contains("token") => "the registry's \
                 token service refused the username/password: check the credentials configured \
                 for this registry"
                .to_owned(),
            _ => self.code().default_hint().to_owned(),
        }
    }
}

/// Turns a transport error (no HTTP answer) into [`RegistryError::TlsFailed`] or
/// [`RegistryError::Unreachable`]. The URL is dropped from the error (the request names it).
pub(crate) fn from_transport(
    target: &Target,
    request: &str,
    err: reqwest::Error,
    timeout: Duration,
) -> RegistryError {
    let err = err.without_url();
    let causes = cause_chain(&err);
    if is_tls_verification_failure(&causes) {
        let detail = causes.last().cloned().unwrap_or_default();
        return RegistryError::TlsFailed {
            target: target.boxed(),
            request: request.to_owned(),
            detail,
            source: err,
        };
    }
    let root = causes.last().cloned().unwrap_or_default();
    let detail = if err.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else if err.is_connect() {
        format!("cannot connect: {root}")
    } else {
        root
    };
    RegistryError::Unreachable {
        target: target.boxed(),
        request: request.to_owned(),
        detail,
        source: Some(err),
    }
}

/// The `Display` of an error and each of its causes, outermost first.
pub(crate) fn cause_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        out.push(cause.to_string());
        source = cause.source();
    }
    out
}

/// Whether a transport error's causes say the peer certificate failed verification.
///
/// rustls 0.23 reports `invalid peer certificate: UnknownIssuer`, `invalid peer certificate:
/// certificate not valid for name "x"; certificate is only valid for ..`,
/// `invalid peer certificate: certificate expired: ..` (also `NotValidForName`, `Expired`,
/// `BadSignature` in their `Debug` forms), wrapped by hyper-util and reqwest as `client error
/// (Connect)` / `error sending request`.
pub(crate) fn is_tls_verification_failure(causes: &[String]) -> bool {
    const MARKERS: [&str; 6] = [
        "invalid peer certificate",
        "InvalidCertificate",
        "UnknownIssuer",
        "NotValidForName",
        "certificate not valid",
        "certificate expired",
    ];
    causes.iter().any(|c| MARKERS.iter().any(|m| c.contains(m)))
}

/// The delay asked by a `Retry-After` value: delta-seconds or an HTTP date (the three forms
/// RFC 9110 §5.6.7 makes recipients accept, parsed by `httpdate`); a date in the past gives
/// zero. `None` when unparsable.
pub(crate) fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
    let delta = at - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        delta.unsigned_abs()
    })
}

/// Replaces every secret (of 3 characters or more) in `text` by `[REDACTED]`.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if secret.chars().count() >= 3 {
            out = out.replace(secret, "[REDACTED]");
        }
    }
    out
}

/// A short, printable summary of a registry error body: the `errors[].code: message` pairs of
/// the registry API format, else the start of the text, else `HTTP <status>`.
pub(crate) fn summarize_body(status: u16, body: &[u8], secrets: &[&str]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ApiError>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    /// The longest summary, in bytes.
    const MAX: usize = 300;
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let text = scrub(&text, secrets);
    let text = pushfleet_shared::text::truncate(&text, MAX);
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn target() -> Target {
        Target {
            registry: "harbor".into(),
            repository: Some("production/myapp".into()),
        }
    }

    #[test]
    fn retry_after_seconds() {
        let now = datetime!(2026-01-01 00:00:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = datetime!(1994-11-06 08:49:00 UTC);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        // The obsolete forms recipients must still accept (RFC 850, asctime).
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(Duration::from_secs(37))
        );
        // In the past: no wait.
        let later = datetime!(1994-11-06 09:00:00 UTC);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage() {
        let now = datetime!(2026-01-01 00:00:00 UTC);
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "2026-01-01",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn tls_markers() {
        let yes = [
            "invalid peer certificate: UnknownIssuer",
            "invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for y",
            "InvalidCertificate(NotValidForName)",
        ];
        for text in yes {
            assert!(is_tls_verification_failure(&[
                "client error (Connect)".into(),
                text.into()
            ]));
        }
        assert!(!is_tls_verification_failure(&[
            "client error (Connect)".into(),
            "tcp connect error: Connection refused (os error 111)".into()
        ]));
    }

    #[test]
    fn body_summary_uses_registry_errors_and_scrubs_secrets() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password s3cr3t!","detail":null}]}"#;
        assert_eq!(
            summarize_body(401, body, &["s3cr3t!"]),
            "HTTP 401: UNAUTHORIZED: bad password [REDACTED]"
        );
        assert_eq!(summarize_body(502, b"", &[]), "HTTP 502");
        assert_eq!(
            summarize_body(502, b"<h1>Bad\nGateway</h1>", &[]),
            "HTTP 502: <h1>Bad Gateway</h1>"
        );
        let long = "x".repeat(1000);
        assert!(summarize_body(500, long.as_bytes(), &[]).chars().count() < 320);
        // Short secrets are not scrubbed (they would blank out ordinary words).
        assert_eq!(scrub("a b", &["a"]), "a b");
    }

    #[test]
    fn codes_and_retryable() {
        let t = target();
        let rate = RegistryError::RateLimited {
            target: t.boxed(),
            request: "POST /v2/production/myapp/blobs/uploads/".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(rate.code(), ErrorCode::RegistryRateLimited);
        assert_eq!(rate.retry_after(), Some(Duration::from_secs(30)));
        assert!(rate.is_retryable());
        assert_eq!(
            rate.to_string(),
            "registry `harbor`, repository `production/myapp`: POST /v2/production/myapp/blobs/uploads/: rate limited (HTTP 429), retry after 30 s"
        );
        let denied = RegistryError::Denied {
            target: t.boxed(),
            request: "POST".into(),
            status: 404,
            detail: "HTTP 404: NAME_UNKNOWN".into(),
        };
        assert_eq!(denied.code(), ErrorCode::RegistryDenied);
        assert!(denied.hint().contains("project"));
        assert!(!denied.is_retryable());
        let proto = RegistryError::Protocol {
            target: Box::new(Target {
                registry: "r".into(),
                repository: None,
            }),
            request: "GET /v2/".into(),
            detail: "x".into(),
        };
        assert_eq!(proto.code(), ErrorCode::PushFailed);
        assert_eq!(
            proto.to_string(),
            "registry `r`: GET /v2/: unexpected answer: x"
        );
        assert_eq!(proto.retry_after(), None);
        let unreachable = RegistryError::Unreachable {
            target: t.boxed(),
            request: "GET /v2/".into(),
            detail: "HTTP 503".into(),
            source: None,
        };
        assert!(unreachable.is_retryable());
        assert_eq!(unreachable.code(), ErrorCode::RegistryUnreachable);
    }
}
