//! A reverse proxy in front of a real registry that answers the first manifest read of each
//! path with a 500, the way a registry under concurrent pushes of one manifest sometimes does
//! ("invalid checksum digest format"). Everything else (the daemon's uploads, the worker's
//! other requests) is streamed through unchanged, `Host` included, so the registry's
//! `Location` headers point back at the proxy.
//!
//! [`FlakyRegistry::passthrough`] injects nothing: it only records every request's method and
//! path, so a test can count what a client really sent to the registry (upload sessions
//! opened, completed, cancelled).

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

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    inject: bool,
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
    /// Starts a proxy to the registry at `upstream` (`host:port`, plain HTTP).
    pub async fn start(upstream: &str) -> Result<Self> {
        Self::spawn(upstream, true).await
    }

    /// Starts a proxy to `upstream` that passes everything through unchanged.
    pub async fn passthrough(upstream: &str) -> Result<Self> {
        Self::spawn(upstream, false).await
    }

    async fn spawn(upstream: &str, inject: bool) -> Result<Self> {
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            inject,
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

    /// How many 500s it has injected.
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
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push((request.method().clone(), path.clone()));
    }
    if shared.inject && is_manifest_read(request.method(), &path) {
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
