//! [`RegistryError`]: one error type for every way talking to a registry can fail. What went
//! wrong is its [`ErrorKind`] (with the data only that kind has); where it went wrong (the
//! registry and repository, the request), what the registry said and the transport error are
//! kept once, beside the kind. Each kind has a stable [`ErrorCode`].
//!
//! No error holds a credential: the password and tokens never enter one, and text the
//! registry sends back (error bodies) is scrubbed of them before it is kept, in case a server
//! echoes what it was given (see `classify.rs`).

use std::fmt;
use std::time::Duration;

use pushfleet_shared::ErrorCode;

use crate::failure::Coded;

/// Which registry (catalogue key) and repository an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registry's key in the catalogue.
    pub registry: String,
    /// The repository, when the request was about one.
    pub repository: Option<String>,
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

/// What went wrong talking to a registry, with the data only that kind of failure has.
/// `Display` is the phrase that stands between the request and the detail in the error's text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The endpoint cannot be used (bad URL, unreadable CA bundle): a configuration error.
    InvalidEndpoint,
    /// A repository name or tag that cannot be put into a registry URL (the detail says why).
    InvalidName {
        /// `repository name` or `tag or digest`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// No answer: connection refused, DNS, timeout, a dropped connection, or a 5xx.
    Unreachable,
    /// The server's certificate did not verify (unknown CA, wrong name, expired).
    TlsFailed,
    /// The registry demands authentication and no credentials were given.
    CredentialsMissing {
        /// `Basic` or `Bearer`.
        scheme: &'static str,
    },
    /// The registry (Basic) or its token server (Bearer) refused the credentials.
    AuthFailed {
        /// The user name (not a secret).
        username: String,
    },
    /// Valid credentials without `right` on the repository (401 after a successful login,
    /// typically `error="insufficient_scope"`).
    InsufficientScope {
        /// The user name.
        username: String,
        /// The right that is missing.
        right: Right,
    },
    /// 403, 404 or 405 on a request that needs the right to it.
    Denied {
        /// The HTTP status.
        status: u16,
    },
    /// The registry refused to write a tag its policy keeps immutable (Harbor: HTTP 412
    /// `PRECONDITION` "... configured as immutable").
    TagImmutable {
        /// The tag.
        tag: String,
        /// The HTTP status.
        status: u16,
    },
    /// 429: the registry or its token server asks the client to slow down.
    RateLimited {
        /// How long the server asked to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The answer does not follow the registry API: a 401 without a usable challenge, `/v2/`
    /// answering 404, a token response without a token, an unexpected status.
    Protocol,
    /// The registry refused a blob upload (`BLOB_UPLOAD_INVALID`, `BLOB_UPLOAD_UNKNOWN`,
    /// `DIGEST_INVALID`, `SIZE_INVALID`: HTTP 400 or 404 on the upload).
    BlobUploadInvalid,
    /// HTTP 413: the registry or a proxy in front of it refused a body as too large.
    PayloadTooLarge,
    /// An `https` registry sent an `http` token realm: credentials would travel in clear text.
    InsecureRealm {
        /// The realm URL (holds no secret).
        realm: String,
    },
}

impl ErrorKind {
    /// The stable error code of this kind of failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidEndpoint | Self::Protocol | Self::InsecureRealm { .. } => {
                ErrorCode::PushFailed
            }
            Self::InvalidName { .. } => ErrorCode::InvalidReference,
            Self::Unreachable => ErrorCode::RegistryUnreachable,
            Self::TlsFailed => ErrorCode::RegistryTlsFailed,
            Self::CredentialsMissing { .. } => ErrorCode::RegistryCredentialsMissing,
            Self::AuthFailed { .. } => ErrorCode::RegistryAuthFailed,
            Self::InsufficientScope { .. } => ErrorCode::RegistryInsufficientScope,
            Self::Denied { .. } => ErrorCode::RegistryDenied,
            Self::TagImmutable { .. } => ErrorCode::TagImmutable,
            Self::RateLimited { .. } => ErrorCode::RegistryRateLimited,
            Self::BlobUploadInvalid => ErrorCode::BlobUploadInvalid,
            Self::PayloadTooLarge => ErrorCode::PayloadTooLarge,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidEndpoint => f.write_str("invalid registry endpoint"),
            Self::InvalidName { what, value } => write!(f, "invalid {what} {value:?}"),
            Self::Unreachable => f.write_str("registry unreachable"),
            Self::TlsFailed => f.write_str("TLS certificate verification failed"),
            Self::CredentialsMissing { scheme } => write!(
                f,
                "the registry requires authentication ({scheme}) but no credentials are configured"
            ),
            Self::AuthFailed { username } => {
                write!(f, "the credentials of user `{username}` were refused")
            }
            Self::InsufficientScope { username, right } => {
                write!(
                    f,
                    "user `{username}` has no {right} rights on the repository"
                )
            }
            Self::Denied { status } => write!(f, "access denied (HTTP {status})"),
            Self::TagImmutable { tag, status } => write!(
                f,
                "the tag `{tag}` is immutable in this registry (HTTP {status})"
            ),
            Self::RateLimited { retry_after } => {
                f.write_str("rate limited (HTTP 429)")?;
                match retry_after {
                    Some(d) => write!(f, ", retry after {} s", d.as_secs()),
                    None => Ok(()),
                }
            }
            Self::Protocol => f.write_str("unexpected answer"),
            Self::BlobUploadInvalid => f.write_str("blob upload refused"),
            Self::PayloadTooLarge => f.write_str("refused as too large (HTTP 413)"),
            Self::InsecureRealm { realm } => write!(
                f,
                "refusing to send credentials to token realm {realm}: plain http while the registry uses https"
            ),
        }
    }
}

