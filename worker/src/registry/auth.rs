//! Getting an authorisation: the `/v2/` challenge, Basic credentials check, Bearer tokens.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::header;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::cache::{self, Authorization};
use super::challenge::{self, Challenge};
use super::classify::from_transport;
use super::error::{ErrorKind, RegistryError, Target};
use super::{Credentials, MAX_BODY, RegistryClient, read_body, sensitive, www_authenticate};

/// The actions a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Actions<'a> {
    /// Pull on the repository.
    Pull,
    /// Pull and push on the repository.
    PullPush,
    /// Pull and push on the repository, and pull on `from`: a cross-repository mount, asked
    /// as a second `scope` (as Docker asks it).
    Mount {
        /// The repository the blob is mounted from.
        from: &'a str,
    },
}

impl Actions<'_> {
    /// The `scope` on `repository` itself.
    pub(super) fn scope(self, repository: &str) -> String {
        match self {
            Self::Pull => format!("repository:{repository}:pull"),
            Self::PullPush | Self::Mount { .. } => format!("repository:{repository}:pull,push"),
        }
    }
}

impl RegistryClient {
    /// The `/v2/` challenge, from the cache or by `GET /v2/`; the flag says it was cached.
    pub(super) async fn challenge(
        &self,
        target: &Target,
    ) -> Result<(Option<Challenge>, bool), RegistryError> {
        if let Some(challenge) = self.lock().ping(Instant::now()) {
            return Ok((challenge, true));
        }
        let request = "GET /v2/";
        let url = self.url("v2/", target)?;
        let response = self.send(target, request, self.http.get(url)).await?;
        let status = response.status();
        let challenge = if status.is_success() {
            None
        } else if status == StatusCode::UNAUTHORIZED {
            match challenge::challenge_from_headers(www_authenticate(response.headers())) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err(RegistryError::new(ErrorKind::Protocol, target)
                        .at(request)
                        .with_detail(e.to_string()));
                }
            }
        } else if status == StatusCode::FORBIDDEN {
            let detail = self.body_summary(response, &[]).await;
            return Err(RegistryError::new(
                ErrorKind::Denied {
                    status: status.as_u16(),
                },
                target,
            )
            .at(request)
            .with_detail(detail));
        } else {
            return Err(self.unexpected(target, request, response, None, None).await);
        };
        self.lock().put_ping(challenge.clone(), Instant::now());
        Ok((challenge, false))
    }

    /// Obtains an authorisation for `repository` under `challenge`, and how long to reuse it.
    /// `check_basic` verifies Basic credentials with `GET /v2/` (preflight); without it they
    /// are checked by the request that uses them.
    pub(super) async fn authorize(
        &self,
        target: &Target,
        repository: &str,
        login: Option<&Credentials>,
        challenge: Option<&Challenge>,
        actions: Actions<'_>,
        check_basic: bool,
    ) -> Result<(Authorization, Duration), RegistryError> {
        match challenge {
            None => Ok((Authorization::Anonymous, cache::BASIC_TTL)),
            Some(Challenge::Basic) => {
                let Some(login) = login else {
                    return Err(RegistryError::new(
                        ErrorKind::CredentialsMissing { scheme: "Basic" },
                        target,
                    )
                    .at("GET /v2/"));
                };
                let authorization = Authorization::Basic(basic_header(login));
                if check_basic {
                    self.check_basic(target, login, &authorization).await?;
                }
                Ok((authorization, cache::BASIC_TTL))
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.fetch_token(
                    target,
                    repository,
                    login,
                    realm,
                    service.as_deref(),
                    actions,
                )
                .await
            }
        }
    }

    /// `GET /v2/` with Basic credentials: 200 means they are right.
    pub(super) async fn check_basic(
        &self,
        target: &Target,
        login: &Credentials,
        authorization: &Authorization,
    ) -> Result<(), RegistryError> {
        let request = "GET /v2/ (credentials check)";
        let url = self.url("v2/", target)?;
        let mut builder = self.http.get(url);
        if let Some(value) = self.header_value(target, request, authorization)? {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let response = self.send(target, request, builder).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = self
                .body_summary(response, &[login.password.expose_secret()])
                .await;
            return Err(RegistryError::new(
                ErrorKind::AuthFailed {
                    username: login.username.clone(),
                },
                target,
            )
            .at(request)
            .with_detail(detail));
        }
        Err(self
            .unexpected(target, request, response, Some(login), None)
            .await)
    }

    /// Asks the token service for a token with `actions` on `repository` (and, for a
    /// cross-repository mount, pull on the repository it mounts from).
    async fn fetch_token(
        &self,
        target: &Target,
        repository: &str,
        login: Option<&Credentials>,
        realm: &str,
        service: Option<&str>,
        actions: Actions<'_>,
    ) -> Result<(Authorization, Duration), RegistryError> {
        let protocol = |detail: String| {
            RegistryError::new(ErrorKind::Protocol, target)
                .at("GET /v2/")
                .with_detail(detail)
        };
        let mut url = self.base.join(realm).map_err(|e| {
            protocol(format!(
                "the Bearer challenge's realm {realm:?} is not a URL: {e}"
            ))
        })?;
        match (self.base.scheme(), url.scheme()) {
            ("https", "http") => {
                return Err(RegistryError::new(
                    ErrorKind::InsecureRealm {
                        realm: url.to_string(),
                    },
                    target,
                ));
            }
            (_, "http" | "https") => {}
            (_, other) => return Err(protocol(format!("the token realm has scheme `{other}`"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(protocol("the token realm holds credentials".to_owned()));
        }
        let request = format!("token request to {}", realm_label(&url));
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(service) = service {
                pairs.append_pair("service", service);
            }
            pairs.append_pair("scope", &actions.scope(repository));
            if let Actions::Mount { from } = actions {
                pairs.append_pair("scope", &Actions::Pull.scope(from));
            }
        }
        let mut builder = self.http.get(url);
        if let Some(login) = login {
            let value = sensitive(basic_header(login).expose_secret()).map_err(|()| {
                RegistryError::new(ErrorKind::InvalidEndpoint, target)
                    .with_detail("the user name cannot be sent in an HTTP header")
            })?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let response = self.send(target, &request, builder).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(match login {
                Some(l) => {
                    let detail = self
                        .body_summary(response, &[l.password.expose_secret()])
                        .await;
                    RegistryError::new(
                        ErrorKind::AuthFailed {
                            username: l.username.clone(),
                        },
                        target,
                    )
                    .at(request)
                    .with_detail(detail)
                }
                None => {
                    RegistryError::new(ErrorKind::CredentialsMissing { scheme: "Bearer" }, target)
                        .at(request)
                }
            });
        }
        if !status.is_success() {
            return Err(self
                .unexpected(target, &request, response, login, None)
                .await);
        }
        let body = read_body(response, MAX_BODY)
            .await
            .map_err(|e| from_transport(target, &request, e, self.timeout))?;
        let token = parse_token_response(&body).map_err(|detail| {
            RegistryError::new(ErrorKind::Protocol, target)
                .at(request)
                .with_detail(detail)
        })?;
        Ok((
            Authorization::Bearer(token.token),
            cache::token_validity(token.expires_in),
        ))
    }
}

pub(super) fn scheme_name(authorization: &Authorization) -> &'static str {
    match authorization {
        Authorization::Bearer(_) => "Bearer",
        _ => "Basic",
    }
}

