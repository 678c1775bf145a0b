//! The broker topology: every exchange, queue and routing-key name, and the queue arguments,
//! in one place. The worker declares it, the tests and `pushfleet submit` publish into it, and
//! `pushfleet topology` prints it as JSON for other callers (the Python client).
//!
//! Retries wait in delay queues bucketed by the delay's order of magnitude (bucket `k` holds
//! delays of `2^k` to `2^(k+1)` seconds): RabbitMQ expires messages only at the head of a
//! queue, so one queue for all delays would hold a 5-second retry behind a 5-minute one. Within
//! a bucket a message waits at most twice its delay.
//!
//! Names derive from one prefix (default `pushfleet`), so several fleets, or parallel tests,
//! can share one broker without meeting.
//!
//! ```text
//! <p>.jobs    (direct) --"job"--> <p>.jobs    (quorum queue, delivery limit, DLX <p>.dlx)
//! <p>.retry   (direct) --"delay.<k>"--> <p>.retry.<k> (quorum queues, per-message TTL,
//!                                                    DLX <p>.jobs; declared when first used)
//! <p>.jobs    (direct) --"check.registry"--> <p>.checks (quorum queue, 10 min TTL)
//! <p>.dlx     (direct) --"job"--> <p>.dead    (quorum queue: dead letters, kept for replay)
//! <p>.events  (topic)  --"job.<state>", "registry.checked"--> consumers' own queues
//! <p>.control (fanout) --> <p>.control (stream, 24 h): every worker reads it from the start
//!
//! and for each other pool P (see [`crate::pool`]), declared by the workers that serve it and
//! by `pushfleet submit` when it publishes a job of P:
//! <p>.jobs    (direct) --"job.P"--> <p>.jobs.P (quorum queue, as <p>.jobs; DLX <p>.dlx
//!                                               with key "job.P")
//! <p>.retry   (direct) --"delay.P.<k>"--> <p>.retry.P.<k> (DLX <p>.jobs with key "job.P")
//! <p>.dlx     (direct) --"job.P"--> <p>.dead  (the same dead-letter queue, one more binding)
//! ```
//!
//! The default pool's names are those above, so a fleet that never names a pool keeps its
//! queues. A pool's delay queues are its own because a delay queue sends expired messages back
//! with its fixed `x-dead-letter-routing-key`: that key, not the message, decides where a retry
//! lands, so each pool's delay queues carry their pool's key and a retry cannot change pool.
//! Dead letters keep their pool in their routing key (`job.P`, the key to publish a replay
//! with), whether the worker put them there or the broker did (delivery limit).
//!
//! The module does not depend on an AMQP library: arguments are plain [`QueueArg`] values the
//! worker converts.

use serde::Serialize;

use crate::pool::Pool;

/// The default name prefix.
pub const DEFAULT_PREFIX: &str = "pushfleet";
/// The routing key jobs are published with, to the jobs, retry and dead-letter exchanges.
pub const JOB_ROUTING_KEY: &str = "job";
/// How many times the broker redelivers a job (e.g. after worker crashes) before it
/// dead-letters it: a job that kills its worker cannot loop forever.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 5;
/// How long the control stream keeps requests.
pub const CONTROL_MAX_AGE: &str = "24h";
/// The largest delay bucket (2^17 s, about 36 hours).
pub const MAX_RETRY_BUCKET: u32 = 17;
/// How long a registry check request waits for a worker before the broker drops it.
pub const CHECK_TTL_MS: i64 = 600_000;
/// The content type of jobs and events.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A queue argument value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum QueueArg {
    /// A string argument (`x-queue-type`).
    Str(String),
    /// An integer argument (`x-delivery-limit`).
    Int(i64),
}

/// The kind of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    Direct,
    /// Routes by routing-key pattern.
    Topic,
    /// Routes to every bound queue.
    Fanout,
}

/// An exchange to declare (always durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExchangeSpec {
    /// Exchange name.
    pub name: String,
    /// Exchange kind.
    pub kind: ExchangeKind,
}

/// A durable queue to declare and the exchange it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Arguments given at declaration, e.g. `x-queue-type: quorum`.
    pub arguments: Vec<(String, QueueArg)>,
    /// The exchange it is bound to.
    pub bound_to: String,
    /// The binding's routing key.
    pub binding_key: String,
}

