//! The worker's registry client (`pushfleet_worker::registry`) against the stack's real
//! registries: "basic" (htpasswd) and "token" (distribution with `auth: token:` and
//! `pushfleet-token-server`), plus a TLS registry each TLS test starts for itself.
//!
//! What is checked: the preflight answers (ok, wrong password, no credentials, no push right,
//! nothing listening, untrusted certificate) map to the right error codes; a second preflight
//! is served from the cache without a single request; `manifest_digest` finds what was pushed
//! (also an OCI index, which distribution 2.8 only shows with the right `Accept`) and answers
//! `None` for a missing tag; no error text ever holds a password or token.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum::http::Method;
use pushfleet_shared::ErrorCode;
use pushfleet_tests::StackEnv;
use pushfleet_tests::proxy::FlakyRegistry;
use pushfleet_worker::failure::Coded;
use pushfleet_worker::registry::{
    AuthScheme, Credentials, ExposeSecret, PreflightMethod, RegistryClient, RegistryEndpoint,
    RegistryError,
};
use reqwest::Url;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The client of the stack registry at `PUSHFLEET_<which>_REGISTRY` (host:port).
fn stack_client(env: &StackEnv, which: &str) -> Result<RegistryClient> {
    let host = env.get(&format!("PUSHFLEET_{which}_REGISTRY"))?;
    let endpoint = RegistryEndpoint {
        key: which.to_ascii_lowercase(),
        base_url: Url::parse(&format!("http://{host}"))?,
        ca_pem: None,
    };
    Ok(RegistryClient::new(endpoint)?)
}

/// A client of the stack registry `which` through a recording proxy, and the proxy.
async fn proxied_client(env: &StackEnv, which: &str) -> Result<(RegistryClient, FlakyRegistry)> {
    let host = env.get(&format!("PUSHFLEET_{which}_REGISTRY"))?;
    let proxy = FlakyRegistry::passthrough(&host).await?;
    let endpoint = RegistryEndpoint {
        key: which.to_ascii_lowercase(),
        base_url: Url::parse(&format!("http://{}", proxy.addr))?,
        ca_pem: None,
    };
    Ok((RegistryClient::new(endpoint)?, proxy))
}

/// The login of `PUSHFLEET_<prefix>_USER` / `_PASSWORD_FILE`, and the password for leak checks.
fn login(env: &StackEnv, prefix: &str) -> Result<(Credentials, String)> {
    let user = env.get(&format!("PUSHFLEET_{prefix}_USER"))?;
    let password = env.read_file_at(&format!("PUSHFLEET_{prefix}_PASSWORD_FILE"))?;
    ensure!(!password.is_empty(), "empty password for {prefix}");
    Ok((Credentials::new(user, password.clone()), password))
}

/// Fails if the error's Display, Debug or event text holds one of `secrets`.
fn assert_no_secret(err: &RegistryError, secrets: &[&str]) -> Result<()> {
    let event = err.to_event_error();
    let texts = [
        err.to_string(),
        format!("{err:?}"),
        event.message.clone(),
        event.hint.clone(),
    ];
    for secret in secrets {
        for text in &texts {
            ensure!(
                !text.contains(secret),
                "a secret leaked into an error text: {text}"
            );
        }
    }
    Ok(())
}

/// The error of `result`, or a failure naming what was expected.
fn expect_err<T: std::fmt::Debug>(
    result: Result<T, RegistryError>,
    what: &str,
) -> Result<RegistryError> {
    match result {
        Ok(v) => bail!("expected {what}, got Ok({v:?})"),
        Err(e) => Ok(e),
    }
}

fn unique_repo(namespace: &str) -> String {
    format!("{namespace}/{}", pushfleet_tests::unique("rc"))
}

#[tokio::test]
async fn basic_registry_right_password_then_cached() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "BASIC")?;
    let (login, _) = login(&env, "BASIC")?;
    let repo = unique_repo("production");

    let first = client.preflight_push(&repo, Some(&login)).await?;
    ensure!(
        !first.cached(),
        "first preflight cannot come from the cache"
    );
    ensure!(first.method == PreflightMethod::UploadProbe, "{first:?}");
    ensure!(first.scheme() == AuthScheme::Basic, "{first:?}");
    // GET /v2/, GET /v2/ with credentials, POST upload, PUT completing it.
    ensure!(
        client.request_count() == 4,
        "requests: {}",
        client.request_count()
    );

    let second = client.preflight_push(&repo, Some(&login)).await?;
    ensure!(
        second.cached(),
        "second preflight must be served from the cache"
    );
    ensure!(
        client.request_count() == 4,
        "a cached preflight sent a request"
    );

    // Another repository reuses the cached challenge, not the repository's access.
    let other = client
        .preflight_push(&unique_repo("production"), Some(&login))
        .await?;
    ensure!(!other.cached());
    ensure!(
        client.request_count() == 7,
        "requests: {}",
        client.request_count()
    );

    client.invalidate(&repo);
    let again = client.preflight_push(&repo, Some(&login)).await?;
    ensure!(!again.cached(), "invalidate must drop the cached access");
    Ok(())
}

