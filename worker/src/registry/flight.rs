//! One preflight at a time per repository and credential: jobs that start together for the
//! same repository (a cold start, a burst after a deploy) wait for the first one's preflight
//! and then find its result in the cache, instead of all asking the registry at once.
//!
//! A key is in the map only while some job holds or waits for its turn; the last one out
//! removes it, so the map never grows beyond the preflights under way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-key turns.
#[derive(Debug)]
pub(super) struct Flights<K> {
    turns: Mutex<HashMap<K, Arc<AsyncMutex<()>>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            turns: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> Flights<K> {
    /// Waits until no other holder of `key`'s turn is left, then holds it until the returned
    /// guard is dropped. Waiters are served in arrival order. Cancel-safe: a waiter dropped
    /// while waiting gives up its place.
    pub(super) async fn turn(&self, key: &K) -> Turn<'_, K> {
        let slot = Arc::clone(self.lock().entry(key.clone()).or_default());
        let mut turn = Turn {
            flights: self,
            key: key.clone(),
            slot: Arc::clone(&slot),
            held: None,
        };
        turn.held = Some(slot.lock_owned().await);
        turn
    }

    /// How many keys have a preflight under way or waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<AsyncMutex<()>>>> {
        // Plain data: a poisoned lock is used as is.
        self.turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A held (or awaited) turn; dropping it lets the next waiter go.
#[derive(Debug)]
pub(super) struct Turn<'a, K: Eq + Hash + Clone> {
    flights: &'a Flights<K>,
    key: K,
    slot: Arc<AsyncMutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut turns = self.flights.lock();
        // Clones are only made under this lock: the map's and ours are the last two.
        if turns
            .get(&self.key)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot) && Arc::strong_count(slot) == 2)
        {
            turns.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_the_map_empties() {
        let flights = Arc::new(Flights::<&'static str>::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flights, running, most) = (flights.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = flights.turn(&"a/b").await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn keys_do_not_wait_for_each_other() {
        let flights = Flights::<&'static str>::default();
        let _a = flights.turn(&"a").await;
        let b = tokio::time::timeout(Duration::from_secs(5), flights.turn(&"b")).await;
        assert!(b.is_ok(), "another key must not wait");
        assert_eq!(flights.len(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_nothing_behind() {
        let flights = Flights::<&'static str>::default();
        let held = flights.turn(&"a").await;
        {
            let waiting = flights.turn(&"a");
            tokio::pin!(waiting);
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        }
        assert_eq!(flights.len(), 1);
        drop(held);
        assert_eq!(flights.len(), 0);
    }
}
