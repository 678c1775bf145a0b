//! `pushfleet worker`: load the configuration, then run until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::runner::WorkerStatus;
use crate::{config, health, runner};

/// Loads the configuration (refusing to start half-configured) and runs the worker, serving
/// the health endpoints on `health_listen` when given.
pub async fn run(
    file: Option<&Path>,
    health_listen: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let config = match config::load(file, None) {
        Ok(c) => Arc::new(c),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "the worker did not start: fix the configuration (see `pushfleet check-config`)"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    match &config.docker {
        Some(docker) => {
            info!(amqp = %config.amqp.url, docker = %docker.host, registries = config.registries.len(), "configuration loaded");
        }
        None => {
            info!(amqp = %config.amqp.url, registries = config.registries.len(), "configuration loaded");
            info!(
                pools = ?config.worker.pools.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "no [docker] section: this worker has no Docker daemon and serves registry-source \
                 jobs (source_registry) only; a job whose source is in a daemon fails with \
                 daemon_not_configured"
            );
        }
    }
    let status = Arc::new(WorkerStatus::default());
    let stop_health = CancellationToken::new();
    let health = match health_listen {
        Some(addr) => {
            let listener = health::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the health endpoints"))?;
            Some(tokio::spawn(health::serve(
                listener,
                Arc::clone(&status),
                stop_health.clone(),
            )))
        }
        None => None,
    };
    let result = runner::run_with_status(config, status, shutdown_signal()).await;
    stop_health.cancel();
    if let Some(task) = health {
        let _ = task.await;
    }
    result.context("the worker could not run")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = term => info!("SIGTERM received"),
    }
}
