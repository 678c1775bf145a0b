//! The one authorise-and-cache path of requests after the preflight: which authorisation a
//! request is sent with ([`Access`]), where it comes from (the cache, else the `/v2/`
//! challenge and the credentials, then cached for its validity), and sending a request with
//! it, once more with fresh authentication when the registry answers 401.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::auth::{Actions, scheme_name};
use super::cache::{AccessEntry, AccessKey, Authorization};
use super::challenge::{self, Challenge};
use super::error::{ErrorKind, RegistryError, Right, Target};
use super::{Credentials, RegistryClient, www_authenticate};

/// The right a request needs, and so the authorisation it is sent with.
#[derive(Debug, Clone, Copy)]
pub(super) enum Access<'a> {
    /// A read: the cached pull (or push) authorisation, else a fresh pull one.
    Pull,
    /// A write: the push access [`RegistryClient::preflight_push`] proves and caches.
    Push,
    /// A cross-repository mount: push on the repository and pull on `from` (with a token
    /// registry, one token with both scopes, cached apart).
    Mount {
        /// The repository the blob is mounted from.
        from: &'a str,
    },
}

impl RegistryClient {
    /// Sends the request `build` makes with the authorisation `access` calls for; when the
    /// registry answers 401, the authorisation (and the cached challenge) is forgotten and
    /// the request is sent once more with fresh authentication. Returns the last answer (a
    /// 401 when the fresh authentication was refused too; see
    /// [`RegistryClient::unauthorized`]) and the authorisation it was sent with.
    pub(super) async fn send_authorized(
        &self,
        repository: &str,
        target: &Target,
        request: &str,
        access: Access<'_>,
        login: Option<&Credentials>,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<(Response, Authorization), RegistryError> {
        let key = match access {
            Access::Mount { from } => self.mount_key(repository, from, login),
            Access::Pull | Access::Push => self.access_key(repository, login),
        };
        let mut fresh = false;
        loop {
            let authorization = self
                .authorization(target, repository, access, &key, login)
                .await?;
            let mut builder = build();
            if let Some(value) = self.header_value(target, request, &authorization)? {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let response = self.send(target, request, builder).await?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok((response, authorization));
            }
            self.forget_after_401(&key);
            if fresh {
                return Ok((response, authorization));
            }
            fresh = true;
            tracing::debug!(registry = %self.key, repository, request, "401; asking again with fresh authentication");
        }
    }

    /// The authorisation `access` calls for, from the cache or obtained and cached.
    async fn authorization(
        &self,
        target: &Target,
        repository: &str,
        access: Access<'_>,
        key: &AccessKey,
        login: Option<&Credentials>,
    ) -> Result<Authorization, RegistryError> {
        let (actions, push) = match access {
            Access::Push => return Ok(self.preflight_push(repository, login).await?.authorization),
            Access::Pull => (Actions::Pull, None),
            Access::Mount { from } => {
                // Only a token differs from the push access: Basic and anonymous access are
                // the same for both repositories.
                let push = self.preflight_push(repository, login).await?.authorization;
                if !matches!(push, Authorization::Bearer(_)) {
                    return Ok(push);
                }
                (Actions::Mount { from }, Some(push))
            }
        };
        let obtain = async move {
            let (challenge, _) = self.challenge(target).await?;
            match push {
                // The registry no longer asks for tokens: the push access serves a mount.
                Some(push) if !matches!(challenge, Some(Challenge::Bearer { .. })) => {
                    Ok((push, Duration::ZERO))
                }
                _ => {
                    let challenge = challenge.as_ref();
                    self.authorize(target, repository, login, challenge, actions, false)
                        .await
                }
            }
        };
        self.cached_authorization(key, obtain).await
    }

    /// The cached authorisation of `key` (pull or push), else the one `obtain` gets, cached
    /// for the validity it comes with.
    async fn cached_authorization(
        &self,
        key: &AccessKey,
        obtain: impl Future<Output = Result<(Authorization, Duration), RegistryError>>,
    ) -> Result<Authorization, RegistryError> {
        if let Some(entry) = self.lock().access(key, false, Instant::now()) {
            return Ok(entry.authorization);
        }
        let obtained_at = Instant::now();
        let (authorization, validity) = obtain.await?;
        self.remember(key, &authorization, false, obtained_at, validity);
        Ok(authorization)
    }

    /// Caches `authorization`, obtained at `obtained_at`, for `key` during `validity`
    /// (`push`: it proves the push right); one valid for no time at all is not kept.
    pub(super) fn remember(
        &self,
        key: &AccessKey,
        authorization: &Authorization,
        push: bool,
        obtained_at: Instant,
        validity: Duration,
    ) {
        if validity.is_zero() {
            return;
        }
        let entry = AccessEntry {
            authorization: authorization.clone(),
            push,
            expires_at: obtained_at + validity,
        };
        self.lock().put_access(key.clone(), entry, Instant::now());
    }

    /// Drops what a 401 proved stale: the key's authorisation and the cached challenge.
    pub(super) fn forget_after_401(&self, key: &AccessKey) {
        let mut cache = self.lock();
        cache.invalidate_key(key);
        cache.drop_ping();
    }

    /// The cache key of a mount's authorisation: `<repository><-<from>`.
    fn mount_key(&self, repository: &str, from: &str, login: Option<&Credentials>) -> AccessKey {
        // `<` is not allowed in repository names, so this key meets no repository's.
        self.access_key(&format!("{repository}<-{from}"), login)
    }

    /// The error of a request answered 401 even with fresh authentication, for `right`.
    pub(super) fn unauthorized(
        &self,
        target: &Target,
        request: String,
        headers: &HeaderMap,
        login: Option<&Credentials>,
        authorization: &Authorization,
        right: Right,
    ) -> RegistryError {
        let bearer_error = challenge::bearer_error(www_authenticate(headers));
        let detail = match &bearer_error {
            Some(e) => format!("HTTP 401 ({e})"),
            None => "HTTP 401".to_owned(),
        };
        let kind = match (login, bearer_error.as_deref()) {
            (None, _) => {
                return RegistryError::new(
                    ErrorKind::CredentialsMissing {
                        scheme: scheme_name(authorization),
                    },
                    target,
                )
                .at(request);
            }
            (Some(l), Some("insufficient_scope")) => ErrorKind::InsufficientScope {
                username: l.username.clone(),
                right,
            },
            (Some(l), _) => ErrorKind::AuthFailed {
                username: l.username.clone(),
            },
        };
        RegistryError::new(kind, target)
            .at(request)
            .with_detail(detail)
    }
}