pub(super) fn basic_header(login: &Credentials) -> SecretString {
    let raw = format!("{}:{}", login.username, login.password.expose_secret());
    SecretString::from(format!("Basic {}", STANDARD.encode(raw)))
}

/// The realm without its query, for messages.
pub(super) fn realm_label(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// A parsed token response.
pub(super) struct TokenResponse {
    token: SecretString,
    expires_in: Option<u64>,
}

/// Parses `{"token": .., "access_token": .., "expires_in": ..}` (either token field; `token`
/// wins; `expires_in` as a number or a numeric string). The error text never holds the body.
pub(super) fn parse_token_response(body: &[u8]) -> Result<TokenResponse, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        token: Option<SecretString>,
        #[serde(default)]
        access_token: Option<SecretString>,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the token response is not the expected JSON object (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let non_empty = |t: Option<SecretString>| t.filter(|t| !t.expose_secret().trim().is_empty());
    let token = non_empty(raw.token)
        .or_else(|| non_empty(raw.access_token))
        .ok_or_else(|| "the token response has neither `token` nor `access_token`".to_owned())?;
    let expires_in = match raw.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    Ok(TokenResponse { token, expires_in })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses() {
        let r = parse_token_response(br#"{"token":"abc","access_token":"def","expires_in":300}"#)
            .expect("ok");
        assert_eq!(r.token.expose_secret(), "abc");
        assert_eq!(r.expires_in, Some(300));
        let r = parse_token_response(br#"{"access_token":"def"}"#).expect("ok");
        assert_eq!(r.token.expose_secret(), "def");
        assert_eq!(r.expires_in, None);
        let r = parse_token_response(br#"{"token":"","access_token":"def","expires_in":"60"}"#)
            .expect("ok");
        assert_eq!(r.token.expose_secret(), "def");
        assert_eq!(r.expires_in, Some(60));
        assert!(parse_token_response(br#"{"expires_in":60}"#).is_err());
        let e = parse_token_response(br#"{"token": "secret-tok"#)
            .err()
            .unwrap_or_default();
        assert!(!e.contains("secret-tok"), "{e}");
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Actions::PullPush.scope("team-a/app"),
            "repository:team-a/app:pull,push"
        );
        assert_eq!(Actions::Pull.scope("x"), "repository:x:pull");
        assert_eq!(
            Actions::Mount { from: "team-b/lib" }.scope("team-a/app"),
            "repository:team-a/app:pull,push"
        );
    }
}
