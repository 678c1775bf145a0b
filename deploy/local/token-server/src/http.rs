//! The HTTP side: `GET /token` (the Docker registry token protocol) and a minimal
//! `POST /token` (OAuth2 `password` and `refresh_token` grants, as dockerd uses with an
//! identity token), plus `GET /healthz`.
//!
//! Answers follow what real token servers (Harbor, GitLab, Docker Hub) do:
//! - no credentials: 200 with an anonymous token whose `access` is empty;
//! - a known user lacking a right: 200 with the *reduced* `access` (the registry then
//!   answers 401 `insufficient_scope` to the request that needed it);
//! - bad credentials: 401 `{"errors":[{"code":"UNAUTHORIZED",..}]}` with a Basic challenge.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{info, warn};

use crate::scope::{Access, Scope};
use crate::token::Signer;
use crate::users::Users;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) users: Users,
    pub(crate) signer: Signer,
}

/// The router of the token server.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/token", get(get_token).post(post_token))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// The JSON answer carrying a token.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// A refused request, rendered in the registry's `{"errors":[..]}` format.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Bad or unusable credentials: 401 with a Basic challenge.
    Unauthorized(String),
    /// A request this server cannot honour: 400 with the given code.
    BadRequest(&'static str, String),
    /// Signing failed: 500.
    Internal(anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m),
            Self::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            Self::Internal(e) => {
                warn!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal error".to_owned(),
                )
            }
        };
        let body = json!({"errors": [{"code": code, "message": message, "detail": null}]});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pushfleet-token-server\""),
            );
        }
        response
    }
}

