//! The two registries of the stack and the token server behave like real ones.
//!
//! - "basic": htpasswd auth, `/v2/` challenges with `Basic realm=`.
//! - "token": `auth: token:` against `pushfleet-token-server`, `/v2/` challenges with
//!   `Bearer realm=..,service=..`; tokens carry the granted part of the requested scopes, and
//!   the registry enforces it (202 to an upload `POST` with push, 401 `insufficient_scope`
//!   without).
//!
//! Every test uses its own repository names (uuid), so they run in parallel.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pushfleet_tests::StackEnv;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// An HTTP client for loopback: never through a proxy from the environment.
fn client() -> Result<Client> {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

/// A repository name no other test uses, below `namespace`.
fn unique_repo(namespace: &str) -> String {
    format!("{namespace}/{}", pushfleet_tests::unique("app"))
}

/// The `WWW-Authenticate` header of a response ("" if absent).
fn challenge(response: &Response) -> String {
    response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The decoded payload (middle part, base64url) of a JWT.
fn jwt_payload(token: &str) -> Result<Value> {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "not a JWT (expected 3 parts): {token}");
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .context("JWT payload is not base64url")?;
    serde_json::from_slice(&bytes).context("JWT payload is not JSON")
}

/// Credentials of token-server user `role` (`PUSHER`, `READER`, `ADMIN`).
fn token_user(env: &StackEnv, role: &str) -> Result<(String, String)> {
    Ok((
        env.get(&format!("PUSHFLEET_TOKEN_{role}_USER"))?,
        env.read_file_at(&format!("PUSHFLEET_TOKEN_{role}_PASSWORD_FILE"))?,
    ))
}

/// `GET /token` with `scopes`, as `user` (None: anonymous). Returns the raw response.
async fn request_token(
    env: &StackEnv,
    http: &Client,
    user: Option<&(String, String)>,
    scopes: &[String],
) -> Result<Response> {
    let mut query = vec![("service".to_owned(), env.get("PUSHFLEET_TOKEN_SERVICE")?)];
    query.extend(scopes.iter().map(|s| ("scope".to_owned(), s.clone())));
    let mut request = http
        .get(format!("{}/token", env.get("PUSHFLEET_TOKEN_SERVER")?))
        .query(&query);
    if let Some((name, password)) = user {
        request = request.basic_auth(name, Some(password));
    }
    request.send().await.context("token server unreachable")
}

/// A token granted to `user` for `scopes` (the request must succeed), and its payload.
async fn grant_token(
    env: &StackEnv,
    http: &Client,
    user: Option<&(String, String)>,
    scopes: &[String],
) -> Result<(String, Value)> {
    let response = request_token(env, http, user, scopes).await?;
    let status = response.status();
    let body: Value = response.json().await.context("token answer is not JSON")?;
    ensure!(
        status == StatusCode::OK,
        "token server answered {status}: {body}"
    );
    let token = body["token"]
        .as_str()
        .context("no token in the answer")?
        .to_owned();
    assert_eq!(
        body["access_token"],
        json!(token),
        "access_token must equal token"
    );
    assert_eq!(body["expires_in"], json!(300));
    assert!(body["issued_at"].is_string(), "no issued_at: {body}");
    let payload = jwt_payload(&token)?;
    Ok((token, payload))
}

/// `POST /v2/<repo>/blobs/uploads/` on the token registry with `token` (start an upload).
async fn start_upload(env: &StackEnv, http: &Client, repo: &str, token: &str) -> Result<Response> {
    let url = format!(
        "http://{}/v2/{repo}/blobs/uploads/",
        env.get("PUSHFLEET_TOKEN_REGISTRY")?
    );
    http.post(url)
        .bearer_auth(token)
        .send()
        .await
        .context("token registry unreachable")
}

/// Asserts the registry refused an upload for lack of push rights.
fn assert_insufficient_scope(response: &Response, repo: &str) {
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "upload must be refused"
    );
    let challenge = challenge(response);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "challenge: {challenge}"
    );
    assert!(
        challenge.contains(&format!("repository:{repo}:")),
        "challenge: {challenge}"
    );
}

