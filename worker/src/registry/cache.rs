//! What a [`super::RegistryClient`] remembers between jobs, so the hot path stays lean: the
//! endpoint's challenge (how `/v2/` asks to authenticate) and, per repository and credential,
//! the authorisation proven to work. Pure data with the clock passed in, so expiry is tested
//! without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::challenge::Challenge;

/// How long the `/v2/` challenge is reused before the next ping.
pub(crate) const PING_TTL: Duration = Duration::from_secs(10 * 60);
/// How long proven Basic credentials (or anonymous access) are trusted without a new check.
pub(crate) const BASIC_TTL: Duration = Duration::from_secs(5 * 60);
/// Token lifetime assumed when the token response has no `expires_in` (the token spec's default).
pub(crate) const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens are used at most this long, whatever they claim.
pub(crate) const MAX_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// How long a token that lives `expires_in` seconds is reused: its lifetime minus a margin of a
/// tenth of it, at least 5 s and at most 60 s (a push started just before expiry must still
/// find it valid at the registry), capped at [`MAX_TOKEN_TTL`]. Zero when too short to reuse.
pub(crate) fn token_validity(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL)
        .min(MAX_TOKEN_TTL);
    let margin = (lifetime / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    lifetime.saturating_sub(margin)
}

/// How to authorise a request.
#[derive(Debug, Clone)]
pub(crate) enum Authorization {
    /// No `Authorization` header.
    Anonymous,
    /// `Authorization: Basic <base64(user:password)>` (the whole header value is secret).
    Basic(SecretString),
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
}

/// Cache key: one repository as seen by one credential (user name plus a keyed hash of the
/// password, so a rotated password never reuses the old one's entry; 0 for anonymous).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AccessKey {
    pub(crate) repository: String,
    pub(crate) username: String,
    pub(crate) credential: u64,
}

/// A proven authorisation for one key.
#[derive(Debug, Clone)]
pub(crate) struct AccessEntry {
    pub(crate) authorization: Authorization,
    /// Push rights were proven (token claims or upload probe); else only pull was obtained.
    pub(crate) push: bool,
    pub(crate) expires_at: Instant,
}

/// The cache of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    ping: Option<(Option<Challenge>, Instant)>,
    access: HashMap<AccessKey, AccessEntry>,
}

impl Cache {
    /// The cached `/v2/` outcome: `Some(None)` when `/v2/` answered 200 (no auth needed),
    /// `Some(Some(challenge))` when it answered 401, `None` when unknown or expired.
    pub(crate) fn ping(&self, now: Instant) -> Option<Option<Challenge>> {
        match &self.ping {
            Some((challenge, expires_at)) if now < *expires_at => Some(challenge.clone()),
            _ => None,
        }
    }

    pub(crate) fn put_ping(&mut self, challenge: Option<Challenge>, now: Instant) {
        self.ping = Some((challenge, now + PING_TTL));
    }

    pub(crate) fn drop_ping(&mut self) {
        self.ping = None;
    }

    /// A valid entry for `key`; with `need_push`, only one whose push rights were proven.
    /// Expired entries are removed on the way.
    pub(crate) fn access(
        &mut self,
        key: &AccessKey,
        need_push: bool,
        now: Instant,
    ) -> Option<AccessEntry> {
        match self.access.get(key) {
            Some(entry) if now >= entry.expires_at => {
                self.access.remove(key);
                None
            }
            Some(entry) if need_push && !entry.push => None,
            Some(entry) => Some(entry.clone()),
            None => None,
        }
    }

    /// Stores an entry, unless a valid entry with proven push rights would be replaced by one
    /// without.
    pub(crate) fn put_access(&mut self, key: AccessKey, entry: AccessEntry, now: Instant) {
        if let Some(old) = self.access.get(&key)
            && old.push
            && !entry.push
            && now < old.expires_at
        {
            return;
        }
        // Keep the map from growing without bound over many repositories.
        if self.access.len() >= 4096 {
            self.access.retain(|_, e| now < e.expires_at);
        }
        self.access.insert(key, entry);
    }

    /// Forgets every credential's entry for `repository`.
    pub(crate) fn invalidate_repository(&mut self, repository: &str) {
        // Mount authorisations are kept under `<repository><-<from>` (see `access.rs`).
        let mounts = format!("{repository}<-");
        self.access
            .retain(|k, _| k.repository != repository && !k.repository.starts_with(&mounts));
    }

