//! What happens to a job after an attempt fails: retried later by the broker, failed for
//! good, or declared dead. One function decides it, from the error code alone.
//!
//! The delay grows exponentially with jitter (computed with `backon`'s exponential backoff,
//! which the worker never sleeps on: the delay becomes the message's TTL in the retry queue,
//! so no worker holds a delivery while it waits). A registry's `Retry-After` is a floor.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::failure::JobFailure;

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last, a retryable failure is `dead`.
    pub max_attempts: u32,
    /// The delay before the second attempt.
    pub min_delay: Duration,
    /// The longest delay between two attempts (before jitter).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            min_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// The decision for a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after `delay`, as attempt `next_attempt`.
    Retry {
        /// How long the job waits in the retry queue.
        delay: Duration,
        /// The number of the next attempt.
        next_attempt: u32,
    },
    /// Not retryable: fail now.
    Fail,
    /// Retryable, but out of attempts.
    Dead,
}

impl RetryPolicy {
    /// Decides what follows attempt `attempt` (from 1) failing with `failure`.
    pub fn decide(&self, attempt: u32, failure: &JobFailure) -> RetryDecision {
        if !failure.error.retryable {
            return RetryDecision::Fail;
        }
        if attempt >= self.max_attempts {
            return RetryDecision::Dead;
        }
        let backoff = self.delay_for(attempt);
        let delay = failure
            .retry_after
            .map_or(backoff, |floor| backoff.max(floor));
        RetryDecision::Retry {
            delay,
            next_attempt: attempt + 1,
        }
    }

    /// The jittered delay after attempt `attempt`: between `min_delay * 2^(attempt-1)` and
    /// twice that, capped at `max_delay` before jitter.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        // Doubling saturates at `max_delay` long before 64 steps; capping the index keeps
        // this O(1) for absurd attempt numbers.
        let index = usize::try_from(attempt.saturating_sub(1).min(64)).unwrap_or(64);
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(index)
            .unwrap_or(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushfleet_shared::ErrorCode;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }

    #[test]
    fn permanent_failures_fail_at_once() {
        let f = JobFailure::new(ErrorCode::RegistryAuthFailed, "no");
        assert_eq!(policy().decide(1, &f), RetryDecision::Fail);
    }

    #[test]
    fn retryable_failures_retry_with_growing_delays_then_die() {
        let f = JobFailure::new(ErrorCode::RegistryUnreachable, "down");
        let p = policy();
        let mut last_floor = Duration::ZERO;
        for attempt in 1..4 {
            match p.decide(attempt, &f) {
                RetryDecision::Retry {
                    delay,
                    next_attempt,
                } => {
                    assert_eq!(next_attempt, attempt + 1);
                    let floor = Duration::from_secs(1 << (attempt - 1)).min(p.max_delay);
                    assert!(
                        delay >= floor && delay <= floor * 2,
                        "attempt {attempt}: {delay:?}"
                    );
                    assert!(floor >= last_floor);
                    last_floor = floor;
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(p.decide(4, &f), RetryDecision::Dead);
    }

    #[test]
    fn delays_are_capped() {
        let p = policy();
        for attempt in [5, 10, 60, u32::MAX] {
            assert!(p.delay_for(attempt) <= p.max_delay * 2, "{attempt}");
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut f = JobFailure::new(ErrorCode::RegistryRateLimited, "429");
        f.retry_after = Some(Duration::from_secs(120));
        match policy().decide(1, &f) {
            RetryDecision::Retry { delay, .. } => assert!(delay >= Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
    }
}
