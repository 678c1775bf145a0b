//! Fault tests of the worker fleet on the real local stack: worker processes killed and
//! stopped mid-job, RabbitMQ, the registry and the Docker daemon taken down under load, a job
//! that can never succeed, cancel requests. Every test prints one `FAULT <name>:` line of
//! figures (jobs, lost, duplicates, recovery seconds, attempts).
//!
//! These tests disrupt the shared stack, so they live in their own test binary (cargo runs test
//! binaries one after another; do not run this one while another end-to-end test binary runs)
//! and run one at a time: every test holds [`serial`] from start to end. Every wait is bounded
//! ([`fault_test`] puts an overall limit on each test), every worker process is killed when its
//! test ends, and every outage restores its component on drop, even when the test fails.
//!
//! Workers are the real `pushfleet` binary (see `pushfleet_tests::process` for how it is found
//! and, when stale, built). Run:
//!
//! ```sh
//! cargo test -p pushfleet-tests --test faults -- --nocapture
//! ```

mod broker_restart;
mod cancel;
mod common;
mod daemon_restart;
mod kill;
mod poison;
mod registry_outage;
mod sigterm;