#[tokio::test]
async fn basic_registry_password_with_base64_specials_works() -> Result<()> {
    // The "odd" user's password encodes to base64 with `+` and `/` (bollard's X-Registry-Auth
    // trap); the registry API takes standard base64 in Basic auth.
    let env = StackEnv::load()?;
    let client = stack_client(&env, "BASIC")?;
    let (login, _) = login(&env, "ODD")?;
    let access = client
        .preflight_push(&unique_repo("odd"), Some(&login))
        .await?;
    ensure!(access.scheme() == AuthScheme::Basic);
    Ok(())
}

#[tokio::test]
async fn basic_registry_wrong_password_is_auth_failed() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "BASIC")?;
    let (good, real_password) = login(&env, "BASIC")?;
    let wrong_password = format!("{real_password}-wrong");
    let wrong = Credentials::new(good.username.clone(), wrong_password.clone());
    let repo = unique_repo("production");

    let err = expect_err(
        client.preflight_push(&repo, Some(&wrong)).await,
        "auth failure",
    )?;
    ensure!(err.code() == ErrorCode::RegistryAuthFailed, "{err}");
    ensure!(!err.is_retryable());
    let text = err.to_string();
    ensure!(
        text.contains("registry `basic`") && text.contains(&repo),
        "{text}"
    );
    ensure!(text.contains(&good.username), "{text}");
    assert_no_secret(&err, &[&real_password, &wrong_password])?;

    // A failure is not cached: the right password works right after.
    client.preflight_push(&repo, Some(&good)).await?;
    Ok(())
}

#[tokio::test]
async fn basic_registry_without_login_is_credentials_missing() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "BASIC")?;
    let err = expect_err(
        client
            .preflight_push(&unique_repo("production"), None)
            .await,
        "missing credentials",
    )?;
    ensure!(err.code() == ErrorCode::RegistryCredentialsMissing, "{err}");
    ensure!(err.to_string().contains("Basic"), "{err}");
    Ok(())
}

#[tokio::test]
async fn token_registry_pusher_in_own_namespace_then_cached() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (login, _) = login(&env, "TOKEN_PUSHER")?;
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let repo = unique_repo(&namespace);

    let first = client.preflight_push(&repo, Some(&login)).await?;
    ensure!(first.method == PreflightMethod::TokenClaims, "{first:?}");
    ensure!(first.scheme() == AuthScheme::Bearer, "{first:?}");
    // GET /v2/ and the token: its access claim grants push, no upload is opened.
    ensure!(
        client.request_count() == 2,
        "requests: {}",
        client.request_count()
    );

    let second = client.preflight_push(&repo, Some(&login)).await?;
    ensure!(
        second.method == PreflightMethod::Cached,
        "second preflight must be served from the cache"
    );
    ensure!(
        client.request_count() == 2,
        "a cached preflight sent a request"
    );
    ensure!(second.valid_until() == first.valid_until());

    // The token is usable for the manifest check with no further token request.
    ensure!(
        client
            .manifest_digest(&repo, "missing", Some(&login))
            .await?
            .is_none()
    );
    ensure!(
        client.request_count() == 3,
        "requests: {}",
        client.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn token_registry_admin_may_push_anywhere() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (login, _) = login(&env, "TOKEN_ADMIN")?;
    let access = client
        .preflight_push(&unique_repo("other-ns"), Some(&login))
        .await?;
    ensure!(access.scheme() == AuthScheme::Bearer);
    Ok(())
}

#[tokio::test]
async fn token_registry_pusher_in_other_namespace_is_insufficient_scope() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (login, password) = login(&env, "TOKEN_PUSHER")?;
    let repo = unique_repo("other-ns");
    let err = expect_err(
        client.preflight_push(&repo, Some(&login)).await,
        "no push right",
    )?;
    ensure!(err.code() == ErrorCode::RegistryInsufficientScope, "{err}");
    ensure!(!err.is_retryable());
    let text = err.to_string();
    ensure!(text.contains(&repo) && text.contains("pusher"), "{text}");
    ensure!(text.contains("access claim"), "{text}");
    assert_no_secret(&err, &[&password])?;
    Ok(())
}

