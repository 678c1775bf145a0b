//! A reverse proxy in front of a real registry that injects one kind of answer ([`Fault`]):
//! a 500 to the first manifest read of each path, the way a registry under concurrent pushes of
//! one manifest sometimes does ("invalid checksum digest format"); Harbor's refusal of a
//! manifest `PUT` on an immutable tag (distribution has no immutable tags); or nothing
//! ([`FlakyRegistry::passthrough`]). Everything else (the daemon's uploads, the worker's other
//! requests) is streamed through unchanged, `Host` included, so the registry's `Location`
//! headers point back at the proxy. Every request's method and path is recorded, so a test can
//! count what a client really sent to the registry (upload sessions opened, completed,
//! cancelled).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt;
use tokio::task::JoinHandle;

/// Headers that belong to one hop, not to the request or response.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-connection",
];

/// What the proxy injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Nothing injected: every request is passed through (and recorded).
    None,
    /// A 500 to the first `HEAD`/`GET` of each manifest path.
    FirstManifestRead500,
    /// Harbor's answer to a manifest `PUT` on an immutable tag, for every `PUT` of
    /// `/v2/<any repository>/manifests/<tag>`: HTTP 412 with
    /// `{"errors":[{"code":"PRECONDITION","message":"Failed to process request due to
    /// '<repo>:<tag>' configured as immutable."}]}`.
    ImmutableTag(String),
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    fault: Fault,
    manifest_puts: Mutex<Vec<String>>,
    client: reqwest::Client,
    failed_once: Mutex<HashSet<String>>,
    seen: Mutex<Vec<(Method, String)>>,
    injected: AtomicUsize,
    forwarded: AtomicUsize,
}

/// The proxy, serving until dropped.
#[derive(Debug)]
pub struct FlakyRegistry {
    /// Where it listens (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FlakyRegistry {
    /// Starts a proxy to the registry at `upstream` (`host:port`, plain HTTP) that answers
    /// the first manifest read of each path with a 500.
    pub async fn start(upstream: &str) -> Result<Self> {
        Self::start_with(upstream, Fault::FirstManifestRead500).await
    }

    /// Starts a proxy to `upstream` that passes everything through unchanged.
    pub async fn passthrough(upstream: &str) -> Result<Self> {
        Self::start_with(upstream, Fault::None).await
    }

    /// Starts a proxy to the registry at `upstream` that injects `fault`.
    pub async fn start_with(upstream: &str, fault: Fault) -> Result<Self> {
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            fault,
            manifest_puts: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            failed_once: Mutex::new(HashSet::new()),
            seen: Mutex::new(Vec::new()),
            injected: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The paths of every manifest `PUT` it received (injected or forwarded), in order.
    pub fn manifest_puts(&self) -> Vec<String> {
        self.shared
            .manifest_puts
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// How many answers it has injected.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::Relaxed)
    }

    /// How many requests with `method` had a path (query included) starting with `prefix`.
    pub fn count(&self, method: &Method, prefix: &str) -> usize {
        self.shared.seen.lock().map_or(0, |seen| {
            seen.iter()
                .filter(|(m, p)| m == method && p.starts_with(prefix))
                .count()
        })
    }

    /// How many requests it has passed to the registry.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for FlakyRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_manifest_read(method: &Method, path: &str) -> bool {
    (method == Method::HEAD || method == Method::GET)
        && path.starts_with("/v2/")
        && path.contains("/manifests/")
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let manifest_path = path.starts_with("/v2/") && path.contains("/manifests/");
    if request.method() == Method::PUT
        && manifest_path
        && let Ok(mut puts) = shared.manifest_puts.lock()
    {
        puts.push(path.clone());
    }
    if let Fault::ImmutableTag(tag) = &shared.fault
        && request.method() == Method::PUT
        && let Some((repository, put_tag)) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split_once("/manifests/"))
        && put_tag == tag
    {
        shared.injected.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({"errors": [{
            "code": "PRECONDITION",
            "message": format!("Failed to process request due to '{repository}:{tag}' configured as immutable."),
        }]});
        let mut response = status(StatusCode::PRECONDITION_FAILED, &body.to_string());
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        return response;
    }
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push((request.method().clone(), path.clone()));
    }
    if shared.fault == Fault::FirstManifestRead500 && is_manifest_read(request.method(), &path) {
        let first = shared
            .failed_once
            .lock()
            .map(|mut seen| seen.insert(path.clone()))
            .unwrap_or(false);
        if first {
            shared.injected.fetch_add(1, Ordering::Relaxed);
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected: invalid checksum digest format",
            );
        }
    }
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let url = format!("http://{}{path}", shared.upstream);
    let stream = body.into_data_stream();
    let upstream = shared
        .client
        .request(parts.method, url)
        .headers(end_to_end(&parts.headers))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match upstream {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = end_to_end(answer.headers());
            }
            let body = Body::from_stream(answer.bytes_stream().map_err(std::io::Error::other));
            response
                .body(body)
                .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY, "bad response"))
        }
        Err(e) => status(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
    }
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(name);
    }
    out
}

fn status(code: StatusCode, text: &str) -> Response {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = code;
    response
}
