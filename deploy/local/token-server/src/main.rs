//! `pushfleet-token-server`: a small Docker registry token server for the local test stack.
//!
//! It plays the part of Harbor's, GitLab's or Docker Hub's token service in front of a
//! `docker-registry` configured with `auth: token:`: a client asks
//! `GET /token?service=..&scope=repository:<name>:<actions>` with HTTP Basic credentials and
//! gets an RS256 JWT whose `access` claim holds the granted part of the requested scopes.
//! Users and grants come from a JSON file (see [`users`]); `deploy/local/start.sh` writes it
//! and runs this binary. Only for tests: passwords are compared in plaintext.
//!
//! ```text
//! pushfleet-token-server --listen 127.0.0.1:5003 --issuer pushfleet-token-issuer \
//!     --service pushfleet-token-registry --key token.key --cert token.crt --users users.json \
//!     --refresh-secret-file refresh.secret
//! ```

mod http;
mod scope;
mod token;
mod users;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;

/// Command line of the token server.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Docker registry token server for the pushfleet local test stack"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5003")]
    listen: SocketAddr,
    /// `iss` claim; must equal the registry's `auth.token.issuer`.
    #[arg(long)]
    issuer: String,
    /// `aud` claim; must equal the registry's `auth.token.service`.
    #[arg(long)]
    service: String,
    /// PEM RSA private key (PKCS#1 or PKCS#8) that signs the tokens.
    #[arg(long)]
    key: PathBuf,
    /// PEM certificate of that key; it must be in the registry's `rootcertbundle`.
    #[arg(long)]
    cert: PathBuf,
    /// JSON users file (names, passwords, grants).
    #[arg(long)]
    users: PathBuf,
    /// File holding the secret that signs refresh tokens (`docker login` keeps one as
    /// identity token); without it they are signed with a random secret and die with the
    /// process.
    #[arg(long)]
    refresh_secret_file: Option<PathBuf>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 300)]
    ttl_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        // start.sh sends the output to a log file: no colour codes there.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let users = users::Users::load(&args.users)?;
    let signer = token::Signer::from_pem_files(
        args.issuer.clone(),
        args.service.clone(),
        args.ttl_seconds,
        &args.key,
        &args.cert,
        args.refresh_secret_file.as_deref(),
    )?;
    let state = Arc::new(http::AppState { users, signer });
    let user_count = state.users.len();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(
        listen = %args.listen,
        issuer = args.issuer,
        service = args.service,
        users = user_count,
        "token server ready"
    );
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    info!("token server stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (what `deploy/local/stop.sh` sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