#[tokio::test]
async fn token_registry_reader_is_insufficient_scope() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (login, password) = login(&env, "TOKEN_READER")?;
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let repo = unique_repo(&namespace);
    let err = expect_err(
        client.preflight_push(&repo, Some(&login)).await,
        "no push right",
    )?;
    ensure!(err.code() == ErrorCode::RegistryInsufficientScope, "{err}");
    assert_no_secret(&err, &[&password])?;
    // Pull is allowed: the manifest check works for the reader.
    ensure!(
        client
            .manifest_digest(&repo, "1.0", Some(&login))
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn token_registry_wrong_password_is_auth_failed() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (good, real_password) = login(&env, "TOKEN_PUSHER")?;
    let wrong_password = format!("x{real_password}");
    let wrong = Credentials::new(good.username.clone(), wrong_password.clone());
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let err = expect_err(
        client
            .preflight_push(&unique_repo(&namespace), Some(&wrong))
            .await,
        "auth failure",
    )?;
    ensure!(err.code() == ErrorCode::RegistryAuthFailed, "{err}");
    ensure!(err.to_string().contains("token request"), "{err}");
    assert_no_secret(&err, &[&real_password, &wrong_password])?;
    Ok(())
}

#[tokio::test]
async fn token_registry_anonymous_is_credentials_missing() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let repo = unique_repo(&namespace);
    // The token server gives anonymous callers a token without access: refused from its claims.
    let err = expect_err(
        client.preflight_push(&repo, None).await,
        "missing credentials",
    )?;
    ensure!(err.code() == ErrorCode::RegistryCredentialsMissing, "{err}");
    // The same for reading: 401 once, a fresh token, 401 again.
    let err = expect_err(
        client.manifest_digest(&repo, "1.0", None).await,
        "missing credentials",
    )?;
    ensure!(err.code() == ErrorCode::RegistryCredentialsMissing, "{err}");
    // GET /v2/, token (empty access: no upload); then token, HEAD (401), and the one retry
    // with fresh auth: GET /v2/, token, HEAD (401).
    ensure!(
        client.request_count() == 7,
        "requests: {}",
        client.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn nothing_listening_is_unreachable_and_retryable() -> Result<()> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let client = RegistryClient::new(RegistryEndpoint {
        key: "gone".into(),
        base_url: Url::parse(&format!("http://127.0.0.1:{port}"))?,
        ca_pem: None,
    })?;
    let login = Credentials::new("u", "some-password");
    let err = expect_err(
        client.preflight_push("team/app", Some(&login)).await,
        "unreachable",
    )?;
    ensure!(err.code() == ErrorCode::RegistryUnreachable, "{err}");
    ensure!(err.is_retryable() && err.code().retryable());
    let text = err.to_event_error().message;
    ensure!(
        text.contains("registry `gone`") && text.contains("team/app"),
        "{text}"
    );
    ensure!(text.to_ascii_lowercase().contains("connect"), "{text}");
    assert_no_secret(&err, &["some-password"])?;
    let err = expect_err(
        client.manifest_digest("team/app", "1", None).await,
        "unreachable",
    )?;
    ensure!(err.code() == ErrorCode::RegistryUnreachable, "{err}");
    Ok(())
}

/// An empty OCI index: a manifest distribution accepts without any blob, and one it only
/// shows to a client that accepts `application/vnd.oci.image.index.v1+json`.
const EMPTY_INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// PUTs [`EMPTY_INDEX`] as `repo:tag` with the given `Authorization` value; returns the digest
/// the registry reported.
async fn put_index(host: &str, repo: &str, tag: &str, authorization: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let response = http
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .header("Authorization", authorization)
        .body(EMPTY_INDEX)
        .send()
        .await?;
    ensure!(
        response.status().as_u16() == 201,
        "PUT manifest: {}",
        response.status()
    );
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .context("PUT manifest answered without Docker-Content-Digest")?;
    Ok(digest.to_owned())
}