#[tokio::test]
async fn basic_registry_challenges_then_accepts_htpasswd_users() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let url = format!("http://{}/v2/", env.get("PUSHFLEET_BASIC_REGISTRY")?);

    let anonymous = http.get(&url).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge(&anonymous);
    assert!(
        challenge.starts_with("Basic realm="),
        "challenge: {challenge}"
    );

    let user = env.get("PUSHFLEET_BASIC_USER")?;
    let password = env.read_file_at("PUSHFLEET_BASIC_PASSWORD_FILE")?;
    let ok = http
        .get(&url)
        .basic_auth(&user, Some(&password))
        .send()
        .await?;
    assert_eq!(ok.status(), StatusCode::OK);

    let wrong = http
        .get(&url)
        .basic_auth(&user, Some(format!("{password}x")))
        .send()
        .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn basic_registry_accepts_the_odd_password_whose_auth_json_has_plus_and_slash() -> Result<()>
{
    let env = StackEnv::load()?;
    let http = client()?;
    let user = env.get("PUSHFLEET_ODD_USER")?;
    let password = env.read_file_at("PUSHFLEET_ODD_PASSWORD_FILE")?;
    assert!(
        password.contains("??????") && password.contains(">>>>>>"),
        "odd password: {password}"
    );
    // What X-Registry-Auth carries: standard base64 of this JSON has '+' and '/', which
    // base64url does not (the bollard trap the worker must handle).
    let auth_json = serde_json::to_string(&json!({"username": user, "password": password}))?;
    let encoded = STANDARD.encode(auth_json);
    assert!(
        encoded.contains('+') && encoded.contains('/'),
        "encoded: {encoded}"
    );

    let url = format!("http://{}/v2/", env.get("PUSHFLEET_BASIC_REGISTRY")?);
    let ok = http
        .get(&url)
        .basic_auth(&user, Some(&password))
        .send()
        .await?;
    assert_eq!(ok.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn token_registry_challenges_with_bearer_realm_and_service() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let url = format!("http://{}/v2/", env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let response = http.get(&url).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let expected = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        env.get("PUSHFLEET_TOKEN_SERVER")?,
        env.get("PUSHFLEET_TOKEN_SERVICE")?
    );
    assert_eq!(challenge(&response), expected);
    Ok(())
}

#[tokio::test]
async fn pusher_gets_push_in_its_namespace_and_the_registry_accepts_an_upload() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let pusher = token_user(&env, "PUSHER")?;
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);

    let (token, claims) = grant_token(
        &env,
        &http,
        Some(&pusher),
        &[format!("repository:{repo}:push,pull")],
    )
    .await?;
    assert_eq!(claims["sub"], json!(pusher.0));
    assert_eq!(
        claims["aud"],
        json!(env.get("PUSHFLEET_TOKEN_SERVICE")?),
        "aud must be a string"
    );
    assert_eq!(claims["iss"], json!(env.get("PUSHFLEET_TOKEN_ISSUER")?));
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": repo, "actions": ["push", "pull"]}])
    );

    let upload = start_upload(&env, &http, &repo, &token).await?;
    assert_eq!(
        upload.status(),
        StatusCode::ACCEPTED,
        "challenge: {}",
        challenge(&upload)
    );
    let location = upload
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("202 without Location")?
        .to_owned();
    assert!(upload.headers().contains_key("docker-upload-uuid"));

    // Cancelling the upload needs `delete` (or `*`): pusher's token lacks it, admin's has it.
    let registry = format!("http://{}", env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let location = if location.starts_with('/') {
        format!("{registry}{location}")
    } else {
        location
    };
    let refused = http.delete(&location).bearer_auth(&token).send().await?;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let admin = token_user(&env, "ADMIN")?;
    let (admin_token, admin_claims) =
        grant_token(&env, &http, Some(&admin), &[format!("repository:{repo}:*")]).await?;
    assert_eq!(
        admin_claims["access"],
        json!([{"type": "repository", "name": repo, "actions": ["*"]}])
    );
    let cancelled = http
        .delete(&location)
        .bearer_auth(&admin_token)
        .send()
        .await?;
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    Ok(())
}

#[tokio::test]
async fn pusher_outside_its_namespace_gets_pull_only_and_the_upload_is_refused() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let pusher = token_user(&env, "PUSHER")?;
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    // Another namespace, and one that merely starts with the same letters (`team-ab/`).
    for repo in [
        unique_repo("elsewhere"),
        unique_repo(&format!("{namespace}b")),
    ] {
        let (token, claims) = grant_token(
            &env,
            &http,
            Some(&pusher),
            &[format!("repository:{repo}:push,pull")],
        )
        .await?;
        assert_eq!(
            claims["access"],
            json!([{"type": "repository", "name": repo, "actions": ["pull"]}]),
            "push must not be granted on {repo}"
        );
        let upload = start_upload(&env, &http, &repo, &token).await?;
        assert_insufficient_scope(&upload, &repo);
    }
    Ok(())
}

#[tokio::test]
async fn reader_gets_pull_only_and_the_upload_is_refused() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let reader = token_user(&env, "READER")?;
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);
    let (token, claims) = grant_token(
        &env,
        &http,
        Some(&reader),
        &[format!("repository:{repo}:push,pull")],
    )
    .await?;
    assert_eq!(claims["sub"], json!(reader.0));
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": repo, "actions": ["pull"]}])
    );
    let upload = start_upload(&env, &http, &repo, &token).await?;
    assert_insufficient_scope(&upload, &repo);
    Ok(())
}

#[tokio::test]
async fn token_server_refuses_a_wrong_password_with_401() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let (name, password) = token_user(&env, "PUSHER")?;
    let wrong = (name, format!("{password}-wrong"));
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);
    let response = request_token(
        &env,
        &http,
        Some(&wrong),
        &[format!("repository:{repo}:push,pull")],
    )
    .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&response).starts_with("Basic "),
        "challenge: {}",
        challenge(&response)
    );
    let body: Value = response.json().await?;
    assert_eq!(
        body["errors"][0]["code"],
        json!("UNAUTHORIZED"),
        "body: {body}"
    );
    assert!(
        body.get("token").is_none(),
        "no token on a wrong password: {body}"
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_token_has_empty_access_and_cannot_upload() -> Result<()> {
    let env = StackEnv::load()?;
    let http = client()?;
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);
    let (token, claims) =
        grant_token(&env, &http, None, &[format!("repository:{repo}:push,pull")]).await?;
    assert_eq!(claims["access"], json!([]));
    assert_eq!(claims["sub"], json!(""));

    // The registry accepts the token itself (signature, x5c, iss, aud) ...
    let base = format!("http://{}/v2/", env.get("PUSHFLEET_TOKEN_REGISTRY")?);
    let root = http.get(&base).bearer_auth(&token).send().await?;
    assert_eq!(
        root.status(),
        StatusCode::OK,
        "challenge: {}",
        challenge(&root)
    );
    // ... but it grants nothing.
    let upload = start_upload(&env, &http, &repo, &token).await?;
    assert_insufficient_scope(&upload, &repo);
    Ok(())
}
