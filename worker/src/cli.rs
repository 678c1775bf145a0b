//! The `pushfleet` command line: parse the arguments, set up logging, run one command, turn its
//! error into an exit code. The binary is a one-line `main` over [`main`], so that the
//! end-to-end tests' package can build the same program as its own binary target.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{commands, telemetry};
use clap::{Parser, Subcommand};

/// pushfleet: push Docker images to registries, as jobs from RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "pushfleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker: consume push jobs until SIGTERM or SIGINT.
    Worker {
        /// The configuration file (TOML); `PUSHFLEET__...` variables override it.
        #[arg(short, long, env = "PUSHFLEET_CONFIG")]
        config: Option<PathBuf>,
        /// Serve `/healthz` and `/readyz` on this address (e.g. `0.0.0.0:8080`).
        #[arg(long, env = "PUSHFLEET_HEALTH_LISTEN")]
        health_listen: Option<std::net::SocketAddr>,
    },
    /// Cancel a job, queued or running, by its id.
    Cancel {
        /// The configuration file (for the broker address and the topology prefix).
        #[arg(short, long, env = "PUSHFLEET_CONFIG")]
        config: Option<PathBuf>,
        /// The job to cancel.
        job_id: String,
    },
    /// Validate the configuration without touching the network and print it (redacted).
    CheckConfig {
        /// The configuration file (TOML); `PUSHFLEET__...` variables override it.
        #[arg(short, long, env = "PUSHFLEET_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Publish a push job, optionally wait for its outcome, or only show what it would do.
    Submit(Box<commands::submit::SubmitArgs>),
    /// Follow the events of every job as they happen (filters: job id, state, registry).
    Events(commands::events::EventsArgs),
    /// Test each catalogue registry for real: DNS, TCP, TLS, login, pull and push rights, the
    /// daemon's view.
    CheckRegistries(commands::check_registries::CheckRegistriesArgs),
    /// Ask a running worker's health listener whether it is ready (exit 0) or not (exit 1):
    /// a container health check.
    Health(commands::health::HealthArgs),
    /// Print the JSON Schemas of jobs and events, or write them into a folder.
    Schemas {
        /// Write `job.schema.json` and `event.schema.json` into this folder.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Print the broker topology (exchanges, queues, arguments) as JSON.
    Topology {
        /// The name prefix.
        #[arg(long, default_value = pushfleet_shared::topology::DEFAULT_PREFIX)]
        prefix: String,
        /// Also show this pool's names (repeatable); the default pool is always shown.
        #[arg(long = "pool")]
        pools: Vec<String>,
    },
}

/// Parses the command line, sets up logging, runs one command and turns its error into an
/// exit code: the whole `pushfleet` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Worker {
                config,
                health_listen,
            } => commands::worker::run(config.as_deref(), health_listen).await,
            Command::Cancel { config, job_id } => {
                commands::cancel(config.as_deref(), &job_id).await
            }
            Command::CheckConfig { config } => commands::check_config(config.as_deref()),
            Command::Submit(args) => commands::submit::run(*args).await,
            Command::Events(args) => commands::events::run(args).await,
            Command::CheckRegistries(args) => commands::check_registries::run(args).await,
            Command::Health(args) => commands::health::run(args).await,
            Command::Schemas { write } => commands::schemas(write.as_deref()),
            Command::Topology { prefix, pools } => commands::topology(&prefix, &pools),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded async runtime a `pushfleet` process runs on; `None` (after saying why on
/// standard error) when it cannot start.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