    /// Forgets one key's entry (after a 401 with it).
    pub(crate) fn invalidate_key(&mut self, key: &AccessKey) {
        self.access.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.access.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repo: &str) -> AccessKey {
        AccessKey {
            repository: repo.into(),
            username: "u".into(),
            credential: 7,
        }
    }

    fn entry(push: bool, expires_at: Instant) -> AccessEntry {
        AccessEntry {
            authorization: Authorization::Bearer("t".into()),
            push,
            expires_at,
        }
    }

    #[test]
    fn token_validity_uses_expires_in_with_a_margin() {
        assert_eq!(token_validity(Some(300)), Duration::from_secs(270));
        assert_eq!(token_validity(None), Duration::from_secs(54)); // 60 s default, 6 s margin
        assert_eq!(token_validity(Some(60)), Duration::from_secs(54));
        assert_eq!(token_validity(Some(20)), Duration::from_secs(15));
        assert_eq!(token_validity(Some(3)), Duration::ZERO);
        assert_eq!(token_validity(Some(0)), Duration::ZERO);
        assert_eq!(token_validity(Some(86_400)), Duration::from_secs(3540));
        assert_eq!(token_validity(Some(u64::MAX)), Duration::from_secs(3540));
    }

    #[test]
    fn entry_is_served_until_expiry_then_dropped() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.put_access(key("a/b"), entry(true, t0 + Duration::from_secs(270)), t0);
        assert!(cache.access(&key("a/b"), true, t0).is_some());
        assert!(
            cache
                .access(&key("a/b"), true, t0 + Duration::from_secs(269))
                .is_some()
        );
        assert!(
            cache
                .access(&key("a/b"), true, t0 + Duration::from_secs(270))
                .is_none()
        );
        assert_eq!(cache.len(), 0, "expired entry removed");
    }

    #[test]
    fn keys_separate_repositories_and_credentials() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.put_access(key("a/b"), entry(true, t0 + Duration::from_secs(10)), t0);
        assert!(cache.access(&key("a/c"), false, t0).is_none());
        let rotated = AccessKey {
            credential: 8,
            ..key("a/b")
        };
        assert!(cache.access(&rotated, false, t0).is_none());
        let other_user = AccessKey {
            username: "v".into(),
            ..key("a/b")
        };
        assert!(cache.access(&other_user, false, t0).is_none());
    }

    #[test]
    fn pull_only_entry_does_not_satisfy_push_and_does_not_replace_push() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.put_access(key("a/b"), entry(false, t0 + Duration::from_secs(10)), t0);
        assert!(cache.access(&key("a/b"), true, t0).is_none());
        assert!(cache.access(&key("a/b"), false, t0).is_some());
        cache.put_access(key("a/b"), entry(true, t0 + Duration::from_secs(10)), t0);
        cache.put_access(key("a/b"), entry(false, t0 + Duration::from_secs(20)), t0);
        let kept = cache
            .access(&key("a/b"), true, t0)
            .expect("push entry kept");
        assert_eq!(kept.expires_at, t0 + Duration::from_secs(10));
        // Once the push entry has expired, a pull entry may take its place.
        let t1 = t0 + Duration::from_secs(11);
        cache.put_access(key("a/b"), entry(false, t1 + Duration::from_secs(5)), t1);
        assert!(cache.access(&key("a/b"), false, t1).is_some());
    }

    #[test]
    fn invalidate_drops_every_credential_of_the_repository_only() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        let later = t0 + Duration::from_secs(60);
        cache.put_access(key("a/b"), entry(true, later), t0);
        cache.put_access(
            AccessKey {
                username: "v".into(),
                ..key("a/b")
            },
            entry(true, later),
            t0,
        );
        cache.put_access(key("a/c"), entry(true, later), t0);
        cache.invalidate_repository("a/b");
        assert_eq!(cache.len(), 1);
        assert!(cache.access(&key("a/c"), true, t0).is_some());
        cache.invalidate_key(&key("a/c"));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn ping_expires() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        assert_eq!(cache.ping(t0), None);
        cache.put_ping(Some(Challenge::Basic), t0);
        assert_eq!(
            cache.ping(t0 + PING_TTL - Duration::from_secs(1)),
            Some(Some(Challenge::Basic))
        );
        assert_eq!(cache.ping(t0 + PING_TTL), None);
        cache.put_ping(None, t0);
        assert_eq!(cache.ping(t0), Some(None));
        cache.drop_ping();
        assert_eq!(cache.ping(t0), None);
    }
}
