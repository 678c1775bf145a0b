//! `pushfleet worker`: load the configuration, then run until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::{config, runner};

/// Loads the configuration (refusing to start half-configured) and runs the worker.
pub async fn run(file: Option<&Path>) -> anyhow::Result<ExitCode> {
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
    info!(amqp = %config.amqp.url, docker = %config.docker.host, registries = config.registries.len(), "configuration loaded");
    runner::run(config, shutdown_signal())
        .await
        .context("the worker stopped on an error")?;
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
