//! Cancel requests: which jobs this worker was asked to cancel.
//!
//! Cancel messages go through the fanout control exchange into the control stream, which
//! every worker reads from its start at each broker session (see `runner`), so every worker
//! hears every request kept by the stream (24 hours), also one started after the request. A
//! worker running the job cancels it at once; every worker also remembers the id, so a job
//! still queued fails as `cancelled` when it is delivered, without being pushed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long a cancel request is remembered for jobs not yet delivered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3600);
/// The most cancelled ids remembered; the oldest are forgotten first.
pub const REMEMBER_AT_MOST: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    /// Jobs running here: their token and how many deliveries of that id run.
    running: HashMap<String, (CancellationToken, usize)>,
    /// Ids cancelled recently, with when.
    cancelled: HashMap<String, Instant>,
}

/// The cancel bookkeeping of one worker.
#[derive(Debug, Default)]
pub struct Cancels {
    state: Mutex<State>,
}

impl Cancels {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked mid-update of plain maps; the maps
        // are still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `job_id` starts running; the token fires when it is cancelled (at once if
    /// it was cancelled before it arrived).
    pub fn register(&self, job_id: &str) -> CancellationToken {
        let mut state = self.lock();
        let already = state.cancelled.contains_key(job_id);
        let entry = state
            .running
            .entry(job_id.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        if already {
            entry.0.cancel();
        }
        entry.0.clone()
    }

    /// Records that one delivery of `job_id` finished.
    pub fn finish(&self, job_id: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.running.get_mut(job_id) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                state.running.remove(job_id);
            }
        }
    }

    /// Cancels `job_id`: now if it runs here, and when it arrives if it is still queued.
    /// Returns whether it was running here.
    pub fn cancel(&self, job_id: &str) -> bool {
        self.cancel_at(job_id, Instant::now())
    }

    fn cancel_at(&self, job_id: &str, now: Instant) -> bool {
        let mut state = self.lock();
        state
            .cancelled
            .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_FOR);
        let oldest = (state.cancelled.len() >= REMEMBER_AT_MOST)
            .then(|| {
                state
                    .cancelled
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(id, _)| id.clone())
            })
            .flatten();
        if let Some(oldest) = oldest {
            state.cancelled.remove(&oldest);
        }
        state.cancelled.insert(job_id.to_owned(), now);
        match state.running.get(job_id) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_is_cancelled_at_once() {
        let c = Cancels::default();
        let token = c.register("j1");
        assert!(!token.is_cancelled());
        assert!(c.cancel("j1"));
        assert!(token.is_cancelled());
        c.finish("j1");
        assert!(!c.cancel("other"), "not running here");
    }

    #[test]
    fn a_queued_job_is_cancelled_when_it_arrives() {
        let c = Cancels::default();
        assert!(!c.cancel("j2"));
        assert!(c.register("j2").is_cancelled());
        c.finish("j2");
        assert!(!c.register("j3").is_cancelled(), "other ids are unaffected");
    }

    #[test]
    fn two_deliveries_of_one_id_share_the_token_until_both_finish() {
        let c = Cancels::default();
        let a = c.register("j");
        let b = c.register("j");
        c.finish("j");
        assert!(c.cancel("j"), "one delivery still runs");
        assert!(a.is_cancelled() && b.is_cancelled());
        c.finish("j");
        assert!(c.lock().running.is_empty());
    }

    #[test]
    fn old_requests_are_forgotten_and_the_set_is_bounded() {
        let c = Cancels::default();
        let start = Instant::now();
        c.cancel_at("old", start);
        c.cancel_at("new", start + REMEMBER_FOR + Duration::from_secs(1));
        assert!(!c.lock().cancelled.contains_key("old"));
        for i in 0..REMEMBER_AT_MOST + 5 {
            c.cancel_at(
                &format!("id-{i}"),
                start + REMEMBER_FOR + Duration::from_secs(2),
            );
        }
        assert!(c.lock().cancelled.len() <= REMEMBER_AT_MOST);
    }
}