/// Credentials taken from an `Authorization: Basic` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BasicCredentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// Reads HTTP Basic credentials: `Ok(None)` without an `Authorization` header,
/// an error for any other scheme or a malformed value.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<BasicCredentials>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || ApiError::Unauthorized("malformed Authorization header".to_owned());
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, encoded) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::Unauthorized(
            "only Basic authentication is supported".to_owned(),
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(BasicCredentials {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// Parses `application/x-www-form-urlencoded` pairs (a query string or a form body).
fn form_pairs(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(text)
        .map_err(|e| ApiError::BadRequest("INVALID_REQUEST", format!("bad parameters: {e}")))
}

/// The first value of parameter `key`.
fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Refuses a `service` that is not ours (a token for another audience would be useless).
fn check_service(state: &AppState, pairs: &[(String, String)]) -> Result<(), ApiError> {
    match param(pairs, "service") {
        Some(service) if service != state.signer.service() => Err(ApiError::BadRequest(
            "INVALID_REQUEST",
            format!(
                "unknown service {service:?}, this server issues for {:?}",
                state.signer.service()
            ),
        )),
        _ => Ok(()),
    }
}

/// All scopes of the request (`scope` may repeat, and hold space-separated scopes).
fn requested_scopes(pairs: &[(String, String)]) -> Result<Vec<Scope>, ApiError> {
    Scope::parse_all(
        pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
    .map_err(|e| ApiError::BadRequest("INVALID_REQUEST", e.to_string()))
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized("authentication failed: incorrect username or password".to_owned())
}

/// Signs the access token (and optionally a refresh token) and builds the answer.
fn issue(
    state: &AppState,
    subject: &str,
    access: Vec<Access>,
    with_refresh: bool,
    with_scope: bool,
) -> Result<TokenResponse, ApiError> {
    let now_dt = OffsetDateTime::now_utc();
    let now = u64::try_from(now_dt.unix_timestamp())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("clock before 1970: {e}")))?;
    let scope = with_scope.then(|| {
        access
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    });
    let token = state
        .signer
        .access_token(subject, access, now)
        .map_err(ApiError::Internal)?;
    let refresh_token = if with_refresh {
        Some(
            state
                .signer
                .refresh_token(subject, now)
                .map_err(ApiError::Internal)?,
        )
    } else {
        None
    };
    let issued_at = now_dt
        .format(&Rfc3339)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(TokenResponse {
        access_token: token.clone(),
        token,
        expires_in: state.signer.ttl_secs(),
        issued_at,
        refresh_token,
        scope,
    })
}

/// `GET /token?service=..&scope=..&account=..[&offline_token=true]` with optional Basic auth.
async fn get_token(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<axum::Json<TokenResponse>, ApiError> {
    let pairs = form_pairs(query.as_deref().unwrap_or(""))?;
    check_service(&state, &pairs)?;
    let scopes = requested_scopes(&pairs)?;
    let requested: Vec<String> = scopes
        .iter()
        .map(|s| format!("{}:{}:{}", s.kind, s.name, s.actions.join(",")))
        .collect();
    let Some(creds) = basic_credentials(&headers)? else {
        info!(
            user = "<anonymous>",
            ?requested,
            "anonymous token, no access"
        );
        return issue(&state, "", Vec::new(), false, false).map(axum::Json);
    };
    let Some(user) = state.users.authenticate(&creds.user, &creds.password) else {
        warn!(user = creds.user, "bad credentials");
        return Err(unauthorized());
    };
    let access = user.grant(&scopes);
    let granted: Vec<String> = access.iter().map(ToString::to_string).collect();
    info!(user = creds.user, ?requested, ?granted, "token issued");
    let offline = param(&pairs, "offline_token") == Some("true");
    issue(&state, &creds.user, access, offline, false).map(axum::Json)
}

/// `POST /token` with an OAuth2 form: `grant_type=password` (`username`, `password`) or
/// `grant_type=refresh_token` (`refresh_token`), plus `service`, `scope` (space-separated),
/// `client_id` and `access_type=offline` (asks for a refresh token).
async fn post_token(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<axum::Json<TokenResponse>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("INVALID_REQUEST", "form is not UTF-8".to_owned()))?;
    let pairs = form_pairs(text)?;
    check_service(&state, &pairs)?;
    let scopes = requested_scopes(&pairs)?;
    let (subject, user, with_refresh) = match param(&pairs, "grant_type") {
        Some("password") => {
            let name = param(&pairs, "username").unwrap_or("");
            let password = param(&pairs, "password").unwrap_or("");
            let user = state
                .users
                .authenticate(name, password)
                .ok_or_else(unauthorized)?;
            (
                name.to_owned(),
                user,
                param(&pairs, "access_type") == Some("offline"),
            )
        }
        Some("refresh_token") => {
            let token = param(&pairs, "refresh_token").unwrap_or("");
            let name = state
                .signer
                .check_refresh_token(token)
                .map_err(|e| ApiError::Unauthorized(format!("{e:#}")))?;
            let user = state
                .users
                .get(&name)
                .ok_or_else(|| ApiError::Unauthorized("unknown user".to_owned()))?;
            (name, user, false)
        }
        other => {
            return Err(ApiError::BadRequest(
                "UNSUPPORTED",
                format!("unsupported grant_type {other:?} (password or refresh_token)"),
            ));
        }
    };
    let access = user.grant(&scopes);
    let granted: Vec<String> = access.iter().map(ToString::to_string).collect();
    info!(user = subject, ?granted, "token issued (POST)");
    issue(&state, &subject, access, with_refresh, true).map(axum::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey};

    use crate::users::{Grant, User};

    fn state() -> AppState {
        let mut users = Users::default();
        users.insert(
            "pusher",
            User::new(
                "pw",
                vec![Grant {
                    kind: "repository".into(),
                    name: "team-a/*".into(),
                    actions: vec!["pull".into(), "push".into()],
                }],
            ),
        );
        let signer = Signer::new(
            "iss".into(),
            "svc".into(),
            300,
            Algorithm::HS256,
            EncodingKey::from_secret(b"k"),
            &[],
            None,
        );
        AppState { users, signer }
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    /// The `access` claim of a token, read without verifying (the signer tests verify).
    fn access_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["access"].clone())
            .unwrap_or_default()
    }

    #[test]
    fn basic_credentials_are_parsed() {
        // "pusher:p:w" -> the password keeps its colon.
        let creds = basic_credentials(&headers("Basic cHVzaGVyOnA6dw=="))
            .ok()
            .flatten();
        assert_eq!(
            creds,
            Some(BasicCredentials {
                user: "pusher".into(),
                password: "p:w".into()
            })
        );
        assert!(basic_credentials(&HeaderMap::new()).is_ok_and(|c| c.is_none()));
        assert!(basic_credentials(&headers("Basic !!!")).is_err());
        assert!(basic_credentials(&headers("Basic bm9jb2xvbg==")).is_err()); // "nocolon"
        assert!(basic_credentials(&headers("Bearer abc")).is_err());
    }

    #[tokio::test]
    async fn get_grants_reduced_access_and_refuses_bad_passwords() {
        let state = Arc::new(state());
        let q = "service=svc&scope=repository:team-a/app:push,pull&scope=repository:team-b/x:push";
        let ok = get_token(
            State(state.clone()),
            RawQuery(Some(q.to_owned())),
            headers("Basic cHVzaGVyOnB3"), // pusher:pw
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.0.expires_in, 300);
        assert_eq!(ok.0.token, ok.0.access_token);
        assert_eq!(
            access_of(&ok.0.token),
            json!([{"type": "repository", "name": "team-a/app", "actions": ["push", "pull"]}])
        );

        let bad = get_token(
            State(state.clone()),
            RawQuery(Some(q.to_owned())),
            headers("Basic cHVzaGVyOnB4"), // pusher:px
        )
        .await;
        assert!(matches!(bad, Err(ApiError::Unauthorized(_))));

        let anonymous = get_token(
            State(state.clone()),
            RawQuery(Some(q.to_owned())),
            HeaderMap::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(access_of(&anonymous.0.token), json!([]));

        let wrong_service = get_token(
            State(state.clone()),
            RawQuery(Some("service=other".into())),
            HeaderMap::new(),
        )
        .await;
        assert!(matches!(wrong_service, Err(ApiError::BadRequest(..))));

        let bad_scope = get_token(
            State(state),
            RawQuery(Some("scope=repository:nope".into())),
            HeaderMap::new(),
        )
        .await;
        assert!(matches!(bad_scope, Err(ApiError::BadRequest(..))));
    }

    #[tokio::test]
    async fn post_password_then_refresh_grant() {
        let state = Arc::new(state());
        let form = "grant_type=password&username=pusher&password=pw&service=svc&client_id=t\
                    &access_type=offline&scope=repository%3Ateam-a%2Fapp%3Apush+repository%3Ab%2Fc%3Apull";
        let first = post_token(State(state.clone()), Bytes::from(form))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(first.0.scope.as_deref(), Some("repository:team-a/app:push"));
        let refresh = first.0.refresh_token.clone().unwrap_or_default();
        assert!(!refresh.is_empty());

        let form = format!(
            "grant_type=refresh_token&refresh_token={refresh}&scope=repository:team-a/y:pull"
        );
        let second = post_token(State(state.clone()), Bytes::from(form))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            access_of(&second.0.token),
            json!([{"type": "repository", "name": "team-a/y", "actions": ["pull"]}])
        );

        let wrong = post_token(
            State(state.clone()),
            Bytes::from("grant_type=password&username=pusher&password=nope"),
        )
        .await;
        assert!(matches!(wrong, Err(ApiError::Unauthorized(_))));
        let forged = post_token(
            State(state.clone()),
            Bytes::from(format!(
                "grant_type=refresh_token&refresh_token={}",
                first.0.token
            )),
        )
        .await;
        assert!(
            matches!(forged, Err(ApiError::Unauthorized(_))),
            "access token is no refresh token"
        );
        let unsupported =
            post_token(State(state), Bytes::from("grant_type=client_credentials")).await;
        assert!(matches!(unsupported, Err(ApiError::BadRequest(..))));
    }
}
