//! The client against canned HTTP answers on loopback (the real registries are exercised by
//! `tests/stack/registry_client.rs`).

use super::auth::basic_header;
use super::challenge::Challenge;
use super::*;
use crate::failure::Coded;
use pushfleet_shared::ErrorCode;

fn endpoint(url: &str) -> RegistryEndpoint {
    RegistryEndpoint {
        key: "local".into(),
        base_url: Url::parse(url).expect("url"),
        ca_pem: None,
    }
}

#[test]
fn endpoint_urls_are_checked() {
    assert!(RegistryClient::new(endpoint("http://127.0.0.1:5001")).is_ok());
    assert!(RegistryClient::new(endpoint("https://registry.example.com/")).is_ok());
    for bad in [
        "ftp://x",
        "http://127.0.0.1:5001/prefix",
        "http://127.0.0.1:5001/?q=1",
        "https://user:pa55word@registry.example.com",
    ] {
        let e = RegistryClient::new(endpoint(bad)).expect_err(bad);
        assert_eq!(e.code(), ErrorCode::PushFailed, "{bad}");
        assert!(!e.to_string().contains("pa55word"), "{e}");
        assert!(!format!("{e:?}").contains("pa55word"), "{e:?}");
    }
    let mut with_bad_ca = endpoint("https://registry.example.com");
    with_bad_ca.ca_pem = Some(b"not a certificate".to_vec());
    let e = RegistryClient::new(with_bad_ca).expect_err("bad CA");
    assert!(e.to_string().contains("CA bundle"), "{e}");
    assert!(RegistryClient::with_timeout(endpoint("http://x:1"), Duration::ZERO).is_err());
}

#[test]
fn secrets_stay_out_of_debug() {
    let login = Credentials::new("bob", SecretString::from("hunter2-pw"));
    assert!(!format!("{login:?}").contains("hunter2"));
    let access = PushAccess {
        authorization: Authorization::Bearer("tok-123456".into()),
        valid_until: Instant::now(),
        method: PreflightMethod::TokenClaims,
    };
    assert!(!format!("{access:?}").contains("tok-123456"));
    assert_eq!(access.scheme(), AuthScheme::Bearer);
    assert_eq!(
        access
            .authorization_header()
            .map(|h| h.expose_secret().to_owned())
            .as_deref(),
        Some("Bearer tok-123456")
    );
    assert_eq!(
        basic_header(&login).expose_secret(),
        "Basic Ym9iOmh1bnRlcjItcHc="
    );
}

/// A one-shot HTTP server on loopback: answers each accepted connection with the next
/// canned response and records the request heads.
async fn canned_server(responses: Vec<String>) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let mut seen = Vec::new();
        for response in responses {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let Ok(n) = socket.read(&mut buf).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            seen.push(String::from_utf8_lossy(&head).into_owned());
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        seen
    });
    (Url::parse(&format!("http://{addr}")).expect("url"), handle)
}

fn reply(status: &str, headers: &[&str], body: &str) -> String {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

#[tokio::test]
async fn rate_limit_on_ping_carries_retry_after() {
    let (url, server) = canned_server(vec![reply(
        "429 Too Many Requests",
        &["Retry-After: 17"],
        "",
    )])
    .await;
    let client = RegistryClient::new(RegistryEndpoint {
        key: "hub".into(),
        base_url: url,
        ca_pem: None,
    })
    .expect("client");
    let e = client
        .preflight_push("team/app", None)
        .await
        .expect_err("429");
    assert_eq!(e.code(), ErrorCode::RegistryRateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));
    assert!(e.is_retryable());
    // The runner sees the wait through the failure it builds from the error.
    let failure = crate::failure::JobFailure::from(&e);
    assert_eq!(failure.retry_after, Some(Duration::from_secs(17)));
    assert!(
        e.to_string().contains("registry `hub`") && e.to_string().contains("team/app"),
        "{e}"
    );
    server.await.expect("server");
}

