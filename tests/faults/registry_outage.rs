//! The basic registry stopped for 30 s during a batch: jobs go through `retrying` with growing
//! delays (held by the broker's delay queue, so no hot loop), and every job succeeds once the
//! registry is back, within a bounded number of attempts.

use std::time::Duration;

use anyhow::Result;

use crate::common::outage_scenario;

#[tokio::test]
async fn registry_down_30s_jobs_retry_with_growing_delays_then_succeed() -> Result<()> {
    outage_scenario("registry", "basic-registry", Duration::from_secs(30), None).await
}