#[tokio::test]
async fn manifest_digest_finds_pushed_oci_index_and_none_for_missing_tag() -> Result<()> {
    use base64::Engine as _;
    let env = StackEnv::load()?;

    // Basic registry.
    let client = stack_client(&env, "BASIC")?;
    let (login, password) = login(&env, "BASIC")?;
    let repo = unique_repo("production");
    ensure!(
        client
            .manifest_digest(&repo, "1.0", Some(&login))
            .await?
            .is_none()
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", login.username))
    );
    let host = env.get("PUSHFLEET_BASIC_REGISTRY")?;
    let pushed = put_index(&host, &repo, "1.0", &basic).await?;
    let found = client.manifest_digest(&repo, "1.0", Some(&login)).await?;
    ensure!(
        found.as_deref() == Some(pushed.as_str()),
        "{found:?} != {pushed}"
    );
    ensure!(
        client
            .manifest_digest(&repo, "2.0", Some(&login))
            .await?
            .is_none()
    );
    let by_digest = client.manifest_digest(&repo, &pushed, Some(&login)).await?;
    ensure!(
        by_digest.as_deref() == Some(pushed.as_str()),
        "{by_digest:?}"
    );

    // Token registry: push with the token the preflight proved, read as another user.
    let client = stack_client(&env, "TOKEN")?;
    let (pusher, _) = self::login(&env, "TOKEN_PUSHER")?;
    let (reader, _) = self::login(&env, "TOKEN_READER")?;
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);
    let access = client.preflight_push(&repo, Some(&pusher)).await?;
    let header = access.authorization_header().context("a Bearer header")?;
    let host = env.get("PUSHFLEET_TOKEN_REGISTRY")?;
    let pushed = put_index(&host, &repo, "v1", header.expose_secret()).await?;
    for who in [&pusher, &reader] {
        let found = client.manifest_digest(&repo, "v1", Some(who)).await?;
        ensure!(
            found.as_deref() == Some(pushed.as_str()),
            "{who:?}: {found:?} != {pushed}"
        );
    }
    ensure!(
        client
            .manifest_digest(&repo, "v2", Some(&reader))
            .await?
            .is_none()
    );
    Ok(())
}