#[tokio::test]
async fn server_error_is_unreachable_and_unparsable_challenge_is_push_failed() {
    let (url, server) = canned_server(vec![
        reply("503 Service Unavailable", &[], "maintenance"),
        reply(
            "401 Unauthorized",
            &["WWW-Authenticate: Bearer realm=\"unterminated"],
            "",
        ),
        reply("404 Not Found", &[], "<html>nope</html>"),
    ])
    .await;
    let client = RegistryClient::new(RegistryEndpoint {
        key: "k".into(),
        base_url: url,
        ca_pem: None,
    })
    .expect("client");
    let e = client.preflight_push("a/b", None).await.expect_err("503");
    assert_eq!(e.code(), ErrorCode::RegistryUnreachable);
    assert!(e.to_string().contains("HTTP 503: maintenance"), "{e}");
    let e = client
        .preflight_push("a/b", None)
        .await
        .expect_err("bad challenge");
    assert_eq!(e.code(), ErrorCode::PushFailed);
    assert!(e.to_string().contains("unterminated quoted string"), "{e}");
    let e = client.preflight_push("a/b", None).await.expect_err("404");
    assert_eq!(e.code(), ErrorCode::PushFailed);
    assert!(!e.is_retryable());
    server.await.expect("server");
}

#[tokio::test]
async fn open_registry_probe_completes_its_upload_then_cache() {
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], "{}"),
        reply(
            "202 Accepted",
            &["Location: /v2/a/b/blobs/uploads/123?_state=x"],
            "",
        ),
        reply("201 Created", &[], ""),
    ])
    .await;
    let client = RegistryClient::new(RegistryEndpoint {
        key: "k".into(),
        base_url: url,
        ca_pem: None,
    })
    .expect("client");
    let first = client.preflight_push("a/b", None).await.expect("ok");
    assert_eq!(first.method, PreflightMethod::UploadProbe);
    assert_eq!(first.scheme(), AuthScheme::Anonymous);
    assert_eq!(client.request_count(), 3);
    let second = client.preflight_push("a/b", None).await.expect("cached");
    assert_eq!(second.method, PreflightMethod::Cached);
    assert!(second.cached());
    assert_eq!(
        client.request_count(),
        3,
        "no request for a cached preflight"
    );
    let seen = server.await.expect("server");
    assert!(seen[0].starts_with("GET /v2/ "), "{}", seen[0]);
    let post = format!(
        "POST /v2/a/b/blobs/uploads/?digest={} ",
        probe::PROBE_DIGEST
    );
    assert!(seen[1].starts_with(&post), "{}", seen[1]);
    assert!(
        seen[1]
            .to_ascii_lowercase()
            .contains("content-length: 2\r\n"),
        "{}",
        seen[1]
    );
    let put = format!(
        "PUT /v2/a/b/blobs/uploads/123?_state=x&digest={} ",
        probe::PROBE_DIGEST.replace(':', "%3A")
    );
    assert!(seen[2].starts_with(&put), "{}", seen[2]);
    client.invalidate("a/b");
    // The server is gone: a fresh preflight must go to the network and fail.
    let e = client
        .preflight_push("a/b", None)
        .await
        .expect_err("server gone");
    assert_eq!(e.code(), ErrorCode::RegistryUnreachable);
}

#[tokio::test]
async fn single_request_upload_needs_no_second_request_and_a_failed_put_is_cancelled() {
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], "{}"),
        reply("201 Created", &[], ""),
        reply(
            "202 Accepted",
            &["Location: /v2/a/c/blobs/uploads/9?_state=y"],
            "",
        ),
        reply("400 Bad Request", &[], "digest invalid"),
        reply("204 No Content", &[], ""),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let one = client.preflight_push("a/b", None).await.expect("201");
    assert_eq!(one.method, PreflightMethod::UploadProbe);
    assert_eq!(client.request_count(), 2);
    let two = client.preflight_push("a/c", None).await.expect("202");
    assert_eq!(two.method, PreflightMethod::UploadProbe);
    let seen = server.await.expect("server");
    assert!(
        seen[3].starts_with("PUT /v2/a/c/blobs/uploads/9?"),
        "{}",
        seen[3]
    );
    assert!(
        seen[4].starts_with("DELETE /v2/a/c/blobs/uploads/9?_state=y "),
        "{}",
        seen[4]
    );
}

