//! The pushfleet worker library: everything the `pushfleet` binary does, in modules named by
//! role, so tests and benchmarks drive the same code the binary runs.
//!
//! - [`config`], [`credentials`]: the configuration file, environment overrides, the registry
//!   catalogue and password sources.
//! - [`broker`]: the RabbitMQ connections, the topology declared on them, confirmed publishes.
//! - [`runner`]: broker sessions, reconnection, shutdown; [`delivery`]: what happens to
//!   each delivery; [`properties`]: the AMQP properties a job may carry and how copies keep
//!   them; [`cancel`]: cancel requests.
//! - [`pipeline`]: one job, stage by stage; [`plan`] is its I/O-free first stage; [`retag`]
//!   decides when a tag is written registry-side instead of pushed.
//! - [`daemon`]: the Docker daemon stages (source, tag, push, untag).
//! - [`copy`]: copying an image registry to registry without a daemon (blobs skipped,
//!   mounted or streamed; manifests and indexes byte for byte).
//! - [`registry`]: the registry stages (preflight, manifest digest, manifest read and write,
//!   blob reads, mounts and uploads);
//!   [`check`]: testing a
//!   catalogue registry's connection and rights.
//! - [`failure`], [`retry`]: stable error codes for every stage's errors, and what follows a
//!   failed attempt.
//! - [`report`]: building and publishing events; [`metrics`]: Prometheus metrics.
//! - [`commands`]: the binary's subcommands; [`telemetry`]: logging; [`trace`]: W3C trace
//!   context on jobs.

pub mod broker;
pub mod cancel;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod copy;
pub mod credentials;
pub mod daemon;
pub mod delivery;
pub mod failure;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod properties;
pub mod registry;
pub mod report;
pub mod retag;
pub mod retry;
pub mod runner;
pub mod telemetry;
pub mod trace;
