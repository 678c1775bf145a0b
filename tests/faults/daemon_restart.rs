//! The Docker daemon restarted (stop.sh dockerd, 5 s, start.sh dockerd) during a batch: jobs fail
//! `daemon_unavailable` (retryable) and go through `retrying` with growing delays (held by the
//! broker's delay queue, so no hot loop), and every job succeeds once the daemon is back (its
//! images survive in its data root), within a bounded number of attempts.

use std::time::Duration;

use anyhow::Result;

use crate::common::outage_scenario;

#[tokio::test]
async fn docker_daemon_restart_jobs_retry_then_succeed() -> Result<()> {
    outage_scenario(
        "dockerd",
        "dockerd",
        Duration::from_secs(5),
        Some("daemon_unavailable"),
    )
    .await
}