/// A JWT-shaped token (unsigned: the client does not verify) with `access`.
fn token_with(access: serde_json::Value) -> String {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = serde_json::json!({ "iss": "t", "access": access });
    let token = format!(
        "{}.{}.c2ln",
        enc.encode(br#"{"alg":"RS256"}"#),
        enc.encode(payload.to_string())
    );
    serde_json::json!({ "token": token, "expires_in": 300 }).to_string()
}

#[tokio::test]
async fn token_claims_decide_without_an_upload() {
    let challenge = "WWW-Authenticate: Bearer realm=\"/token\",service=\"reg\"";
    let (url, server) = canned_server(vec![
        reply("401 Unauthorized", &[challenge], ""),
        reply(
            "200 OK",
            &[],
            &token_with(serde_json::json!([
                {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
            ])),
        ),
        reply(
            "200 OK",
            &[],
            &token_with(serde_json::json!([
                {"type": "repository", "name": "team/ro", "actions": ["pull"]}
            ])),
        ),
        reply("200 OK", &[], r#"{"token":"opaque-token"}"#),
        reply(
            "401 Unauthorized",
            &[challenge, "Content-Type: text/plain"],
            "no",
        ),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let login = Credentials::new("bob", SecretString::from("pw-secret"));
    let ok = client
        .preflight_push("team/app", Some(&login))
        .await
        .expect("granted by claims");
    assert_eq!(ok.method, PreflightMethod::TokenClaims);
    assert_eq!(ok.scheme(), AuthScheme::Bearer);
    assert_eq!(client.request_count(), 2, "ping and token only");
    let e = client
        .preflight_push("team/ro", Some(&login))
        .await
        .expect_err("pull only");
    assert_eq!(e.code(), ErrorCode::RegistryInsufficientScope);
    assert!(e.to_string().contains("access claim"), "{e}");
    assert_eq!(client.request_count(), 3, "refused from the claims alone");
    // An opaque token says nothing: the probe decides (here: 401 insufficient scope).
    let e = client
        .preflight_push("team/opaque", Some(&login))
        .await
        .expect_err("probe refused");
    assert_eq!(e.code(), ErrorCode::RegistryInsufficientScope);
    let seen = server.await.expect("server");
    assert!(
        seen[1].starts_with("GET /token?service=reg&scope=repository%3Ateam%2Fapp%3Apull%2Cpush "),
        "{}",
        seen[1]
    );
    assert!(
        seen[4].starts_with("POST /v2/team/opaque/blobs/uploads/?digest="),
        "{}",
        seen[4]
    );
}

#[tokio::test]
async fn concurrent_cold_preflights_of_one_repository_share_one() {
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], "{}"),
        reply("201 Created", &[], ""),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let all =
        futures_util::future::join_all((0..8).map(|_| client.preflight_push("a/b", None))).await;
    let methods: Vec<PreflightMethod> = all.into_iter().map(|r| r.expect("ok").method).collect();
    assert_eq!(client.request_count(), 2, "one ping and one probe for all");
    assert_eq!(
        methods
            .iter()
            .filter(|m| **m == PreflightMethod::UploadProbe)
            .count(),
        1,
        "{methods:?}"
    );
    assert_eq!(
        methods
            .iter()
            .filter(|m| **m == PreflightMethod::Cached)
            .count(),
        7,
        "{methods:?}"
    );
    server.await.expect("server");
}

#[tokio::test]
async fn manifest_head_sends_accept_and_reads_digest() {
    let digest = format!("sha256:{}", "b".repeat(64));
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], "{}"),
        reply("200 OK", &[&format!("Docker-Content-Digest: {digest}")], ""),
        reply("404 Not Found", &[], ""),
    ])
    .await;
    let client = RegistryClient::new(RegistryEndpoint {
        key: "k".into(),
        base_url: url,
        ca_pem: None,
    })
    .expect("client");
    assert_eq!(
        client
            .manifest_digest("a/b", "1.0", None)
            .await
            .expect("ok"),
        Some(digest)
    );
    assert_eq!(
        client
            .manifest_digest("a/b", "2.0", None)
            .await
            .expect("ok"),
        None
    );
    let seen = server.await.expect("server");
    assert!(
        seen[1].starts_with("HEAD /v2/a/b/manifests/1.0 "),
        "{}",
        seen[1]
    );
    let head = seen[1].to_ascii_lowercase();
    for media in [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        assert!(head.contains(media), "{media} in {head}");
    }
}