/// All names of one fleet's topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    prefix: String,
    delivery_limit: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u8>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Topology {
    /// The topology whose names start with `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            replicas: None,
        }
    }

    /// The same topology with its replicated queues (quorum queues, the control stream)
    /// declared on `replicas` nodes of a cluster (`x-quorum-initial-group-size`,
    /// `x-initial-cluster-size`); without it the broker decides. A replica count above the
    /// cluster's size gets one replica per node.
    pub fn with_replicas(mut self, replicas: u8) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The arguments that make a queue a quorum queue with this topology's replica count.
    fn quorum_arguments(&self) -> Vec<(String, QueueArg)> {
        let mut args = vec![(
            "x-queue-type".to_owned(),
            QueueArg::Str("quorum".to_owned()),
        )];
        if let Some(n) = self.replicas {
            args.push((
                "x-quorum-initial-group-size".to_owned(),
                QueueArg::Int(i64::from(n)),
            ));
        }
        args
    }

    /// The same topology with another broker delivery limit for jobs.
    pub fn with_delivery_limit(mut self, limit: i64) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where Django publishes jobs (direct exchange).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The queue workers of the default pool consume jobs from.
    pub fn jobs_queue(&self) -> String {
        self.pool_queue(&Pool::default())
    }

    /// The queue of `pool`'s jobs: `<p>.jobs` for the default pool, `<p>.jobs.<pool>` else.
    pub fn pool_queue(&self, pool: &Pool) -> String {
        if pool.is_default() {
            format!("{}.jobs", self.prefix)
        } else {
            format!("{}.jobs.{pool}", self.prefix)
        }
    }

    /// The routing key of `pool`'s jobs on the jobs, retry-return and dead-letter exchanges:
    /// [`JOB_ROUTING_KEY`] for the default pool, `job.<pool>` else.
    pub fn pool_routing_key(pool: &Pool) -> String {
        if pool.is_default() {
            JOB_ROUTING_KEY.to_owned()
        } else {
            format!("{JOB_ROUTING_KEY}.{pool}")
        }
    }

    /// What a worker serving `pool`, or a publisher of one of its jobs, declares beyond
    /// [`Self::queues`]: the pool's queue, and the dead-letter queue's binding for the pool's
    /// key. Empty for the default pool (its names are part of [`Self::queues`]).
    pub fn pool_queues(&self, pool: &Pool) -> Vec<QueueSpec> {
        if pool.is_default() {
            return Vec::new();
        }
        vec![
            self.jobs_queue_spec(pool),
            QueueSpec {
                name: self.dead_letter_queue(),
                arguments: self.quorum_arguments(),
                bound_to: self.dead_letter_exchange(),
                binding_key: Self::pool_routing_key(pool),
            },
        ]
    }

    fn jobs_queue_spec(&self, pool: &Pool) -> QueueSpec {
        let s = |v: &str| QueueArg::Str(v.to_owned());
        let key = Self::pool_routing_key(pool);
        QueueSpec {
            name: self.pool_queue(pool),
            arguments: [
                self.quorum_arguments(),
                vec![
                    (
                        "x-delivery-limit".to_owned(),
                        QueueArg::Int(self.delivery_limit),
                    ),
                    (
                        "x-dead-letter-exchange".to_owned(),
                        s(&self.dead_letter_exchange()),
                    ),
                    ("x-dead-letter-routing-key".to_owned(), s(&key)),
                    ("x-dead-letter-strategy".to_owned(), s("at-least-once")),
                    ("x-overflow".to_owned(), s("reject-publish")),
                ],
            ]
            .concat(),
            bound_to: self.jobs_exchange(),
            binding_key: key,
        }
    }

    /// Where retryable jobs wait out their delay (direct exchange).
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The delay bucket of `delay`: `floor(log2(seconds))`, 0 below 2 s, at most
    /// [`MAX_RETRY_BUCKET`].
    pub fn retry_bucket(delay: std::time::Duration) -> u32 {
        let secs = delay.as_secs().max(1);
        (63 - secs.leading_zeros()).min(MAX_RETRY_BUCKET)
    }

    /// The default pool's delay queue of `bucket` (see [`Self::pool_retry_queue`]).
    pub fn retry_queue(&self, bucket: u32) -> String {
        self.pool_retry_queue(&Pool::default(), bucket)
    }

    /// The delay queue of `bucket` for `pool`'s jobs: messages carry a per-message TTL and
    /// dead-letter back to the jobs exchange, with the pool's routing key, when it expires.
    /// Nobody consumes it. `<p>.retry.<k>` for the default pool, `<p>.retry.<pool>.<k>` else.
    pub fn pool_retry_queue(&self, pool: &Pool, bucket: u32) -> String {
        if pool.is_default() {
            format!("{}.retry.{bucket}", self.prefix)
        } else {
            format!("{}.retry.{pool}.{bucket}", self.prefix)
        }
    }

    /// The routing key that reaches the default pool's delay queue of `bucket`.
    pub fn retry_routing_key(bucket: u32) -> String {
        Self::pool_retry_routing_key(&Pool::default(), bucket)
    }

    /// The routing key that reaches `pool`'s delay queue of `bucket` on the retry exchange.
    pub fn pool_retry_routing_key(pool: &Pool, bucket: u32) -> String {
        if pool.is_default() {
            format!("delay.{bucket}")
        } else {
            format!("delay.{pool}.{bucket}")
        }
    }

    /// The declaration of the default pool's delay queue of `bucket`.
    pub fn retry_queue_spec(&self, bucket: u32) -> QueueSpec {
        self.pool_retry_queue_spec(&Pool::default(), bucket)
    }

    /// The declaration of `pool`'s delay queue of `bucket`.
    pub fn pool_retry_queue_spec(&self, pool: &Pool, bucket: u32) -> QueueSpec {
        let s = |v: &str| QueueArg::Str(v.to_owned());
        QueueSpec {
            name: self.pool_retry_queue(pool, bucket),
            arguments: [
                self.quorum_arguments(),
                vec![
                    (
                        "x-dead-letter-exchange".to_owned(),
                        s(&self.jobs_exchange()),
                    ),
                    (
                        "x-dead-letter-routing-key".to_owned(),
                        s(&Self::pool_routing_key(pool)),
                    ),
                    ("x-dead-letter-strategy".to_owned(), s("at-least-once")),
                    ("x-overflow".to_owned(), s("reject-publish")),
                ],
            ]
            .concat(),
            bound_to: self.retry_exchange(),
            binding_key: Self::pool_retry_routing_key(pool, bucket),
        }
    }

    /// Where jobs that cannot be done are dead-lettered (direct exchange).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The dead-letter queue: failed and unreadable jobs, kept for inspection and replay.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Where registry check requests wait for a worker (bound to the jobs exchange with
    /// [`crate::check::CHECK_ROUTING_KEY`]).
    pub fn checks_queue(&self) -> String {
        format!("{}.checks", self.prefix)
    }

    /// Where workers publish events (topic exchange, routing key `job.<state>`).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Where cancel requests are published (fanout: every worker hears every request).
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The control stream: cancel requests kept for a day, read by every worker from its
    /// start, so a request published while no worker runs is still honoured.
    pub fn control_queue(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Every exchange, in declaration order.
    pub fn exchanges(&self) -> Vec<ExchangeSpec> {
        use ExchangeKind::*;
        [
            (self.jobs_exchange(), Direct),
            (self.retry_exchange(), Direct),
            (self.dead_letter_exchange(), Direct),
            (self.events_exchange(), Topic),
            (self.control_exchange(), Fanout),
        ]
        .into_iter()
        .map(|(name, kind)| ExchangeSpec { name, kind })
        .collect()
    }

    /// Every durable queue with its arguments and binding, in declaration order.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let s = |v: &str| QueueArg::Str(v.to_owned());
        let mut stream = vec![
            ("x-queue-type".to_owned(), s("stream")),
            ("x-max-age".to_owned(), s(CONTROL_MAX_AGE)),
            // Small segments, so old requests really go after a day (streams drop
            // whole segments).
            (
                "x-stream-max-segment-size-bytes".to_owned(),
                QueueArg::Int(1_000_000),
            ),
        ];
        if let Some(n) = self.replicas {
            stream.push((
                "x-initial-cluster-size".to_owned(),
                QueueArg::Int(i64::from(n)),
            ));
        }
        vec![
            self.jobs_queue_spec(&Pool::default()),
            QueueSpec {
                name: self.control_queue(),
                arguments: stream,
                bound_to: self.control_exchange(),
                binding_key: String::new(),
            },
            QueueSpec {
                name: self.checks_queue(),
                arguments: [
                    self.quorum_arguments(),
                    // A check nobody answered within ten minutes is no longer wanted.
                    vec![("x-message-ttl".to_owned(), QueueArg::Int(CHECK_TTL_MS))],
                ]
                .concat(),
                bound_to: self.jobs_exchange(),
                binding_key: crate::check::CHECK_ROUTING_KEY.to_owned(),
            },
            QueueSpec {
                name: self.dead_letter_queue(),
                arguments: self.quorum_arguments(),
                bound_to: self.dead_letter_exchange(),
                binding_key: JOB_ROUTING_KEY.to_owned(),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.jobs_exchange(), "t1.jobs");
        assert_eq!(t.jobs_queue(), "t1.jobs");
        assert_eq!(t.retry_queue(3), "t1.retry.3");
        assert_eq!(t.dead_letter_queue(), "t1.dead");
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(t.control_exchange(), "t1.control");
        assert_eq!(t.control_queue(), "t1.control");
        assert_eq!(Topology::default().jobs_queue(), "pushfleet.jobs");
    }

    #[test]
    fn jobs_queue_is_quorum_with_at_least_once_dead_lettering() {
        let t = Topology::new("p").with_delivery_limit(3);
        let jobs = &t.queues()[0];
        let arg = |k: &str| {
            jobs.arguments
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(arg("x-queue-type"), Some(QueueArg::Str("quorum".into())));
        assert_eq!(arg("x-delivery-limit"), Some(QueueArg::Int(3)));
        assert_eq!(
            arg("x-dead-letter-exchange"),
            Some(QueueArg::Str("p.dlx".into()))
        );
        assert_eq!(
            arg("x-dead-letter-strategy"),
            Some(QueueArg::Str("at-least-once".into()))
        );
        assert_eq!(
            arg("x-overflow"),
            Some(QueueArg::Str("reject-publish".into()))
        );
    }

    #[test]
    fn retry_queues_dead_letter_back_into_the_jobs_exchange() {
        let t = Topology::new("p");
        let retry = t.retry_queue_spec(4);
        assert_eq!(retry.name, "p.retry.4");
        assert_eq!(retry.bound_to, "p.retry");
        assert_eq!(retry.binding_key, "delay.4");
        assert!(retry.arguments.contains(&(
            "x-dead-letter-exchange".to_owned(),
            QueueArg::Str("p.jobs".to_owned())
        )));
        assert!(
            !t.queues().iter().any(|q| q.name.starts_with("p.retry")),
            "declared on use"
        );
    }

    #[test]
    fn the_default_pool_keeps_the_original_names() {
        let t = Topology::new("p");
        let d = Pool::default();
        assert_eq!(t.pool_queue(&d), "p.jobs");
        assert_eq!(Topology::pool_routing_key(&d), "job");
        assert_eq!(t.pool_retry_queue(&d, 2), "p.retry.2");
        assert_eq!(Topology::pool_retry_routing_key(&d, 2), "delay.2");
        assert!(t.pool_queues(&d).is_empty());
        assert_eq!(t.pool_retry_queue_spec(&d, 2), t.retry_queue_spec(2));
    }

    #[test]
    fn a_pool_has_its_own_queue_delay_queues_and_dead_letter_key() {
        let t = Topology::new("p").with_delivery_limit(3);
        let b = Pool::parse("build-01").expect("pool");
        let arg = |q: &QueueSpec, k: &str| {
            q.arguments
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let specs = t.pool_queues(&b);
        let jobs = &specs[0];
        assert_eq!(jobs.name, "p.jobs.build-01");
        assert_eq!(
            (jobs.bound_to.as_str(), jobs.binding_key.as_str()),
            ("p.jobs", "job.build-01")
        );
        assert_eq!(arg(jobs, "x-delivery-limit"), Some(QueueArg::Int(3)));
        assert_eq!(
            arg(jobs, "x-dead-letter-routing-key"),
            Some(QueueArg::Str("job.build-01".into()))
        );
        let dead = &specs[1];
        assert_eq!(dead.name, "p.dead");
        assert_eq!(
            (dead.bound_to.as_str(), dead.binding_key.as_str()),
            ("p.dlx", "job.build-01")
        );
        assert_eq!(
            dead.arguments,
            t.queues()[3].arguments,
            "redeclared identically"
        );

        let retry = t.pool_retry_queue_spec(&b, 4);
        assert_eq!(retry.name, "p.retry.build-01.4");
        assert_eq!(retry.binding_key, "delay.build-01.4");
        assert_eq!(
            arg(&retry, "x-dead-letter-routing-key"),
            Some(QueueArg::Str("job.build-01".into())),
            "an expired retry returns to its pool"
        );
    }

    #[test]
    fn delays_fall_into_power_of_two_buckets() {
        use std::time::Duration;
        let b = |ms: u64| Topology::retry_bucket(Duration::from_millis(ms));
        assert_eq!(b(0), 0);
        assert_eq!(b(500), 0);
        assert_eq!(b(1_999), 0);
        assert_eq!(b(2_000), 1);
        assert_eq!(b(5_000), 2);
        assert_eq!(b(8_000), 3);
        assert_eq!(b(300_000), 8);
        assert_eq!(b(u64::MAX), MAX_RETRY_BUCKET);
    }

    #[test]
    fn every_queue_is_bound_to_a_declared_exchange() {
        let t = Topology::new("p");
        let exchanges: Vec<_> = t.exchanges().into_iter().map(|e| e.name).collect();
        for q in t.queues() {
            assert!(
                exchanges.contains(&q.bound_to),
                "{} bound to {}",
                q.name,
                q.bound_to
            );
        }
    }
}