/// A TLS registry (distribution, in-memory storage) on a free port with a certificate for
/// `IP:127.0.0.1` signed by a fresh CA. Killed on drop; its files are removed.
struct TlsRegistry {
    _child: tokio::process::Child,
    dir: PathBuf,
    port: u16,
    ca_pem: Vec<u8>,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TlsRegistry {
    async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(pushfleet_tests::unique("pushfleet-tls-registry"));
        std::fs::create_dir_all(&dir)?;
        let openssl = "openssl";
        run(
            &dir,
            openssl,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=pushfleet-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
        .await?;
        run(
            &dir,
            openssl,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        )
        .await?;
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        run(
            &dir,
            openssl,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.crt",
                "-days",
                "1",
                "-extfile",
                "leaf.ext",
            ],
        )
        .await?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let config = format!(
            "version: 0.1\nlog: {{ level: info }}\nstorage: {{ inmemory: {{}} }}\nhttp:\n  \
             addr: 127.0.0.1:{port}\n  tls: {{ certificate: {0}/leaf.crt, key: {0}/leaf.key }}\n",
            dir.display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let mut child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start docker-registry")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let ca_pem = std::fs::read(dir.join("ca.crt"))?;
        let registry = Self {
            _child: child,
            dir,
            port,
            ca_pem,
        };
        // Ready when it says so (no polling, no sleeping).
        let mut lines = BufReader::new(stderr).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("listening on") {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        ensure!(
            matches!(ready, Ok(Ok(true))),
            "the TLS registry did not start: {ready:?}"
        );
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(registry)
    }

    fn endpoint(&self, host: &str, ca: bool) -> Result<RegistryEndpoint> {
        Ok(RegistryEndpoint {
            key: "tls".into(),
            base_url: Url::parse(&format!("https://{host}:{}", self.port))?,
            ca_pem: ca.then(|| self.ca_pem.clone()),
        })
    }
}

#[tokio::test]
async fn tls_registry_needs_its_ca_and_the_right_name() -> Result<()> {
    let registry = TlsRegistry::start().await?;

    // Without the CA: not trusted, and not retryable (it will not fix itself).
    let client = RegistryClient::new(registry.endpoint("127.0.0.1", false)?)?;
    let err = expect_err(client.preflight_push("team/app", None).await, "TLS failure")?;
    ensure!(err.code() == ErrorCode::RegistryTlsFailed, "{err:?}");
    ensure!(!err.is_retryable());
    ensure!(err.to_string().contains("UnknownIssuer"), "{err}");

    // With the CA: the (open) registry accepts the upload probe.
    let client = RegistryClient::new(registry.endpoint("127.0.0.1", true)?)?;
    let access = client.preflight_push("team/app", None).await?;
    ensure!(access.scheme() == AuthScheme::Anonymous);
    ensure!(
        client
            .manifest_digest("team/app", "1.0", None)
            .await?
            .is_none()
    );

    // With the CA but another name than the certificate's: not valid for that name.
    let client = RegistryClient::new(registry.endpoint("localhost", true)?)?;
    let err = expect_err(client.preflight_push("team/app", None).await, "wrong name")?;
    ensure!(err.code() == ErrorCode::RegistryTlsFailed, "{err:?}");
    ensure!(err.to_string().contains("not valid for name"), "{err}");

    // Plain http to the TLS port: the server answers 400, which is no registry answer.
    let client = RegistryClient::new(RegistryEndpoint {
        key: "tls".into(),
        base_url: Url::parse(&format!("http://127.0.0.1:{}", registry.port))?,
        ca_pem: None,
    })?;
    let err = expect_err(
        client.preflight_push("team/app", None).await,
        "protocol error",
    )?;
    ensure!(err.code() == ErrorCode::PushFailed, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn token_registry_preflight_opens_no_upload_session() -> Result<()> {
    let env = StackEnv::load()?;
    let (client, proxy) = proxied_client(&env, "TOKEN").await?;
    let namespace = env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?;
    let (pusher, _) = login(&env, "TOKEN_PUSHER")?;
    let (reader, _) = login(&env, "TOKEN_READER")?;
    let granted = client
        .preflight_push(&unique_repo(&namespace), Some(&pusher))
        .await?;
    ensure!(
        granted.method == PreflightMethod::TokenClaims,
        "{granted:?}"
    );
    // The read-only user is refused from the token's claims alone, with the usual code.
    let err = expect_err(
        client
            .preflight_push(&unique_repo(&namespace), Some(&reader))
            .await,
        "no push right",
    )?;
    ensure!(err.code() == ErrorCode::RegistryInsufficientScope, "{err}");
    ensure!(
        proxy.count(&Method::POST, "/v2/") == 0,
        "an upload session was opened"
    );
    ensure!(proxy.count(&Method::GET, "/v2/") == 1, "one ping, cached");
    Ok(())
}

#[tokio::test]
async fn basic_registry_probes_once_per_repository_and_leaves_no_session() -> Result<()> {
    let env = StackEnv::load()?;
    let (client, proxy) = proxied_client(&env, "BASIC").await?;
    let (login, _) = login(&env, "BASIC")?;
    let repo = unique_repo("production");
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    // Eight jobs start together, then one more comes later: one probe for all of them.
    let concurrent =
        futures_util::future::join_all((0..8).map(|_| client.preflight_push(&repo, Some(&login))))
            .await;
    let mut methods = Vec::new();
    for result in concurrent {
        methods.push(result?.method);
    }
    methods.push(client.preflight_push(&repo, Some(&login)).await?.method);
    let probes = methods
        .iter()
        .filter(|m| **m == PreflightMethod::UploadProbe)
        .count();
    ensure!(probes == 1, "{methods:?}");
    ensure!(
        methods
            .iter()
            .filter(|m| **m == PreflightMethod::Cached)
            .count()
            == 8,
        "{methods:?}"
    );
    ensure!(
        proxy.count(&Method::POST, &uploads) == 1,
        "one upload probe"
    );
    // The session the registry opened was completed (PUT, 201), not abandoned or cancelled.
    ensure!(
        proxy.count(&Method::PUT, &uploads) == 1,
        "the probe upload is completed"
    );
    ensure!(
        proxy.count(&Method::DELETE, &uploads) == 0,
        "nothing left to cancel"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_cold_preflights_on_the_token_registry_share_one_token() -> Result<()> {
    let env = StackEnv::load()?;
    let client = stack_client(&env, "TOKEN")?;
    let (login, _) = login(&env, "TOKEN_PUSHER")?;
    let repo = unique_repo(&env.get("PUSHFLEET_TOKEN_PUSHER_NAMESPACE")?);
    let all =
        futures_util::future::join_all((0..16).map(|_| client.preflight_push(&repo, Some(&login))))
            .await;
    let mut claims = 0;
    for result in all {
        if result?.method == PreflightMethod::TokenClaims {
            claims += 1;
        }
    }
    ensure!(claims == 1, "{claims} preflights read a token");
    // One GET /v2/ and one token request for all sixteen.
    ensure!(
        client.request_count() == 2,
        "requests: {}",
        client.request_count()
    );
    Ok(())
}