#[tokio::test]
async fn https_endpoint_refuses_http_realm() {
    // No network needed: the challenge is served from a primed cache.
    let client = RegistryClient::new(endpoint("https://registry.example.com")).expect("client");
    client.lock().put_ping(
        Some(Challenge::Bearer {
            realm: "http://auth.example.com/token".into(),
            service: Some("s".into()),
            scope: None,
            error: None,
        }),
        Instant::now(),
    );
    let login = Credentials::new("u", SecretString::from("pw-secret"));
    let e = client
        .preflight_push("a/b", Some(&login))
        .await
        .expect_err("insecure realm");
    assert!(
        matches!(e.kind(), ErrorKind::InsecureRealm { realm } if realm == "http://auth.example.com/token"),
        "{e:?}"
    );
    assert_eq!(client.request_count(), 0);
}

#[tokio::test]
async fn a_transient_manifest_read_is_asked_again_in_process() {
    let digest = "sha256:".to_owned() + &"a".repeat(64);
    let header = format!("Docker-Content-Digest: {digest}");
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], ""), // GET /v2/: no authentication
        reply(
            "500 Internal Server Error",
            &[],
            "invalid checksum digest format",
        ),
        reply("502 Bad Gateway", &[], ""),
        reply("200 OK", &[&header], ""),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let found = client
        .manifest_digest("team/app", "1.0", None)
        .await
        .expect("the third read succeeds");
    assert_eq!(found.as_deref(), Some(digest.as_str()));
    let heads = server.await.expect("server");
    let reads = heads
        .iter()
        .filter(|h| h.starts_with("HEAD /v2/team/app/manifests/1.0"))
        .count();
    assert_eq!(reads, 3, "{heads:#?}");
}

#[tokio::test]
async fn a_registry_that_keeps_failing_reads_fails_after_the_bounded_attempts() {
    let mut answers = vec![reply("200 OK", &[], "")];
    answers.extend((0..READ_ATTEMPTS).map(|_| reply("500 Internal Server Error", &[], "")));
    let (url, server) = canned_server(answers).await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let e = client
        .manifest_digest("team/app", "1.0", None)
        .await
        .expect_err("every read fails");
    assert_eq!(e.code(), ErrorCode::RegistryUnreachable);
    assert!(e.is_retryable(), "the broker's retry takes it from here");
    let heads = server.await.expect("server");
    assert_eq!(heads.len(), 1 + READ_ATTEMPTS, "{heads:#?}");
}

#[tokio::test]
async fn refusals_are_not_asked_again() {
    let (url, server) = canned_server(vec![
        reply("200 OK", &[], ""),
        reply("403 Forbidden", &[], ""),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let e = client
        .manifest_digest("team/app", "1.0", None)
        .await
        .expect_err("403");
    assert_eq!(e.code(), ErrorCode::RegistryDenied);
    assert_eq!(server.await.expect("server").len(), 2);
}

#[tokio::test]
async fn refusal_bodies_that_echo_the_password_or_the_authorization_are_scrubbed() {
    let login = Credentials::new("bob", SecretString::from("pw-secret-123"));
    let basic = basic_header(&login).expose_secret().to_owned();
    let echo = format!(
        r#"{{"errors":[{{"code":"DENIED","message":"you sent pw-secret-123 as {basic}"}}]}}"#
    );
    let (url, server) = canned_server(vec![
        reply(
            "401 Unauthorized",
            &["WWW-Authenticate: Basic realm=\"r\""],
            "",
        ),
        reply("200 OK", &[], "{}"),
        reply("403 Forbidden", &[], &echo),
        reply("200 OK", &[], "{}"),
        reply("201 Created", &[], ""),
        reply("418 I'm a teapot", &[], &echo),
    ])
    .await;
    let client = RegistryClient::new(endpoint(url.as_str())).expect("client");
    let denied = client
        .preflight_push("team/app", Some(&login))
        .await
        .expect_err("the probe is refused");
    assert_eq!(denied.kind(), &ErrorKind::Denied { status: 403 });
    let manifest = Manifest {
        digest: format!("sha256:{}", "c".repeat(64)),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        body: b"{}".to_vec(),
    };
    let odd = client
        .put_manifest("team/app", "1.0", &manifest, Some(&login))
        .await
        .expect_err("an answer outside the API");
    assert_eq!(odd.kind(), &ErrorKind::Protocol);
    for e in [denied, odd] {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains("pw-secret-123"), "{text}");
            assert!(!text.contains(basic.trim_start_matches("Basic ")), "{text}");
            assert!(
                text.contains("DENIED: you sent [REDACTED] as [REDACTED]"),
                "{text}"
            );
        }
    }
    assert_eq!(server.await.expect("server").len(), 6);
}
