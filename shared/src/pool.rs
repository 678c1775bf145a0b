//! Pools: which Docker daemon (build host) holds a job's source image.
//!
//! A fresh push must run on a worker whose daemon holds the image. A job names its pool
//! (`pool` in the job, `build_host` in the Django step), each pool has its own queue (see
//! [`crate::topology`]), and a worker consumes the queues of the pools its configuration lists
//! (`worker.pools`). A job without a pool is in [`DEFAULT_POOL`], whose names are those of a
//! fleet without pools, so a single-queue deployment keeps working unchanged.
//!
//! A pool name becomes part of queue names and routing keys, and of the Kubernetes objects
//! that scale a pool's workers: it is an RFC 1123 label (lowercase letters, digits and `-`, 1 to
//! 63 characters, starting and ending with a letter or digit). No dots, so every derived name
//! reads one way.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The pool of a job that names none: its queue and keys are the fleet's original ones.
pub const DEFAULT_POOL: &str = "default";
/// The longest pool name.
pub const MAX_POOL_LEN: usize = 63;
/// The grammar of a pool name, as a regular expression (for schemas and messages).
pub const POOL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// A valid pool name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pool(String);

/// Why a text is not a pool name. Shows the text, which never holds a secret (it is a
/// routing name); long texts are cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pool {0:?} is not a pool name: 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
)]
pub struct InvalidPool(pub String);

impl Pool {
    /// Checks `name` against the grammar (see the module doc).
    pub fn parse(name: &str) -> Result<Self, InvalidPool> {
        if is_valid(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidPool(name.chars().take(80).collect()))
        }
    }

    /// The default pool.
    pub fn default_pool() -> Self {
        Self(DEFAULT_POOL.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is [`DEFAULT_POOL`].
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_POOL
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::default_pool()
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Pool {
    type Error = InvalidPool;

    fn try_from(name: String) -> Result<Self, InvalidPool> {
        Self::parse(&name)
    }
}

impl From<Pool> for String {
    fn from(pool: Pool) -> Self {
        pool.0
    }
}

fn is_valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_POOL_LEN
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_label_grammar() {
        for good in ["default", "a", "build-01", "0", "x".repeat(63).as_str()] {
            assert!(Pool::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Build",
            "a.b",
            "a_b",
            "a b",
            "é",
            "a*",
            "#",
            "x".repeat(64).as_str(),
        ] {
            assert!(Pool::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_pool_is_named_default() {
        assert!(Pool::default().is_default());
        assert_eq!(Pool::default().as_str(), DEFAULT_POOL);
    }
}
