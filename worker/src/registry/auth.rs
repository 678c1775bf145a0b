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
use super::error::{RegistryError, Target, from_transport};
use super::{Credentials, MAX_BODY, RegistryClient, read_body, sensitive, www_authenticate};

/// The actions a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Actions {
    Pull,
    PullPush,
}

impl Actions {
    pub(super) fn scope(self, repository: &str) -> String {
        match self {
            Self::Pull => format!("repository:{repository}:pull"),
            Self::PullPush => format!("repository:{repository}:pull,push"),
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
                    return Err(RegistryError::Protocol {
                        target: target.boxed(),
                        request: request.to_owned(),
                        detail: e.to_string(),
                    });
                }
            }
        } else if status == StatusCode::FORBIDDEN {
            let detail = self.body_summary(response, &[]).await;
            return Err(RegistryError::Denied {
                target: target.boxed(),
                request: request.to_owned(),
                status: status.as_u16(),
                detail,
            });
        } else {
            return Err(self.unexpected(target, request, response, None, &[]).await);
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
        actions: Actions,
        check_basic: bool,
    ) -> Result<(Authorization, Duration), RegistryError> {
        match challenge {
            None => Ok((Authorization::Anonymous, cache::BASIC_TTL)),
            Some(Challenge::Basic) => {
                let Some(login) = login else {
                    return Err(RegistryError::CredentialsMissing {
                        target: target.boxed(),
                        request: "GET /v2/".to_owned(),
                        scheme: "Basic",
                    });
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
                    None,
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
            return Err(RegistryError::AuthFailed {
                target: target.boxed(),
                request: request.to_owned(),
                username: login.username.clone(),
                detail,
            });
        }
        Err(self
            .unexpected(target, request, response, Some(login), &[])
            .await)
    }

    /// Asks the token service for a token with `actions` on `repository` and, for a
    /// cross-repository mount, pull on `also_pull` as a second `scope` (as Docker asks).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch_token(
        &self,
        target: &Target,
        repository: &str,
        login: Option<&Credentials>,
        realm: &str,
        service: Option<&str>,
        actions: Actions,
        also_pull: Option<&str>,
    ) -> Result<(Authorization, Duration), RegistryError> {
        let protocol = |detail: String| RegistryError::Protocol {
            target: target.boxed(),
            request: "GET /v2/".to_owned(),
            detail,
        };
        let mut url = self.base.join(realm).map_err(|e| {
            protocol(format!(
                "the Bearer challenge's realm {realm:?} is not a URL: {e}"
            ))
        })?;
        match (self.base.scheme(), url.scheme()) {
            ("https", "http") => {
                return Err(RegistryError::InsecureRealm {
                    target: target.boxed(),
                    realm: url.to_string(),
                });
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
            if let Some(from) = also_pull {
                pairs.append_pair("scope", &Actions::Pull.scope(from));
            }
        }
        let mut builder = self.http.get(url);
        if let Some(login) = login {
            let value = sensitive(basic_header(login).expose_secret()).map_err(|()| {
                RegistryError::InvalidEndpoint {
                    target: target.boxed(),
                    reason: "the user name cannot be sent in an HTTP header".to_owned(),
                }
            })?;
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let response = self.send(target, &request, builder).await?;
        let status = response.status();
        let secrets: Vec<&str> = login
            .map(|l| l.password.expose_secret())
            .into_iter()
            .collect();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = self.body_summary(response, &secrets).await;
            return Err(match login {
                Some(l) => RegistryError::AuthFailed {
                    target: target.boxed(),
                    request,
                    username: l.username.clone(),
                    detail,
                },
                None => RegistryError::CredentialsMissing {
                    target: target.boxed(),
                    request,
                    scheme: "Bearer",
                },
            });
        }
        if !status.is_success() {
            return Err(self
                .unexpected(target, &request, response, login, &secrets)
                .await);
        }
        let body = read_body(response, MAX_BODY)
            .await
            .map_err(|e| from_transport(target, &request, e, self.timeout))?;
        let token = parse_token_response(&body).map_err(|detail| RegistryError::Protocol {
            target: target.boxed(),
            request: request.clone(),
            detail,
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
    }
}
