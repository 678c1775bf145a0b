//! Health endpoints for orchestrators: `GET /healthz` (the process serves: 200) and
//! `GET /readyz` (200 while the worker consumes jobs; 503 while it is connecting to the broker,
//! reconnecting, or shutting down). Kubernetes' readiness probe and KEDA read these.
//! `GET /metrics` serves the Prometheus metrics (see [`crate::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runner::WorkerStatus;

/// Serves the health endpoints on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, status: Arc<WorkerStatus>, stop: CancellationToken) {
    let app = router(status);
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%addr, "health endpoints: /healthz /readyz");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        warn!(error = %e, "the health endpoints stopped");
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn router(status: Arc<WorkerStatus>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status)
}

async fn metrics(
    State(status): State<Arc<WorkerStatus>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        status.metrics().encode(),
    )
}

async fn readyz(State(status): State<Arc<WorkerStatus>>) -> (StatusCode, &'static str) {
    if status.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_the_worker_status() -> Result<(), Box<dyn std::error::Error>> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let status = Arc::new(WorkerStatus::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::clone(&status), stop.clone()));
        let client = reqwest::Client::builder().no_proxy().build()?;
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        assert_eq!(get("/healthz").await?.status(), 200);
        assert_eq!(get("/readyz").await?.status(), 503);
        status.set_ready(true);
        assert_eq!(get("/readyz").await?.status(), 200);
        status.set_ready(false);
        assert_eq!(get("/readyz").await?.status(), 503);
        assert_eq!(get("/nope").await?.status(), 404);
        let metrics = get("/metrics").await?;
        assert_eq!(metrics.status(), 200);
        assert!(
            metrics
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/openmetrics-text"))
        );
        assert!(metrics.text().await?.contains("pushfleet_build_info"));

        stop.cancel();
        server.await?;
        Ok(())
    }
}