/// A failure of a registry request: its [`ErrorKind`], the [`Target`] it is about, the
/// request (e.g. `GET /v2/`) when one was made, the detail (what the registry said, or what
/// happened) and the transport error, if any.
///
/// `Display` reads `<target>: <request>: <kind>: <detail>`, leaving out what is absent; it
/// never contains a password or a token.
#[derive(Debug)]
pub struct RegistryError(Box<Inner>);

/// Everything a [`RegistryError`] holds (boxed: errors are rare and `Result`s stay small).
#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    target: Target,
    request: Option<String>,
    detail: Option<String>,
    source: Option<reqwest::Error>,
}

impl RegistryError {
    /// An error of `kind` about `target`, before any request was made.
    pub(crate) fn new(kind: ErrorKind, target: &Target) -> Self {
        Self(Box::new(Inner {
            kind,
            target: target.clone(),
            request: None,
            detail: None,
            source: None,
        }))
    }

    /// The same error, as the outcome of `request` (e.g. `GET /v2/`).
    pub(crate) fn at(mut self, request: impl Into<String>) -> Self {
        self.0.request = Some(request.into());
        self
    }

    /// The same error with `detail`: what the registry said (already scrubbed of secrets) or
    /// what happened.
    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// The same error caused by `source` (a transport error, its URL already dropped).
    pub(crate) fn with_source(mut self, source: reqwest::Error) -> Self {
        self.0.source = Some(source);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The registry and repository the error is about.
    pub fn target(&self) -> &Target {
        &self.0.target
    }

    /// The request that failed (`GET /v2/`, `token request to ..`), when one was made.
    pub fn request(&self) -> Option<&str> {
        self.0.request.as_deref()
    }

    /// How long the registry asked to wait before trying again (HTTP 429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind() {
            ErrorKind::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later can succeed (the code's retryable flag).
    pub fn is_retryable(&self) -> bool {
        self.code().retryable()
    }

    /// Whether asking again at once may well succeed: a 5xx or a dropped connection. Not a
    /// timeout (asking again would wait as long again), not a refusal or a rate limit.
    pub fn is_transient(&self) -> bool {
        self.kind() == &ErrorKind::Unreachable
            && !self
                .0
                .source
                .as_ref()
                .is_some_and(reqwest::Error::is_timeout)
    }

    /// Whether the answer did not follow the registry API ([`ErrorKind::Protocol`]).
    pub fn is_protocol(&self) -> bool {
        self.kind() == &ErrorKind::Protocol
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = &*self.0;
        write!(f, "{}: ", error.target)?;
        if let Some(request) = &error.request {
            write!(f, "{request}: ")?;
        }
        write!(f, "{}", error.kind)?;
        if let Some(detail) = &error.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Coded for RegistryError {
    fn code(&self) -> ErrorCode {
        self.kind().code()
    }

    fn retry_after(&self) -> Option<Duration> {
        RegistryError::retry_after(self)
    }

    fn hint(&self) -> String {
        let hint = match self.kind() {
            ErrorKind::InvalidEndpoint => {
                "fix this registry's url or ca_file in the worker configuration"
            }
            ErrorKind::Protocol => {
                "the server did not answer like a Docker registry (API v2): check that the \
                 registry URL in the catalogue points at the registry itself"
            }
            ErrorKind::InsecureRealm { .. } => {
                "the registry's token service must use https too: fix the registry's \
                 auth.token.realm (or the proxy in front of it)"
            }
            ErrorKind::Denied { status: 404 } => {
                "the registry does not know this repository's project or namespace \
                 (NAME_UNKNOWN): create the project (e.g. in Harbor) or fix target.repository"
            }
            ErrorKind::Denied { status: 405 } => {
                "the registry does not accept pushes (read-only mode or a pull-through cache): \
                 push to a writable registry"
            }
            ErrorKind::InsufficientScope {
                right: Right::Pull, ..
            } => "the account may not read this repository: grant it pull rights",
            ErrorKind::AuthFailed { .. } if self.request().is_some_and(|r| r.contains("token")) => {
                "the registry's token service refused the username/password: check the \
                 credentials configured for this registry"
            }
            _ => self.code().default_hint(),
        };
        hint.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            registry: "harbor".into(),
            repository: Some("production/myapp".into()),
        }
    }

    #[test]
    fn codes_and_retryable() {
        let t = target();
        let rate = RegistryError::new(
            ErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
            &t,
        )
        .at("POST /v2/production/myapp/blobs/uploads/");
        assert_eq!(rate.code(), ErrorCode::RegistryRateLimited);
        assert_eq!(rate.retry_after(), Some(Duration::from_secs(30)));
        assert!(rate.is_retryable());
        assert_eq!(
            rate.to_string(),
            "registry `harbor`, repository `production/myapp`: POST /v2/production/myapp/blobs/uploads/: rate limited (HTTP 429), retry after 30 s"
        );
        let denied = RegistryError::new(ErrorKind::Denied { status: 404 }, &t)
            .at("POST")
            .with_detail("HTTP 404: NAME_UNKNOWN");
        assert_eq!(denied.code(), ErrorCode::RegistryDenied);
        assert!(denied.hint().contains("project"));
        assert!(!denied.is_retryable());
        let proto = RegistryError::new(
            ErrorKind::Protocol,
            &Target {
                registry: "r".into(),
                repository: None,
            },
        )
        .at("GET /v2/")
        .with_detail("x");
        assert_eq!(proto.code(), ErrorCode::PushFailed);
        assert!(proto.is_protocol());
        assert_eq!(
            proto.to_string(),
            "registry `r`: GET /v2/: unexpected answer: x"
        );
        assert_eq!(proto.retry_after(), None);
        let unreachable = RegistryError::new(ErrorKind::Unreachable, &t)
            .at("GET /v2/")
            .with_detail("HTTP 503");
        assert!(unreachable.is_retryable());
        assert!(unreachable.is_transient());
        assert!(!unreachable.is_protocol());
        assert_eq!(unreachable.code(), ErrorCode::RegistryUnreachable);
    }

    /// Every kind keeps the code and the text it had as a variant of its own.
    #[test]
    fn every_kind_keeps_its_code_and_text() {
        let t = target();
        let user = || "bob".to_owned();
        let cases = [
            (
                RegistryError::new(ErrorKind::InvalidEndpoint, &t).with_detail("bad url"),
                ErrorCode::PushFailed,
                "invalid registry endpoint: bad url",
            ),
            (
                RegistryError::new(
                    ErrorKind::InvalidName {
                        what: "tag or digest",
                        value: "a?b".into(),
                    },
                    &t,
                )
                .with_detail("not allowed"),
                ErrorCode::InvalidReference,
                "invalid tag or digest \"a?b\": not allowed",
            ),
            (
                RegistryError::new(ErrorKind::TlsFailed, &t)
                    .at("GET /v2/")
                    .with_detail("UnknownIssuer"),
                ErrorCode::RegistryTlsFailed,
                "GET /v2/: TLS certificate verification failed: UnknownIssuer",
            ),
            (
                RegistryError::new(ErrorKind::CredentialsMissing { scheme: "Basic" }, &t)
                    .at("GET /v2/"),
                ErrorCode::RegistryCredentialsMissing,
                "GET /v2/: the registry requires authentication (Basic) but no credentials are configured",
            ),
            (
                RegistryError::new(ErrorKind::AuthFailed { username: user() }, &t)
                    .at("GET /v2/")
                    .with_detail("HTTP 401"),
                ErrorCode::RegistryAuthFailed,
                "GET /v2/: the credentials of user `bob` were refused: HTTP 401",
            ),
            (
                RegistryError::new(
                    ErrorKind::InsufficientScope {
                        username: user(),
                        right: Right::Push,
                    },
                    &t,
                )
                .at("PUT")
                .with_detail("HTTP 401"),
                ErrorCode::RegistryInsufficientScope,
                "PUT: user `bob` has no push rights on the repository: HTTP 401",
            ),
            (
                RegistryError::new(
                    ErrorKind::TagImmutable {
                        tag: "1.0".into(),
                        status: 412,
                    },
                    &t,
                )
                .at("PUT")
                .with_detail("HTTP 412"),
                ErrorCode::TagImmutable,
                "PUT: the tag `1.0` is immutable in this registry (HTTP 412): HTTP 412",
            ),
            (
                RegistryError::new(ErrorKind::RateLimited { retry_after: None }, &t).at("GET"),
                ErrorCode::RegistryRateLimited,
                "GET: rate limited (HTTP 429)",
            ),
            (
                RegistryError::new(ErrorKind::BlobUploadInvalid, &t)
                    .at("PUT")
                    .with_detail("HTTP 400"),
                ErrorCode::BlobUploadInvalid,
                "PUT: blob upload refused: HTTP 400",
            ),
            (
                RegistryError::new(ErrorKind::PayloadTooLarge, &t)
                    .at("PUT")
                    .with_detail("HTTP 413"),
                ErrorCode::PayloadTooLarge,
                "PUT: refused as too large (HTTP 413): HTTP 413",
            ),
            (
                RegistryError::new(
                    ErrorKind::InsecureRealm {
                        realm: "http://auth/token".into(),
                    },
                    &t,
                ),
                ErrorCode::PushFailed,
                "refusing to send credentials to token realm http://auth/token: plain http while the registry uses https",
            ),
        ];
        for (error, code, text) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(
                error.to_string(),
                format!("registry `harbor`, repository `production/myapp`: {text}")
            );
            assert_eq!(error.retry_after(), None, "{error}");
            assert!(!error.is_transient(), "{error}");
        }
    }

    #[test]
    fn hints_follow_the_kind_and_the_request() {
        let t = target();
        let bob = || ErrorKind::AuthFailed {
            username: "bob".into(),
        };
        let token = RegistryError::new(bob(), &t).at("token request to https://auth/token");
        assert!(token.hint().contains("token service"), "{}", token.hint());
        let basic = RegistryError::new(bob(), &t).at("GET /v2/ (credentials check)");
        assert_eq!(
            basic.hint(),
            ErrorCode::RegistryAuthFailed.default_hint(),
            "{}",
            basic.hint()
        );
        let read_only = RegistryError::new(ErrorKind::Denied { status: 405 }, &t);
        assert!(
            read_only.hint().contains("read-only"),
            "{}",
            read_only.hint()
        );
        let no_pull = RegistryError::new(
            ErrorKind::InsufficientScope {
                username: "bob".into(),
                right: Right::Pull,
            },
            &t,
        );
        assert!(no_pull.hint().contains("pull rights"), "{}", no_pull.hint());
        let endpoint = RegistryError::new(ErrorKind::InvalidEndpoint, &t);
        assert!(endpoint.hint().contains("ca_file"), "{}", endpoint.hint());
    }

    #[test]
    fn debug_names_the_kind_and_the_context() {
        let e = RegistryError::new(ErrorKind::Denied { status: 403 }, &target())
            .at("GET /v2/")
            .with_detail("HTTP 403");
        let text = format!("{e:?}");
        assert!(
            text.starts_with("RegistryError(Inner { kind: Denied { status: 403 }"),
            "{text}"
        );
        assert!(
            text.contains("production/myapp") && text.contains("HTTP 403"),
            "{text}"
        );
    }
}
